"""Fair sharing: stride order in isolation, and a worker with a fake engine draining a flood on real Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from caravan import fairqueue, keys
from caravan.fairqueue import StrideOrder, safe_user
from caravan.queue import Event, InferenceJob, LoadSpec
from caravan.settings import WorkerSettings
from worker.engine.base import FirstToken
from worker.engine.fake import FakeEngine
from worker.runner import Worker


def test_stride_alternates_between_users() -> None:
    order = StrideOrder()
    served = []
    for _ in range(6):
        user = order.order({"a": 50, "b": 1})[0]
        order.served(user, 1.0)
        served.append(user)
    assert served[:2] in (["a", "b"], ["b", "a"]) and served.count("b") == 3


def test_stride_respects_weight() -> None:
    order = StrideOrder()
    served = []
    for _ in range(9):
        user = order.order({"gold": 9, "basic": 9})[0]
        order.served(user, {"gold": 2.0, "basic": 1.0}[user])
        served.append(user)
    assert served.count("gold") == 6 and served.count("basic") == 3


def test_newcomer_gets_no_burst_credit() -> None:
    order = StrideOrder()
    for _ in range(10):
        order.served(order.order({"a": 1})[0], 1.0)
    assert order.order({"a": 1, "late": 5})[0] == "late", "level with a, and served fewer times"
    order.served("late", 1.0)
    assert order.order({"a": 1, "late": 5})[0] == "a", "late starts level with a, not 10 turns ahead"


@pytest.mark.parametrize(("user", "safe"), [("alice", "alice"), ("a b", "x612062"), ("ü", "xc3bc")])
def test_safe_user(user: str, safe: str) -> None:
    assert safe_user(user) == safe


async def test_flooding_user_does_not_starve_another(redis_url: str, tmp_path: Path) -> None:
    """One slot; user A queues 20 requests, then B queues 1: B is served within two admissions."""
    redis = Redis.from_url(redis_url)
    spec = LoadSpec(model="fake", blob="sha256:" + "f" * 64, num_ctx=64 + len(str(tmp_path)) % 7)
    settings = WorkerSettings(worker_id="fair-worker", redis_url=redis_url, cache_dir=tmp_path)

    async def engine(loaded: LoadSpec) -> FakeEngine:
        return FakeEngine(loaded, delay=0.001)

    def job(user: str, n: int) -> InferenceJob:
        return InferenceJob(id=f"{user}-{n}-{spec.key}", op="generate", model="fake", spec=spec, user=user,
                            options={"num_predict": 2}, prompt="x")

    for n in range(20):
        await fairqueue.enqueue(redis, job("a", n))
    await fairqueue.enqueue(redis, job("b", 0))
    worker = Worker(settings, redis, engine)
    await worker.load(spec)
    ids = [f"a-{n}-{spec.key}" for n in range(20)] + [f"b-0-{spec.key}"]
    starts: dict[str, tuple[int, int]] = {}
    for rid in ids:
        reply = await redis.xread({keys.reply(rid): "0-0"}, block=10000)
        assert reply, f"{rid} was never served"
        ms, seq = reply[0][1][0][0].decode().split("-")
        starts[rid] = (int(ms), int(seq))
    order = [rid.split("-")[0] for rid, _ in sorted(starts.items(), key=lambda kv: kv[1])]
    assert order.index("b") <= 1, f"b waited behind {order.index('b')} of a's requests"
    await worker.drain()
    await redis.aclose()


def _spec(tag: str) -> LoadSpec:
    return LoadSpec(model="fake", blob="sha256:" + "e" * 64, num_ctx=100 + sum(map(ord, tag)) % 1000)


def _job(spec: LoadSpec, user: str, n: int) -> InferenceJob:
    return InferenceJob(id=f"{user}-{n}-{spec.key}", op="generate", model="fake", spec=spec, user=user, prompt="x")


async def test_enqueue_counts_the_depth_and_refuses_past_the_limit(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("limit")
    assert [await fairqueue.enqueue(redis, _job(spec, u, 0), max_depth=2) for u in ("a", "b", "a")] == [1, 2, None]
    assert await fairqueue.enqueue(redis, _job(spec, "c", 0), max_depth=2) is None, "refused: nothing queued"
    assert await redis.xlen(keys.user_queue(spec.key, "c")) == 0
    assert await fairqueue.depth(redis, spec.key) == 2
    assert await redis.xlen(keys.bell(spec.key)) == 2, "the doorbell rang once per queued request"
    await redis.aclose()


async def test_claim_reads_acknowledges_and_reports_cancelled_requests(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("claim")
    for user, n in (("a", 0), ("a", 1), ("b", 0)):
        await fairqueue.enqueue(redis, _job(spec, user, n))
    await redis.set(keys.cancel(f"b-0-{spec.key}"), b"1", ex=60)
    private = keys.worker_queue(spec.key, "w1")
    await redis.xgroup_create(private, keys.GROUP, id="0", mkstream=True)
    await redis.xadd(private, _job(spec, "c", 0).encode())

    waiting = await fairqueue.pending(redis, spec.key, "w1")
    assert (waiting.private, waiting.waiting, waiting.weights) == (1, {"a": 2, "b": 1}, {"a": 1.0, "b": 1.0})
    streams = [private, keys.user_queue(spec.key, "a"), keys.user_queue(spec.key, "b")]
    claimed = await fairqueue.claim(redis, "w1", streams, START)
    assert [(c.job.id.split("-")[0], c.user, c.cancelled) for c in claimed] == [
        ("c", None, False), ("a", "a", False), ("b", "b", True)]
    for stream in streams:  # read and acknowledged in one step: nothing is left pending for a dead worker
        assert (await redis.xpending(stream, keys.GROUP))["pending"] == 0
    # ... and the gateway learns who took it in that same step (not for the cancelled one)
    assert [await _replies(redis, c.job.id) for c in claimed] == [[{b"ev": b"started"}], [{b"ev": b"started"}], []]
    assert (await fairqueue.pending(redis, spec.key, "w1")).waiting == {"a": 1}
    assert await fairqueue.claim(redis, "w1", [private], START) == []
    await redis.aclose()


START = {"ev": "started"}


async def _replies(redis: Redis, request_id: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(keys.reply(request_id))]


async def test_take_claims_at_once_when_there_is_nothing_to_choose(redis_url: str) -> None:
    """Fewer waiting streams than free slots: one round trip claims each head; more: the worker chooses."""
    redis = Redis.from_url(redis_url)
    spec = _spec("take")
    for user in ("a", "b", "a"):
        await fairqueue.enqueue(redis, _job(spec, user, await redis.xlen(keys.user_queue(spec.key, user))))
    waiting, claimed = await fairqueue.take(redis, spec.key, "w2", 1, START)
    assert claimed is None and waiting.waiting == {"a": 2, "b": 1}, "two users, one slot: a choice to make"
    assert await fairqueue.depth(redis, spec.key) == 3, "nothing was taken"
    waiting, claimed = await fairqueue.take(redis, spec.key, "w2", 2, START)
    assert claimed is not None and sorted(c.job.id[:3] for c in claimed) == ["a-0", "b-0"]
    assert await fairqueue.depth(redis, spec.key) == 1
    assert [await _replies(redis, c.job.id) for c in claimed] == [[{b"ev": b"started"}]] * 2
    await redis.aclose()


# -- hand-off to a waiting worker ------------------------------------------------------------------------------
async def _replies_now(redis: Redis, request_id: str) -> list[bytes]:
    return [fields[b"ev"] for fields in await _replies(redis, request_id)]


async def test_a_waiting_worker_is_handed_the_request_already_started(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("handoff")
    mailbox = fairqueue.Mailbox(redis, spec.key, "w1")
    await mailbox.open()
    waiting, claimed = await fairqueue.take(redis, spec.key, "w1", 2, START)
    assert claimed == [] and not waiting.waiting, "nothing to take: w1 now waits with two free slots"
    first, second, third = (_job(spec, "a", n) for n in range(3))
    submitted = await fairqueue.submit(redis, first)
    assert submitted is not None and submitted.depth == 0, "handed over, not queued"
    assert await _replies_now(redis, first.id) == [b"started"], "the gateway learns who has it in the same step"
    [(entry_id, fields)] = await redis.xrange(keys.reply(first.id))
    assert submitted.start == (entry_id, fields), "... from the script's answer: no read back"
    assert 0 < await redis.ttl(keys.inbox(spec.key, "w1")) <= 86400, "inboxes of workers long gone expire"
    assert await fairqueue.enqueue(redis, second) == 0
    assert await fairqueue.submit(redis, third) == fairqueue.Submitted(1), "as many hand-offs as free slots"
    assert await redis.xlen(keys.bell(spec.key)) == 1, "only the queued request rang the doorbell"
    mail = await mailbox.wait(block_ms=100)
    assert [job.id for job in mail.jobs] == [first.id, second.id] and mail.rang, "both, and the doorbell rang"
    waiting, claimed = await fairqueue.take(redis, spec.key, "w1", 1, START)
    assert claimed is not None and [c.job.id for c in claimed] == [third.id]
    assert await fairqueue.enqueue(redis, _job(spec, "b", 0)) == 1, "w1 has no free slot left: it is not waiting"
    await redis.aclose()


async def test_a_hand_off_never_overtakes_a_queued_request(redis_url: str) -> None:
    """A request that finds others queued waits its turn, even when a worker says it is idle (a stale word)."""
    redis = Redis.from_url(redis_url)
    spec = _spec("overtake")
    assert await fairqueue.enqueue(redis, _job(spec, "a", 0)) == 1
    await redis.zadd(keys.idle(spec.key), {"w1": time.time()})
    await redis.hset(keys.idle_start(spec.key), "w1", "started")
    assert await fairqueue.enqueue(redis, _job(spec, "b", 0)) == 2
    assert await redis.xlen(keys.inbox(spec.key, "w1")) == 0
    await redis.aclose()


async def test_a_worker_that_stopped_renewing_its_word_gets_nothing(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("stale")
    await fairqueue.take(redis, spec.key, "gone", 1, START)
    await redis.zadd(keys.idle(spec.key), {"gone": time.time() - fairqueue.IDLE_FRESH - 1})
    assert await fairqueue.enqueue(redis, _job(spec, "a", 0)) == 1, "queued for whoever takes it"
    _, claimed = await fairqueue.take(redis, spec.key, "w2", 2, START)
    assert claimed is not None and len(claimed) == 1
    assert await redis.zrange(keys.idle(spec.key), 0, -1) == [b"w2"], "the stale word was dropped"
    await redis.aclose()


async def test_affinity_hands_over_to_the_preferred_worker_only(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("prefer")
    for worker in ("w1", "w2"):
        await fairqueue.take(redis, spec.key, worker, 1, START)
    turn, later = _job(spec, "a", 0), _job(spec, "a", 1)
    assert await fairqueue.enqueue(redis, turn, prefer="w2") == 0
    assert await redis.xlen(keys.inbox(spec.key, "w2")) == 1 and await redis.xlen(keys.inbox(spec.key, "w1")) == 0
    assert await fairqueue.enqueue(redis, later, prefer="w2", private=False) is None, "w2 is busy: not taken"
    assert await redis.xlen(keys.worker_queue(spec.key, "w2")) == 0 and await fairqueue.depth(redis, spec.key) == 0
    await fairqueue.enqueue(redis, later, prefer="w2")  # w2 is busy now: its private queue, not w1
    assert await redis.xlen(keys.worker_queue(spec.key, "w2")) == 1
    assert await redis.xlen(keys.inbox(spec.key, "w1")) == 0 and await _replies_now(redis, later.id) == []
    await redis.aclose()


async def test_closing_the_mailbox_returns_what_was_handed_over_since_the_last_wait(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("close")
    mailbox = fairqueue.Mailbox(redis, spec.key, "w1")
    await mailbox.open()
    await fairqueue.take(redis, spec.key, "w1", 1, START)
    job = _job(spec, "a", 0)
    assert await fairqueue.enqueue(redis, job) == 0
    assert [j.id for j in await mailbox.close()] == [job.id], "handed over while nobody read: served on close"
    assert await mailbox.close() == []
    assert await fairqueue.enqueue(redis, _job(spec, "a", 1)) == 1, "closed: no more hand-offs"
    await redis.aclose()


async def _idle_worker(redis_url: str, tmp_path: Path, spec: LoadSpec, redis: Redis,
                       make: type[FakeEngine] = FakeEngine) -> Worker:
    """A worker with ``spec`` loaded whose first take found nothing (so it waits, marked idle)."""
    settings = WorkerSettings(worker_id="handoff-" + spec.key[-8:], redis_url=redis_url, cache_dir=tmp_path)

    async def engine(loaded: LoadSpec) -> FakeEngine:
        return make(loaded)

    worker = Worker(settings, redis, engine)
    await worker.load(spec)
    model = worker.loaded[spec.key]
    # yield (no time passes) until the claim loop has started its first take
    while model.claiming is None:  # noqa: ASYNC110
        await asyncio.sleep(0)
    await model.claiming
    return worker


async def _events(redis: Redis, request_id: str) -> list[str]:
    """The reply's event types up to ``done``."""
    types: list[str] = []
    last: bytes | str = "0-0"
    while "done" not in types:
        reply = await redis.xread({keys.reply(request_id): last}, block=5000)
        assert reply, f"{request_id}: no event for 5 s after {types}"
        for entry_id, fields in reply[0][1]:
            last = entry_id
            types.append(json.loads(fields[b"ev"])["t"])
    return types


class _Exploding(FakeEngine):
    """Fails (a bug, not a refusal) on the prompt "explode"."""

    async def stream(self, job: InferenceJob, cancel: threading.Event,
                     first: FirstToken | None = None) -> AsyncIterator[Event]:
        if job.prompt == "explode":
            raise RuntimeError("engine bug")
        async for event in super().stream(job, cancel, first):
            yield event


async def test_an_engine_failure_reaches_the_client_and_the_worker_goes_on(redis_url: str, tmp_path: Path) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("engine-bug")
    worker = await _idle_worker(redis_url, tmp_path, spec, redis, _Exploding)
    broken = _job(spec, "a", 0).model_copy(update={"prompt": "explode"})
    assert await fairqueue.enqueue(redis, broken) == 0
    events: list[Event] = []
    last: bytes | str = "0-0"
    while not events or events[-1].t == "start":
        reply = await redis.xread({keys.reply(broken.id): last}, block=5000)
        assert reply, f"no event for 5 s after {[e.t for e in events]}: the client would wait for ever"
        for entry_id, fields in reply[0][1]:
            last = entry_id
            events.append(Event.decode(fields))
    error = events[-1]
    assert (error.t, error.status, error.error) == ("err", 500, "engine bug"), "an error event, not silence"
    fine = _job(spec, "a", 1)
    await fairqueue.enqueue(redis, fine)
    assert await _events(redis, fine.id) == ["start"] + ["tok"] * 8 + ["done"], "its slot was given back"
    await worker.drain()
    await redis.aclose()


async def test_a_worker_serves_a_request_handed_to_it(redis_url: str, tmp_path: Path) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("serve-handoff")
    worker = await _idle_worker(redis_url, tmp_path, spec, redis)
    job = _job(spec, "a", 0)
    assert await fairqueue.enqueue(redis, job) == 0
    assert await _events(redis, job.id) == ["start"] + ["tok"] * 8 + ["done"]
    await worker.drain()
    await redis.aclose()


async def test_unload_serves_requests_handed_over_after_the_worker_stopped_waiting(redis_url: str,
                                                                                   tmp_path: Path) -> None:
    redis = Redis.from_url(redis_url)
    spec = _spec("unload-handoff")
    worker = await _idle_worker(redis_url, tmp_path, spec, redis)
    model = worker.loaded[spec.key]
    assert model.task is not None
    model.task.cancel()  # as unload does: the claim loop stops in the middle of its blocking read
    await asyncio.gather(model.task, return_exceptions=True)
    job = _job(spec, "a", 0)
    assert await fairqueue.enqueue(redis, job) == 0, "its word still stood: handed over"
    await worker.unload(spec.key)
    assert await _events(redis, job.id) == ["start"] + ["tok"] * 8 + ["done"], "served, not lost"
    assert await fairqueue.enqueue(redis, _job(spec, "a", 1)) == 1, "unloaded: nothing more is handed to it"
    await worker.drain()
    await redis.aclose()
