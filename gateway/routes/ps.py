"""GET /api/ps: every model loaded anywhere in the cluster (ollama-api.md §3.10), plus which worker holds it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from caravan.errors import CaravanError
from caravan.queue import LoadedModelState, WorkerState
from caravan.wire.ollama import mtime_rfc3339
from caravan.wire.registry import ModelRecord
from gateway.deps import RegistryDep, SchedulerDep

router = APIRouter()
FOREVER_AT = datetime(2318, 1, 1, tzinfo=UTC).timestamp()  # Ollama shows "Forever" for far-future expiries


def _expires(model: LoadedModelState) -> float:
    if model.keep_alive < 0:
        return FOREVER_AT
    return model.expires_at or time.time() + model.keep_alive


def ps_entry(worker: WorkerState, model: LoadedModelState, record: ModelRecord | None) -> dict[str, Any]:
    on_gpu = worker.device != "cpu" and model.spec.num_gpu != 0
    return {
        "name": model.spec.model,
        "model": model.spec.model,
        "size": model.size,
        "digest": record.digest if record else "",
        "details": record.details.model_dump(exclude_none=True) if record else {},
        "expires_at": mtime_rfc3339(_expires(model)),
        "size_vram": model.size if on_gpu else 0,
        "context_length": model.spec.num_ctx,
        "worker": worker.id,
        "in_flight": model.in_flight,
    }


@router.get("/api/ps")
async def ps(scheduler: SchedulerDep, registry: RegistryDep) -> dict[str, Any]:
    records: dict[str, ModelRecord | None] = {}
    entries = []
    for worker in await scheduler.workers():
        for model in worker.models:
            if model.spec.model not in records:
                try:
                    records[model.spec.model] = await registry.resolve(model.spec.model)
                except CaravanError:
                    records[model.spec.model] = None
            entries.append((_expires(model), ps_entry(worker, model, records[model.spec.model])))
    return {"models": [entry for _, entry in sorted(entries, key=lambda e: e[0], reverse=True)]}
