"""The network backends' native async calls, against real servers: many calls in flight on one
event loop, deadlines shared by concurrent calls, cancellation that never hands a reply to the
wrong caller, restarts, forks, sync and async callers together, and a request through Django's
cache middleware under ASGI."""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import random
import signal
import threading
import time

import pytest
from django.core.cache import CacheKeyWarning, InvalidCacheKey

from django_rustcache import ServerDown
from tests.conftest import make_memcached, make_redis
from tests.servers import DelayProxy, MemcachedServer, RedisServer, SilentServer

KINDS = ["redis-tcp", "redis-unix", "memcached-text", "memcached-binary", "memcached-unix", "pylibmc"]


def make(kind: str, servers: dict, **params):
    if kind == "redis-tcp":
        return make_redis(servers["redis"].location, **params)
    if kind == "redis-unix":
        return make_redis(servers["redis-unix"].location, **params)
    return make_at(kind, servers["memcached-unix" if kind == "memcached-unix" else "memcached"].location, **params)


def make_at(kind: str, where: str, **params):
    """A backend of `kind` on the server at `where` (host:port, or a unix socket for memcached)."""
    timeout, retry, ignore = params.pop("timeout", 3), params.pop("retry_timeout", 1), params.pop("ignore", False)
    if kind.startswith("redis"):
        options = {"SOCKET_TIMEOUT": timeout, "RETRY_TIMEOUT": retry, "IGNORE_EXCEPTIONS": ignore}
        options.update(params.pop("OPTIONS", {}))
        return make_redis(where if "://" in where else f"redis://{where}", OPTIONS=options, **params)
    options = {"timeout": timeout, "retry_timeout": retry, "ignore_exc": ignore, **params.pop("OPTIONS", {})}
    if kind == "memcached-binary":
        options["binary"] = True
    backend = "PyLibMCCache" if kind == "pylibmc" else "MemcachedCache"
    return make_memcached(where, backend, OPTIONS=options, **params)


@pytest.fixture
def servers(redis_server, redis_unix_server, memcached_server, memcached_unix_server):
    return {
        "redis": redis_server,
        "redis-unix": redis_unix_server,
        "memcached": memcached_server,
        "memcached-unix": memcached_unix_server,
    }


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def cache(kind, servers):
    return make(kind, servers)


def run(coro):
    return asyncio.run(coro)


def test_answers_are_the_sync_calls_answers(kind, cache):
    redis = kind.startswith("redis")

    async def main():
        # As the sync set answers: None (Django), True when stored (django-pylibmc).
        assert await cache.aset("k", {"v": 1}) is (True if kind == "pylibmc" else None)
        assert await cache.aget("k") == {"v": 1}
        assert await cache.aget("missing") is None
        assert await cache.aget("missing", "default") == "default"
        assert await cache.aadd("k", "other") is False
        assert await cache.aadd("new", 1) is True
        assert await cache.atouch("k", 100) is True
        assert await cache.atouch("missing") is False
        assert await cache.ahas_key("new") is True
        assert await cache.ahas_key("k2") is False
        assert await cache.aincr("new", 10) == 11
        assert await cache.adecr("new", 2) == 9
        with pytest.raises(ValueError):
            await cache.aincr("missing")
        assert await cache.aset_many({"a": 1, "b": [2], "c": "3"}) == []
        assert await cache.aget_many(["a", "b", "c", "d"]) == {"a": 1, "b": [2], "c": "3"}
        assert await cache.adelete("a") is True
        assert await cache.adelete("a") is False
        await cache.adelete_many(["b", "c"])
        assert await cache.aget_many(["b", "c"]) == {}
        assert await cache.aget_or_set("gos", lambda: "made") == "made"
        assert await cache.aget_or_set("gos", "other") == "made"
        assert await cache.aincr_version("gos") == 2
        assert await cache.aget("gos", version=2) == "made"
        assert await cache.aget("gos") is None
        # Timeout 0 stores nothing; None never expires.
        cache.set("zero-sync", 1, timeout=0)
        await cache.aset("zero", 1, timeout=0)
        assert await cache.ahas_key("zero") is cache.has_key("zero-sync")
        await cache.aset("forever", 1, timeout=None)
        assert await cache.aget("forever") == 1
        if redis:
            assert cache.ttl("forever") is None
            # Big integers, exact.
            await cache.aset("big", 2**70)
            assert await cache.aincr("big", 1) == 2**70 + 1
        else:
            await cache.aset("text", "not a number")
            with pytest.raises(TypeError):
                await cache.aincr("text")
        assert await cache.aclear() in (True, None)
        assert await cache.aget("forever") is None

    run(main())
    # The sync calls see what the async ones wrote, and the other way round.
    cache.set("shared", [1, 2, 3])
    assert run(cache.aget("shared")) == [1, 2, 3]
    run(cache.aset("shared", "async"))
    assert cache.get("shared") == "async"
    assert cache.stats()["hits"] >= 1


def test_keys_are_checked_and_values_encoded_before_anything_is_sent(kind, cache):
    async def main():
        if kind.startswith("redis"):
            # Redis takes any key; Django's warning for keys memcached would refuse still comes.
            with pytest.warns(CacheKeyWarning):
                await cache.aset("a key with spaces", 1)
            with pytest.warns(CacheKeyWarning):
                assert await cache.aget("a key with spaces") == 1
        else:
            # Memcached refuses it: an error before any byte is sent, the connections unharmed.
            for call in (cache.aset("a key with spaces", 1), cache.aget("k\r\nflush_all")):
                with pytest.raises(InvalidCacheKey):
                    await call
            await cache.aset("ok", 1)
            assert await cache.aget("ok") == 1
        with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
            await cache.aset("unpicklable", lambda: None)
        assert await cache.ahas_key("unpicklable") is False

    run(main())


def test_a_call_outside_a_running_loop_is_refused(cache):
    with pytest.raises(RuntimeError):
        cache._cache.aget(cache.key_prefix, 1, "k")


def test_a_thousand_concurrent_tasks_get_their_own_values(cache):
    values = {f"k{i}": {"i": i, "pad": "x" * (i % 300)} for i in range(1000)}

    async def one(key):
        await cache.aset(key, values[key])
        got = await cache.aget(key)
        assert got == values[key], (key, got)
        many = await cache.aget_many([key, "k0", "k999"])
        assert many[key] == values[key]
        return got

    async def main():
        await cache.aset("k0", values["k0"])
        await cache.aset("k999", values["k999"])
        got = await asyncio.gather(*(one(k) for k in values))
        assert got == list(values.values())

    run(main())
    # A thousand calls in flight shared at most two connections per server, not one each.
    assert all(1 <= s["async_connections"] <= 2 for s in cache.stats()["servers"])


def test_large_values_and_compression_go_off_the_loop(kind, servers):
    if kind.startswith("redis"):
        cache = make(kind, servers, OPTIONS={"COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor"})
    else:
        cache = make(kind, servers, OPTIONS={"min_compress_len": 1000})
    # Past memcached's 1 MB item limit only where it compresses well.
    big = os.urandom(1 << 18) + b"a" * (3 << 20) if kind.startswith("redis") else os.urandom(1 << 16) + b"a" * (3 << 20)

    async def main():
        await asyncio.gather(*(cache.aset(f"big{i}", big) for i in range(4)))
        got = await asyncio.gather(*(cache.aget(f"big{i}") for i in range(4)))
        assert all(g == big for g in got)

    run(main())
    assert cache.get("big0") == big


@pytest.fixture(params=["redis-tcp", "memcached-text", "memcached-binary"])
def family(request):
    return request.param


def test_a_silent_server_fails_every_concurrent_call_within_one_deadline(family):
    silent = SilentServer()
    try:
        cache = make_at(family, silent.location, timeout=0.5, retry_timeout=0)

        async def main():
            started = time.monotonic()
            results = await asyncio.gather(*(cache.aget(f"k{i}") for i in range(20)), return_exceptions=True)
            return time.monotonic() - started, results

        took, results = run(main())
        assert all(isinstance(r, ServerDown) for r in results), results
        # 20 calls at once cost one deadline, not 20.
        assert took < 1.5, took
    finally:
        silent.close()


def test_ignored_failures_answer_as_misses(family):
    silent = SilentServer()
    try:
        cache = make_at(family, silent.location, timeout=0.3, ignore=True)

        async def main():
            return await asyncio.gather(
                cache.aget("k", "default"),
                cache.aset("k", 1),
                cache.aadd("k", 1),
                cache.aget_many(["a", "b"]),
                cache.adelete("k"),
                cache.aincr("k"),
            )

        assert run(main()) == ["default", None, False, {}, False, None]
        assert cache.stats()["failures"] >= 1
    finally:
        silent.close()


def test_a_restart_under_async_load_never_returns_a_wrong_value(family):
    server = RedisServer() if family.startswith("redis") else MemcachedServer()
    try:
        cache = make_at(family, server.location, timeout=1, retry_timeout=0.1)
        wrong, errors, ok = [], [], [0]

        async def work(t, until):
            i = 0
            while time.monotonic() < until:
                key = f"t{t}-{i % 20}"
                try:
                    await cache.aset(key, key)
                    got = await cache.aget(key)
                    if got is not None and got != key:
                        wrong.append((key, got))
                    many = await cache.aget_many([f"t{t}-{j}" for j in range(5)])
                    wrong.extend((k, v) for k, v in many.items() if v != k)
                    ok[0] += 1
                except ServerDown as e:
                    errors.append(e)
                    await asyncio.sleep(0.01)
                i += 1

        async def main():
            until = time.monotonic() + 3.2
            tasks = [asyncio.create_task(work(t, until)) for t in range(32)]
            await asyncio.sleep(0.5)
            for _ in range(2):
                await asyncio.to_thread(server.kill)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(server.start)
                await asyncio.sleep(0.6)
            before = ok[0]
            await asyncio.gather(*tasks)
            return before

        before = run(main())
        assert not wrong, wrong[:5]
        assert errors, "the restarts were never noticed"
        assert ok[0] > before, "the calls did not recover after the last restart"
    finally:
        server.close()


def test_cancelled_calls_never_hand_their_replies_to_others(family, servers):
    upstream = servers["redis" if family.startswith("redis") else "memcached"]
    proxy = DelayProxy(upstream.port, 0.02)
    try:
        cache = make_at(family, f"127.0.0.1:{proxy.port}", timeout=5)
        keys = [f"c{i}" for i in range(200)]
        cache.set_many({k: k for k in keys})
        wrong, done, cancelled = [], [0], [0]
        rng = random.Random(7)

        def patience():
            # Most calls are cut short around the proxy's 20 ms; some wait long enough to finish
            # even on a starved CPU, so both counts below hold however busy the machine is.
            return 2.0 if rng.random() < 0.25 else rng.uniform(0.0, 0.045)

        async def one(key):
            try:
                if rng.random() < 0.2:
                    got = (await asyncio.wait_for(cache.aget_many([key, "c0"]), patience()))[key]
                else:
                    got = await asyncio.wait_for(cache.aget(key), patience())
            except TimeoutError:
                cancelled[0] += 1
                return
            done[0] += 1
            if got != key:
                wrong.append((key, got))

        async def main():
            for _ in range(5):
                await asyncio.gather(*(one(k) for k in rng.sample(keys, 100)))
            # Afterwards, every call gets its own answer.
            got = await asyncio.gather(*(cache.aget(k) for k in keys))
            assert got == keys

        run(main())
        assert not wrong, wrong[:5]
        assert cancelled[0] > 20 and done[0] > 20, (cancelled, done)
    finally:
        proxy.close()


def test_a_forked_child_makes_its_own_runtime_and_connections(cache):
    run(cache.aset("before-fork", "parent"))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:

            async def child():
                await cache.aset("child", "wrote")
                return await cache.aget("before-fork")

            code = 0 if asyncio.run(child()) == "parent" else 2
        finally:
            os._exit(code)
    until = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < until:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung (it once did, dropping its parent's connections)")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    # The parent's runtime and connections still work.
    assert run(cache.aget("child")) == "wrote"


def test_sync_and_async_callers_share_one_backend(cache):
    wrong = []
    stop = threading.Event()

    def sync_worker(t):
        i = 0
        while not stop.is_set():
            key = f"s{t}-{i % 10}"
            cache.set(key, (t, i))
            got = cache.get(key)
            if got is not None and got[0] != t:
                wrong.append(got)
            i += 1

    async def async_worker(lp, t):
        for i in range(200):
            key = f"a{lp}-{t}-{i % 10}"
            await cache.aset(key, (t, i))
            got = await cache.aget(key)
            if got != (t, i):
                wrong.append(got)

    threads = [threading.Thread(target=sync_worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    try:

        async def main(lp):
            await asyncio.gather(*(async_worker(lp, t) for t in range(16)))

        # Two event loops, in two threads, on the same backend and connections.
        loops = [threading.Thread(target=run, args=(main(lp),)) for lp in range(2)]
        for lp in loops:
            lp.start()
        for lp in loops:
            lp.join(60)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not wrong, wrong[:5]


def test_a_loop_closed_with_calls_in_flight_leaves_nothing_broken(family, servers):
    upstream = servers["redis" if family.startswith("redis") else "memcached"]
    proxy = DelayProxy(upstream.port, 0.2)
    try:
        cache = make_at(family, f"127.0.0.1:{proxy.port}")
        loop = asyncio.new_event_loop()
        loop.run_until_complete(cache.aset("k", "v"))
        # Calls left in flight when their loop closes: their outcomes have nowhere to go.
        tasks = [loop.create_task(cache.aget(f"k{i}")) for i in range(10)]
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        for task in tasks:
            task._log_destroy_pending = False  # left pending on purpose
        time.sleep(0.5)
        assert run(cache.aget("k")) == "v"
    finally:
        proxy.close()


@pytest.fixture
def site(cache):
    """Django's `default` cache is `cache`'s configuration, for the middleware and views."""
    from django.core.cache import caches
    from django.test.utils import override_settings

    params = {"BACKEND": f"{type(cache).__module__}.{type(cache).__qualname__}", "LOCATION": cache._init_args[0]}
    params.update({k: v for k, v in cache._init_args[1].items() if k in ("KEY_PREFIX", "OPTIONS")})
    with override_settings(
        ROOT_URLCONF="tests.async_urls",
        CACHES={"default": params},
        MIDDLEWARE=[],
        ALLOWED_HOSTS=["testserver"],
    ):
        caches["default"].clear()
        yield caches["default"]


def test_an_asgi_request_through_the_cache_middleware(site):
    from django.test import AsyncClient, Client

    from tests import async_urls

    async def main():
        client = AsyncClient()
        first = await client.get("/cached/")
        second = await client.get("/cached/")
        assert first.status_code == second.status_code == 200
        # The second answer came from the cache: the view ran once.
        assert first.content == second.content
        calls = async_urls.CALLS["n"]
        await site.aset("greeting", "hello")
        direct = [await client.get("/direct/") for _ in range(3)]
        assert [r.json() for r in direct][-1] == {"visits": 3, "greeting": "hello"}
        return calls

    calls = run(main())
    assert async_urls.CALLS["n"] == calls
    # The same pages under WSGI (the sync calls, the same backend).
    sync = Client()
    a, b = sync.get("/sync-cached/"), sync.get("/sync-cached/")
    assert a.content == b.content
    assert sync.get("/cached/").content == run(AsyncClient().get("/cached/")).content


# The collection API's async twins: each the same body as its sync method, so a script of calls
# answers the same both ways (random members aside).
COLLECTION_SCRIPT = [
    ("sadd", ("s", 1, "two", (3, "t"), 2**70), {}),
    ("smembers", ("s",), {}),
    ("scard", ("s",), {}),
    ("sismember", ("s", "two"), {}),
    ("smismember", ("s", 1, "x"), {}),
    ("sadd", ("t", "two", 9), {}),
    ("sinter", ("s", "t"), {}),
    ("sunionstore", ("u", "s", "t"), {}),
    ("smove", ("t", "m", 9), {}),
    ("srem", ("s", 1, "absent"), {}),
    ("sscan", ("s",), {"count": 100}),
    ("hset", ("h", "a", 1), {"mapping": {"b": [2]}}),
    ("hget", ("h", "b"), {}),
    ("hmget", ("h", "a", "b", "zz"), {}),
    ("hgetall", ("h",), {}),
    ("hkeys", ("h",), {}),
    ("hexists", ("h", "a"), {}),
    ("hdel", ("h", "a"), {}),
    ("hlen", ("h",), {}),
    ("zadd", ("z", {"a": 1, "b": 2.5, (1, 2): 3}), {}),
    ("zrange", ("z", 0, -1), {"withscores": True}),
    ("zrangebyscore", ("z", 1, 2.5), {}),
    ("zrevrange", ("z", 0, 1), {}),
    ("zincrby", ("z", 2, "a"), {}),
    ("zscore", ("z", "a"), {}),
    ("zrank", ("z", "b"), {}),
    ("zcount", ("z", 0, 10), {}),
    ("zpopmin", ("z",), {}),
    ("zrem", ("z", "b"), {}),
    ("zcard", ("z",), {}),
]


def test_the_collection_api_has_async_twins_that_answer_alike(redis_server):
    sync = make_redis(redis_server.location)
    asynchronous = make_redis(redis_server.location)
    expected = [getattr(sync, name)(*args, **kwargs) for name, args, kwargs in COLLECTION_SCRIPT]

    async def main():
        got = [await getattr(asynchronous, f"a{name}")(*args, **kwargs) for name, args, kwargs in COLLECTION_SCRIPT]
        members = [m async for m in asynchronous.asscan_iter("s", count=1)]
        return got, members

    got, members = run(main())
    assert got == expected
    assert sorted(map(repr, members)) == sorted(map(repr, sync.smembers("s")))
    # The data is the same too: the async calls wrote what the sync ones read.
    assert sync.smembers("s") != set() and asynchronous.smembers("s") == sync.smembers("s")


def test_collection_twins_follow_the_failure_policy():
    silent = SilentServer()
    try:
        cache = make_at("redis-tcp", silent.location, timeout=0.3, ignore=True)
        assert run(cache.asmembers("s")) == set()
        assert run(cache.ahlen("h")) == 0
        raising = make_at("redis-tcp", silent.location, timeout=0.3)
        with pytest.raises(ServerDown):
            run(raising.asadd("s", 1))
    finally:
        silent.close()


def test_memcached_aset_many_returns_the_keys_it_could_not_store(servers):
    """A value past memcached's item size is refused: its key comes back (and any old value under
    it is gone, as Django's set does), the others are stored."""
    for kind in ("memcached-text", "memcached-binary"):
        cache = make(kind, servers)
        cache.set("huge", "old")

        async def main(cache=cache):
            failed = await cache.aset_many({"ok": 1, "huge": os.urandom(2 << 20), "also": 2})
            return failed, await cache.aget_many(["ok", "huge", "also"])

        failed, found = run(main())
        assert failed == ["huge"], kind
        assert found == {"ok": 1, "also": 2}, kind


def test_no_async_method_is_djangos_thread_hop():
    """Every a* method of BaseCache is the backends' own: Django's defaults (in 6.1 even the
    composite ones, aget_or_set, aincr_version, ...) run the sync method through
    sync_to_async whenever a backend has its own."""
    from django.core.cache.backends.base import BaseCache

    from django_rustcache.memcached import MemcachedCache, PyLibMCCache
    from django_rustcache.redis import RedisCache
    from django_rustcache.redis_cache import RedisCache as RedisCacheCompat
    from django_rustcache.redis_cache import ShardedRedisCache

    names = [n for n in vars(BaseCache) if n.startswith("a") and inspect.iscoroutinefunction(getattr(BaseCache, n))]
    assert {"aget", "aset", "aget_or_set", "aincr_version", "aclose"} <= set(names)
    for backend in (MemcachedCache, PyLibMCCache, RedisCache, RedisCacheCompat, ShardedRedisCache):
        inherited = [n for n in names if getattr(backend, n) is getattr(BaseCache, n)]
        assert not inherited, (backend.__name__, inherited)
