"""Per-key limits in Redis (atomic Lua), request body size, and per-role caps on a job's options.

    requests_per_minute  caravan:rl:{key}        INCR in a window that starts with the key's first request
                                                 (PEXPIRE 60 s); over the limit → 429, Retry-After = window left
    max_concurrent       caravan:inflight:{key}  zset of request leases → expiry; a lease is taken before the
                                                 body is read and dropped when the response ends (a crashed
                                                 gateway's leases expire after ``stream_lease``) → 429
    tokens_per_day       caravan:tokens:{key}:{day}  checked before a request, added when it finishes
                                                 (``gateway.usage``) → 429, Retry-After = seconds to UTC midnight

Caps (``CARAVAN_{USER,ADMIN}_MAX_NUM_PREDICT`` / ``_NUM_CTX``) clamp rather than reject: clients such as the
OpenAI SDKs send large ``max_tokens`` by habit, and a shorter answer is more useful than a 400.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from starlette.types import Message, Receive

from caravan import keys
from caravan.errors import ClientClosed, PayloadTooLarge, TooManyRequests
from caravan.queue import InferenceJob
from caravan.settings import GatewaySettings
from gateway.auth import Principal, principal

WINDOW_MS = 60_000

# KEYS[1] window counter; ARGV limit, window ms. Returns the new count, or -(ms left) when full.
RATE_SCRIPT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return -math.max(1, redis.call('PTTL', KEYS[1])) end
n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""

# KEYS[1] lease zset; ARGV limit, now, lease expiry, lease id, key ttl s. Returns 1 taken, 0 full.
LEASE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def utc_day(epoch: float | None = None) -> str:
    """``yyyymmdd`` of a UTC day."""
    return dt.datetime.fromtimestamp(time.time() if epoch is None else epoch, dt.UTC).strftime("%Y%m%d")


def seconds_to_midnight(now: float | None = None) -> float:
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    midnight = (moment + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - moment).total_seconds()


class Limiter:
    """The three per-key limits."""

    def __init__(self, redis: Redis, lease_seconds: float) -> None:
        self.redis = redis
        self.lease_seconds = lease_seconds
        self._scripts: dict[str, AsyncScript] = {}

    async def _eval(self, script: str, key: str, *args: float | str) -> int:
        """Run a one-key Lua script (EVALSHA, loading the script when Redis does not know it yet)."""
        if script not in self._scripts:
            self._scripts[script] = self.redis.register_script(script)
        return int(await self._scripts[script](keys=[key], args=[str(a) for a in args]))

    async def count_request(self, who: Principal) -> None:
        """One more request in the key's minute; 429 when the window is full."""
        limit = who.limits.requests_per_minute
        if limit is None or not who.key_id:
            return
        result = int(await self._eval(RATE_SCRIPT, keys.rate_window(who.key_id), limit, WINDOW_MS))
        if result < 0:
            raise TooManyRequests(f"rate limit exceeded: {limit} requests per minute", retry_after=-result / 1000)

    async def check_tokens(self, who: Principal) -> None:
        """429 when the key used up today's tokens."""
        limit = who.limits.tokens_per_day
        if limit is None or not who.key_id:
            return
        used = int(await self.redis.get(keys.daily_tokens(who.key_id, utc_day())) or 0)
        if used >= limit:
            raise TooManyRequests(f"token limit exceeded: {limit} tokens per day",
                                  retry_after=seconds_to_midnight())

    async def acquire(self, who: Principal) -> str | None:
        """Take an in-flight lease (its id, for :meth:`release`); 429 when the key has ``max_concurrent``."""
        limit = who.limits.max_concurrent
        if limit is None or not who.key_id:
            return None
        lease, now = uuid.uuid4().hex, time.time()
        taken = await self._eval(LEASE_SCRIPT, keys.in_flight(who.key_id), limit, now, now + self.lease_seconds,
                                 lease, int(self.lease_seconds) + 60)
        if not taken:
            raise TooManyRequests(f"concurrency limit exceeded: {limit} requests in flight", retry_after=1)
        return lease

    async def release(self, who: Principal, lease: str | None) -> None:
        if lease is not None:
            await self.redis.zrem(keys.in_flight(who.key_id), lease)


# ---------------------------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------------------------


def declared_length(headers: dict[str, str]) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body too large: the limit is {limit} bytes")


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes (413 beyond); a client that leaves raises 499."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosed("request canceled")
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit and size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A ``receive`` that yields the buffered body once, then defers to the client (disconnects)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


# ---------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------


def caps_for(who: Principal, settings: GatewaySettings) -> tuple[int, int]:
    """``(max num_predict, max num_ctx)`` of the caller's role; 0 is no cap."""
    if who.is_admin:
        return settings.admin_max_num_predict, settings.admin_max_num_ctx
    return settings.user_max_num_predict, settings.user_max_num_ctx


def apply_policy(job: InferenceJob, settings: GatewaySettings) -> None:
    """Stamp the caller on the job (fair sharing, usage) and clamp ``num_predict`` / ``num_ctx`` to its role."""
    who = principal()
    job.user, job.priority = who.name, who.priority
    max_predict, max_ctx = caps_for(who, settings)
    value = job.options.get("num_predict")
    predict = -1 if value is None else int(value)
    if max_predict and (predict < 0 or predict > max_predict):
        job.options["num_predict"] = max_predict
    if max_ctx and job.spec.num_ctx > max_ctx:
        job.spec = job.spec.model_copy(update={"num_ctx": max_ctx})
