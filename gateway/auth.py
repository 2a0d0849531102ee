"""API keys: who is asking (``Principal``), the key store in Redis, and model allow-lists.

A key is ``cvn_`` + 32 random bytes (base64url). Only its sha256 is stored, as the name of the key's record
(``caravan:apikey:{sha256}``), so a lookup is one HGETALL and a dump of Redis reveals no usable key. A fast
hash is the right tool here: the secret has 256 bits of entropy, so no guessing attack exists for a slow KDF
(scrypt, argon2) to slow down, and a KDF would cost every request milliseconds of CPU. The stored digest is
still compared with ``hmac.compare_digest``. The bootstrap admin key (``CARAVAN_ADMIN_KEY``) is hashed at
start and never written anywhere.

Keys are read from ``Authorization: Bearer <key>`` (OpenAI SDKs, ``ollama.Client(headers=...)``, the
``caravan`` CLI) or ``X-Api-Key`` (Anthropic SDKs). When auth is off every caller is ``anonymous`` with the
admin role, as with Ollama.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import Redis

from caravan import keys
from caravan.errors import BadRequest, InvalidName, NotFound, Unauthorized
from caravan.names import ModelName
from caravan.settings import GatewaySettings
from caravan.wire.auth import KeyCreate, KeyCreated, KeyInfo, Limits, Role
from caravan.wire.status import rfc3339

KEY_PREFIX = "cvn_"
TOUCH_EVERY = 10.0  # last_used is written at most this often per key
UNAUTHORIZED = "unauthorized: a valid API key is required (send 'Authorization: Bearer <key>')"


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    name: str
    role: Role
    key_id: str = ""
    models: tuple[str, ...] | None = None  # allow-list; None: every model
    priority: int = 0
    limits: Limits = field(default_factory=Limits)
    last_used: float = 0.0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Principal(name="anonymous", role="admin")
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def principal() -> Principal:
    """The current request's caller (``anonymous`` outside a request or with auth off)."""
    return current_principal.get() or ANONYMOUS


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, if any."""
    value = headers.get("authorization", "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


# ---------------------------------------------------------------------------------------------------------
# Model allow-lists
# ---------------------------------------------------------------------------------------------------------


def _pattern_matches(pattern: str, name: ModelName) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        return ModelName.parse(pattern[:-2]).key().rsplit(":", 1)[0] == name.key().rsplit(":", 1)[0]
    return ModelName.parse(pattern).key() == name.key()


def model_allowed(allowed: tuple[str, ...] | None, model: str) -> bool:
    """Whether ``model`` (any spelling Ollama accepts) is on the allow-list; ``None`` allows every model."""
    if allowed is None:
        return True
    try:
        name = ModelName.parse(model)
    except InvalidName:
        return False
    return any(_pattern_matches(pattern, name) for pattern in allowed)


# ---------------------------------------------------------------------------------------------------------
# The key store
# ---------------------------------------------------------------------------------------------------------


def _record(key_id: str, spec: KeyCreate, digest: str) -> dict[str, str]:
    return {"id": key_id, "name": spec.name or f"key-{key_id}", "role": spec.role, "digest": digest,
            "models": json.dumps(spec.models), "priority": str(spec.priority),
            "limits": spec.limits.model_dump_json(exclude_none=True), "created": str(time.time())}


def _principal(record: dict[str, str]) -> Principal:
    models = json.loads(record.get("models") or "null")
    return Principal(name=record["name"], role="admin" if record.get("role") == "admin" else "user",
                     key_id=record["id"], models=None if models is None else tuple(models),
                     priority=int(record.get("priority") or 0),
                     limits=Limits.model_validate_json(record.get("limits") or "{}"),
                     last_used=float(record.get("last_used") or 0))


def _info(record: dict[str, str]) -> KeyInfo:
    who = _principal(record)
    last = float(record.get("last_used") or 0)
    return KeyInfo(id=who.key_id, name=who.name, role=who.role, models=None if who.models is None else list(who.models),
                   priority=who.priority, limits=who.limits, created_at=rfc3339(float(record.get("created") or 0)),
                   last_used=rfc3339(last) if last else None)


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class KeyStore:
    """API keys in Redis, shared by every gateway replica."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def create(self, spec: KeyCreate) -> KeyCreated:
        """A new key; the secret is in the answer and nowhere else."""
        secret, key_id = new_secret(), secrets.token_hex(6)
        digest = digest_of(secret)
        record = _record(key_id, spec, digest)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.api_key(digest), mapping=record)
            pipe.hset(keys.API_KEYS, key_id, digest)
            await pipe.execute()
        return KeyCreated(**_info(record).model_dump(), key=secret)

    async def lookup(self, secret: str) -> Principal | None:
        """The key's owner, or None for an unknown or revoked key."""
        digest = digest_of(secret)
        record = _decode(await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(keys.api_key(digest))))
        if not record or not hmac.compare_digest(record.get("digest", ""), digest):
            return None
        return _principal(record)

    async def touch(self, who: Principal, digest: str) -> None:
        """Note the key's last use (at most every ``TOUCH_EVERY`` seconds)."""
        now = time.time()
        if who.key_id and now - who.last_used >= TOUCH_EVERY:
            await cast(Awaitable[int], self.redis.hset(keys.api_key(digest), "last_used", str(now)))

    async def _records(self) -> list[dict[str, str]]:
        index = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(keys.API_KEYS))
        digests = [d.decode() for d in index.values()]
        async with self.redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.hgetall(keys.api_key(digest))
            found = await pipe.execute()
        return sorted((_decode(raw) for raw in found if raw), key=lambda r: float(r.get("created") or 0))

    async def list(self) -> list[KeyInfo]:
        return [_info(record) for record in await self._records()]

    async def revoke(self, ident: str) -> KeyInfo:
        """Revoke the key with id ``ident``, else the one key named ``ident``."""
        records = await self._records()
        matches = [r for r in records if r["id"] == ident] or [r for r in records if r["name"] == ident]
        if not matches:
            raise NotFound(f"API key '{ident}' not found")
        if len(matches) > 1:
            raise BadRequest(f"{len(matches)} API keys are named '{ident}': revoke one by its id")
        record = matches[0]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.api_key(record["digest"]))
            pipe.hdel(keys.API_KEYS, record["id"])
            await pipe.execute()
        return _info(record)


class Authenticator:
    """Turns a request's headers into a :class:`Principal` (or a 401)."""

    def __init__(self, settings: GatewaySettings, store: KeyStore) -> None:
        self.enabled = settings.auth_enabled
        bootstrap = settings.admin_key.get_secret_value()
        self._bootstrap = digest_of(bootstrap) if bootstrap else None
        self.store = store

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        secret = bearer(headers)
        if secret is None:
            raise Unauthorized(UNAUTHORIZED)
        if self._bootstrap and hmac.compare_digest(digest_of(secret), self._bootstrap):
            return Principal(name="admin", role="admin", key_id="bootstrap")
        who = await self.store.lookup(secret)
        if who is None:
            raise Unauthorized("unauthorized: invalid API key")
        await self.store.touch(who, digest_of(secret))
        return who
