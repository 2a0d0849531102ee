"""Usage accounting: tokens and requests by user and model per UTC day, in Redis and in Prometheus.

A request's ``Tally`` (a context variable the guard sets) is fed by the reply reader with every job's
``done`` event (``note_event``: prompt_eval_count, eval_count) and written by the guard before the next byte
of the response leaves, so a client that has read the final chunk can already see its usage:

    HINCRBY caravan:usage:{yyyymmdd} "{user}|{model}|requests" 1   (and …|prompt_tokens, …|completion_tokens)
    INCRBY  caravan:tokens:{key id}:{yyyymmdd} prompt+completion   (the key's daily token limit)

    caravan_user_requests_total{user,model}        counter  finished inference requests
    caravan_user_tokens_total{user,model,kind}     counter  kind = prompt | completion
    caravan_user_rejected_total{user,status}       counter  401/403/413/429 answered by the guard

Labels carry the user's name, never a key. Load-only requests (``done_reason`` load/unload) are not counted;
a generation the client abandoned before its ``done`` event is not counted either.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from caravan import keys
from caravan.errors import BadRequest
from caravan.queue import Event, InferenceJob
from caravan.wire.auth import UsageReport, UsageRow
from gateway.limits import utc_day

KINDS = ("requests", "prompt_tokens", "completion_tokens")
MAX_DAYS = 400
TOKEN_TTL = 2 * 86400


@dataclass
class Tally:
    """What one HTTP request used; ``pending`` holds finished jobs not yet written."""

    user: str
    key_id: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    pending: list[tuple[str, int, int]] = field(default_factory=list)

    def add(self, model: str, prompt: int, completion: int) -> None:
        self.model = model
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.pending.append((model, prompt, completion))


current_tally: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("usage_tally", default=None)


def note_event(job: InferenceJob, event: Event) -> None:
    """Called for every reply event: a ``done`` adds the job's tokens to the request's tally."""
    if event.t != "done" or event.done_reason in ("load", "unload"):
        return
    tally = current_tally.get()
    if tally is not None:
        stats = event.stats or {}
        tally.add(job.spec.model, int(stats.get("prompt_eval_count") or 0), int(stats.get("eval_count") or 0))


class UsageMetrics:
    """The per-user counters, on the gateway's ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("caravan_user_requests", "Finished inference requests by user and model",
                                ["user", "model"], registry=registry)
        self.tokens = Counter("caravan_user_tokens", "Tokens by user, model and kind (prompt, completion)",
                              ["user", "model", "kind"], registry=registry)
        self.rejected = Counter("caravan_user_rejected", "Requests the gateway refused (401/403/413/429)",
                                ["user", "status"], registry=registry)


class UsageBook:
    """Writes tallies and reads reports."""

    def __init__(self, redis: Redis, metrics: UsageMetrics, retention_days: int) -> None:
        self.redis = redis
        self.metrics = metrics
        self.retention = max(1, retention_days) * 86400

    async def flush(self, tally: Tally) -> None:
        """Write the tally's pending jobs (one MULTI)."""
        pending, tally.pending = tally.pending, []
        if not pending:
            return
        day = utc_day()
        async with self.redis.pipeline(transaction=True) as pipe:
            for model, prompt, completion in pending:
                for kind, amount in zip(KINDS, (1, prompt, completion), strict=True):
                    pipe.hincrby(keys.usage(day), f"{tally.user}|{model}|{kind}", amount)
                if tally.key_id:
                    pipe.incrby(keys.daily_tokens(tally.key_id, day), prompt + completion)
                    pipe.expire(keys.daily_tokens(tally.key_id, day), TOKEN_TTL)
            pipe.expire(keys.usage(day), self.retention)
            await pipe.execute()
        for model, prompt, completion in pending:
            self._count(tally.user, model, prompt, completion)

    def _count(self, user: str, model: str, prompt: int, completion: int) -> None:
        self.metrics.requests.labels(user, model).inc()
        self.metrics.tokens.labels(user, model, "prompt").inc(prompt)
        self.metrics.tokens.labels(user, model, "completion").inc(completion)

    async def report(self, start: dt.date, end: dt.date, user: str | None = None,
                     model: str | None = None) -> UsageReport:
        """Rows per day, user and model (oldest first), optionally for one user or model."""
        days = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(keys.usage(day.strftime("%Y%m%d")))
            found = await pipe.execute()
        rows: list[UsageRow] = []
        for day, raw in zip(days, found, strict=True):
            rows += [row for row in day_rows(day.isoformat(), raw)
                     if (user is None or row.user == user) and (model is None or row.model == model)]
        return UsageReport(start=start.isoformat(), to=end.isoformat(), usage=rows)


def day_rows(date: str, raw: dict[bytes, bytes]) -> list[UsageRow]:
    """One day's hash as rows (fields ``user|model|kind``; user names never hold ``|``)."""
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for name, value in raw.items():
        user, _, rest = name.decode().partition("|")
        model, _, kind = rest.rpartition("|")
        if kind in KINDS:
            counts[(user, model)][kind] = int(value)
    rows = [UsageRow(date=date, user=user, model=model, **values) for (user, model), values in sorted(counts.items())]
    for row in rows:
        row.total_tokens = row.prompt_tokens + row.completion_tokens
    return rows


def parse_day(raw: str | None, default: dt.date) -> dt.date:
    """``YYYY-MM-DD`` or ``YYYYMMDD``; 400 otherwise."""
    if not raw:
        return default
    try:
        return dt.date.fromisoformat(raw) if "-" in raw else dt.datetime.strptime(raw, "%Y%m%d").date()
    except ValueError:
        raise BadRequest(f"invalid date {raw!r}: use YYYY-MM-DD") from None


def date_range(start: str | None, end: str | None) -> tuple[dt.date, dt.date]:
    """The report's days: ``to`` defaults to today (UTC), ``from`` to 29 days before ``to``."""
    last = parse_day(end, dt.datetime.now(dt.UTC).date())
    first = parse_day(start, last - dt.timedelta(days=29))
    if first > last:
        raise BadRequest("'from' is after 'to'")
    if (last - first).days >= MAX_DAYS:
        raise BadRequest(f"at most {MAX_DAYS} days per report")
    return first, last
