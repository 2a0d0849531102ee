"""A fake engine for unit tests and scale simulations only: echoes words of the prompt, no model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from caravan.queue import Event, InferenceJob, LoadSpec
from worker.engine.base import Engine, FirstToken, Stats
from worker.prompting import TokenizerInfo, build_prompt


class FakeEngine(Engine):
    """Generates ``num_predict`` (default 8) tokens ``"tok0 tok1 ..."`` with an optional delay per token."""

    def __init__(self, spec: LoadSpec, delay: float = 0.0) -> None:
        self.spec = spec
        self.delay = delay
        self.slots = max(1, spec.parallel)

    async def stream(self, job: InferenceJob, cancel: threading.Event,
                     first: FirstToken | None = None) -> AsyncIterator[Event]:
        stats = Stats()
        prompt = build_prompt(job, TokenizerInfo(None))
        stats.prompt_tokens = len(prompt.split())
        limit = int(job.options.get("num_predict", -1))
        count = 8 if limit < 0 else limit
        reason = "length" if limit >= 0 else "stop"
        for seq in range(count):
            if cancel.is_set():
                reason = "cancelled"
                break
            await asyncio.sleep(self.delay)
            stats.first_token = stats.first_token or stats.start
            stats.eval_tokens += 1
            yield Event(t="tok", seq=seq, text=f"tok{seq} ")
        yield Event(t="done", done_reason=reason, stats=stats.as_dict())

    async def close(self) -> None:
        return None
