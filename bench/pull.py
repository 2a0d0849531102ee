"""Pull throughput over loopback: Caravan's pull (registry B ← registry A, ``/api/pull``) against ``curl`` of the
same model blob from the same server A, measured in the same run; then the bytes re-fetched when a pull is
interrupted by killing B mid-download and restarting it.

    .venv/bin/python bench/pull.py [--runs 3] [--min-part 100000000]

Each Caravan run starts from an empty store (the model blob, ~98 MB, plus two small blobs); curl fetches the
model blob to a file (following the 307, as any client must). Nothing here needs the network.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caravan.cluster import ClusterConfig, LocalCluster
from caravan.names import ModelName
from registry.demo import DEMO_NAME, import_demo
from registry.store import Store
from tests.support.faultproxy import FaultProxy
from tests.support.registries import RegistryProcess

MB = 1_000_000


def curl_seconds(url: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)
    return time.perf_counter() - started


def caravan_seconds(b: RegistryProcess, model: str) -> float:
    shutil.rmtree(b.store / "blobs", ignore_errors=True)
    shutil.rmtree(b.store / "manifests", ignore_errors=True)
    (b.store / "blobs").mkdir()
    started = time.perf_counter()
    lines = b.transfer("pull", model, insecure=True)
    elapsed = time.perf_counter() - started
    assert lines[-1] == {"status": "success"}, lines[-1]
    return elapsed


def interrupted(b: RegistryProcess, proxy: FaultProxy, size: int, total: int) -> tuple[float, float]:
    """Kill B (SIGKILL) once half the blob went through the proxy, restart it, pull again.

    Returns (MB through the proxy before the kill, MB that crossed it twice), from the proxy's count of bytes
    handed to B's connections.
    """
    b.stop()
    shutil.rmtree(b.store, ignore_errors=True)
    b.start()
    proxy.reset()
    proxy.hold(size // 2)
    pulling = threading.Thread(target=lambda: _ignore_errors(b, DEMO_NAME), daemon=True)
    pulling.start()
    assert proxy.paused.wait(120)
    b.stop(signal.SIGKILL)
    before = proxy.blob_bytes
    proxy.resume()
    b.start()
    assert b.transfer("pull", DEMO_NAME)[-1] == {"status": "success"}
    pulling.join(30)
    return before / MB, (proxy.blob_bytes - total) / MB


def _ignore_errors(b: RegistryProcess, model: str) -> None:
    try:
        b.transfer("pull", model)
    except Exception:  # the connection dies with B
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--min-part", type=int, default=100 * MB, help="CARAVAN_PULL_MIN_PART for B")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="caravan-bench-pull-"))
    redis = LocalCluster(ClusterConfig(models=work / "unused", log_dir=work))
    redis.start_redis()
    base = redis.redis_url.rsplit("/", 1)[0]
    import_demo(Store(work / "a"))
    manifest = Store(work / "a").read_manifest(ModelName.parse(DEMO_NAME)).manifest
    layer = manifest.layer("model")
    assert layer is not None
    a = RegistryProcess(work / "a", f"{base}/1", work).start()
    proxy = FaultProxy(a.url).start()
    env = {"CARAVAN_PULL_MIN_PART": str(args.min_part), "CARAVAN_UPSTREAM": proxy.url}
    b = RegistryProcess(work / "b", f"{base}/2", work, env).start()
    try:
        report(a, b, proxy, layer.digest, layer.size, manifest.size, args, work)
    finally:
        for part in (b, a):
            part.stop()
        proxy.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(a: RegistryProcess, b: RegistryProcess, proxy: FaultProxy, digest: str, size: int, total: int,
           args: argparse.Namespace, work: Path) -> None:
    blob_url = f"{a.url}/v2/library/smollm2/blobs/{digest}"
    model = f"{a.host}/library/{DEMO_NAME}"
    curl, caravan = [], []
    for _ in range(args.runs):  # interleaved, so both see the same background load
        curl.append(curl_seconds(blob_url, work / "curl.bin"))
        caravan.append(caravan_seconds(b, model))
    print(f"blob {digest[7:19]}: {size / MB:.1f} MB; model {total / MB:.1f} MB; {args.runs} runs each; "
          f"B part minimum {args.min_part / MB:g} MB")
    rates = {}
    for label, seconds, volume in (("curl -L (the blob)", curl, size), ("caravan /api/pull", caravan, total)):
        rates[label] = volume / MB / statistics.median(seconds)
        print(f"{label:<22} median {rates[label]:7.1f} MB/s ({statistics.median(seconds):.3f} s)   "
              f"best {volume / MB / min(seconds):7.1f} MB/s")
    print(f"ratio caravan/curl     {rates['caravan /api/pull'] / rates['curl -L (the blob)']:.2f} (medians; the "
          f"pull includes the manifest, the job queue, verification and the progress stream)")
    before, again = interrupted(b, proxy, size, total)
    print(f"interrupted at half:   {before:.1f} MB went through before the kill; {again:.1f} MB crossed the link "
          f"again after the restart ({again / (size / MB) * 100:.1f}% of the blob)")

if __name__ == "__main__":
    main()
