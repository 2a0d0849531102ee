"""Fair sharing of a model's queue between users (issue 6): one stream per user, picked in turn.

    gateway:  SUBMIT   one script: sum the active users' XLEN (the depth) → full? refuse : ZADD the user to
                       caravan:qusers:{spec}, HSET its weight, XADD caravan:q:{spec}:u:{user}, XADD the doorbell
    worker:   TAKE     one script: XLEN of the worker's private queue and of every active user's stream; when
                       no more streams hold requests than the worker has free slots, claim one from each at
                       once (no choice to make); else return what waits, and
              StrideOrder picks the users with the least service per weight (here, in Python), then
              CLAIM    one script: XREADGROUP COUNT 1 on exactly those streams
              Claiming = read, XACK + XDEL, and XADD the ``start`` event to the request's reply stream, unless
              it was cancelled meanwhile. Idle workers block on the doorbell.

The request path is latency-bound (each hop between processes costs ~0.2-0.5 ms here), so an uncontended
request costs one round trip to enqueue and one to claim. Each script is atomic: an entry is acknowledged and
its ``start`` written in the same step that reads it, so a worker that dies never leaves a request pending nor
one that the gateway does not know it took. One user's fifty queued requests cost another user's single
request at most one turn per free slot. Order within one user's stream is kept (FIFO).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from caravan import keys
from caravan.queue import InferenceJob

ACTIVE_HORIZON = 900.0  # a user with no enqueue for this long drops out of the rotation
_SAFE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

# The active users of a spec whose streams hold requests: {user, length, …}, their streams, the total.
_WAITING_USERS = """
local function waiting_users(users_key, now, horizon, prefix)
  local users = redis.call('ZRANGEBYSCORE', users_key, tonumber(now) - tonumber(horizon), '+inf')
  local waiting, streams, depth = {}, {}, 0
  for _, user in ipairs(users) do
    local n = redis.call('XLEN', prefix .. user)
    if n > 0 then
      table.insert(waiting, user); table.insert(waiting, n); table.insert(streams, prefix .. user)
      depth = depth + n
    end
  end
  return waiting, streams, depth
end
"""

# KEYS: users zset, weights hash, the user's stream, doorbell
# ARGV: now, horizon, user, weight, max depth (0: none), user-stream prefix, group, then the entry's fields
_SUBMIT = _WAITING_USERS + """
local _, _, depth = waiting_users(KEYS[1], ARGV[1], ARGV[2], ARGV[6])
local limit = tonumber(ARGV[5])
if limit > 0 and depth >= limit then return -1 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[7], '0', 'MKSTREAM')
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 8))
redis.call('XADD', KEYS[4], 'MAXLEN', '~', '64', '*', 'u', ARGV[3])
return depth + 1
"""

# Claims one entry from each stream in the table ``streams``. ARGV: group, consumer, cancel-key prefix,
# reply-stream prefix, start event field, start event value, reply TTL → {stream, entry id, job json, cancelled}…
_CLAIM_STREAMS = """
local function claim(streams)
  local out = {}
  if #streams == 0 then return out end
  local command = {'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', '1', 'STREAMS'}
  for _, stream in ipairs(streams) do table.insert(command, stream) end
  for _ in ipairs(streams) do table.insert(command, '>') end
  local reply = redis.call(unpack(command))
  if not reply then return out end
  for _, item in ipairs(reply) do
    local stream = item[1]
    for _, entry in ipairs(item[2]) do
      redis.call('XACK', stream, ARGV[1], entry[1])
      redis.call('XDEL', stream, entry[1])
      local fields, id, job = entry[2], '', ''
      for i = 1, #fields, 2 do
        if fields[i] == 'id' then id = fields[i + 1] elseif fields[i] == 'job' then job = fields[i + 1] end
      end
      local cancelled = redis.call('EXISTS', ARGV[3] .. id)
      if cancelled == 0 then
        redis.call('XADD', ARGV[4] .. id, '*', ARGV[5], ARGV[6])
        redis.call('EXPIRE', ARGV[4] .. id, ARGV[7])
      end
      table.insert(out, stream)
      table.insert(out, entry[1])
      table.insert(out, job)
      table.insert(out, cancelled)
    end
  end
  return out
end
"""

# KEYS: the streams to claim from
_CLAIM = _CLAIM_STREAMS + "return claim(KEYS)"

# KEYS: users zset, weights hash, the worker's private stream. ARGV: as _CLAIM, then now, horizon, user-stream
# prefix, free slots → {private length, {user, length, …}, {user, weight, …}, claimed (as _CLAIM) or nil}
_TAKE = _CLAIM_STREAMS + _WAITING_USERS + """
local waiting, streams = waiting_users(KEYS[1], ARGV[8], ARGV[9], ARGV[10])
local private = redis.call('XLEN', KEYS[3])
if private > 0 then table.insert(streams, 1, KEYS[3]) end
local weights = redis.call('HGETALL', KEYS[2])
if #streams > tonumber(ARGV[11]) then return {private, waiting, weights, false} end
return {private, waiting, weights, claim(streams)}
"""

# KEYS: users zset, weights hash, the worker's private stream
# ARGV: now, horizon, user-stream prefix → {private length, {user, length, ...}, {user, weight, ...}}
_PENDING = _WAITING_USERS + """
local waiting = waiting_users(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return {redis.call('XLEN', KEYS[3]), waiting, redis.call('HGETALL', KEYS[2])}
"""


def safe_user(user: str) -> str:
    """A user name fit for a Redis key (others are hex-encoded)."""
    return user if _SAFE.match(user) else "x" + user.encode().hex()[:120]


async def enqueue(redis: Redis, job: InferenceJob, max_depth: int = 0) -> int | None:
    """Put ``job`` on its user's queue and ring the spec's doorbell, in one round trip.

    Returns the spec's depth (waiting requests over every user) with the job, or None, enqueueing nothing,
    when ``max_depth`` requests were already waiting.
    """
    spec, user = job.spec.key, safe_user(job.user)
    depth = await redis.register_script(_SUBMIT)(
        keys=[keys.queue_users(spec), keys.queue_weights(spec), keys.user_queue(spec, user), keys.bell(spec)],
        args=[time.time(), ACTIVE_HORIZON, user, 1 + max(0, job.priority), max_depth, keys.user_queue(spec, ""),
              keys.GROUP, *(part for item in job.encode().items() for part in item)],
    )
    return None if int(depth) < 0 else int(depth)


@dataclass
class Pending:
    """What waits for a spec, as one worker sees it."""

    private: int = 0  # requests on the worker's private queue (session affinity)
    waiting: dict[str, int] = field(default_factory=dict)  # user → requests on the shared queue
    weights: dict[str, float] = field(default_factory=dict)


async def pending(redis: Redis, spec_key: str, worker_id: str = "") -> Pending:
    """Waiting requests per active user, their weights, and the worker's private queue length (one round trip)."""
    reply = await redis.register_script(_PENDING)(
        keys=[keys.queue_users(spec_key), keys.queue_weights(spec_key), keys.worker_queue(spec_key, worker_id)],
        args=[time.time(), ACTIVE_HORIZON, keys.user_queue(spec_key, "")],
    )
    return _pending(reply)


def _pending(reply: list[Any]) -> Pending:
    private, waiting, weights = reply[:3]
    return Pending(
        private=int(private),
        waiting={waiting[i].decode(): int(waiting[i + 1]) for i in range(0, len(waiting), 2)},
        weights={weights[i].decode(): float(weights[i + 1]) for i in range(0, len(weights), 2)},
    )


@dataclass
class Claimed:
    """One request a worker took off a queue (acknowledged and deleted there; ``start`` written unless cancelled)."""

    stream: str
    job: InferenceJob
    cancelled: bool

    @property
    def user(self) -> str | None:
        """The user whose shared queue it came from; None for a private queue."""
        return self.stream.rsplit(":u:", 1)[1] if ":u:" in self.stream else None


def _claim_args(consumer: str, start: dict[Any, Any]) -> list[Any]:
    (field_name, value), = start.items()
    return [keys.GROUP, consumer, keys.cancel(""), keys.reply(""), field_name, value, keys.REPLY_TTL]


def _claimed(flat: list[Any]) -> list[Claimed]:
    return [Claimed(flat[i].decode(), InferenceJob.model_validate_json(flat[i + 2]), bool(flat[i + 3]))
            for i in range(0, len(flat), 4)]


async def take(redis: Redis, spec_key: str, consumer: str, free: int,
               start: dict[Any, Any]) -> tuple[Pending, list[Claimed] | None]:
    """What waits for ``spec_key``, and the claimed requests when the worker could take every waiting stream's
    head (``free`` slots or more); None when it must choose (stride order) and :func:`claim`. One round trip.

    ``start`` is the encoded ``start`` event written to each claimed request's reply stream.
    """
    reply = await redis.register_script(_TAKE)(
        keys=[keys.queue_users(spec_key), keys.queue_weights(spec_key), keys.worker_queue(spec_key, consumer)],
        args=[*_claim_args(consumer, start), time.time(), ACTIVE_HORIZON, keys.user_queue(spec_key, ""), free],
    )
    return _pending(reply), None if reply[3] is None else _claimed(reply[3])


async def claim(redis: Redis, consumer: str, streams: list[str], start: dict[Any, Any]) -> list[Claimed]:
    """Take at most one request from each of ``streams`` (one round trip; see the module docstring)."""
    if not streams:
        return []
    return _claimed(await redis.register_script(_CLAIM)(keys=streams, args=_claim_args(consumer, start)))


async def depth(redis: Redis, spec_key: str) -> int:
    """All requests waiting for a spec on the shared queues, over every user."""
    return sum((await pending(redis, spec_key)).waiting.values())


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
