"""MemcachedCache and PyLibMCCache against real memcached processes the fixtures start."""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import zlib

import pytest
from django.core.cache import InvalidCacheKey
from django.core.exceptions import ImproperlyConfigured

from django_rustcache import CacheError
from django_rustcache._core import ServerDown
from tests.conftest import make_memcached
from tests.load import hammer_through_restarts
from tests.servers import MemcachedServer, SilentServer, free_port

THIRTY_DAYS = 60 * 60 * 24 * 30


@pytest.fixture(params=["tcp", "unix"])
def cache(request, memcached_server, memcached_unix_server):
    server = memcached_server if request.param == "tcp" else memcached_unix_server
    return make_memcached(server.location)


def test_return_values_are_djangos(cache):
    assert cache.set("k", "v") is None
    assert cache.get("k") == "v"
    assert cache.add("k", "other") is False
    assert cache.add("new", 1) is True
    assert cache.touch("k") is True
    assert cache.touch("missing") is False
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert cache.has_key("new") is True
    assert cache.has_key("k") is False
    assert cache.get("k", "dflt") == "dflt"
    assert cache.set_many({"a": 1, "b": 2}) == []
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert cache.delete_many(["a", "b"]) is None
    assert cache.get_many(["a", "b"]) == {}
    assert cache.get_or_set("g", lambda: [1]) == [1]


def test_values_round_trip_exactly(cache):
    values = {
        "bytes": b"\x00\xffraw",
        "text": "héllo \u2603",
        "int": 42,
        "negative": -17,
        "big": 2**80,
        "true": True,
        "false": False,
        "none": None,
        "float": 1.5,
        "list": [1, "two", {"three": 3}],
        "empty": "",
        "empty_bytes": b"",
    }
    cache.set_many(values)
    got = cache.get_many(list(values))
    assert got == values
    for k, v in values.items():
        assert type(got[k]) is type(v), k
        assert type(cache.get(k)) is type(v), k


def test_timeouts(cache, memcached_server):
    cache.set("forever", 1, timeout=None)
    cache.set("zero", 1, timeout=0)
    cache.set("negative", 1, timeout=-1)
    assert cache.get("forever") == 1
    assert cache.get("zero") is None
    assert cache.get("negative") is None
    assert cache.get_backend_timeout(None) == 0
    assert cache.get_backend_timeout(0) == -1
    far = cache.get_backend_timeout(THIRTY_DAYS + 1)
    assert abs(far - (time.time() + THIRTY_DAYS + 1)) < 5  # absolute: memcached reads it so
    cache.set("far", 1, timeout=THIRTY_DAYS + 1)
    assert cache.get("far") == 1
    cache.set("brief", 1, timeout=1)
    time.sleep(2.1)
    assert cache.get("brief") is None
    cache.set("t", 1)
    assert cache.touch("t", 0) is True
    assert cache.get("t") is None


def test_incr_decr(cache):
    cache.set("n", 10)
    assert cache.incr("n") == 11
    assert cache.incr("n", 5) == 16
    assert cache.decr("n", 6) == 10
    assert cache.incr("n", -3) == 7
    assert cache.get("n") == 7
    # memcached's decr stops at 0
    assert cache.decr("n", 100) == 0
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    assert cache.has_key("missing") is False
    cache.set("s", "abc")
    with pytest.raises(TypeError):
        cache.incr("s")
    cache.set("big", 2**64 - 2)
    assert cache.incr("big") == 2**64 - 1


def test_incr_is_atomic_across_threads(cache):
    cache.set("counter", 0)
    per_thread = 100

    def work():
        for _ in range(per_thread):
            cache.incr("counter")

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert cache.get("counter") == 16 * per_thread


@pytest.mark.parametrize(
    "key",
    ["with space", "crlf\r\nflush_all", "tab\tkey", "nul\x00", "a" * 251, "清" * 100, "del\x7f"],
)
def test_invalid_keys_raise_before_anything_is_sent(memcached_server, key):
    cache = make_memcached(memcached_server.location)
    cache.set("sentinel", "still here")
    before = memcached_server.raw(b"stats\r\n")
    sets_before = [line for line in before.split(b"\r\n") if line.startswith(b"STAT cmd_set ")]
    for call in (
        lambda: cache.set(key, 1),
        lambda: cache.get(key),
        lambda: cache.add(key, 1),
        lambda: cache.delete(key),
        lambda: cache.incr(key),
        lambda: cache.touch(key),
        lambda: cache.get_many(["ok", key]),
        lambda: cache.get_many([key]),
        lambda: cache.set_many({"ok": 1, key: 2}),
        lambda: cache.delete_many(["ok", key]),
    ):
        with pytest.raises(InvalidCacheKey):
            call()
    after = memcached_server.raw(b"stats\r\n")
    assert [line for line in after.split(b"\r\n") if line.startswith(b"STAT cmd_set ")] == sets_before
    assert cache.get("sentinel") == "still here"  # no flush_all got through
    assert cache.get("ok") is None  # set_many stored nothing


def test_non_ascii_keys_within_250_bytes_work(cache):
    cache.set("clé-清", "v")
    assert cache.get("clé-清") == "v"
    assert cache.get_many(["clé-清"]) == {"clé-清": "v"}


def test_large_values(memcached_server):
    cache = make_memcached(memcached_server.location)
    cache.set("big", "old")
    too_big = b"x" * (2 * 1024 * 1024)
    assert cache.set("big", too_big) is None
    # Refused by the server's 1 MB limit: the old value must not survive.
    assert cache.get("big") is None
    assert cache.set_many({"big": too_big, "small": 1}) == ["big"]
    nearly = os.urandom(1000 * 1024)
    cache.set("nearly", nearly)
    assert cache.get("nearly") == nearly


def test_values_over_1mb_on_a_server_that_allows_them():
    server = MemcachedServer(args=("-I", "8m"))
    try:
        cache = make_memcached(server.location)
        value = os.urandom(3 * 1024 * 1024)
        cache.set("huge", value)
        assert cache.get("huge") == value
        assert cache.get_many(["huge"]) == {"huge": value}
    finally:
        server.close()


def test_compression_is_zlib_with_pylibmc_flag(memcached_server):
    cache = make_memcached(memcached_server.location, OPTIONS={"min_compress_len": 100})
    value = "compress me " * 1000
    cache.set("z", value)
    assert cache.get("z") == value
    raw = memcached_server.raw(b"get " + cache.make_key("z").encode() + b"\r\n")
    header, body = raw.split(b"\r\n", 1)
    _, _, flags, length = header.split()
    assert int(flags) == 16 | 8
    assert int(length) < len(value) // 10
    assert zlib.decompress(body[: int(length)]).decode() == value
    # Short values stay uncompressed.
    cache.set("short", "x")
    assert b" 16 1\r\n" in memcached_server.raw(b"get " + cache.make_key("short").encode() + b"\r\n")


def test_unpicklable_values_raise_and_store_nothing(cache):
    cache.set("k", "old")
    with pytest.raises((TypeError, pickle.PicklingError)):
        cache.set("k", threading.Lock())
    assert cache.get("k") == "old"
    with pytest.raises((TypeError, pickle.PicklingError)):
        cache.set_many({"a": 1, "b": threading.Lock()})
    assert cache.get("a") is None


def test_location_forms():
    from django_rustcache.memcached import parse_server

    assert parse_server("127.0.0.1:11212") == ("127.0.0.1", 11212, 1)
    assert parse_server("cache.local") == ("cache.local", 11211, 1)
    assert parse_server("[::1]:11213") == ("::1", 11213, 1)
    assert parse_server("[::1]") == ("::1", 11211, 1)
    assert parse_server("unix:/run/mc.sock") == ("/run/mc.sock", 0, 1)
    assert parse_server("/run/mc.sock") == ("/run/mc.sock", 0, 1)
    assert parse_server(("10.0.0.1:11211", 3)) == ("10.0.0.1", 11211, 3)
    cache = make_memcached("a:1;b:2,c:3")
    assert cache._servers == ["a:1", "b:2", "c:3"]


def test_environment_variables(monkeypatch, memcached_server):
    monkeypatch.setenv("MEMCACHE_SERVERS", memcached_server.location)
    # MemcachedCache: the environment fills in a missing LOCATION only.
    assert make_memcached("")._servers == [memcached_server.location]
    assert make_memcached("other:1")._servers == ["other:1"]
    # PyLibMCCache: django-pylibmc lets the environment win.
    assert make_memcached("other:1", backend="PyLibMCCache")._servers == [memcached_server.location]
    monkeypatch.delenv("MEMCACHE_SERVERS")
    monkeypatch.setenv("MEMCACHIER_SERVERS", memcached_server.location)
    assert make_memcached("")._servers == [memcached_server.location]


@pytest.mark.parametrize("behaviors", [{"hash": "crc"}, {"distribution": "random"}])
def test_unsupported_routing_is_an_error_at_start_up(behaviors):
    cache = make_memcached("127.0.0.1:1", OPTIONS={"behaviors": behaviors})
    with pytest.raises(ImproperlyConfigured, match="not supported"):
        cache.get("k")


def test_unknown_behavior_is_an_error_at_start_up():
    cache = make_memcached("127.0.0.1:1", OPTIONS={"behaviors": {"ketamma": True}})
    with pytest.raises(ImproperlyConfigured, match="'ketamma': Did you mean 'ketama'"):
        cache.get("k")


def test_system_check_names_the_nearest_option():
    from django.test.utils import override_settings

    from django_rustcache.checks import check_cache_options

    caches = {
        "a": {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": "h:1", "OPTIONS": {"behavior": {}}},
        "b": {
            "BACKEND": "django_rustcache.memcached.PyLibMCCache",
            "LOCATION": "h:1",
            "OPTIONS": {"tcp_nodelay": True, "ketama": 1},
        },
        "c": {
            "BACKEND": "django_rustcache.memcached.MemcachedCache",
            "LOCATION": "h:1",
            "OPTIONS": {"behaviors": {"tcp_nodelai": 1}},
        },
    }
    with override_settings(CACHES=caches):
        errors = check_cache_options()
    assert [e.hint for e in errors] == ["Did you mean 'behaviors'?", "Did you mean 'tcp_nodelay'?"], errors
    assert "['OPTIONS']['behaviors'] has 'tcp_nodelai'" in errors[1].msg


def test_stats_count_hits_misses_and_sets(memcached_server):
    cache = make_memcached(memcached_server.location, OPTIONS={"min_compress_len": 7})  # a client of its own
    cache.set("a", 1)
    cache.set_many({"b": 2, "c": 3})
    cache.get("a")
    cache.get("missing")
    cache.get_many(["b", "c", "nope"])
    stats = cache.stats()
    # sets: the write calls that stored (the set, and the set_many of two).
    assert (stats["hits"], stats["misses"], stats["sets"], stats["failures"]) == (3, 2, 2, 0)
    assert stats["servers"][0]["up"] is True


def test_close_keeps_pooled_connections(cache):
    cache.set("k", 1)
    cache.close()
    servers = cache.stats()["servers"]
    assert servers[0]["idle_connections"] >= 1
    assert cache.get("k") == 1


def test_instances_with_the_same_settings_share_a_client(memcached_server):
    a = make_memcached(memcached_server.location, KEY_PREFIX="same")
    b = make_memcached(memcached_server.location, KEY_PREFIX="same")
    c = make_memcached(memcached_server.location, KEY_PREFIX="same", OPTIONS={"min_compress_len": 10})
    assert a._shared is b._shared
    assert a._shared is not c._shared


# --- several servers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "behaviors", [{}, {"ketama": True}, {"ketama": True, "hash": "md5"}, {"ketama_weighted": True}]
)
def test_keys_spread_over_servers_and_read_back(memcached_trio, behaviors):
    location = [s.location for s in memcached_trio]
    cache = make_memcached(location, OPTIONS={"behaviors": behaviors})
    data = {f"k{i}": i for i in range(300)}
    assert cache.set_many(data) == []
    assert cache.get_many(list(data)) == data
    # Every server holds some of them, and each key sits where the ring says.
    per_server = [0, 0, 0]
    for k in data:
        made = cache.make_key(k)
        index = cache._cache.server_index(made)
        per_server[index] += 1
        assert memcached_trio[index].raw(f"get {made}\r\n".encode()).startswith(b"VALUE")
    assert all(n > 30 for n in per_server), per_server
    cache.delete_many(list(data))
    assert cache.get_many(list(data)) == {}


@pytest.mark.parametrize(
    "behaviors", [{}, {"ketama": True}, {"ketama": True, "hash": "md5"}, {"ketama_weighted": True}]
)
def test_pylibmc_finds_our_keys_on_the_same_servers_and_reads_our_values(memcached_trio, behaviors):
    pylibmc = pytest.importorskip("pylibmc", reason="pylibmc is not installable on this interpreter")
    location = [s.location for s in memcached_trio]
    ours = make_memcached(location, OPTIONS={"behaviors": behaviors})
    theirs = pylibmc.Client(location, behaviors=behaviors)
    keys = [ours.make_key(f"interop{i}") for i in range(1000)]
    values = {f"interop{i}": f"v{i}" for i in range(1000)}
    ours.set_many(values)
    assert theirs.get_multi(keys) == {ours.make_key(k): v for k, v in values.items()}
    # And values pylibmc writes, of every type, read back through ours.
    typed = {"b": b"raw", "s": "text é", "i": 7, "big": 2**70, "l": [1, 2], "d": {"x": 1.5}}
    theirs.set_multi({ours.make_key(k): v for k, v in typed.items()})
    theirs.set(ours.make_key("zipped"), "z" * 5000, min_compress_len=100)
    assert ours.get_many(list(typed)) == typed
    assert ours.get("zipped") == "z" * 5000
    # A bool pylibmc wrote (its flag 2) reads back as pylibmc itself reads it: an int.
    theirs.set(ours.make_key("flag"), True)
    assert ours.get("flag") == 1
    # Ours: bools are pickled, so both sides read a bool.
    ours.set("ourflag", True)
    assert theirs.get(ours.make_key("ourflag")) is True
    assert ours.incr("i") == 8 and theirs.get(ours.make_key("i")) == 8


def test_get_stats_is_pylibmcs(memcached_server, memcached_unix_server):
    # Sites on Django's PyLibMCCache read server stats with cache._cache.get_stats(): a list of
    # (b"host:port (index)", {name: bytes}) in server order, a unix socket named "path:0".
    cache = make_memcached([memcached_server.location, memcached_unix_server.location], backend="PyLibMCCache")
    cache.set("seen", 1)
    for key in ("seen", "seen", "missing"):
        cache.get(key)
    stats = cache._cache.get_stats()
    assert [name for name, _ in stats] == [
        f"127.0.0.1:{memcached_server.port} (0)".encode(),
        f"{memcached_unix_server.socket_path}:0 (1)".encode(),
    ]
    together = {name: sum(int(s[name]) for _, s in stats) for name in ("get_hits", "get_misses", "cmd_get")}
    assert together["get_hits"] >= 2 and together["get_misses"] >= 1 and together["cmd_get"] >= 3
    assert all(isinstance(v, bytes) for _, s in stats for v in s.values())
    assert float(stats[0][1]["uptime"]) >= 0 and stats[0][1]["pid"].isdigit()


def test_get_stats_answers_as_pylibmc_itself(memcached_server):
    pylibmc = pytest.importorskip("pylibmc", reason="pylibmc is not installable on this interpreter")
    theirs = pylibmc.Client([memcached_server.location]).get_stats()
    ours = make_memcached(memcached_server.location, backend="PyLibMCCache")._cache.get_stats()
    assert [name for name, _ in ours] == [name for name, _ in theirs]
    assert set(theirs[0][1]) <= set(ours[0][1])


def test_get_stats_of_a_dead_server_raises():
    cache = make_memcached(f"127.0.0.1:{free_port()}", backend="PyLibMCCache")
    with pytest.raises(ServerDown):
        cache._cache.get_stats()


# --- failures ---------------------------------------------------------------------------------


def test_dead_server_fails_fast_and_comes_back():
    """pylibmc's rule, where its ``retry_timeout`` behavior asks for it: after any failure the
    server is marked down for that long (calls fail at once, without touching the network)."""
    server = MemcachedServer()
    try:
        cache = make_memcached(server.location, OPTIONS={"behaviors": {"retry_timeout": 0.5}, "timeout": 1})
        cache.set("k", "v")
        server.kill()
        start = time.monotonic()
        with pytest.raises(ServerDown):
            cache.get("k")
        assert time.monotonic() - start < 1.5
        # Marked down: the next call fails at once, without touching the network.
        start = time.monotonic()
        with pytest.raises(ServerDown, match="marked down"):
            cache.set("k", "v2")
        assert time.monotonic() - start < 0.5  # well under the 1 s timeout a try would risk
        assert cache.stats()["servers"][0]["up"] is False
        server.start()
        # Still in the window the behavior asked for, although the server is back.
        with pytest.raises(ServerDown, match="marked down"):
            cache.get("k")
        time.sleep(0.6)
        assert cache.get("k") is None  # a fresh server: empty, but answering
        cache.set("k", "v3")
        assert cache.get("k") == "v3"
        assert cache.stats()["servers"][0]["up"] is True
        assert cache.stats()["servers"][0]["errors"] >= 1
    finally:
        server.close()


def test_silent_server_times_out_within_the_deadline():
    silent = SilentServer()
    try:
        cache = make_memcached(silent.location, OPTIONS={"timeout": 0.5, "retry_timeout": 5})
        start = time.monotonic()
        with pytest.raises(ServerDown):
            cache.get("k")
        elapsed = time.monotonic() - start
        assert 0.4 < elapsed < 2.0, elapsed
        assert silent.connections_since_last_asked() == 1
        # Marked down for retry_timeout: no new connection, so no second timeout.
        start = time.monotonic()
        with pytest.raises(ServerDown):
            cache.set("k", 1)
        assert silent.connections_since_last_asked() == 0
        assert time.monotonic() - start < 0.25
    finally:
        silent.close()


def test_ignore_exc_reads_a_dead_server_as_a_miss(caplog):
    server = MemcachedServer()
    cache = make_memcached(server.location, OPTIONS={"ignore_exc": True, "retry_timeout": 0.2})
    cache.set("k", "v")
    server.close()
    with caplog.at_level(logging.ERROR, logger="django_rustcache.memcached"):
        for _ in range(20):
            assert cache.get("k", "dflt") == "dflt"
            assert cache.set("k", 1) is None
            assert cache.add("k", 1) is False
            assert cache.get_many(["k"]) == {}
            assert cache.set_many({"a": 1}) == ["a"]
    # One line per burst of failures, not one per call.
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_without_ignore_exc_a_dead_server_raises_a_cache_error():
    server = MemcachedServer()
    cache = make_memcached(server.location)
    server.close()
    with pytest.raises(CacheError):
        cache.get("k")
    with pytest.raises(ServerDown):
        cache.get_many(["a", "b"])
    with pytest.raises(ServerDown):  # one key: the same rule
        cache.get_many(["a"])


def test_one_dead_server_of_three_only_loses_its_keys(memcached_trio):
    extra = MemcachedServer()
    location = [s.location for s in memcached_trio[:2]] + [extra.location]
    cache = make_memcached(location, OPTIONS={"ignore_exc": True, "behaviors": {"ketama": True}})
    data = {f"k{i}": i for i in range(200)}
    cache.set_many(data)
    extra.close()
    got = cache.get_many(list(data))
    lost = {k for k in data if cache._cache.server_index(cache.make_key(k)) == 2}
    assert set(got) == set(data) - lost
    assert all(got[k] == data[k] for k in got)


def test_remove_failed_moves_keys_to_live_servers(memcached_trio):
    extra = MemcachedServer()
    location = [s.location for s in memcached_trio[:2]] + [extra.location]
    cache = make_memcached(
        location,
        OPTIONS={"behaviors": {"ketama": True, "remove_failed": 1, "retry_timeout": 1, "dead_timeout": 30}},
    )
    key = next(f"k{i}" for i in range(1000) if cache._cache.server_index(cache.make_key(f"k{i}")) == 2)
    extra.close()
    with pytest.raises(ServerDown):
        cache.set(key, 1)
    # Out of the ring: its keys now live on the others.
    cache.set(key, 2)
    assert cache.get(key) == 2
    assert cache._cache.server_index(cache.make_key(key)) in (0, 1)
    assert cache.stats()["servers"][2]["removed"] is True


def test_server_killed_and_restarted_under_load_never_returns_a_wrong_value():
    server = MemcachedServer()
    cache = make_memcached(server.location, OPTIONS={"retry_timeout": 0.1, "timeout": 1})
    try:
        hammer_through_restarts(cache, server, ServerDown)
    finally:
        server.close()


def test_fork_child_uses_its_own_connections(memcached_server):
    cache = make_memcached(memcached_server.location)
    cache.set("before", "fork")
    assert cache._cache.servers()[0]["idle_connections"] >= 1
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if cache.get("before") != "fork":
                code = 2
            cache.set("child", "yes")
            if cache.incr("n") if cache.add("n", 1) else True:
                pass
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get("child") == "yes"
    assert cache.get("before") == "fork"


# --- django-pylibmc's PyLibMCCache -------------------------------------------------------------


def test_pylibmc_flavour_timeout_zero_means_forever(memcached_server):
    cache = make_memcached(memcached_server.location, backend="PyLibMCCache")
    assert cache.set("k", "v", timeout=0) is True
    assert cache.get("k") == "v"


def test_pylibmc_flavour_logs_and_answers_on_errors(caplog):
    server = MemcachedServer()
    cache = make_memcached(server.location, backend="PyLibMCCache", OPTIONS={"retry_timeout": 0})
    server.close()
    with caplog.at_level(logging.ERROR, logger="django.pylibmc"):
        assert cache.get("k", "dflt") == "dflt"
        assert cache.set("k", 1) is False
        assert cache.add("k", 1) is False
        assert cache.delete("k") is False
        assert cache.get_many(["k"]) == {}
    assert any(r.name == "django.pylibmc" for r in caplog.records)


def test_pylibmc_flavour_reads_options_as_behaviors_and_top_level_params(memcached_trio):
    location = [s.location for s in memcached_trio]
    cache = make_memcached(
        location,
        backend="PyLibMCCache",
        BINARY=True,
        OPTIONS={"ketama": True, "tcp_nodelay": True, "connect_timeout": 500},
    )
    assert cache._cache.binary is True
    assert cache._cache.behaviors["ketama"] is True
    ketama = make_memcached(location, OPTIONS={"behaviors": {"ketama": True}})
    for i in range(50):
        made = cache.make_key(f"k{i}")
        assert cache._cache.server_index(made) == ketama._cache.server_index(made)


# --- binary protocol and SASL -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sasl_server():
    server = MemcachedServer(sasl=("alice", "s3cret"))
    yield server
    server.close()


def _exercise(cache):
    cache.clear()
    cache.set("k", {"v": 1})
    assert cache.get("k") == {"v": 1}
    assert cache.get("missing", "dflt") == "dflt"
    assert cache.add("k", 2) is False
    assert cache.add("new", 2) is True
    assert cache.set_many({"a": 1, "b": "two", "c": b"3"}) == []
    assert cache.get_many(["a", "b", "c", "nope", "a"]) == {"a": 1, "b": "two", "c": b"3"}
    assert cache.incr("a", 5) == 6
    assert cache.decr("a", 2) == 4
    with pytest.raises(ValueError):
        cache.incr("nope")
    with pytest.raises(TypeError):
        cache.incr("b")
    assert cache.touch("a", 100) is True
    assert cache.touch("nope") is False
    cache.set("zero", 1, timeout=0)
    assert cache.get("zero") is None
    assert cache.add("zero-add", 1, timeout=0) is True
    assert cache.get("zero-add") is None
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    cache.delete_many(["b", "c"])
    assert cache.get_many(["b", "c"]) == {}
    big = os.urandom(600 * 1024)
    cache.set("big", big)
    assert cache.get("big") == big
    cache.set("big", b"x" * (2 * 1024 * 1024))
    assert cache.get("big") is None  # refused as too large, and the old value is gone
    cache.clear()
    assert cache.get("k") is None


def test_binary_protocol_serves_the_whole_api(memcached_server):
    cache = make_memcached(memcached_server.location, OPTIONS={"binary": True})
    assert cache._cache.binary is True
    _exercise(cache)


def test_sasl_authentication(sasl_server):
    cache = make_memcached(sasl_server.location, OPTIONS={"username": "alice", "password": "s3cret"})
    assert cache._cache.binary is True  # SASL needs the binary protocol
    _exercise(cache)
    assert cache.server_stats()[sasl_server.location]["pid"] == str(sasl_server.proc.pid)


def test_sasl_from_the_environment(sasl_server, monkeypatch):
    monkeypatch.setenv("MEMCACHE_USERNAME", "alice")
    monkeypatch.setenv("MEMCACHE_PASSWORD", "s3cret")
    cache = make_memcached(sasl_server.location)
    cache.set("env", 1)
    assert cache.get("env") == 1


def test_sasl_wrong_password_is_a_clear_error(sasl_server):
    cache = make_memcached(sasl_server.location, OPTIONS={"username": "alice", "password": "wrong"})
    with pytest.raises(CacheError, match=r'SASL authentication as "alice" failed'):
        cache.get("k")


def test_sasl_server_without_credentials_refuses(sasl_server):
    cache = make_memcached(sasl_server.location)
    with pytest.raises(CacheError):
        cache.set("k", 1)


def test_half_credentials_are_a_configuration_error(memcached_server):
    cache = make_memcached(memcached_server.location, OPTIONS={"username": "alice"})
    with pytest.raises(ImproperlyConfigured, match="username and a password"):
        cache.get("k")


def test_pylibmc_flavour_takes_django_pylibmc_credentials(sasl_server):
    cache = make_memcached(
        sasl_server.location, backend="PyLibMCCache", BINARY=True, USERNAME="alice", PASSWORD="s3cret"
    )
    cache.set("k", "v")
    assert cache.get("k") == "v"


def test_a_connection_that_answered_with_an_error_is_never_reused():
    from tests.servers import ScriptedServer

    cache = make_memcached("127.0.0.1:1", KEY_PREFIX="p")  # only for make_key
    key = cache.make_key("k").encode()
    server = ScriptedServer(
        stray=b"VALUE " + key + b" 16 5\r\nSTALE\r\nEND\r\n",
        fresh=b"VALUE " + key + b" 16 5\r\nFRESH\r\nEND\r\n",
    )
    try:
        cache = make_memcached(server.location, KEY_PREFIX="p")
        with pytest.raises(CacheError, match="boom"):
            cache.get("k")
        time.sleep(0.1)  # the stray reply has arrived on the first connection by now
        assert cache.get("k") == "FRESH"
        assert server.connections == 2
    finally:
        server.close()
