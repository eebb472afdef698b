"""The metrics every backend records in its core: checked by value after a known sequence of
calls (sync and async), per alias, with errors, a reset, a switch that turns them off, a forked
child, and the Prometheus exposition read back by prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from django.core.cache import CacheHandler
from django.core.cache.backends.base import InvalidCacheKey
from django.test import override_settings

from django_rustcache._core import ServerDown
from tests.conftest import make_lru, make_memcached, make_redis
from tests.servers import MemcachedServer, RedisServer, SilentServer

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

KINDS = ["lru", "memcached", "redis"]


@pytest.fixture(scope="module")
def servers():
    redis_server, memcached_server = RedisServer(), MemcachedServer()
    yield {"redis": redis_server, "memcached": memcached_server}
    redis_server.close()
    memcached_server.close()


def make(kind, servers, **params):
    if kind == "lru":
        return make_lru(**params)
    if kind == "memcached":
        return make_memcached(servers["memcached"].location, **params)
    return make_redis(servers["redis"].location, **params)


def calls(cache):
    return cache.stats()["calls"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_known_sequence_is_counted_by_method_and_outcome(kind, servers):
    cache = make(kind, servers)
    cache.set("a", b"x" * 100)
    assert cache.add("a", 1) is False
    assert cache.add("b", 2) is True
    assert cache.get("a") == b"x" * 100
    assert cache.get("nope") is None
    assert cache.get_many(["a", "b", "nope", "nope2"]) == {"a": b"x" * 100, "b": 2}
    assert cache.delete("b") is True
    assert cache.delete("b") is False
    cache.set_many({"c": 1, "d": 2})
    assert cache.has_key("c") and not cache.has_key("zz")
    assert cache.incr("c") == 2
    assert cache.touch("c", 100) is True
    s = cache.stats()
    assert s["calls"] == {
        "set": {"stored": 1},
        "add": {"not_stored": 1, "stored": 1},
        "get": {"hit": 1, "miss": 1},
        "get_many": {"hit": 1},
        "delete": {"ok": 1, "miss": 1},
        "set_many": {"stored": 1},
        "has_key": {"hit": 1, "miss": 1},
        "incr": {"ok": 1},
        "touch": {"ok": 1},
    }
    # Keys: get's hit and miss, get_many's 2 found and 2 missed.
    assert (s["hits"], s["misses"]) == (3, 3)
    assert s["sets"] == 1 + 1 + 1
    assert s["failures"] == 0
    assert s["alias"].startswith(type(cache).__name__) and s["backend"].endswith(type(cache).__name__)
    if kind != "lru":
        # Every network call is timed; the 100-byte value went out once and came back twice.
        assert s["latency"]["get"]["count"] == 2
        assert 0 < s["latency"]["get"]["p50_seconds"] <= s["latency"]["get"]["p99_seconds"] < 5
        assert s["bytes_received"] >= 200
        assert s["bytes_sent"] >= 100
        assert s["servers"] and s["store"] is None
    else:
        assert s["store"]["size"] == 3 and s["servers"] == []
    cache.reset_stats()
    s = cache.stats()
    assert (s["calls"], s["hits"], s["misses"], s["latency"]) == ({}, 0, 0, {})


@pytest.mark.parametrize("kind", ["memcached", "redis"])
def test_async_calls_are_counted_as_the_sync_ones(kind, servers):
    cache = make(kind, servers)

    async def main():
        await cache.aset("a", "v")
        for _ in range(3):  # one at a time: on the loop's own connection after the first
            assert await cache.aget("a") == "v"
        assert await cache.aget("nope") is None
        assert await asyncio.gather(*(cache.aget("a") for _ in range(5))) == ["v"] * 5
        assert await cache.aget_many(["a", "nope"]) == {"a": "v"}
        assert await cache.aadd("a", 1) is False
        assert await cache.adelete("a") is True

    asyncio.run(main())
    s = cache.stats()
    assert s["calls"] == {
        "set": {"stored": 1},
        "get": {"hit": 8, "miss": 1},
        "get_many": {"hit": 1},
        "add": {"not_stored": 1},
        "delete": {"ok": 1},
    }
    assert (s["hits"], s["misses"]) == (9, 2)
    assert s["latency"]["get"]["count"] == 9


def test_a_refused_key_a_silent_server_and_a_dead_one_are_counted_by_kind():
    silent = SilentServer()
    try:
        cache = make_memcached(silent.location, OPTIONS={"timeout": 0.2, "retry_timeout": 5})
        with pytest.raises(InvalidCacheKey):
            cache.get("a b")
        with pytest.raises(ServerDown):
            cache.set("k", 1)  # no answer: the deadline passes, the server is marked down
        with pytest.raises(ServerDown):
            cache.set("k", 1)  # not sent at all
        refused = make_redis("redis://127.0.0.1:1")  # nothing listens on port 1
        with pytest.raises(ServerDown):
            refused.get("k")
    finally:
        silent.close()
    with pytest.raises(TypeError, match="pickle"):
        cache.add("k", threading.Lock())  # a value that cannot be stored: nothing is sent
    s = cache.stats()
    assert s["calls"] == {
        "get": {"error_invalid_key": 1},
        "set": {"error_timeout": 1, "error_server_down": 1},
        "add": {"error": 1},
    }
    assert s["failures"] == 2  # a refused key is not the server's failure
    assert refused.stats()["calls"] == {"get": {"error_connection": 1}}


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_turned_off_count_nothing(kind, servers):
    cache = make(kind, servers, OPTIONS={"METRICS": False})
    cache.set("a", 1)
    assert cache.get("a") == 1
    s = cache.stats()
    assert s["metrics_enabled"] is False and s["calls"] == {} and s["hits"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_an_alias_is_one_set_of_metrics_for_every_thread(kind, servers):
    location = {"lru": "metrics-alias", "memcached": servers["memcached"].location}.get(kind, servers["redis"].location)
    backend = {
        "lru": "django_rustcache.lru.LRUObjectCache",
        "memcached": "django_rustcache.memcached.MemcachedCache",
        "redis": "django_rustcache.redis.RedisCache",
    }[kind]
    caches_setting = {
        "default": {"BACKEND": backend, "LOCATION": location, "KEY_PREFIX": "alias-a"},
        "sessions": {"BACKEND": backend, "LOCATION": location, "KEY_PREFIX": "alias-b"},
    }
    with override_settings(CACHES=caches_setting):
        handler = CacheHandler()
        handler["default"].reset_stats()
        handler["sessions"].reset_stats()

        def work():
            # Django makes a backend instance per thread: each thread's is a new one here.
            mine = CacheHandler()
            mine["default"].set("k", 1)
            assert mine["default"].get("k") == 1
            mine["sessions"].get("k")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        default, sessions = handler["default"].stats(), handler["sessions"].stats()
    assert (default["alias"], sessions["alias"]) == ("default", "sessions")
    assert default["calls"] == {"set": {"stored": 4}, "get": {"hit": 4}}
    assert sessions["calls"] == {"get": {"miss": 4}}


def test_a_forked_child_counts_from_zero(servers):
    cache = make_redis(servers["redis"].location)
    cache.set("a", 1)
    cache.get("a")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its own counts, then leave at once
        try:
            before = cache.stats()["calls"]
            cache.get("a")
            after = cache.stats()["calls"]
            os.write(write, repr((before, after)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        before, after = eval(f.read())
    os.waitpid(pid, 0)
    assert before == {}
    assert after == {"get": {"hit": 1}}
    assert cache.stats()["calls"] == {"set": {"stored": 1}, "get": {"hit": 1}}


def test_the_prometheus_exposition_holds_every_alias_by_value(servers):
    lru = make_lru()
    redis_cache = make_redis(servers["redis"].location)
    for _ in range(3):
        lru.set("k", 1)
        redis_cache.get("nope")
    lru_alias, redis_alias = lru.stats()["alias"], redis_cache.stats()["alias"]
    text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family, sample_name, **labels):
        found = [
            s.value
            for s in families[family].samples
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, (family, labels, found)
        return found[0]

    assert (
        value("django_rustcache_calls", "django_rustcache_calls_total", alias=lru_alias, method="set", outcome="stored")
        == 3
    )
    assert (
        value("django_rustcache_calls", "django_rustcache_calls_total", alias=redis_alias, method="get", outcome="miss")
        == 3
    )
    assert value("django_rustcache_keys", "django_rustcache_keys_total", alias=redis_alias, result="missed") == 3
    duration = "django_rustcache_call_duration_seconds"
    assert value(duration, duration + "_count", alias=redis_alias, method="get") == 3
    assert value(duration, duration + "_bucket", alias=redis_alias, method="get", le="+Inf") == 3
    buckets = [
        s.value
        for s in families[duration].samples
        if s.name == duration + "_bucket" and s.labels["alias"] == redis_alias and s.labels["method"] == "get"
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert value(duration, duration + "_sum", alias=redis_alias, method="get") > 0
    assert value("django_rustcache_server_up", "django_rustcache_server_up", alias=redis_alias) == 1


def test_the_metrics_option_passes_the_system_check_of_every_backend():
    from django_rustcache.checks import option_messages
    from django_rustcache.lru import LRUObjectCache
    from django_rustcache.memcached import MemcachedCache, PyLibMCCache
    from django_rustcache.redis import RedisCache

    for cls in (LRUObjectCache, MemcachedCache, PyLibMCCache, RedisCache):
        assert option_messages("x", cls, {"METRICS": False}) == [], cls


@pytest.mark.parametrize("kind", ["memcached", "redis"])
def test_a_server_marked_down_and_found_up_again_is_counted(kind, servers):
    from tests.servers import DelayProxy

    proxy = DelayProxy(servers[kind].port, 0.0)
    try:
        if kind == "redis":
            cache = make_redis(f"redis://127.0.0.1:{proxy.port}", OPTIONS={"SOCKET_TIMEOUT": 0.3, "RETRY_TIMEOUT": 0.3})
        else:
            cache = make_memcached(f"127.0.0.1:{proxy.port}", OPTIONS={"timeout": 0.3, "retry_timeout": 0.3})
        cache.set("k", 1)
        proxy.delay = 2.0
        with pytest.raises(ServerDown):
            cache.get("k")  # no reply in time: marked down
        with pytest.raises(ServerDown):
            cache.get("k")  # still down: not counted again
        proxy.delay = 0.0
        time.sleep(0.4)  # the retry window ends
        assert cache.get("k") == 1  # found up again
        (server,) = cache.stats()["servers"]
        assert (server["went_down"], server["came_back"]) == (1, 1)
        text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
        alias = cache.stats()["alias"]
        moves = {
            s.labels["to"]: s.value
            for f in text_string_to_metric_families(text)
            if f.name == "django_rustcache_server_transitions"
            for s in f.samples
            if s.labels["alias"] == alias
        }
        assert moves == {"down": 1, "up": 1}
    finally:
        proxy.close()


def test_calls_waiting_for_a_connection_are_a_gauge(servers):
    from tests.servers import DelayProxy

    proxy = DelayProxy(servers["redis"].port, 0.0)
    try:
        cache = make_redis(f"redis://127.0.0.1:{proxy.port}", OPTIONS={"MAX_CONNECTIONS": 1, "SOCKET_TIMEOUT": 3})
        cache.set("k", 1)
        proxy.delay = 0.5
        holder = threading.Thread(target=cache.get, args=("k",))
        holder.start()
        time.sleep(0.1)  # the holder has the one connection
        waiter = threading.Thread(target=cache.get, args=("k",))
        waiter.start()
        seen = 0
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline and not seen:
            seen = cache.stats()["servers"][0]["waiting"]
            time.sleep(0.01)
        holder.join()
        waiter.join()
        assert seen == 1
        assert cache.stats()["servers"][0]["waiting"] == 0
    finally:
        proxy.close()


def test_a_backend_made_by_hand_is_named_without_its_password(servers):
    port = servers["redis"].port
    cache = make_redis(f"redis://:not-a-secret@127.0.0.1:{port}/0")
    stats = cache.stats()  # (no call: this server has no password to check it)
    assert "not-a-secret" not in stats["alias"] and f"127.0.0.1:{port}" in stats["alias"]
    assert stats["location"] == [f"redis://:***@127.0.0.1:{port}/0"]


def test_the_project_wide_switch_turns_metrics_off_and_options_win(servers):
    with override_settings(RUSTCACHE_METRICS=False):
        off = make_redis(servers["redis"].location)
        on = make_redis(servers["redis"].location, OPTIONS={"METRICS": True})
        off.get("k")
        on.get("k")
    assert off.stats()["calls"] == {} and off.stats()["metrics_enabled"] is False
    assert on.stats()["calls"] == {"get": {"miss": 1}}
    after = make_lru()  # the switch is read again once the setting is restored
    after.get("k")
    assert after.stats()["calls"] == {"get": {"miss": 1}}
