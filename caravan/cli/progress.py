"""Progress for pull, push and create, drawn on stderr the way ``ollama`` draws it.

A progress event with a ``digest`` gets a bar of its own (``pulling dde5aa3fc5ff  45% ▕███   ▏ 900/2000 MB``);
one without becomes a status line (``pulling manifest``, ``writing manifest``, ``success``) with a spinner
until the next status arrives. On a terminal the display is live; elsewhere (a pipe, a log file) each status
line is printed once as it arrives and each bar once when it completes.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from caravan.cli.format import human_bytes


class _BarsOnly(ProgressColumn):
    """Show ``inner`` for byte-progress tasks, nothing for status lines."""

    def __init__(self, inner: ProgressColumn) -> None:
        super().__init__()
        self.inner = inner

    def render(self, task: Task) -> RenderableType:
        return self.inner.render(task) if task.fields.get("bar") else Text("")


class _StatusSpinner(SpinnerColumn):
    """A spinner after a status line while it is the current one."""

    def render(self, task: Task) -> RenderableType:
        if task.fields.get("bar") or task.finished:
            return Text("")
        return super().render(task)


def _columns() -> list[ProgressColumn]:
    return [TextColumn("{task.description}"), _StatusSpinner(),
            _BarsOnly(TaskProgressColumn()), _BarsOnly(BarColumn(bar_width=30)), _BarsOnly(DownloadColumn()),
            _BarsOnly(TransferSpeedColumn()), _BarsOnly(TimeRemainingColumn())]


class ProgressView:
    """Turns a stream of ``{"status", "digest", "total", "completed"}`` events into bars and status lines."""

    def __init__(self, verb: str = "pulling", console: Console | None = None) -> None:
        self.verb = verb
        self.console = console or Console(stderr=True)
        self.plain = not self.console.is_terminal or self.console.is_dumb_terminal
        self.progress = Progress(*_columns(), console=self.console, transient=False, disable=self.plain)
        self.bars: dict[str, TaskID] = {}
        self.printed: set[str] = set()
        self.status: str | None = None
        self.status_task: TaskID | None = None

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._finish_status()
        if self.progress.live.is_started:
            self.progress.stop()

    def follow(self, events: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Show every event; return the last one (normally ``{"status": "success"}``)."""
        last: dict[str, Any] = {}
        for event in events:
            self.update(event)
            last = event
        return last

    def update(self, event: dict[str, Any]) -> None:
        """Show one progress event."""
        digest = str(event.get("digest") or "")
        if digest:
            label = str(event.get("status") or f"{self.verb} {digest.removeprefix('sha256:')[:12]}")
            self.bar(digest, label, int(event.get("total") or 0), int(event.get("completed") or 0))
        elif event.get("status") and event["status"] != self.status:
            self.set_status(str(event["status"]))

    def _start(self) -> None:
        """Start drawing with the first line, so an early error leaves no empty display behind."""
        if not self.progress.live.is_started:
            self.progress.start()

    def bar(self, key: str, label: str, total: int, completed: int) -> None:
        """Create or move the bar ``key``."""
        self._start()
        self._finish_status()
        if key not in self.bars:
            self.bars[key] = self.progress.add_task(label, total=total or None, completed=completed, bar=True)
        self.progress.update(self.bars[key], total=total or None, completed=completed)
        self._print_done(key)

    def advance(self, key: str, amount: int) -> None:
        self.progress.advance(self.bars[key], amount)
        self._print_done(key)

    def _print_done(self, key: str) -> None:
        """Without a live display (a pipe, a log), print each bar once, when it completes."""
        task = self.progress.tasks[self.bars[key]]
        if self.plain and key not in self.printed and task.total and task.completed >= task.total:
            self.printed.add(key)
            self.console.print(f"{task.description} 100% {human_bytes(task.total)}", highlight=False,
                               soft_wrap=True)

    def set_status(self, status: str) -> None:
        """A new status line; the previous one stops spinning."""
        self._start()
        self._finish_status()
        self.status = status
        self.status_task = self.progress.add_task(status, total=1, bar=False)
        if self.plain:
            self.console.print(status, highlight=False, soft_wrap=True)

    def _finish_status(self) -> None:
        if self.status_task is not None:
            self.progress.update(self.status_task, completed=1)
            self.status_task = None
