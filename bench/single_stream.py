"""Single-stream decode tokens/s and time to first token: Caravan vs llama-cpp-python in-process.

Caravan is a real cluster (embedded redis-server, registry, one batch-engine worker, gateway) driven over
streaming ``/api/generate`` (raw prompt, greedy) with ``bench.common.WireClient`` (one keep-alive connection,
httptools' parser; httpx would add ≈ 1 ms of its own per request, shown in its own row); the peer is
``Llama.generate`` in this process on the same GGUF, threads and context. Both sides get the same prompt in
each round, in a random order (a seeded coin), and a fresh prompt per round; both reuse only the common
prefix with their previous prompt (llama-cpp-python's ``generate`` and Caravan's slots alike). TTFT is
measured by the client: request sent → first text; decode rate is (tokens − 1) / (last − first token).

Added TTFT is reported two ways: the median over rounds of (Caravan − direct), which carries the run-to-run
noise of two prefills (±15 ms on a shared 2-core VM), and the median of (Caravan's TTFT − the worker's own
prefill-to-first-token time, ``prompt_eval_duration``), i.e. the time the request spent outside llama.cpp;
the engine's own time is compared with direct llama-cpp-python's TTFT in its own row. The target row measures
the latter on requests that run alone (30 more, each after a sleep as long as a peer's turn): in the paired
rounds half of Caravan's requests start right after the peer's llama.cpp ran in this process on the same two
cores (its own row: ≈ 2 ms more while the peer's idle OpenMP thread spun for ≈ 5 ms after each of its
generations; every side now runs with the worker's short spin, ``bench.common``). The client floor is
the same client's TTFT against ``bench.echo_server`` (an HTTP server that does nothing but answer after the
engine's median TTFT, less that wait): what the client and loopback HTTP cost any server whose answer comes
that late; Caravan's own share is the added TTFT minus that floor.

    .venv/bin/python -m bench.single_stream [--rounds 8] [--tokens 128] [--ttft-rounds 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import httpx

from bench.common import (
    FLASH_ON,
    NCPU,
    Client,
    Row,
    Timing,
    WireClient,
    caravan,
    caravan_generate,
    echo_server,
    gguf,
    median,
    story_prompt,
    table,
)


def direct_generate(llm: Any, prompt: str, num_predict: int) -> Timing:
    """The same generation through ``Llama.generate`` (greedy; EOS ends it, as in Caravan)."""
    from llama_cpp import llama_cpp as C

    sent = time.perf_counter()
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    first, count = 0.0, 0
    for token in llm.generate(tokens, temp=0.0, reset=True):
        if C.llama_vocab_is_eog(llm._model.vocab, token):
            break
        first = first or time.perf_counter()
        count += 1
        if count == num_predict:
            break
    return Timing(sent, first, time.perf_counter(), count)


async def rounds(base: str, llm: Any, count: int, num_predict: int, seed: int = 0,
                 gap: float = 0.0) -> tuple[list[Timing], list[Timing]]:
    """``count`` rounds; each runs one prompt on both sides, in a random order. With ``gap``, every request
    follows that many seconds of sleep: neither side starts right after the other's llama.cpp compute."""
    coin = random.Random(seed)
    ours, theirs = [], []
    client = WireClient()
    try:
        await caravan_generate(client, base, story_prompt(99), 4)  # warm the connection and the slot
        direct_generate(llm, story_prompt(98), 4)
        for index in range(count):
            prompt = story_prompt(index + 1000 * seed)
            for caravan_side in ((True, False) if coin.random() < 0.5 else (False, True)):
                if gap:
                    await asyncio.sleep(gap)
                if caravan_side:
                    ours.append(await caravan_generate(client, base, prompt, num_predict))
                else:
                    theirs.append(direct_generate(llm, prompt, num_predict))
    finally:
        await client.aclose()
    return ours, theirs


async def client_floor(base: str, count: int, client: Client) -> list[float]:
    """TTFT (s) of a client against a server that does nothing (but wait)."""
    try:
        await caravan_generate(client, base, story_prompt(0), 4)
        return [(await caravan_generate(client, base, story_prompt(i), 4)).ttft for i in range(count)]
    finally:
        await client.aclose()


def run(rounds_: int = 8, tokens: int = 128, threads: int = NCPU, num_ctx: int = 2048,
        ttft_rounds: int = 30) -> list[Row]:
    from llama_cpp import Llama

    llm = Llama(str(gguf()), n_ctx=num_ctx, n_threads=threads, flash_attn=FLASH_ON, verbose=False)
    try:
        with caravan(parallel=4, threads=threads, num_ctx=num_ctx) as cluster:
            ours, theirs = asyncio.run(rounds(cluster.gateway_url, llm, rounds_, tokens, seed=1))
            first, first_peer = asyncio.run(rounds(cluster.gateway_url, llm, ttft_rounds, 4, seed=2))
            gap = median([t.end - t.sent for t in first_peer])  # the peer's turn, slept instead of computed
            solo, solo_peer = asyncio.run(rounds(cluster.gateway_url, llm, ttft_rounds, 4, seed=3, gap=gap))
    finally:
        llm.close()
    rate, peer_rate = median([t.decode_rate for t in ours]), median([t.decode_rate for t in theirs])
    first, first_peer = first + ours, first_peer + theirs
    ttft, peer_ttft = median([t.ttft * 1000 for t in first]), median([t.ttft * 1000 for t in first_peer])
    engine = median([(t.engine_ttft or 0) * 1000 for t in first])
    with echo_server(delay_ms=engine) as url:  # answers as late as the engine's first token came
        floor = median([t * 1000 - engine for t in asyncio.run(client_floor(url, ttft_rounds, WireClient()))])
        floor_httpx = median([t * 1000 - engine
                              for t in asyncio.run(client_floor(url, ttft_rounds, httpx.AsyncClient()))])
    paired = median([(a.ttft - b.ttft) * 1000 for a, b in zip(first, first_peer, strict=True)])
    outside = median([(t.ttft - (t.engine_ttft or 0)) * 1000 for t in solo])
    solo_paired = median([(a.ttft - b.ttft) * 1000 for a, b in zip(solo, solo_peer, strict=True)])
    solo_engine = median([(t.engine_ttft or 0) * 1000 for t in solo])
    solo_direct = median([t.ttft * 1000 for t in solo_peer])
    interleaved = median([(t.ttft - (t.engine_ttft or 0)) * 1000 for t in first])
    peer = "llama-cpp-python in-process"
    n = f"{len(first)} rounds"
    return [
        Row("single stream", "decode tokens/s", rate, peer_rate, peer, rate / peer_rate, "≥ 0.95×",
            rate / peer_rate >= 0.95),
        Row("single stream", f"TTFT ms (median, {n})", ttft, peer_ttft, peer, ttft / peer_ttft),
        Row("single stream", "engine's own TTFT ms (worker-reported) vs direct TTFT", engine, peer_ttft, peer,
            engine / peer_ttft),
        Row("single stream", f"added TTFT ms: Caravan TTFT − its engine's, requests alone (median, {len(solo)})",
            outside, None, "", None, "≤ 5 ms", outside <= 5),
        Row("single stream", "... the same in the rounds above (right after the peer's llama.cpp ran in this "
            "process on the same 2 cores)", interleaved),
        Row("single stream", "added TTFT ms: Caravan − direct, same prompt, each after an idle gap (median of "
            f"{len(solo)} pairs)", solo_paired, None, peer),
        Row("single stream", "... their engine's own TTFT vs direct TTFT, each after an idle gap", solo_engine,
            solo_direct, peer, solo_engine / solo_direct),
        Row("single stream", "added TTFT ms: Caravan − direct, same prompt, in the rounds above (median of pairs)",
            paired, None, peer),
        Row("single stream", "client floor ms: same client, HTTP server doing nothing but wait", floor),
        Row("single stream", "... the same floor with an httpx client (what it would add on top)", floor_httpx),
        Row("single stream", "added TTFT ms − client floor: the cluster's own share", outside - floor),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--ttft-rounds", type=int, default=30, help="extra rounds of 4 tokens for TTFT")
    parser.add_argument("--threads", type=int, default=NCPU)
    args = parser.parse_args()
    print(table(run(args.rounds, args.tokens, args.threads, ttft_rounds=args.ttft_rounds)))


if __name__ == "__main__":
    main()
