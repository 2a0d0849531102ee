"""OpenAI-compatible shapes (ollama-api.md §4): requests as the OpenAI SDKs send them, responses and errors as
they parse them.

Lenient in: unknown keys are ignored, numbers are not strict (SDKs send ``1`` for a float). Exact out:
response bodies are built as plain dicts so that ``null`` appears where OpenAI has it (``finish_reason`` of
a streamed chunk, ``param``/``code`` of an error) and nothing else is added.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from caravan.errors import CaravanError

FINGERPRINT = "fp_ollama"


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class SamplingFields(OpenAIModel):
    """Fields chat and legacy completions share; ``temperature``/``top_p`` default to 1.0 as in OpenAI."""

    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: Any = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]] = Field(default_factory=list)
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = None
    reasoning: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(SamplingFields):
    prompt: Any = ""
    suffix: str | None = None
    logprobs: int | None = None


class EmbeddingRequest(OpenAIModel):
    model: str = ""
    input: Any = None
    encoding_format: str | None = None
    dimensions: int | None = None


def error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def error_envelope(exc: CaravanError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": exc.message, "type": error_type(exc.status), "param": None, "code": None}}


def new_id(prefix: str) -> str:
    """``chatcmpl-N`` / ``cmpl-N`` with N in 0..998, as Ollama numbers them."""
    return f"{prefix}-{random.randint(0, 998)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(kind: str, ident: str, created: int, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields every completion object and chunk starts with."""
    return {"id": ident, "object": kind, "created": created, "model": model, "system_fingerprint": FINGERPRINT,
            "choices": choices}


def tool_call(native: dict[str, Any]) -> dict[str, Any]:
    """A native tool call (arguments object) → OpenAI's (arguments as a JSON string)."""
    function = native.get("function", {})
    return {"id": native.get("id") or "", "index": function.get("index", 0), "type": "function",
            "function": {"name": function.get("name", ""),
                         "arguments": json.dumps(function.get("arguments", {}), ensure_ascii=False)}}


def chat_logprobs(native: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Native logprob entries → ``choices[].logprobs`` (``bytes`` and ``top_logprobs`` always present)."""
    if not native:
        return None
    content = [{"token": e["token"], "logprob": e["logprob"], "bytes": e.get("bytes"),
                "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": t.get("bytes")}
                                 for t in e.get("top_logprobs", [])]} for e in native]
    return {"content": content}


def completion_logprobs(native: list[dict[str, Any]] | None, offset: int) -> dict[str, Any] | None:
    """Native entries → the legacy completions shape (tokens, token_logprobs, top_logprobs, text_offset)."""
    if not native:
        return None
    offsets = []
    for entry in native:
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": [e["token"] for e in native], "token_logprobs": [e["logprob"] for e in native],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in native],
            "text_offset": offsets}


def model_object(name: str, created: int) -> dict[str, Any]:
    """``/v1/models`` entry; ``owned_by`` is the name's namespace (``library`` by default)."""
    parts = name.split("/")
    owner = parts[-2] if len(parts) >= 2 else "library"
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


def now() -> int:
    return int(time.time())
