"""The cluster as Redis shows it: live workers (heartbeats) and the depth of every request stream.

    SCAN caravan:q:*            every request stream of every LoadSpec (shared, per user, per worker)
    XLEN caravan:q:{spec}       requests waiting: a worker XDELs an entry when it admits it
    heartbeats                  map spec → model for loaded specs; else the oldest entry's job names it

Used by ``GET /api/status/cluster`` and by the gateway's ``/metrics`` (queue depth per model at scrape time).
"""

from __future__ import annotations

from pydantic import ValidationError
from redis.asyncio import Redis

from caravan import keys
from caravan.queue import InferenceJob, WorkerState
from caravan.wire.status import ClusterStatus, QueueDepth, build_status

QUEUE_MATCH = keys.queue("*")
QUEUE_PREFIX = keys.queue("")


async def _oldest_model(redis: Redis, key: str) -> str:
    entries = await redis.xrange(key, "-", "+", count=1)
    if not entries:
        return ""
    try:
        return InferenceJob.decode(entries[0][1]).spec.model
    except (KeyError, ValidationError):
        return ""


async def queue_depths(redis: Redis, known: dict[str, str]) -> list[QueueDepth]:
    """Every request stream with its length; ``known`` maps spec keys to model names."""
    names = sorted({key.decode() if isinstance(key, bytes) else key
                    async for key in redis.scan_iter(match=QUEUE_MATCH, count=500, _type="stream")})
    if not names:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xlen(name)
        lengths = await pipe.execute()
    depths = []
    for name, length in zip(names, lengths, strict=True):
        spec = name.removeprefix(QUEUE_PREFIX).split(":", 1)[0]  # caravan:q:{spec}[:u:{user}|:w:{worker}]
        model = known.get(spec) or (await _oldest_model(redis, name) if length else "")
        depths.append(QueueDepth(spec=spec, model=model, length=int(length)))
    return depths


def spec_models(workers: list[WorkerState]) -> dict[str, str]:
    """spec key → model name, from what workers hold."""
    return {model.spec.key: model.spec.model for worker in workers for model in worker.models}


async def read_cluster(redis: Redis, workers: list[WorkerState]) -> ClusterStatus:
    """Workers (already read from heartbeats) plus queue depths, as the status shape."""
    return build_status(workers, await queue_depths(redis, spec_models(workers)))
