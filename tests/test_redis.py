"""RedisCache against real redis-server processes the fixtures start."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings

import pytest
from django.core.cache import CacheKeyWarning

from django_rustcache import CacheError
from django_rustcache._core import ServerDown
from tests.conftest import make_redis
from tests.load import hammer_through_restarts
from tests.servers import RedisServer, SilentServer


@pytest.fixture(params=["tcp", "unix"])
def cache(request, redis_server, redis_unix_server):
    server = redis_server if request.param == "tcp" else redis_unix_server
    return make_redis(server.location)


def redis_py(server):
    redis = pytest.importorskip("redis")
    if server.unix:
        return redis.Redis(unix_socket_path=server.socket_path)
    return redis.Redis(port=server.port)


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
    assert cache.set_many({"a": 1, "b": 2}) == []
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    # django-redis's count (Django's suite pins only the no-keys answer, None).
    assert cache.delete_many(["a", "b", "c"]) == 2
    assert cache.delete_many([]) is None
    assert cache.get_many(["a", "b"]) == {}


def test_timeouts(redis_server):
    cache = make_redis(redis_server.location)
    raw = redis_py(redis_server)
    cache.set("forever", 1, timeout=None)
    assert raw.ttl(cache.make_key("forever")) == -1
    cache.set("five", 1, timeout=5)
    assert 0 < raw.ttl(cache.make_key("five")) <= 5
    cache.set("five", 1, timeout=0)
    assert cache.get("five") is None
    cache.set("neg", 1, timeout=-3)
    assert cache.get("neg") is None
    assert cache.add("zero", 1, timeout=0) is True
    assert cache.get("zero") is None
    cache.set("t", 1, timeout=5)
    assert cache.touch("t", None) is True
    assert raw.ttl(cache.make_key("t")) == -1
    assert cache.touch("t", 0) is True
    assert cache.get("t") is None
    cache.set_many({"m": 1}, timeout=0)
    assert cache.get("m") is None


def test_incr_is_atomic_keeps_ttl_and_never_creates(redis_server):
    cache = make_redis(redis_server.location)
    raw = redis_py(redis_server)
    cache.set("n", 10, timeout=100)
    assert cache.incr("n", 5) == 15
    assert cache.decr("n", 20) == -5
    assert 0 < raw.ttl(cache.make_key("n")) <= 100
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    assert raw.exists(cache.make_key("missing")) == 0
    cache.set("s", "text")
    with pytest.raises(TypeError):
        cache.incr("s")

    cache.set("counter", 0)

    def work():
        for _ in range(100):
            cache.incr("counter")

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert cache.get("counter") == 1600


def test_values_round_trip(cache):
    values = {"int": 7, "big": 2**70, "neg": -3, "bool": True, "str": "é", "bytes": b"\x00", "none": None, "list": [1]}
    cache.set_many(values)
    got = cache.get_many(list(values))
    assert got == values
    assert all(type(got[k]) is type(v) for k, v in values.items())


def test_keys_are_never_split_into_commands(cache):
    keys = ["with space", "crlf\r\nFLUSHALL", "清水", "k" * 10_240]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheKeyWarning)
        cache.set("sentinel", "still here")
        for i, key in enumerate(keys):
            cache.set(key, i)
        assert [cache.get(key) for key in keys] == list(range(len(keys)))
        assert cache.get_many(keys) == {k: i for i, k in enumerate(keys)}
    assert cache.get("sentinel") == "still here"


def test_invalid_keys_warn_like_django(cache):
    with pytest.raises(CacheKeyWarning):
        cache.set("bad key", 1)
    assert cache.get_many([]) == {}


def test_reads_what_djangos_redis_cache_wrote_and_the_reverse(redis_server):
    pytest.importorskip("redis")
    from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

    theirs = DjangoRedisCache(redis_server.location, {"KEY_PREFIX": "compat"})
    ours = make_redis(redis_server.location, KEY_PREFIX="compat")
    values = {"int": 42, "str": "text", "dict": {"a": [1, 2]}, "bool": False, "big": 2**80}
    theirs.set_many(values)
    assert ours.get_many(list(values)) == values
    assert ours.incr("int") == 43
    ours.set_many({f"o-{k}": v for k, v in values.items()})
    assert theirs.get_many([f"o-{k}" for k in values]) == {f"o-{k}": v for k, v in values.items()}
    assert theirs.incr("o-int") == 43


def test_reads_what_django_redis_wrote_and_the_reverse(redis_server):
    pytest.importorskip("django_redis")
    from django_redis.cache import RedisCache as DjangoRedis

    theirs = DjangoRedis(redis_server.location, {"KEY_PREFIX": "dr"})
    ours = make_redis(redis_server.location, KEY_PREFIX="dr")
    values = {"int": 42, "str": "text", "dict": {"a": [1, 2]}, "float": 1.5}
    theirs.set_many(values)
    assert ours.get_many(list(values)) == values
    ours.set_many({f"o-{k}": v for k, v in values.items()})
    assert theirs.get_many([f"o-{k}" for k in values]) == {f"o-{k}": v for k, v in values.items()}


def test_password_and_db():
    server = RedisServer(password="pa ss")
    try:
        url = f"redis://:pa%20ss@127.0.0.1:{server.port}/2"
        cache = make_redis(url, KEY_PREFIX="pw")
        cache.set("k", 1)
        assert cache.get("k") == 1
        other_db = make_redis(
            f"redis://127.0.0.1:{server.port}", KEY_PREFIX="pw", OPTIONS={"PASSWORD": "pa ss", "db": 3}
        )
        assert other_db.get("k") is None
        same_db = make_redis(
            f"redis://127.0.0.1:{server.port}", KEY_PREFIX="pw", OPTIONS={"password": "pa ss", "DB": 2}
        )
        assert same_db.get("k") == 1
        wrong = make_redis(f"redis://:nope@127.0.0.1:{server.port}")
        with pytest.raises(CacheError):
            wrong.get("k")
    finally:
        server.close()


def test_location_forms(redis_unix_server):
    from django_rustcache.redis import location_url

    assert location_url("127.0.0.1:6379") == "redis://127.0.0.1:6379"
    assert location_url("/run/redis.sock") == "unix:///run/redis.sock"
    assert location_url("rediss://h:1/0") == "rediss://h:1/0"
    cache = make_redis(redis_unix_server.socket_path)
    cache.set("bare-path", 1)
    assert cache.get("bare-path") == 1
    assert make_redis("redis://a:1,redis://b:2")._servers == ["redis://a:1", "redis://b:2"]


def test_dead_server_raises_within_the_deadline_and_recovers():
    """A refused connection costs nothing to try: each call meets it (fast, not "marked down"),
    and the first call after the server is back succeeds."""
    server = RedisServer()
    options = {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 0.5, "RETRY_TIMEOUT": 5}
    cache = make_redis(server.location, OPTIONS=options)
    try:
        cache.set("k", 1)
        server.kill()
        start = time.monotonic()
        with pytest.raises(ServerDown):
            cache.get("k")
        assert time.monotonic() - start < 1.5
        start = time.monotonic()
        for _ in range(20):
            with pytest.raises(ServerDown, match="refused"):
                cache.get("k")
        assert time.monotonic() - start < 1.0  # 20 refusals, not one 1 s timeout among them
        server.start()
        # No retry window after a refusal: the server is used the moment it is back.
        assert cache.get("k") is None
        cache.set("k", 2)
        assert cache.get("k") == 2
    finally:
        server.close()


def test_restart_costs_no_error_on_reads():
    server = RedisServer()
    cache = make_redis(server.location)
    try:
        for i in range(5):
            cache.set(f"k{i}", i)
        server.restart()
        assert [cache.get(f"k{i}") for i in range(5)] == [None] * 5
    finally:
        server.close()


def test_silent_server_fails_within_socket_timeout():
    silent = SilentServer()
    try:
        cache = make_redis(f"redis://{silent.location}", OPTIONS={"SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5})
        start = time.monotonic()
        with pytest.raises(ServerDown):
            cache.get("k")
        assert time.monotonic() - start < 2.0
    finally:
        silent.close()


def test_ignore_exceptions(caplog):
    server = RedisServer()
    cache = make_redis(server.location, OPTIONS={"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 0.2})
    cache.set("k", 1)
    server.close()
    with caplog.at_level(logging.ERROR, logger="django_rustcache.redis"):
        for _ in range(5):
            assert cache.get("k", "dflt") == "dflt"
            assert cache.add("k", 1) is False
            assert cache.get_many(["k"]) == {}
            assert cache.set_many({"a": 1}) == ["a"]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_fork_child_uses_its_own_connections(redis_server):
    cache = make_redis(redis_server.location)
    cache.set("before", "fork")
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if cache.get("before") != "fork":
                code = 2
            cache.set("child", "yes")
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get("child") == "yes"


def test_pool_is_bounded(redis_server):
    cache = make_redis(redis_server.location, OPTIONS={"MAX_CONNECTIONS": 2})
    errors = []

    def work():
        try:
            for i in range(50):
                cache.set(f"b{i}", i)
                assert cache.get(f"b{i}") == i
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert cache.stats()["servers"][0]["open_connections"] <= 2


def test_writes_go_to_the_leader_and_reads_are_spread_over_replicas():
    leader = RedisServer()
    replicas = [RedisServer(args=("--replicaof", "127.0.0.1", str(leader.port))) for _ in range(2)]
    try:
        cache = make_redis([leader.location] + [r.location for r in replicas])
        cache.set("k", "v")
        # The replicas catch up asynchronously.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(redis_py(r).exists(cache.make_key("k")) for r in replicas):
            time.sleep(0.05)
        assert [cache.get("k") for _ in range(20)] == ["v"] * 20
        counts = [s["open_connections"] for s in cache.stats()["servers"]]
        assert counts[1] >= 1 and counts[2] >= 1, counts  # reads used both replicas
        assert cache._cache.server_for(write=True) == 0
        # A replica refuses writes, so only the leader can have taken them.
        assert cache.incr("n") if cache.add("n", 1) else True
        # MASTER_CACHE names the leader explicitly, wherever it stands in the list.
        named = make_redis([replicas[0].location, leader.location], OPTIONS={"MASTER_CACHE": leader.location})
        assert named._servers[0] == leader.location
        named.set("x", 1)
        # django-redis-cache's calls for its redis-py clients: the master takes the writes, any
        # server may answer a read, each client is on the cache's db.
        pytest.importorskip("redis")
        from django_rustcache.redis_cache import RedisCache as DjangoRedisCacheCache

        theirs = DjangoRedisCacheCache(
            [replicas[0].location, leader.location], {"OPTIONS": {"MASTER_CACHE": leader.location, "DB": 3}}
        )
        master = theirs.get_master_client()
        assert master is theirs.master_client is theirs.get_client(theirs.make_key("x"), write=True)
        assert master.role()[0] == b"master" and master.client_info()["db"] == 3
        assert list(theirs.clients) == [("127.0.0.1", leader.port, 3, ""), ("127.0.0.1", replicas[0].port, 3, "")]
        assert theirs.client_list == list(theirs.clients.values())
        read_from = {
            theirs.get_client(theirs.make_key("x")).connection_pool.connection_kwargs["port"] for _ in range(40)
        }
        assert read_from == {leader.port, replicas[0].port}
        theirs.set("seen", 5)
        assert master.get(theirs.make_key("seen")) == b"5"
        for client in theirs.client_list:
            client.connection_pool.disconnect()
    finally:
        for s in (leader, *replicas):
            s.close()


def test_restarted_under_load_never_returns_a_wrong_value():
    server = RedisServer()
    # A short retry window: the check is that the pool recovers within 0.5 s of the last restart.
    options = {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 0.5, "RETRY_TIMEOUT": 0.1}
    cache = make_redis(server.location, OPTIONS=options)
    try:
        hammer_through_restarts(cache, server, ServerDown)
    finally:
        server.close()


def test_incr_past_64_bits_stays_atomic_and_keeps_the_ttl(redis_server):
    cache = make_redis(redis_server.location)
    raw = redis_py(redis_server)
    cache.set("big", 2**63 - 1, timeout=100)
    assert cache.incr("big") == 2**63  # INCRBY would overflow: the big-integer path takes over
    assert cache.incr("big", 10) == 2**63 + 10
    assert cache.decr("big", 11) == 2**63 - 1
    assert cache.get("big") == 2**63 - 1
    assert 0 < raw.ttl(cache.make_key("big")) <= 100
    cache.set("huge", 10**30)
    assert cache.incr("huge") == 10**30 + 1

    def work():
        for _ in range(50):
            cache.incr("huge")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert cache.get("huge") == 10**30 + 1 + 400
    with pytest.raises(ValueError):
        cache.incr("missing-big", 2**62)


# --- the extension API django-redis and django-redis-cache users call --------------------------


def test_ttl_family(redis_server):
    import datetime

    cache = make_redis(redis_server.location)
    cache.set("k", 1, timeout=100)
    assert 95 <= cache.ttl("k") <= 100
    assert 95_000 <= cache.pttl("k") <= 100_000
    assert cache.ttl("missing") == 0
    assert cache.persist("k") is True
    assert cache.ttl("k") is None
    assert cache.persist("k") is False
    assert cache.expire("k", 50) is True and 45 <= cache.ttl("k") <= 50
    assert cache.pexpire("k", 20_000) is True and cache.ttl("k") <= 20
    soon = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=30)
    assert cache.expire_at("k", soon) is True and 25 <= cache.ttl("k") <= 30
    assert cache.pexpire_at("k", int(time.time() * 1000) + 10_000) is True and cache.ttl("k") <= 10
    assert cache.expire("missing", 10) is False


def test_incr_ignore_key_check_creates(redis_server):
    cache = make_redis(redis_server.location)
    assert cache.incr("fresh", 5, ignore_key_check=True) == 5
    assert cache.get("fresh") == 5


def test_keys_iter_keys_and_delete_pattern_stay_in_their_namespace(redis_server):
    cache = make_redis(redis_server.location)
    other = make_redis(redis_server.location)  # another KEY_PREFIX on the same server
    cache.set_many({f"user:{i}": i for i in range(30)} | {"session:1": 1})
    other.set_many({f"user:{i}": i for i in range(5)})
    assert sorted(cache.keys("user:*")) == sorted(f"user:{i}" for i in range(30))
    assert sum(1 for _ in cache.iter_keys("user:*", itersize=7)) == 30
    assert cache.delete_pattern("user:*", itersize=7) == 30
    assert cache.keys("*") == ["session:1"]
    assert len(other.keys("user:*")) == 5


def test_delete_pattern_over_100k_keys_does_not_block_other_clients(redis_server):
    raw = redis_py(redis_server)
    cache = make_redis(redis_server.location)
    pipe = raw.pipeline(transaction=False)
    for i in range(100_000):
        pipe.set(cache.make_key(f"bulk:{i}"), b"1")
    pipe.execute()
    stalls = []
    stop = threading.Event()

    def probe():
        probe_client = redis_py(redis_server)
        while not stop.is_set():
            start = time.perf_counter()
            probe_client.ping()
            stalls.append(time.perf_counter() - start)

    t = threading.Thread(target=probe)
    t.start()
    try:
        assert cache.delete_pattern("bulk:*") == 100_000
    finally:
        stop.set()
        t.join(10)
    assert cache.keys("bulk:*") == []
    # SCAN + UNLINK in batches: no single command holds the server for long.
    # (measured here: 4.7 ms at worst over ~4,600 pings; the max allows for VM scheduling noise)
    stalls.sort()
    assert stalls[int(len(stalls) * 0.99)] < 0.010, stalls[-10:]
    assert stalls[-1] < 0.25, stalls[-1]


def test_clear_one_version_only(redis_server):
    cache = make_redis(redis_server.location)
    cache.set("k", 1, version=1)
    cache.set("k", 2, version=2)
    assert cache.clear(version=1) is True
    assert cache.get("k", version=1) is None
    assert cache.get("k", version=2) == 2


def test_lock(redis_server):
    from django_rustcache.redis import LockError

    cache = make_redis(redis_server.location)
    first = cache.lock("job", timeout=5)
    assert first.acquire() is True
    second = cache.lock("job", timeout=5, blocking=False)
    assert second.acquire() is False
    assert cache.lock("job", blocking_timeout=0.2, sleep=0.05).acquire() is False
    with pytest.raises(LockError):
        second.release()
    assert first.locked() and first.owned()
    assert first.extend(10) is True
    first.release()
    assert not first.locked()
    with cache.lock("job", timeout=1) as held:
        assert held.owned()
    # An expired lock taken over by another holder is not freed by the first.
    stale = cache.lock("short", timeout=0.1)
    stale.acquire()
    time.sleep(0.2)
    taker = cache.lock("short", timeout=5)
    assert taker.acquire(blocking=False) is True
    with pytest.raises(LockError):
        stale.release()
    assert taker.owned()


def test_the_lock_on_the_event_loop(redis_server):
    import asyncio

    from django_rustcache.redis import LockError

    cache = make_redis(redis_server.location)

    async def main():
        first = cache.alock("ajob", timeout=5)
        assert await first.aacquire() is True
        second = cache.lock("ajob", timeout=5, blocking=False)
        assert await second.aacquire() is False
        # Waiting for the lock sleeps the task: another task runs meanwhile.
        ticks = []

        async def tick():
            for _ in range(5):
                ticks.append(1)
                await asyncio.sleep(0.02)

        waited, _ = await asyncio.gather(cache.lock("ajob", blocking_timeout=0.2, sleep=0.05).aacquire(), tick())
        assert waited is False and len(ticks) == 5
        with pytest.raises(LockError):
            await second.arelease()
        assert await first.alocked() and await first.aowned()
        assert await first.aextend(10) is True
        await first.arelease()
        assert not await first.alocked()
        async with cache.alock("ajob", timeout=1) as held:
            assert await held.aowned() and held.owned()
        assert not cache.lock("ajob").locked()

    asyncio.run(main())


def test_bad_values_and_keys(cache):
    import pickle as _pickle

    cache.set("k", "old")
    with pytest.raises((TypeError, _pickle.PicklingError)):
        cache.set("k", threading.Lock())
    assert cache.get("k") == "old"
    with pytest.raises((TypeError, _pickle.PicklingError)):
        cache.set_many({"a": 1, "b": threading.Lock()})
    assert cache.get("a") is None  # set_many encodes everything before sending anything
    huge = os.urandom(8 * 1024 * 1024)
    cache.set("huge", huge)
    assert cache.get("huge") == huge
    cache.set(42, "int key")
    assert cache.get("42") == "int key"  # Django's default key function renders keys with %s

    class BadKey:
        def __str__(self):
            raise RuntimeError("no str")

    with pytest.raises(RuntimeError):
        cache.set(BadKey(), 1)


def test_set_nx_xx(redis_server):
    cache = make_redis(redis_server.location)
    assert cache.set("k", 1) is None  # Django's contract
    assert cache.set("k", 2, nx=True) is False
    assert cache.set("new", 2, nx=True) is True
    assert cache.set("k", 3, xx=True) is True
    assert cache.get("k") == 3
    assert cache.set("absent", 3, xx=True) is False
    assert cache.get("absent") is None
    assert cache.set("k", {"d": 1}, timeout=50, xx=True) is True
    assert cache.get("k") == {"d": 1} and 45 <= cache.ttl("k") <= 50


def test_django_redis_global_ignore_settings(caplog):
    from django.test.utils import override_settings

    server = RedisServer()
    server.close()
    with override_settings(DJANGO_REDIS_IGNORE_EXCEPTIONS=True, DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS=False):
        cache = make_redis(server.location, OPTIONS={"SOCKET_CONNECT_TIMEOUT": 0.2})
    with caplog.at_level(logging.ERROR, logger="django_rustcache.redis"):
        assert cache.get("k", "dflt") == "dflt"
    assert not caplog.records
    # OPTIONS win over the global switch.
    with override_settings(DJANGO_REDIS_IGNORE_EXCEPTIONS=True):
        strict = make_redis(server.location, OPTIONS={"IGNORE_EXCEPTIONS": False, "SOCKET_CONNECT_TIMEOUT": 0.2})
    with pytest.raises(ServerDown):
        strict.get("k")


def test_django_redis_logger_setting_names_where_ignored_failures_go(caplog):
    from django.test.utils import override_settings

    server = RedisServer()
    server.close()
    with override_settings(DJANGO_REDIS_IGNORE_EXCEPTIONS=True, DJANGO_REDIS_LOGGER="mysite.cache"):
        cache = make_redis(server.location, OPTIONS={"SOCKET_CONNECT_TIMEOUT": 0.2})
    with caplog.at_level(logging.ERROR):
        assert cache.get("k", "dflt") == "dflt"
    assert [r.name for r in caplog.records] == ["mysite.cache"]
    assert "answered as a miss" in caplog.records[0].getMessage()


def test_get_or_set_computes_once_under_a_thundering_herd(redis_server):
    cache = make_redis(redis_server.location)
    calls = []

    def expensive():
        calls.append(1)
        time.sleep(0.3)
        return "computed"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_set("herd", expensive, 60, lock_timeout=3)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["computed"] * 8
    assert len(calls) == 1


def test_get_or_set_serves_the_stale_copy_while_one_caller_recomputes(redis_server):
    cache = make_redis(redis_server.location)
    assert cache.get_or_set("s", "v1", timeout=1, lock_timeout=3, stale_cache_timeout=30) == "v1"
    time.sleep(1.2)  # the value expired; its stale copy has not
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.5)
        return "v2"

    t = threading.Thread(target=lambda: cache.get_or_set("s", slow, timeout=60, lock_timeout=3, stale_cache_timeout=30))
    t.start()
    started.wait(5)
    t0 = time.monotonic()
    assert cache.get_or_set("s", lambda: "never", timeout=60, lock_timeout=3, stale_cache_timeout=30) == "v1"
    assert time.monotonic() - t0 < 0.3  # no waiting: the stale copy answered
    t.join(5)
    assert cache.get("s") == "v2"


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_a_herd_get_or_set_that_wins_the_lock_late_reads_before_computing(redis_server, sync):
    """Between a caller's miss and its lock, another caller computed, stored and released: the
    late winner returns that value and does not compute again (before: it did, so a herd of 4
    computed twice now and then)."""
    import asyncio
    from unittest import mock

    from django_rustcache import redis as ours
    from django_rustcache.redis import extension

    cache = make_redis(redis_server.location)
    calls = []

    class LateLock(ours.Lock):
        def acquire(self, *args, **kwargs):
            cache.set("late", "theirs")  # someone else finished first
            return super().acquire(*args, **kwargs)

        async def aacquire(self, *args, **kwargs):
            await cache.aset("late", "theirs")
            return await super().aacquire(*args, **kwargs)

    # The herd get_or_set (extension.py) takes its lock class from its module.
    with mock.patch.object(extension, "Lock", LateLock):
        if sync:
            got = cache.get_or_set("late", lambda: calls.append(1) or "ours", 60, lock_timeout=2)
        else:
            got = asyncio.run(cache.aget_or_set("late", lambda: calls.append(1) or "ours", 60, lock_timeout=2))
    assert (got, calls) == ("theirs", [])


def test_aget_or_set_takes_the_herd_options(redis_server):
    import asyncio

    cache = make_redis(redis_server.location)
    calls = []

    async def scenario():
        return await asyncio.gather(
            *(cache.aget_or_set("ah", lambda: calls.append(1) or "v", 60, lock_timeout=2) for _ in range(4))
        )

    assert asyncio.run(scenario()) == ["v"] * 4
    assert len(calls) == 1


def test_the_ttl_api_async_answers_as_the_sync_one(redis_server):
    """attl, apttl, apersist, aexpire, apexpire, aexpire_at and apexpire_at (made from the sync
    bodies) answer as ttl, pttl, persist, expire, ... do, on the same keys."""
    import asyncio
    import time

    cache = make_redis(redis_server.location, KEY_PREFIX="ttl-twins")

    async def both() -> list[tuple[object, object]]:
        out = []
        cache.set("s", 1, 100)
        cache.set("a", 1, 100)
        for name, args in (
            ("ttl", ()),
            ("pttl", ()),
            ("expire", (50,)),
            ("pexpire", (40_000,)),
            ("expire_at", (int(time.time()) + 30,)),
            ("pexpire_at", (int(time.time() * 1000) + 20_000,)),
            ("persist", ()),
            ("ttl", ()),
            ("expire", (None,)),
        ):
            # The same calls on two keys set alike: one through each API.
            sync = getattr(cache, name)("s", *args)
            native = await getattr(cache, f"a{name}")("a", *args)
            out.append((sync, native))
        out.append((cache.expire("missing", 5), await cache.aexpire("missing", 5)))
        out.append((cache.ttl("missing"), await cache.attl("missing")))
        return out

    answers = asyncio.run(both())
    for sync, native in answers:
        if isinstance(sync, int) and not isinstance(sync, bool) and sync > 1000:
            assert abs(sync - native) < 2000, (sync, native)  # milliseconds apart
        else:
            assert sync == native, answers
    assert answers[0][0] in range(95, 101) and answers[6] == (True, True) and answers[7] == (None, None)
    assert answers[-2] == (False, False) and answers[-1] == (0, 0)
