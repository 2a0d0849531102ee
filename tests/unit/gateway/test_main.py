"""``python -m gateway``: what it hands uvicorn."""

from __future__ import annotations

from typing import Any

import pytest

import gateway.__main__ as entry


def test_idle_keep_alive_connections_stay_open_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **options: seen.update(options))
    monkeypatch.setattr(entry, "setup_logging", lambda *args: None)  # the root logger stays as the tests set it
    monkeypatch.setenv("CARAVAN_HOST", "127.0.0.1:0")
    entry.main()
    assert seen["timeout_keep_alive"] == 75  # not uvicorn's 5 s: a chat client pauses longer between turns
    monkeypatch.setenv("CARAVAN_HTTP_IDLE_TIMEOUT", "600")
    entry.main()
    assert seen["timeout_keep_alive"] == 600
