"""Registry auth (ollama-api.md §7.2): the bearer challenge and the token request.

    1. a request answers 401 with ``WWW-Authenticate: Bearer realm="<url>",service="<svc>",scope="<scope>"``
    2. ``GET <realm>?service=<svc>&scope=<each scope>&ts=<unix>&nonce=<16 random bytes, base64url>``; the realm's
       host must be the registry's own host
    3. with an Ed25519 key file (``~/.ollama/id_ed25519``, OpenSSH format) the request carries
       ``Authorization: <ssh public key blob, base64>:<signature, base64>`` over
       ``GET,<realm URL with query>,<base64(hex(sha256("")))>``; without one it is anonymous
    4. ``{"token": "..."}`` (or ``access_token``) → ``Authorization: Bearer <token>`` on the retried request
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from caravan.errors import Unauthorized, UpstreamError

log = logging.getLogger(__name__)

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))')
_EMPTY_SHA = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()


@dataclass(frozen=True)
class Challenge:
    realm: str
    service: str = ""
    scope: str = ""


def parse_challenge(header: str) -> Challenge | None:
    """The bearer challenge in a ``WWW-Authenticate`` header; ``None`` for other schemes."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params = {key.lower(): quoted or bare for key, quoted, bare in _PARAM.findall(rest)}
    if not params.get("realm"):
        return None
    return Challenge(params["realm"], params.get("service", ""), params.get("scope", ""))


def token_url(challenge: Challenge, registry_host: str) -> str:
    """The realm URL with Ollama's query (service, scopes, ts, nonce); the realm must be on ``registry_host``."""
    parts = urlsplit(challenge.realm)
    if (parts.hostname or "").lower() != registry_host.lower():
        raise Unauthorized(f'realm host "{parts.hostname}" does not match original host "{registry_host}"')
    query: list[tuple[str, str]] = [("service", challenge.service)]
    query += [("scope", scope) for scope in challenge.scope.split(" ") if scope]
    nonce = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    query += [("ts", str(int(time.time()))), ("nonce", nonce)]
    joined = "&".join(filter(None, [parts.query, urlencode(query)]))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))


class Signer:
    """Signs token requests with an Ed25519 key in OpenSSH format (Ollama's ``id_ed25519``)."""

    def __init__(self, key_file: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_ssh_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise Unauthorized(f"{key_file} is not an Ed25519 key")
        self._key = key
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        self.public_blob = public.split()[1].decode()

    def authorization(self, url: str) -> str:
        """The ``Authorization`` header value for ``GET url``."""
        signature = self._key.sign(f"GET,{url},{_EMPTY_SHA}".encode())
        return f"{self.public_blob}:{base64.b64encode(signature).decode()}"


def load_signer(key_file: Path | None) -> Signer | None:
    """A signer when ``key_file`` exists (and can be read); anonymous token requests otherwise."""
    if key_file is None or not key_file.is_file():
        return None
    try:
        return Signer(key_file)
    except (ImportError, ValueError, OSError) as exc:
        log.warning("registry key %s unusable (%s): token requests are anonymous", key_file, exc)
        return None


async def fetch_token(http: httpx.AsyncClient, challenge: Challenge, registry_host: str,
                      signer: Signer | None) -> str:
    """Ask the realm for a bearer token."""
    url = token_url(challenge, registry_host)
    headers = {"Authorization": signer.authorization(url)} if signer else {}
    try:
        response = await http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"token request to {challenge.realm} failed: {exc}") from None
    if response.status_code >= 400:
        raise Unauthorized(f"unauthorized: token request answered {response.status_code}: {response.text.strip()}")
    try:
        data = response.json()
    except ValueError:
        raise Unauthorized("unauthorized: token response is not JSON") from None
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    if not token:
        raise Unauthorized("unauthorized: token response has no token")
    return str(token)
