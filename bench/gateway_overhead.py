"""Gateway overhead per request: one-token generations at concurrency 64.

Overhead is what a request pays outside the model: HTTP → gateway (validate, resolve, place) → XADD →
worker claim → engine → XADD reply events → gateway → HTTP. Two measurements, both client-side over
non-streaming ``/api/generate`` with ``num_predict: 1``:

- **fake engine, concurrency 64** (``CARAVAN_ENGINE=fake``, parallel 64): the engine costs nothing, so the
  whole latency *is* the overhead; reported as median and p99 per request, requests/s through the path, and
  the CPU each process spends per request (``/proc``: the figure that does not depend on the 2 cores being
  shared with the load generator). The load comes from ``CLIENT_PROCESSES`` httpx processes: one alone tops
  out near 130 requests/s on this machine, below what the cluster serves;
- **real batch engine, concurrency 1**: latency minus the engine's own time for that request
  (``prompt_eval_duration + eval_duration`` from the reply), i.e. what the path adds to a real request.

    .venv/bin/python -m bench.gateway_overhead [--requests 640] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from multiprocessing import Process, Queue

import httpx

from bench.common import MODEL, NCPU, Row, caravan, cpu_seconds, median, table

CLIENT_PROCESSES = 4  # the load generator's processes (each runs concurrency / 4 streams)
BODY = {"model": MODEL, "prompt": "Say yes.", "stream": False, "options": {"temperature": 0, "num_predict": 1}}


async def one(client: httpx.AsyncClient, gateway: str) -> tuple[float, float]:
    """(latency, engine time) in seconds."""
    start = time.perf_counter()
    response = await client.post(gateway + "/api/generate", json=BODY, timeout=600)
    latency = time.perf_counter() - start
    reply = response.json()
    assert response.status_code == 200, reply
    return latency, (reply.get("prompt_eval_duration", 0) + reply.get("eval_duration", 0)) / 1e9


async def load(gateway: str, concurrency: int, requests: int) -> tuple[list[float], list[float], float]:
    """Latencies, engine times and the wall time of ``requests`` requests, ``concurrency`` at a time."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(one(client, gateway) for _ in range(concurrency)))  # warm the connections
        left = iter(range(requests))
        results: list[tuple[float, float]] = []

        async def client_loop() -> None:
            for _ in left:
                results.append(await one(client, gateway))

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return [r[0] for r in results], [r[1] for r in results], wall


def _client(gateway: str, concurrency: int, requests: int, out: Queue) -> None:
    latencies, _, wall = asyncio.run(load(gateway, concurrency, requests))
    out.put((latencies, wall))


def load_from(gateway: str, processes: int, concurrency: int, requests: int) -> tuple[list[float], float]:
    """``load`` split over client processes: one httpx process tops out near 130 requests/s here, so a single
    one measured itself (0.37 s median at c=64 while every request spent < 0.1 s in the cluster)."""
    out: Queue = Queue()
    clients = [Process(target=_client, args=(gateway, concurrency // processes, requests // processes, out))
               for _ in range(processes)]
    for client in clients:
        client.start()
    results = [out.get() for _ in clients]
    for client in clients:
        client.join()
    return [t for latencies, _ in results for t in latencies], max(wall for _, wall in results)


def run(requests: int = 640, threads: int = NCPU) -> list[Row]:
    with caravan(parallel=64, threads=threads, num_ctx=512, engine="fake") as cluster:
        before = {name: cpu_seconds(proc.pid) for name, proc in cluster.procs.items()}
        latencies, wall = load_from(cluster.gateway_url, CLIENT_PROCESSES, 64, requests)
        cpu = {name: (cpu_seconds(proc.pid) - before[name]) / requests * 1000 for name, proc in cluster.procs.items()}
    with caravan(parallel=4, threads=threads, num_ctx=2048) as cluster:
        real, engine, _ = asyncio.run(load(cluster.gateway_url, 1, 40))
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    added = median([(a - b) * 1000 for a, b in zip(real, engine, strict=True)])
    return [
        Row("gateway overhead", "fake engine, c=64: ms per request (median)", median(latencies) * 1000),
        Row("gateway overhead", "fake engine, c=64: ms per request (p99)", p99),
        Row("gateway overhead", "fake engine, c=64: requests/s", requests / wall),
        *(Row("gateway overhead", f"fake engine, c=64: {name} CPU ms per request", ms) for name, ms in cpu.items()),
        Row("gateway overhead", "real engine, c=1: latency − engine time, ms (median)", added),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--threads", type=int, default=NCPU)
    args = parser.parse_args()
    print(table(run(args.requests, args.threads)))


if __name__ == "__main__":
    main()
