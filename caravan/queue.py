"""The queue protocol between gateway and workers (messages carried by the streams in ``caravan.keys``).

    gateway ── XADD caravan:q:{spec}:… {"id", "job": InferenceJob JSON}  ──▶ worker (read + ack in one script)
    worker  ── XADD caravan:r:{id}    {"ev": Event JSON}  start|tok|done|err ──▶ gateway (XREAD from 0-0)

A ``LoadSpec`` names what a worker must load to serve a queue: the model blob plus the load-time options;
two requests with different ``num_ctx`` go to different queues and may be served by different replicas.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, Field

LOAD_OVERHEAD = 64 << 20  # compute buffers, tokenizer, runtime: measured ~40-60 MiB for small models on CPU
FlashAttention = Literal["auto", "on", "off"]  # Ollama's OLLAMA_FLASH_ATTENTION; auto = llama.cpp decides per device
KvCacheType = Literal["f16", "q8_0", "q4_0"]  # Ollama's OLLAMA_KV_CACHE_TYPE
# bytes of a KV cache element per f16 byte: ggml blocks of 32 values, q8_0 = 34 bytes, q4_0 = 18 (f16: 64)
KV_SCALE: dict[str, float] = {"f16": 1.0, "q8_0": 34 / 64, "q4_0": 18 / 64}


class LoadSpec(BaseModel):
    """A model as loaded: weights blob + load-time options. ``key`` names its request queue."""

    model: str
    blob: str
    size: int = 0
    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    num_thread: int = 0
    use_mmap: bool = True
    parallel: int = 1
    context_length: int = 0
    kv_bytes_per_token: int = 0
    flash_attention: FlashAttention = "auto"
    kv_cache_type: KvCacheType = "f16"

    @property
    def kv_type(self) -> str:
        """The KV cache type llama.cpp gets: a quantized cache needs flash attention (Ollama, too, falls back to
        f16 when flash attention is off)."""
        return "f16" if self.flash_attention == "off" else self.kv_cache_type

    @property
    def key(self) -> str:
        """Stable id of the spec (weights + load options); read several times per request, so memoised."""
        return _spec_key(tuple(getattr(self, name) for name in _KEY_FIELDS))

    def estimate(self) -> int:
        """Memory this spec needs once loaded: weights + KV cache for num_ctx × parallel + overhead."""
        per_token = (self.kv_bytes_per_token or 64 * 1024) * KV_SCALE[self.kv_type]  # the record's is f16
        kv = int(per_token * self.num_ctx * max(1, self.parallel))
        return self.size + kv + LOAD_OVERHEAD


_KEY_FIELDS = ("blob", "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap", "parallel",
               "flash_attention", "kv_cache_type")
# load options added later count only when set, so a spec that leaves them alone keeps its queue's name
_LATER_FIELDS = {"flash_attention": "auto", "kv_cache_type": "f16"}


@functools.lru_cache(maxsize=4096)
def _spec_key(values: tuple[Any, ...]) -> str:
    fields = {name: value for name, value in zip(_KEY_FIELDS, values, strict=True)
              if name not in _LATER_FIELDS or value != _LATER_FIELDS[name]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def encode_keep_alive(seconds: float) -> float:
    """JSON has no infinity: forever travels as -1."""
    return -1.0 if math.isinf(seconds) else seconds


def decode_keep_alive(value: float) -> float:
    return math.inf if value < 0 else value


class InferenceJob(BaseModel):
    """One generate/chat/embed request, normalised by the gateway."""

    id: str
    op: Literal["generate", "chat", "load", "embed"]
    model: str
    spec: LoadSpec
    options: dict[str, Any] = Field(default_factory=dict)
    prompt: str = ""
    suffix: str = ""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    system: str | None = None
    template: str | None = None
    raw: bool = False
    context: list[int] | None = None
    format: Any = None
    tools: list[dict[str, Any]] | None = None
    grammar: str | None = None  # GBNF the gateway built (and validated) from ``format``
    think: bool | str | None = None  # resolved: True/False or a level; None = the template's default
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True  # False: a prompt/input longer than the context is a 400
    shift: bool = True
    input: list[str] = Field(default_factory=list)  # op "embed": the texts
    keep_alive: float = 300.0
    created: float = 0.0
    attempt: int = 0
    user: str = "anonymous"  # who asked (API key's user): fair sharing and usage accounting
    priority: int = 0  # extra scheduling weight of that user's key (weight = 1 + priority)

    def encode(self) -> dict[Any, Any]:
        """Stream entry fields (``caravan.fairqueue``'s scripts read ``id`` for the cancel check)."""
        return {"id": self.id, "job": self.model_dump_json()}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> InferenceJob:
        return cls.model_validate_json(fields[b"job"])


EventType = Literal["start", "tok", "done", "err"]


class Event(BaseModel):
    """One reply-stream event. ``tok`` carries a text delta (and, when asked, one logprob entry per token);
    ``done`` the final stats (and the vectors of an ``embed`` job); ``err`` a status."""

    t: EventType
    seq: int = 0
    text: str = ""
    logprobs: list[dict[str, Any]] | None = None
    embeddings: list[list[float]] | None = None
    worker: str | None = None
    done_reason: str | None = None
    stats: dict[str, Any] | None = None
    status: int | None = None
    error: str | None = None

    def encode(self) -> dict[Any, Any]:
        return {"ev": self.model_dump_json(exclude_none=True)}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> Event:
        return cls.model_validate_json(fields[b"ev"])


class LoadedModelState(BaseModel):
    """One loaded model as a worker reports it in its heartbeat."""

    spec: LoadSpec
    slots: int = 1
    in_flight: int = 0
    size: int = 0
    keep_alive: float = 300.0
    expires_at: float | None = None
    loaded_at: float = 0.0
    last_used: float = 0.0


class WorkerState(BaseModel):
    """A worker's heartbeat (``caravan:w:{id}``, TTL'd)."""

    id: str
    host: str
    device: str = "cpu"
    memory_budget: int = 0
    memory_used: int = 0
    models: list[LoadedModelState] = Field(default_factory=list)
    loading: list[str] = Field(default_factory=list)
    draining: bool = False
    version: str = ""
    metrics_url: str | None = None

    def holds(self, spec_key: str) -> bool:
        return spec_key in self.loading or any(m.spec.key == spec_key for m in self.models)

    @property
    def memory_free(self) -> int:
        return self.memory_budget - self.memory_used
