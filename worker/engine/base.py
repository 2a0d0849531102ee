"""The engine interface. One engine = one loaded model; it owns its llama.cpp context on one thread.

``stream(job, cancel, first)`` yields :class:`caravan.queue.Event` objects: ``tok`` deltas, then one ``done``
(or ``err``). ``cancel`` is a ``threading.Event`` the engine checks between tokens. ``first``, when given, may
be called on the engine's own thread with the request's first ``tok`` event; when it returns True it delivered
the event (to the reply stream) and the event is not yielded.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from caravan.queue import Event, InferenceJob, LoadSpec

FirstToken = Callable[[Event], bool]


@dataclass
class Stats:
    """Per-request counters, turned into Ollama's final-chunk metrics (nanoseconds)."""

    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    end: float | None = None
    prompt_tokens: int = 0
    eval_tokens: int = 0
    context: list[int] | None = None

    def as_dict(self) -> dict[str, object]:
        end = self.end or time.perf_counter()
        first = self.first_token or end
        out: dict[str, object] = {
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": int((first - self.start) * 1e9),
            "eval_count": self.eval_tokens,
            "eval_duration": int((end - first) * 1e9),
        }
        if self.context is not None:
            out["context"] = self.context
        return out


class Engine(abc.ABC):
    """One loaded model."""

    spec: LoadSpec
    slots: int = 1

    @abc.abstractmethod
    def stream(self, job: InferenceJob, cancel: threading.Event,
               first: FirstToken | None = None) -> AsyncIterator[Event]:
        """Run ``job``; yield token events then a final ``done`` or ``err`` event (see the module docstring)."""

    async def embed(self, job: InferenceJob, cancel: threading.Event) -> Event:
        """Run an ``embed`` job: one ``done`` event carrying the raw vectors (``embeddings``), or an ``err``."""
        return Event(t="err", status=400, error=f'"{job.model}" does not support embeddings')

    @abc.abstractmethod
    async def close(self) -> None:
        """Free the model."""

    @property
    def memory(self) -> int:
        """Bytes this engine holds (estimate)."""
        return self.spec.estimate()
