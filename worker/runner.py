"""The worker runtime: claim requests from Redis, run them on engines, stream replies, heartbeat, drain.

    arq:ctl:{id} ── load_model/unload_model ──▶ Worker.load / Worker.unload
    caravan:q:{spec}:… ── fairqueue.take (read, ack, write "start": one script) ──▶ engine.stream ──▶ XADD reply
    idle: block on the doorbell + inbox (fairqueue.Mailbox); the enqueue script hands requests over, started
    caravan:cancel (pub/sub) + caravan:c:{id} ──▶ per-request threading.Event checked between tokens
    every 2 s: SET caravan:w:{id} (EX 10) + ZADD caravan:workers; expire idle models past keep_alive
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from caravan import __version__, fairqueue, keys
from caravan.errors import CaravanError
from caravan.fairqueue import RENEW_EVERY, Mailbox, StrideOrder
from caravan.logs import request_id
from caravan.queue import (
    Event,
    InferenceJob,
    LoadedModelState,
    LoadSpec,
    WorkerState,
    decode_keep_alive,
)
from caravan.settings import WorkerSettings
from worker.engine.base import Engine
from worker.metrics import WorkerMetrics
from worker.replies import ReplyWriter

log = logging.getLogger(__name__)
EngineFactory = Callable[[LoadSpec], Awaitable[Engine]]
HEARTBEAT_EVERY = 2.0


@dataclass
class Loaded:
    spec: LoadSpec
    engine: Engine
    loaded_at: float = field(default_factory=time.time)
    in_flight: int = 0
    keep_alive: float = 300.0
    expires_at: float | None = None
    last_used: float = field(default_factory=time.time)
    slot_free: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None  # the claim loop
    claiming: asyncio.Task[bool] | None = None  # its claim in progress (not cancelled with it)
    mailbox: Mailbox | None = None  # where the claim loop waits when it has nothing to take
    waiting: bool = False  # ... and is waiting there now

    @property
    def free(self) -> int:
        return max(0, self.engine.slots - self.in_flight)

    def state(self) -> LoadedModelState:
        return LoadedModelState(
            spec=self.spec, slots=self.engine.slots, in_flight=self.in_flight, size=self.engine.memory,
            keep_alive=-1 if math.isinf(self.keep_alive) else self.keep_alive,
            expires_at=self.expires_at, loaded_at=self.loaded_at, last_used=self.last_used,
        )


class Worker:
    """One worker process: a set of loaded models within a memory budget."""

    def __init__(self, settings: WorkerSettings, redis: Redis, make_engine: EngineFactory,
                 metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.id = settings.worker_id
        self.metrics = metrics or WorkerMetrics(self.id)
        self.redis = redis
        self.make_engine = make_engine
        self.loaded: dict[str, Loaded] = {}
        self.loading: dict[str, asyncio.Task[Loaded]] = {}
        self.cancels: dict[str, threading.Event] = {}
        self.replies = ReplyWriter(redis, settings.redis_url)
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- state -----------------------------------------------------------------------------------------
    def state(self) -> WorkerState:
        return WorkerState(
            id=self.id, host=socket.gethostname(), device=self.settings.device,
            memory_budget=self.settings.memory_budget,
            memory_used=sum(m.engine.memory for m in self.loaded.values()),
            models=[m.state() for m in self.loaded.values()], loading=list(self.loading),
            draining=self.draining, version=__version__, metrics_url=self.metrics.url,
        )

    async def publish_state(self) -> None:
        state = self.state()
        self.metrics.observe_state(state)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.worker(self.id), state.model_dump_json(), ex=keys.HEARTBEAT_TTL)
            pipe.zadd(keys.WORKERS, {self.id: int(time.time() * 1000)})
            await pipe.execute()

    # -- load / unload ---------------------------------------------------------------------------------
    async def load(self, spec: LoadSpec) -> None:
        """Load ``spec`` unless loaded or loading; idempotent. A failure is published for waiting requests."""
        if spec.key in self.loaded:
            return
        if spec.key not in self.loading:
            self.loading[spec.key] = asyncio.create_task(self._load(spec))
            await self.publish_state()
        try:
            await asyncio.shield(self.loading[spec.key])
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            log.error("model load failed", extra={"model": spec.model, "error": message})
            with contextlib.suppress(RedisError, OSError):
                await self.redis.set(keys.load_error(spec.key), message, ex=keys.LOAD_ERROR_TTL)
            raise
        finally:
            self.loading.pop(spec.key, None)
            await self.publish_state()

    async def _load(self, spec: LoadSpec) -> Loaded:
        started = time.perf_counter()
        await self._make_room(spec)
        with self.metrics.loading(spec.model):
            engine = await self.make_engine(spec)
        with contextlib.suppress(ResponseError):
            await self.redis.xgroup_create(keys.worker_queue(spec.key, self.id), keys.GROUP, id="0", mkstream=True)
        model = Loaded(spec=spec, engine=engine)
        self.loaded[spec.key] = model
        model.task = asyncio.create_task(self._dispatch(model))
        log.info("model loaded", extra={"model": spec.model, "spec": spec.key,
                                        "seconds": round(time.perf_counter() - started, 3)})
        return model

    def _used(self) -> int:
        return sum(m.engine.memory for m in self.loaded.values())

    async def _make_room(self, spec: LoadSpec) -> None:
        """Evict idle models, least recently used first, until ``spec`` fits the memory budget.

        Models with requests in flight are never evicted: when only busy models stand in the way, wait for
        one of them to go idle (up to the load timeout of the job).
        """
        need, budget = spec.estimate(), self.settings.memory_budget
        if need > budget:
            raise CaravanError(f"model requires more memory ({need} bytes) than this worker's budget ({budget})")
        while self._used() + need > budget:
            idle = sorted((m for m in self.loaded.values() if m.in_flight == 0), key=lambda m: m.last_used)
            if idle:
                log.info("evicting idle model", extra={"model": idle[0].spec.model, "for": spec.model})
                await self.unload(idle[0].spec.key)
                continue
            waits = [asyncio.create_task(m.slot_free.wait()) for m in self.loaded.values()]
            _, pending = await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    async def unload(self, spec_key: str) -> None:
        """Stop claiming for ``spec_key``, wait for its requests, free it."""
        model = self.loaded.pop(spec_key, None)
        if model is None:
            return
        if model.task:
            model.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await model.task
        if model.claiming:  # requests it claimed are admitted (counted in flight) before this goes on
            with contextlib.suppress(Exception):
                await model.claiming
        if model.mailbox:  # ... and so are requests handed over while it stopped waiting
            with contextlib.suppress(RedisError, OSError):
                for job in await model.mailbox.close():
                    self._admit(model, job)
        while model.in_flight:
            model.slot_free.clear()
            await model.slot_free.wait()
        await model.engine.close()
        self.metrics.unloaded(model.spec.model)
        await self.publish_state()
        log.info("model unloaded", extra={"model": model.spec.model, "spec": spec_key})

    # -- claiming ---------------------------------------------------------------------------------------
    async def _dispatch(self, model: Loaded) -> None:
        """Claim requests for one loaded model: users in turn (stride order); with nothing to take, wait on the
        doorbell and inbox (requests handed over there are this worker's already)."""
        spec = model.spec.key
        picker = StrideOrder()
        model.mailbox = mailbox = Mailbox(self.redis, spec, self.id)
        await mailbox.open()
        take, taken = True, 0.0
        while not self.draining:
            try:
                if model.free == 0:
                    model.slot_free.clear()
                    await model.slot_free.wait()
                    take = True
                    continue
                if take or time.monotonic() - taken > RENEW_EVERY:
                    model.claiming = asyncio.create_task(self._take(model, picker))
                    more = await asyncio.shield(model.claiming)  # unload waits for it: a claimed job is served
                    taken, take = time.monotonic(), more
                    if more or model.free == 0:
                        continue
                model.waiting = True
                try:  # between takes, hand-offs need none: the word counts them down (and _release up)
                    mail = await mailbox.wait()
                finally:
                    model.waiting = False
                for job in mail.jobs:
                    self._admit(model, job)
                take = mail.rang
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("claim failed, retrying", extra={"error": str(exc)})
                take = True
                await asyncio.sleep(0.5)
                with contextlib.suppress(RedisError, OSError):
                    await self.redis.xgroup_create(keys.worker_queue(spec, self.id), keys.GROUP, id="0",
                                                   mkstream=True)

    async def _take(self, model: Loaded, picker: StrideOrder) -> bool:
        """Claim up to ``free`` requests: this worker's private queue first, then users in stride order.

        One round trip when every waiting stream fits the free slots (nothing to choose), else two. Returns
        whether more requests may be waiting."""
        spec = model.spec.key
        start = Event(t="start", worker=self.id).encode()
        waiting, claimed = await fairqueue.take(self.redis, spec, self.id, model.free, start)
        order = picker.order(waiting.waiting)  # users who (re)join the rotation start level with the others
        more = claimed is None or waiting.private + sum(waiting.waiting.values()) > len(claimed)
        if claimed is None:
            streams = [keys.worker_queue(spec, self.id)] if waiting.private else []
            streams += [keys.user_queue(spec, user) for user in order[: model.free - len(streams)]]
            claimed = await fairqueue.claim(self.redis, self.id, streams, start)
        for item in claimed:
            if item.user is not None:
                picker.served(item.user, waiting.weights.get(item.user, 1.0))
            if not item.cancelled:
                self._admit(model, item.job)
        return more

    def _admit(self, model: Loaded, job: InferenceJob) -> None:
        """Serve a claimed job (its ``start`` event is already written: it is this worker's from now on)."""
        model.in_flight += 1
        model.keep_alive = decode_keep_alive(job.keep_alive)
        model.expires_at = None
        cancel = self.cancels.setdefault(job.id, threading.Event())
        context = contextvars.copy_context()  # the request's own: its id in every log line about it
        context.run(request_id.set, job.id)
        events = None
        if job.op not in ("load", "embed"):  # started now: the engine has it before this loop turn ends
            first = self.replies.first_token(keys.reply(job.id))
            events = context.run(model.engine.stream, job, cancel, first)
        task = asyncio.create_task(self._serve(model, job, cancel, events), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- serving ----------------------------------------------------------------------------------------
    async def _serve(self, model: Loaded, job: InferenceJob, cancel: threading.Event,
                     events: AsyncIterator[Event] | None) -> None:
        reply = keys.reply(job.id)
        try:  # the claim wrote "start"
            if job.op == "load":
                await self._emit(reply, Event(t="done", done_reason="load"))
                return
            if events is None:  # embed: one event, computed whole
                await self._emit(reply, await model.engine.embed(job, cancel))
                return
            await self._relay(reply, self.metrics.observe(model.spec.model, events))
        except (RedisError, OSError) as exc:
            log.warning("reply stream failed", extra={"error": str(exc)})
            cancel.set()
        except Exception as exc:  # a bug in the engine or in preparing the request: an error, never silence
            log.exception("request failed")
            cancel.set()
            with contextlib.suppress(RedisError, OSError):
                await self._emit(reply, Event(t="err", status=500, error=str(exc) or type(exc).__name__))
        finally:
            self.cancels.pop(job.id, None)
            await self._release(model)

    async def _relay(self, reply: str, events: AsyncIterator[Event]) -> None:
        """The engine's events to the reply stream. Events that arrive while a write is in flight go out
        together in the next write, so a slow Redis never makes the stream lag; the writes of all requests in one
        loop turn share a round trip (``ReplyWriter``). The stream's TTL, set when the request was claimed, is
        renewed once it is half gone."""
        ready: asyncio.Queue[Event | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in events:
                    ready.put_nowait(event)
            finally:
                ready.put_nowait(None)

        task = asyncio.create_task(pump())
        renew_at = time.monotonic() + keys.REPLY_TTL / 2
        try:
            while True:
                batch = [await ready.get()]
                while not ready.empty():
                    batch.append(ready.get_nowait())
                if out := [event for event in batch if event is not None]:
                    renew = time.monotonic() > renew_at
                    await self._emit(reply, *out, renew=renew)
                    if renew:
                        renew_at = time.monotonic() + keys.REPLY_TTL / 2
                if batch[-1] is None:
                    break
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        task.result()  # an engine failure surfaces here

    async def _emit(self, reply: str, *events: Event, renew: bool = True) -> None:
        await self.replies.write(reply, events, renew)

    async def _release(self, model: Loaded) -> None:
        model.in_flight -= 1
        model.last_used = time.time()
        model.slot_free.set()
        if model.in_flight == 0:
            if model.keep_alive == 0:
                await self.unload(model.spec.key)
                return
            model.expires_at = None if math.isinf(model.keep_alive) else time.time() + model.keep_alive
        with contextlib.suppress(RedisError, OSError):
            if model.waiting and model.mailbox:
                await model.mailbox.recount(model.free)  # the next request is handed to it, not queued
            await self.publish_state()  # free slots are visible to placement and affinity at once

    # -- background loops ------------------------------------------------------------------------------
    async def heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):
                await self.publish_state()
                await self._poll_cancels()
            await self._expire_idle()
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def _poll_cancels(self) -> None:
        for rid, flag in list(self.cancels.items()):
            if await self.redis.exists(keys.cancel(rid)):
                flag.set()

    async def _expire_idle(self) -> None:
        now = time.time()
        for key, model in list(self.loaded.items()):
            if model.in_flight == 0 and model.expires_at is not None and model.expires_at <= now:
                await self.unload(key)

    async def cancel_listener(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            flag = self.cancels.get(message["data"].decode())
                            if flag:
                                flag.set()
            except (RedisError, OSError):
                await asyncio.sleep(0.5)

    async def drain(self) -> None:
        """SIGTERM: stop claiming, finish in-flight requests, unload everything, leave the cluster."""
        self.draining = True
        with contextlib.suppress(RedisError, OSError):
            await self.publish_state()
        for key in list(self.loaded):
            await self.unload(key)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(keys.worker(self.id))
            await self.redis.zrem(keys.WORKERS, self.id)
        self.replies.close()
