"""How Caravan services prove to the registry that they are Caravan services (``CARAVAN_INTERNAL_TOKEN``)."""

from __future__ import annotations

INTERNAL_HEADER = "X-Caravan-Internal-Token"


def internal_headers(token: str) -> dict[str, str]:
    """The header to send with every registry call; empty when no token is configured."""
    return {INTERNAL_HEADER: token} if token else {}
