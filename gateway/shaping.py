"""Native response chunks (ollama-api.md §3.2, §3.3) from reply events, and the non-streaming merge.

The model's raw text is split on the way out: reasoning (``<think>…</think>``, when thinking is on) goes to
``thinking``, tool calls (chat with ``tools``) become a chunk whose ``message.tool_calls`` is set and
``content`` is ``""``, the rest is content. Logprobs ride on the chunk of the event that carried them.
The final chunk carries ``done_reason`` and the six metrics. A non-streaming reply is these chunks merged:
text fields concatenated, tool calls and logprobs appended, everything else from the final chunk.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caravan.gotemplate import TemplateError
from caravan.prompt import tool_call_tag
from caravan.queue import Event
from caravan.thinking import ThinkingParser, thinking_setup
from caravan.tools import ToolCallParser
from caravan.wire.ollama import ChatResponse, GenerateResponse, ResponseMessage, ToolCall, dump
from gateway.streaming import ReplyReader

if TYPE_CHECKING:
    from gateway.inference import Prepared

Chunks = list[dict[str, Any]]


@dataclass
class Pieces:
    """What one stretch of model text turned out to be."""

    content: str = ""
    thinking: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)


class OutputSplitter:
    """Model text → thinking, content and tool calls (either parser may be absent)."""

    def __init__(self, thinking: ThinkingParser | None = None, tools: ToolCallParser | None = None) -> None:
        self.thinking = thinking
        self.tools = tools

    def feed(self, text: str) -> Pieces:
        reasoning, content = self.thinking.add(text) if self.thinking else ("", text)
        return self._content(reasoning, content, final=False)

    def flush(self) -> Pieces:
        reasoning, content = self.thinking.flush() if self.thinking else ("", "")
        return self._content(reasoning, content, final=True)

    def _content(self, reasoning: str, content: str, final: bool) -> Pieces:
        if self.tools is None:
            return Pieces(content, reasoning)
        calls, text = self.tools.add(content)
        if final:
            text += self.tools.flush()
        return Pieces(text, reasoning, calls)


def splitter_for(prepared: Prepared) -> OutputSplitter:
    """The parsers a request needs: thinking when it is on, tool calls for chat with tools."""
    job = prepared.job
    thinking = None
    if job.think and not job.raw:
        opening, closing, inside = thinking_setup(job.template, job.think)
        thinking = ThinkingParser(opening, closing, inside=inside)
    tools = ToolCallParser(_tool_tag(job.template)) if job.op == "chat" and job.tools else None
    return OutputSplitter(thinking, tools)


def _tool_tag(template: str | None) -> str:
    if not template:
        return "{"
    try:
        return tool_call_tag(template)
    except TemplateError:
        return "{"


def metrics(prepared: Prepared, reader: ReplyReader, event: Event) -> dict[str, Any]:
    now = time.perf_counter()
    stats = dict(event.stats or {})
    stats.pop("context", None)
    loaded = reader.started_at or now
    return {
        "total_duration": int((now - prepared.started) * 1e9),
        "load_duration": int((loaded - prepared.started) * 1e9),
        **stats,
    }


def generate_chunks(model: str, pieces: Pieces, logprobs: Chunks | None) -> Chunks:
    if not (pieces.content or pieces.thinking or logprobs):
        return []
    return [dump(GenerateResponse(model=model, response=pieces.content, thinking=pieces.thinking or None,
                                  logprobs=logprobs))]


def chat_chunks(model: str, pieces: Pieces, logprobs: Chunks | None) -> Chunks:
    chunks: Chunks = []
    if pieces.content or pieces.thinking or logprobs:
        message = ResponseMessage(content=pieces.content, thinking=pieces.thinking or None)
        chunks.append(dump(ChatResponse(model=model, message=message, logprobs=logprobs)))
    if pieces.calls:
        calls = [ToolCall.model_validate(call) for call in pieces.calls]
        chunks.append(dump(ChatResponse(model=model, message=ResponseMessage(tool_calls=calls))))
    return chunks


Builder = Callable[[str, Pieces, Chunks | None], Chunks]


def _shaper(prepared: Prepared, reader: ReplyReader, build: Builder,
            final: Callable[[Event], dict[str, Any]]) -> Callable[[Event], Chunks]:
    model, split = prepared.job.model, splitter_for(prepared)

    def shape(event: Event) -> Chunks:
        if event.t == "tok":
            return build(model, split.feed(event.text), event.logprobs)
        if event.t != "done":
            return []
        if event.done_reason in ("load", "unload"):
            return [final(event)]
        return [*build(model, split.flush(), None), {**final(event), **metrics(prepared, reader, event)}]

    return shape


def generate_shaper(prepared: Prepared, reader: ReplyReader) -> Callable[[Event], Chunks]:
    def final(event: Event) -> dict[str, Any]:
        context = (event.stats or {}).get("context")
        return dump(GenerateResponse(model=prepared.job.model, done=True, done_reason=event.done_reason,
                                     context=context))

    return _shaper(prepared, reader, generate_chunks, final)


def chat_shaper(prepared: Prepared, reader: ReplyReader) -> Callable[[Event], Chunks]:
    def final(event: Event) -> dict[str, Any]:
        return dump(ChatResponse(model=prepared.job.model, done=True, done_reason=event.done_reason))

    return _shaper(prepared, reader, chat_chunks, final)


def merge_chunks(chunks: Chunks) -> dict[str, Any]:
    """One non-streaming body from streamed chunks (texts joined, calls and logprobs appended)."""
    body = copy.deepcopy(chunks[-1])
    parts = [c.get("message", c) for c in chunks]
    target = body.get("message", body)
    text_key = "content" if "message" in body else "response"
    target[text_key] = "".join(p.get(text_key, "") for p in parts)
    for key, value in (("thinking", "".join(p.get("thinking", "") for p in parts)),
                       ("tool_calls", [call for p in parts for call in p.get("tool_calls", [])])):
        if value:
            target[key] = value
    logprobs = [entry for c in chunks for entry in c.get("logprobs", [])]
    if logprobs:
        body["logprobs"] = logprobs
    return body
