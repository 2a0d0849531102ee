"""Multi-user LAN safety on a real cluster with API keys on: 401/403/429/413, allow-lists, usage equal to the
tokens generated, an audit trail without key material, CORS, the Host guard, the exposure warning and TLS."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import ollama
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from caravan import keys
from caravan.cli.main import app as cli
from caravan.cluster import ClusterConfig, LocalCluster, free_port
from tests.integration.helpers import wait_for

MODEL = "smollm2:135m"
OTHER = "auth-other:latest"
ADMIN_KEY = "cvn_bootstrap_" + secrets.token_urlsafe(16)
SHORT = {"temperature": 0, "num_predict": 4, "seed": 1}
SECRETS: list[str] = [ADMIN_KEY]  # every key this module saw: none may appear in any log


@pytest.fixture(scope="module")
def secured(demo_store: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    logs = tmp_path_factory.mktemp("auth-logs")
    env = {"CARAVAN_AUTH": "true", "CARAVAN_ADMIN_KEY": ADMIN_KEY, "CARAVAN_AUDIT_LOG": str(logs / "audit.jsonl"),
           "OLLAMA_ORIGINS": "http://allowed.example", "CARAVAN_USER_MAX_NUM_PREDICT": "12",
           "CARAVAN_MAX_BODY_BYTES": str(1 << 20)}
    cluster = LocalCluster(ClusterConfig(models=demo_store, gateway_port=free_port(), redis_url=redis_url, workers=1,
                                         log_dir=logs, worker_env={"CARAVAN_N_THREADS": "2"}, gateway_env=env))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def admin(secured: LocalCluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.gateway_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      timeout=120) as client:
        yield client


def make_key(admin: httpx.Client, **spec: Any) -> dict[str, Any]:
    """A new key (its secret under ``key``), remembered for the log scan."""
    response = admin.post("/api/keys", json=spec)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    assert created["key"].startswith("cvn_")
    SECRETS.append(created["key"])
    return created


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def other_model(admin: httpx.Client) -> Iterator[str]:
    """A second model (a copy of the demo), deleted again by an admin at the end."""
    assert admin.post("/api/copy", json={"source": MODEL, "destination": OTHER}).status_code == 200
    yield OTHER
    assert admin.request("DELETE", "/api/delete", json={"model": OTHER}).status_code == 200


@pytest.fixture(scope="module")
def alice(admin: httpx.Client) -> dict[str, Any]:
    """A user limited to the demo model."""
    return make_key(admin, name="alice-" + secrets.token_hex(3), role="user", models=[MODEL])


# -- 401 ---------------------------------------------------------------------------------------------------


def test_open_routes_need_no_key(secured: LocalCluster) -> None:
    assert httpx.get(secured.gateway_url + "/").text == "Ollama is running"
    assert httpx.get(secured.gateway_url + "/api/version").status_code == 200
    assert httpx.get(secured.gateway_url + "/metrics").status_code == 200


def test_no_key_or_a_wrong_one_is_401_in_each_api_shape(secured: LocalCluster) -> None:
    url = secured.gateway_url
    for headers in ({}, bearer("cvn_not-a-real-key"), {"Authorization": "Bearer ollama"}):
        native = httpx.post(url + "/api/generate", json={"model": MODEL, "prompt": "hi"}, headers=headers)
        assert native.status_code == 401 and native.json()["error"].startswith("unauthorized")
        assert native.headers["www-authenticate"].startswith("Bearer")
        compat = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": []}, headers=headers)
        assert compat.status_code == 401
        assert compat.json()["error"]["code"] == "invalid_api_key" and compat.json()["error"]["message"]
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=url, headers=bearer("cvn_wrong")).list()
    assert caught.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="ollama", max_retries=0).models.list()


# -- 403 ---------------------------------------------------------------------------------------------------


def test_users_cannot_run_admin_operations(secured: LocalCluster, admin: httpx.Client) -> None:
    user = make_key(admin, name="bob-" + secrets.token_hex(3))
    with httpx.Client(base_url=secured.gateway_url, headers=bearer(user["key"]), timeout=60) as bob:
        calls = [("POST", "/api/create", {"model": "x", "from": MODEL}), ("DELETE", "/api/delete", {"model": MODEL}),
                 ("POST", "/api/pull", {"model": "llama3.2"}), ("POST", "/api/copy", {"source": MODEL,
                                                                                       "destination": "y"}),
                 ("POST", "/api/keys", {"name": "mallory", "role": "admin"}), ("GET", "/api/keys", None),
                 ("DELETE", f"/api/keys/{user['id']}", None), ("POST", "/api/blobs/sha256:" + "0" * 64, None)]
        for method, path, body in calls:
            response = bob.request(method, path, json=body)
            assert response.status_code == 403, (path, response.text)
            assert "admin" in response.json()["error"]
        assert bob.get("/api/tags").status_code == 200  # a user may still list and use models
    assert admin.post("/api/show", json={"model": MODEL}).status_code == 200  # the delete did not happen


def test_model_allow_list(secured: LocalCluster, admin: httpx.Client, alice: dict[str, Any], other_model: str) -> None:
    assert {m["name"] for m in admin.get("/api/tags").json()["models"]} >= {MODEL, other_model}
    client = ollama.Client(host=secured.gateway_url, headers=bearer(alice["key"]))
    assert [m.model for m in client.list().models] == [MODEL]
    for call in (lambda: client.generate(model=other_model, prompt="hi", options=SHORT),
                 lambda: client.show(other_model), lambda: client.chat(model="AUTH-OTHER", messages=[])):
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 403 and "not allowed" in str(caught.value.error)
    assert client.show(MODEL).capabilities
    assert client.generate(model=MODEL, prompt="Hi", options=SHORT).done
    compat = openai.OpenAI(base_url=secured.gateway_url + "/v1", api_key=alice["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        compat.chat.completions.create(model=other_model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError):
        compat.models.retrieve(other_model)
    assert [m.id for m in compat.models.list().data] == [MODEL]
    reply = compat.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 3


# -- usage -------------------------------------------------------------------------------------------------


def test_usage_equals_the_tokens_generated(secured: LocalCluster, admin: httpx.Client) -> None:
    user = make_key(admin, name="carol-" + secrets.token_hex(3), models=[MODEL])
    client = ollama.Client(host=secured.gateway_url, headers=bearer(user["key"]))
    first = client.generate(model=MODEL, prompt="Write a long story about a dragon.",
                            options={"temperature": 0, "num_predict": 200})
    assert first.eval_count == 12, "the user role's num_predict cap (12) clamps the request's 200"
    last = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "Hello"}], options=SHORT,
                            stream=True))[-1]
    prompt = (first.prompt_eval_count or 0) + (last.prompt_eval_count or 0)
    completion = (first.eval_count or 0) + (last.eval_count or 0)
    rows = admin.get("/api/usage", params={"user": user["name"]}).json()["usage"]
    assert [(r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        (MODEL, 2, prompt, completion)]
    assert rows[0]["date"] == dt.datetime.now(dt.UTC).date().isoformat()
    own = httpx.get(secured.gateway_url + "/api/usage", headers=bearer(user["key"])).json()["usage"]
    assert own == rows, "a user sees exactly their own rows"
    samples = [sample for family in text_string_to_metric_families(httpx.get(secured.gateway_url + "/metrics").text)
               for sample in family.samples if sample.name == "caravan_user_tokens_total"]
    assert [s.value for s in samples if s.labels == {"user": user["name"], "model": MODEL, "kind": "completion"}] == [
        completion]


def test_fair_sharing_sees_the_user(secured: LocalCluster, alice: dict[str, Any], redis_url: str) -> None:
    ollama.Client(host=secured.gateway_url, headers=bearer(alice["key"])).generate(model=MODEL, prompt="Hi",
                                                                                    options=SHORT)
    store = redis.Redis.from_url(redis_url)
    try:
        users = {u.decode() for key in store.scan_iter("caravan:qusers:*")
                 for u in cast(list[bytes], store.zrange(key, 0, -1))}
    finally:
        store.close()
    assert alice["name"] in users


# -- 429 / 413 ---------------------------------------------------------------------------------------------


def test_requests_per_minute_limit(secured: LocalCluster, admin: httpx.Client) -> None:
    limited = make_key(admin, name="dave-" + secrets.token_hex(3), limits={"requests_per_minute": 2})
    client = ollama.Client(host=secured.gateway_url, headers=bearer(limited["key"]))
    client.list()
    client.list()
    with pytest.raises(ollama.ResponseError) as caught:
        client.list()
    assert caught.value.status_code == 429 and "requests per minute" in str(caught.value.error)
    response = httpx.get(secured.gateway_url + "/v1/models", headers=bearer(limited["key"]))
    assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=secured.gateway_url + "/v1", api_key=limited["key"], max_retries=0).models.list()


def test_concurrency_limit(secured: LocalCluster, admin: httpx.Client, redis_url: str) -> None:
    limited = make_key(admin, name="erin-" + secrets.token_hex(3), limits={"max_concurrent": 1})
    body = json.dumps({"model": MODEL, "prompt": "Hi", "stream": False, "options": SHORT}).encode()
    release = threading.Event()
    outcome: list[int] = []

    def held_body() -> Iterator[bytes]:  # a request that stays in flight until the test lets it go
        yield body[:10]
        release.wait(60)
        yield body[10:]

    def first() -> None:
        outcome.append(httpx.post(secured.gateway_url + "/api/generate", content=held_body(),
                                  headers=bearer(limited["key"]), timeout=120).status_code)

    store = redis.Redis.from_url(redis_url)
    worker = threading.Thread(target=first)
    worker.start()
    try:
        wait_for(lambda: store.zcard(keys.in_flight(limited["id"])) == 1, what="the first request's lease")
        second = httpx.post(secured.gateway_url + "/api/generate", json={"model": MODEL, "prompt": "Hi"},
                            headers=bearer(limited["key"]), timeout=60)
        assert second.status_code == 429 and "concurrency" in second.json()["error"]
        assert int(second.headers["retry-after"]) >= 1
    finally:
        release.set()
        worker.join(120)
        wait_for(lambda: store.zcard(keys.in_flight(limited["id"])) == 0, what="the lease released")
        store.close()
    assert outcome == [200]


def test_tokens_per_day_limit(secured: LocalCluster, admin: httpx.Client) -> None:
    limited = make_key(admin, name="frank-" + secrets.token_hex(3), limits={"tokens_per_day": 1})
    client = ollama.Client(host=secured.gateway_url, headers=bearer(limited["key"]))
    assert client.generate(model=MODEL, prompt="Hi", options=SHORT).done  # starts under the limit
    response = httpx.post(secured.gateway_url + "/api/generate", json={"model": MODEL, "prompt": "Hi"},
                          headers=bearer(limited["key"]))
    assert response.status_code == 429 and "tokens per day" in response.json()["error"]
    assert 1 <= int(response.headers["retry-after"]) <= 86400


def test_body_size_limit(secured: LocalCluster, admin: httpx.Client) -> None:
    response = admin.post("/api/generate", json={"model": MODEL, "prompt": "x" * (1 << 20)})
    assert response.status_code == 413 and "too large" in response.json()["error"]


# -- keys: lifecycle and CLI -------------------------------------------------------------------------------


def test_key_lifecycle(secured: LocalCluster, admin: httpx.Client) -> None:
    created = make_key(admin, name="gina-" + secrets.token_hex(3), priority=3)
    assert httpx.get(secured.gateway_url + "/api/tags", headers=bearer(created["key"])).status_code == 200
    listed = admin.get("/api/keys")
    assert created["key"] not in listed.text and "digest" not in listed.text
    entry = next(k for k in listed.json()["keys"] if k["id"] == created["id"])
    assert entry["last_used"] and entry["priority"] == 3 and entry["role"] == "user"
    assert admin.delete(f"/api/keys/{created['id']}").json()["revoked"] is True
    assert httpx.get(secured.gateway_url + "/api/tags", headers=bearer(created["key"])).status_code == 401
    assert admin.delete(f"/api/keys/{created['id']}").status_code == 404


def test_cli_manages_keys_and_reports_usage(secured: LocalCluster, alice: dict[str, Any]) -> None:
    runner = CliRunner()
    env = {"CARAVAN_HOST": secured.gateway_url, "CARAVAN_API_KEY": ADMIN_KEY}
    created = runner.invoke(cli, ["keys", "create", "hank", "--model", MODEL, "--rpm", "5", "--json"], env=env)
    assert created.exit_code == 0, created.output
    data = json.loads(created.output)
    SECRETS.append(data["key"])
    assert data["models"] == [MODEL] and data["limits"] == {"requests_per_minute": 5}
    assert "hank" in runner.invoke(cli, ["keys", "list"], env=env).output
    assert runner.invoke(cli, ["keys", "revoke", data["id"]], env=env).exit_code == 0
    report = runner.invoke(cli, ["usage", "--user", alice["name"], "--json"], env=env)
    assert report.exit_code == 0 and {r["user"] for r in json.loads(report.output)["usage"]} == {alice["name"]}
    denied = runner.invoke(cli, ["keys", "list"], env={**env, "CARAVAN_API_KEY": alice["key"]})
    assert denied.exit_code == 1


# -- browser and network safety ----------------------------------------------------------------------------


def test_cors_preflight_and_origins(secured: LocalCluster) -> None:
    url = secured.gateway_url + "/api/chat"
    asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    for origin in ("http://allowed.example", "http://localhost:3000"):
        preflight = httpx.options(url, headers={"Origin": origin, **asks})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == origin
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "x-stainless-os" in allowed
    assert httpx.options(url, headers={"Origin": "http://evil.example", **asks}).status_code == 403
    simple = httpx.post(url, content=b"{}", headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert simple.status_code == 403 and simple.content == b""
    tags = httpx.get(secured.gateway_url + "/api/tags",
                     headers={"Origin": "http://allowed.example", **bearer(ADMIN_KEY)})
    assert tags.status_code == 200 and tags.headers["access-control-allow-origin"] == "http://allowed.example"


def test_host_guard_on_loopback(secured: LocalCluster) -> None:
    url = secured.gateway_url + "/api/version"
    refused = httpx.get(url, headers={"Host": "attacker.example"})
    assert refused.status_code == 403 and refused.content == b""
    assert httpx.get(url, headers={"Host": "localhost:11434"}).status_code == 200
    assert httpx.options(url, headers={"Host": "localhost"}).status_code == 204


def gateway_env(secured: LocalCluster, **extra: str) -> dict[str, str]:
    return {**secured.common_env(), "CARAVAN_AUTH": "", "CARAVAN_ADMIN_KEY": "", **extra}


def test_exposed_gateway_without_keys_warns_loudly(secured: LocalCluster) -> None:
    port = free_port()
    proc = secured.spawn("gateway-exposed", [sys.executable, "-m", "gateway"],
                         gateway_env(secured, OLLAMA_HOST=f"0.0.0.0:{port}", CARAVAN_AUTH="false"))
    log = secured.log_dir / "gateway-exposed.log"
    try:
        text = wait_for(lambda: _warned(log), what="the exposure warning")
        assert any(json.loads(line).get("level") == "warning" for line in text.splitlines()
                   if line.startswith("{") and "API keys are OFF" in line)
        assert "!!!!!!!!" in text, "also printed plainly on stderr"
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/api/version"), what="the exposed gateway")
    finally:
        proc.terminate()
        proc.wait(30)


def _warned(log: Path) -> str | None:
    text = log.read_text() if log.exists() else ""
    return text if "API keys are OFF" in text else None


def _answers(url: str, **kwargs: Any) -> bool:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (``openssl req``)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=caravan",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls(secured: LocalCluster, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    proc = secured.spawn("gateway-tls", [sys.executable, "-m", "gateway"], gateway_env(
        secured, OLLAMA_HOST=f"127.0.0.1:{port}", CARAVAN_ADMIN_KEY=ADMIN_KEY, CARAVAN_TLS_CERT=str(cert),
        CARAVAN_TLS_KEY=str(key)))
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        wait_for(lambda: _answers(f"https://127.0.0.1:{port}/api/version", verify=trust), what="the TLS gateway")
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust) as client:  # closed before SIGTERM
            assert client.get("/api/tags").status_code == 401
            tags = client.get("/api/tags", headers=bearer(ADMIN_KEY))
            assert MODEL in [m["name"] for m in tags.json()["models"]]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=5)
    finally:
        proc.terminate()
        proc.wait(30)


# -- audit and log hygiene (last: scans what the tests above wrote) ----------------------------------------


def test_audit_trail_and_no_key_material_in_logs(secured: LocalCluster, alice: dict[str, Any]) -> None:
    audit_path = secured.log_dir / "audit.jsonl"
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    actions = {line["action"] for line in lines}
    assert {"copy", "key.create", "key.revoke", "request"} <= actions
    generated = [x for x in lines if x.get("user") == alice["name"] and x.get("path") == "/api/generate"
                 and x["status"] == 200]
    assert generated and all(x["model"] and x["completion_tokens"] > 0 and x["request_id"] for x in generated)
    assert any(x["status"] == 403 and x.get("model") == OTHER for x in lines)
    assert not any("prompt" in x for x in lines), "prompt text only with CARAVAN_AUDIT_PROMPTS"
    for path in secured.log_dir.iterdir():
        text = path.read_text(errors="replace")
        assert "Bearer" not in text and "bearer " not in text.lower(), path
        for secret in SECRETS:
            assert secret not in text, f"a key leaked into {path.name}"
