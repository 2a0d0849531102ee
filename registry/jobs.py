"""Pulls and pushes as arq jobs inside the registry process (building-blocks.md §A.4, §D).

    POST /api/pull ──enqueue pull_model(_job_id="pull:<name>", run=<uuid>)──▶ arq:registry ──▶ worker task
         │  (a second request for the same name finds the job and reads its ``run``: one job, many readers)
         └──XREAD caravan:pull:<name>:<run> from 0-0 ◀──XADD {"data": <progress JSON>[, "status": <http>]}──┘

The job outlives the request that started it (a pull continues when its client goes away; Ollama cancels
instead). Its stream ends with ``{"status": "success"}`` or ``{"error": ...}`` and expires ``TRANSFER_TTL``
after the job. Results are not kept (``keep_result=0``), so the same name can be pulled again at once.
A registry shutdown (or crash) leaves running jobs queued; at the next start their stale in-progress marks are
cleared (one registry process owns the queue), so they run again at once and resume from their part files.
Redis may come later than the registry: until it answers, pull and push are 503 and the rest of the registry
works; a worker that loses Redis is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from arq import Worker
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix
from arq.jobs import Job, JobStatus
from arq.worker import func
from fastapi import FastAPI
from redis.exceptions import RedisError

from caravan import keys
from caravan.errors import CaravanError, ServerBusy
from caravan.names import ModelName
from caravan.settings import RegistrySettings
from caravan.wire.transfer import is_final
from registry.client import TransferOptions
from registry.pull import Emit, Transfers, pull
from registry.push import push

log = logging.getLogger(__name__)

KINDS = {"pull": keys.pull_progress, "push": keys.push_progress}
READ_BLOCK_MS = 5000
STREAM_MAXLEN = 10_000
Event = tuple[dict[str, Any], int]  # a progress object and the HTTP status an error means (200 otherwise)


def job_id(kind: str, name: ModelName) -> str:
    return f"{kind}:{name.key()}"


def qualified(name: ModelName) -> str:
    """The name as the job receives it (scheme kept, so ``http://`` names stay insecure-checked)."""
    return f"{name.scheme}://{name.full}"


# -- the jobs ----------------------------------------------------------------------------------------------
async def pull_model(ctx: dict[str, Any], *, name: str, run: str, insecure: bool = False) -> None:
    service: TransferService = ctx["service"]
    model = ModelName.parse(name)
    await service.run_job("pull", model, run, lambda emit: pull(service.transfers, model, insecure, emit))


async def push_model(ctx: dict[str, Any], *, name: str, run: str, insecure: bool = False) -> None:
    service: TransferService = ctx["service"]
    model = ModelName.parse(name)
    await service.run_job("push", model, run, lambda emit: push(service.transfers, model, insecure, emit))


class TransferService:
    """Starts, runs and follows transfer jobs; one per registry process."""

    def __init__(self, redis: ArqRedis, transfers: Transfers) -> None:
        self.redis = redis
        self.transfers = transfers

    # -- requesting side -------------------------------------------------------------------------------
    async def start(self, kind: str, name: ModelName, insecure: bool = False) -> str:
        """Enqueue the job for ``name``, or join the one queued or running; returns its run id."""
        for _ in range(10):
            run = uuid.uuid4().hex
            job = await self.redis.enqueue_job(f"{kind}_model", name=qualified(name), run=run, insecure=insecure,
                                               _job_id=job_id(kind, name), _queue_name=keys.REGISTRY_QUEUE)
            if job is not None:
                return run
            info = await Job(job_id(kind, name), self.redis, _queue_name=keys.REGISTRY_QUEUE).info()
            if info is not None and "run" in info.kwargs:
                return str(info.kwargs["run"])
        raise ServerBusy(f"could not start the {kind} of {name.display}")

    async def follow(self, kind: str, name: ModelName, run: str) -> AsyncIterator[Event]:
        """Every progress object of one run, from its first, until success or an error."""
        stream, last = KINDS[kind](name.key(), run), "0-0"
        while True:
            reply = await self.redis.xread({stream: last}, count=100, block=READ_BLOCK_MS)
            if not reply and not await self._running(kind, name):
                reply = await self.redis.xread({stream: last}, count=100)
                if not reply:
                    yield {"error": f"{kind} of {name.display} was interrupted"}, 500
                    return
            for entry_id, fields in reply[0][1] if reply else []:
                last = entry_id
                event: dict[str, Any] = json.loads(fields[b"data"])
                yield event, int(fields.get(b"status", 200))
                if is_final(event):
                    return

    async def outcome(self, kind: str, name: ModelName, run: str) -> Event:
        """Wait for a run to end; its last progress object (success or an error)."""
        last: Event = ({"error": f"{kind} of {name.display} ended without a result"}, 500)
        async for event in self.follow(kind, name, run):
            last = event
        return last

    async def _running(self, kind: str, name: ModelName) -> bool:
        status = await Job(job_id(kind, name), self.redis, _queue_name=keys.REGISTRY_QUEUE).status()
        return status in (JobStatus.queued, JobStatus.deferred, JobStatus.in_progress)

    # -- job side ----------------------------------------------------------------------------------------
    async def run_job(self, kind: str, name: ModelName, run: str, body: Callable[[Emit], Awaitable[None]]) -> None:
        """Run a transfer, publishing its progress; errors become the stream's last object."""
        stream = KINDS[kind](name.key(), run)

        async def emit(event: dict[str, Any], status: int = 200) -> None:
            fields: dict[str | bytes, str | int] = {"data": json.dumps(event)}
            if status != 200:
                fields["status"] = status
            await self.redis.xadd(stream, fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]

        try:
            await body(emit)
        except CaravanError as exc:
            log.warning("%s of %s failed: %s", kind, name.display, exc.message)
            await emit({"error": exc.message}, exc.status)
        except Exception as exc:
            log.exception("%s of %s failed", kind, name.display)
            await emit({"error": f"{kind} failed: {exc}"}, 500)
        await self.redis.expire(stream, keys.TRANSFER_TTL)


# -- the runtime inside the registry process ----------------------------------------------------------------
def make_worker(settings: RegistrySettings, pool: ArqRedis, service: TransferService) -> Worker:
    """The arq worker that runs this registry's transfer jobs."""
    timeout = settings.transfer_timeout
    functions = [func(pull_model, name="pull_model", timeout=timeout, keep_result=0, max_tries=20),
                 func(push_model, name="push_model", timeout=timeout, keep_result=0, max_tries=20)]
    return Worker(functions=functions, redis_pool=pool, queue_name=keys.REGISTRY_QUEUE, handle_signals=False,
                  poll_delay=settings.job_poll_delay, max_jobs=8, keep_result=0, ctx={"service": service},
                  health_check_interval=60, health_check_key=f"{keys.REGISTRY_QUEUE}:health-check")


async def clear_stale_marks(pool: ArqRedis) -> None:
    """Jobs a previous registry process was running are re-queued; drop their in-progress marks."""
    ids = await pool.zrange(keys.REGISTRY_QUEUE, 0, -1)
    if ids:
        await pool.delete(*[in_progress_key_prefix + raw.decode() for raw in ids])


async def connect(settings: RegistrySettings) -> tuple[ArqRedis, ArqRedis]:
    """Two arq pools (requests and the worker), retried with backoff until Redis answers."""
    redis_settings = RedisSettings.from_dsn(settings.redis_url)
    redis_settings.conn_retries = 0
    delay = 0.5
    while True:
        try:
            return await create_pool(redis_settings), await create_pool(redis_settings)
        except (OSError, RedisError) as exc:
            log.warning("redis at %s unreachable (%s): pull and push wait for it", settings.redis_url, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def run_transfers(app: FastAPI) -> None:
    """Connect, publish ``app.state.transfers``, run the arq worker (restarted after Redis failures)."""
    settings: RegistrySettings = app.state.settings
    pool, worker_pool = await connect(settings)
    options = TransferOptions.from_settings(settings, via=uuid.uuid4().hex)
    service = TransferService(pool, Transfers(app.state.store, options, metrics=getattr(app.state, "metrics", None)))
    worker = make_worker(settings, worker_pool, service)
    try:
        await clear_stale_marks(pool)
        app.state.transfers = service
        while True:
            try:
                await worker.async_run()
            except (OSError, RedisError) as exc:
                log.warning("registry job worker lost redis (%s); restarting it", exc)
                await asyncio.sleep(1.0)
    finally:
        app.state.transfers = None
        await _stop(worker, service, pool, worker_pool)


async def _stop(worker: Worker, service: TransferService, *pools: ArqRedis) -> None:
    """Cancel running jobs (arq re-queues them), then the downloads (their part files stay), then Redis."""
    with contextlib.suppress(asyncio.CancelledError, OSError, RedisError):
        await worker.close()
    await service.transfers.downloads.close()
    for pool in pools:
        with contextlib.suppress(OSError, RedisError):
            await pool.aclose()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The registry app's lifespan: ``app.state.transfers`` is the :class:`TransferService` once Redis answered
    (``None`` until then: pull and push answer 503)."""
    app.state.transfers = None
    task = asyncio.create_task(run_transfers(app), name="registry transfers")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
