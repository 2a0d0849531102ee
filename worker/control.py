"""Control-plane jobs a worker takes from its own arq queue (``arq:ctl:{worker}``): load and unload.

Job ids dedupe concurrent requests (``load:{worker}:{spec}``); results are not kept, so a model unloaded
later can be loaded again under the same id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker as ArqWorker
from arq.worker import func
from redis.exceptions import RedisError

from caravan import keys
from caravan.queue import LoadSpec
from worker.runner import Worker

log = logging.getLogger(__name__)


async def load_model(ctx: dict[str, Any], spec: dict[str, Any]) -> str:
    worker: Worker = ctx["caravan"]
    await worker.load(LoadSpec.model_validate(spec))
    return "loaded"


async def unload_model(ctx: dict[str, Any], spec_key: str) -> str:
    worker: Worker = ctx["caravan"]
    await worker.unload(spec_key)
    return "unloaded"


def control_worker(worker: Worker, pool: ArqRedis) -> ArqWorker:
    """An arq worker bound to this worker's control queue, run inside the worker's event loop."""
    return ArqWorker(
        functions=[
            func(load_model, name="load_model", keep_result=0, max_tries=1, timeout=600),
            func(unload_model, name="unload_model", keep_result=0, max_tries=1, timeout=600),
        ],
        redis_pool=pool,
        queue_name=keys.control_queue(worker.id),
        handle_signals=False,
        poll_delay=0.05,
        max_jobs=4,
        keep_result=0,
        ctx={"caravan": worker},
        health_check_key=f"{keys.control_queue(worker.id)}:health",
    )


async def run_control(worker: Worker, pool: ArqRedis) -> None:
    """Run the control worker for ever, rebuilding it after a Redis outage."""
    while True:
        control = control_worker(worker, pool)
        try:
            await control.main()
        except (RedisError, OSError) as exc:
            log.warning("control queue lost Redis, reconnecting", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
        finally:
            await control.close()
