"""Fair sharing of a model's queue between users (issue 6): one stream per user, picked in turn.

    gateway:  SUBMIT   one script: a worker waits for this spec with a free slot and nobody is queued →
                       hand the request to it (XADD its inbox + the request's ``start`` event); else sum the
                       active users' XLEN (the depth) → full? refuse : ZADD the user to caravan:qusers:{spec},
                       HSET its weight, XADD caravan:q:{spec}:u:{user}, XADD the doorbell
    worker:   TAKE     one script: XLEN of the worker's private queue and of every active user's stream; when
                       no more streams hold requests than the worker has free slots, claim one from each at
                       once (no choice to make), and when nothing is left waiting and slots are still free,
                       say how many (caravan:idle:{spec}: that many hand-offs); else return what waits, and
              StrideOrder picks the users with the least service per weight (here, in Python), then
              CLAIM    one script: XREADGROUP COUNT 1 on exactly those streams
              Claiming = read, XACK + XDEL, and XADD the ``start`` event to the request's reply stream, unless
              it was cancelled meanwhile. Idle workers block on the doorbell and their inbox (:class:`Mailbox`).

The request path is latency-bound (each hop between processes costs ~0.2-0.5 ms here, more when the CPUs
were idle), so a request that finds a worker waiting costs one round trip from gateway to worker: the enqueue
script itself hands it over, already started, and the worker's blocking read returns it (no doorbell, no
claim). A request that has to wait costs one round trip to enqueue and one to claim. Each script is atomic: an
entry is acknowledged and its ``start`` written in the same step that reads (or hands) it, so a worker that
dies never leaves a request pending nor one that the gateway does not know it took. A hand-off happens only
when nobody is queued, so it never overtakes anyone; a worker says how many slots it has free and gets at
most that many; one that stops renewing its word (every ``RENEW_EVERY`` s: dead or stuck) gets nothing
handed after ``IDLE_FRESH`` seconds, and a gateway that finds it dead drops its word at once (:func:`forget`).
One user's fifty queued requests cost another user's single request at most one turn per free slot. Order
within one user's stream is kept (FIFO).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.typing import KeyT, StreamIdT

from caravan import keys
from caravan.queue import Event, InferenceJob

ACTIVE_HORIZON = 900.0  # a user with no enqueue for this long drops out of the rotation
IDLE_FRESH = 3.0  # seconds an idle worker's word holds
RENEW_EVERY = 1.0  # ... which it renews (a take) at least this often while it waits
CLAIM_BLOCK_MS = 1000  # an idle worker's blocking read
START_FIELD = next(iter(Event(t="start").encode()))
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

# KEYS: users zset, weights hash, the user's stream, doorbell, idle workers zset, their start events hash
# ARGV: now, horizon, user, weight, max depth (0: none), user-stream prefix, group, idle since, preferred worker
# ('': any), inbox prefix, private-queue prefix ('': the preferred worker or nothing), reply stream, start field,
# reply TTL, then the entry's fields
# → the depth with the request, or {0, the start entry's id, the start event} when handed to a waiting worker;
# -1: the queue is full, -2: the preferred worker does not wait and its private queue was not wanted
_SUBMIT = _WAITING_USERS + """
local _, _, depth = waiting_users(KEYS[1], ARGV[1], ARGV[2], ARGV[6])
local prefer = ARGV[9]
if depth == 0 then
  local worker
  if prefer ~= '' then
    local since = redis.call('ZSCORE', KEYS[5], prefer)
    if since and tonumber(since) >= tonumber(ARGV[8]) then worker = prefer end
  else
    worker = redis.call('ZRANGEBYSCORE', KEYS[5], ARGV[8], '+inf', 'LIMIT', 0, 1)[1]
  end
  local start = worker and redis.call('HGET', KEYS[6], worker)
  if start then
    if redis.call('HINCRBY', KEYS[6], '#' .. worker, -1) <= 0 then
      redis.call('ZREM', KEYS[5], worker)
      redis.call('HDEL', KEYS[6], worker, '#' .. worker)
    end
    redis.call('XADD', ARGV[10] .. worker, 'MAXLEN', '~', '64', '*', unpack(ARGV, 15))
    redis.call('EXPIRE', ARGV[10] .. worker, 86400)  -- a worker gone for a day leaves no inbox behind
    local id = redis.call('XADD', ARGV[12], '*', ARGV[13], start)
    redis.call('EXPIRE', ARGV[12], ARGV[14])
    return {0, id, start}
  end
end
if prefer ~= '' then
  if ARGV[11] == '' then return -2 end
  local private = ARGV[11] .. prefer
  redis.pcall('XGROUP', 'CREATE', private, ARGV[7], '0', 'MKSTREAM')
  redis.call('XADD', private, '*', unpack(ARGV, 15))
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', '64', '*', 'w', prefer)
  return depth
end
local limit = tonumber(ARGV[5])
if limit > 0 and depth >= limit then return -1 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[7], '0', 'MKSTREAM')
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 15))
redis.call('XADD', KEYS[4], 'MAXLEN', '~', '64', '*', 'u', ARGV[3])
return depth + 1
"""

# A worker waits for a spec with ``free`` slots: that many hand-offs may come (renewed by its takes).
_REGISTER = """
local function unregister(idle, starts, worker)
  redis.call('ZREM', idle, worker)
  redis.call('HDEL', starts, worker, '#' .. worker)
end
local function register(idle, starts, worker, now, start, since, free)
  for _, stale in ipairs(redis.call('ZRANGEBYSCORE', idle, '-inf', '(' .. since)) do
    unregister(idle, starts, stale)
  end
  redis.call('ZADD', idle, now, worker)
  redis.call('HSET', starts, worker, start, '#' .. worker, free)
end
"""

# Claims one entry from each stream in the table ``streams``. ARGV: group, consumer, cancel-key prefix,
# reply-stream prefix, start event field, start event value, reply TTL → {stream, entry id, job json, cancelled}…
_CLAIM_STREAMS = """
local function claim(streams)
  local out, started = {}, 0
  if #streams == 0 then return out, started end
  local command = {'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', '1', 'STREAMS'}
  for _, stream in ipairs(streams) do table.insert(command, stream) end
  for _ in ipairs(streams) do table.insert(command, '>') end
  local reply = redis.call(unpack(command))
  if not reply then return out, started end
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
        started = started + 1
        redis.call('XADD', ARGV[4] .. id, '*', ARGV[5], ARGV[6])
        redis.call('EXPIRE', ARGV[4] .. id, ARGV[7])
      end
      table.insert(out, stream)
      table.insert(out, entry[1])
      table.insert(out, job)
      table.insert(out, cancelled)
    end
  end
  return out, started
end
"""

# KEYS: the streams to claim from
_CLAIM = _CLAIM_STREAMS + "return (claim(KEYS))"

# KEYS: users zset, weights hash, the worker's private stream, idle workers zset, their start events hash.
# ARGV: as _CLAIM, then now, horizon, user-stream prefix, free slots, idle since
# → {private length, {user, length, …}, {user, weight, …}, claimed (as _CLAIM) or nil}
_TAKE = _CLAIM_STREAMS + _WAITING_USERS + _REGISTER + """
local waiting, streams, depth = waiting_users(KEYS[1], ARGV[8], ARGV[9], ARGV[10])
local private = redis.call('XLEN', KEYS[3])
if private > 0 then table.insert(streams, 1, KEYS[3]) end
local weights = redis.call('HGETALL', KEYS[2])
local free = tonumber(ARGV[11])
unregister(KEYS[4], KEYS[5], ARGV[2])
if #streams > free then return {private, waiting, weights, false} end
local claimed, started = claim(streams)
if private + depth == #claimed / 4 and free > started then
  register(KEYS[4], KEYS[5], ARGV[2], ARGV[8], ARGV[6], ARGV[12], free - started)
end
return {private, waiting, weights, claimed}
"""

# KEYS: idle workers zset, their start events hash. ARGV: worker
_FORGET = _REGISTER + "unregister(KEYS[1], KEYS[2], ARGV[1])"

# KEYS: idle workers zset, their start events hash, the worker's inbox. ARGV: worker, last inbox id read, free
# slots → hand-offs it can take now: its free slots less those handed over and not read yet (when it waits)
_RECOUNT = _REGISTER + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
local left = tonumber(ARGV[3]) - #redis.call('XRANGE', KEYS[3], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
if left > 0 then redis.call('HSET', KEYS[2], '#' .. ARGV[1], left) else unregister(KEYS[1], KEYS[2], ARGV[1]) end
return left
"""

# KEYS: idle workers zset, their start events hash, the worker's inbox. ARGV: worker, last inbox id read
# → the inbox entries after it (handed over before the worker stopped waiting)
_RELEASE = _REGISTER + """
unregister(KEYS[1], KEYS[2], ARGV[1])
return redis.call('XRANGE', KEYS[3], '(' .. ARGV[2], '+')
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


@dataclass(frozen=True)
class Submitted:
    """Where a submitted request went."""

    depth: int  # waiting requests for its spec with it, over every user; 0: handed to a waiting worker
    start: tuple[bytes, dict[bytes, bytes]] | None = None  # that hand-off's ``start`` entry in the reply stream


async def submit(redis: Redis, job: InferenceJob, max_depth: int = 0, prefer: str | None = None,
                 private: bool = True) -> Submitted | None:
    """Hand ``job`` to a worker waiting for its spec, else put it on its user's queue and ring the spec's
    doorbell: one round trip.

    With ``prefer`` (session affinity) only that worker is handed the job, else it goes to that worker's private
    queue (when ``private``). Returns the spec's depth with the job and, when it was handed over, the ``start``
    entry written to its reply stream (entry id, fields: so the gateway need not read it back); None, enqueueing
    nothing, when ``max_depth`` requests were already waiting (the shared queue only) or the preferred worker
    does not wait and ``private`` is false.
    """
    spec, user, now = job.spec.key, safe_user(job.user), time.time()
    reply = await redis.register_script(_SUBMIT)(
        keys=[keys.queue_users(spec), keys.queue_weights(spec), keys.user_queue(spec, user), keys.bell(spec),
              keys.idle(spec), keys.idle_start(spec)],
        args=[now, ACTIVE_HORIZON, user, 1 + max(0, job.priority), max_depth, keys.user_queue(spec, ""),
              keys.GROUP, now - IDLE_FRESH, prefer or "", keys.inbox(spec, ""),
              keys.worker_queue(spec, "") if private else "",
              keys.reply(job.id), START_FIELD, keys.REPLY_TTL,
              *(part for item in job.encode().items() for part in item)],
    )
    if isinstance(reply, list):
        _, entry_id, start = reply
        return Submitted(0, (entry_id, {START_FIELD.encode(): start}))
    return None if int(reply) < 0 else Submitted(int(reply))


async def enqueue(redis: Redis, job: InferenceJob, max_depth: int = 0, prefer: str | None = None,
                  private: bool = True) -> int | None:
    """:func:`submit`, returning only the depth (0: handed over) or None."""
    submitted = await submit(redis, job, max_depth, prefer, private)
    return None if submitted is None else submitted.depth


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

    ``start`` is the encoded ``start`` event written to each claimed request's reply stream. When nothing is
    left waiting and slots are still free, the worker is marked idle: that many of the next requests are
    handed to it (:class:`Mailbox`), until its next take says otherwise.
    """
    now = time.time()
    reply = await redis.register_script(_TAKE)(
        keys=[keys.queue_users(spec_key), keys.queue_weights(spec_key), keys.worker_queue(spec_key, consumer),
              keys.idle(spec_key), keys.idle_start(spec_key)],
        args=[*_claim_args(consumer, start), now, ACTIVE_HORIZON, keys.user_queue(spec_key, ""), free,
              now - IDLE_FRESH],
    )
    return _pending(reply), None if reply[3] is None else _claimed(reply[3])


async def claim(redis: Redis, consumer: str, streams: list[str], start: dict[Any, Any]) -> list[Claimed]:
    """Take at most one request from each of ``streams`` (one round trip; see the module docstring)."""
    if not streams:
        return []
    return _claimed(await redis.register_script(_CLAIM)(keys=streams, args=_claim_args(consumer, start)))


async def forget(redis: Redis, spec_key: str, worker_id: str) -> None:
    """No more hand-offs to a worker found dead (its word would hold up to ``IDLE_FRESH`` seconds)."""
    await redis.register_script(_FORGET)(keys=[keys.idle(spec_key), keys.idle_start(spec_key)], args=[worker_id])


async def depth(redis: Redis, spec_key: str) -> int:
    """All requests waiting for a spec on the shared queues, over every user."""
    return sum((await pending(redis, spec_key)).waiting.values())


@dataclass
class Mail:
    """What woke a waiting worker."""

    jobs: list[InferenceJob]  # handed over: started already, this worker's to serve
    rang: bool  # the doorbell rang, or the wait timed out: take, to see what waits (and renew the word)


class Mailbox:
    """Where a worker with free slots waits for one spec: the doorbell (something was queued) and its inbox
    (requests the enqueue script handed to it, already started: the worker must serve them)."""

    def __init__(self, redis: Redis, spec_key: str, worker_id: str) -> None:
        self.redis = redis
        self.bell, self.inbox = keys.bell(spec_key), keys.inbox(spec_key, worker_id)
        self.idle, self.starts, self.worker_id = keys.idle(spec_key), keys.idle_start(spec_key), worker_id
        self.last: dict[KeyT, StreamIdT] = {self.bell: "0-0", self.inbox: "0-0"}

    async def open(self) -> None:
        """Wait from here on: what rang or was handed over before is not this worker's (a restarted worker
        with the same id must not serve requests the gateways already moved elsewhere)."""
        for stream in self.last:
            newest = await self.redis.xrevrange(stream, count=1)
            self.last[stream] = newest[0][0] if newest else "0-0"

    async def wait(self, block_ms: int = CLAIM_BLOCK_MS) -> Mail:
        """Block until the doorbell rings or requests are handed over (or ``block_ms`` passes)."""
        reply = await self.redis.xread(self.last, block=block_ms)
        mail = Mail(jobs=[], rang=not reply)
        for stream, entries in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            self.last[name] = entries[-1][0]
            if name == self.inbox:
                mail.jobs += [InferenceJob.decode(fields) for _, fields in entries]
            else:
                mail.rang = True
        return mail

    async def recount(self, free: int) -> None:
        """A slot came free while the worker waits: it can take one more hand-off than its word said."""
        await self.redis.register_script(_RECOUNT)(
            keys=[self.idle, self.starts, self.inbox], args=[self.worker_id, self.last[self.inbox], free])

    async def close(self) -> list[InferenceJob]:
        """Stop being handed requests; the ones handed over since the last :meth:`wait` (to serve them)."""
        entries = await self.redis.register_script(_RELEASE)(
            keys=[self.idle, self.starts, self.inbox], args=[self.worker_id, self.last[self.inbox]])
        if entries:
            self.last[self.inbox] = entries[-1][0]
        return [InferenceJob.decode(dict(zip(fields[::2], fields[1::2], strict=True))) for _, fields in entries]


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
