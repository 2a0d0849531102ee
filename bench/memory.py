"""Resident size (RSS) of Caravan's processes, next to llama-server holding the same model and KV cache.

A cluster with one batch-engine worker (parallel 4, num_ctx 2048) serves 8 concurrent generations; then
``VmRSS`` (now) and ``VmHWM`` (peak) are read from ``/proc`` for the gateway, worker, registry and
redis-server. The peer is ``llama-server -np 4 -c 8192`` after the same 8 generations: the worker's
ratio to it is the price of Python, llama-cpp-python and the Redis client around the same llama.cpp. Both are
measured twice: with an f16 KV cache (the default) and with q8_0 (``OLLAMA_KV_CACHE_TYPE``; ``-ctk/-ctv``).

    .venv/bin/python -m bench.memory [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import httpx

from bench.common import (
    NCPU,
    Row,
    caravan,
    caravan_generate,
    llama_server,
    llama_server_generate,
    story_prompt,
    table,
)
from bench.concurrency import Generate

PARALLEL, NUM_CTX = 4, 2048


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def traffic(generate: Generate, base: str) -> None:
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(generate(client, base, story_prompt(i), 48) for i in range(8)))


def llama_server_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        cmdline = proc / "cmdline"
        if proc.name.isdigit() and cmdline.exists():
            argv = cmdline.read_bytes().split(b"\0")
            if argv[0].endswith(b"llama-server") and port.encode() in argv:
                return int(proc.name)
    raise RuntimeError("llama-server process not found")


def measure(threads: int, kv_cache_type: str) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """RSS of each cluster process and of llama-server, both with a ``kv_cache_type`` KV cache."""
    with caravan(parallel=PARALLEL, threads=threads, num_ctx=NUM_CTX,
                 env={"OLLAMA_KV_CACHE_TYPE": kv_cache_type}) as cluster:
        asyncio.run(traffic(caravan_generate, cluster.gateway_url))
        sizes = {name: rss(proc.pid) for name, proc in cluster.procs.items()}
    with llama_server(parallel=PARALLEL, threads=threads, num_ctx=NUM_CTX, kv_cache_type=kv_cache_type) as url:
        asyncio.run(traffic(llama_server_generate, url))
        peer = rss(llama_server_pid(url))
    return sizes, peer


def run(threads: int = NCPU) -> list[Row]:
    sizes, peer = measure(threads, "f16")
    quantized, quantized_peer = measure(threads, "q8_0")
    worker, worker_q8 = sizes.pop("worker-0"), quantized["worker-0"][1]
    rows = [Row("memory", "worker RSS MiB (peak)", worker[1], peer[1], "llama-server -np 4", worker[1] / peer[1]),
            Row("memory", "worker RSS MiB (now)", worker[0], peer[0], "llama-server -np 4", worker[0] / peer[0]),
            Row("memory", "worker RSS MiB (peak), OLLAMA_KV_CACHE_TYPE=q8_0", worker_q8, quantized_peer[1],
                "llama-server -np 4 -ctk/-ctv q8_0", worker_q8 / quantized_peer[1]),
            Row("memory", "worker RSS MiB (peak), q8_0 vs f16 KV cache", worker_q8, worker[1], "worker, f16",
                worker_q8 / worker[1])]
    rows += [Row("memory", f"{name} RSS MiB (now / peak {hwm:.0f})", now) for name, (now, hwm) in sizes.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=NCPU)
    args = parser.parse_args()
    print(table(run(args.threads)))


if __name__ == "__main__":
    main()
