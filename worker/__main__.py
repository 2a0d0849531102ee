"""``python -m worker``: a worker process (settings from the environment; SIGTERM drains)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import uvloop
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis

from caravan import keys
from caravan.logs import setup_logging
from caravan.queue import LoadSpec
from caravan.settings import WorkerSettings
from worker.blobs import BlobCache
from worker.control import run_control
from worker.engine.base import Engine
from worker.engine.openmp import shorten_idle_spin
from worker.runner import Worker

log = logging.getLogger("worker")


def engine_factory(settings: WorkerSettings, blobs: BlobCache) -> Callable[[LoadSpec], Awaitable[Engine]]:
    async def make(spec: LoadSpec) -> Engine:
        if settings.engine == "fake":
            from worker.engine.fake import FakeEngine

            return FakeEngine(spec)
        from worker.engine.batch import BatchEngine
        from worker.engine.llama import LlamaEngine

        path = await blobs.path(spec.blob)
        engine: Engine
        if settings.engine == "batch":
            engine = BatchEngine(spec, path, n_threads=settings.n_threads, n_gpu_layers=settings.n_gpu_layers,
                                 park_bytes=settings.slot_cache_mb << 20)
        else:
            engine = LlamaEngine(spec, path, n_threads=settings.n_threads, n_gpu_layers=settings.n_gpu_layers)
        await engine.load()
        return engine

    return make


def connect(url: str, worker_id: str) -> Redis:
    """Every connection carries the worker's name, so the gateway sees a dead worker's connections vanish."""
    return Redis.from_url(url, socket_timeout=15, socket_connect_timeout=3, health_check_interval=30,
                          socket_keepalive=True, client_name=f"{keys.WORKER_CLIENT_PREFIX}{worker_id}")


async def serve(settings: WorkerSettings) -> None:
    redis = connect(settings.redis_url, settings.worker_id)
    pool = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    blobs = BlobCache(settings.registry_url, settings.cache_dir, settings.models, settings.internal_token)
    worker = Worker(settings, redis, engine_factory(settings, blobs))
    worker.metrics.serve(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(coro) for coro in
             (worker.heartbeat_loop(), worker.cancel_listener(), run_control(worker, pool))]
    log.info("worker started", extra={"settings": settings.redacted()})
    await stop.wait()
    log.info("draining")
    await worker.drain()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await redis.aclose()
    await pool.aclose()
    log.info("worker stopped")


def main() -> None:
    settings = WorkerSettings()
    setup_logging("worker", settings.log_level, settings.log_json)
    shorten_idle_spin()  # before llama_cpp is imported (engine_factory imports it on the first load)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # uvloop: a faster relay of every token
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
