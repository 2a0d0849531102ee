"""User B's time to first token while user A floods the same model, vs B's idle TTFT (issue 6).

One worker, one slot per model (the worst case for sharing). A keeps 16 requests queued; B asks one short
question at a time. Fair sharing (per-user streams, stride order) bounds B's wait to about one of A's
requests instead of A's whole backlog.

    .venv/bin/python bench/fairness.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from caravan.cluster import ClusterConfig, LocalCluster, free_port
from registry.demo import import_demo
from registry.store import Store

MODEL = "smollm2:135m"
ADMIN = "cvn_" + secrets.token_hex(16)
FLOOD = {"model": MODEL, "prompt": "1, 2, 3,", "raw": True, "stream": False,
         "options": {"temperature": 0, "num_predict": 32}}
QUESTION = {"model": MODEL, "prompt": "Hi", "raw": True, "options": {"temperature": 0, "num_predict": 4}}


def key(gateway: str, name: str) -> dict[str, str]:
    made = httpx.post(gateway + "/api/keys", json={"name": name, "role": "user"},
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).json()
    return {"Authorization": f"Bearer {made['key']}"}


def ttft(gateway: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    with httpx.stream("POST", gateway + "/api/generate", json=QUESTION, headers=headers, timeout=600) as reply:
        lines = reply.iter_lines()
        next(lines)
        first = time.perf_counter() - start
        for _ in lines:
            pass
    return first


def flood(gateway: str, headers: dict[str, str], stop: threading.Event) -> None:
    while not stop.is_set():
        httpx.post(gateway + "/api/generate", json=FLOOD, headers=headers, timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="caravan-bench-"))
    import_demo(Store(store))
    cluster = LocalCluster(ClusterConfig(
        models=store, gateway_port=free_port(), workers=1, log_dir=Path(tempfile.mkdtemp()),
        gateway_env={"CARAVAN_AUTH": "true", "CARAVAN_ADMIN_KEY": ADMIN, "OLLAMA_NUM_PARALLEL": "1"}))
    cluster.start()
    try:
        gateway = cluster.gateway_url
        a, b = key(gateway, "a"), key(gateway, "b")
        ttft(gateway, b)  # load
        idle = statistics.median(ttft(gateway, b) for _ in range(args.rounds))
        one_a = _timed(lambda: httpx.post(gateway + "/api/generate", json=FLOOD, headers=a, timeout=600))
        stop = threading.Event()
        floods = [threading.Thread(target=flood, args=(gateway, a, stop)) for _ in range(16)]
        for thread in floods:
            thread.start()
        time.sleep(2.0)  # let A's backlog build up (a benchmark, not a test)
        busy = statistics.median(ttft(gateway, b) for _ in range(args.rounds))
        stop.set()
        for thread in floods:
            thread.join(600)
    finally:
        cluster.stop()
    print("| B's TTFT idle | B's TTFT while A floods (16 queued) | ratio | one of A's requests alone |")
    print("|---|---|---|---|")
    print(f"| {idle * 1000:.0f} ms | {busy * 1000:.0f} ms | {busy / idle:.1f}× | {one_a * 1000:.0f} ms |")


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
