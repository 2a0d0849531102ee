"""The guard's pure parts, CORS and the Host guard in-process, start-up warnings, TLS options, audit lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message

from caravan.asgi import error_response
from caravan.errors import CaravanError, Forbidden, TooManyRequests
from caravan.settings import GatewaySettings
from caravan.wire.auth import KeyCreate, openai_error
from gateway import audit
from gateway.auth import Principal, bearer, model_allowed
from gateway.guard import Access, access_for, buffered, check_model, filter_listing, requested_model
from gateway.security import CorsMiddleware, HostGuard, host_allowed, startup_checks, tls_options

MODEL = "smollm2:135m"


@pytest.mark.parametrize(("method", "path", "access"), [
    ("GET", "/", Access.OPEN), ("HEAD", "/api/version", Access.OPEN), ("GET", "/metrics", Access.OPEN),
    ("OPTIONS", "/api/chat", Access.OPEN), ("POST", "/api/pull", Access.ADMIN), ("DELETE", "/api/delete", Access.ADMIN),
    ("POST", "/api/blobs/sha256:ab", Access.ADMIN), ("DELETE", "/api/keys/abc", Access.ADMIN),
    ("POST", "/api/generate", Access.INFERENCE), ("POST", "/v1/chat/completions", Access.INFERENCE),
    ("POST", "/api/show", Access.MODEL), ("GET", "/v1/models/x", Access.MODEL), ("GET", "/api/tags", Access.LIST),
    ("GET", "/api/ps", Access.LIST), ("GET", "/api/usage", Access.USER), ("GET", "/api/status/cluster", Access.USER),
])
def test_every_route_has_its_guard(method: str, path: str, access: Access) -> None:
    assert access_for(method, path) is access


def test_metrics_can_be_protected() -> None:
    assert access_for("GET", "/metrics", metrics_auth=True) is Access.USER
    assert access_for("GET", "/api/status/prometheus-targets", metrics_auth=True) is Access.USER


@pytest.mark.parametrize(("allowed", "model", "ok"), [
    (None, "anything", True), ((), MODEL, False), ((MODEL,), "SmolLM2:135M", True),
    ((MODEL,), "registry.ollama.ai/library/smollm2:135m", True), ((MODEL,), "smollm2", False),
    (("smollm2:*",), "smollm2:1.7b", True), (("smollm2:*",), "smollm3:1b", False), (("*",), "x/y:z", True),
    ((MODEL,), "../../etc", False),
])
def test_allow_lists(allowed: tuple[str, ...] | None, model: str, ok: bool) -> None:
    assert model_allowed(allowed, model) is ok


def test_model_checks_use_the_body_or_the_path() -> None:
    assert requested_model("/api/show", {"name": MODEL}) == MODEL
    assert requested_model("/v1/models/a:b", None) == "a:b"
    assert requested_model("/api/generate", [MODEL]) == ""
    limited = Principal(name="u", role="user", key_id="k", models=(MODEL,))
    check_model(limited, "")  # no model named: the handler answers (400/404)
    check_model(limited, MODEL)
    with pytest.raises(Forbidden, match="not allowed"):
        check_model(limited, "other")


def test_listings_are_filtered() -> None:
    entries = [{"name": MODEL, "model": MODEL}, {"name": "x:latest", "model": "x:latest"}]
    tags = json.dumps({"models": entries}).encode()
    assert json.loads(filter_listing("/api/tags", tags, (MODEL,))) == {"models": entries[:1]}
    models = json.dumps({"object": "list", "data": [{"id": MODEL}, {"id": "x"}]}).encode()
    assert json.loads(filter_listing("/v1/models", models, (MODEL,)))["data"] == [{"id": MODEL}]
    assert json.loads(filter_listing("/api/ps", b"\x1f\x8b garbage", (MODEL,))) == {"models": []}


async def test_buffered_send_rewrites_the_body_and_its_length() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    out = buffered(send, lambda raw: raw.upper())
    await out({"type": "http.response.start", "status": 200, "headers": [(b"transfer-encoding", b"chunked")]})
    await out({"type": "http.response.body", "body": b"ab", "more_body": True})
    await out({"type": "http.response.body", "body": b"c", "more_body": False})
    assert sent[0]["headers"] == [(b"content-length", b"3")] and sent[1]["body"] == b"ABC"


def test_keys_are_read_from_bearer_or_x_api_key() -> None:
    assert bearer({"authorization": "Bearer cvn_x"}) == "cvn_x"
    assert bearer({"authorization": "bearer  cvn_y "}) == "cvn_y"
    assert bearer({"x-api-key": "cvn_z"}) == "cvn_z"
    assert bearer({"authorization": "Basic abc"}) is None and bearer({}) is None


def test_key_requests_are_validated() -> None:
    spec = KeyCreate(name="ann@lab", models=["SmolLM2:135m", "registry.ollama.ai/library/qwen:*", "*"])
    assert spec.models == ["SmolLM2:135m", "qwen:*", "*"] and spec.role == "user"
    for bad in ({"name": "a|b"}, {"role": "root"}, {"models": ["../x"]}, {"limits": {"rpm": 1}},
                {"priority": 101}):
        with pytest.raises(ValidationError):
            KeyCreate.model_validate(bad)


def test_refusals_carry_retry_after_and_both_shapes() -> None:
    exc = TooManyRequests("slow down", retry_after=2.2)
    response = error_response(exc)
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert openai_error(exc)["error"] == {"message": "slow down", "type": "rate_limit_error", "param": None,
                                          "code": "rate_limit_exceeded"}
    assert error_response(CaravanError("x")).headers.get("retry-after") is None


# -- settings, warnings, TLS -------------------------------------------------------------------------------


def test_auth_rule_and_redaction() -> None:
    assert GatewaySettings().auth_enabled is False
    assert GatewaySettings(admin_key="s3cret").auth_enabled is True
    assert GatewaySettings(auth=False, admin_key="s3cret").auth_enabled is False
    assert GatewaySettings(auth=True).auth_enabled is True
    assert "s3cret" not in json.dumps(GatewaySettings(admin_key="s3cret").redacted())


def test_exposed_without_keys_warns(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level(logging.WARNING, "gateway.security"):
        startup_checks(GatewaySettings(host="0.0.0.0:11434"))
    assert "API keys are OFF" in caplog.text and "API keys are OFF" in capsys.readouterr().err
    caplog.clear()
    startup_checks(GatewaySettings(host="127.0.0.1:11434"))
    startup_checks(GatewaySettings(host="localhost"))
    assert not caplog.records
    with caplog.at_level(logging.WARNING, "gateway.security"):
        startup_checks(GatewaySettings(host="0.0.0.0", admin_key="k"))
    assert "clear text" in caplog.text


def test_tls_needs_both_files(tmp_path: Path) -> None:
    assert tls_options(GatewaySettings()) == {}
    assert tls_options(GatewaySettings(tls_cert=tmp_path / "c", tls_key=tmp_path / "k")) == {
        "ssl_certfile": str(tmp_path / "c"), "ssl_keyfile": str(tmp_path / "k")}
    with pytest.raises(CaravanError):
        tls_options(GatewaySettings(tls_cert=tmp_path / "c"))


# -- CORS and Host guard -----------------------------------------------------------------------------------


def _app(origins: str = "") -> httpx.AsyncClient:
    async def ok(_: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/api/chat", ok, methods=["GET", "POST"])])
    app = CorsMiddleware(HostGuard(inner), origins=origins)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:11434")


@pytest.mark.parametrize(("origin", "ok"), [
    ("http://localhost", True), ("https://127.0.0.1:3000", True), ("http://0.0.0.0:8080", True), ("app://x", True),
    ("vscode-webview://abc", True), ("tauri://localhost", True), ("https://extra.example", True),
    ("https://a.wild.example", True), ("http://evil.example", False), ("http://localhost.evil.example", False),
    ("chrome-extension://abc", False), ("http://127.0.0.1.evil", False),
])
async def test_cors_origins(origin: str, ok: bool) -> None:
    async with _app("https://extra.example, https://*.wild.example") as client:
        response = await client.options("/api/chat",
                                        headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert response.status_code == (204 if ok else 403)
    if ok:
        assert response.headers["access-control-allow-origin"] == origin
        assert "x-stainless-retry-count" in response.headers["access-control-allow-headers"]


async def test_cors_simple_requests_and_wildcard() -> None:
    async with _app() as client:
        allowed = await client.post("/api/chat", headers={"Origin": "http://localhost:5173"})
        refused = await client.post("/api/chat", headers={"Origin": "https://evil.example"})
        same = await client.get("/api/chat", headers={"Origin": "http://127.0.0.1:11434"})
    assert allowed.text == "ok" and allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "X-Request-Id" in allowed.headers["access-control-expose-headers"]
    assert refused.status_code == 403 and refused.content == b""
    assert same.text == "ok"
    async with _app("*") as client:
        anyone = await client.post("/api/chat", headers={"Origin": "https://evil.example"})
    assert anyone.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(("host", "ok"), [
    ("", True), ("localhost:11434", True), ("LOCALHOST", True), ("box.local", True), ("gw.internal:80", True),
    ("app.localhost", True), ("127.0.0.1:11434", True), ("[::1]:11434", True), ("10.1.2.3", True),
    ("192.168.1.9:11434", True), ("0.0.0.0", True), ("evil.example", False), ("8.8.8.8", False),
    ("localhost.evil.example", False),
])
def test_host_rule(host: str, ok: bool) -> None:
    assert host_allowed(host) is ok


async def test_host_guard() -> None:
    async with _app() as client:
        refused = await client.get("/api/chat", headers={"Host": "rebind.example"})
        options = await client.options("/api/chat", headers={"Host": "localhost"})
        fine = await client.get("/api/chat")
    assert refused.status_code == 403 and refused.content == b""
    assert options.status_code == 204 and fine.text == "ok"


# -- audit -------------------------------------------------------------------------------------------------


def test_audit_lines_go_to_their_file(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    audit.configure(path)
    try:
        entry = audit.AuditEntry("POST", "/api/copy", client="10.0.0.2", user="root", role="admin", model="a")
        entry.note_body({"source": "a", "destination": "b", "prompt": "secret plans"}, with_prompts=False)
        entry.status = 200
        entry.write(0.5, "rid1", 0, 0)
        chatty = audit.AuditEntry("POST", "/api/generate", user="u")
        chatty.note_body({"model": "m", "prompt": "hello"}, with_prompts=True)
        chatty.write(0.1, None, 3, 4)
    finally:
        audit.configure(None)
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["action"] == "copy" and first["destination"] == "b" and first["request_id"] == "rid1"
    assert "prompt" not in first and "secret plans" not in path.read_text().splitlines()[0]
    assert second["prompt"] == {"prompt": "hello"} and second["completion_tokens"] == 4
    assert audit.action_of("DELETE", "/api/keys/x") == "key.revoke"
    assert audit.action_of("POST", "/api/blobs/sha256:a") == "blob.upload"
