"""Run every benchmark and print one table (also saved under bench/results/, git-ignored).

    bench/build_peers.sh                     # once: llama-server from the sdist, llama_cpp.server extras
    .venv/bin/python -m bench.run_all [--threads 2] [--quick]

``--quick`` shrinks every benchmark (fewer rounds, streams and tokens) to check that they all run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

from bench import concurrency, gateway_overhead, memory, second_turn, single_stream
from bench.common import NCPU, Row, load_average, table

RESULTS = Path(__file__).resolve().parent / "results"


def run_all(threads: int, quick: bool) -> list[Row]:
    rows: list[Row] = []
    rows += single_stream.run(rounds_=3 if quick else 8, tokens=32 if quick else 128, threads=threads,
                              ttft_rounds=8 if quick else 30)
    rows += concurrency.run(streams=[1, 8] if quick else [1, 4, 8, 16], tokens=24 if quick else 96,
                            rounds=1 if quick else 2, threads=threads)
    rows += second_turn.run(conversations=2 if quick else 6, threads=threads)
    rows += gateway_overhead.run(requests=128 if quick else 640, threads=threads)
    rows += memory.run(threads=threads)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=NCPU)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    before, started = load_average(), time.time()
    rows = run_all(args.threads, args.quick)
    header = (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))} UTC, {platform.machine()} × {NCPU} CPUs, "
              f"threads {args.threads}, load average before {before}, after {load_average()}, "
              f"{(time.time() - started) / 60:.1f} min")
    print(header)
    print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps({"run": header, "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
