"""The batching engine's thread: continuous batching over one ``llama_context`` (building-blocks §B.2).

One thread owns the context. Each loop turn is one step::

    reap cancelled → admit waiting requests into free slots (the slot whose history they continue) → plan:
    one token per decoding sequence, prompt chunks of prefilling ones in the room left (n_batch)
    → llama_decode → commit the rows to each slot's token history → sample each sequence that has
    logits with its own sampler chain → emit text deltas → flush the step's events to asyncio at once

A slot is one llama.cpp sequence id. Its ``history`` lists the tokens whose KV is resident, and it outlives
the request: the next request that shares a prefix with it cuts the KV back to the common prefix
(``llama_memory_seq_rm``) and evaluates only the rest. ``llama_decode`` answering 1 (no KV room) sends the
newest request in the batch back to the head of the queue; it is re-prefilled later from its prompt plus
what it generated, keeping its sampler chain, so its output continues as if nothing happened.

Parked states: when a slot is given to a request that does not continue its history, the history's KV is
copied to host RAM first (``llama_state_seq_get_data``, up to ``park_bytes``, least recently used dropped).
A later request that continues a parked history better than any free slot gets it copied back into its slot
(``llama_state_seq_set_data``), so more conversations than slots keep their prefix: a copy of a 1,000-token
history costs milliseconds, evaluating it again seconds on a CPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from caravan.queue import Event, InferenceJob
from worker.engine.base import FirstToken, Stats
from worker.engine.llama import _Output
from worker.engine.logprobs import sampled_logprobs
from worker.engine.sampling import token_piece

log = logging.getLogger(__name__)
Item = Event | None  # None closes a request's stream
PARK_MIN_TOKENS = 32  # shorter histories are cheaper to evaluate again than to keep
HANDOFF_WAIT = 0.002  # s: how long submit waits for an idle thread to start on a request (see submit)


@dataclass(eq=False)
class Request:
    """One job as the engine thread sees it; ``prompt`` is already tokenized, ``chain`` already built."""

    job: InferenceJob
    cancel: threading.Event
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Item]
    prompt: list[int]
    chain: Any
    limit: int = -1
    stops: list[str] = field(default_factory=list)
    out: _Output = field(init=False)  # text and logprobs → tok events; set by Batcher.submit
    stats: Stats = field(default_factory=Stats)
    generated: list[int] = field(default_factory=list)
    admitted: int = 0
    started: bool = False
    first: FirstToken | None = None  # delivers the first token from this thread (see worker.engine.base)

    @property
    def target(self) -> list[int]:
        """Tokens the KV must hold before the next sample: the prompt plus every token generated so far."""
        return self.prompt + self.generated


@dataclass(eq=False)
class Slot:
    """One sequence id of the context and the tokens resident in its KV."""

    seq_id: int
    history: list[int] = field(default_factory=list)
    req: Request | None = None
    pending: list[int] = field(default_factory=list)
    row: int = -1
    used: float = 0.0

    @property
    def decoding(self) -> bool:
        return self.req is not None and not self.pending


@dataclass(eq=False)
class Parked:
    """A slot's history and its KV, copied to host RAM."""

    tokens: list[int]
    state: Any  # ctypes uint8 array
    used: float = 0.0

    @property
    def size(self) -> int:
        return len(self.state)


@dataclass(frozen=True)
class Row:
    """What one slot puts into this step's batch."""

    slot: Slot
    tokens: list[int]
    logits: bool


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Batcher:
    """Owns a llama context on its thread; requests come in through :meth:`submit`."""

    def __init__(self, ctx: Any, vocab: Any, *, slots: int, n_batch: int, num_ctx: int,
                 reuse_prefix: bool = True, park_bytes: int = 0) -> None:
        from llama_cpp import llama_cpp as C

        self.C = C
        self.ctx, self.vocab, self.mem = ctx, vocab, C.llama_get_memory(ctx)
        self.n_batch, self.num_ctx, self.reuse_prefix = n_batch, num_ctx, reuse_prefix
        self.batch = C.llama_batch_init(n_batch, 0, 1)
        self.slots = [Slot(seq_id=i) for i in range(slots)]
        self.waiting: collections.deque[Request] = collections.deque()
        self._inbox: list[Request] = []
        self._cond = threading.Condition()
        self._idle = False  # the thread waits for work (read and written under _cond)
        self._running = threading.Event()  # set when the thread leaves the GIL: llama_decode, or a turn's end
        self.handoff_wait = HANDOFF_WAIT
        self._stopping = False
        self._order = itertools.count(1)
        self._out: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Item], Item]]] = {}
        self.steps = 0
        self.prefilled = 0  # prompt tokens evaluated (a reused prefix is not)
        self.park_bytes = park_bytes if reuse_prefix else 0
        self.parked: list[Parked] = []
        self.restored = 0  # parked histories copied back into a slot
        self.thread = threading.Thread(target=self.run, name="batch-engine", daemon=True)

    # -- asyncio side ------------------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        """Queue ``req`` for the thread. When the thread was idle, wait (at most ``handoff_wait`` s) until it
        has started on it: the caller's event loop would otherwise keep the GIL through the rest of its turn
        while the woken thread waits for it to admit and plan the request, delaying the prefill by that turn
        (0.4-1 ms measured in the worker); the thread holds the GIL only for that bookkeeping and gives it back
        in llama_decode. A busy thread takes the request at its next step: no wait."""
        req.out = _Output(functools.partial(self._emit, req), req.stops)
        with self._cond:
            idle, self._idle = self._idle, False
            self._inbox.append(req)
            self._cond.notify()
        if idle:
            self._running.wait(self.handoff_wait)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    # -- the thread ----------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while self._next_turn():
                try:
                    self._step()
                except Exception as exc:  # a llama.cpp failure must reach every client in the batch
                    log.exception("batch step failed")
                    self._fail_all(str(exc) or type(exc).__name__)
                self._flush()
                self._running.set()
        finally:
            self._fail_all("the model was unloaded")
            self._flush()
            self.C.llama_batch_free(self.batch)

    def _next_turn(self) -> bool:
        with self._cond:
            while not (self._stopping or self._inbox or self.waiting or self._busy()):
                self._idle = True
                self._running.clear()
                self._cond.wait()
            self._idle = False
            self.waiting.extend(self._inbox)
            self._inbox.clear()
            return not self._stopping

    def _busy(self) -> list[Slot]:
        return [s for s in self.slots if s.req is not None]

    def _step(self) -> None:
        self._reap()
        self._admit()
        rows = self._plan()
        if rows and self._decode(rows):
            self._commit(rows)
            for row in rows:
                if row.logits:
                    self._sample(row.slot)
        self.steps += 1

    # -- admission -----------------------------------------------------------------------------------------
    def _reap(self) -> None:
        for slot in self._busy():
            if slot.req is not None and slot.req.cancel.is_set():
                self._finish(slot, "cancelled")
        for req in [r for r in self.waiting if r.cancel.is_set()]:
            self.waiting.remove(req)
            self._close(req, "cancelled")

    def _admit(self) -> None:
        while self.waiting:
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            req = self.waiting.popleft()
            slot = self._choose(free, req.target)
            self._unpark(slot, req.target)
            self._assign(slot, req)

    def _choose(self, free: list[Slot], target: list[int]) -> Slot:
        """The free slot whose history ``target`` continues (the common prefix covers at least half of that
        history: llama-server's rule), the longest such prefix first. Otherwise an empty slot, else the least
        recently used, so a shared system prompt alone never evicts another conversation's cache; ties go to
        a slot next to a busy one (llama.cpp computes consecutive sequence ids in one ubatch)."""
        shared = {s.seq_id: common_prefix(s.history, target) for s in free}
        continued = [s for s in free if shared[s.seq_id] and 2 * shared[s.seq_id] >= len(s.history)]
        if continued:
            return max(continued, key=lambda s: shared[s.seq_id])
        busy = {s.seq_id for s in self._busy()}
        return min(free, key=lambda s: (bool(s.history), s.used, not {s.seq_id - 1, s.seq_id + 1} & busy,
                                        s.seq_id))

    def _assign(self, slot: Slot, req: Request) -> None:
        target = req.target
        keep = min(common_prefix(slot.history, target), len(target) - 1) if self.reuse_prefix else 0
        self._park(slot, keep)
        if not self.C.llama_memory_seq_rm(self.mem, slot.seq_id, keep, -1):
            self.C.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            keep = 0
        slot.history, slot.pending, slot.req = slot.history[:keep], target[keep:], req
        req.admitted = next(self._order)
        if not req.started:
            req.started, req.stats.start = True, time.perf_counter()
        log.debug("admitted", extra={"seq": slot.seq_id, "cached": keep, "prefill": len(slot.pending)})

    # -- parked states (host RAM) -------------------------------------------------------------------------
    def _park(self, slot: Slot, kept: int) -> None:
        """Before the slot keeps only ``kept`` tokens of its history: copy the history and its KV to host RAM
        when that loses enough of it (within ``park_bytes``; least recently used dropped)."""
        if not self.park_bytes or len(slot.history) - kept < PARK_MIN_TOKENS:
            return
        size = self.C.llama_state_seq_get_size(self.ctx, slot.seq_id)
        if not size or size > self.park_bytes:
            return
        state = (ctypes.c_uint8 * size)()
        if self.C.llama_state_seq_get_data(self.ctx, state, size, slot.seq_id) != size:
            return
        tokens = list(slot.history)  # histories this one extends are subsumed by it
        self.parked = [p for p in self.parked if common_prefix(p.tokens, tokens) < len(p.tokens)]
        self.parked.append(Parked(tokens, state, time.perf_counter()))
        self.parked.sort(key=lambda p: p.used, reverse=True)
        while sum(p.size for p in self.parked) > self.park_bytes:
            self.parked.pop()
        log.debug("parked", extra={"seq": slot.seq_id, "tokens": len(tokens), "bytes": size})

    def _unpark(self, slot: Slot, target: list[int]) -> None:
        """Copy back the parked history ``target`` continues furthest, when it beats what the slot holds."""
        if not self.parked:
            return
        held = common_prefix(slot.history, target)
        best = max(self.parked, key=lambda p: common_prefix(p.tokens, target))
        shared = common_prefix(best.tokens, target)
        if shared - held < PARK_MIN_TOKENS or 2 * shared < len(best.tokens):
            return
        self._park(slot, held)  # what the slot holds may be wanted later too
        self.parked.remove(best)
        self.C.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        if self.C.llama_state_seq_set_data(self.ctx, best.state, best.size, slot.seq_id) != best.size:
            self.C.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            slot.history = []
            return
        slot.history = best.tokens
        self.restored += 1
        log.debug("unparked", extra={"seq": slot.seq_id, "tokens": len(best.tokens)})

    # -- one decode ----------------------------------------------------------------------------------------
    def _plan(self) -> list[Row]:
        """One token per decoding slot; prompt chunks, oldest request first, in the room left."""
        busy = self._busy()
        room = self.n_batch - sum(1 for s in busy if s.decoding)
        chunks: dict[int, list[int]] = {}
        for slot in sorted((s for s in busy if s.pending), key=lambda s: s.req.admitted if s.req else 0):
            chunks[slot.seq_id] = slot.pending[:room]
            room -= len(chunks[slot.seq_id])
        rows = []
        for slot in busy:  # sequence-id order: llama.cpp packs consecutive ids into one ubatch
            if slot.decoding and slot.req is not None:
                rows.append(Row(slot, slot.req.generated[-1:], True))
            elif chunks.get(slot.seq_id):
                chunk = chunks[slot.seq_id]
                rows.append(Row(slot, chunk, len(chunk) == len(slot.pending)))
        return rows

    def _fill(self, rows: list[Row]) -> None:
        batch, i = self.batch, 0
        for row in rows:
            start = len(row.slot.history)
            for j, token in enumerate(row.tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + j, 1
                batch.seq_id[i][0] = row.slot.seq_id
                batch.logits[i] = row.logits and j == len(row.tokens) - 1
                i += 1
            row.slot.row = i - 1 if row.logits else -1
        batch.n_tokens = i

    def _decode(self, rows: list[Row]) -> bool:
        """Run the batch; on "no KV room" make room and let the next step re-plan."""
        self._fill(rows)
        code = self.llama_decode()
        if code == 0:
            return True
        if code == 1:
            self._make_room(rows)
            return False
        for row in rows:  # partial ubatches may remain after an abort or a fatal error
            self.C.llama_memory_seq_rm(self.mem, row.slot.seq_id, len(row.slot.history), -1)
        raise RuntimeError(f"llama_decode failed with code {code}")

    def llama_decode(self) -> int:
        self._running.set()
        return int(self.C.llama_decode(self.ctx, self.batch))

    def _make_room(self, rows: list[Row]) -> None:
        """Preempt the newest request of the batch; a lone request has filled its context: it ends."""
        victim = max((row.slot for row in rows), key=lambda s: s.req.admitted if s.req else 0)
        req = victim.req
        if req is None or len(rows) == 1:
            self._finish(victim, "length")
            return
        log.info("KV cache full: request preempted", extra={"seq": victim.seq_id})
        self.C.llama_memory_seq_rm(self.mem, victim.seq_id, -1, -1)
        victim.history, victim.pending, victim.req = [], [], None
        self.waiting.appendleft(req)

    def _commit(self, rows: list[Row]) -> None:
        for row in rows:
            row.slot.history.extend(row.tokens)
            if row.slot.pending:
                del row.slot.pending[: len(row.tokens)]
                self.prefilled += len(row.tokens)

    # -- sampling and output -------------------------------------------------------------------------------
    def _sample(self, slot: Slot) -> None:
        req = slot.req
        if req is None:
            return
        token = self.C.llama_sampler_sample(req.chain, self.ctx, slot.row)
        if req.stats.first_token is None:
            req.stats.first_token = time.perf_counter()
        if self.C.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, "stop")
            return
        req.generated.append(token)
        req.out.token(self._piece(token), self._logprob(req, slot.row, token))
        if req.out.stopped:
            self._finish(slot, "stop")
        elif len(req.generated) == req.limit or self._context_full(slot):
            self._finish(slot, "length")

    def _context_full(self, slot: Slot) -> bool:
        """No room for the next token, even after a context shift (when the request allows one)."""
        if len(slot.history) + 1 < self.num_ctx:
            return False
        return not (slot.req is not None and slot.req.job.shift and self._shift(slot))

    def _shift(self, slot: Slot) -> bool:
        """Context shift (Ollama's ``shift: true``): drop the older half after ``num_keep`` tokens and move the
        rest down, so generation goes on past the context length. False when the memory cannot shift."""
        keep = min(max(0, int(slot.req.job.options.get("num_keep", 4))) if slot.req else 4, len(slot.history) // 2)
        discard = (len(slot.history) - keep) // 2
        if discard <= 0 or not self.C.llama_memory_can_shift(self.mem):
            return False
        if not self.C.llama_memory_seq_rm(self.mem, slot.seq_id, keep, keep + discard):
            return False
        self.C.llama_memory_seq_add(self.mem, slot.seq_id, keep + discard, -1, -discard)
        del slot.history[keep : keep + discard]
        return True

    def _piece(self, token: int) -> bytes:
        return token_piece(self.vocab, token)

    def _logprob(self, req: Request, row: int, token: int) -> dict[str, Any] | None:
        if not req.job.logprobs:
            return None
        return sampled_logprobs(self.ctx, self.vocab, row, token, req.job.top_logprobs, self._piece)

    def _finish(self, slot: Slot, reason: str) -> None:
        """End the slot's request; the slot keeps its history for prefix reuse."""
        if slot.req is not None:
            self._close(slot.req, reason)
        slot.req, slot.pending, slot.row, slot.used = None, [], -1, time.perf_counter()

    def _close(self, req: Request, reason: str) -> None:
        req.out.finish()
        stats = req.stats
        stats.end, stats.prompt_tokens, stats.eval_tokens = time.perf_counter(), len(req.prompt), len(req.generated)
        if req.job.op == "generate" and not req.job.raw:
            stats.context = req.prompt + req.generated
        self._emit(req, Event(t="done", done_reason=reason, stats=stats.as_dict()))
        self._end(req)

    def _end(self, req: Request) -> None:
        self._emit(req, None)
        self.C.llama_sampler_free(req.chain)
        req.chain = None

    def _fail_all(self, message: str) -> None:
        """Error out every request the engine holds; their slots forget their (possibly partial) KV."""
        with self._cond:
            inbox, self._inbox = self._inbox, []
        requests: Iterable[Request] = [*(s.req for s in self.slots if s.req), *self.waiting, *inbox]
        for req in requests:
            self._emit(req, Event(t="err", status=500, error=message))
            self._end(req)
        for slot in self._busy():
            self.C.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            slot.history, slot.pending, slot.req = [], [], None
        self.waiting.clear()

    def _emit(self, req: Request, item: Item) -> None:
        if req.first is not None and item is not None and item.t == "tok":
            first, req.first = req.first, None
            if first(item):  # on its way to the client already: no hop to the event loop for it
                return
        self._out.setdefault(req.loop, []).append((req.queue, item))

    def _flush(self) -> None:
        """One wake-up per event loop per step, carrying every event of the step."""
        out, self._out = self._out, {}
        for loop, items in out.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[asyncio.Queue[Item], Item]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)

