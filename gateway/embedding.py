"""Embeddings (ollama-api.md §3.7, §3.8, §4.3) as one ``embed`` job through the model's own request queue.

The worker answers with raw pooled vectors on the job's ``done`` event (computed in an embedding context
that leaves generation alone); what each API does with them happens here: ``/api/embed`` and
``/v1/embeddings`` L2-normalise (and, with ``dimensions``, cut then normalise again), ``/api/embeddings``
returns them as they are. No inputs is a load-only request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.requests import Request

from caravan import logs
from caravan.duration import parse_keep_alive
from caravan.errors import CaravanError, NotFound
from caravan.options import merge_options, validate_options
from caravan.queue import InferenceJob, encode_keep_alive
from gateway.inference import InferenceService, Prepared, request_id_for


@dataclass
class Embedded:
    vectors: list[list[float]]
    prompt_eval_count: int
    total_duration: int
    load_duration: int


async def run_embed(service: InferenceService, request: Request, model: str, inputs: list[str], *,
                    truncate: bool = True, options: object = None, keep_alive: float | str | None = None) -> Embedded:
    """Embed ``inputs`` with ``model`` (load it when there are none); vectors come back raw."""
    prepared = await _prepare(service, request, model, inputs, truncate, options, keep_alive)
    opened = await service.open(request, prepared)
    await opened.reader.close()
    event = opened.first
    now = time.perf_counter()
    loaded = opened.reader.started_at or now
    return Embedded(
        vectors=event.embeddings or [], prompt_eval_count=int((event.stats or {}).get("prompt_eval_count", 0)),
        total_duration=int((now - prepared.started) * 1e9), load_duration=int((loaded - prepared.started) * 1e9),
    )


async def _prepare(service: InferenceService, request: Request, model: str, inputs: list[str], truncate: bool,
                   options: object, keep_alive: float | str | None) -> Prepared:
    started = time.perf_counter()
    logs.request_id.set(request_id_for(request.headers.get("x-request-id")))
    try:
        record = await service.registry.resolve(model)
    except NotFound:
        raise NotFound(f'model "{model}" not found, try pulling it first') from None
    seconds = parse_keep_alive(keep_alive, service.settings.keep_alive)
    request_options = validate_options(options)
    job = InferenceJob(
        id=logs.request_id.get() or request_id_for(None), op="embed" if inputs else "load", model=model,
        spec=service.scheduler.spec_for(record, request_options),
        options=merge_options(record.params, request_options), input=inputs, truncate=truncate,
        keep_alive=encode_keep_alive(seconds), created=time.time(),
    )
    return Prepared(record, job, seconds, started)


def normalize(vector: list[float]) -> list[float]:
    """Unit L2 norm (a zero vector stays zero); NaN or Inf is an error, as in Ollama."""
    if not all(math.isfinite(x) for x in vector):
        raise CaravanError("embedding contains NaN or Inf values")
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm else list(vector)


def shaped_vector(vector: list[float], dimensions: int | None) -> list[float]:
    """Normalised, then cut to ``dimensions`` (when smaller) and normalised again."""
    unit = normalize(vector)
    if dimensions and 0 < dimensions < len(unit):
        return normalize(unit[:dimensions])
    return unit
