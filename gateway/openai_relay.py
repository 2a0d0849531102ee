"""Native chunks → OpenAI responses (ollama-api.md §4.1, §4.2), streamed as SSE or as one body.

A converter sees every native chunk of one response: it adds ``role: assistant`` to the first delta, splits
reasoning into its own delta, turns tool-call arguments into JSON strings, pins ``id`` and ``created``, and at
the end emits the finish chunk (``tool_calls`` replaces ``stop`` when calls were made) and, when asked, the
usage chunk (``choices: []``). ``whole`` builds the non-streaming object from the merged native body.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from caravan.queue import Event
from caravan.wire.openai import (
    chat_logprobs,
    completion_logprobs,
    envelope,
    new_id,
    now,
    tool_call,
    usage,
)
from gateway.inference import InferenceService, Prepared, ShaperFactory
from gateway.shaping import merge_chunks
from gateway.streaming import collect, sse_stream

Chunk = dict[str, Any]


def finish_reason(native: Chunk, called: bool) -> str:
    reason = "length" if native.get("done_reason") == "length" else "stop"
    return "tool_calls" if called and reason == "stop" else reason


def usage_of(native: Chunk) -> dict[str, int]:
    return usage(int(native.get("prompt_eval_count", 0)), int(native.get("eval_count", 0)))


class ChatChunks:
    """Native chat chunks → ``chat.completion.chunk`` objects / one ``chat.completion``."""

    kind = "chat.completion.chunk"

    def __init__(self, model: str, include_usage: bool = False) -> None:
        self.id, self.created, self.model = new_id("chatcmpl"), now(), model
        self.include_usage = include_usage
        self.role_sent = self.called = False

    def chunk(self, choices: list[Chunk]) -> Chunk:
        return envelope(self.kind, self.id, self.created, self.model, choices)

    def delta(self, delta: Chunk, finish: str | None = None, logprobs: Chunk | None = None) -> Chunk:
        if not self.role_sent:
            self.role_sent, delta = True, {"role": "assistant", **delta}
        choice: Chunk = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = logprobs
        return self.chunk([choice])

    def convert(self, native: Chunk) -> list[Chunk]:
        if native.get("done"):
            return self.finish(native)
        message = native.get("message", {})
        out = [self.delta({"reasoning": message["thinking"]})] if message.get("thinking") else []
        delta: Chunk = {"content": message["content"]} if message.get("content") else {}
        if message.get("tool_calls"):
            self.called = True
            delta["tool_calls"] = [tool_call(call) for call in message["tool_calls"]]
        logprobs = chat_logprobs(native.get("logprobs"))
        if delta or logprobs:
            out.append(self.delta(delta, logprobs=logprobs))
        return out

    def finish(self, native: Chunk) -> list[Chunk]:
        out = [self.delta({}, finish=finish_reason(native, self.called))]
        if self.include_usage:
            out.append({**self.chunk([]), "usage": usage_of(native)})
        return out

    def whole(self, merged: Chunk) -> Chunk:
        message = merged.get("message", {})
        reply: Chunk = {"role": "assistant", "content": message.get("content", "")}
        if message.get("thinking"):
            reply["reasoning"] = message["thinking"]
        if message.get("tool_calls"):
            reply["tool_calls"] = [tool_call(call) for call in message["tool_calls"]]
        choice = {"index": 0, "message": reply, "finish_reason": finish_reason(merged, "tool_calls" in reply),
                  "logprobs": chat_logprobs(merged.get("logprobs"))}
        body = envelope("chat.completion", self.id, self.created, self.model, [choice])
        return {**body, "usage": usage_of(merged)}


class CompletionChunks(ChatChunks):
    """Native generate chunks → ``text_completion`` objects (streamed and whole)."""

    kind = "text_completion"

    def __init__(self, model: str, include_usage: bool = False) -> None:
        super().__init__(model, include_usage)
        self.id = new_id("cmpl")
        self.offset = 0

    def text(self, text: str, finish: str | None, logprobs: list[Chunk] | None) -> Chunk:
        choice = {"text": text, "index": 0, "finish_reason": finish,
                  "logprobs": completion_logprobs(logprobs, self.offset)}
        self.offset += len(text)
        return self.chunk([choice])

    def convert(self, native: Chunk) -> list[Chunk]:
        if native.get("done"):
            return self.finish(native)
        return [self.text(native.get("response", ""), None, native.get("logprobs"))]

    def finish(self, native: Chunk) -> list[Chunk]:
        out = [self.text("", finish_reason(native, False), None)]
        if self.include_usage:
            out.append({**self.chunk([]), "usage": usage_of(native)})
        return out

    def whole(self, merged: Chunk) -> Chunk:
        body = self.text(merged.get("response", ""), finish_reason(merged, False), merged.get("logprobs"))
        return {**body, "usage": usage_of(merged)}


async def relay(service: InferenceService, request: Request, prepared: Prepared, native: ShaperFactory,
                converter: ChatChunks, stream: bool) -> Response:
    """Run ``prepared`` and answer in OpenAI's shape: SSE ending in ``[DONE]``, or one JSON body."""
    opened = await service.open(request, prepared)
    shape_native = native(prepared, opened.reader)
    if stream:
        def shape(event: Event) -> list[Chunk]:
            return [out for chunk in shape_native(event) for out in converter.convert(chunk)]

        return sse_stream(opened.reader, opened.first, shape, opened.headers, opened.on_done)
    chunks = await collect(opened.reader, opened.first, shape_native, opened.on_done)
    return JSONResponse(converter.whole(merge_chunks(chunks)), headers=opened.headers)
