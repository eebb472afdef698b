"""What the redis predecessors' users carry over: their settings (db, credentials, client
classes), django-redis-cache's answers (``django_rustcache.redis_cache``), ``reinsert_keys``,
``incr_version`` and ACL users."""

from __future__ import annotations

import logging
import pickle
import zlib

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_rustcache import CacheError
from tests.conftest import make_redis
from tests.servers import RedisServer


def raw_client(server, db=0):
    redis = pytest.importorskip("redis")
    return redis.Redis(port=server.port, db=db)


def make_compat(location, **params):
    from django_rustcache.redis_cache import RedisCache

    params.setdefault("KEY_PREFIX", "compat")
    return RedisCache(location, params)


def test_the_url_db_wins_over_options_and_options_fill_in(redis_server):
    url = redis_server.location
    make_redis(f"{url}/4", KEY_PREFIX="db", OPTIONS={"DB": 5}).set("k", "url")
    make_redis(url, KEY_PREFIX="db", OPTIONS={"db": 6}).set("k", "option")
    # redis-py's ?db= query, which wins over the path.
    make_redis(f"{url}/8?db=7", KEY_PREFIX="db", OPTIONS={"db": 9}).set("k", "query")
    assert raw_client(redis_server, 4).exists("db:1:k")
    assert not raw_client(redis_server, 5).exists("db:1:k")
    assert raw_client(redis_server, 6).exists("db:1:k")
    assert raw_client(redis_server, 7).exists("db:1:k")
    assert not raw_client(redis_server, 8).exists("db:1:k")
    assert not raw_client(redis_server, 0).exists("db:1:k")


def test_django_redis_cache_flavour(redis_server):
    cache = make_compat(redis_server.location)
    raw1 = raw_client(redis_server, 1)
    # Its default db is 1.
    assert cache.set("k", "v") is True
    assert raw1.exists(cache.make_key("k"))
    assert not raw_client(redis_server, 0).exists(cache.make_key("k"))
    # Timeout 0 deletes and says whether there was a key; a negative one does nothing.
    assert cache.set("k", "new", -1) is False
    assert cache.get("k") == "v"
    assert cache.set("k", "x", 0) is True
    assert cache.get("k") is None
    assert cache.set("k", "x", 0) is False
    assert cache.ttl("missing") == 0
    cache.set("forever", 1, None)
    assert cache.ttl("forever") is None
    # get_or_set's herd options in its positions: (key, default, timeout, lock_timeout, stale).
    assert cache.get_or_set("g", lambda: "computed", 30, 5, 60) == "computed"
    assert 60 < raw1.ttl(cache.make_key("g")) <= 90  # the value outlives its freshness marker
    assert 0 < raw1.ttl(f"__fresh__{cache.make_key('g')}") <= 30
    # The lock is named by the key itself, with (timeout, sleep, blocking_timeout) in its order.
    lock = cache.lock("jobs", 10, 0.01, 0.05)
    assert lock.acquire()
    assert raw1.exists("jobs")
    assert cache.lock("jobs", 10, 0.01, 0.05).acquire() is False
    lock.release()
    # Its data format: its zlib compressor (every value compressed) is read and written.
    z = make_compat(redis_server.location, OPTIONS={"COMPRESSOR_CLASS": "redis_cache.compressors.ZLibCompressor"})
    raw1.set(z.make_key("theirs"), zlib.compress(pickle.dumps({"a": 1}, -1)))
    assert z.get("theirs") == {"a": 1}


def test_predecessor_client_classes(redis_server, caplog):
    with caplog.at_level(logging.INFO, logger="django_rustcache.redis"):
        make_redis(
            redis_server.location,
            OPTIONS={
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "PARSER_CLASS": "redis.connection._HiredisParser",
            },
        )
    assert "'PARSER_CLASS'" in caplog.text and "ignored" in caplog.text
    # A client class of the site's own would change the format or the routing: refused, not
    # silently changed. (HerdClient and ShardClient are honoured: below, tests/test_redis_shards.py.)
    cache = make_redis(redis_server.location, OPTIONS={"CLIENT_CLASS": "myproject.cache.CustomClient"})
    with pytest.raises(ImproperlyConfigured, match="CLIENT_CLASS"):
        cache.set("k", 1)


def test_reinsert_keys_rewrites_in_the_current_format_and_keeps_ttls(redis_server):
    raw = raw_client(redis_server)
    old = make_redis(redis_server.location, KEY_PREFIX="re", OPTIONS={"PICKLE_VERSION": 2})
    old.set("a", {"x": "y" * 100}, 300)
    old.set("b", ["list"], None, version=2)
    old.set("n", 5)
    raw.set("re:1:foreign", b"\x80\x05not a pickle")
    raw.set("other:1:k", pickle.dumps("not ours", 2))
    assert raw.get("re:1:a").startswith(b"\x80\x02")

    new = make_redis(redis_server.location, KEY_PREFIX="re", OPTIONS={"COMPRESSOR": "zlib"})
    assert new.reinsert_keys() == 2  # a and b; n is digits either way; foreign does not decode
    assert raw.get("re:1:a").startswith(b"\x78")
    assert pickle.loads(zlib.decompress(raw.get("re:1:a"))) == {"x": "y" * 100}
    assert new.get("a") == {"x": "y" * 100}
    assert 290 < raw.ttl("re:1:a") <= 300
    assert raw.ttl("re:2:b") == -1
    assert new.get("b", version=2) == ["list"]
    assert raw.get("re:1:foreign") == b"\x80\x05not a pickle"
    assert raw.get("other:1:k") == pickle.dumps("not ours", 2)
    assert new.reinsert_keys() == 0


def test_incr_version_is_one_rename_keeping_the_ttl(redis_server):
    raw = raw_client(redis_server)
    cache = make_redis(redis_server.location, KEY_PREFIX="iv")
    cache.set("k", "v", 100)
    assert cache.incr_version("k") == 2
    assert cache.get("k") is None
    assert cache.get("k", version=2) == "v"
    assert 90 < raw.ttl("iv:2:k") <= 100
    assert cache.decr_version("k", version=2) == 1
    with pytest.raises(ValueError, match="not found"):
        cache.incr_version("missing")


def test_acl_user():
    server = RedisServer(args=("--user", "default", "off", "--user", "app", "on", ">s3cret", "~app:*", "+@all"))
    try:
        host = f"127.0.0.1:{server.port}"
        by_url = make_redis(f"redis://app:s3cret@{host}", KEY_PREFIX="app")
        by_url.set("k", 1)
        assert by_url.get("k") == 1
        by_options = make_redis(f"redis://{host}", KEY_PREFIX="app", OPTIONS={"USERNAME": "app", "PASSWORD": "s3cret"})
        assert by_options.incr("k") == 2
        # The user's key pattern is enforced by the server, and reported, not hidden.
        outside = make_redis(f"redis://app:s3cret@{host}", KEY_PREFIX="other")
        with pytest.raises(CacheError, match=r"(?i)perm"):
            outside.set("k", 1)
        for location, options in (
            (f"redis://app:wrong@{host}", {}),
            (f"redis://{host}", {"PASSWORD": "s3cret"}),  # the default user is off
        ):
            with pytest.raises(CacheError):
                make_redis(location, OPTIONS=options).get("k")
    finally:
        server.close()


def test_every_url_form_redis_py_accepts():
    secret = "p@ss:w/rd %"
    tcp = RedisServer(password=secret)
    unix = RedisServer(unix=True, password=secret)
    try:
        from urllib.parse import quote

        enc = quote(secret, safe="")
        host = f"127.0.0.1:{tcp.port}"
        path = unix.socket_path
        forms = [
            (tcp, f"redis://:{enc}@{host}/2", {}, 2),
            (tcp, f"redis://{host}?password={enc}&db=3", {}, 3),
            (tcp, f"redis://default:{enc}@{host}?db=4", {}, 4),
            (tcp, host, {"PASSWORD": secret, "DB": 5}, 5),
            (unix, f"unix://:{enc}@{path}?db=15", {}, 15),
            (unix, f"unix://{path}?db=6&password={enc}", {}, 6),
            (unix, f"redis+unix://default:{enc}@{path}?db=7", {}, 7),
            (unix, path, {"PASSWORD": secret, "DB": 8}, 8),
            (unix, f"unix://{path}", {"PASSWORD": secret, "DB": 9}, 9),
        ]
        redis = pytest.importorskip("redis")
        for server, location, options, db in forms:
            cache = make_compat(location, OPTIONS=options, KEY_PREFIX=f"form{db}")
            cache.set("k", location)
            assert cache.get("k") == location
            if server is tcp:
                raw = redis.Redis(port=tcp.port, password=secret, db=db)
            else:
                raw = redis.Redis(unix_socket_path=path, password=secret, db=db)
            assert raw.exists(cache.make_key("k")), location
    finally:
        tcp.close()
        unix.close()


@pytest.mark.parametrize("location", ["unix://", "unix://:pw@", "memcache://127.0.0.1:1"])
def test_a_url_that_cannot_work_is_refused_clearly(location):
    with pytest.raises(ImproperlyConfigured, match="redis LOCATION"):
        make_compat(location).get("k")


@pytest.mark.parametrize("flavour", ["redis", "redis_cache", "memcached"])
def test_a_backend_pickles_and_copies(flavour, redis_server, memcached_server):
    import copy

    if flavour == "memcached":
        from django_rustcache.memcached import MemcachedCache

        cache = MemcachedCache(memcached_server.location, {"KEY_PREFIX": "pickled"})
    elif flavour == "redis":
        cache = make_redis(redis_server.location, KEY_PREFIX="pickled")
    else:
        cache = make_compat(redis_server.location, KEY_PREFIX="pickled", OPTIONS={"DB": 2})
    cache.set("k", "v")
    holder = {"cache": cache}
    for other in (pickle.loads(pickle.dumps(cache)), copy.copy(cache), copy.deepcopy(holder)["cache"]):
        assert type(other) is type(cache)
        assert other.get("k") == "v"
        other.set("k2", flavour)
        assert cache.get("k2") == flavour


@pytest.mark.parametrize(
    "option",
    ["PARSER_CLASS", "CONNECTION_POOL_CLASS", "parser_class", "pool_class", "SERIALIZER_CLASS", "COMPRESSOR_CLASS"],
)
def test_a_class_path_that_does_not_import_is_refused_at_start_up(option, redis_server):
    from django.core import checks
    from django.test.utils import override_settings

    options = {option: "no_such_module.Thing"}
    with pytest.raises(ImproperlyConfigured, match=rf"OPTIONS\['{option}'\].*no_such_module"):
        make_compat(redis_server.location, OPTIONS=options).get("k")
    caches = {"default": {"BACKEND": "django_rustcache.redis_cache.RedisCache", "LOCATION": redis_server.location,
                          "OPTIONS": options}}  # fmt: skip
    with override_settings(CACHES=caches):
        errors = checks.run_checks(tags=["caches"])
    assert any(e.id == "django_rustcache.E003" and "no_such_module" in e.msg for e in errors)
    # A path that imports is fine, and so is redis-py's own under any version's name (ignored,
    # with a note in the log).
    for path in ("json.JSONDecoder", "redis.connection.HiredisParser", "redis.connection.PythonParser"):
        make_compat(redis_server.location, OPTIONS={"PARSER_CLASS": path}).set("k", 1)


def test_get_or_set_keeps_django_redis_cache_herd_semantics(redis_server):
    import time

    cache = make_compat(redis_server.location, KEY_PREFIX="herd")
    raw = raw_client(redis_server, 1)
    made = cache.make_key("k")
    calls = []

    def compute(value):
        def f():
            calls.append(value)
            return value

        return f

    # First caller: takes the lock, computes, stores the value (kept stale_cache_timeout past
    # timeout) and the freshness marker, in django-redis-cache's key layout.
    assert cache.get_or_set("k", compute("v1"), 10, lock_timeout=5, stale_cache_timeout=20) == "v1"
    assert 25 <= raw.ttl(made) <= 30
    assert 5 <= raw.ttl(f"__fresh__{made}") <= 10
    assert raw.get(f"__fresh__{made}") == b"1"
    assert not raw.exists(f"__lock__{made}")
    # Fresh: the stored value, whatever the default.
    assert cache.get_or_set("k", compute("other"), 10) == "v1"
    assert calls == ["v1"]
    # Stale (marker gone) while another process holds the lock: the stale copy at once, never
    # a wait and never a call.
    raw.delete(f"__fresh__{made}")
    raw.set(f"__lock__{made}", "someone-else")
    started = time.monotonic()
    assert cache.get_or_set("k", compute("v2"), 10, lock_timeout=5) == "v1"
    assert cache.get_or_set("missing", compute("v3"), 10, lock_timeout=5) == "v3"  # its own lock
    raw.set(f"__lock__{cache.make_key('none')}", "someone-else")
    assert cache.get_or_set("none", compute("v4"), 10) is None  # nothing stored yet
    assert time.monotonic() - started < 0.5
    assert calls == ["v1", "v3"]
    # The lock freed: the next caller recomputes.
    raw.delete(f"__lock__{made}")
    assert cache.get_or_set("k", compute("v5"), 10) == "v5"
    assert raw.ttl(made) == -1  # stale_cache_timeout None: the value is kept forever
    # A value set() wrote has no marker: django-redis-cache's get_or_set recomputes it.
    cache.set("plain", "old")
    assert cache.get_or_set("plain", compute("new")) == "new"
    assert cache.get("plain") == "new"


@pytest.mark.parametrize("prefix", ["a*", "b?", "c[x]", "d\\", "[", "plain"])
def test_glob_characters_in_the_prefix_match_only_this_cache(prefix, redis_server):
    mine = make_redis(redis_server.location, KEY_PREFIX=prefix, OPTIONS={"DB": 11})
    # Keys another prefix would match if the pattern were not escaped.
    others = [make_redis(redis_server.location, KEY_PREFIX=p, OPTIONS={"DB": 11}) for p in ("aX", "bY", "cx", "d", "e")]
    for cache in others:
        cache.set("k1", "theirs")
        cache.set("k2", "theirs", version=2)
    mine.set("k1", "mine")
    mine.set("k2", "mine", version=2)
    assert mine.keys("*") == ["k1"]
    assert list(mine.iter_keys("k*")) == ["k1"]
    assert mine.keys("*", version=2) == ["k2"]
    assert mine.reinsert_keys() == 0  # both of mine, already in the current format; none of theirs
    assert mine.delete_pattern("k*") == 1
    mine.clear(version=2)
    assert mine.keys("*", version=2) == []
    for cache in others:
        assert cache.get("k1") == "theirs"
        assert cache.get("k2", version=2) == "theirs"
    raw_client(redis_server, 11).flushdb()


def test_django_redis_answers_for_delete_many_expire_and_incr(redis_server):
    from django.core.cache.backends.base import DEFAULT_TIMEOUT

    cache = make_redis(redis_server.location, KEY_PREFIX="dr", TIMEOUT=100)
    cache.set_many({"a": 1, "b": 2, "c": 3})
    assert cache.delete_many(["a", "b", "missing"]) == 2
    assert cache.delete_many([]) is None  # Django's suite pins None for no keys
    assert make_compat(redis_server.location, KEY_PREFIX="drc").delete_many(["x"]) is None
    cache.set("t", 1, None)
    assert cache.expire("t", DEFAULT_TIMEOUT) is True
    assert 90 < cache.ttl("t") <= 100
    assert cache.pexpire("t", DEFAULT_TIMEOUT) is True
    assert 90_000 < cache.pttl("t") <= 100_000
    assert cache.touch("t", DEFAULT_TIMEOUT) is True
    forever = make_redis(redis_server.location, KEY_PREFIX="dr", TIMEOUT=None)
    assert forever.expire("t", DEFAULT_TIMEOUT) is True
    assert forever.ttl("t") is None
    assert forever.expire("nothing", DEFAULT_TIMEOUT) is False
    # incr(ignore_key_check=True): a missing key starts from 0, and past 64 bits it is exact.
    assert cache.incr("n", 5, ignore_key_check=True) == 5
    cache.set("n", 2**63 - 1)
    assert cache.incr("n", 10, ignore_key_check=True) == 2**63 + 9
    assert cache.incr("n", -20, ignore_key_check=True) == 2**63 - 11
    cache.set("big", 2**70)
    assert cache.incr("big", 1, ignore_key_check=True) == 2**70 + 1
    with pytest.raises(ValueError):
        cache.incr("still-missing")


def test_aget_or_set_keeps_the_same_herd_semantics(redis_server):
    """The async twin follows django-redis-cache's get_or_set too: the same keys, the lock taken
    without waiting, the stale copy while someone else holds it."""
    import asyncio

    cache = make_compat(redis_server.location, KEY_PREFIX="aherd")
    raw = raw_client(redis_server, 1)
    made = cache.make_key("k")
    calls = []

    def compute(value):
        def f():
            calls.append(value)
            return value

        return f

    async def main():
        assert await cache.aget_or_set("k", compute("v1"), 10, lock_timeout=5, stale_cache_timeout=20) == "v1"
        assert 25 <= raw.ttl(made) <= 30 and raw.get(f"__fresh__{made}") == b"1"
        assert not raw.exists(f"__lock__{made}")
        assert await cache.aget_or_set("k", compute("other"), 10) == "v1"
        raw.delete(f"__fresh__{made}")
        raw.set(f"__lock__{made}", "someone-else")
        assert await cache.aget_or_set("k", compute("v2"), 10, lock_timeout=5) == "v1"
        raw.delete(f"__lock__{made}")
        assert await cache.aget_or_set("k", compute("v3"), 10) == "v3"
        cache.set("plain", "old")
        assert await cache.aget_or_set("plain", compute("new")) == "new"

    asyncio.run(main())
    assert calls == ["v1", "v3", "new"]
    assert cache.get("plain") == "new"


def test_herd_client_reads_and_writes_django_redis_herd_format(redis_server):
    """A site on django-redis's HerdClient switches BACKEND and keeps its values and behaviour:
    each reads what the other wrote; past its timeout a value is a miss to a few callers (they
    recompute) and the old value to the rest."""
    import time

    from django_redis.cache import RedisCache as DjangoRedisCache

    options = {"CLIENT_CLASS": "django_redis.client.HerdClient"}  # (CACHE_HERD_TIMEOUT: 60)
    theirs = DjangoRedisCache(redis_server.location, {"KEY_PREFIX": "herd", "OPTIONS": options})
    ours = make_redis(redis_server.location, KEY_PREFIX="herd", OPTIONS=options)
    theirs.set("a", {"from": "django-redis"}, 30)
    assert ours.get("a") == {"from": "django-redis"}
    ours.set("b", ["from", "us"], 30)
    assert theirs.get("b") == ["from", "us"]
    assert ours.get_many(["a", "b"]) == {"a": {"from": "django-redis"}, "b": ["from", "us"]}
    # Stored as the herd tuple, kept CACHE_HERD_TIMEOUT longer than its timeout.
    assert 80 < raw_client(redis_server).ttl(ours.make_key("b")) <= 90
    with pytest.raises(NotImplementedError):
        ours.incr("a")
    # Past its timeout: the herd's "some recompute, the rest read the old value".
    ours.set("c", "old", 1)
    time.sleep(2.1)
    reads = [ours.get("c") for _ in range(200)]
    assert reads.count(None) and reads.count("old"), reads
    # A value without a timeout is stored as it is.
    ours.set("d", 5, None)
    assert theirs.get("d") == 5 and ours.get("d") == 5
