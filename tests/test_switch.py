"""A switch without surprises (issue 22): what a predecessor's site does keeps working on ours,
checked against real servers and, where they are installed, the predecessors themselves."""

from __future__ import annotations

import re
import threading
import warnings

import pytest
from django.core.cache.backends.base import BaseCache

from tests.conftest import make_lru, make_memcached, make_redis

# --- keys are made exactly as Django's make_key makes them ----------------------------------

ODD_KEYS = [b"abc", "abc", b"\xff\x00bytes", 12, 1.5, ("t",), "清水"]


def django_key(key, prefix="", version=1):
    return BaseCache({"KEY_PREFIX": prefix, "VERSION": version}).make_key(key)


def _distinct_round_trip(cache):
    with warnings.catch_warnings():
        # b"\xff\x00bytes" renders as "b'\\xff\\x00bytes'": printable, no CacheKeyWarning.
        warnings.simplefilter("error")
        for i, key in enumerate(ODD_KEYS):
            cache.set(key, i)
        assert [cache.get(key) for key in ODD_KEYS] == list(range(len(ODD_KEYS)))
        assert cache.get_many(ODD_KEYS) == {key: i for i, key in enumerate(ODD_KEYS)}


@pytest.mark.parametrize("key", ODD_KEYS, ids=repr)
def test_the_made_key_is_djangos(key, redis_server, memcached_server):
    """Before: b"abc" was made ':1:abc' (colliding with "abc"), and non-UTF-8 bytes raised
    ValueError; Django makes ":1:b'abc'" and stores anything."""
    for cache in (make_lru(), make_redis(redis_server.location), make_memcached(memcached_server.location)):
        cache.key_prefix = "site"
        assert cache.make_key(key) == django_key(key, "site")


def test_odd_keys_stay_apart_on_every_backend(redis_server, memcached_server):
    for cache in (
        make_lru(),
        make_lru("pickled"),
        make_redis(redis_server.location),
        make_memcached(memcached_server.location),
        make_memcached(memcached_server.location, "PyLibMCCache"),
    ):
        _distinct_round_trip(cache)


def test_a_bytes_key_lands_where_djangos_redis_cache_puts_it(redis_server):
    """A warm switch from Django's RedisCache (and django-redis, which makes keys the same way):
    what it stored under b"abc" is ours to read, and the other way round."""
    pytest.importorskip("redis")
    from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

    theirs = DjangoRedisCache(redis_server.location, {"KEY_PREFIX": "warm"})
    ours = make_redis(redis_server.location, KEY_PREFIX="warm")
    theirs.set(b"abc", "theirs")
    theirs.set(b"\xfe", "odd")
    assert ours.get(b"abc") == "theirs" and ours.get(b"\xfe") == "odd"
    assert ours.get("abc") is None
    ours.set(b"mine", [1, 2])
    assert theirs.get(b"mine") == [1, 2]
    for pool in theirs._cache._pools.values():
        pool.disconnect()


def test_a_bytes_key_lands_where_djangos_memcached_backends_put_it(memcached_server):
    cache = make_memcached(memcached_server.location, KEY_PREFIX="warm")
    cache.set(b"abc", b"v")
    assert memcached_server.raw(b"get warm:1:b'abc'\r\n").startswith(b"VALUE warm:1:b'abc' ")


def test_values_cross_between_djangos_pymemcache_backend_and_ours_both_ways(memcached_server):
    # A site switching from PyMemcacheCache with one server keeps its values: pymemcache's
    # serde flags (bytes 0, pickle 1, int 2, text 16) read here, and ours read there.
    pytest.importorskip("pymemcache")
    from django.core.cache.backends.memcached import PyMemcacheCache

    theirs = PyMemcacheCache(memcached_server.location, {"KEY_PREFIX": "pm"})
    ours = make_memcached(memcached_server.location, KEY_PREFIX="pm")
    values = {"int": 42, "big": 2**70, "text": "h\u00e9llo", "bytes": b"\x00\x01", "dict": {"a": [1]}, "bool": True}
    try:
        for key, value in values.items():
            theirs.set(f"t-{key}", value)
            ours.set(f"o-{key}", value)
        for key, value in values.items():
            for got in (ours.get(f"t-{key}"), theirs.get(f"o-{key}")):
                assert got == value and type(got) is type(value), (key, got)
        theirs.set("n", 5)
        assert ours.incr("n") == 6 and theirs.get("n") == 6
    finally:
        theirs.close()


# --- the predecessors' options: honoured, or accepted with a warning saying why --------------


def _check(caches):
    from django.core import checks
    from django.test.utils import override_settings

    from django_rustcache.checks import check_cache_options

    with override_settings(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, **caches}):
        found = check_cache_options()
    return [m for m in found if m.level >= checks.WARNING]


DJANGO_REDIS_OPTIONS = {
    "CLIENT_CLASS": "django_redis.client.DefaultClient",
    "CLOSE_CONNECTION": True,
    "REPLICA_READ_ONLY": False,
    "REDIS_CLIENT_CLASS": "redis.client.Redis",
    "REDIS_CLIENT_KWARGS": {"health_check_interval": 30},
    "CONNECTION_POOL_KWARGS": {"max_connections": 100, "retry_on_timeout": True},
    "SOCKET_CONNECT_TIMEOUT": 5,
    "SOCKET_TIMEOUT": 5,
}


def test_django_redis_documented_options_are_warnings_not_errors(redis_server):
    """Before: E001 Errors (migrate and runserver refused to run), with hints naming options of
    another meaning (CLOSE_CONNECTION -> MAX_CONNECTIONS, REPLICA_READ_ONLY -> REPLICA_READ)."""
    from django.core.management import call_command
    from django.test.utils import override_settings

    caches = {"r": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": redis_server.location,
                    "OPTIONS": DJANGO_REDIS_OPTIONS}}  # fmt: skip
    found = _check(caches)
    assert {m.id for m in found} == {"django_rustcache.W001"}, found
    said = {re.findall(r"\['([^']+)'\]", m.msg)[-1] for m in found}
    assert said == {"CLOSE_CONNECTION", "REPLICA_READ_ONLY", "REDIS_CLIENT_CLASS", "health_check_interval",
                    "retry_on_timeout"}, found  # fmt: skip
    assert all("MAX_CONNECTIONS" not in (m.hint or "") and "REPLICA_READ'" not in m.msg for m in found)
    with override_settings(CACHES={"default": caches["r"]}):
        call_command("check")  # warnings stop nothing
    cache = make_redis(redis_server.location, OPTIONS=DJANGO_REDIS_OPTIONS)
    cache.set("k", 1)
    cache.close()
    assert cache.get("k") == 1


def test_options_that_ask_for_what_we_do_anyway_say_nothing(redis_server):
    options = {"REPLICA_READ_ONLY": True, "CLOSE_CONNECTION": False}
    assert (
        _check({"r": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": "redis://h", "OPTIONS": options}})
        == []
    )


def test_a_name_no_predecessor_knows_is_an_error_with_an_honest_hint():
    options = {"SOCKET_TIMOUT": 1, "FROBNICATE": 1, "CONNECTION_POOL_KWARGS": {"pasword": "x"}}
    caches = {"r": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": "redis://h", "OPTIONS": options}}
    found = {m.msg.split("has ")[1].split(",")[0]: m for m in _check(caches)}
    assert {m.id for m in found.values()} == {"django_rustcache.E001"}
    assert found["'SOCKET_TIMOUT'"].hint == "Did you mean 'SOCKET_TIMEOUT'?"
    assert found["'pasword'"].hint == "Did you mean 'password'?"
    assert found["'FROBNICATE'"].hint.startswith("Known: ")


def test_connection_pool_kwargs_are_honoured(redis_server):
    """Before: a password in CONNECTION_POOL_KWARGS was dropped (NOAUTH), and django-redis-cache's
    CONNECTION_POOL_CLASS_KWARGS max_connections ignored (4 connections opened for 2)."""
    import threading

    from tests.servers import RedisServer

    locked = RedisServer(password="pool-pw")
    try:
        cache = make_redis(locked.location.replace(":pool-pw@", ""), OPTIONS={
            "CONNECTION_POOL_KWARGS": {"password": "pool-pw", "db": 3, "socket_timeout": 2}})  # fmt: skip
        cache.set("k", "v")
        assert cache.get("k") == "v"
        assert cache._cache.execute("CLIENT", "INFO").split(b" db=")[1].startswith(b"3 ")
    finally:
        locked.close()
    from django_rustcache.redis_cache import RedisCache as DjangoRedisCacheCompat

    cache = DjangoRedisCacheCompat(
        redis_server.location,
        {"KEY_PREFIX": "poolkw", "OPTIONS": {"CONNECTION_POOL_CLASS_KWARGS": {"max_connections": 2}}},
    )
    barrier = threading.Barrier(8)

    def work():
        barrier.wait()
        for i in range(50):
            cache.set(f"k{i}", "x" * 10_000)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(s["open_connections"] for s in cache.stats()["servers"]) <= 2, cache.stats()
    options = {"CONNECTION_POOL_CLASS_KWARGS": {"max_connections": 2, "timeout": 20}}
    found = _check(
        {"r": {"BACKEND": "django_rustcache.redis_cache.RedisCache", "LOCATION": "redis://h", "OPTIONS": options}}
    )
    assert [m.id for m in found] == ["django_rustcache.W001"] and "'timeout'" in found[0].msg


# --- pylibmc's behaviors: each honoured with pylibmc's effect, refused, or a warning ----------


def test_pylibmc_behaviors_without_meaning_are_warnings():
    caches = {
        "a": {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": "127.0.0.1:1",
              "OPTIONS": {"behaviors": {"tcp_nodelay": True, "tcp_keepalive": True, "_poll_timeout": 5}}},
        "b": {"BACKEND": "django_rustcache.memcached.PyLibMCCache", "LOCATION": "127.0.0.1:1",
              "OPTIONS": {"tcp_nodelay": True, "no_block": True, "_noreply": True, "cas": True}},
    }  # fmt: skip
    found = sorted((m.obj, m.msg.split("[")[-1].split("]")[0]) for m in _check(caches))
    assert found == [("a", "'_poll_timeout'"), ("a", "'tcp_keepalive'"), ("b", "'_noreply'"), ("b", "'cas'")]


@pytest.mark.parametrize(
    "behaviors",
    [{"num_replicas": 1}, {"ketama": True, "ketama_hash": "crc"}, {"ketama_weighted": True, "ketama_hash": "default"}],
)
def test_pylibmc_behaviors_that_would_move_keys_are_refused(behaviors):
    from django.core.exceptions import ImproperlyConfigured

    cache = make_memcached("127.0.0.1:1", OPTIONS={"behaviors": behaviors})
    name = next(iter(k for k in behaviors if k in ("num_replicas", "ketama_hash")))
    with pytest.raises(ImproperlyConfigured, match=name):
        cache.get("k")


def test_pylibmc_behaviors_that_match_ours_are_accepted():
    for behaviors in ({"num_replicas": 0}, {"ketama": True, "ketama_hash": "default"},
                      {"ketama_weighted": True, "ketama_hash": "md5"}):  # fmt: skip
        make_memcached("127.0.0.1:1", OPTIONS={"behaviors": behaviors, "ignore_exc": True}).get("k")


@pytest.mark.parametrize("name", ["_sort_hosts", "sort_hosts"])
def test_sort_hosts_places_keys_as_on_the_sorted_list(memcached_trio, name):
    """libmemcached sorts the servers (host, then port) before it places keys: with modula, a
    list given in another order then holds every key where the sorted list would."""
    by_port = sorted(memcached_trio, key=lambda s: s.port)
    shuffled = [by_port[2].location, by_port[0].location, by_port[1].location]
    in_order = [s.location for s in by_port]
    sorting = make_memcached(shuffled, KEY_PREFIX="sorted", OPTIONS={"behaviors": {name: True}})
    sorted_list = make_memcached(in_order, KEY_PREFIX="sorted")
    as_given = make_memcached(shuffled, KEY_PREFIX="sorted")
    keys = [f"k{i}" for i in range(60)]
    sorting.set_many(dict.fromkeys(keys, 1))
    assert sorted_list.get_many(keys) == dict.fromkeys(keys, 1)
    assert len(as_given.get_many(keys)) < len(keys)


# --- get_redis_connection: django-redis's raw client, on the same server, db and credentials ---


def _settings_with(alias, backend, location, **params):
    from django.test.utils import override_settings

    return override_settings(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                                     alias: {"BACKEND": backend, "LOCATION": location, **params}})  # fmt: skip


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_get_redis_connection_is_redis_py_on_the_caches_server_and_db(unix):
    pytest.importorskip("redis")
    from django.core.cache import caches

    from django_rustcache.redis import get_redis_connection
    from tests.servers import RedisServer

    server = RedisServer(unix=unix, password="raw-pw")
    location = server.location.replace(":raw-pw@", "")
    try:
        with _settings_with("raw", "django_rustcache.redis.RedisCache", location,
                            OPTIONS={"PASSWORD": "raw-pw", "DB": 5, "CLIENT_NAME": "raw-test"}):  # fmt: skip
            cache = caches["raw"]
            r = get_redis_connection("raw")
            assert get_redis_connection("raw") is r  # one client (and pool) per alias and process
            pipe = r.pipeline()
            pipe.set(cache.make_key("n"), 41).incr(cache.make_key("n"))
            assert pipe.execute() == [True, 42]
            assert cache.get("n") == 42
            cache.set("obj", {"a": 1})
            assert r.exists(cache.make_key("obj")) == 1
            assert r.client_info()["db"] == 5 and r.client_getname() == "raw-test"
            assert r.eval("return redis.call('GET', KEYS[1])", 1, cache.make_key("n")) == b"42"
            for pool in {id(c.connection_pool): c.connection_pool for c in (r,)}.values():
                pool.disconnect()
    finally:
        server.close()


def test_django_redis_own_get_redis_connection_works_on_our_cache(redis_server):
    # A site that keeps `from django_redis import get_redis_connection` (django-redis is still
    # installed while it switches) gets a client on the cache's server, not NotImplementedError.
    django_redis = pytest.importorskip("django_redis")
    from django.core.cache import caches

    from django_rustcache.redis import get_redis_connection

    with _settings_with("dr", "django_rustcache.redis.RedisCache", redis_server.location, OPTIONS={"DB": 4}):
        r = django_redis.get_redis_connection("dr")
        assert r is get_redis_connection("dr")
        caches["dr"].set("seen", 7)
        assert r.get(caches["dr"].make_key("seen")) == b"7"
        assert r.client_info()["db"] == 4
        client, index = caches["dr"].client.get_client(write=True, show_index=True)
        assert client is r and index == 0
        r.connection_pool.disconnect()


def test_djangos_own_way_to_a_raw_client_works_on_our_cache(redis_server):
    # Sites on Django's RedisCache reach redis-py with cache._cache.get_client(key=None, *,
    # write=False) (pattern deletes, rate limiters, SCAN); after the switch it must still answer.
    pytest.importorskip("redis")
    from django.core.cache import caches

    from django_rustcache.redis import get_redis_connection

    with _settings_with("dj", "django_rustcache.redis.RedisCache", redis_server.location, OPTIONS={"DB": 6}):
        cache = caches["dj"]
        r = cache._cache.get_client()
        assert cache._cache.get_client("any key") is r and cache._cache.get_client(None) is r
        assert cache._cache.get_client(write=True) is get_redis_connection("dj")
        cache.set("n", 41)
        assert r.incr(cache.make_key("n")) == 42 and cache.get("n") == 42
        assert r.client_info()["db"] == 6
        assert sorted(r.scan_iter(match=cache.make_key("n"))) == [cache.make_key("n").encode()]
        # Another thread's instance of the alias answers too.
        seen = []
        t = threading.Thread(target=lambda: seen.append(caches["dj"]._cache.get_client(write=True)))
        t.start()
        t.join()
        assert seen == [get_redis_connection("dj")]
        r.connection_pool.disconnect()


def test_get_redis_connection_reads_from_a_replica_when_asked(redis_server):
    pytest.importorskip("redis")
    from django.core.cache import caches

    from django_rustcache.redis import get_redis_connection
    from tests.servers import RedisServer

    replica = RedisServer(args=("--replicaof", "127.0.0.1", str(redis_server.port)))
    try:
        with _settings_with("rr", "django_rustcache.redis.RedisCache", [redis_server.location, replica.location]):
            leader, reader = get_redis_connection("rr"), get_redis_connection("rr", write=False)
            assert leader.connection_pool.connection_kwargs["port"] == redis_server.port
            assert reader.connection_pool.connection_kwargs["port"] == replica.port
            assert reader.role()[0] == b"slave"
            # Django's RedisCacheClient.get_client reads from a replica too, and writes to the leader.
            assert caches["rr"]._cache.get_client() is reader
            assert caches["rr"]._cache.get_client(write=True) is leader
            for c in (leader, reader):
                c.connection_pool.disconnect()
    finally:
        replica.close()


def test_get_redis_connection_without_redis_py_names_the_extra(redis_server, monkeypatch):
    import sys

    from django.core.exceptions import ImproperlyConfigured

    from django_rustcache.redis import get_redis_connection

    monkeypatch.setitem(sys.modules, "redis", None)
    with (
        _settings_with("nopy", "django_rustcache.redis.RedisCache", redis_server.location),
        pytest.raises(ImproperlyConfigured, match=r"django-rustcache\[redis-py\]"),
    ):
        get_redis_connection("nopy")


def test_get_redis_connection_refuses_what_is_not_ours():
    from django_rustcache.redis import get_redis_connection

    with pytest.raises(NotImplementedError, match="LRUObjectCache"):
        get_redis_connection("default")


# --- exceptions: what a predecessor's site catches still catches ours -------------------------


def test_a_dead_server_is_caught_as_the_predecessors_catch_it(memcached_server):
    """django-redis sites catch ConnectionInterrupted, redis-py's ConnectionError/TimeoutError or
    ResponseError; ours are those too (where installed), and still ours."""
    redis_errors = pytest.importorskip("redis.exceptions")
    from django_redis.exceptions import ConnectionInterrupted

    from django_rustcache import CacheError, ServerDown, ServerError
    from tests.servers import RedisServer, SilentServer, free_port

    refused = make_redis(f"redis://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionInterrupted) as caught:
        refused.get("k")
    assert isinstance(caught.value, redis_errors.ConnectionError) and isinstance(caught.value, ServerDown)
    assert "refused" in str(caught.value) and type(caught.value).__name__ == "ServerDown"
    silent = SilentServer()
    try:
        slow = make_redis(f"redis://{silent.location}", OPTIONS={"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2})
        with pytest.raises(redis_errors.TimeoutError) as caught:
            slow.get("k")
        assert isinstance(caught.value, (ServerDown, ConnectionInterrupted))
    finally:
        silent.close()
    server = RedisServer()
    try:
        with pytest.raises(redis_errors.ResponseError) as caught:
            make_redis(server.location)._cache.execute("NOSUCHCOMMAND")
    finally:
        server.close()
    assert isinstance(caught.value, ServerError) and isinstance(caught.value, CacheError)
    # memcached raises the same classes: a memcached site's `except ServerDown` is unchanged.
    with pytest.raises(ServerDown):
        make_memcached(f"127.0.0.1:{free_port()}").get("k")


def test_a_dead_memcached_server_is_caught_as_pylibmc_errors_are():
    pylibmc = pytest.importorskip("pylibmc")
    from django_rustcache import ServerDown
    from tests.servers import free_port

    with pytest.raises(pylibmc.Error) as caught:
        make_memcached(f"127.0.0.1:{free_port()}").get("k")
    assert isinstance(caught.value, ServerDown)


def test_the_catchable_exceptions_print_and_repr_as_ours():
    pytest.importorskip("redis")
    import asyncio

    from django_rustcache import ServerDown
    from tests.servers import free_port

    cache = make_redis(f"redis://127.0.0.1:{free_port()}")
    with pytest.raises(ServerDown) as caught:
        cache.get("k")
    assert repr(caught.value).startswith("ServerDown(") and "refused" in str(caught.value)
    import pickle

    back = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(back, ServerDown) and back.args == caught.value.args

    async def failed_task():
        task = asyncio.ensure_future(cache.aget("k"))
        await asyncio.wait([task])
        return repr(task)  # asyncio shows the exception's repr

    assert "ServerDown(" in asyncio.run(failed_task())
