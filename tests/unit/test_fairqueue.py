"""Fair sharing: stride order in isolation, and a worker with a fake engine draining a flood on real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from caravan import fairqueue, keys
from caravan.fairqueue import StrideOrder, safe_user
from caravan.queue import InferenceJob, LoadSpec
from caravan.settings import WorkerSettings
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
