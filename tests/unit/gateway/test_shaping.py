"""Native chunks from reply events: thinking and tool calls split out, logprobs carried, non-streaming merge."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from caravan.queue import Event, InferenceJob, LoadSpec
from caravan.wire.registry import ModelRecord
from gateway.inference import Prepared
from gateway.shaping import chat_shaper, generate_shaper, merge_chunks
from tests.integration.modelkit import THINK_TEMPLATE, TOOLS_TEMPLATE

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def prepared(op: str, template: str | None = None, **fields: Any) -> Prepared:
    record = ModelRecord(name="m:latest", digest="d", blob="b", size=1, capabilities=["completion"])
    job = InferenceJob(id="r", op=op, model="m", spec=LoadSpec(model="m", blob="b"), template=template, **fields)
    return Prepared(record, job, 300.0, time.perf_counter())


def run(shaper: Any, prep: Prepared, texts: list[str], logprobs: bool = False) -> list[dict[str, Any]]:
    shape = shaper(prep, SimpleNamespace(started_at=time.perf_counter()))
    chunks: list[dict[str, Any]] = []
    for i, text in enumerate(texts):
        entry = [{"token": text, "logprob": -0.5}] if logprobs else None
        chunks += shape(Event(t="tok", seq=i, text=text, logprobs=entry))
    return chunks + shape(Event(t="done", done_reason="stop", stats={"prompt_eval_count": 3, "eval_count": 4}))


def test_chat_tool_call_is_its_own_chunk() -> None:
    texts = ['{"name": "get', '_weather", "arguments": ', '{"city": "Paris"}}']
    chunks = run(chat_shaper, prepared("chat", TOOLS_TEMPLATE, tools=TOOLS), texts)
    assert len(chunks) == 2
    call_chunk, final = chunks
    assert call_chunk["message"]["content"] == "" and not call_chunk["done"]
    call = call_chunk["message"]["tool_calls"][0]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert final["done"] and final["done_reason"] == "stop" and final["prompt_eval_count"] == 3
    merged = merge_chunks(chunks)
    assert merged["message"]["tool_calls"] == [call] and merged["message"]["content"] == ""


def test_without_tools_json_stays_content() -> None:
    chunks = run(chat_shaper, prepared("chat", TOOLS_TEMPLATE), ['{"name": "x", "arguments": {}}'])
    assert merge_chunks(chunks)["message"] == {"role": "assistant", "content": '{"name": "x", "arguments": {}}'}


def test_thinking_and_logprobs_in_generate() -> None:
    prep = prepared("generate", THINK_TEMPLATE, think=True)
    chunks = run(generate_shaper, prep, ["Because", " reasons.</think>", "\n\nYes", "."], logprobs=True)
    streamed = [c for c in chunks if not c["done"]]
    assert [c.get("thinking") for c in streamed] == ["Because", " reasons.", None, None]
    assert [c["response"] for c in streamed] == ["", "", "Yes", "."]
    merged = merge_chunks(chunks)
    assert merged["thinking"] == "Because reasons." and merged["response"] == "Yes."
    assert [e["token"] for e in merged["logprobs"]] == ["Because", " reasons.</think>", "\n\nYes", "."]
    assert merged["done"] and "total_duration" in merged and "load_duration" in merged


def test_think_off_leaves_text_alone() -> None:
    chunks = run(generate_shaper, prepared("generate", THINK_TEMPLATE, think=False), ["<think>a</think>b"])
    assert merge_chunks(chunks)["response"] == "<think>a</think>b" and "thinking" not in merge_chunks(chunks)


def test_load_reply_has_no_metrics() -> None:
    shape = generate_shaper(prepared("load"), SimpleNamespace(started_at=None))  # type: ignore[arg-type]
    (chunk,) = shape(Event(t="done", done_reason="load"))
    assert chunk.pop("created_at").endswith("Z")
    assert chunk == {"model": "m", "response": "", "done": True, "done_reason": "load"}
