"""A switch without surprises (issue 22): what a predecessor's site does keeps working on ours,
checked against real servers and, where they are installed, the predecessors themselves."""

from __future__ import annotations

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
