"""Key store, authenticator, limits and usage against a real Redis (the session's redis-server)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from caravan import keys
from caravan.errors import BadRequest, ClientClosed, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized
from caravan.queue import Event, InferenceJob, LoadSpec
from caravan.settings import GatewaySettings
from caravan.wire.auth import KeyCreate, Limits
from gateway.auth import ANONYMOUS, Authenticator, KeyStore, Principal, current_principal, principal
from gateway.limits import Limiter, apply_policy, read_body, replay, seconds_to_midnight, utc_day
from gateway.usage import Tally, UsageBook, UsageMetrics, current_tally, date_range, day_rows, note_event

MODEL = "smollm2:135m"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def limited(**limits: int) -> Principal:
    return Principal(name="u", role="user", key_id="t" + secrets.token_hex(6), limits=Limits(**limits))


# -- key store and authentication --------------------------------------------------------------------------


async def test_keys_are_stored_hashed_listed_and_revoked(redis: Redis) -> None:
    store = KeyStore(redis)
    name = "ann-" + secrets.token_hex(3)
    created = await store.create(KeyCreate(name=name, models=[MODEL], priority=2, limits=Limits(tokens_per_day=9)))
    assert created.key.startswith("cvn_") and len(created.key) > 40
    dump = [await redis.dump(k) for k in await redis.keys("caravan:apikey*")]
    assert not any(created.key.encode() in (value or b"") for value in dump), "the secret is never stored"
    who = await store.lookup(created.key)
    assert who is not None and (who.name, who.role, who.models, who.priority) == (name, "user", (MODEL,), 2)
    assert who.limits.tokens_per_day == 9 and await store.lookup(created.key + "x") is None
    assert any(info.id == created.id and info.last_used is None for info in await store.list())
    assert (await store.revoke(name)).id == created.id  # by its (unique) name
    assert await store.lookup(created.key) is None
    with pytest.raises(NotFound):
        await store.revoke(created.id)


async def test_revoking_an_ambiguous_name_needs_the_id(redis: Redis) -> None:
    store = KeyStore(redis)
    name = "twin-" + secrets.token_hex(3)
    first, _ = await store.create(KeyCreate(name=name)), await store.create(KeyCreate(name=name))
    with pytest.raises(BadRequest, match="by its id"):
        await store.revoke(name)
    await store.revoke(first.id)
    await store.revoke(name)


async def test_authenticator(redis: Redis) -> None:
    store = KeyStore(redis)
    boot_key = "boot-" + secrets.token_hex(4)
    auth = Authenticator(GatewaySettings(admin_key=boot_key), store)
    assert await Authenticator(GatewaySettings(), store).authenticate({}) is ANONYMOUS
    with pytest.raises(Unauthorized):
        await auth.authenticate({})
    with pytest.raises(Unauthorized, match="invalid"):
        await auth.authenticate({"authorization": "Bearer ollama"})
    boot = await auth.authenticate({"authorization": f"Bearer {boot_key}"})
    assert boot.is_admin and boot.name == "admin"
    created = await store.create(KeyCreate(name="kim-" + secrets.token_hex(3)))
    who = await auth.authenticate({"x-api-key": created.key})
    assert who.key_id == created.id and not who.is_admin
    assert next(i for i in await store.list() if i.id == created.id).last_used is not None


# -- limits ------------------------------------------------------------------------------------------------


async def test_requests_per_minute(redis: Redis) -> None:
    limiter, who = Limiter(redis, 60), limited(requests_per_minute=2)
    await limiter.count_request(who)
    await limiter.count_request(who)
    with pytest.raises(TooManyRequests) as caught:
        await limiter.count_request(who)
    assert caught.value.headers is not None and 1 <= int(caught.value.headers["Retry-After"]) <= 60
    assert int(await redis.get(keys.rate_window(who.key_id)) or 0) == 2, "refusals are not counted"
    await limiter.count_request(limited())  # no limit: nothing to count
    await limiter.count_request(ANONYMOUS)


async def test_concurrency_leases(redis: Redis) -> None:
    limiter, who = Limiter(redis, 60), limited(max_concurrent=1)
    lease = await limiter.acquire(who)
    with pytest.raises(TooManyRequests, match="concurrency"):
        await limiter.acquire(who)
    await limiter.release(who, lease)
    await limiter.release(who, await limiter.acquire(who))
    assert await limiter.acquire(limited()) is None


async def test_a_crashed_gateways_lease_expires(redis: Redis) -> None:
    who = limited(max_concurrent=1)
    await Limiter(redis, lease_seconds=-1).acquire(who)  # never released, already past its expiry
    assert await Limiter(redis, 60).acquire(who) is not None


async def test_tokens_per_day(redis: Redis) -> None:
    limiter, who = Limiter(redis, 60), limited(tokens_per_day=10)
    await limiter.check_tokens(who)
    await redis.set(keys.daily_tokens(who.key_id, utc_day()), 10)
    with pytest.raises(TooManyRequests, match="tokens per day") as caught:
        await limiter.check_tokens(who)
    assert caught.value.headers is not None and 1 <= int(caught.value.headers["Retry-After"]) <= 86400


def test_day_arithmetic() -> None:
    noon = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC).timestamp()
    assert utc_day(noon) == "20250301" and seconds_to_midnight(noon) == 12 * 3600


async def test_bodies_are_limited_and_replayed() -> None:
    messages = [{"type": "http.request", "body": b"abc", "more_body": True},
                {"type": "http.request", "body": b"def", "more_body": False}]

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    assert await read_body(receive, 6) == b"abcdef"
    again = replay(b"abcdef", receive)
    assert (await again())["body"] == b"abcdef" and (await again())["type"] == "http.disconnect"
    messages[:] = [{"type": "http.request", "body": b"x" * 7}]
    with pytest.raises(PayloadTooLarge):
        await read_body(receive, 6)
    with pytest.raises(ClientClosed):
        await read_body(receive, 6)


def _job(num_predict: int | None = None, num_ctx: int = 8192) -> InferenceJob:
    options = {} if num_predict is None else {"num_predict": num_predict}
    spec = LoadSpec(model=MODEL, blob="sha256:" + "a" * 64, num_ctx=num_ctx)
    return InferenceJob(id="j", op="generate", model=MODEL, spec=spec, options=options)


@pytest.mark.parametrize(("asked", "capped"), [(None, 100), (-1, 100), (50, 50), (500, 100)])
def test_role_caps_clamp(asked: int | None, capped: int) -> None:
    settings = GatewaySettings(user_max_num_predict=100, user_max_num_ctx=2048)
    token = current_principal.set(Principal(name="zoe", role="user", key_id="k", priority=4))
    try:
        job = _job(asked)
        apply_policy(job, settings)
    finally:
        current_principal.reset(token)
    assert (job.user, job.priority, job.options["num_predict"], job.spec.num_ctx) == ("zoe", 4, capped, 2048)
    assert job.spec.key != _job(asked).spec.key, "a clamped num_ctx is another queue"


def test_admins_and_anonymous_are_not_capped_by_default() -> None:
    job = _job(500)
    apply_policy(job, GatewaySettings(user_max_num_predict=100))
    assert principal() is ANONYMOUS and (job.user, job.options["num_predict"], job.spec.num_ctx) == (
        "anonymous", 500, 8192)


# -- usage -------------------------------------------------------------------------------------------------


def test_done_events_fill_the_tally() -> None:
    tally = Tally(user="u")
    job = _job()
    token = current_tally.set(tally)
    try:
        note_event(job, Event(t="tok", text="x"))
        note_event(job, Event(t="done", done_reason="load", stats={"prompt_eval_count": 9}))
        note_event(job, Event(t="done", done_reason="stop", stats={"prompt_eval_count": 7, "eval_count": 3}))
    finally:
        current_tally.reset(token)
    note_event(job, Event(t="done", stats={"eval_count": 1}))  # outside a request: ignored
    assert tally.pending == [(MODEL, 7, 3)] and (tally.prompt_tokens, tally.completion_tokens) == (7, 3)


async def test_usage_is_written_and_reported(redis: Redis) -> None:
    metrics = UsageMetrics(CollectorRegistry())
    book = UsageBook(redis, metrics, retention_days=30)
    user, key_id = "ivy-" + secrets.token_hex(3), "t" + secrets.token_hex(6)
    tally = Tally(user=user, key_id=key_id)
    tally.add(MODEL, 10, 5)
    tally.add(MODEL, 2, 1)
    tally.add("ns/other:1b", 4, 0)
    await book.flush(tally)
    await book.flush(tally)  # nothing pending: nothing added twice
    today = dt.datetime.now(dt.UTC).date()
    rows = (await book.report(today, today, user=user)).usage
    assert [(r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.total_tokens) for r in rows] == [
        ("ns/other:1b", 1, 4, 0, 4), (MODEL, 2, 12, 6, 18)]
    assert [r.model for r in (await book.report(today, today, user=user, model=MODEL)).usage] == [MODEL]
    assert int(await redis.get(keys.daily_tokens(key_id, utc_day())) or 0) == 22
    assert 0 < await redis.ttl(keys.usage(utc_day())) <= 30 * 86400
    assert metrics.tokens.labels(user, MODEL, "prompt")._value.get() == 12


def test_day_rows_and_ranges() -> None:
    raw = {b"u|registry.example:5000/a/b:c|requests": b"2", b"u|registry.example:5000/a/b:c|prompt_tokens": b"5",
           b"u|m|bogus": b"1"}
    (row,) = day_rows("2025-01-02", raw)
    assert (row.user, row.model, row.requests, row.prompt_tokens, row.total_tokens) == (
        "u", "registry.example:5000/a/b:c", 2, 5, 5)
    first, last = date_range(None, "2025-01-31")
    assert (first, last) == (dt.date(2025, 1, 2), dt.date(2025, 1, 31))
    assert date_range("20250101", "20250101") == (dt.date(2025, 1, 1), dt.date(2025, 1, 1))
    for bad in (("2025-02-01", "2025-01-01"), ("yesterday", None), ("2020-01-01", "2025-01-01")):
        with pytest.raises(BadRequest):
            date_range(*bad)
