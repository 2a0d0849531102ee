"""Tool calls out of model text (ollama-api.md §9.3 step 7), fed one streamed delta at a time.

The opening tag comes from the template's ``{{ if .ToolCalls }}`` block (``caravan.prompt.tool_call_tag``:
``<tool_call>``, ``[TOOL_CALLS]``, … or ``{`` when the template has none). Text before the tag is content;
after it, JSON objects with a string ``name`` and an object ``arguments`` (or ``parameters``) become calls.
Separators between calls (whitespace, ``,``, ``[``/``]``, ``;``, a repeated tag, closing tags such as
``</tool_call>``) are dropped. With a ``{``/``[`` tag a call is only recognised as the first non-space output.
Anything that turns out not to be a call is handed back as content, verbatim.

    parser = ToolCallParser("<tool_call>")
    calls, content = parser.add('Sure. <tool_call>{"name": "f", "arguments": {"x": 1}}')
    # content == "Sure. ", calls == [{"id": "call_…", "function": {"index": 0, "name": "f", ...}}]
"""

from __future__ import annotations

import json
import secrets
import string
from typing import Any

_ID_CHARS = string.ascii_lowercase + string.digits
_SEPARATORS = " \t\r\n,;[]"


def new_call_id() -> str:
    """``call_`` + 8 characters ``[a-z0-9]``, as Ollama generates them."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag`` (text to hold back)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def json_object_end(text: str, start: int) -> int:
    """Index just past the JSON object opening at ``text[start]`` (``{``), or -1 while it is incomplete."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return -1


def as_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """``(name, arguments)`` when ``text`` is a JSON object shaped like a tool call."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return (obj["name"], args) if isinstance(args, dict) else None


class ToolCallParser:
    """Stateful: ``add`` each delta, then ``flush`` once at the end."""

    def __init__(self, tag: str = "{") -> None:
        self.tag = tag or "{"
        self.json_tag = self.tag in ("{", "[")
        self.state = "looking"  # → "calling" → "done"
        self.buffer = ""
        self.calls = 0

    def add(self, text: str) -> tuple[list[dict[str, Any]], str]:
        """Feed a delta; returns the tool calls completed and the content that is safe to show now."""
        if self.state == "done":
            return [], text
        self.buffer += text
        content = ""
        if self.state == "looking":
            content = self._look()
            if self.state != "calling":
                return [], content
        calls = self._parse_calls()
        if self.state == "done":
            content, self.buffer = content + self.buffer, ""
        return calls, content

    def flush(self) -> str:
        """What is left at the end: unparsed text is content; trailing separators after calls are not."""
        rest, self.buffer = self.buffer, ""
        end = self._skip(rest, 0)
        if self.calls and (end < 0 or end >= len(rest)):
            return ""
        return rest

    def _look(self) -> str:
        index = self.buffer.find(self.tag)
        cut = index if index >= 0 else len(self.buffer) - partial_suffix(self.buffer, self.tag)
        content, self.buffer = self.buffer[:cut], self.buffer[cut:]
        if self.json_tag and content.strip():
            self.state = "done"
            content, self.buffer = content + self.buffer, ""
        elif index >= 0:
            self.state = "calling"
        return content

    def _parse_calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        while True:
            start = self._skip(self.buffer, 0)
            if start < 0 or start >= len(self.buffer):
                return calls  # only separators so far: wait for more
            if self.buffer[start] != "{":
                self._give_up(start)
                return calls
            end = json_object_end(self.buffer, start)
            if end < 0:
                return calls
            parsed = as_call(self.buffer[start:end])
            if parsed is None:
                self._give_up(start)
                return calls
            calls.append(self._call(*parsed))
            self.buffer = self.buffer[end:]

    def _give_up(self, start: int) -> None:
        """No (more) calls: the rest is content; separators after recognised calls are dropped."""
        self.state = "done"
        if self.calls:
            self.buffer = self.buffer[start:]

    def _call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        call = {"id": new_call_id(), "function": {"index": self.calls, "name": name, "arguments": arguments}}
        self.calls += 1
        return call

    def _skip(self, text: str, pos: int) -> int:
        """Past separators, repeated tags and closing tags from ``pos``; -1 when a tag may still be arriving."""
        while pos < len(text):
            rest = text[pos:]
            if not self.json_tag and rest.startswith(self.tag):
                pos += len(self.tag)
            elif rest[0] in _SEPARATORS:
                pos += 1
            elif rest.startswith("</"):
                close = rest.find(">")
                if close < 0:
                    return -1
                pos += close + 1
            elif (not self.json_tag and self.tag.startswith(rest)) or "</".startswith(rest):
                return -1
            else:
                return pos
        return pos
