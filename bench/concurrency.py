"""Aggregate decode tokens/s at 1, 4, 8 and 16 concurrent streams.

Caravan (batch engine, ``parallel = N``) vs llama.cpp's ``llama-server -np N`` (built from the llama.cpp that
llama-cpp-python 0.3.36 vendors) vs ``python -m llama_cpp.server`` (serialises requests). Every server gets
the same GGUF, threads and context per sequence; Caravan and llama-server are restarted for each N. N clients
stream one greedy generation each (distinct prompts, ``tokens`` new tokens at most); aggregate = all tokens
generated / (last stream's end − first request sent). All three servers run at once (idle ones cost nothing) and rounds
alternate between them, so load from outside the benchmark hits each alike; the best of ``rounds`` is kept.

What batching gains (N streams vs one) is also measured within each N's rounds: one stream on the same
``parallel = N`` cluster (and on ``llama-server -np N``) right after the N streams, so both figures of that ratio
come from the same minutes; the VM's speed drifts by ±10 % between the minutes of N = 1 and N = 8.

    .venv/bin/python -m bench.concurrency [--streams 1 4 8 16] [--tokens 96] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

import httpx

from bench.common import (
    NCPU,
    Row,
    Timing,
    caravan,
    caravan_generate,
    llama_cpp_server,
    llama_cpp_server_generate,
    llama_server,
    llama_server_generate,
    story_prompt,
    table,
)

Generate = Callable[[httpx.AsyncClient, str, str, int], Awaitable[Timing]]


async def aggregate(generate: Generate, base: str, streams: int, tokens: int, offset: int) -> float:
    """Tokens/s of ``streams`` concurrent generations."""
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        runs = await asyncio.gather(*(generate(client, base, story_prompt(offset + i), tokens)
                                      for i in range(streams)))
    wall = max(t.end for t in runs) - min(t.sent for t in runs)
    return sum(t.tokens for t in runs) / wall


def measure(streams: list[int], tokens: int, rounds: int, threads: int, num_ctx: int) -> dict[str, dict[int, float]]:
    """Best-of-``rounds`` aggregate per server and N; rounds alternate between the servers, all running."""
    results: dict[str, dict[int, float]] = {"caravan": {}, "llama-server": {}, "llama_cpp.server": {},
                                            "caravan, 1 stream": {}, "llama-server, 1 stream": {}}
    with llama_cpp_server(threads=threads, num_ctx=num_ctx) as python_url:
        for n in streams:
            with caravan(parallel=n, threads=threads, num_ctx=num_ctx) as cluster, \
                    llama_server(parallel=n, threads=threads, num_ctx=num_ctx) as server_url:
                targets: dict[str, tuple[Generate, str]] = {
                    "caravan": (caravan_generate, cluster.gateway_url),
                    "llama-server": (llama_server_generate, server_url),
                    "llama_cpp.server": (llama_cpp_server_generate, python_url),
                }
                for generate, base in targets.values():  # warm-up: first-request costs are not throughput
                    asyncio.run(aggregate(generate, base, 1, 4, 999))
                for r in range(rounds):
                    for name, (generate, base) in targets.items():
                        value = asyncio.run(aggregate(generate, base, n, tokens, 100 * r))
                        results[name][n] = max(results[name].get(n, 0.0), value)
                        if n > 1 and name != "llama_cpp.server":  # the same server, one stream, same minutes
                            alone = asyncio.run(aggregate(generate, base, 1, tokens, 100 * r + 50))
                            results[f"{name}, 1 stream"][n] = max(results[f"{name}, 1 stream"].get(n, 0.0), alone)
    return results


def rows(results: dict[str, dict[int, float]]) -> list[Row]:
    ours, server, python = results["caravan"], results["llama-server"], results["llama_cpp.server"]
    out = []
    for n in ours:
        out.append(Row("concurrency", f"{n} streams: aggregate tokens/s", ours[n], server[n], "llama-server -np N",
                       ours[n] / server[n], "≥ 0.8× at 8" if n == 8 else "", ours[n] / server[n] >= 0.8 if n == 8
                       else None))
        out.append(Row("concurrency", f"{n} streams: aggregate tokens/s", ours[n], python[n], "llama_cpp.server",
                       ours[n] / python[n]))
    alone, server_alone = results["caravan, 1 stream"], results["llama-server, 1 stream"]
    for n in alone:
        scale = ours[n] / alone[n]
        out.append(Row("concurrency", f"{n} streams vs 1 stream (Caravan, parallel {n}, same rounds)", ours[n],
                       alone[n], "Caravan, 1 stream", scale, "≥ 2× at 8" if n == 8 else "",
                       scale >= 2 if n == 8 else None))
        out.append(Row("concurrency", f"... the same for llama-server -np {n}", server[n], server_alone[n],
                       "llama-server, 1 stream", server[n] / server_alone[n]))
    if 1 in ours:
        for n in ours:
            if n > 1:
                out.append(Row("concurrency", f"{n} streams vs 1 stream (Caravan; N = 1 measured minutes apart)",
                               ours[n], ours[1], "Caravan, 1 stream", ours[n] / ours[1]))
    return out


def run(streams: list[int] | None = None, tokens: int = 96, rounds: int = 2, threads: int = NCPU,
        num_ctx: int = 1024) -> list[Row]:
    return rows(measure(streams or [1, 4, 8, 16], tokens, rounds, threads, num_ctx))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=NCPU)
    args = parser.parse_args()
    print(table(run(args.streams, args.tokens, args.rounds, args.threads)))


if __name__ == "__main__":
    main()
