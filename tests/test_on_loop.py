"""One ``aget`` at a time, read on the event loop's own thread (the redis client's "loop
connection"): the same answers and failures as the usual async way, one deadline per call,
cancellation, restarts between calls, several loops, and the hand-over to the usual way when
more than one call is out."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from django_rustcache._core import CacheError, ServerDown
from tests.conftest import make_redis
from tests.servers import DelayProxy, RedisServer

redis = pytest.importorskip("redis")


@pytest.fixture
def server():
    srv = RedisServer()
    yield srv
    srv.close()


def on_loop(cache):
    return cache._cache.loop_stats()


def test_one_call_at_a_time_is_read_on_the_loop_and_answers_as_get_does(server):
    cache = make_redis(server.location)
    cache.set_many({"a": 1, "b": {"x": [1, 2]}, "big": "v" * 100_000})
    raw = redis.Redis(port=server.port)
    raw.set(cache.make_key("n"), b"12")  # an int written as digits by another client
    raw.rpush(cache.make_key("list"), b"x")
    before = cache.stats()

    async def main():
        for _ in range(3):
            assert await cache.aget("a") == 1
            assert await cache.aget("b") == {"x": [1, 2]}
            assert await cache.aget("big") == "v" * 100_000
            assert await cache.aget("missing") is None
            assert await cache.aget("missing", "dflt") == "dflt"
            assert await cache.aget("n") == 12
        with pytest.raises(CacheError, match="WRONGTYPE"):
            await cache.aget("list")
        assert await cache.aget("a") == 1  # the connection stays in step after an error reply

    asyncio.run(main())
    assert on_loop(cache)["calls"] >= 19
    after = cache.stats()
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (13, 6)


def test_many_calls_at_once_all_get_their_own_values(server):
    """200 at once: a call finds the loop connection free (its reply read at once) or busy (it
    goes the usual way); every call gets its own value either way."""
    cache = make_redis(server.location)
    cache.set_many({f"k{i}": i for i in range(200)})

    async def main():
        for _ in range(5):
            values = await asyncio.gather(*(cache.aget(f"k{i}") for i in range(200)))
            assert values == list(range(200))
            assert await cache.aget("k7") == 7

    asyncio.run(main())
    assert on_loop(cache)["calls"] >= 5


def test_a_slow_reply_fails_the_call_at_its_deadline_and_the_next_call_works(server):
    proxy = DelayProxy(server.port, 0.0)
    try:
        cache = make_redis(proxy.location, OPTIONS={"SOCKET_TIMEOUT": 0.5, "RETRY_TIMEOUT": 0})
        cache.set("k", "v")  # a pooled connection for the loop to take

        async def main():
            assert await cache.aget("k") == "v"
            assert on_loop(cache)["calls"] == 1
            proxy.delay = 3.0
            start = time.monotonic()
            with pytest.raises(ServerDown, match="timed out"):
                await cache.aget("k")
            assert 0.45 < time.monotonic() - start < 1.5
            proxy.delay = 0.0
            assert await cache.aget("k") == "v"

        asyncio.run(main())
    finally:
        proxy.close()


def test_a_cancelled_call_leaves_no_reply_for_the_next(server):
    proxy = DelayProxy(server.port, 0.0)
    try:
        cache = make_redis(proxy.location, OPTIONS={"SOCKET_TIMEOUT": 2})
        cache.set_many({"a": "A", "b": "B"})

        async def main():
            assert await cache.aget("a") == "A"
            proxy.delay = 0.2
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(cache.aget("a"), 0.05)
            # The loop connection still waits for "a"'s reply: this call goes the usual way.
            assert await cache.aget("b") == "B"
            await asyncio.sleep(0.3)  # "a"'s reply arrives, for nobody
            proxy.delay = 0.0
            for _ in range(3):
                assert await cache.aget("b") == "B"
                assert await cache.aget("a") == "A"

        asyncio.run(main())
        assert on_loop(cache)["calls"] >= 7
    finally:
        proxy.close()


def test_a_server_restarted_between_calls_costs_no_error(server):
    cache = make_redis(server.location)
    cache.set("k", "v")

    async def main():
        assert await cache.aget("k") == "v"
        calls = on_loop(cache)["calls"]
        server.restart()
        # The loop's connection was closed by the restart: the call goes the usual way.
        assert await cache.aget("k") is None
        assert on_loop(cache)["calls"] == calls + 1
        await cache.aset("k", "again")
        assert await cache.aget("k") == "again"

    asyncio.run(main())


def test_loops_one_after_another_and_in_several_threads(server):
    cache = make_redis(server.location)
    cache.set_many({f"k{i}": i for i in range(20)})

    async def reads(offset):
        for i in range(200):
            assert await cache.aget(f"k{(i + offset) % 20}") == (i + offset) % 20

    for i in range(3):
        calls = on_loop(cache)["calls"]
        asyncio.run(reads(0))  # each run a new loop: the old one's connection goes with it
        cache.get("k0")  # an idle pooled connection for the next loop to take
        if i:
            assert on_loop(cache)["calls"] >= calls + 199  # all but the first on the new loop
    errors = []

    def in_thread(offset):
        try:
            cache.get("k0")  # an idle pooled connection for this thread's loop
            asyncio.run(reads(offset))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert on_loop(cache)["connections"] <= 4 + 1


def test_a_gone_loops_connection_is_closed_by_the_next_loop(server):
    cache = make_redis(server.location)
    cache.set("k", 1)
    for _ in range(5):
        assert asyncio.run(cache.aget("k")) == 1
        cache.get("k")  # an idle pooled connection for the next loop to take
    # One open at most: each new loop closed the one of the loop before (its slot freed).
    assert on_loop(cache)["connections"] <= 1
    clients = redis.Redis(port=server.port).client_list()
    assert len(clients) <= 4, clients


def test_a_pool_at_its_limit_lends_no_connection_to_a_loop(server):
    """With MAX_CONNECTIONS = 1, the one connection stays the blocking calls': the loop's
    calls go the usual way, and a sync call after them does not wait for a connection."""
    cache = make_redis(server.location, OPTIONS={"MAX_CONNECTIONS": 1, "SOCKET_TIMEOUT": 1})
    cache.set("k", "v")

    async def main():
        for _ in range(5):
            assert await cache.aget("k") == "v"

    asyncio.run(main())
    assert on_loop(cache)["calls"] == 0
    start = time.monotonic()
    assert cache.get("k") == "v"
    assert time.monotonic() - start < 0.5  # not the 1 s wait for a busy pool
