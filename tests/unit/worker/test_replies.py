"""Reply writes batched per event-loop turn, on real Redis: order kept per stream, failures reach every
writer of the batch, TTLs renewed only when asked."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from caravan import keys
from caravan.queue import Event
from worker.replies import ReplyWriter


def _tokens(count: int, start: int = 0) -> list[Event]:
    return [Event(t="tok", seq=n, text=f"t{n}") for n in range(start, start + count)]


async def _seqs(redis: Redis, key: str) -> list[int]:
    return [Event.decode(fields).seq for _, fields in await redis.xrange(key)]


async def test_writes_of_one_turn_land_in_order_per_stream(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    writer = ReplyWriter(redis)
    streams = [keys.reply(f"replies-{n}") for n in range(8)]
    await redis.delete(*streams)

    async def relay(key: str) -> None:
        for step in range(5):
            await writer.write(key, _tokens(2, 2 * step), renew=False)

    await asyncio.gather(*(relay(key) for key in streams))
    assert [await _seqs(redis, key) for key in streams] == [list(range(10))] * 8
    await redis.aclose()


async def test_a_failed_write_fails_its_writer_only(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    writer = ReplyWriter(redis)
    wrong = keys.reply("replies-not-a-stream")
    await redis.set(wrong, b"a string")
    ok = keys.reply("replies-ok")
    await redis.delete(ok)
    bad, good = await asyncio.gather(writer.write(wrong, _tokens(1)), writer.write(ok, _tokens(1)),
                                     return_exceptions=True)
    assert isinstance(bad, ResponseError) and good is None, "one pipeline, each writer its own outcome"
    await writer.write(ok, _tokens(1, 1), renew=False)
    assert await _seqs(redis, ok) == [0, 1]
    await redis.aclose()


async def test_a_lost_connection_fails_every_writer(redis_url: str) -> None:
    redis = Redis.from_url(redis_url.rsplit(":", 1)[0] + ":1/0")  # nothing listens on port 1
    writer = ReplyWriter(redis)
    results = await asyncio.gather(writer.write("a", _tokens(1)), writer.write("b", _tokens(1)),
                                   return_exceptions=True)
    assert all(isinstance(result, OSError | RedisError) for result in results), results
    await redis.aclose()


@pytest.mark.parametrize("renew", [True, False])
async def test_ttl_is_renewed_only_when_asked(redis_url: str, renew: bool) -> None:
    redis = Redis.from_url(redis_url)
    key = keys.reply(f"replies-ttl-{renew}")
    await redis.delete(key)
    await redis.xadd(key, Event(t="start").encode())
    await redis.expire(key, 5)
    await ReplyWriter(redis).write(key, _tokens(1), renew=renew)
    ttl = await redis.ttl(key)
    assert (ttl > 5) if renew else (0 < ttl <= 5), ttl
    await redis.aclose()


async def test_the_first_token_is_written_from_another_thread(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    writer = ReplyWriter(redis, redis_url)
    key = keys.reply("replies-first")
    await redis.delete(key)
    write = writer.first_token(key)
    assert write is not None
    assert await asyncio.to_thread(write, _tokens(1)[0]), "written (an engine thread blocks for it)"
    await writer.write(key, _tokens(1, 1), renew=False)
    assert await _seqs(redis, key) == [0, 1]
    writer.close()
    down = ReplyWriter(redis, redis_url.rsplit(":", 1)[0] + ":1/0").first_token(key)
    assert down is not None and not await asyncio.to_thread(down, _tokens(1)[0]), "refused: the relay writes it"
    assert ReplyWriter(redis).first_token(key) is None, "no blocking connection without a URL"
    await redis.aclose()
