"""Ranged blob GETs over plain asyncio streams: the hot loop of a pull.

httpx's async stack moves about 150 MB/s per process on loopback here, while an asyncio stream read 1 MiB at a
time keeps up with curl; a part is one request, one status line, and ``Content-Length`` bytes. Only that simple
case is done here (HTTP/1.1, ``206``, or ``200`` for a range from 0, with a Content-Length, and no proxy in the
environment); anything else raises :class:`Unsupported` before the first byte and the caller uses httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.request
from collections.abc import AsyncGenerator
from urllib.parse import urlsplit

READ = 1 << 20
BUFFER = 4 * READ  # the reader's limit: flow control pauses the socket at twice this


class Unsupported(Exception):
    """This response needs the general client (redirect, auth challenge, chunked body, proxy...)."""


class Failed(Exception):
    """A transient failure: connection refused or dropped, timeout, 5xx, short body."""


def usable(url: str) -> bool:
    """Plain http(s) with no proxy configured for this host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    proxies = urllib.request.getproxies()
    proxied = parts.scheme in proxies or "all" in proxies
    return not proxied or bool(urllib.request.proxy_bypass(parts.hostname))


def _request(url: str, start: int, stop: int, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", f"Range: bytes={start}-{stop - 1}",
             "Accept-Encoding: identity", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise Failed(f"bad status line {status_line!r}")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(fields[1]), headers


async def _open(url: str, stall: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context = ssl.create_default_context() if secure else None
    try:
        return await asyncio.wait_for(asyncio.open_connection(parts.hostname, port, ssl=context, limit=BUFFER),
                                      stall)
    except (OSError, TimeoutError) as exc:
        raise Failed(f"connect to {parts.netloc}: {exc or type(exc).__name__}") from None


def _body_length(status: int, headers: dict[str, str], start: int, url: str) -> int:
    if status == 200 and start != 0:
        raise Unsupported(f"GET {url}: the server ignored the Range header")
    if status == 429 or status >= 500:
        raise Failed(f"{status}")
    if status not in (200, 206) or "chunked" in headers.get("transfer-encoding", "").lower():
        raise Unsupported(f"{status}")
    if "content-length" not in headers or headers.get("content-encoding", "identity") != "identity":
        raise Unsupported("no plain Content-Length")
    return int(headers["content-length"])


async def stream_range(url: str, start: int, stop: int, headers: dict[str, str],
                       stall: float) -> AsyncGenerator[bytes, None]:
    """Bytes ``[start, stop)`` of ``url`` as they arrive; no progress for ``stall`` seconds is a failure."""
    reader, writer = await _open(url, stall)
    try:
        writer.write(_request(url, start, stop, headers))
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), stall)
            left = _body_length(*_parse_head(head), start, url)
            while left > 0:
                chunk = await asyncio.wait_for(reader.read(min(left, READ)), stall)
                if not chunk:
                    raise Failed(f"connection closed with {left} bytes of the range missing")
                left -= len(chunk)
                yield chunk
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise Failed(f"GET {url}: {exc or type(exc).__name__}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
