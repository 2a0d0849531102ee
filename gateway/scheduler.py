"""Placement from the gateway's side: which queue a request goes to, and which worker loads a model.

A request's queue is named by its LoadSpec (weights + load-time options). If no live worker holds or is
loading that spec, the worker with the most free memory gets a ``load_model`` job on its own arq queue
(job id ``load:{worker}:{spec}`` dedupes concurrent asks). Requests wait in the stream meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from arq.connections import ArqRedis
from pydantic import ValidationError
from redis.asyncio import Redis

from caravan import keys
from caravan.errors import SERVER_BUSY, ServerBusy
from caravan.queue import InferenceJob, LoadSpec, WorkerState
from caravan.settings import GatewaySettings
from caravan.wire.registry import ModelRecord

log = logging.getLogger(__name__)


class NoWorkers(ServerBusy):
    pass


class Scheduler:
    """Routes jobs to per-spec queues and asks workers to load or unload specs."""

    def __init__(self, settings: GatewaySettings, redis: Redis, arq: ArqRedis) -> None:
        self.settings = settings
        self.redis = redis
        self.arq = arq

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
            context_length=record.context_length,
        )

    async def workers(self) -> list[WorkerState]:
        """Live workers (heartbeat key present)."""
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

    async def ensure_placed(self, spec: LoadSpec) -> None:
        """Make sure some live worker holds or is loading ``spec``."""
        workers = await self.workers()
        if any(w.holds(spec.key) and not w.draining for w in workers):
            return
        candidates = [w for w in workers if not w.draining]
        if not candidates:
            raise NoWorkers("no worker is available to run models; start one with `python -m worker`")
        target = max(candidates, key=lambda w: (w.memory_free, -len(w.models)))
        await self.arq.enqueue_job(
            "load_model", spec.model_dump(), _job_id=f"load:{target.id}:{spec.key}",
            _queue_name=keys.control_queue(target.id),
        )
        log.info("asked worker to load", extra={"worker": target.id, "model": spec.model, "spec": spec.key})

    async def submit(self, job: InferenceJob) -> None:
        """Place and enqueue ``job``; 503 when its queue is full."""
        queue = keys.queue(job.spec.key)
        if await self.redis.xlen(queue) >= self.settings.max_queue:
            raise ServerBusy(SERVER_BUSY)
        await self.ensure_placed(job.spec)
        job.created = job.created or time.time()
        await self.redis.xadd(queue, job.encode())

    async def unload(self, blob: str) -> int:
        """Ask every worker holding a spec of ``blob`` to unload it; returns how many were asked."""
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
