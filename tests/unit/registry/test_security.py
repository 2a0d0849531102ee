"""The registry's internal-token guard: LAN pulls stay open, model changes need the gateway's token."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from caravan.registry_auth import INTERNAL_HEADER
from caravan.settings import RegistrySettings
from registry.app import create_app
from registry.security import is_open


@pytest.mark.parametrize(
    ("method", "path", "open_"),
    [("GET", "/v2/", True), ("HEAD", "/v2/library/m/blobs/sha256:x", True), ("GET", "/healthz", True),
     ("POST", "/v2/library/m/blobs/uploads/", False), ("PUT", "/v2/library/m/manifests/t", False),
     ("DELETE", "/api/delete", False), ("POST", "/api/create", False), ("GET", "/internal/blobs/x", False),
     ("GET", "/v2x", False)],
)
def test_open_paths(method: str, path: str, open_: bool) -> None:
    assert is_open(method, path) is open_


def test_token_required_for_model_changes(tmp_path: Path, redis_url: str) -> None:
    settings = RegistrySettings(models=tmp_path, internal_token="s3cret", redis_url=redis_url)
    with TestClient(create_app(settings)) as client:
        refused = client.post("/api/copy", json={"source": "a", "destination": "b"})
        assert refused.status_code == 401 and "gateway" in refused.json()["error"]
        assert client.post("/api/copy", json={"source": "a", "destination": "b"},
                           headers={INTERNAL_HEADER: "wrong"}).status_code == 401
        allowed = client.post("/api/copy", json={"source": "a", "destination": "b"},
                              headers={INTERNAL_HEADER: "s3cret"})
        assert allowed.status_code == 404, "past the guard: the model just does not exist"
        assert client.get("/v2/").status_code == 200
