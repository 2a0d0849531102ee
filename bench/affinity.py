"""Second-turn time to first token across 2 workers, with and without session affinity (issue 4).

Each conversation carries a ~1,000-token history. Turn 1 fills a worker's KV cache; turn 2 adds one short
user message. With affinity the gateway sends turn 2 to the worker holding the prefix, so only the new tokens
are evaluated; without it, turn 2 lands on whichever worker claims first.

    .venv/bin/python bench/affinity.py [--conversations 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from caravan.cluster import ClusterConfig, LocalCluster, free_port
from registry.demo import import_demo
from registry.store import Store

MODEL = "smollm2:135m"
OPTIONS = {"temperature": 0, "num_predict": 4}


def history(index: int) -> list[dict[str, str]]:
    facts = " ".join(f"Fact {index}.{n}: the number {n * 7 + index} is written in blue ink." for n in range(60))
    return [{"role": "user", "content": f"Read these notes carefully. {facts}"}]


def ttft(gateway: str, messages: list[dict[str, str]]) -> tuple[float, str]:
    start = time.perf_counter()
    with httpx.stream("POST", gateway + "/api/chat", json={"model": MODEL, "messages": messages,
                                                           "options": OPTIONS}, timeout=600) as response:
        lines = response.iter_lines()
        next(lines)
        first = time.perf_counter() - start
        text = "".join(json.loads(line)["message"]["content"] for line in lines if line)
    return first, text


def run(store: Path, affinity: bool, conversations: int) -> tuple[float, float]:
    cluster = LocalCluster(ClusterConfig(
        models=store, gateway_port=free_port(), workers=2, log_dir=Path(tempfile.mkdtemp()),
        worker_env={"CARAVAN_N_THREADS": "1"},
        gateway_env={"CARAVAN_AFFINITY": str(affinity).lower(), "CARAVAN_REPLICA_QUEUE_DEPTH": "0"},
    ))
    cluster.start()
    try:
        gateway = cluster.gateway_url
        with ThreadPoolExecutor(2) as pool:  # two concurrent loads put a replica on each worker
            list(pool.map(lambda _: httpx.post(gateway + "/api/generate", json={"model": MODEL}, timeout=600),
                          range(2)))
        firsts, seconds = [], []
        for index in range(conversations):
            messages = history(index)
            first, reply = ttft(gateway, messages)
            second, _ = ttft(gateway, [*messages, {"role": "assistant", "content": reply},
                                       {"role": "user", "content": "Which colour was the ink?"}])
            firsts.append(first)
            seconds.append(second)
        return statistics.median(firsts), statistics.median(seconds)
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=6)
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="caravan-bench-"))
    import_demo(Store(store))
    rows = []
    for affinity in (True, False):
        first, second = run(store, affinity, args.conversations)
        rows.append((affinity, first, second))
    print("| affinity | turn-1 TTFT (median) | turn-2 TTFT (median) | turn 2 / turn 1 |")
    print("|---|---|---|---|")
    for affinity, first, second in rows:
        print(f"| {'on' if affinity else 'off'} | {first * 1000:.0f} ms | {second * 1000:.0f} ms "
              f"| {second / first:.2f} |")
    on, off = rows[0][2], rows[1][2]
    print(f"\nturn-2 TTFT with affinity / without: {on / off:.2f}")


if __name__ == "__main__":
    main()
