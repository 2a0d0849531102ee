"""The OpenAI-compatible layer end to end with the official openai client (SSE, usage, tools, embeddings,
models, errors)."""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.modelkit import DEMO, TOOLS_TEMPLATE, derive

WEATHER_TOOL: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL_SCHEMA = {"type": "object", "properties": {
    "name": {"const": "get_weather"},
    "arguments": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
                  "required": ["city"]}}, "required": ["name", "arguments"]}
COLOUR_SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                                  "bright": {"type": "boolean"}}, "required": ["colour", "bright"]}
USER: Any = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tool_model(demo_store: Path) -> str:
    return derive(demo_store, "tooly-openai:latest", template=TOOLS_TEMPLATE)


def test_chat_completion(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model=DEMO, messages=USER, max_tokens=8, temperature=0, seed=3)
    assert done.id.startswith("chatcmpl-") and done.object == "chat.completion" and done.model == DEMO
    assert done.system_fingerprint == "fp_ollama"
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert done.usage and done.usage.prompt_tokens > 3 and 0 < done.usage.completion_tokens <= 8
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=DEMO, messages=USER, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens == 6


def test_max_tokens_and_stop(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model=DEMO, messages=USER, max_tokens=10, temperature=0)
    text = base.choices[0].message.content or ""
    assert base.choices[0].finish_reason == "length" and len(text) > 4
    stop = text[2:4]
    cut = client.chat.completions.create(model=DEMO, messages=USER, max_tokens=10, temperature=0, stop=stop)
    assert stop not in (cut.choices[0].message.content or "") and cut.choices[0].finish_reason == "stop"


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=DEMO, messages=[{"role": "user", "content": "Pick a colour."}], temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "colour", "schema": COLOUR_SCHEMA}})
    value = json.loads(done.choices[0].message.content or "")
    assert value["colour"] in ("red", "green", "blue") and isinstance(value["bright"], bool)
    loose = client.chat.completions.create(model=DEMO, messages=USER, temperature=0, max_tokens=20,
                                           response_format={"type": "json_object"})
    assert (loose.choices[0].message.content or "").lstrip().startswith("{")


def test_tool_calls_have_string_arguments(client: openai.OpenAI, tool_model: str) -> None:
    messages: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}}
    done = client.chat.completions.create(model=tool_model, messages=messages, tools=[WEATHER_TOOL],
                                          response_format=fmt, temperature=0, max_tokens=40)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call: Any = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Tokyo")
    follow = [*messages, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    answer = client.chat.completions.create(model=tool_model, messages=follow, tools=[WEATHER_TOOL],
                                            temperature=0, max_tokens=6)
    assert answer.usage and answer.usage.prompt_tokens > (done.usage.prompt_tokens if done.usage else 0)
    streamed = list(client.chat.completions.create(model=tool_model, messages=messages, tools=[WEATHER_TOOL],
                                                   response_format=fmt, temperature=0, max_tokens=40,
                                                   stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1 and json.loads(deltas[0][0].function.arguments or "")["city"]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_legacy_completions(client: openai.OpenAI) -> None:
    done = client.completions.create(model=DEMO, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert done.id.startswith("cmpl-") and done.object == "text_completion" and done.choices[0].text
    assert done.choices[0].finish_reason == "length" and done.usage and done.usage.completion_tokens == 5
    chunks = list(client.completions.create(model=DEMO, prompt="Once upon a time", max_tokens=5, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 5
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        client.completions.create(model=DEMO, prompt="def f(", suffix="return 1", max_tokens=3)


def test_completion_logprobs(client: openai.OpenAI) -> None:
    done = client.completions.create(model=DEMO, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    logprobs = done.choices[0].logprobs
    assert logprobs and logprobs.tokens and "".join(logprobs.tokens) == done.choices[0].text
    assert logprobs.top_logprobs and all(len(top) <= 2 for top in logprobs.top_logprobs)
    chat = client.chat.completions.create(model=DEMO, messages=USER, max_tokens=4, temperature=0, logprobs=True,
                                          top_logprobs=2)
    content = chat.choices[0].logprobs.content if chat.choices[0].logprobs else None
    assert content and all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in content)


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=DEMO, input=["hello world", "goodbye"])
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 576
    assert abs(math.sqrt(sum(x * x for x in floats.data[0].embedding)) - 1) < 1e-4
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    packed = client.embeddings.with_raw_response.create(model=DEMO, input="hello world", encoding_format="base64")
    raw = base64.b64decode(json.loads(packed.text)["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert all(abs(a - b) < 1e-6 for a, b in zip(decoded, floats.data[0].embedding, strict=True))
    short = client.embeddings.create(model=DEMO, input="", dimensions=32)
    assert len(short.data) == 1 and len(short.data[0].embedding) == 32


def test_models(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert listed[DEMO].owned_by == "library" and listed[DEMO].created > 0
    one = client.models.retrieve(DEMO)
    assert one.id == DEMO and one.object == "model" and one.created == listed[DEMO].created
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("missing-model")
    assert info.value.body == {"message": "model 'missing-model' not found", "type": "not_found_error",
                               "param": None, "code": None}


@pytest.mark.parametrize(("path", "body", "status", "kind", "message"), [
    ("/v1/chat/completions", {"model": DEMO, "messages": []}, 400, "invalid_request_error",
     "[] is too short - 'messages'"),
    ("/v1/chat/completions", {"model": "nope", "messages": USER}, 404, "not_found_error", "model 'nope' not found"),
    ("/v1/chat/completions", {"model": DEMO, "messages": USER, "reasoning_effort": "huge"}, 400,
     "invalid_request_error", 'invalid reasoning value: "huge"'),
    ("/v1/chat/completions", {"model": DEMO, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, 400, "invalid_request_error",
     "image URLs are not currently supported, please use base64 encoded data instead"),
    ("/v1/chat/completions", {"model": DEMO, "messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                               "function": {"name": "f", "arguments": "{oops"}}]}]},
     400, "invalid_request_error", "invalid tool call arguments"),
    ("/v1/chat/completions", {"model": DEMO, "messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}, 400, "invalid_request_error",
     "invalid JSON schema in format: Unrecognized schema: {'type': 'nonsense'}"),
    ("/v1/completions", {"model": DEMO, "prompt": ["a", "b"]}, 400, "invalid_request_error",
     "invalid type for 'prompt' field: only a single string prompt is supported"),
    ("/v1/completions", {"model": DEMO, "prompt": "a", "stop": ["x", 1]}, 400, "invalid_request_error",
     "invalid type for 'stop' field: list"),
    ("/v1/embeddings", {"model": DEMO, "input": []}, 400, "invalid_request_error", "invalid input"),
    ("/v1/embeddings", {"model": DEMO, "input": "x", "encoding_format": "int8"}, 400, "invalid_request_error",
     "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64']."),
    ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "not_found_error",
     'model "nope" not found, try pulling it first'),
])
def test_error_envelopes(gateway: str, path: str, body: dict[str, Any], status: int, kind: str,
                         message: str) -> None:
    response = httpx.post(gateway + path, json=body, timeout=60)
    assert response.status_code == status
    assert response.json() == {"error": {"message": message, "type": kind, "param": None, "code": None}}


def test_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        client.chat.completions.create(model="nope", messages=USER)
    with pytest.raises(openai.BadRequestError, match="too short"):
        client.chat.completions.create(model=DEMO, messages=[], stream=True)
