"""The inference API end to end with the official ollama client: embeddings, structured outputs, tools,
thinking, generate extras (suffix, template, context, raw, images, logprobs, truncate/shift) and options."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.integration.modelkit import DEMO, FIM_TEMPLATE, THINK_TEMPLATE, TOOLS_TEMPLATE, derive

GREEDY = {"temperature": 0, "num_predict": 12, "seed": 1}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}
# what the model may answer when it must call the tool: exactly one well-formed call
CALL_SCHEMA = {"type": "object", "properties": {
    "name": {"const": "get_weather"},
    "arguments": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
                  "required": ["city"]}}, "required": ["name", "arguments"]}
PERSON_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "city": {"type": "string", "enum": ["Paris", "Tokyo"]},
    "rainy": {"type": "boolean"}}, "required": ["name", "city", "rainy"]}


@pytest.fixture(scope="module")
def client(gateway: str) -> ollama.Client:
    return ollama.Client(host=gateway, timeout=120)


@pytest.fixture(scope="module")
def models(demo_store: Path) -> dict[str, str]:
    return {
        "tools": derive(demo_store, "tooly:latest", template=TOOLS_TEMPLATE),
        "think": derive(demo_store, "thinker:latest", template=THINK_TEMPLATE),
        "fim": derive(demo_store, "filler:latest", template=FIM_TEMPLATE),
        "params": derive(demo_store, "terse:latest", params={"num_predict": 3, "temperature": 0}),
        "tiny": derive(demo_store, "tiny-ctx:latest", params={"num_ctx": 64}),
    }


def norm(vector: Any) -> float:
    return math.sqrt(sum(x * x for x in vector))


def post(gateway: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway + path, json=body, timeout=120)


# -- embeddings -------------------------------------------------------------------------------------------
def test_embed_returns_unit_vectors_per_input(client: ollama.Client) -> None:
    result = client.embed(DEMO, input=["hello world", "the cat sat on the mat"])
    assert len(result.embeddings) == 2 and {len(v) for v in result.embeddings} == {576}
    assert all(abs(norm(v) - 1.0) < 1e-4 for v in result.embeddings)
    assert result.embeddings[0] != result.embeddings[1]
    assert result.prompt_eval_count and result.prompt_eval_count >= 2
    assert result.total_duration and result.load_duration is not None


def test_embed_dimensions_cut_and_renormalise(client: ollama.Client) -> None:
    full = client.embed(DEMO, input="hello world").embeddings[0]
    cut = client.embed(DEMO, input="hello world", dimensions=64).embeddings[0]
    assert len(cut) == 64 and abs(norm(cut) - 1.0) < 1e-4
    scale = norm(full[:64])
    assert all(abs(a - b / scale) < 1e-4 for a, b in zip(cut, full[:64], strict=True))


def test_legacy_embeddings_are_raw_and_same_direction(client: ollama.Client) -> None:
    raw = client.embeddings(DEMO, prompt="hello world").embedding
    unit = client.embed(DEMO, input="hello world").embeddings[0]
    assert len(raw) == 576 and abs(norm(raw) - 1.0) > 1e-2, "legacy vectors are not normalised"
    cosine = sum(a * b for a, b in zip(raw, unit, strict=True)) / norm(raw)
    assert cosine > 0.9999


@pytest.mark.parametrize("value", [[], ""])
def test_embed_without_input_loads_the_model(gateway: str, value: object) -> None:
    response = post(gateway, "/api/embed", {"model": DEMO, "input": value})
    assert response.status_code == 200 and response.json() == {"model": DEMO, "embeddings": []}
    legacy = post(gateway, "/api/embeddings", {"model": DEMO, "prompt": ""})
    assert legacy.status_code == 200 and legacy.json() == {"embedding": []}


def test_generation_is_unchanged_by_embedding_calls(client: ollama.Client) -> None:
    prompt = "Name three colours."
    client.generate(DEMO, prompt, options=GREEDY)  # both compared runs then find the whole prompt cached
    before = client.generate(DEMO, prompt, options=GREEDY).response
    client.embed(DEMO, input=["a long sentence about something else entirely", "and another one"])
    after = client.generate(DEMO, prompt, options=GREEDY).response
    assert before and before == after


def test_embed_truncation(gateway: str, models: dict[str, str]) -> None:
    long_text = "word " * 200
    cut = post(gateway, "/api/embed", {"model": models["tiny"], "input": long_text})
    assert cut.status_code == 200 and cut.json()["prompt_eval_count"] == 64
    refused = post(gateway, "/api/embed", {"model": models["tiny"], "input": long_text, "truncate": False})
    assert refused.status_code == 400
    assert refused.json() == {"error": "the input length exceeds the context length"}


@pytest.mark.parametrize(("path", "body", "status", "error"), [
    ("/api/embed", {"model": DEMO, "input": 5}, 400, "invalid input type"),
    ("/api/embed", {"model": DEMO, "input": ["a", 1]}, 400, "invalid input type"),
    ("/api/embed", {"model": "nope", "input": "x"}, 404, 'model "nope" not found, try pulling it first'),
    ("/api/embed", {"input": "x"}, 400, "model is required"),
    ("/api/embeddings", {"model": "nope", "prompt": "x"}, 404, 'model "nope" not found, try pulling it first'),
    ("/api/embed", {"model": DEMO, "input": "x", "options": {"num_ctx": "big"}}, 400,
     'option "num_ctx" must be of type integer'),
])
def test_embed_errors(gateway: str, path: str, body: dict[str, Any], status: int, error: str) -> None:
    response = post(gateway, path, body)
    assert response.status_code == status and response.json() == {"error": error}


# -- structured outputs -----------------------------------------------------------------------------------
def check_person(text: str) -> None:
    person = json.loads(text)
    assert set(person) == {"name", "city", "rainy"}
    assert isinstance(person["name"], str) and len(person["name"]) <= 12
    assert person["city"] in ("Paris", "Tokyo") and isinstance(person["rainy"], bool)


def test_json_schema_constrains_generate_and_chat(client: ollama.Client) -> None:
    options = {"temperature": 0, "num_predict": 80}
    generated = client.generate(DEMO, "Tell me about a person.", format=PERSON_SCHEMA, options=options)
    check_person(generated.response)
    chatted = client.chat(DEMO, [{"role": "user", "content": "Who lives where?"}], format=PERSON_SCHEMA,
                          options=options, stream=True)
    check_person("".join(part.message.content or "" for part in chatted))


def test_format_json_gives_a_json_object(client: ollama.Client) -> None:
    result = client.generate(DEMO, "Say hi.", format="json", options={"temperature": 0, "num_predict": 30})
    text = result.response.strip()
    assert text.startswith("{")
    if result.done_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(("fmt", "error"), [
    ([1], 'invalid format: "[1]"; expected "json" or a valid JSON Schema object'),
    ("xml", 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'),
    ({"type": "nonsense"}, "invalid JSON schema in format: Unrecognized schema"),
    ({"$ref": "#/definitions/missing"}, "invalid JSON schema in format"),
])
def test_bad_formats_are_400_before_queueing(gateway: str, fmt: object, error: str) -> None:
    user = [{"role": "user", "content": "x"}]
    for path, body in (("/api/generate", {"prompt": "x"}), ("/api/chat", {"messages": user})):
        response = post(gateway, path, {"model": DEMO, "format": fmt, **body})
        assert response.status_code == 400 and response.json()["error"].startswith(error)


# -- tools ----------------------------------------------------------------------------------------------
def ask_weather(client: ollama.Client, model: str, stream: bool = False) -> Any:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    return client.chat(model, messages, tools=[WEATHER_TOOL], format=CALL_SCHEMA,
                       options={"temperature": 0, "num_predict": 40}, stream=stream)


def test_tool_call_round_trip(gateway: str, client: ollama.Client, models: dict[str, str]) -> None:
    reply = ask_weather(client, models["tools"])
    calls = reply.message.tool_calls
    assert reply.message.content == "" and calls and len(calls) == 1
    assert calls[0].function.name == "get_weather" and calls[0].function.arguments["city"] in ("Paris", "Tokyo")
    raw = post(gateway, "/api/chat", {"model": models["tools"], "stream": False, "tools": [WEATHER_TOOL],
                                      "format": CALL_SCHEMA, "options": {"temperature": 0, "num_predict": 40},
                                      "messages": [{"role": "user", "content": "Weather in Paris?"}]}).json()
    call = raw["message"]["tool_calls"][0]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"]) and call["function"]["index"] == 0
    counts = [feed_back(client, models["tools"], reply.message, result) for result in ("18 C", "18 C " * 40)]
    assert counts[1] > counts[0] + 40, "the tool result is rendered into the prompt"


def feed_back(client: ollama.Client, model: str, assistant: Any, result: str) -> int:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}, assistant,
                {"role": "tool", "tool_name": "get_weather", "content": result}]
    answer = client.chat(model, messages, tools=[WEATHER_TOOL], options={"temperature": 0, "num_predict": 8})
    assert answer.done
    return int(answer.prompt_eval_count or 0)


def test_tool_call_streams_as_its_own_chunk(client: ollama.Client, models: dict[str, str]) -> None:
    chunks = list(ask_weather(client, models["tools"], stream=True))
    with_calls = [c for c in chunks if c.message.tool_calls]
    assert len(with_calls) == 1 and with_calls[0].message.content == "" and not with_calls[0].done
    assert chunks[-1].done and not "".join(c.message.content or "" for c in chunks).strip()


def test_tools_capability(gateway: str, client: ollama.Client, models: dict[str, str]) -> None:
    assert "tools" in (client.show(models["tools"]).capabilities or [])
    assert "tools" not in (client.show(DEMO).capabilities or [])
    response = post(gateway, "/api/chat", {"model": DEMO, "tools": [WEATHER_TOOL],
                                           "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert response.json() == {"error": "registry.ollama.ai/library/smollm2:135m does not support tools"}


# -- thinking -------------------------------------------------------------------------------------------
def test_thinking_is_split_out(client: ollama.Client, models: dict[str, str]) -> None:
    messages = [{"role": "user", "content": "Is 7 prime?"}]
    thought = client.chat(models["think"], messages, think=True, options=GREEDY)
    assert thought.message.thinking and "<think>" not in thought.message.thinking + thought.message.content
    default = client.chat(models["think"], messages, options=GREEDY)
    assert default.message.thinking == thought.message.thinking, "thinking models think unless told not to"
    plain = client.chat(models["think"], messages, think=False, options=GREEDY)
    assert plain.message.thinking is None and plain.message.content
    streamed = list(client.generate(models["think"], "Is 7 prime?", think=True, options=GREEDY, stream=True))
    assert "".join(c.thinking or "" for c in streamed) and streamed[-1].done


def test_think_errors(gateway: str, models: dict[str, str]) -> None:
    refused = post(gateway, "/api/generate", {"model": DEMO, "prompt": "x", "think": True})
    assert refused.status_code == 400 and refused.json() == {"error": '"smollm2:135m" does not support thinking'}
    bad = post(gateway, "/api/chat", {"model": models["think"], "think": "extreme",
                                      "messages": [{"role": "user", "content": "x"}]})
    assert bad.status_code == 400 and bad.json()["error"].startswith('invalid think value: "extreme"')


# -- generate extras --------------------------------------------------------------------------------------
def test_suffix_needs_insert_and_reaches_the_prompt(gateway: str, client: ollama.Client,
                                                    models: dict[str, str]) -> None:
    refused = post(gateway, "/api/generate", {"model": DEMO, "prompt": "def add(a, b):", "suffix": "    return c"})
    assert refused.status_code == 400
    assert refused.json() == {"error": "registry.ollama.ai/library/smollm2:135m does not support insert"}
    assert "insert" in (client.show(models["fim"]).capabilities or [])
    alone = client.generate(models["fim"], "def add(a, b):", options=GREEDY)
    filled = client.generate(models["fim"], "def add(a, b):", suffix="\n    return c\n\nprint(add(1, 2))",
                             options=GREEDY)
    assert filled.done and (filled.prompt_eval_count or 0) > (alone.prompt_eval_count or 0) + 8


def test_request_template_raw_and_context(client: ollama.Client) -> None:
    chat_style = client.generate(DEMO, "Hello", options=GREEDY)
    bare = client.generate(DEMO, "Hello", template="{{ .Prompt }}", options=GREEDY)
    raw = client.generate(DEMO, "Hello", raw=True, options=GREEDY)
    assert (bare.prompt_eval_count or 0) < (chat_style.prompt_eval_count or 0)
    assert raw.prompt_eval_count == bare.prompt_eval_count and raw.context is None
    assert chat_style.context and bare.context
    follow = client.generate(DEMO, "And again?", context=chat_style.context, options=GREEDY)
    assert (follow.prompt_eval_count or 0) > len(chat_style.context)


def test_images_need_vision(gateway: str) -> None:
    response = post(gateway, "/api/generate", {"model": DEMO, "prompt": "what is this?", "images": ["aGVsbG8="]})
    assert response.status_code == 400 and "vision" in response.json()["error"]


def test_logprobs_follow_the_sampled_tokens(client: ollama.Client) -> None:
    result = client.generate(DEMO, "The capital of France is", logprobs=True, top_logprobs=3,
                             options={"temperature": 0, "num_predict": 6})
    entries = result.logprobs or []
    assert len(entries) == result.eval_count and "".join(e.token for e in entries) == result.response
    for entry in entries:
        top = entry.top_logprobs or []
        assert len(top) == 3 and entry.logprob <= 0
        assert top[0].token == entry.token and abs(top[0].logprob - entry.logprob) < 1e-9  # greedy = top 1
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
    streamed = list(client.chat(DEMO, [{"role": "user", "content": "Hi"}], logprobs=True, stream=True,
                                options={"temperature": 0, "num_predict": 4}))
    assert sum(len(c.logprobs or []) for c in streamed) == streamed[-1].eval_count


def test_top_logprobs_range(gateway: str) -> None:
    response = post(gateway, "/api/generate", {"model": DEMO, "prompt": "x", "logprobs": True, "top_logprobs": 21})
    assert response.status_code == 400 and response.json() == {"error": "top_logprobs must be between 0 and 20"}


def test_truncate_and_shift(gateway: str, client: ollama.Client, models: dict[str, str]) -> None:
    long_prompt = "count with me: " + "one two three " * 40
    refused = post(gateway, "/api/generate", {"model": models["tiny"], "prompt": long_prompt, "truncate": False})
    assert refused.status_code == 400 and refused.json()["error"] == (
        "the prompt is longer than the context length currently available to the model; shorten the prompt, "
        "adjust the context length in settings, or use a model with a longer context length")
    cut = client.generate(models["tiny"], long_prompt, options={"temperature": 0, "num_predict": 2})
    assert cut.prompt_eval_count and cut.prompt_eval_count <= 63
    full = post(gateway, "/api/generate", {"model": models["tiny"], "prompt": "one two three " * 14, "raw": True,
                                           "shift": False, "stream": False,
                                           "options": {"temperature": 0, "num_predict": 500}}).json()
    assert full["done_reason"] == "length" and full["eval_count"] > 0
    assert full["prompt_eval_count"] + full["eval_count"] <= 64


# -- options ----------------------------------------------------------------------------------------------
def test_modelfile_params_yield_to_request_options(client: ollama.Client, models: dict[str, str]) -> None:
    assert client.generate(models["params"], "Tell a long story.").eval_count == 3
    assert client.generate(models["params"], "Tell a long story.", options={"num_predict": 5}).eval_count == 5
    unknown = client.generate(DEMO, "Hi", options={**GREEDY, "num_predict": 2, "not_an_option": True})
    assert unknown.done and unknown.eval_count == 2


@pytest.mark.parametrize(("options", "error"), [
    ({"num_predict": "ten"}, 'option "num_predict" must be of type integer'),
    ({"top_p": True}, 'option "top_p" must be of type float32'),
    ({"stop": [1]}, 'option "stop" must be of an array of strings'),
    ({"use_mmap": "yes"}, 'option "use_mmap" must be of type boolean'),
])
def test_wrongly_typed_options(gateway: str, options: dict[str, Any], error: str) -> None:
    response = post(gateway, "/api/chat", {"model": DEMO, "messages": [{"role": "user", "content": "x"}],
                                           "options": options})
    assert response.status_code == 400 and response.json() == {"error": error}
