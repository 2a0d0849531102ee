"""Typed settings for every service, read from the environment (prefix ``CARAVAN_``).

Ollama's own variables are honoured where they mean the same thing (``OLLAMA_HOST``, ``OLLAMA_MODELS``,
``OLLAMA_KEEP_ALIVE``, ``OLLAMA_NUM_PARALLEL``, ``OLLAMA_MAX_QUEUE``, ``OLLAMA_CONTEXT_LENGTH``,
``OLLAMA_LOAD_TIMEOUT``, ``OLLAMA_FLASH_ATTENTION``, ``OLLAMA_KV_CACHE_TYPE``, ``OLLAMA_ORIGINS``).
Each service builds its settings once in ``main`` and passes them down.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from caravan.duration import parse_env_keep_alive
from caravan.queue import FlashAttention, KvCacheType

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
log = logging.getLogger(__name__)


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


def _env_text(value: str) -> str:
    """Ollama trims spaces and quotes off every variable."""
    return value.strip().strip("\"'").strip()


def parse_flash_attention(value: str) -> str:
    """``OLLAMA_FLASH_ATTENTION``: unset, empty or ``auto`` = auto; otherwise Go's ``strconv.ParseBool``, and, as
    in Ollama, a value it cannot parse counts as true."""
    text = _env_text(value)
    if text.lower() in ("", "auto"):
        return "auto"
    return "off" if text in ("0", "f", "F", "false", "FALSE", "False") else "on"


def parse_kv_cache_type(value: str) -> str:
    """``OLLAMA_KV_CACHE_TYPE``: ``f16``, ``q8_0`` or ``q4_0``; anything else is f16 (Ollama's fallback), logged."""
    text = _env_text(value).lower()
    if text in ("f16", "q8_0", "q4_0"):
        return text
    if text:
        log.warning("unsupported KV cache type, using f16", extra={"kv_cache_type": text})
    return "f16"


def default_models_dir() -> Path:
    return Path(os.path.expanduser("~/.ollama/models"))


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """Parse ``OLLAMA_HOST`` forms: ``host``, ``host:port``, ``:port``, ``[v6]:port``, ``scheme://host:port``."""
    text = value.strip().strip("\"'")
    scheme, sep, rest = text.partition("://")
    if not sep:
        rest, scheme = text, ""
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    fallback = {"http": 80, "https": 443}.get(scheme, default_port)
    return host or "127.0.0.1", int(port) if port else fallback


class ServiceSettings(BaseSettings):
    """What every service shares."""

    model_config = SettingsConfigDict(env_prefix="CARAVAN_", extra="ignore", populate_by_name=True)

    redis_url: str = DEFAULT_REDIS_URL
    log_level: str = "INFO"
    log_json: bool = True
    # Shared secret between services: when set, the registry refuses model changes and blob downloads
    # that do not carry it (the gateway and workers send it), so publishing the registry's port for LAN
    # pulls (/v2/ reads) does not bypass the gateway's API keys.
    internal_token: str = ""

    def redacted(self) -> dict[str, Any]:
        """Settings for the start-up log line, secrets hidden."""
        data = self.model_dump(mode="json")
        for key in list(data):
            if any(word in key for word in ("password", "secret", "token", "key")):
                data[key] = "***"
        if "@" in str(data.get("redis_url", "")):
            data["redis_url"] = "redis://***@" + str(data["redis_url"]).split("@", 1)[1]
        return data


class GatewaySettings(ServiceSettings):
    host: str = Field("127.0.0.1:11434", validation_alias=_alias("CARAVAN_HOST", "OLLAMA_HOST"))
    registry_url: str = "http://127.0.0.1:11435"
    keep_alive: float = Field(300.0, validation_alias=_alias("CARAVAN_KEEP_ALIVE", "OLLAMA_KEEP_ALIVE"))
    max_queue: int = Field(512, validation_alias=_alias("CARAVAN_MAX_QUEUE", "OLLAMA_MAX_QUEUE"))
    # sequences per loaded model (the batch engine's slots; Ollama's auto value); KV = num_ctx × this
    num_parallel: int = Field(4, validation_alias=_alias("CARAVAN_NUM_PARALLEL", "OLLAMA_NUM_PARALLEL"))
    context_length: int = Field(
        4096, validation_alias=_alias("CARAVAN_CONTEXT_LENGTH", "OLLAMA_CONTEXT_LENGTH")
    )
    load_timeout: float = Field(300.0, validation_alias=_alias("CARAVAN_LOAD_TIMEOUT", "OLLAMA_LOAD_TIMEOUT"))
    # how workers load models (part of the LoadSpec, so the memory estimate knows the KV cache's size)
    flash_attention: FlashAttention = Field(
        "auto", validation_alias=_alias("CARAVAN_FLASH_ATTENTION", "OLLAMA_FLASH_ATTENTION"))
    kv_cache_type: KvCacheType = Field("f16", validation_alias=_alias("CARAVAN_KV_CACHE_TYPE", "OLLAMA_KV_CACHE_TYPE"))
    replica_queue_depth: int = 2
    max_replicas: int = 0
    affinity: bool = True
    max_attempts: int = 3
    # Security (gateway/auth.py, guard.py, security.py; docs/security.md)
    auth: bool | None = None  # API keys required; unset: on exactly when admin_key is set
    admin_key: SecretStr = SecretStr("")  # bootstrap admin key (kept only as its sha256)
    metrics_auth: bool = False  # /metrics and /api/status/prometheus-targets need a key too
    origins: str = Field("", validation_alias=_alias("CARAVAN_ORIGINS", "OLLAMA_ORIGINS"))  # extra CORS origins
    max_body_bytes: int = 32 << 20  # request bodies (413 above); blob uploads use max_blob_bytes
    max_blob_bytes: int = 0  # 0: unlimited
    # seconds an idle keep-alive HTTP connection stays open (uvicorn's own default, 5 s, makes a chat client
    # that pauses between turns reconnect; Ollama's Go server never closes idle connections)
    http_idle_timeout: int = Field(75, ge=1)
    user_max_num_predict: int = 0  # caps per role, 0 = none; larger values are clamped
    user_max_num_ctx: int = 0
    admin_max_num_predict: int = 0
    admin_max_num_ctx: int = 0
    stream_lease: float = 3600.0  # a crashed gateway's in-flight counts expire after this many seconds
    tls_cert: Path | None = None
    tls_key: Path | None = None
    audit_log: Path | None = None  # JSON lines file; unset: logger "caravan.audit" (stderr)
    audit_prompts: bool = False
    usage_retention_days: int = 400

    @field_validator("keep_alive", "load_timeout", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_env_keep_alive(value) if isinstance(value, str) else value

    @field_validator("flash_attention", mode="before")
    @classmethod
    def _flash_attention(cls, value: Any) -> Any:
        return parse_flash_attention(value) if isinstance(value, str) else value

    @field_validator("kv_cache_type", mode="before")
    @classmethod
    def _kv_cache_type(cls, value: Any) -> Any:
        return parse_kv_cache_type(value) if isinstance(value, str) else value

    @field_validator("auth", "tls_cert", "tls_key", "audit_log", mode="before")
    @classmethod
    def _unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def warnings(self) -> list[str]:
        """Settings that will not do what they say (logged at start)."""
        if self.kv_cache_type != "f16" and self.flash_attention == "off":
            return [f"OLLAMA_KV_CACHE_TYPE={self.kv_cache_type} needs flash attention, which is off: "
                    "KV caches stay f16"]
        return []

    @property
    def auth_enabled(self) -> bool:
        """Keys are required when ``CARAVAN_AUTH`` says so; unset, when a bootstrap admin key is configured."""
        return bool(self.admin_key.get_secret_value()) if self.auth is None else self.auth

    @property
    def bind(self) -> tuple[str, int]:
        return split_host_port(self.host, 11434)


class RegistrySettings(ServiceSettings):
    models: Path = Field(default_factory=default_models_dir, validation_alias=_alias("CARAVAN_MODELS", "OLLAMA_MODELS"))
    registry_host: str = "127.0.0.1:11435"
    # Pull/push (registry/client.py, download.py, jobs.py). Names on the default host are fetched from
    # ``upstream`` (a LAN mirror: another Caravan, or Ollama's registry) and stored under their own name.
    upstream: str = "https://registry.ollama.ai"
    pull_through: bool = True  # /v2/ manifest misses of default-host names are pulled from ``upstream``
    pull_min_part: int = 100_000_000  # part size = total/16 clamped to [min, max] (Ollama's values)
    pull_max_part: int = 1_000_000_000
    transfer_streams: int = 16  # parallel ranged GETs per blob
    transfer_retries: int = 6  # attempts per part/request; an attempt that moved bytes resets the count
    transfer_backoff: float = 1.0  # first retry sleep (doubles each attempt)
    transfer_stall: float = 30.0  # seconds without a byte before a part is retried
    transfer_timeout: float = 86400.0  # arq job timeout of one pull/push
    registry_key: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.ollama/id_ed25519")))
    blob_redirect_host: str = ""  # host[:port] that /v2/ blob GETs redirect to (default: another spelling)
    job_poll_delay: float = 0.2

    @property
    def bind(self) -> tuple[str, int]:
        return split_host_port(self.registry_host, 11435)


class WorkerSettings(ServiceSettings):
    # unique per process start: a container restarts as pid 1 on the same host name, and a request handed to or
    # claimed by the process that died must not look served by its successor
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}")
    registry_url: str = "http://127.0.0.1:11435"
    models: Path | None = Field(None, validation_alias=_alias("CARAVAN_MODELS", "OLLAMA_MODELS"))
    cache_dir: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.cache/caravan/blobs")))
    device: str = "cpu"
    memory_budget: int = 8 << 30
    n_threads: int = 0
    n_gpu_layers: int = 0
    main_gpu: int = 0
    engine: str = "batch"  # "batch": continuous batching (worker.engine.batch); "llama": one sequence; "fake"
    slot_cache_mb: int = 256  # per loaded model: host RAM for slot histories' KV (worker.engine.batcher); 0 = off
    metrics_port: int = 0
    metrics_host: str = ""  # /metrics bind address; "" = this machine's address on the route to Redis

    @field_validator("models", mode="before")
    @classmethod
    def _no_store(cls, value: Any) -> Any:
        return None if value == "" else value
