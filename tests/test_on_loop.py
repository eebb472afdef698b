"""One ``aget`` at a time, read on the event loop's own thread (the redis and memcached clients'
"loop connection"): the same answers and failures as the usual async way, one deadline per
call, cancellation, restarts between calls, several loops, an async-only site, and the
hand-over to the usual way when more than one call is out."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from dataclasses import dataclass

import pytest

from django_rustcache._core import CacheError, ServerDown
from tests.conftest import make_memcached, make_redis
from tests.servers import DelayProxy, MemcachedServer, RedisServer

redis = pytest.importorskip("redis")


@dataclass
class Store:
    """One store's server, and how a test makes a backend on it (or on a proxy before it)."""

    kind: str  # "redis", "memcached" or "memcached-binary"
    server: RedisServer | MemcachedServer

    def cache(self, port: int | None = None, *, timeout: float | None = None):
        """A backend on the server (or on `port`, a proxy before it); with `timeout`, one call's
        deadline, and no retry window after a failure."""
        port = port or self.server.port
        if self.kind == "redis":
            options = {"SOCKET_TIMEOUT": timeout, "RETRY_TIMEOUT": 0} if timeout else {}
            return make_redis(f"redis://127.0.0.1:{port}", OPTIONS=options)
        options = {"timeout": timeout, "retry_timeout": 0} if timeout else {}
        if self.kind == "memcached-binary":
            return make_memcached(f"127.0.0.1:{port}", "PyLibMCCache", OPTIONS={**options, "binary": True})
        return make_memcached(f"127.0.0.1:{port}", OPTIONS=options)

    def connections(self) -> int:
        """The clients connected to the server now, as the server counts them."""
        if self.kind == "redis":
            return len(redis.Redis(port=self.server.port).client_list())
        with socket.create_connection(("127.0.0.1", self.server.port)) as s:
            s.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                data += s.recv(65536)
        line = next(x for x in data.split(b"\r\n") if x.startswith(b"STAT curr_connections "))
        return int(line.split()[2])


@pytest.fixture(params=["redis", "memcached", "memcached-binary"])
def store(request):
    server = RedisServer() if request.param == "redis" else MemcachedServer()
    yield Store(request.param, server)
    server.close()


def on_loop(cache):
    return cache._cache.loop_stats()


def test_one_call_at_a_time_is_read_on_the_loop_and_answers_as_get_does(store):
    cache = store.cache()
    blob = os.urandom(400_000)  # does not compress: a large value read in several pieces
    cache.set_many({"a": 1, "b": {"x": [1, 2]}, "big": "v" * 100_000, "blob": blob})
    if store.kind == "redis":
        raw = redis.Redis(port=store.server.port)
        raw.set(cache.make_key("n"), b"12")  # an int written as digits by another client
        raw.rpush(cache.make_key("list"), b"x")
    before = cache._cache.client_stats()

    async def main():
        for _ in range(3):
            assert await cache.aget("a") == 1
            assert await cache.aget("b") == {"x": [1, 2]}
            assert await cache.aget("big") == "v" * 100_000
            assert await cache.aget("blob") == blob
            assert await cache.aget("missing") is None
            assert await cache.aget("missing", "dflt") == "dflt"
        if store.kind == "redis":
            assert await cache.aget("n") == 12
            with pytest.raises(CacheError, match="WRONGTYPE"):
                await cache.aget("list")
            assert await cache.aget("a") == 1  # the connection stays in step after an error reply

    asyncio.run(main())
    assert on_loop(cache)["calls"] >= 17
    after = cache._cache.client_stats()
    extra = 2 if store.kind == "redis" else 0
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (12 + extra, 6)


def test_large_compressed_values_are_inflated_as_the_usual_way_does(store):
    """Compressed values, small and large (a large one is inflated off the loop's thread)."""
    if store.kind == "redis":
        from django_rustcache.redis import RedisCache

        cache = RedisCache(
            f"redis://127.0.0.1:{store.server.port}",
            {"KEY_PREFIX": "zl", "OPTIONS": {"COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor"}},
        )
    else:
        cache = make_memcached(store.server.location, "PyLibMCCache", OPTIONS={"min_compress_len": 100})
    values = {"small": "s" * 1000, "large": os.urandom(200_000).hex()}  # hex: compresses ~2x
    cache.set_many(values)

    async def main():
        for _ in range(3):
            for key, value in values.items():
                assert await cache.aget(key) == value

    asyncio.run(main())
    assert on_loop(cache)["calls"] >= 5


def test_many_calls_at_once_all_get_their_own_values(store):
    """200 at once: a call finds the loop connection free (its reply read at once) or busy (it
    goes the usual way); every call gets its own value either way."""
    cache = store.cache()
    cache.set_many({f"k{i}": i for i in range(200)})

    async def main():
        for _ in range(5):
            values = await asyncio.gather(*(cache.aget(f"k{i}") for i in range(200)))
            assert values == list(range(200))
            assert await cache.aget("k7") == 7

    asyncio.run(main())
    assert on_loop(cache)["calls"] >= 5


def test_a_slow_reply_fails_the_call_at_its_deadline_and_the_next_call_works(store):
    proxy = DelayProxy(store.server.port, 0.0)
    try:
        cache = store.cache(proxy.port, timeout=0.5)
        cache.set("k", "v")

        async def main():
            assert await cache.aget("k") == "v"
            await asyncio.sleep(0.05)
            assert await cache.aget("k") == "v"
            assert on_loop(cache)["calls"] >= 1
            proxy.delay = 3.0
            start = time.monotonic()
            if store.kind == "memcached-binary":  # PyLibMCCache: a failure reads as a miss
                assert await cache.aget("k") is None
            else:
                with pytest.raises(ServerDown, match="timed out"):
                    await cache.aget("k")
            assert 0.45 < time.monotonic() - start < 1.5
            proxy.delay = 0.0
            assert await cache.aget("k") == "v"

        asyncio.run(main())
    finally:
        proxy.close()


def test_a_cancelled_call_leaves_no_reply_for_the_next(store):
    proxy = DelayProxy(store.server.port, 0.0)
    try:
        cache = store.cache(proxy.port, timeout=2)
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


def test_a_server_restarted_between_calls_costs_no_error(store):
    cache = store.cache()
    cache.set("k", "v")

    async def main():
        assert await cache.aget("k") == "v"
        calls = on_loop(cache)["calls"]
        store.server.restart()
        # The loop's connection was closed by the restart: the call goes the usual way.
        assert await cache.aget("k") is None
        assert on_loop(cache)["calls"] == calls + 1
        await cache.aset("k", "again")
        assert await cache.aget("k") == "again"

    asyncio.run(main())


def test_an_async_only_site_gets_a_loop_connection(store):
    """No blocking call leaves an idle connection to take: the first call goes the usual way and
    one connection is opened off the loop for the calls after it; one, not one per call."""
    cache = store.cache()

    async def main():
        await cache.aset("k", "v")
        for _ in range(50):
            assert await cache.aget("k") == "v"
            await asyncio.sleep(0.002)

    asyncio.run(main())
    assert on_loop(cache)["calls"] >= 40
    assert on_loop(cache)["connections"] == 1


def test_loops_one_after_another_and_in_several_threads(store):
    cache = store.cache()
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


def test_a_gone_loops_connection_is_closed_by_the_next_loop(store):
    cache = store.cache()
    cache.set("k", 1)
    before = store.connections()
    for _ in range(5):
        assert asyncio.run(cache.aget("k")) == 1
        cache.get("k")  # an idle pooled connection for the next loop to take
    # One open at most: each new loop closed the one of the loop before (its slot freed).
    assert on_loop(cache)["connections"] <= 1
    # The blocking call's, the loop's, the async calls' own: no more however many loops ran.
    assert store.connections() - before <= 3


def test_a_pool_at_its_limit_lends_no_connection_to_a_loop():
    """With MAX_CONNECTIONS = 1, the one connection stays the blocking calls': the loop's
    calls go the usual way, and a sync call after them does not wait for a connection."""
    server = RedisServer()
    try:
        cache = make_redis(server.location, OPTIONS={"MAX_CONNECTIONS": 1, "SOCKET_TIMEOUT": 1})
        cache.set("k", "v")

        async def main():
            for _ in range(5):
                assert await cache.aget("k") == "v"
                await asyncio.sleep(0.01)

        asyncio.run(main())
        assert on_loop(cache)["calls"] == 0
        start = time.monotonic()
        assert cache.get("k") == "v"
        assert time.monotonic() - start < 0.5  # not the 1 s wait for a busy pool
    finally:
        server.close()
