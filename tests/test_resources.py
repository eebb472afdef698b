"""What the network backends hold is given back (issue 22, item 9): an asyncio loop closed with
calls in flight leaves nothing of its own behind, and the clients of settings nobody uses any
more go with their connections, while those in use stay shared."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import weakref

import pytest

from django_rustcache import _network
from django_rustcache.memcached import MemcachedCache
from django_rustcache.redis import RedisCache
from tests.conftest import make_memcached, make_redis


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled() -> None:
    """Let in-flight replies land and the collector run."""
    time.sleep(0.3)
    gc.collect()


@pytest.fixture(params=["redis", "memcached"])
def cache(request, redis_server, memcached_server):
    made = make_redis(redis_server.location) if request.param == "redis" else make_memcached(memcached_server.location)

    async def warm() -> None:
        await made.aset("k0", 0)

    asyncio.run(warm())  # the multiplexed connection exists before counting
    return made


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_asyncio_run_with_unawaited_calls_leaves_nothing_behind(cache):
    """The everyday form: asyncio.run() returns while aset tasks are still out. Before: ~1.5
    fds per run kept on redis, ~1 on memcached, and the loops with them."""
    loops = []

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        unawaited = [asyncio.ensure_future(cache.aset(f"k{i}", i)) for i in range(5)]
        del unawaited

    settled()
    before = open_fds()
    for _ in range(100):
        asyncio.run(main())
    settled()
    assert open_fds() - before <= 2
    assert sum(1 for loop in loops if loop() is not None) == 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_loop_closed_with_calls_in_flight_is_freed_with_its_fds(cache):
    """Before: 300 loops closed this way kept 296 loops and 590 fds (their wake-up socket pairs);
    Django's RedisCache: none."""
    loops = []
    settled()
    before = open_fds()
    for _ in range(100):
        event_loop = asyncio.new_event_loop()
        loops.append(weakref.ref(event_loop))

        async def fire(event_loop=event_loop) -> None:
            for i in range(5):
                event_loop.create_task(cache.aget(f"k{i}"))
            await asyncio.sleep(0)

        event_loop.run_until_complete(fire())
        event_loop.close()
        del event_loop, fire
    settled()
    assert open_fds() - before <= 2
    assert sum(1 for loop in loops if loop() is not None) == 0

    async def still_works() -> object:
        return await cache.aget("k0")

    assert asyncio.run(still_works()) == 0


def test_clients_of_settings_nobody_uses_go_with_their_connections(redis_server, memcached_server):
    """Before: 7,495 distinct LOCATIONs held 15,000 fds and 7,495 clients after collection."""
    settled()
    before = open_fds()
    made = []
    for i in range(150):
        redis = RedisCache(redis_server.location, {"OPTIONS": {"CLIENT_NAME": f"gone-{i}"}})
        redis.set("k", 1)
        asyncio.run(redis.aget("k"))
        memcached = MemcachedCache(memcached_server.location, {"OPTIONS": {"max_pool_size": 100 + i}})
        memcached.set("k", 1)
        asyncio.run(memcached.aget("k"))
        made += [weakref.ref(redis._shared), weakref.ref(memcached._shared)]
    del redis, memcached
    settled()
    assert sum(1 for client in made if client() is not None) <= _network._Registry.KEEP
    # Each kept client has a blocking and a multiplexed connection at most.
    assert open_fds() - before <= 2 * _network._Registry.KEEP + 5


def test_a_client_in_use_stays_shared_whatever_else_comes_and_goes(redis_server):
    first = RedisCache(redis_server.location, {"OPTIONS": {"CLIENT_NAME": "kept"}})
    first.set("k", 1)
    client = first._shared
    for i in range(_network._Registry.KEEP * 2):
        RedisCache(redis_server.location, {"OPTIONS": {"CLIENT_NAME": f"passing-{i}"}}).get("k")
    gc.collect()
    # Another instance of the same settings (another thread's, say) finds the same pool.
    again = RedisCache(redis_server.location, {"OPTIONS": {"CLIENT_NAME": "kept"}})
    assert again._shared is client and again.get("k") == 1
