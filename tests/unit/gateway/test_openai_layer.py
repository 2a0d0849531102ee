"""The OpenAI layer's translations both ways, and its SSE framing as the openai client parses it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest

from caravan.errors import BadRequest
from caravan.queue import Event
from caravan.wire.openai import ChatCompletionRequest, CompletionRequest
from gateway.openai_layer import chat_request, generate_request
from gateway.openai_relay import ChatChunks, CompletionChunks
from gateway.streaming import sse_stream


def chat(**fields: Any) -> Any:
    return chat_request(ChatCompletionRequest.model_validate({"model": "m", **fields}))


def test_openai_defaults_override_modelfile_sampling() -> None:
    native = chat(messages=[{"role": "user", "content": "hi"}], max_tokens=7, stop="END", seed=5)
    assert native.options == {"temperature": 1.0, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                              "num_predict": 7, "seed": 5, "stop": ["END"]}
    tuned = chat(messages=[{"role": "user", "content": "hi"}], temperature=0.2, top_p=0.5, stop=["a", "b"])
    assert tuned.options["temperature"] == 0.2 and tuned.options["top_p"] == 0.5 and tuned.options["stop"] == ["a", "b"]


@pytest.mark.parametrize(("response_format", "expected"), [
    ({"type": "text"}, None),
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, {"type": "object"}),
])
def test_response_format(response_format: dict[str, Any], expected: Any) -> None:
    assert chat(messages=[{"role": "user", "content": "x"}], response_format=response_format).format == expected


@pytest.mark.parametrize(("effort", "think"), [("none", False), ("minimal", "low"), ("high", "high"),
                                               ("xhigh", "max")])
def test_reasoning_effort(effort: str, think: Any) -> None:
    assert chat(messages=[{"role": "user", "content": "x"}], reasoning_effort=effort).think == think


def test_messages_tools_and_parts() -> None:
    native = chat(messages=[
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]},
        {"role": "assistant", "content": None, "reasoning": "hmm",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ])
    dumped = [m.model_dump(exclude_none=True) for m in native.messages]
    assert dumped[0] == {"role": "user", "content": "look"}
    assert dumped[1] == {"role": "user", "content": "", "images": ["aGk="]}
    assert dumped[2]["thinking"] == "hmm" and dumped[2]["tool_calls"] == [
        {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]
    assert dumped[3] == {"role": "tool", "content": "42", "tool_name": "f", "tool_call_id": "call_1"}


def test_completion_request() -> None:
    native = generate_request(CompletionRequest.model_validate({"model": "m", "prompt": "p", "logprobs": 3,
                                                                "suffix": "s"}))
    assert (native.prompt, native.suffix, native.logprobs, native.top_logprobs) == ("p", "s", True, 3)
    with pytest.raises(BadRequest):
        generate_request(CompletionRequest.model_validate({"model": "m", "prompt": [1, 2]}))


def native_chunks() -> list[dict[str, Any]]:
    call = {"id": "call_abcdefgh", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}
    return [
        {"model": "m", "message": {"role": "assistant", "content": "Hi", "thinking": "plan"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
         "prompt_eval_count": 5, "eval_count": 2},
    ]


def test_chat_chunks() -> None:
    converter = ChatChunks("m", include_usage=True)
    out = [chunk for native in native_chunks() for chunk in converter.convert(native)]
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in out]
    assert deltas[0] == {"role": "assistant", "reasoning": "plan"} and deltas[1] == {"content": "Hi"}
    assert deltas[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert out[3]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    assert out[4]["choices"] == [] and out[4]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2,
                                                           "total_tokens": 7}
    assert len({c["id"] for c in out}) == 1 and {c["object"] for c in out} == {"chat.completion.chunk"}


def test_completion_chunks_whole() -> None:
    merged = {"response": "abc", "done": True, "done_reason": "length", "prompt_eval_count": 1, "eval_count": 3}
    body = CompletionChunks("m").whole(merged)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"text": "abc", "index": 0, "finish_reason": "length", "logprobs": None}]


class StubReader:
    """The part of ReplyReader the relays use."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.closed = False

    async def rest(self) -> AsyncIterator[Event]:
        for event in self.events:
            yield event

    async def close(self) -> None:
        self.closed = True


def sse_body(events: list[Event]) -> tuple[bytes, StubReader]:
    reader = StubReader(events[1:])
    converter = ChatChunks("m")

    def shape(event: Event) -> list[dict[str, Any]]:
        native = {"model": "m", "message": {"role": "assistant", "content": event.text}, "done": event.t == "done"}
        return converter.convert(native)

    async def noop(_: str) -> None:
        return None

    async def read() -> bytes:
        response = sse_stream(reader, events[0], shape, {}, noop)  # type: ignore[arg-type]
        return b"".join([bytes(part) async for part in response.body_iterator])  # type: ignore[arg-type]

    return asyncio.run(read()), reader


def client_for(body: bytes) -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return openai.OpenAI(base_url="http://test/v1", api_key="x", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def test_sse_stream_ends_with_done() -> None:
    body, reader = sse_body([Event(t="tok", text="Hel"), Event(t="tok", text="lo"), Event(t="done")])
    assert body.endswith(b"data: [DONE]\n\n") and reader.closed
    frames = [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: {")]
    assert [f["choices"][0]["delta"].get("content") for f in frames] == ["Hel", "lo", None]
    stream = client_for(body).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                      stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello"


def test_error_after_streaming_began_is_a_parsable_event() -> None:
    body, reader = sse_body([Event(t="tok", text="Hel"), Event(t="err", status=500, error="worker crashed")])
    last = json.loads(body.decode().strip().split("\n\n")[-1].removeprefix("data: "))
    assert last == {"error": {"message": "worker crashed", "type": "api_error", "param": None, "code": None}}
    assert b"[DONE]" not in body and reader.closed
    stream = client_for(body).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                      stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "Hel"
    with pytest.raises(openai.APIError, match="worker crashed"):
        list(stream)
