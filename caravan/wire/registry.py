"""Shapes the registry service speaks to the gateway and workers (besides Ollama's own /api shapes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Details(BaseModel):
    """``details`` of /api/tags, /api/show and /api/ps."""

    parent_model: str = ""
    format: str = "gguf"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class ModelRecord(BaseModel):
    """Everything a gateway needs to route and render a request for one model."""

    name: str
    digest: str
    blob: str
    size: int
    params: dict[str, Any] = Field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    context_length: int = 0
    kv_bytes_per_token: int = 0
    details: Details = Field(default_factory=Details)


class ResolveRequest(BaseModel):
    model: str
