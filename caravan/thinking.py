"""Reasoning out of model text (ollama-api.md §3.6, §9.3 step 7): ``<think>…</think>`` → ``thinking``.

The tags are inferred from the model's Go template (``caravan.prompt.infer_thinking_tags``), defaulting to
``<think>``/``</think>``. Output that starts (after whitespace) with the opening tag is thinking until the
closing tag; when the rendered prompt already ends with the opening tag (the template opened the block for
the model) the parser starts inside it. Text after the closing tag, leading whitespace trimmed, is content.
Partial tags at the end of a delta are held back until the next one tells what they are.
"""

from __future__ import annotations

from functools import lru_cache

from caravan.tools import partial_suffix

DEFAULT_TAGS = ("<think>", "</think>")


class ThinkingParser:
    """Stateful: ``add`` each delta → ``(thinking, content)``; ``flush`` once at the end."""

    def __init__(self, opening: str = DEFAULT_TAGS[0], closing: str = DEFAULT_TAGS[1], *,
                 inside: bool = False) -> None:
        self.opening = opening
        self.closing = closing
        self.state = "thinking_start" if inside else "start"  # → thinking → after → content
        self.buffer = ""

    def add(self, text: str) -> tuple[str, str]:
        if self.state == "content":
            return "", text
        self.buffer += text
        thinking = content = ""
        while True:
            before = self.state
            piece_thinking, piece_content = self._step()
            thinking, content = thinking + piece_thinking, content + piece_content
            if self.state == before:
                return thinking, content

    def flush(self) -> tuple[str, str]:
        rest, self.buffer = self.buffer, ""
        if self.state in ("thinking", "thinking_start"):
            return rest, ""
        return "", rest

    def _step(self) -> tuple[str, str]:
        if self.state == "start":
            return self._start()
        if self.state == "thinking_start":
            self.buffer = self.buffer.lstrip()
            if self.buffer:
                self.state = "thinking"
            return "", ""
        if self.state == "thinking":
            return self._thinking(), ""
        if self.state == "after":
            self.buffer = self.buffer.lstrip()
            if self.buffer:
                self.state = "content"
                out, self.buffer = self.buffer, ""
                return "", out
            return "", ""
        out, self.buffer = self.buffer, ""
        return "", out

    def _start(self) -> tuple[str, str]:
        stripped = self.buffer.lstrip()
        if stripped.startswith(self.opening):
            self.buffer = stripped[len(self.opening):]
            self.state = "thinking_start"
        elif stripped and not self.opening.startswith(stripped):
            self.state = "content"
        return "", ""

    def _thinking(self) -> str:
        index = self.buffer.find(self.closing)
        if index >= 0:
            out, self.buffer = self.buffer[:index], self.buffer[index + len(self.closing):]
            self.state = "after"
            return out
        cut = len(self.buffer) - partial_suffix(self.buffer, self.closing)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out


@lru_cache(maxsize=64)
def thinking_setup(template: str | None, think: bool | str | None) -> tuple[str, str, bool]:
    """``(opening, closing, inside)`` for a model's Go template: the tags, and whether a rendered prompt
    (with ``think``) already ends inside the thinking block. No template → default tags, not inside."""
    if not template:
        return (*DEFAULT_TAGS, False)
    from caravan.gotemplate import TemplateError
    from caravan.prompt import infer_thinking_tags, render_prompt

    opening, closing = infer_thinking_tags(template)
    opening, closing = (opening, closing) if opening and closing else DEFAULT_TAGS
    flag, level = (think, "") if isinstance(think, bool) or think is None else (None, think)
    try:
        probe = render_prompt(template, messages=[{"role": "user", "content": "?"}], think=flag, think_level=level)
    except TemplateError:  # a template that cannot render fails later, on the worker, with its own error
        return opening, closing, False
    return opening, closing, probe.rstrip().endswith(opening)
