"""The CLI's HTTP client for any Caravan gateway.

Where: ``CARAVAN_HOST``, then ``OLLAMA_HOST``, then ``host`` in the config file, else ``127.0.0.1:11434``, in
the address forms Ollama accepts (ollama-api.md §8.1). The API key comes from ``CARAVAN_API_KEY`` or ``api_key``
in ``~/.config/caravan/config.toml`` (``$XDG_CONFIG_HOME`` honoured) and is sent as ``Authorization: Bearer``.

Every failure becomes a :class:`CLIError` whose message is the one line the user sees after ``Error:``::

    CLIError                    no gateway, timeouts, bad local input
    └── ServerError             the gateway answered >= 400, or an NDJSON stream carried {"error": ...}
"""

from __future__ import annotations

import functools
import json
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
import typer

from caravan import __version__
from caravan.settings import split_host_port

DEFAULT_HOST = "127.0.0.1:11434"
CONNECT_HINT = ("could not connect to a Caravan gateway at {url} — start one with `caravan serve` "
                "(or set CARAVAN_HOST)")
TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=None, pool=5.0)

P = ParamSpec("P")
R = TypeVar("R")


class CLIError(Exception):
    """An error the user reads as one line: ``Error: <message>``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerError(CLIError):
    """The gateway said no; ``from_server`` is false when the body was not ``{"error": ...}`` (unknown route)."""

    def __init__(self, message: str, status: int, from_server: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.from_server = from_server

    @property
    def missing_route(self) -> bool:
        """True when the gateway does not know the endpoint at all (an older or smaller Caravan)."""
        return self.status in (404, 405) and not self.from_server


def exits_on_error(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command: a :class:`CLIError` prints ``Error: ...`` on stderr and exits 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CLIError as exc:
            typer.echo(f"Error: {exc.message}", err=True)
            raise typer.Exit(1) from None

    return wrapper


# ---------------------------------------------------------------------------------------------------------
# Where and who
# ---------------------------------------------------------------------------------------------------------


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/caravan/config.toml`` (default ``~/.config/caravan/config.toml``)."""
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "caravan" / "config.toml"


def load_config(path: Path) -> dict[str, Any]:
    """The config file's table; empty when the file is absent; a clear error when it is not TOML."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CLIError(f"could not read {path}: {exc}") from None


def host_url(raw: str) -> str:
    """A base URL from an ``OLLAMA_HOST``-style address: ``host``, ``host:port``, ``:port``, ``[v6]:port``,
    ``scheme://host[:port][/path]``; no port means 11434, or 80/443 with an ``http``/``https`` scheme."""
    text = raw.strip().strip("\"'") or DEFAULT_HOST
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
        if text == "ollama.com":
            scheme, rest = "https", "ollama.com:443"
    hostport, _, path = rest.partition("/")
    try:
        host, port = split_host_port(f"{scheme}://{hostport}" if sep else hostport, 11434)
    except ValueError:
        raise CLIError(f"invalid gateway address {raw!r}") from None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}" + (f"/{path.strip('/')}" if path.strip("/") else "")


def gateway_url(env: Mapping[str, str] = os.environ) -> str:
    """The gateway's base URL from the environment, then the config file."""
    raw = env.get("CARAVAN_HOST") or env.get("OLLAMA_HOST")
    if not raw:
        raw = str(load_config(config_path(env)).get("host") or DEFAULT_HOST)
    return host_url(raw)


def api_key(env: Mapping[str, str] = os.environ) -> str | None:
    """The API key from ``CARAVAN_API_KEY``, else the config file's ``api_key``; ``None`` when neither."""
    key = env.get("CARAVAN_API_KEY", "").strip()
    if not key:
        key = str(load_config(config_path(env)).get("api_key") or "").strip()
    return key or None


# ---------------------------------------------------------------------------------------------------------
# Talking
# ---------------------------------------------------------------------------------------------------------


def _is_loopback(url: str) -> bool:
    """Like Go's proxy rules, never send a loopback gateway through an ``HTTP(S)_PROXY``."""
    host = httpx.URL(url).host
    return host == "localhost" or host.startswith("127.") or host in ("::1", "0.0.0.0")


def _error_message(response: httpx.Response) -> tuple[str, bool]:
    """The text of an error response and whether it was the ``{"error": ...}`` shape."""
    try:
        body = json.loads(response.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"]), True
    text = response.text.strip() if response.content else ""
    return text or f"{response.status_code} {response.reason_phrase}".strip(), False


class Client:
    """A small synchronous client: JSON calls, NDJSON streams, blob uploads; errors mapped to one line."""

    def __init__(self, base_url: str, key: str | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url
        self.key = key
        headers = {"User-Agent": f"caravan/{__version__}", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT, transport=transport,
                                  trust_env=not _is_loopback(base_url))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Client:
        return cls(gateway_url(env), api_key(env))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        message, from_server = _error_message(response)
        if response.status_code in (404, 405) and not from_server:
            request = response.request
            message = f"the gateway at {self.base_url} has no {request.method} {request.url.path} ({message})"
        if response.status_code == 401 and not self.key:
            message += " (set CARAVAN_API_KEY or api_key in the config file)"
        raise ServerError(message, response.status_code, from_server)

    def _transport_error(self, exc: httpx.TransportError) -> CLIError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return CLIError(CONNECT_HINT.format(url=self.base_url))
        if isinstance(exc, httpx.TimeoutException):
            return CLIError(f"timed out talking to the Caravan gateway at {self.base_url}")
        return CLIError(f"lost the connection to the Caravan gateway at {self.base_url}: {exc}")

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        """One request; the response when its status is below 400."""
        try:
            response = self._http.request(method, path, json=body, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        return self._check(response)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON call; the decoded body (``None`` when empty)."""
        response = self.request(method, path, body)
        if not response.content:
            return None
        try:
            return response.json()
        except json.JSONDecodeError:
            raise CLIError(f"the gateway answered {path} with something that is not JSON") from None

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object; an ``{"error": ...}`` line raises :class:`ServerError`.

        Leaving the loop early (``break``, Ctrl-C) closes the HTTP stream, which cancels the work upstream.
        """
        try:
            with self._http.stream("POST", path, json=body) as response:
                self._check(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield _decode_line(line, response.status_code)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None


def _decode_line(line: str, status: int) -> dict[str, Any]:
    """One NDJSON object; a mid-stream ``{"error": ...}`` becomes a :class:`ServerError`."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        raise CLIError(f"the gateway sent a line that is not JSON: {line[:80]!r}") from None
    if isinstance(data, dict) and data.get("error"):
        raise ServerError(str(data["error"]), status)
    return data if isinstance(data, dict) else {"value": data}
