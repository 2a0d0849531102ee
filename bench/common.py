"""What the benchmarks share: the demo model, a Caravan cluster on free ports, the peers, streaming clients.

Every figure is a ratio of two measurements taken side by side in one run, on the same GGUF (the demo
SmolLM2-135M Q4_1), the same threads, the same context per sequence and the same flash attention. Peers:

- llama-cpp-python in-process (``Llama``), the library the worker uses;
- llama.cpp's ``llama-server`` built from the llama.cpp vendored in the same llama-cpp-python sdist
  (``bench/build_peers.sh`` → ``bench/.peers/build/bin/llama-server``);
- ``python -m llama_cpp.server`` (llama-cpp-python's OpenAI server; needs its ``[server]`` extras).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httptools
import httpx

from caravan.cluster import ClusterConfig, LocalCluster, free_port
from caravan.settings import parse_flash_attention
from worker.engine.openmp import shorten_idle_spin

# Every side runs llama.cpp's OpenMP threads with the worker's idle spin (worker.engine.openmp): the in-process
# peer's idle thread would otherwise spin ≈ 5 ms after each of its generations on a core that the Caravan
# request timed next needs; the peers' own figures do not change (llama-server -np 8: 165 vs 164–167 tokens/s).
shorten_idle_spin()

MODEL = "smollm2:135m"
PEERS = Path(__file__).resolve().parent / ".peers"
LLAMA_SERVER = PEERS / "build" / "bin" / "llama-server"
NCPU = os.cpu_count() or 1
# Flash attention, the same on every side: Caravan's setting (Ollama's OLLAMA_FLASH_ATTENTION, default auto, which
# llama.cpp turns on on a CPU). ``OLLAMA_FLASH_ATTENTION=0`` runs the whole bench without it.
FLASH_ATTENTION = parse_flash_attention(os.environ.get("OLLAMA_FLASH_ATTENTION", ""))
FLASH_ON = FLASH_ATTENTION != "off"  # llama-cpp-python takes a bool; its auto would be on here


@dataclass
class Timing:
    """One streamed generation as the client saw it (seconds, ``perf_counter``)."""

    sent: float
    first: float
    end: float
    tokens: int
    engine_ttft: float | None = None  # Caravan: the worker's own prefill + first sample (prompt_eval_duration)

    @property
    def ttft(self) -> float:
        return self.first - self.sent

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first token."""
        return (self.tokens - 1) / (self.end - self.first) if self.tokens > 1 and self.end > self.first else 0.0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def gguf() -> Path:
    from registry.demo import demo_gguf

    return demo_gguf()


@functools.cache
def demo_store() -> Path:
    """A throw-away model store holding the demo model."""
    from registry.demo import import_demo
    from registry.store import Store

    root = Path(tempfile.mkdtemp(prefix="caravan-bench-models-"))
    import_demo(Store(root))
    return root


@contextlib.contextmanager
def caravan(*, parallel: int, threads: int, num_ctx: int, engine: str = "batch",
            env: dict[str, str] | None = None, worker_env: dict[str, str] | None = None,
            python: str = sys.executable) -> Iterator[LocalCluster]:
    """A whole cluster (embedded redis-server, registry, one worker, gateway) with the model loaded; ``python``
    runs its processes (``bench.ab_ttft`` points it at another checkout)."""
    cluster = LocalCluster(ClusterConfig(
        models=demo_store(), gateway_port=free_port(), workers=1, python=python,
        log_dir=Path(tempfile.mkdtemp(prefix="caravan-bench-logs-")),
        worker_env={"CARAVAN_ENGINE": engine, "CARAVAN_N_THREADS": str(threads), "CARAVAN_LOG_LEVEL": "WARNING",
                    **(worker_env or {})},
        gateway_env={"OLLAMA_NUM_PARALLEL": str(parallel), "OLLAMA_CONTEXT_LENGTH": str(num_ctx),
                     "OLLAMA_FLASH_ATTENTION": FLASH_ATTENTION, "CARAVAN_LOG_LEVEL": "WARNING", **(env or {})},
    ))
    cluster.start()
    try:
        _load(cluster.gateway_url)
        yield cluster
    finally:
        cluster.stop()


def _load(gateway: str, timeout: float = 120.0) -> None:
    """Load the model (keep it forever); 503 means the worker has not registered yet."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.post(gateway + "/api/generate", json={"model": MODEL, "keep_alive": -1}, timeout=600)
        if response.status_code != 503 or time.monotonic() > deadline:
            response.raise_for_status()
            return
        time.sleep(0.2)


@contextlib.contextmanager
def llama_server(*, parallel: int, threads: int, num_ctx: int, kv_cache_type: str = "f16") -> Iterator[str]:
    """llama.cpp's own server with ``-np parallel`` and ``num_ctx`` per slot; yields its base URL."""
    if not LLAMA_SERVER.exists():
        raise SystemExit(f"{LLAMA_SERVER} is missing: run bench/build_peers.sh first")
    port = free_port()
    argv = [str(LLAMA_SERVER), "-m", str(gguf()), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(parallel), "-c", str(num_ctx * parallel), "-t", str(threads), "-tb", str(NCPU),
            "-fa", FLASH_ATTENTION, "-ctk", kv_cache_type, "-ctv", kv_cache_type, "--no-webui", "--log-disable"]
    with _process(argv, f"http://127.0.0.1:{port}/health") as url:
        yield url


@contextlib.contextmanager
def echo_server(delay_ms: float = 0.0) -> Iterator[str]:
    """``bench.echo_server``: the client floor (an HTTP server that does nothing but answer after ``delay_ms``);
    yields its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.echo_server", str(port), str(delay_ms)]
    with _process(argv, f"tcp://127.0.0.1:{port}") as url:
        yield url


@contextlib.contextmanager
def llama_cpp_server(*, threads: int, num_ctx: int) -> Iterator[str]:
    """``python -m llama_cpp.server`` (one request at a time by design; no stream interruption)."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf()), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(num_ctx), "--n_threads", str(threads),
            "--n_threads_batch", str(NCPU), "--flash_attn", str(FLASH_ON), "--interrupt_requests", "False",
            "--verbose", "False"]
    with _process(argv, f"http://127.0.0.1:{port}/v1/models") as url:
        yield url


@contextlib.contextmanager
def _process(argv: list[str], ready: str, timeout: float = 120.0) -> Iterator[str]:
    log = tempfile.NamedTemporaryFile(prefix="bench-peer-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{argv[0]} did not start; see {log.name}")
            if ready.startswith("tcp://"):
                host, port = ready[6:].rsplit(":", 1)
                with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 1.0):
                    break
            else:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready, timeout=1.0).status_code == 200:
                        break
            time.sleep(0.1)
        if ready.startswith("tcp://"):
            yield "http://" + ready[6:]
        else:
            yield ready.rsplit("/", 2)[0] if ready.endswith("/v1/models") else ready.rsplit("/", 1)[0]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- streaming clients: each returns the client-side Timing of one greedy generation ---------------------------
class WireClient:
    """One keep-alive HTTP/1.1 connection, one request at a time, that times the wire: the request is written in
    one ``write``, the response parsed by httptools (uvicorn's C parser), lines handed over as they arrive.

    The single-stream bench measures with it because httpx's own Python costs ≈ 1 ms per request on this CPU
    (and CPU per token that a 2-core machine takes from llama.cpp), which no server can do anything about; an
    efficient client (the Go ``ollama`` CLI) costs little. The client floor row shows what this one costs.
    """

    def __init__(self) -> None:
        self._streams: dict[tuple[str, int], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def lines(self, url: str, body: dict[str, object]) -> AsyncIterator[str]:
        target = httpx.URL(url)
        address = (target.host, target.port or 80)
        data = json.dumps(body).encode()
        request = (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (target.raw_path, address[0].encode(), address[1],
                                                        len(data), data))
        if address not in self._streams:
            self._streams[address] = await asyncio.open_connection(*address)
        reader, writer = self._streams[address]
        writer.write(request)
        parser = _Response()
        http = httptools.HttpResponseParser(parser)
        pending, fresh = b"", False
        while not parser.complete:
            received = await reader.read(1 << 16)
            if not received and not fresh and not http.get_status_code():
                # the server closed the idle connection before this request reached it (its keep-alive
                # timeout): send it again on a new one, as any HTTP client does for an idempotent retry
                writer.close()
                self._streams[address] = reader, writer = await asyncio.open_connection(*address)
                writer.write(request)
                fresh = True
                continue
            if not received:
                raise ConnectionError("the server closed the connection")
            http.feed_data(received)
            if http.get_status_code() >= 400 and parser.complete:
                raise RuntimeError(f"HTTP {http.get_status_code()}: {b''.join(parser.body).decode()}")
            pending += b"".join(parser.body)
            parser.body.clear()
            *done, pending = pending.split(b"\n")
            for line in done:
                if line.strip():
                    yield line.decode()
        if pending.strip():
            yield pending.decode()

    async def aclose(self) -> None:
        for _, writer in self._streams.values():
            writer.close()
        self._streams.clear()


class _Response:
    """httptools callbacks: body pieces as they come, and the end of the message."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


Client = httpx.AsyncClient | WireClient


async def _lines(client: Client, url: str, body: dict[str, object]) -> AsyncIterator[str]:
    if isinstance(client, WireClient):
        async for line in client.lines(url, body):
            yield line
        return
    async with client.stream("POST", url, json=body, timeout=900) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.strip():
                yield line


async def caravan_generate(client: Client, base: str, prompt: str, num_predict: int) -> Timing:
    """Ollama ``/api/generate`` streaming, raw prompt, greedy."""
    body = {"model": MODEL, "prompt": prompt, "raw": True, "stream": True,
            "options": {"temperature": 0, "num_predict": num_predict}}
    sent = time.perf_counter()
    first, tokens, engine = 0.0, 0, None
    async for line in _lines(client, base + "/api/generate", body):
        chunk = json.loads(line)
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
        if not first and chunk.get("response"):
            first = time.perf_counter()
        if chunk.get("done"):
            tokens = int(chunk.get("eval_count", 0))
            engine = chunk.get("prompt_eval_duration", 0) / 1e9
    return Timing(sent, first or time.perf_counter(), time.perf_counter(), tokens, engine)


async def llama_server_generate(client: httpx.AsyncClient, base: str, prompt: str, num_predict: int) -> Timing:
    """llama-server's native ``/completion`` streaming, greedy."""
    body = {"prompt": prompt, "n_predict": num_predict, "temperature": 0, "stream": True, "cache_prompt": True}
    sent = time.perf_counter()
    first, tokens = 0.0, 0
    async for line in _lines(client, base + "/completion", body):
        if not line.startswith("data: "):
            continue
        chunk = json.loads(line[6:])
        if not first and chunk.get("content"):
            first = time.perf_counter()
        if chunk.get("stop"):
            tokens = int(chunk.get("tokens_predicted", 0))
    return Timing(sent, first or time.perf_counter(), time.perf_counter(), tokens)


async def llama_cpp_server_generate(client: httpx.AsyncClient, base: str, prompt: str, num_predict: int) -> Timing:
    """llama_cpp.server's OpenAI ``/v1/completions`` streaming, greedy; one chunk per token."""
    body = {"prompt": prompt, "max_tokens": num_predict, "temperature": 0, "stream": True}
    sent = time.perf_counter()
    first, tokens = 0.0, 0
    async for line in _lines(client, base + "/v1/completions", body):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"][0].get("finish_reason") is None:
            tokens += 1
            first = first or time.perf_counter()
    return Timing(sent, first or time.perf_counter(), time.perf_counter(), tokens)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# 13 names whose first tokens all differ (SmolLM2's tokenizer): prompts of indices less than 13 apart share no
# prefix at all, so a side that reuses its previous prompt's prefix (llama-cpp-python's ``generate``) and one that
# reuses the least recently used slot's (Caravan, 4 slots) evaluate the same tokens; with "Story {index}." first
# they shared 4-6 tokens, a different number on each side (≈ 3 ms of prefill per token on a slow CPU).
NAMES = ["Anna", "Bruno", "Chloe", "David", "Elena", "Felix", "Grace", "Hugo", "Irene", "Julia", "Karl", "Laura",
         "Mario"]


def story_prompt(index: int) -> str:
    """Distinct prompts (so no request reuses another's prefix) that make the model write at length."""
    topics = ["a dragon", "the sea", "a lost robot", "a small village", "the moon", "a clockmaker",
              "a winter storm", "an old library", "a desert caravan", "a lighthouse keeper"]
    name, topic = NAMES[index % len(NAMES)], topics[index % len(topics)]
    return f"{name} told story {index}. Once upon a time there was {topic} who"


@dataclass
class Row:
    """One line of the results table: Caravan's figure, the peer's, their ratio and the target."""

    bench: str
    metric: str
    caravan: float
    peer: float | None = None
    peer_name: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None

    def cells(self) -> list[str]:
        def fmt(value: float | None) -> str:
            return "" if value is None else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"

        verdict = "" if self.ok is None else "yes" if self.ok else "NO"
        return [self.bench, self.metric, fmt(self.caravan), fmt(self.peer), self.peer_name,
                "" if self.ratio is None else f"{self.ratio:.2f}×", self.target, verdict]


HEADER = ["bench", "metric", "Caravan", "peer", "peer is", "ratio", "target", "met"]


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)
