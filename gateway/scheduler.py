"""Placement from the gateway's side: which queue a request goes to, and which worker loads a model.

A request's queue is named by its LoadSpec (weights + load-time options): any worker that loaded that spec
claims from it. Placement, per request:

1. some live worker holds (or is loading) the spec and its queue is short → nothing to do;
2. otherwise pick a worker: enough free memory first, then one that can evict idle models, most free memory
   wins; a queue deeper than ``replica_queue_depth`` × the holders' slots adds a replica on another worker;
3. the chosen worker gets a ``load_model`` job on its own arq queue (``load:{worker}:{spec}`` dedupes).

Fair sharing: requests wait in per-user streams (``caravan.fairqueue``); workers take users in turn.
Session affinity: a chat's next turn goes to the private queue ``caravan:q:{spec}:{worker}`` of the worker
that served the previous turn (its KV cache holds the prefix), unless that worker is gone or busy.
Liveness: a worker's Redis connections are named ``caravan-worker:{id}``; when the process dies Redis drops
them at once, so ``alive`` notices a kill -9 within one read round, long before the heartbeat TTL.

The request path is latency-bound, so a request whose spec a live worker holds costs one round trip to Redis
(``fairqueue.enqueue``: hand-off to a waiting worker, or depth check + enqueue + doorbell, in one script):
whether the spec is held is read from a snapshot of the cluster (heartbeats + connections) at most
``SNAPSHOT_FRESH`` seconds old, refreshed in the background up to ``SNAPSHOT_MAX``. A snapshot that is wrong
(the holder died or unloaded since) costs one reader round: the reply reader re-places a request that no worker
started (``gateway.streaming``). Placement decisions themselves (which worker loads what, replicas) always read
the cluster afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from typing import Any

from arq.connections import ArqRedis
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from caravan import fairqueue, keys
from caravan.errors import SERVER_BUSY, CaravanError, ServerBusy
from caravan.queue import InferenceJob, LoadSpec, WorkerState
from caravan.settings import GatewaySettings
from caravan.wire.registry import ModelRecord

log = logging.getLogger(__name__)
ALIVE_CACHE_SECONDS = 0.25
SNAPSHOT_FRESH = 1.0  # seconds a cluster snapshot is used as is
SNAPSHOT_MAX = 5.0  # ... and used while a refresh runs in the background (heartbeats live 10 s)
AFFINITY_TTL = 900


class NoWorkers(ServerBusy):
    pass


def conversation_key(messages: list[dict[str, Any]]) -> str:
    """Identity of a conversation prefix (roles + contents), for session affinity."""
    text = json.dumps([[m.get("role"), m.get("content")] for m in messages], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Scheduler:
    """Routes jobs to per-spec queues and asks workers to load or unload specs."""

    def __init__(self, settings: GatewaySettings, redis: Redis, arq: ArqRedis) -> None:
        self.settings = settings
        self.redis = redis
        self.arq = arq
        self._alive: set[str] | None = set()
        self._alive_at = 0.0
        self._snapshot: list[WorkerState] = []
        self._snapshot_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None

    def spec_for(self, record: ModelRecord, options: dict[str, Any]) -> LoadSpec:
        """Load-time options from request options over model params over server defaults."""
        merged = {**record.params, **options}
        num_ctx = int(merged.get("num_ctx") or self.settings.context_length)
        if record.context_length:
            num_ctx = min(num_ctx, record.context_length)
        return LoadSpec(
            model=record.name, blob=record.blob, size=record.size, num_ctx=max(4, num_ctx),
            num_batch=int(merged.get("num_batch", 512)), num_gpu=int(merged.get("num_gpu", -1)),
            main_gpu=int(merged.get("main_gpu", 0)), num_thread=int(merged.get("num_thread", 0)),
            use_mmap=bool(merged.get("use_mmap", True)), parallel=self.settings.num_parallel,
            context_length=record.context_length, kv_bytes_per_token=record.kv_bytes_per_token,
            flash_attention=self.settings.flash_attention, kv_cache_type=self.settings.kv_cache_type,
        )

    # -- cluster view ---------------------------------------------------------------------------------
    async def workers(self) -> list[WorkerState]:
        """Workers with a live heartbeat."""
        ids = [wid.decode() for wid in await self.redis.zrange(keys.WORKERS, 0, -1)]
        if not ids:
            return []
        raw = await self.redis.mget([keys.worker(wid) for wid in ids])
        states = []
        for wid, blob in zip(ids, raw, strict=True):
            if blob is None:
                await self.redis.zrem(keys.WORKERS, wid)
                continue
            with contextlib.suppress(ValidationError):
                states.append(WorkerState.model_validate_json(blob))
        return states

    async def alive(self, worker_id: str) -> bool:
        """The worker's process still holds Redis connections and its heartbeat has not expired."""
        return await self.connected(worker_id) and bool(await self.redis.exists(keys.worker(worker_id)))

    async def connected(self, worker_id: str) -> bool:
        """The worker's process still holds named Redis connections (CLIENT LIST, cached briefly).

        Enough for workers just read from their heartbeats (``workers()``): their heartbeat is known present.
        """
        now = time.monotonic()
        if now - self._alive_at > ALIVE_CACHE_SECONDS:
            self._alive = await self._connected_workers()
            self._alive_at = now
        return self._alive is None or worker_id in self._alive

    async def _connected_workers(self) -> set[str] | None:
        """Ids of workers holding named connections; None when CLIENT LIST is not allowed (managed Redis)."""
        try:
            clients = await self.redis.client_list()
        except ResponseError:
            return None
        return {c["name"].removeprefix(keys.WORKER_CLIENT_PREFIX) for c in clients
                if c.get("name", "").startswith(keys.WORKER_CLIENT_PREFIX)}

    async def serving(self) -> list[WorkerState]:
        """Live, connected, non-draining workers from a snapshot (see the module docstring): no round trip
        while it is fresh, a background refresh while it is not too old."""
        age = time.monotonic() - self._snapshot_at
        if age > SNAPSHOT_MAX:
            await self._refresh_snapshot()
        elif age > SNAPSHOT_FRESH and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh_snapshot())
        return self._snapshot

    async def _refresh_snapshot(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # a background refresh must not fail loudly
            await self._serving_now()

    async def _serving_now(self) -> list[WorkerState]:
        """Live, connected, non-draining workers, read afresh (and kept as the snapshot)."""
        self._snapshot = [w for w in await self.workers() if not w.draining and await self.connected(w.id)]
        self._snapshot_at = time.monotonic()
        return self._snapshot

    def forget_snapshot(self) -> None:
        """The cluster changed (a load was asked, a worker was lost): the next request reads it afresh."""
        self._snapshot_at = -math.inf

    # -- placement ------------------------------------------------------------------------------------
    async def ensure_placed(self, spec: LoadSpec, depth: int | None = None) -> None:
        """Make sure enough live workers hold or are loading ``spec`` (``depth``: its queue's, when known)."""
        workers = await self._serving_now()
        holders = [w for w in workers if w.holds(spec.key)]
        if holders and not await self._wants_replica(spec, holders, len(workers), depth):
            return
        target = choose_worker([w for w in workers if not w.holds(spec.key)], spec)
        if target is None:
            if holders:
                return
            if not workers:
                raise NoWorkers("no worker is available to run models; start one with `python -m worker`")
            biggest = max(w.memory_budget for w in workers)
            raise CaravanError(f"model requires more memory ({spec.estimate()} bytes) than any worker "
                               f"has ({biggest} bytes)")
        await self.load_on(target.id, spec)

    async def _wants_replica(self, spec: LoadSpec, holders: list[WorkerState], total: int,
                             depth: int | None = None) -> bool:
        if len(holders) >= (self.settings.max_replicas or total):
            return False
        if depth is None:
            depth = await fairqueue.depth(self.redis, spec.key)
        return depth > self.settings.replica_queue_depth * slots_of(spec, holders)

    async def load_on(self, worker_id: str, spec: LoadSpec) -> None:
        self.forget_snapshot()
        await self.arq.enqueue_job(
            "load_model", spec.model_dump(), _job_id=f"load:{worker_id}:{spec.key}",
            _queue_name=keys.control_queue(worker_id),
        )
        log.info("asked worker to load", extra={"worker": worker_id, "model": spec.model, "spec": spec.key})

    async def load_failure(self, spec: LoadSpec) -> str | None:
        """The error of a failed load of ``spec`` reported by a worker in the last seconds."""
        raw = await self.redis.get(keys.load_error(spec.key))
        return raw.decode() if raw else None

    # -- queues ---------------------------------------------------------------------------------------
    async def submit(self, job: InferenceJob, affinity: str | None = None) -> fairqueue.Submitted:
        """Place and enqueue ``job``; 503 when its queue is full.

        A spec the snapshot shows held is enqueued at once (one round trip) and placement looks again only if
        the queue has grown past the replica threshold; otherwise it is placed (or refused) before queueing.
        """
        job.created = job.created or time.time()
        if affinity and (affine := await self._affine(job, affinity)):
            return affine
        holders = [w for w in await self.serving() if w.holds(job.spec.key)]
        if not holders:
            await self.ensure_placed(job.spec)
        submitted = await fairqueue.submit(self.redis, job, self.settings.max_queue)
        if submitted is None:
            raise ServerBusy(SERVER_BUSY)
        if holders and submitted.depth > self.settings.replica_queue_depth * slots_of(job.spec, holders):
            await self.ensure_placed(job.spec, submitted.depth)
        return submitted

    async def _affine(self, job: InferenceJob, conversation: str) -> fairqueue.Submitted | None:
        """Enqueue on the private queue of the worker that served this conversation, if it can take it."""
        raw = await self.redis.get(keys.affinity(conversation))
        if raw is None:
            return None
        worker_id = raw.decode()
        state = next((w for w in await self.serving() if w.id == worker_id), None)
        model = next((m for m in state.models if m.spec.key == job.spec.key), None) if state else None
        if model is None:
            return None
        # handed over if it waits (decided in Redis, atomically); else its private queue if the snapshot, up to a
        # second old, says it has room; else the shared queue (the caller's path)
        room = model.in_flight + await self.redis.xlen(keys.worker_queue(job.spec.key, worker_id)) < model.slots
        return await fairqueue.submit(self.redis, job, prefer=worker_id, private=room)

    async def remember(self, conversation: str, worker_id: str) -> None:
        """The worker that served a conversation (its next turn's preferred worker)."""
        await self.redis.set(keys.affinity(conversation), worker_id, ex=AFFINITY_TTL)

    async def resubmit(self, job: InferenceJob, lost: str) -> None:
        """Put a job that lost its worker before streaming anything back on the shared queue (never handed to
        that worker again)."""
        job.attempt += 1
        if job.attempt >= self.settings.max_attempts:
            raise CaravanError(f"the request failed on {job.attempt} workers that stopped while serving it")
        await fairqueue.forget(self.redis, job.spec.key, lost)
        await self.ensure_placed(job.spec)
        await fairqueue.enqueue(self.redis, job)

    async def unload(self, blob: str) -> int:
        """Ask every worker holding a spec of ``blob`` to unload it; returns how many were asked."""
        self.forget_snapshot()
        asked = 0
        for worker in await self.workers():
            for model in worker.models:
                if model.spec.blob == blob:
                    await self.arq.enqueue_job(
                        "unload_model", model.spec.key, _job_id=f"unload:{worker.id}:{model.spec.key}",
                        _queue_name=keys.control_queue(worker.id),
                    )
                    asked += 1
        return asked

    async def cancel(self, request_id: str) -> None:
        """Flag a request as cancelled and poke the workers."""
        await self.redis.set(keys.cancel(request_id), b"1", ex=keys.CANCEL_TTL)
        await self.redis.publish(keys.CANCEL_CHANNEL, request_id)


def choose_worker(candidates: list[WorkerState], spec: LoadSpec) -> WorkerState | None:
    """Enough free memory first, then enough after evicting idle models; most free memory wins."""
    need = spec.estimate()
    fits = [w for w in candidates if w.memory_free >= need]
    if fits:
        return max(fits, key=lambda w: (w.memory_free, -len(w.models)))
    evictable = [w for w in candidates if w.memory_free + idle_memory(w) >= need]
    return max(evictable, key=lambda w: w.memory_free + idle_memory(w)) if evictable else None


def slots_of(spec: LoadSpec, holders: list[WorkerState]) -> int:
    """Slots the holders give ``spec`` (one per holder still loading it)."""
    return sum(m.slots for w in holders for m in w.models if m.spec.key == spec.key) or len(holders)


def idle_memory(worker: WorkerState) -> int:
    return sum(m.size for m in worker.models if m.in_flight == 0)
