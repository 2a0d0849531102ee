"""One conversation with a model: the request fields, streaming the answer to the terminal, Ctrl-C, timings.

The chat history lives here, client-side, as Ollama's CLI keeps it: each turn sends every message so far.
Ctrl-C while an answer streams closes the HTTP stream (the gateway cancels the generation) and drops the
unanswered turn; the caller carries on.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console

from caravan.cli.client import Client
from caravan.cli.format import verbose_stats


class Display:
    """Writes streamed text, wrapping words at the terminal edge like ``ollama run`` (when ``width``)."""

    def __init__(self, width: int | None = None, out: TextIO | None = None) -> None:
        self.width = width if width and width >= 10 else None
        self.out = out or sys.stdout
        self.column = 0
        self.word = ""
        self.thinking = False
        self.wrote = False
        self.answered: list[str] = []

    def write(self, text: str) -> None:
        if not text:
            return
        self.wrote = True
        for char in text:
            self._char(char) if self.width else self.out.write(char)
        self.out.flush()

    def _char(self, char: str) -> None:
        assert self.width is not None
        if char != "\n" and self.column + 1 > self.width - 5:
            self._wrap(char)
        else:
            self.out.write(char)
            self.column = 0 if char == "\n" else self.column + 1
        self.word = "" if char in " \n" else self.word + char

    def _wrap(self, char: str) -> None:
        """Move the word being written to a new line (or just break, when the word is too long)."""
        assert self.width is not None
        if self.word and len(self.word) <= self.width - 10:
            self.out.write(f"\x1b[{len(self.word)}D\x1b[K\n{self.word}{char}")
            self.column = len(self.word) + 1
        else:
            self.out.write(f"\n{char}")
            self.column = 1

    def think(self, text: str, hidden: bool) -> None:
        """Reasoning text, set apart from the answer."""
        if not text or hidden:
            return
        if not self.thinking:
            self.write("Thinking...\n")
            self.thinking = True
        self.write(text)

    def answer(self, text: str) -> None:
        if text and self.thinking:
            self.write("\n...done thinking.\n\n")
            self.thinking = False
        self.answered.append(text)
        self.write(text)


@contextmanager
def waiting(enabled: bool) -> Iterator[Any]:
    """A spinner on stderr until the first token (only on a terminal); yields its ``stop``."""
    if not enabled:
        yield lambda: None
        return
    status = Console(stderr=True).status("", spinner="dots")
    status.start()
    try:
        yield status.stop
    finally:
        status.stop()


@dataclass
class Session:
    """What ``run`` and the REPL send: model, history, system, options, format, keep_alive, think."""

    client: Client
    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    system: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    format: str = ""
    keep_alive: str | None = None
    think: bool | str | None = None
    hide_thinking: bool = False
    verbose: bool = False
    wordwrap: bool = True

    def _common(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model}
        if self.options:
            body["options"] = self.options
        if self.format:
            body["format"] = self.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.think is not None:
            body["think"] = self.think
        return body

    def display(self) -> Display:
        tty = sys.stdout.isatty()
        return Display(shutil.get_terminal_size().columns if tty and self.wordwrap else None)

    def load(self) -> None:
        """Have the cluster load the model (an empty prompt) before the first turn."""
        body = {"model": self.model, "prompt": ""}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        with waiting(sys.stderr.isatty()):
            self.client.call("POST", "/api/generate", body)

    def _show(self, chunks: Iterable[dict[str, Any]], display: Display, key: str | None) -> dict[str, Any]:
        """Stream chunks to the display; return the final one."""
        final: dict[str, Any] = {}
        with waiting(sys.stderr.isatty()) as stop:
            for chunk in chunks:
                stop()
                part = chunk.get(key, {}) if key else chunk
                display.think(str(part.get("thinking") or ""), self.hide_thinking)
                display.answer(str(part.get("content" if key else "response") or ""))
                final = chunk
        return final

    def _finish(self, display: Display, final: dict[str, Any]) -> None:
        if display.wrote:
            display.write("\n\n")
        if self.verbose and final.get("done"):
            sys.stderr.write("\n".join(verbose_stats(final)) + "\n")
            sys.stderr.flush()

    def chat(self, prompt: str) -> str | None:
        """One REPL turn over ``/api/chat``; the answer, or ``None`` when Ctrl-C stopped it."""
        self.messages.append({"role": "user", "content": prompt})
        display = self.display()
        body = {**self._common(), "messages": self.messages, "stream": True}
        try:
            final = self._show(self.client.stream("/api/chat", body), display, "message")
        except KeyboardInterrupt:
            self.messages.pop()
            display.write("\n")
            return None
        except BaseException:
            self.messages.pop()
            raise
        self._finish(display, final)
        text = "".join(display.answered)
        self.messages.append({"role": "assistant", "content": text})
        return text

    def generate(self, prompt: str) -> None:
        """A one-shot answer over ``/api/generate`` (``caravan run MODEL PROMPT``); Ctrl-C just stops it."""
        display = self.display()
        body = {**self._common(), "prompt": prompt, "stream": True}
        if self.system:
            body["system"] = self.system
        try:
            final = self._show(self.client.stream("/api/generate", body), display, None)
        except KeyboardInterrupt:
            display.write("\n")
            return
        self._finish(display, final)
