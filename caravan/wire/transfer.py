"""Ollama's pull/push shapes (ollama-api.md §3.15): the request and the NDJSON progress objects.

Progress objects are plain dicts on the wire and on the Redis progress stream: ``status`` always, then
``digest``/``total``/``completed`` only when set (Go's omitempty, so ``completed`` is absent before the first
byte), or ``{"error": ...}`` alone. The last object of a successful transfer is ``{"status": "success"}``.
"""

from __future__ import annotations

from typing import Any

from caravan.wire.ollama import WireModel

SUCCESS = "success"


class TransferRequest(WireModel):
    """``POST /api/pull`` and ``POST /api/push``; ``name`` is the old alias of ``model``."""

    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool | None = None
    username: str = ""  # accepted, unused (as in Ollama)
    password: str = ""

    @property
    def target(self) -> str:
        return self.model or self.name

    @property
    def streaming(self) -> bool:
        return self.stream is not False


def progress(status: str, digest: str = "", total: int = 0, completed: int = 0) -> dict[str, Any]:
    """One progress object, empty fields omitted."""
    out: dict[str, Any] = {"status": status}
    if digest:
        out["digest"] = digest
    if total:
        out["total"] = total
    if completed:
        out["completed"] = completed
    return out


def is_final(event: dict[str, Any]) -> bool:
    """The object that ends a transfer's stream: success or an error."""
    return bool(event.get("error")) or event.get("status") == SUCCESS
