"""Fair sharing of a model's queue between users (issue 6): one stream per user, picked in turn.

    gateway:  ZADD caravan:qusers:{spec} user → now;  HSET caravan:qweight:{spec} user → 1 + priority
              XADD caravan:q:{spec}:u:{user} job;     XADD caravan:bell:{spec} (the doorbell)
    worker:   XLEN every active user's stream → StrideOrder picks the users with the least service per
              weight → XREADGROUP COUNT 1 on exactly those streams → admit; idle workers block on the bell.

One user's fifty queued requests therefore cost another user's single request at most one turn per free slot.
Order within one user's stream is kept (FIFO).
"""

from __future__ import annotations

import re
import time
from typing import Any

from redis.asyncio import Redis

from caravan import keys
from caravan.queue import InferenceJob

ACTIVE_HORIZON = 900.0  # a user with no enqueue for this long drops out of the rotation
_SAFE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def safe_user(user: str) -> str:
    """A user name fit for a Redis key (others are hex-encoded)."""
    return user if _SAFE.match(user) else "x" + user.encode().hex()[:120]


async def enqueue(redis: Redis, job: InferenceJob) -> None:
    """Put ``job`` on its user's queue and ring the spec's doorbell (one round trip)."""
    spec, user = job.spec.key, safe_user(job.user)
    stream = keys.user_queue(spec, user)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.queue_users(spec), {user: time.time()})
        pipe.hset(keys.queue_weights(spec), user, str(1 + max(0, job.priority)))
        pipe.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
        pipe.xadd(stream, job.encode())
        pipe.xadd(keys.bell(spec), {"u": user}, maxlen=64, approximate=True)
        await pipe.execute(raise_on_error=False)


async def active_users(redis: Redis, spec_key: str) -> list[str]:
    raw = await redis.zrangebyscore(keys.queue_users(spec_key), time.time() - ACTIVE_HORIZON, "+inf")
    return [user.decode() for user in raw]


async def pending(redis: Redis, spec_key: str) -> tuple[dict[str, int], dict[str, float]]:
    """Waiting requests per active user, and each user's weight."""
    users = await active_users(redis, spec_key)
    async with redis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.xlen(keys.user_queue(spec_key, user))
        pipe.hgetall(keys.queue_weights(spec_key))
        *lengths, weights = await pipe.execute()
    waiting = {user: int(n) for user, n in zip(users, lengths, strict=True) if n}
    return waiting, {k.decode(): float(v) for k, v in weights.items()}


async def depth(redis: Redis, spec_key: str) -> int:
    """All requests waiting for a spec, over every user."""
    waiting, _ = await pending(redis, spec_key)
    return sum(waiting.values())


class StrideOrder:
    """Stride scheduling: each user's ``pass`` grows by 1/weight per request served; least pass goes first.

    A user who (re)joins starts at the smallest pass among waiting users, so idle time earns no burst; on a tie
    the user served fewer times goes first (a newcomer is not made to wait behind a flood's next request).
    """

    def __init__(self) -> None:
        self.passes: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def order(self, waiting: dict[str, Any]) -> list[str]:
        floor = min((self.passes[u] for u in waiting if u in self.passes), default=0.0)
        for user in waiting:
            self.passes[user] = max(self.passes.get(user, floor), floor)
        return sorted(waiting, key=lambda user: (self.passes[user], self.counts.get(user, 0), user))

    def served(self, user: str, weight: float) -> None:
        self.passes[user] = self.passes.get(user, 0.0) + 1.0 / max(weight, 1e-6)
        self.counts[user] = self.counts.get(user, 0) + 1
