"""Typed settings for every service, read from the environment (prefix ``CARAVAN_``).

Ollama's own variables are honoured where they mean the same thing (``OLLAMA_HOST``, ``OLLAMA_MODELS``,
``OLLAMA_KEEP_ALIVE``, ``OLLAMA_NUM_PARALLEL``, ``OLLAMA_MAX_QUEUE``, ``OLLAMA_CONTEXT_LENGTH``).
Each service builds its settings once in ``main`` and passes them down.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from caravan.duration import parse_env_keep_alive

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


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
    num_parallel: int = Field(1, validation_alias=_alias("CARAVAN_NUM_PARALLEL", "OLLAMA_NUM_PARALLEL"))
    context_length: int = Field(
        4096, validation_alias=_alias("CARAVAN_CONTEXT_LENGTH", "OLLAMA_CONTEXT_LENGTH")
    )
    load_timeout: float = Field(300.0, validation_alias=_alias("CARAVAN_LOAD_TIMEOUT", "OLLAMA_LOAD_TIMEOUT"))
    replica_queue_depth: int = 2
    max_replicas: int = 0
    affinity: bool = True
    max_attempts: int = 3

    @field_validator("keep_alive", "load_timeout", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_env_keep_alive(value) if isinstance(value, str) else value

    @property
    def bind(self) -> tuple[str, int]:
        return split_host_port(self.host, 11434)


class RegistrySettings(ServiceSettings):
    models: Path = Field(default_factory=default_models_dir, validation_alias=_alias("CARAVAN_MODELS", "OLLAMA_MODELS"))
    registry_host: str = "127.0.0.1:11435"

    @property
    def bind(self) -> tuple[str, int]:
        return split_host_port(self.registry_host, 11435)


class WorkerSettings(ServiceSettings):
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    registry_url: str = "http://127.0.0.1:11435"
    models: Path | None = Field(None, validation_alias=_alias("CARAVAN_MODELS", "OLLAMA_MODELS"))
    cache_dir: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.cache/caravan/blobs")))
    device: str = "cpu"
    memory_budget: int = 8 << 30
    n_threads: int = 0
    n_gpu_layers: int = 0
    main_gpu: int = 0
    engine: str = "llama"
    metrics_port: int = 0
