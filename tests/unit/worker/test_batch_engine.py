"""The batching engine on the real demo model (SmolLM2-135M), in-process: no Redis, no gateway."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from caravan.queue import Event, InferenceJob, LoadSpec
from worker.engine.base import Engine
from worker.engine.batch import BatchEngine
from worker.engine.batcher import Batcher, Slot, common_prefix
from worker.engine.sampling import SamplingParams

PROMPTS = ["Why is the sky blue?", "Write a haiku about the sea.", "What is 2+2?", "Name three fruits."]
GREEDY = {"temperature": 0, "num_predict": 24}


def make_engine(parallel: int, reuse_prefix: bool = True, park_bytes: int = 0) -> BatchEngine:
    """A loaded engine (call outside an event loop; ``new_engine`` inside one)."""
    engine = new_engine(parallel, reuse_prefix, park_bytes)
    asyncio.run(engine.load())
    return engine


def new_engine(parallel: int, reuse_prefix: bool = True, park_bytes: int = 0) -> BatchEngine:
    from registry.demo import demo_gguf

    spec = LoadSpec(model="smollm2", blob="demo", num_ctx=1024, parallel=parallel)
    return BatchEngine(spec, demo_gguf(), n_threads=2, reuse_prefix=reuse_prefix, park_bytes=park_bytes)


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchEngine]:
    """Four slots with prefix reuse: the worker's configuration."""
    running = make_engine(4)
    yield running
    asyncio.run(running.close())


@pytest.fixture(scope="module")
def fresh() -> Iterator[BatchEngine]:
    """Four slots, every request starting from an empty sequence (no prefix reuse)."""
    running = make_engine(4, reuse_prefix=False)
    yield running
    asyncio.run(running.close())


def job(prompt: str, options: dict[str, Any] | None = None, op: str = "generate", **fields: Any) -> InferenceJob:
    spec = LoadSpec(model="smollm2", blob="demo", num_ctx=1024, parallel=4)
    return InferenceJob(id=prompt[:20], op=op, model="smollm2", spec=spec, prompt=prompt,
                        options=options if options is not None else dict(GREEDY), **fields)


async def run(engine: Engine, request: InferenceJob, cancel: threading.Event | None = None) -> tuple[str, Event]:
    """The request's text and its final event."""
    text, final = [], None
    async for event in engine.stream(request, cancel or threading.Event()):
        if event.t == "tok":
            text.append(event.text)
        else:
            final = event
    assert final is not None
    return "".join(text), final


def generated(engine: BatchEngine, request: InferenceJob, final: Event) -> list[int]:
    """Token ids the request generated (the done event's context minus the prompt)."""
    assert final.stats is not None and final.t == "done"
    return list(final.stats["context"])[len(engine.tokens(request)) :]


def first_difference(a: list[int], b: list[int]) -> int | None:
    n = common_prefix(a, b)
    return None if n == len(a) == len(b) else n


async def test_concurrent_greedy_output_equals_each_request_alone(fresh: BatchEngine) -> None:
    jobs = [job(p) for p in PROMPTS]
    alone = [await run(fresh, j) for j in jobs]
    steps = fresh.batcher.steps if fresh.batcher else 0
    together = await asyncio.gather(*(run(fresh, j) for j in jobs))
    assert fresh.batcher is not None and fresh.batcher.steps - steps < sum(
        len(generated(fresh, j, a[1])) for j, a in zip(jobs, alone, strict=True)), "requests shared decode steps"
    for request, (text, final), (text_b, final_b) in zip(jobs, alone, together, strict=True):
        ids, ids_b = generated(fresh, request, final), generated(fresh, request, final_b)
        diverge = first_difference(ids, ids_b)
        assert diverge is None, f"{request.prompt!r}: alone and batched tokens diverge at position {diverge}"
        assert text == text_b and final.done_reason == final_b.done_reason


async def test_more_requests_than_slots_all_complete(fresh: BatchEngine) -> None:
    prompts = [f"Count from {n} to {n + 3}." for n in range(7)]
    alone = [await run(fresh, job(p, {"temperature": 0, "num_predict": 8})) for p in prompts[:2]]
    together = await asyncio.gather(*(run(fresh, job(p, {"temperature": 0, "num_predict": 8})) for p in prompts))
    assert all(final.t == "done" and final.done_reason in ("stop", "length") for _, final in together)
    assert [text for text, _ in together[:2]] == [text for text, _ in alone]


async def test_prefix_reuse_evaluates_only_new_tokens(engine: BatchEngine) -> None:
    first = job("Tell me about the moon.", op="chat", messages=[{"role": "user", "content": "Tell me about the moon."}])
    reply, final = await run(engine, first)
    assert final.stats is not None and final.done_reason in ("stop", "length")
    history = [*first.messages, {"role": "assistant", "content": reply}, {"role": "user", "content": "And the sun?"}]
    second = job("", op="chat", messages=history)
    assert engine.batcher is not None
    before = engine.batcher.prefilled
    _, final2 = await run(engine, second)
    evaluated = engine.batcher.prefilled - before
    prompt2 = engine.tokens(second)
    assert final2.stats is not None and final2.stats["prompt_eval_count"] == len(prompt2)
    assert evaluated <= len(prompt2) - len(engine.tokens(first)), "the first turn's prompt was evaluated again"


async def two_conversations(park_mb: int) -> tuple[str, int, int, Batcher]:
    """One slot; conversation 1, then conversation 2 (which takes the slot), then conversation 1's next turn.
    Returns that turn's text, the prompt tokens it evaluated, the tokens new since turn 1, and the batcher."""
    engine = new_engine(1, park_bytes=park_mb << 20)
    await engine.load()
    assert engine.batcher is not None
    try:
        first = [{"role": "user", "content": "Here is some context about rivers and lakes. " * 12 + "Summarise it."}]
        reply, _ = await run(engine, job("", op="chat", messages=first))
        await run(engine, job("", op="chat", messages=[{"role": "user", "content": "Name three fruits."}]))
        turn2 = job("", op="chat", messages=[*first, {"role": "assistant", "content": reply},
                                              {"role": "user", "content": "Shorter, please."}])
        parked, before = len(engine.batcher.parked), engine.batcher.prefilled
        text, _ = await run(engine, turn2)
        new_tokens = len(engine.tokens(turn2)) - len(engine.tokens(job("", op="chat", messages=first)))
        assert parked == (1 if park_mb else 0), "conversation 1's KV went to host RAM while 2 ran"
        return text, engine.batcher.prefilled - before, new_tokens, engine.batcher
    finally:
        await engine.close()


async def test_parked_history_comes_back_for_its_next_turn() -> None:
    """More conversations than slots: the next turn evaluates only its new tokens, with the same greedy output
    as when it is evaluated from scratch (no host RAM for parked states)."""
    text, evaluated, new_tokens, batcher = await two_conversations(64)
    assert batcher.restored == 1 and evaluated <= new_tokens, "turn 1 was evaluated again"
    fresh_text, fresh_evaluated, _, fresh_batcher = await two_conversations(0)
    assert fresh_batcher.restored == 0 and fresh_evaluated > new_tokens
    assert text == fresh_text


async def test_request_preempted_when_kv_is_full_still_completes_unchanged(fresh: BatchEngine) -> None:
    batcher = fresh.batcher
    assert batcher is not None
    jobs = [job(p) for p in PROMPTS[:2]]
    alone = [await run(fresh, j) for j in jobs]
    real, refused = batcher.llama_decode, []

    def full_once() -> int:  # the first mixed step finds no KV room, as a full unified cache would
        if not refused and batcher.batch.n_tokens > 1 and len(batcher._busy()) == 2 and batcher.steps > 3:
            refused.append(batcher.steps)
            return 1
        return real()

    batcher.llama_decode = full_once  # type: ignore[method-assign]
    try:
        together = await asyncio.gather(*(run(fresh, j) for j in jobs))
    finally:
        del batcher.llama_decode
    assert refused, "the test never filled the cache"
    assert [t for t, _ in together] == [t for t, _ in alone]


async def test_cancel_ends_with_cancelled_and_frees_the_slot(engine: BatchEngine) -> None:
    cancel = threading.Event()
    seen = 0
    final = None
    async for event in engine.stream(job("1, 2, 3, 4,", {"temperature": 0, "num_predict": 500}, raw=True), cancel):
        if event.t == "tok":
            seen += 1
            if seen == 3:
                cancel.set()
        else:
            final = event
    assert final is not None and final.done_reason == "cancelled"
    assert final.stats is not None and final.stats["eval_count"] < 500
    text, after = await run(engine, job("Say hi.", {"temperature": 0, "num_predict": 4}))
    assert after.t == "done" and text


async def test_cancel_while_queued_behind_busy_slots(fresh: BatchEngine) -> None:
    long = {"temperature": 0, "num_predict": 400}
    cancels = [threading.Event() for _ in range(5)]
    runs = [asyncio.create_task(run(fresh, job(f"{i}, {i + 1}, {i + 2},", long, raw=True), cancel))
            for i, cancel in enumerate(cancels)]
    cancels[4].set()
    _, queued = await runs[4]
    for cancel in cancels[:4]:
        cancel.set()
    finals = [final for _, final in await asyncio.gather(*runs[:4])]
    assert queued.done_reason == "cancelled" and queued.stats is not None and queued.stats["eval_count"] <= 1
    assert all(final.done_reason == "cancelled" for final in finals)


@pytest.mark.parametrize("delivered", [True, False])
async def test_first_token_can_be_delivered_from_the_engine_thread(engine: BatchEngine, delivered: bool) -> None:
    """``first`` gets the first token on the engine's thread; delivered there, the stream skips it."""
    request = job("Count: one, two, three,", {**GREEDY, "num_predict": 6})
    alone, _ = await run(engine, request)
    seen: list[tuple[Event, str]] = []

    def first(event: Event) -> bool:
        seen.append((event, threading.current_thread().name))
        return delivered

    rest, events = [], []
    async for event in engine.stream(request, threading.Event(), first=first):
        events.append(event)
        rest.append(event.text if event.t == "tok" else "")
    assert len(seen) == 1 and seen[0][0].t == "tok" and seen[0][1] != threading.current_thread().name
    text = "".join(rest)
    assert (seen[0][0].text + text if delivered else text) == alone, "same tokens, each exactly once"
    assert events[-1].t == "done" and events[-1].stats["eval_count"] == 6


async def test_stop_strings_cut_the_text(engine: BatchEngine) -> None:
    base, _ = await run(engine, job("List three fruits."))
    stop = base[3:6]
    cut, final = await run(engine, job("List three fruits.", {**GREEDY, "stop": [stop]}))
    assert final.done_reason == "stop" and stop not in cut and base.startswith(cut)


async def test_json_format_is_valid_json(engine: BatchEngine) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    text, final = await run(engine, job("Give a person's first name as JSON.", {"temperature": 0, "num_predict": 64},
                                        format=schema))
    assert final.done_reason == "stop" and "name" in json.loads(text)


async def test_bad_format_is_a_400(engine: BatchEngine) -> None:
    _, final = await run(engine, job("x", format="yaml"))
    assert final.t == "err" and final.status == 400


async def test_seeded_sampling_is_per_sequence(engine: BatchEngine) -> None:
    options = {"temperature": 1.0, "top_k": 100, "top_p": 1.0, "seed": 7, "num_predict": 16,
               "repeat_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": 0.5, "min_p": 0.01}
    alone, _ = await run(engine, job("Invent a word.", options))
    together = await asyncio.gather(*(run(engine, job("Invent a word.", options)) for _ in range(3)))
    assert all(text == alone for text, _ in together)


def test_slot_choice_continues_a_history_else_spares_other_caches(engine: BatchEngine) -> None:
    assert engine.batcher is not None
    choose = engine.batcher._choose
    slots = [Slot(0, [1, 2, 3], used=5.0), Slot(1, [1, 2, 9, 9], used=1.0), Slot(2, [], used=0.0),
             Slot(3, [7], used=3.0)]
    assert choose(slots, [1, 2, 3, 4]).seq_id == 0, "the longest history the prompt continues"
    assert choose(slots, [1, 2, 9, 9, 5]).seq_id == 1
    assert choose(slots, [5, 5]).seq_id == 2, "an empty slot before evicting anyone"
    assert choose(slots[:2] + slots[3:], [5]).seq_id == 1, "then the least recently used"
    system_only = [Slot(0, [1, 2, 3, 4, 5, 6], used=2.0), Slot(1, [], used=0.0)]
    assert choose(system_only, [1, 2, 8]).seq_id == 1, "a shared system prompt alone does not evict"
    next_to_busy = SimpleNamespace(_busy=lambda: [Slot(2)])
    assert Batcher._choose(next_to_busy, [Slot(0), Slot(1), Slot(3)], [5]).seq_id == 1  # type: ignore[arg-type]


async def test_logprobs_come_from_each_sequences_own_row(engine: BatchEngine) -> None:
    from worker.engine.llama import LlamaEngine

    options = {"temperature": 0, "num_predict": 8}
    prompts = ["The capital of France is", "Two plus two equals"]

    async def entries(eng: BatchEngine | LlamaEngine, prompt: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async for event in eng.stream(job(prompt, options, raw=True, logprobs=True, top_logprobs=3),
                                      threading.Event()):
            out += event.logprobs or []
        return out

    batched = await asyncio.gather(*(entries(engine, p) for p in prompts))
    single = LlamaEngine(engine.spec, engine.path, n_threads=2)
    await single.load()
    try:
        for prompt, ours in zip(prompts, batched, strict=True):
            theirs = await entries(single, prompt)
            assert [e["token"] for e in ours] == [e["token"] for e in theirs] and ours
            assert all(len(e["top_logprobs"]) == 3 for e in ours)
            assert all(e["top_logprobs"][0]["token"] == e["token"] for e in ours), "greedy picks the top token"
            assert [e["logprob"] for e in ours] == pytest.approx([e["logprob"] for e in theirs], abs=1e-3)
    finally:
        await single.close()


async def test_embeddings_on_the_separate_context(engine: BatchEngine) -> None:
    request = job("", op="embed", input=["hello world", "the sky is blue"])  # type: ignore[arg-type]
    final = await engine.embed(request, threading.Event())
    assert final.t == "done" and final.embeddings is not None and len(final.embeddings) == 2
    assert len(final.embeddings[0]) == 576 and final.embeddings[0] != final.embeddings[1]
    text, after = await run(engine, job("Say hi.", {"temperature": 0, "num_predict": 4}))
    assert after.t == "done" and text


def test_sampling_params_follow_ollama_options() -> None:
    params = SamplingParams.from_options({"temperature": 0.5, "top_k": 7, "repeat_last_n": -1, "seed": 3}, 1024)
    assert (params.temperature, params.top_k, params.repeat_last_n, params.seed) == (0.5, 7, 1024, 3)
    assert SamplingParams.from_options({}, 1024).top_p == 0.9
    assert SamplingParams.from_options({}, 1024).seed != SamplingParams.from_options({}, 1024).seed


@pytest.mark.parametrize("use_mmap", [True, False])
def test_use_mmap_reaches_llama_cpps_load_mode(monkeypatch: pytest.MonkeyPatch, use_mmap: bool) -> None:
    """``llama_model_params`` has ``load_mode``, not ``use_mmap``: Ollama's option must land there (its default,
    AUTO, is neither)."""
    from llama_cpp import _internals
    from llama_cpp import llama_cpp as C

    from registry.demo import demo_gguf

    seen: list[Any] = []

    def capture(path_model: str, params: Any, verbose: bool) -> None:
        seen.append(params)
        raise RuntimeError("captured")

    monkeypatch.setattr(_internals, "LlamaModel", capture)
    spec = LoadSpec(model="smollm2", blob="demo", num_ctx=256, use_mmap=use_mmap)
    with pytest.raises(RuntimeError, match="captured"):
        BatchEngine(spec, demo_gguf())._load()
    assert seen[0].load_mode == (C.LLAMA_LOAD_MODE_MMAP if use_mmap else C.LLAMA_LOAD_MODE_NONE)


def test_flash_attention_and_kv_cache_type_reach_the_context() -> None:
    """Ollama's OLLAMA_FLASH_ATTENTION / OLLAMA_KV_CACHE_TYPE (through the spec) shape the real context: a q8_0
    cache holds a sequence in about 34/64 of the f16 bytes, and with flash attention off a quantized cache falls
    back to f16 (llama.cpp refuses a quantized V cache without it). Each context generates."""
    from llama_cpp import llama_cpp as C

    from registry.demo import demo_gguf

    state: dict[tuple[str, str], int] = {}
    for flash, kv in [("auto", "f16"), ("on", "q8_0"), ("off", "q8_0"), ("off", "f16")]:
        spec = LoadSpec(model="smollm2", blob="demo", num_ctx=256, parallel=1, flash_attention=flash,
                        kv_cache_type=kv)
        loaded = BatchEngine(spec, demo_gguf(), n_threads=2)
        assert loaded._context_params().flash_attn_type == {
            "auto": C.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": C.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": C.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash]
        asyncio.run(loaded.load())
        try:
            text, final = asyncio.run(run(loaded, job("Name three fruits.", {"temperature": 0, "num_predict": 8})))
            assert text and final.done_reason in ("stop", "length")
            state[(flash, kv)] = C.llama_state_seq_get_size(loaded.ctx, 0)
        finally:
            asyncio.run(loaded.close())
    f16 = state[("auto", "f16")]
    assert 0.45 < state[("on", "q8_0")] / f16 < 0.6, state
    assert state[("off", "q8_0")] == state[("off", "f16")] == f16, state


@pytest.mark.parametrize(("flash", "kv", "flash_type", "kv_ggml"), [("auto", "q8_0", "ENABLED", "Q8_0"),
                                                                  ("off", "q4_0", "DISABLED", "F16")])
def test_the_one_sequence_engine_takes_the_same_settings(flash: str, kv: str, flash_type: str, kv_ggml: str) -> None:
    """``CARAVAN_ENGINE=llama``: ``Llama`` takes flash attention as a bool (auto: on, llama.cpp's choice on a CPU)."""
    from llama_cpp import llama_cpp as C

    from registry.demo import demo_gguf
    from worker.engine.llama import LlamaEngine

    spec = LoadSpec(model="smollm2", blob="demo", num_ctx=256, flash_attention=flash,
                    kv_cache_type=kv)
    single = LlamaEngine(spec, demo_gguf(), n_threads=2)
    asyncio.run(single.load())
    try:
        params = single.llm.context_params
        assert params.flash_attn_type == getattr(C, f"LLAMA_FLASH_ATTN_TYPE_{flash_type}")
        assert params.type_k == params.type_v == getattr(C, f"GGML_TYPE_{kv_ggml}")
        text, final = asyncio.run(run(single, job("Name three fruits.", {"temperature": 0, "num_predict": 8})))
        assert text and final.done_reason in ("stop", "length")
    finally:
        asyncio.run(single.close())


def test_a_short_prompt_reaches_the_engine_thread_when_stream_is_called(engine: BatchEngine) -> None:
    """The worker calls ``stream`` in the turn of its loop that read the job: the engine thread starts on it at
    once, before anyone awaits an event (the loop goes on re-arming its reads meanwhile)."""
    sampled = threading.Event()

    def first(event: Event) -> bool:
        sampled.set()
        return False  # not written anywhere: the event also comes through the stream

    async def scenario() -> tuple[bool, str]:
        events = engine.stream(job("Name three fruits.", {"temperature": 0, "num_predict": 3}), threading.Event(),
                               first)
        started = await asyncio.to_thread(sampled.wait, 60)  # nothing has iterated ``events`` yet
        text = "".join([event.text async for event in events if event.t == "tok"])
        return started, text

    started, text = asyncio.run(scenario())
    assert started, "the first token was sampled before the stream was iterated"
    assert text, "and the stream still delivers every token"


def test_an_idle_engine_thread_starts_on_a_request_before_stream_returns(engine: BatchEngine,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-off: the caller's event loop must not keep the GIL while the woken engine thread waits for it to
    admit the request (its prefill would start only when the loop's turn ends)."""
    assert engine.batcher is not None
    monkeypatch.setattr(engine.batcher, "handoff_wait", 60.0)  # a bound only this slow machine could reach
    decoding: list[list[str]] = []
    real = engine.batcher.llama_decode

    def llama_decode() -> int:
        decoding.append([s.req.job.id for s in engine.batcher.slots if s.req is not None] if engine.batcher else [])
        return real()

    monkeypatch.setattr(engine.batcher, "llama_decode", llama_decode)

    async def scenario() -> tuple[list[list[str]], str]:
        request = job("Name four fruits.", {"temperature": 0, "num_predict": 3})
        events = engine.stream(request, threading.Event())
        seen = [list(ids) for ids in decoding]  # before anything awaits: the thread has admitted it already
        text = "".join([event.text async for event in events if event.t == "tok"])
        return seen, text

    seen, text = asyncio.run(scenario())
    assert seen and seen[0] == ["Name four fruits."], "the prefill began before stream() returned"
    assert text


def test_a_failing_preparation_fails_where_the_events_are_awaited(engine: BatchEngine,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``stream`` runs in the worker's claiming loop: a bug in preparing one request must not raise there."""

    def broken(*args: Any) -> None:
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(engine, "request", broken)

    async def scenario() -> None:
        events = engine.stream(job("Why is the sky blue?"), threading.Event())  # does not raise here
        with pytest.raises(RuntimeError, match="tokenizer exploded"):
            await anext(events)

    asyncio.run(scenario())
