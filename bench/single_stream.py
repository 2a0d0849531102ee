"""Single-stream decode tokens/s and time to first token: Caravan vs llama-cpp-python in-process.

Caravan is a real cluster (embedded redis-server, registry, one batch-engine worker, gateway) driven over
streaming ``/api/generate`` (raw prompt, greedy) with httpx; the peer is ``Llama.generate`` in this process
on the same GGUF, threads and context. Runs alternate (Caravan, direct, Caravan, ...) with a fresh prompt
per round, so neither side reuses a cached prompt and load spikes hit both. TTFT is measured by the client:
request sent → first text; decode rate is (tokens − 1) / (last − first token).

    .venv/bin/python -m bench.single_stream [--rounds 8] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx

from bench.common import NCPU, Row, Timing, caravan, caravan_generate, gguf, median, story_prompt, table


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


async def rounds(base: str, llm: Any, count: int, num_predict: int) -> tuple[list[Timing], list[Timing]]:
    ours, theirs = [], []
    async with httpx.AsyncClient() as client:
        await caravan_generate(client, base, story_prompt(99), 4)  # warm the connection and the slot
        direct_generate(llm, story_prompt(98), 4)
        for index in range(count):
            ours.append(await caravan_generate(client, base, story_prompt(index), num_predict))
            theirs.append(direct_generate(llm, story_prompt(index + 1000), num_predict))
    return ours, theirs


def run(rounds_: int = 8, tokens: int = 128, threads: int = NCPU, num_ctx: int = 2048) -> list[Row]:
    from llama_cpp import Llama

    llm = Llama(str(gguf()), n_ctx=num_ctx, n_threads=threads, verbose=False)
    try:
        with caravan(parallel=4, threads=threads, num_ctx=num_ctx) as cluster:
            ours, theirs = asyncio.run(rounds(cluster.gateway_url, llm, rounds_, tokens))
    finally:
        llm.close()
    rate, peer_rate = median([t.decode_rate for t in ours]), median([t.decode_rate for t in theirs])
    ttft, peer_ttft = median([t.ttft * 1000 for t in ours]), median([t.ttft * 1000 for t in theirs])
    added = median([(a.ttft - b.ttft) * 1000 for a, b in zip(ours, theirs, strict=True)])
    peer = "llama-cpp-python in-process"
    return [
        Row("single stream", "decode tokens/s", rate, peer_rate, peer, rate / peer_rate, "≥ 0.95×",
            rate / peer_rate >= 0.95),
        Row("single stream", "TTFT ms (median)", ttft, peer_ttft, peer, ttft / peer_ttft),
        Row("single stream", "added TTFT ms (median of pairs)", added, None, peer, None, "≤ 5 ms", added <= 5),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=NCPU)
    args = parser.parse_args()
    print(table(run(args.rounds, args.tokens, args.threads)))


if __name__ == "__main__":
    main()
