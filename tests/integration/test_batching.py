"""Continuous batching end to end: one batch-engine worker with 4 slots behind a real gateway."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from caravan.cluster import ClusterConfig, LocalCluster, free_port

MODEL = "smollm2:135m"
PROMPTS = ["Why is the sky blue?", "Write a haiku about the sea.", "What is 2+2?", "Name three fruits."]
GREEDY = {"temperature": 0, "num_predict": 24, "seed": 1}


def batch_cluster(demo_store: Path, log_dir: Path, **gateway_env: str) -> LocalCluster:
    """A cluster of its own (own Redis) whose worker runs the batch engine with parallel 4 (not started)."""
    return LocalCluster(ClusterConfig(
        models=demo_store, gateway_port=free_port(), workers=1, log_dir=log_dir,
        worker_env={"CARAVAN_ENGINE": "batch", "CARAVAN_N_THREADS": "2"},
        gateway_env={"OLLAMA_NUM_PARALLEL": "4", **gateway_env},
    ))


@pytest.fixture(scope="module")
def batch_gateway(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    running = batch_cluster(demo_store, tmp_path_factory.mktemp("batch-logs"))
    running.start()
    yield running.gateway_url
    running.stop()


def stream_generate(gateway: str, prompt: str, options: dict[str, object], log: list[tuple[str, str]]) -> str:
    """Stream one generate; append (prompt, "first"/"done") to ``log`` as those lines arrive."""
    body = {"model": MODEL, "prompt": prompt, "options": options}
    text = []
    with httpx.stream("POST", gateway + "/api/generate", json=body, timeout=300) as response:
        for line in response.iter_lines():
            chunk = json.loads(line)
            assert "error" not in chunk, chunk
            if not text:
                log.append((prompt, "first"))
            text.append(chunk.get("response", ""))
            if chunk["done"]:
                log.append((prompt, "done"))
    return "".join(text)


def test_concurrent_streams_overlap_and_match_sequential_output(batch_gateway: str) -> None:
    client = ollama.Client(host=batch_gateway)
    sequential = [client.generate(model=MODEL, prompt=p, options=GREEDY).response for p in PROMPTS]
    log: list[tuple[str, str]] = []
    results: dict[str, str] = {}

    def worker(prompt: str) -> None:
        results[prompt] = stream_generate(batch_gateway, prompt, {**GREEDY, "num_predict": 96}, log)

    threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    firsts = [i for i, (_, what) in enumerate(log) if what == "first"]
    dones = [i for i, (_, what) in enumerate(log) if what == "done"]
    assert len(firsts) == len(dones) == 4
    assert max(firsts) < min(dones), f"streams did not run together: {log}"
    for prompt, alone in zip(PROMPTS, sequential, strict=True):
        assert results[prompt].startswith(alone) or results[prompt] == alone


def test_second_chat_turn_reports_whole_prompt(batch_gateway: str) -> None:
    client = ollama.Client(host=batch_gateway)
    messages = [{"role": "user", "content": "Tell me about the moon."}]
    first = client.chat(model=MODEL, messages=messages, options=GREEDY)
    messages += [{"role": "assistant", "content": first.message.content or ""},
                 {"role": "user", "content": "And the sun?"}]
    second = client.chat(model=MODEL, messages=messages, options=GREEDY)
    assert second.message.content and second.done_reason in ("stop", "length")
    assert first.prompt_eval_count and second.prompt_eval_count
    assert second.prompt_eval_count > first.prompt_eval_count + (first.eval_count or 0)


def test_one_disconnect_leaves_the_other_streams_running(batch_gateway: str) -> None:
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "raw": True,
            "options": {"temperature": 0, "num_predict": 2000}}
    log: list[tuple[str, str]] = []
    results: dict[str, str] = {}

    def worker(prompt: str) -> None:
        results[prompt] = stream_generate(batch_gateway, prompt, GREEDY, log)

    with httpx.stream("POST", batch_gateway + "/api/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert not json.loads(next(lines))["done"]
        threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS[:3]]
        for thread in threads:
            thread.start()
        next(lines)
    for thread in threads:
        thread.join()
    assert all(results[p] for p in PROMPTS[:3])


def test_ollama_kv_cache_type_reaches_the_worker(batch_gateway: str, demo_store: Path,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """``OLLAMA_KV_CACHE_TYPE=q8_0`` on the gateway: the worker loads a q8_0 cache (flash attention auto, as in
    Ollama) and serves from it, and /api/ps counts its smaller KV cache."""
    quantized = batch_cluster(demo_store, tmp_path_factory.mktemp("kv-q8-logs"), OLLAMA_KV_CACHE_TYPE="q8_0")
    quantized.start()
    try:
        sizes = {}
        for gateway in (batch_gateway, quantized.gateway_url):
            reply = ollama.Client(host=gateway).generate(model=MODEL, prompt="Name three fruits.", options=GREEDY)
            assert reply.response and reply.done_reason in ("stop", "length")
            (loaded,) = httpx.get(gateway + "/api/ps", timeout=10).json()["models"]
            sizes[gateway] = loaded["size"]
        f16, q8 = sizes[batch_gateway], sizes[quantized.gateway_url]
        assert q8 < f16, sizes
    finally:
        quantized.stop()
