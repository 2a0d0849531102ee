"""Small helpers for integration tests: wait for a condition on a real system, read reply streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import redis

from caravan import keys
from caravan.queue import Event

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``probe`` (an API or Redis read) until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ps(gateway: str) -> list[dict[str, object]]:
    models: list[dict[str, object]] = httpx.get(gateway + "/api/ps", timeout=30).json()["models"]
    return models


def reply_event(redis_url: str, request_id: str, kind: str, timeout_ms: int = 30000) -> Event:
    """Block on a request's reply stream until an event of ``kind`` arrives."""
    client = redis.Redis.from_url(redis_url)
    last: bytes | str = "0-0"
    try:
        while True:
            reply = client.xread({keys.reply(request_id): last}, block=timeout_ms)
            assert reply, f"no {kind} event for {request_id} within {timeout_ms} ms"
            for entry_id, fields in reply[0][1]:
                last = entry_id
                event = Event.decode(fields)
                if event.t == kind:
                    return event
    finally:
        client.close()
