"""Same-run A/B of the added time to first token: this checkout against another git revision.

The VM this runs on changes speed within the hour (bench/README.md), so a change worth a fraction of a
millisecond shows only when both sides are measured in the same minutes: two clusters run at once (same model
store, threads and slots), and requests alternate between them in a seeded random order, each after an idle
gap. Each side's figure is the single-stream target row's: the median of (TTFT at the client − the worker's
own prefill-to-first-token time). The other revision runs from a git worktree under ``bench/.ab/`` (ignored),
with this checkout's virtual environment.

    .venv/bin/python -m bench.ab_ttft [--base HEAD~1] [--requests 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.common import WireClient, caravan, caravan_generate, median, story_prompt

ROOT = Path(__file__).resolve().parent.parent
GAP_S = 0.15  # idle time before each request: every request starts with the cluster asleep, as a lone user's


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[str]:
    """A python command that runs the code of ``revision`` (a worktree of it, removed afterwards)."""
    sha = subprocess.check_output(["git", "rev-parse", "--verify", revision + "^{commit}"], cwd=ROOT, text=True).strip()
    tree = ROOT / "bench" / ".ab" / sha[:12]
    subprocess.run(["git", "worktree", "add", "--force", "--detach", str(tree), sha], cwd=ROOT, check=True,
                   capture_output=True)
    python = tree.with_suffix(".python")
    python.write_text(f'#!/bin/sh\ncd "{tree}" && exec "{sys.executable}" "$@"\n')  # -m finds that tree first
    python.chmod(0o755)
    try:
        yield str(python)
    finally:
        python.unlink()
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False, capture_output=True)


async def alternate(urls: dict[str, str], requests: int, seed: int = 7) -> dict[str, list[float]]:
    """Added TTFT (ms) per side; each round runs one fresh prompt on every side, in a random order."""
    clients = {side: WireClient() for side in urls}
    added: dict[str, list[float]] = {side: [] for side in urls}
    coin = random.Random(seed)
    try:
        for side, url in urls.items():  # warm the connection and the slot
            await caravan_generate(clients[side], url, story_prompt(97), 4)
        for index in range(requests):
            order = list(urls)
            coin.shuffle(order)
            for side in order:
                await asyncio.sleep(GAP_S)
                timing = await caravan_generate(clients[side], urls[side], story_prompt(3000 + index), 4)
                added[side].append((timing.ttft - (timing.engine_ttft or 0)) * 1000)
    finally:
        for client in clients.values():
            await client.aclose()
    return added


def run(base: str, requests: int, threads: int) -> dict[str, float]:
    with (checkout(base) as python, caravan(parallel=4, threads=threads, num_ctx=2048) as ours,
          caravan(parallel=4, threads=threads, num_ctx=2048, python=python) as theirs):
        added = asyncio.run(alternate({"this checkout": ours.gateway_url, base: theirs.gateway_url}, requests))
    return {side: median(values) for side, values in added.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="the git revision to compare with")
    parser.add_argument("--requests", type=int, default=60, help="requests per side")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    medians = run(args.base, args.requests, args.threads)
    (ours, a), (theirs, b) = medians.items()
    print(f"added TTFT ms (median of {args.requests} requests alone): {ours} {a:.2f}, {theirs} {b:.2f}, "
          f"difference {a - b:+.2f}")


if __name__ == "__main__":
    main()
