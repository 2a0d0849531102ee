"""Gateway address forms, the API key, and how HTTP failures become one ``Error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from caravan.cli.client import Client, CLIError, ServerError, api_key, gateway_url, host_url
from caravan.cluster import free_port


@pytest.mark.parametrize(("raw", "url"), [
    ("", "http://127.0.0.1:11434"), ("127.0.0.1", "http://127.0.0.1:11434"), ("example.com", "http://example.com:11434"),
    ("example.com:8080", "http://example.com:8080"), (":9000", "http://127.0.0.1:9000"),
    ("[::1]:9000", "http://[::1]:9000"), ("[::1]", "http://[::1]:11434"), ("http://gw", "http://gw:80"),
    ("https://gw", "https://gw:443"), ("https://gw:8443/caravan/", "https://gw:8443/caravan"),
    ("0.0.0.0", "http://0.0.0.0:11434"), ("ollama.com", "https://ollama.com:443"), (' "gw:1234" ', "http://gw:1234"),
])
def test_host_url_forms(raw: str, url: str) -> None:
    assert host_url(raw) == url


def test_invalid_port_is_one_clear_error() -> None:
    with pytest.raises(CLIError, match="invalid gateway address"):
        host_url("gw:notaport")


def test_caravan_host_wins_over_ollama_host(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert gateway_url({**env, "CARAVAN_HOST": "a:1", "OLLAMA_HOST": "b:2"}) == "http://a:1"
    assert gateway_url({**env, "OLLAMA_HOST": "b:2"}) == "http://b:2"
    assert gateway_url(env) == "http://127.0.0.1:11434"


def test_api_key_from_env_then_config_file(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert api_key(env) is None
    (tmp_path / "caravan").mkdir()
    (tmp_path / "caravan" / "config.toml").write_text('api_key = "from-file"\nhost = "cfg:7"\n')
    assert api_key(env) == "from-file" and gateway_url(env) == "http://cfg:7"
    assert api_key({**env, "CARAVAN_API_KEY": "from-env"}) == "from-env"


def test_broken_config_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "caravan").mkdir()
    (tmp_path / "caravan" / "config.toml").write_text("api_key = ")
    with pytest.raises(CLIError, match=r"config\.toml"):
        api_key({"XDG_CONFIG_HOME": str(tmp_path)})


def _client(handler: object, key: str | None = None) -> Client:
    return Client("http://gw:1", key, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_bearer_header_only_with_a_key() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"version": "0.33.0"})

    _client(handler, "sk-1").call("GET", "/api/version")
    _client(handler).call("GET", "/api/version")
    assert seen == ["Bearer sk-1", None]


def test_error_body_becomes_the_message() -> None:
    client = _client(lambda _: httpx.Response(404, json={"error": "model 'x:latest' not found"}))
    with pytest.raises(ServerError) as caught:
        client.call("POST", "/api/show", {"model": "x"})
    assert caught.value.message == "model 'x:latest' not found" and caught.value.status == 404
    assert not caught.value.missing_route


def test_unknown_route_says_which_endpoint_is_missing() -> None:
    client = _client(lambda _: httpx.Response(404, text="404 page not found"))
    with pytest.raises(ServerError) as caught:
        client.call("GET", "/api/keys")
    assert caught.value.missing_route
    assert caught.value.message == "the gateway at http://gw:1 has no GET /api/keys (404 page not found)"


def test_unauthorized_without_a_key_hints_at_the_setting() -> None:
    client = _client(lambda _: httpx.Response(401, json={"error": "missing API key"}))
    with pytest.raises(ServerError, match="CARAVAN_API_KEY"):
        client.call("GET", "/api/tags")


def test_stream_error_line_raises_after_earlier_lines() -> None:
    body = "\n".join(json.dumps(line) for line in [{"status": "pulling manifest"}, {"error": "pull model manifest: "
                                                                                    "file does not exist"}])
    client = _client(lambda _: httpx.Response(200, text=body + "\n"))
    events = client.stream("/api/pull", {"model": "nope"})
    assert next(events) == {"status": "pulling manifest"}
    with pytest.raises(ServerError, match="file does not exist"):
        next(events)


def test_no_gateway_says_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CLIError) as caught:
        Client(url).call("GET", "/api/tags")
    assert caught.value.message == (f"could not connect to a Caravan gateway at {url} — start one with "
                                    "`caravan serve` (or set CARAVAN_HOST)")
