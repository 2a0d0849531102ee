"""Commands against a fake gateway: run pulls a missing model, keys/usage on a gateway without them."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from typer.testing import CliRunner

from caravan.cli import client as client_module
from caravan.cli.client import Client
from caravan.cli.main import app

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], None]:
    """Point every command's ``Client.from_env()`` at a handler instead of a gateway."""

    def install(handler: Handler) -> None:
        fake = classmethod(lambda cls, env=None: Client("http://gw:1", transport=httpx.MockTransport(handler)))
        monkeypatch.setattr(client_module.Client, "from_env", fake)

    return install


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input="")
    return result.exit_code, result.stdout, result.stderr


def test_run_pulls_a_model_the_gateway_lacks(serve: Callable[[Handler], None]) -> None:
    paths: list[str] = []
    pulled: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/api/show" and not pulled:
            return httpx.Response(404, json={"error": "model 'tiny:latest' not found"})
        if request.url.path == "/api/pull":
            pulled.append(True)
            lines = [{"status": "pulling manifest"}, {"status": "pulling 0123456789ab", "digest": "sha256:" + "0" * 64,
                                                       "total": 10, "completed": 10}, {"status": "success"}]
            return httpx.Response(200, text="".join(json.dumps(line) + "\n" for line in lines))
        if request.url.path == "/api/generate" and json.loads(request.content)["prompt"]:
            return httpx.Response(200, text=json.dumps({"response": "Hi!", "done": True}) + "\n")
        return httpx.Response(200, json={"capabilities": ["completion"], "done": True})

    serve(handler)
    code, out, err = invoke("run", "tiny", "hello")
    assert code == 0, err
    assert paths == ["/api/show", "/api/pull", "/api/show", "/api/generate", "/api/generate"]
    assert out == "Hi!\n\n" and "pulling manifest" in err and "success" in err


@pytest.mark.parametrize(("args", "feature"), [(("keys", "list"), "API keys"), (("keys", "create", "ci"), "API keys"),
                                               (("keys", "revoke", "k1"), "API keys"), (("usage",), "usage")])
def test_cluster_commands_on_a_gateway_without_them(serve: Callable[[Handler], None], args: tuple[str, ...],
                                                    feature: str) -> None:
    serve(lambda _: httpx.Response(404, text="404 page not found"))
    code, _, err = invoke(*args)
    assert code == 1 and err.startswith(f"Error: this Caravan does not support {feature}")


def test_keys_list_and_create(serve: Callable[[Handler], None]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"id": "k2", "key": "cvn_secret"})
        return httpx.Response(200, json={"keys": [{"id": "k1", "name": "ci", "created_at": "2026-01-01"}]})

    serve(handler)
    code, out, _ = invoke("keys", "list")
    assert code == 0 and out.splitlines()[0].split() == ["ID", "NAME", "CREATED", "AT"]
    code, out, _ = invoke("keys", "create", "ci")
    assert code == 0 and out.startswith("cvn_secret\n")


def test_server_error_is_one_line(serve: Callable[[Handler], None]) -> None:
    serve(lambda _: httpx.Response(404, json={"error": "model 'nope:latest' not found"}))
    code, out, err = invoke("show", "nope")
    assert (code, out, err) == (1, "", "Error: model 'nope:latest' not found\n")
