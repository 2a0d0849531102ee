"""The OpenAI layer (ollama-api.md §4) as a translation over the native API, like Ollama's middleware.

Requests become native ``ChatRequest``/``GenerateRequest`` bodies (OpenAI's 1.0 defaults for temperature and
top_p override the Modelfile; ``response_format`` → ``format``; string tool arguments → objects; content
parts → one native message each). Native response chunks become OpenAI chunks through a small stateful
converter, so streaming, tool calls, reasoning and logprobs come from the same native shaping.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from caravan.errors import BadRequest
from caravan.wire.ollama import ChatRequest, GenerateRequest
from caravan.wire.openai import ChatCompletionRequest, CompletionRequest, SamplingFields

_EFFORTS: dict[str, bool | str | None] = {
    "": None, "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
    "xhigh": "max", "ultra": "max",
}
_IMAGE_PREFIXES = ("data:image/jpeg;base64,", "data:image/jpg;base64,", "data:image/png;base64,",
                   "data:image/webp;base64,", "data:;base64,")


def stop_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise BadRequest(f"invalid type for 'stop' field: {type(value).__name__}")
    return list(values)


def sampling_options(req: SamplingFields, max_tokens: int | None) -> dict[str, Any]:
    """Native options; OpenAI's defaults (temperature 1.0, top_p 1.0) are always sent."""
    options: dict[str, Any] = {
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": req.top_p or 1.0,
        "frequency_penalty": req.frequency_penalty or 0.0, "presence_penalty": req.presence_penalty or 0.0,
    }
    extra = {"num_predict": max_tokens, "seed": req.seed, "stop": stop_list(req.stop)}
    options.update({key: value for key, value in extra.items() if value is not None})
    return options


def response_format(value: dict[str, Any] | None) -> Any:
    if not value or value.get("type") in (None, "text"):
        return None
    if value["type"] == "json_object":
        return value.get("schema") or "json"
    if value["type"] == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("response_format json_schema requires a 'schema' object")
        return schema
    raise BadRequest(f"invalid response_format type: {value['type']!r}")


def think_from(req: ChatCompletionRequest) -> bool | str | None:
    effort = req.reasoning_effort if req.reasoning_effort is not None else (req.reasoning or {}).get("effort")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise BadRequest(f"invalid reasoning value: {json.dumps(effort)}")
    return _EFFORTS[effort]


def chat_request(req: ChatCompletionRequest) -> ChatRequest:
    """A native chat request for ``/v1/chat/completions``."""
    if not req.messages:
        raise BadRequest("[] is too short - 'messages'")
    body = {
        "model": req.model, "messages": native_messages(req.messages), "stream": req.stream,
        "format": response_format(req.response_format), "tools": req.tools, "think": think_from(req),
        "logprobs": req.logprobs, "top_logprobs": req.top_logprobs,
        "options": sampling_options(req, req.max_tokens or req.max_completion_tokens),
    }
    return ChatRequest.model_validate({k: v for k, v in body.items() if v is not None})


def generate_request(req: CompletionRequest) -> GenerateRequest:
    """A native generate request for ``/v1/completions`` (``logprobs: N`` → logprobs with N alternatives)."""
    if not isinstance(req.prompt, str):
        raise BadRequest("invalid type for 'prompt' field: only a single string prompt is supported")
    body = {
        "model": req.model, "prompt": req.prompt, "suffix": req.suffix or "", "stream": req.stream,
        "options": sampling_options(req, req.max_tokens),
        "logprobs": True if req.logprobs else None, "top_logprobs": req.logprobs or None,
    }
    return GenerateRequest.model_validate({k: v for k, v in body.items() if v is not None})


def native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages → native ones (tool call ids resolve tool names for ``role: tool`` results)."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("invalid message: each message needs a string 'role'")
        out.extend(_native(message, names))
    return out


def _native(message: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    role = "system" if message["role"] == "developer" else message["role"]
    base: dict[str, Any] = {"role": role}
    if message.get("tool_calls"):
        base["tool_calls"] = [_tool_call(call, names) for call in message["tool_calls"]]
    if message.get("reasoning"):
        base["thinking"] = str(message["reasoning"])
    if role == "tool":
        call_id = message.get("tool_call_id")
        base["tool_name"] = message.get("name") or names.get(str(call_id), "")
        if call_id:
            base["tool_call_id"] = str(call_id)
    content = message.get("content")
    if content is None or isinstance(content, str):
        if content is None and not message.get("tool_calls"):
            raise BadRequest("invalid message content type: <nil>")
        return [{**base, "content": content or ""}]
    if not isinstance(content, list):
        raise BadRequest(f"invalid message content type: {type(content).__name__}")
    return [{**base, **_part(part)} for part in content]


def _part(part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return {"content": str(part.get("text", ""))}
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return {"content": "", "images": [_image(str(url or ""))]}
    if kind == "input_audio":
        return {"content": "", "images": [str((part.get("input_audio") or {}).get("data", ""))]}
    raise BadRequest(f"invalid message part type: {kind}")


def _image(url: str) -> str:
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not currently supported, please use base64 encoded data instead")
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            data = url[len(prefix):]
            try:
                base64.b64decode(data, validate=True)
            except ValueError:
                raise BadRequest("invalid image input") from None
            return data
    raise BadRequest("invalid image input")


def _tool_call(call: Any, names: dict[str, str]) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest("invalid tool call")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        raise BadRequest("invalid tool call arguments") from None
    if not isinstance(parsed, dict):
        raise BadRequest("invalid tool call arguments")
    if call.get("id"):
        names[str(call["id"])] = function["name"]
    native: dict[str, Any] = {"function": {"name": function["name"], "arguments": parsed}}
    if call.get("id"):
        native["id"] = str(call["id"])
    return native
