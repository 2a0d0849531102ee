"""One exception tree for every service; each class carries its HTTP status.

    CaravanError (500)
    ├── BadRequest (400)
    │   ├── InvalidName (400)
    │   ├── InvalidOption (400)
    │   └── DigestMismatch (400)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── PayloadTooLarge (413)
    ├── ClientClosed (499)
    ├── TooManyRequests (429)
    ├── ServerBusy (503)
    └── UpstreamError (502)

The one place that maps them to ``{"error": ...}`` bodies lives in each service's ``errors`` handler module,
which calls :func:`error_body`.
"""

from __future__ import annotations

import math
from typing import Any


class CaravanError(Exception):
    """Base of every error a client may see; ``status`` is the HTTP status."""

    status: int = 500
    headers: dict[str, str] | None = None  # extra response headers (``Retry-After`` of a 429)

    def __init__(self, message: str, *, status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if headers is not None:
            self.headers = headers

    def to_wire(self) -> dict[str, Any]:
        """The error as it crosses Redis between services."""
        return {"status": self.status, "error": self.message}


class BadRequest(CaravanError):
    status = 400


class InvalidName(BadRequest):
    pass


class InvalidOption(BadRequest):
    pass


class DigestMismatch(BadRequest):
    pass


class Unauthorized(CaravanError):
    status = 401


class Forbidden(CaravanError):
    status = 403


class NotFound(CaravanError):
    status = 404


class PayloadTooLarge(CaravanError):
    status = 413


class TooManyRequests(CaravanError):
    """A limit was hit; ``retry_after`` seconds (rounded up) travel as the ``Retry-After`` header."""

    status = 429

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class ClientClosed(CaravanError):
    status = 499


class ServerBusy(CaravanError):
    status = 503


class UpstreamError(CaravanError):
    status = 502


SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"


def model_not_found(name: str) -> NotFound:
    """Ollama's text for an unknown model in generate/chat/show/delete."""
    return NotFound(f"model '{name}' not found")


def from_wire(data: dict[str, Any]) -> CaravanError:
    """Rebuild an error sent by another service (see :meth:`CaravanError.to_wire`)."""
    return CaravanError(str(data.get("error", "unknown error")), status=int(data.get("status", 500)))


def error_body(exc: CaravanError) -> dict[str, str]:
    """The Ollama error body."""
    return {"error": exc.message}
