"""Faults a hostile world produces, against both network backends: exact big counters, signals
arriving mid-call (EINTR, Ctrl-C), silent and trickling servers, hostile lengths, and buffers
that must not stay large. Each test failed before the fix it guards."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import pytest

from django_rustcache._core import ProtocolError, ServerDown
from django_rustcache._metrics import CacheStats
from tests.conftest import make_memcached, make_redis
from tests.servers import FakeReplyServer, SilentServer


class Raised(Exception):
    """What the test's signal handler raises."""


@pytest.fixture
def raising_signal():
    """SIGUSR1 with a handler that raises, sent to this process after `delay` seconds."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: (_ for _ in ()).throw(Raised("signal")))
    timers = []

    def send_after(delay: float) -> None:
        t = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGUSR1))
        t.start()
        timers.append(t)

    yield send_after
    for t in timers:
        t.cancel()
    signal.signal(signal.SIGUSR1, previous)


# --- 1. redis counters are exact at every size ------------------------------------------------


@pytest.mark.parametrize("start", [2**53, 2**53 + 1, 2**62 + 12345, 2**63 - 2, -(2**63) + 1])
def test_redis_incr_and_decr_are_exact_past_2_53(redis_server, start):
    cache = make_redis(redis_server.location)
    cache.set("n", start, None)
    assert cache.incr("n") == start + 1
    assert cache.get("n") == start + 1
    assert cache.decr("n", 3) == start - 2
    assert cache.get("n") == start - 2


def test_redis_incr_past_64_bits_stays_exact(redis_server):
    cache = make_redis(redis_server.location)
    cache.set("n", 2**63 - 1, 30)
    assert cache.incr("n") == 2**63
    assert cache.incr("n", 2**40) == 2**63 + 2**40
    assert cache.decr("n", 2**40 + 1) == 2**63 - 1
    assert 0 < cache.ttl("n") <= 30
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.incr("text")
    with pytest.raises(ValueError):
        cache.incr("missing")


# --- 2. interrupted system calls are retried -------------------------------------------------


@pytest.mark.parametrize("backend", ["redis", "memcached"])
def test_a_1ms_interval_timer_costs_no_call(backend, redis_server, memcached_server):
    cache = (
        make_redis(redis_server.location)
        if backend == "redis"
        else make_memcached(memcached_server.location, OPTIONS={"retry_timeout": 0})
    )
    cache.set("k", b"x" * 200_000)
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        for i in range(3000):
            if i % 2:
                assert len(cache.get("k")) == 200_000
            else:
                cache.set(f"s{i % 10}", i)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- 3, 4, 6. one deadline per call ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis", "memcached"])
def test_a_trickling_reply_ends_at_the_deadline(backend):
    if backend == "redis":
        peer = FakeReplyServer(b"$1000000\r\n", trickle=0.3)
        cache = make_redis(peer.location, OPTIONS={"SOCKET_TIMEOUT": 1, "RETRY_TIMEOUT": 0})
    else:
        peer = FakeReplyServer(b"VALUE t0:1:k 0 1000000\r\n", trickle=0.3)
        cache = make_memcached(peer.location, KEY_PREFIX="t0", OPTIONS={"timeout": 1, "retry_timeout": 0})
    try:
        start = time.monotonic()
        with pytest.raises(ServerDown):
            cache.get("k")
        assert time.monotonic() - start < 1.4
    finally:
        peer.close()


@pytest.mark.parametrize("options", [{}, {"PASSWORD": "pw"}, {"DB": 3}, {"PASSWORD": "pw", "DB": 3}])
def test_redis_a_silent_server_costs_one_connect_timeout_then_fails_at_once(options):
    silent = SilentServer()
    try:
        cache = make_redis(
            silent.location, OPTIONS={"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 1, "RETRY_TIMEOUT": 5, **options}
        )
        # With a handshake (AUTH, SELECT) the connect timeout bounds it; without, the command's.
        bound = 0.5 if options else 1.0
        start = time.monotonic()
        with pytest.raises(ServerDown):
            cache.get("k")
        assert bound - 0.05 < time.monotonic() - start < bound + 0.3
        assert silent.connections_since_last_asked() == 1
        # Marked down: the next calls fail without a connection, so without paying any timeout.
        start = time.monotonic()
        for _ in range(10):
            with pytest.raises(ServerDown, match="marked down"):
                cache.get("k")
        assert silent.connections_since_last_asked() == 0
        assert time.monotonic() - start < 0.5
        ignoring = make_redis(
            silent.location,
            OPTIONS={"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 1, "IGNORE_EXCEPTIONS": True, **options},
        )
        start = time.monotonic()
        assert ignoring.get("k", "miss") == "miss"
        assert time.monotonic() - start < bound + 0.3
    finally:
        silent.close()


# --- 5. one deadline for a whole fan-out -----------------------------------------------------


@pytest.mark.parametrize("call", ["get_many", "set_many", "delete_many", "clear"])
def test_memcached_two_silent_servers_cost_one_timeout(call):
    silent = [SilentServer(), SilentServer()]
    try:
        cache = make_memcached([s.location for s in silent], OPTIONS={"timeout": 1, "retry_timeout": 0})
        keys = [f"k{i}" for i in range(20)]
        start = time.monotonic()
        with pytest.raises(ServerDown):
            if call == "get_many":
                cache.get_many(keys)
            elif call == "set_many":
                cache.set_many(dict.fromkeys(keys, 1))
            elif call == "delete_many":
                cache.delete_many(keys)
            else:
                cache.clear()
        assert time.monotonic() - start < 1.5
    finally:
        for s in silent:
            s.close()


# --- 7. a signal handler that raises ends the call at once -----------------------------------


def _silent_cache(backend: str, location: str):
    if backend == "redis":
        return make_redis(location, OPTIONS={"SOCKET_TIMEOUT": 5, "SOCKET_CONNECT_TIMEOUT": 5, "RETRY_TIMEOUT": 0})
    return make_memcached(location, OPTIONS={"timeout": 5, "retry_timeout": 0})


@pytest.mark.parametrize("backend", ["redis", "memcached"])
@pytest.mark.parametrize("call", ["get", "get_many", "set"])
def test_a_raising_signal_handler_interrupts_a_waiting_call(backend, call, raising_signal):
    silent = SilentServer()
    try:
        cache = _silent_cache(backend, silent.location)
        raising_signal(0.3)
        start = time.monotonic()
        with pytest.raises(Raised):
            if call == "get":
                cache.get("k")
            elif call == "get_many":
                cache.get_many(["a", "b", "c"])
            else:
                cache.set("k", 1)
        assert time.monotonic() - start < 0.6
    finally:
        silent.close()


@pytest.mark.parametrize("backend", ["redis", "memcached"])
def test_ctrl_c_interrupts_a_waiting_call_and_the_cache_still_works(backend, redis_server, memcached_server):
    # Python's own Ctrl-C handler, whatever this process inherited (a background job of a
    # non-interactive shell starts with SIGINT ignored, and then Python installs none).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    silent = SilentServer()
    try:
        cache = _silent_cache(backend, silent.location)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            cache.get("k")
        assert time.monotonic() - start < 0.6
    finally:
        silent.close()
        signal.signal(signal.SIGINT, previous)
    # An interrupted call marks nothing down: a live server answers right after.
    live = make_redis(redis_server.location) if backend == "redis" else make_memcached(memcached_server.location)
    live.set("k", 1)
    assert live.get("k") == 1


def test_ignore_exceptions_never_swallows_the_signal_handlers_exception(raising_signal):
    silent = SilentServer()
    try:
        cache = make_redis(silent.location, OPTIONS={"SOCKET_TIMEOUT": 5, "IGNORE_EXCEPTIONS": True})
        raising_signal(0.3)
        with pytest.raises(Raised):
            cache.get("k")
    finally:
        silent.close()


# --- 8. pooled connections do not keep large buffers -----------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_redis_connections_give_back_large_read_buffers(redis_server):
    cache = make_redis(redis_server.location, OPTIONS={"SOCKET_TIMEOUT": 20})
    cache.set("big", b"x" * (50 * 2**20))
    gc.collect()
    before = _rss_mb()
    barrier = threading.Barrier(4)

    def read() -> None:
        barrier.wait()
        assert len(cache.get("big")) == 50 * 2**20

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache._cache.servers()[0]["idle_connections"] >= 2
    gc.collect()
    # Before the fix each of the 4 pooled connections kept its 50 MB+ parser buffer.
    assert _rss_mb() - before < 60
    cache.delete("big")


# --- 9. a server's lengths are bounded --------------------------------------------------------


_BINARY_HUGE_BODY = bytes([0x81, 0, 0, 0, 0, 0, 0, 0]) + (2**31).to_bytes(4, "big") + bytes(12)


@pytest.mark.parametrize(
    ("backend", "head"),
    [
        ("memcached", b"VALUE t1:1:k 0 1099511627776\r\n"),
        ("memcached-binary", _BINARY_HUGE_BODY),
        ("redis", b"$1099511627776\r\n"),
        ("redis", b"*99999999999\r\n"),
        ("redis", b"*1\r\n$9999999999\r\n"),
    ],
)
def test_a_hostile_length_is_a_protocol_error(backend, head):
    peer = FakeReplyServer(head)
    try:
        if backend == "redis":
            cache = make_redis(peer.location, OPTIONS={"SOCKET_TIMEOUT": 2})
        else:
            options = {"timeout": 2, "binary": backend == "memcached-binary"}
            cache = make_memcached(peer.location, KEY_PREFIX="t1", OPTIONS=options)
        start = time.monotonic()
        with pytest.raises(ProtocolError):
            cache.get("k")
        assert time.monotonic() - start < 1
    finally:
        peer.close()


# --- 10. manage.py check lists every problem of every cache, never crashes -----------------------


def test_manage_py_check_lists_the_problems_of_every_cache():
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.test.utils import override_settings

    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "mc": {"BACKEND": "django_rustcache.memcached.PyLibMCCache", "LOCATION": "127.0.0.1:1",
               "OPTIONS": {"tcp_nodely": True}},
        "mc2": {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": "127.0.0.1:1",
                "OPTIONS": {"behaviors": {"ketma": True}}},
        "rd": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1",
               "OPTIONS": {"CLIENT_CLASS": "myproject.cache.CustomClient"}},
        "lru": {"BACKEND": "django_rustcache.lru.LRUObjectCache", "OPTIONS": {"MAX_ENTRIE": 5}},
    }  # fmt: skip
    with override_settings(CACHES=caches), pytest.raises(SystemCheckError) as raised:
        call_command("check")
    report = str(raised.value)
    for expected in ["'tcp_nodely'", "Did you mean 'tcp_nodelay'", "'ketma'", "Did you mean 'ketama'",
                     "CACHES['rd']: OPTIONS['CLIENT_CLASS']", "'MAX_ENTRIE'"]:  # fmt: skip
        assert expected in report, (expected, report)


# --- 11. with failures ignored, no method raises a server failure ----------------------------


def test_redis_ignore_exceptions_covers_every_method():
    silent = SilentServer()
    try:
        cache = make_redis(
            silent.location, OPTIONS={"IGNORE_EXCEPTIONS": True, "SOCKET_TIMEOUT": 0.3, "RETRY_TIMEOUT": 30}
        )
        answers = {
            "incr": lambda: cache.incr("n"),
            "decr": lambda: cache.decr("n"),
            "incr_version": lambda: cache.incr_version("n"),
            "ttl": lambda: cache.ttl("n"),
            "pttl": lambda: cache.pttl("n"),
            "expire": lambda: cache.expire("n", 10),
            "pexpire": lambda: cache.pexpire("n", 10),
            "expire_at": lambda: cache.expire_at("n", 2_000_000_000),
            "persist": lambda: cache.persist("n"),
            "keys": lambda: cache.keys("*"),
            "iter_keys": lambda: list(cache.iter_keys("*")),
            "delete_pattern": lambda: cache.delete_pattern("*"),
            "reinsert_keys": lambda: cache.reinsert_keys(),
            "clear(version=)": lambda: cache.clear(version=2),
        }
        got = {name: call() for name, call in answers.items()}
        assert got == {
            "incr": None, "decr": None, "incr_version": None, "ttl": None, "pttl": None, "expire": None,
            "pexpire": None, "expire_at": None, "persist": None, "keys": [], "iter_keys": [], "delete_pattern": 0,
            "reinsert_keys": 0, "clear(version=)": True,
        }  # fmt: skip
        strict = make_redis(silent.location, OPTIONS={"SOCKET_TIMEOUT": 0.3, "RETRY_TIMEOUT": 30})
        with pytest.raises(ServerDown):
            strict.ttl("n")
    finally:
        silent.close()


def test_memcached_ignore_exc_covers_incr_and_decr():
    silent = SilentServer()
    try:
        cache = make_memcached(silent.location, OPTIONS={"ignore_exc": True, "timeout": 0.3})
        assert cache.incr("n") is None
        assert cache.decr("n") is None
        strict = make_memcached(silent.location, OPTIONS={"timeout": 0.3})
        with pytest.raises(ServerDown):
            strict.incr("n")
    finally:
        silent.close()


# --- 13. settings that would fail late or silently are refused, naming the setting -----------


@pytest.mark.parametrize("word", ["false", "no", "off", "0", "False"])
def test_a_false_word_turns_failure_ignoring_off(word):
    silent = SilentServer()
    try:
        redis_cache = make_redis(silent.location, OPTIONS={"IGNORE_EXCEPTIONS": word, "SOCKET_TIMEOUT": 0.2})
        mc_cache = make_memcached(silent.location, OPTIONS={"ignore_exc": word, "timeout": 0.2})
        for cache in (redis_cache, mc_cache):
            with pytest.raises(ServerDown):
                cache.get("k")
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("backend", "options", "named"),
    [
        ("redis", {"IGNORE_EXCEPTIONS": "maybe"}, "IGNORE_EXCEPTIONS"),
        ("redis", {"SOCKET_TIMEOUT": 0}, "SOCKET_TIMEOUT"),
        ("redis", {"SOCKET_TIMEOUT": None}, "SOCKET_TIMEOUT"),
        ("redis", {"SOCKET_CONNECT_TIMEOUT": -1}, "SOCKET_CONNECT_TIMEOUT"),
        ("redis", {"MAX_CONNECTIONS": -1}, "MAX_CONNECTIONS"),
        ("redis", {"CONNECTION_POOL_KWARGS": {"max_connections": 0}}, "MAX_CONNECTIONS"),
        ("redis", {"DB": -2}, "DB"),
        ("memcached", {"timeout": 0}, "timeout"),
        ("memcached", {"ignore_exc": "sometimes"}, "ignore_exc"),
        ("memcached", {"max_pool_size": -3}, "max_pool_size"),
    ],
)
def test_a_setting_that_cannot_work_is_improperly_configured(backend, options, named):
    from django.core.exceptions import ImproperlyConfigured

    cache = (
        make_redis("127.0.0.1:1", OPTIONS=options)
        if backend == "redis"
        else make_memcached("127.0.0.1:1", OPTIONS=options)
    )
    with pytest.raises(ImproperlyConfigured, match=named):
        cache.get("k")


@pytest.mark.parametrize(
    ("backend", "location", "named"),
    [
        ("memcached", "cache.local:0", "port"),
        ("memcached", "cache.local:70000", "port"),
        ("memcached", "[::1]:0", "port"),
        ("memcached", "", "LOCATION"),
        ("redis", "cache.local:0", "port"),
        ("redis", "redis://cache.local:70000/0", "port"),
        ("redis", "", "LOCATION"),
    ],
)
def test_a_location_that_cannot_work_is_improperly_configured(backend, location, named, monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.delenv("MEMCACHE_SERVERS", raising=False)
    monkeypatch.delenv("MEMCACHIER_SERVERS", raising=False)
    cache = make_redis(location) if backend == "redis" else make_memcached(location)
    with pytest.raises(ImproperlyConfigured, match=named):
        cache.get("k")


def test_redis_py_pool_options_are_accepted_and_client_name_is_given(redis_server):
    from django.core.management import call_command
    from django.test.utils import override_settings

    options = {
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry_on_timeout": True,
        "client_name": "rustcache-test",
    }
    caches = {"default": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": redis_server.location,
                          "OPTIONS": options}}  # fmt: skip
    with override_settings(CACHES=caches):
        call_command("check")  # no E001: Django's RedisCache passes these to redis-py's pool
    cache = make_redis(redis_server.location, OPTIONS=options)
    cache.set("k", 1)
    listing = cache._cache.execute("CLIENT", "LIST")
    assert b"name=rustcache-test" in listing


# --- reshape: a restart costs multi-key calls no error either ----------------------------------


@pytest.mark.parametrize("call", ["get_many", "set_many", "delete_many"])
def test_memcached_multi_key_calls_survive_a_restart_of_every_server(call):
    from tests.servers import MemcachedServer

    servers = [MemcachedServer(), MemcachedServer()]
    try:
        cache = make_memcached([s.location for s in servers], OPTIONS={"retry_timeout": 5})
        keys = [f"k{i}" for i in range(40)]
        cache.set_many(dict.fromkeys(keys, 1))
        assert len(cache.get_many(keys)) == 40  # both servers hold keys, and pooled connections
        for s in servers:
            s.restart()
        # The pooled connections went stale: each is replaced once, and no error reaches us.
        if call == "get_many":
            assert cache.get_many(keys) == {}
        elif call == "set_many":
            assert cache.set_many(dict.fromkeys(keys, 2)) == []
            assert cache.get_many(keys) == dict.fromkeys(keys, 2)
        else:
            cache.delete_many(keys)
        assert all(s["up"] for s in cache.stats()["servers"])
    finally:
        for s in servers:
            s.close()


def test_every_network_backend_reports_stats_in_one_shape(redis_server, memcached_server):
    shapes = []
    for cache in (make_redis(redis_server.location), make_memcached(memcached_server.location)):
        before = cache.stats()
        cache.set("s", 1)
        cache.get("s")
        cache.get("nothing-here")
        cache.get_many(["s", "nothing-here"])
        after = cache.stats()
        assert after["sets"] - before["sets"] >= 1
        assert after["hits"] - before["hits"] >= 2
        assert after["misses"] - before["misses"] >= 2
        shapes.append((set(after), set(after["servers"][0])))
    common = {"address", "up", "errors", "last_error", "idle_connections"}
    assert shapes[0][0] == shapes[1][0] == set(CacheStats.__annotations__)
    assert common <= shapes[0][1] and common <= shapes[1][1]


def test_memcached_a_server_failing_in_a_multi_key_call_is_logged_when_ignored(memcached_server, caplog):
    import logging

    silent = SilentServer()
    try:
        cache = make_memcached(
            [memcached_server.location, silent.location], OPTIONS={"ignore_exc": True, "timeout": 0.3}
        )
        keys = [f"k{i}" for i in range(40)]
        with caplog.at_level(logging.ERROR, logger="django_rustcache.memcached"):
            assert 0 < len(cache.set_many(dict.fromkeys(keys, 1))) < 40  # the silent server's keys
            found = cache.get_many(keys)
        assert 0 < len(found) < 40  # the live server's keys still read
        assert any("cache server failure" in r.getMessage() for r in caplog.records)
        strict = make_memcached([memcached_server.location, silent.location], OPTIONS={"timeout": 0.3})
        with pytest.raises(ServerDown):
            strict.get_many(keys)
    finally:
        silent.close()
