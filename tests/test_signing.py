"""Signed values (OPTIONS["SIGN"]) on redis and memcached, against real servers: values written
signed read back (sync, async, compressed, through the near cache); a pickle planted by a raw
client is never unpickled; a changed byte, another type flag, or another secret is a miss; a
rotation keeps old values; migrate mode reads unsigned values and writes signed ones; with SIGN
off, signed values are still read and forgeries still refused."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import redis as redis_py
from tests.conftest import make_lru, make_memcached, make_redis

MAGIC = b"\x00RCS1"
_secrets = itertools.count()


@pytest.fixture(autouse=True)
def secret():
    """A SECRET_KEY of this test's own (so each test's signing client is a fresh one)."""
    value = f"signing-test-{next(_secrets)}-{os.getpid()}"
    with override_settings(SECRET_KEY=value, SECRET_KEY_FALLBACKS=[]):
        yield value


class Raw:
    """The server as another client sees it: stored bytes (and memcached's flags), read and
    written without our codec."""

    def __init__(self, kind: str, server) -> None:
        self.kind, self.server = kind, server
        self.redis = redis_py.Redis(port=server.port) if kind == "redis" else None

    def get(self, key: str) -> tuple[int, bytes] | None:
        if self.redis is not None:
            data = self.redis.get(key)
            return None if data is None else (0, data)
        reply = self.server.raw(b"get " + key.encode() + b"\r\n")
        head = re.match(rb"VALUE \S+ (\d+) (\d+)\r\n", reply)
        if head is None:
            return None
        start = head.end()
        return int(head.group(1)), reply[start : start + int(head.group(2))]

    def set(self, key: str, data: bytes, flags: int = 0) -> None:
        if self.redis is not None:
            self.redis.set(key, data)
            return
        reply = self.server.raw(b"set %s %d 0 %d\r\n%s\r\n" % (key.encode(), flags, len(data), data))
        assert reply == b"STORED\r\n"


@pytest.fixture(params=["redis", "memcached", "memcached-binary"])
def kind(request):
    return request.param


@pytest.fixture
def make(kind, redis_server, memcached_server):
    """make(sign, **options) -> a backend of this kind (prefixes shared by the test's backends)."""
    prefix = f"sig{next(_secrets)}"

    def make(sign=True, **options):
        if sign is not None:
            options["SIGN"] = sign
        if kind == "redis":
            return make_redis(redis_server.location, KEY_PREFIX=prefix, OPTIONS=options)
        if kind == "memcached":
            return make_memcached(memcached_server.location, KEY_PREFIX=prefix, OPTIONS=options)
        return make_memcached(
            memcached_server.location, "PyLibMCCache", KEY_PREFIX=prefix, OPTIONS={"binary": True, **options}
        )

    return make


@pytest.fixture
def raw(kind, redis_server, memcached_server):
    return Raw("redis", redis_server) if kind == "redis" else Raw("memcached", memcached_server)


VALUES = {
    "dict": {"a": [1, 2.5, None], "b": "é"},
    "text": "plain words",
    "bytes": b"\x00\x80raw",
    "int": 42,
    "big": 10**30,
    "bool": True,
    "long-text": "x" * 50_000,
}


def test_values_written_signed_read_back_and_are_stored_signed(make, raw):
    cache = (
        make(COMPRESSOR="django_redis.compressors.zlib.ZlibCompressor")
        if raw.kind == "redis"
        else make(min_compress_len=1000)
    )
    for name, value in VALUES.items():
        assert cache.set(name, value) is not False
        assert cache.get(name) == value, name
    assert cache.get_many(list(VALUES)) == VALUES
    for name, value in VALUES.items():
        _, stored = raw.get(cache.make_key(name))
        if type(value) is int:
            # Ints stay digits: the server's INCR works on them.
            assert stored == str(value).encode()
        else:
            assert stored.startswith(MAGIC), name
    assert cache.incr("int", 8) == 50
    assert cache.get("int") == 50


def test_async_calls_read_and_write_signed_values(make, raw):
    cache = make()

    async def go():
        await cache.aset("a", {"async": True})
        await cache.aset_many({"b": [1], "c": "two"})
        one = await cache.aget("a")
        many = await cache.aget_many(["a", "b", "c", "absent"])
        return one, many

    one, many = asyncio.run(go())
    assert one == {"async": True}
    assert many == {"a": {"async": True}, "b": [1], "c": "two"}
    assert raw.get(cache.make_key("b"))[1].startswith(MAGIC)


def test_a_planted_pickle_is_never_unpickled(make, raw, tmp_path, caplog):
    cache = make()
    marker = Path(tmp_path, "ran")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    # Another client writes a pickle where a value of ours would be (flag 1: pylibmc's pickle).
    for key in ("planted", "planted-too"):
        raw.set(cache.make_key(key), pickle.dumps(Payload()), flags=1)
    with caplog.at_level(logging.WARNING, logger="django_rustcache.signing"):
        assert cache.get("planted", "default") == "default"
        assert cache.get_many(["planted", "planted-too"]) == {}
        assert asyncio.run(cache.aget("planted", "async default")) == "async default"
    assert not marker.exists()
    assert cache.stats()["refused_values"] == 4
    # A burst of refusals is logged once.
    said = [r for r in caplog.records if r.name == "django_rustcache.signing"]
    assert len(said) == 1 and "never decoded" in said[0].getMessage()


def test_a_changed_byte_is_a_miss(make, raw):
    cache = make()
    cache.set("k", {"amount": 100})
    flags, stored = raw.get(cache.make_key("k"))
    for at in (len(MAGIC), len(MAGIC) + 31, len(stored) - 1):
        changed = bytearray(stored)
        changed[at] ^= 0x01
        raw.set(cache.make_key("k"), bytes(changed), flags=flags)
        assert cache.get("k", "miss") == "miss", at
    raw.set(cache.make_key("k"), stored, flags=flags)
    assert cache.get("k") == {"amount": 100}


@pytest.mark.parametrize("kind", ["memcached", "memcached-binary"])
def test_memcached_a_signed_value_given_another_type_flag_is_a_miss(make, raw):
    cache = make()
    cache.set("k", b"\x80\x05user-chosen bytes")  # raw bytes: flag 0
    flags, stored = raw.get(cache.make_key("k"))
    assert flags == 0
    # Read as a pickle (flag 1), these bytes would be unpickled: the tag covers the flags.
    raw.set(cache.make_key("k"), stored, flags=1)
    assert cache.get("k", "miss") == "miss"


def test_a_rotated_secret_keeps_old_values_readable(make, secret):
    make().set("k", "under the old secret")
    with override_settings(SECRET_KEY="the new one", SECRET_KEY_FALLBACKS=[secret]):
        assert make().get("k") == "under the old secret"
        make().set("n", "under the new secret")
    with override_settings(SECRET_KEY="the new one", SECRET_KEY_FALLBACKS=[]):
        assert make().get("k", "miss") == "miss"
        assert make().get("n") == "under the new secret"


def test_migrate_reads_unsigned_values_and_writes_signed_ones(make, raw):
    make(sign=None).set("legacy", {"old": 1})
    assert raw.get(make().make_key("legacy"))[1].startswith(b"\x80")
    assert make().get("legacy", "miss") == "miss"  # SIGN True: not read
    migrating = make("migrate")
    assert migrating.get("legacy") == {"old": 1}
    migrating.set("new", {"new": 2})
    assert raw.get(migrating.make_key("new"))[1].startswith(MAGIC)
    assert make().get("new") == {"new": 2}


def test_with_sign_off_signed_values_are_read_and_forgeries_refused(make, raw):
    signed = make()
    signed.set("k", [1, 2, 3])
    off = make(sign=False)
    assert off.get("k") == [1, 2, 3]
    off.set("plain", "unsigned")
    assert not raw.get(off.make_key("plain"))[1].startswith(MAGIC)
    # A forged signed value (right header, wrong tag) is never decoded, signing on or off.
    raw.set(off.make_key("forged"), MAGIC + b"\x00" * 32 + pickle.dumps("x"), flags=1)
    assert off.get("forged", "miss") == "miss"


def test_the_near_cache_serves_only_verified_values(redis_server):
    raw = Raw("redis", redis_server)
    cache = make_redis(redis_server.location, OPTIONS={"SIGN": True, "NEAR_CACHE": True})
    cache.set("k", {"v": 1})
    assert cache.get("k") == {"v": 1}
    assert cache.get("k") == {"v": 1}  # from the near cache
    raw.set(cache.make_key("k"), pickle.dumps({"v": "planted"}))
    # The server's invalidation drops the copy; the planted value is refused.
    for _ in range(50):
        if cache.get("k", "miss") == "miss":
            break
    assert cache.get("k", "miss") == "miss"
    assert cache.stats()["near_cache"]["invalidations"] >= 1


def test_redis_collections_and_herd_writes_are_signed(redis_server):
    from django_rustcache.redis_cache import RedisCache as HerdCache

    raw = Raw("redis", redis_server)
    cache = make_redis(redis_server.location, OPTIONS={"SIGN": True})
    cache.sadd("s", "a", ("b", 2))
    assert cache.smembers("s") == {"a", ("b", 2)}
    assert cache.sismember("s", ("b", 2))
    assert all(m.startswith(MAGIC) for m in raw.redis.smembers(cache.make_key("s")))
    herd = HerdCache(redis_server.location, {"KEY_PREFIX": cache.key_prefix, "OPTIONS": {"SIGN": True}})
    assert herd.get_or_set("h", lambda: {"made": 1}, 60, lock_timeout=5, stale_cache_timeout=5) == {"made": 1}
    # (django-redis-cache's default db is 1)
    assert redis_py.Redis(port=redis_server.port, db=1).get(herd.make_key("h")).startswith(MAGIC)
    assert herd.get("h") == {"made": 1}


@pytest.mark.parametrize("given", ["yes", 1, "MIGRATE!"])
def test_a_sign_option_of_another_kind_is_refused(given, redis_server):
    with pytest.raises(ImproperlyConfigured, match="SIGN"):
        make_redis(redis_server.location, OPTIONS={"SIGN": given}).get("k")


def test_signing_without_a_secret_key_is_refused(redis_server, memcached_server):
    with override_settings(SECRET_KEY=""):
        with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
            make_redis(redis_server.location, OPTIONS={"SIGN": True}).get("k")
        with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
            make_memcached(memcached_server.location, OPTIONS={"SIGN": True}).get("k")


def test_without_a_secret_key_a_cache_that_does_not_sign_works(redis_server, memcached_server):
    # Django's own backends need no SECRET_KEY (a script configuring only CACHES): neither do ours.
    with override_settings(SECRET_KEY=""):
        for cache in (make_redis(redis_server.location), make_memcached(memcached_server.location)):
            cache.set("no-secret", {"v": 1})
            assert cache.get("no-secret") == {"v": 1}


def test_the_lru_accepts_the_option_and_keeps_its_values_in_the_process():
    cache = make_lru("pickled", OPTIONS={"SIGN": True})
    cache.set("k", {"v": 1})
    assert cache.get("k") == {"v": 1}


def test_a_signed_value_cut_short_by_the_server_is_a_miss(make, raw):
    cache = make()
    cache.set("k", "value")
    flags, stored = raw.get(cache.make_key("k"))
    raw.set(cache.make_key("k"), stored[: len(MAGIC) + 10], flags=flags)
    assert cache.get("k", "miss") == "miss"
