"""django-redis 7's collection API (sets, hashes, sorted sets) on our backend: its answers, and
its data, read and written both ways."""

from __future__ import annotations

import pytest

from tests.conftest import make_redis


@pytest.fixture
def pair(redis_server):
    """Ours and django-redis's backend on the same server and prefix."""
    pytest.importorskip("django_redis")
    from django_redis.cache import RedisCache as DjangoRedis

    ours = make_redis(redis_server.location, KEY_PREFIX="coll")
    theirs = DjangoRedis(redis_server.location, {"KEY_PREFIX": "coll"})
    ours.delete_pattern("*")
    return ours, theirs


def test_sets(pair):
    ours, theirs = pair
    values = [1, "two", (3, "tuple"), 4.5, True, None, 2**70]
    assert ours.sadd("s", *values) == len(values)
    assert theirs.smembers("s") == set(values)
    assert theirs.sadd("t", "two", 9) == 2
    assert ours.smembers("t") == {"two", 9}
    assert ours.scard("s") == len(values)
    assert ours.sismember("s", (3, "tuple")) is True
    assert ours.sismember("s", "nope") is False
    assert ours.smismember("s", 1, "x", None) == [True, False, True]
    assert ours.sinter("s", "t") == {"two"} == theirs.sinter("s", "t")
    assert ours.sunion("s", "t") == set(values) | {9}
    assert ours.sdiff("t", "s") == {9}
    assert ours.sinterstore("both", "s", "t") == 1
    assert theirs.smembers("both") == {"two"}
    assert ours.sunionstore("all", "s", "t") == len(values) + 1
    ours.sadd("v2", "x", version=2)
    assert ours.sdiffstore("d", "v2", version_dest=1, version_keys=2) == 1
    assert theirs.smembers("d") == {"x"}
    assert ours.smove("t", "moved", 9) is True
    assert theirs.smembers("moved") == {9}
    assert ours.srem("s", 1, "two", "absent") == 2
    assert ours.srandmember("s") in set(values)
    assert set(ours.srandmember("s", 2)) <= set(values)
    popped = ours.spop("s")
    assert popped in set(values) and not ours.sismember("s", popped)
    assert ours.spop("s", 2) <= set(values)
    assert ours.spop("empty") is None
    ours.sadd("big", *range(100))
    assert ours.sscan("big", count=1000) == set(range(100))
    assert sorted(ours.sscan_iter("big", count=7)) == list(range(100))


def test_hashes(pair):
    ours, theirs = pair
    assert ours.hset("h", "a", 1) == 1
    assert ours.hset("h", mapping={"b": [2], "c": {"three": 3}}) == 2
    assert theirs.hkeys("h") == ["a", "b", "c"]
    theirs.hset("h", "d", "four")
    assert ours.hget("h", "d") == "four"
    assert ours.hget("h", "b") == [2]
    assert ours.hget("h", "missing") is None
    assert ours.hmget("h", "a", "missing", "c") == [1, None, {"three": 3}]
    assert ours.hgetall("h") == {"a": 1, "b": [2], "c": {"three": 3}, "d": "four"}
    assert ours.hlen("h") == 4 == theirs.hlen("h")
    assert ours.hexists("h", "a") is True
    assert ours.hexists("h", "zz") is False
    assert ours.hdel("h", "a") == 1
    assert ours.hkeys("h") == ["b", "c", "d"]
    assert ours.hgetall("nothing") == {}
    with pytest.raises(ValueError):
        ours.hset("h")


def test_sorted_sets(pair):
    ours, theirs = pair
    assert ours.zadd("z", {"a": 1, "b": 2.5, 3: -4, ("t",): 0}) == 4
    assert theirs.zrange("z", 0, -1) == [3, ("t",), "a", "b"]
    assert ours.zrange("z", 0, -1, withscores=True) == [(3, -4.0), (("t",), 0.0), ("a", 1.0), ("b", 2.5)]
    assert ours.zrange("z", 0, 1, desc=True) == ["b", "a"]
    assert theirs.zadd("z", {"c": 10}) == 1
    assert ours.zscore("z", "c") == 10.0
    assert ours.zscore("z", "none") is None
    assert ours.zcard("z") == 5
    assert ours.zcount("z", 0, "+inf") == 4
    assert ours.zcount("z", "(0", 2.5) == 2
    assert ours.zadd("z", {"a": 100}, nx=True) == 0
    assert ours.zadd("z", {"new": 1}, xx=True) == 0
    assert ours.zadd("z", {"a": 5}, xx=True, ch=True) == 1
    assert ours.zadd("z", {"a": 1}, gt=True, ch=True) == 0
    assert ours.zadd("z", {"a": 2}, incr=True) == 7.0
    assert ours.zadd("z", {"fresh": 2}, incr=True, xx=True) is None
    assert ours.zincrby("z", -1.5, "a") == 5.5
    assert theirs.zscore("z", "a") == 5.5
    assert ours.zrangebyscore("z", 0, 6) == [("t",), "b", "a"]
    assert ours.zrangebyscore("z", "-inf", "+inf", start=1, num=2, withscores=True) == [(("t",), 0.0), ("b", 2.5)]
    assert ours.zrevrangebyscore("z", "+inf", 5) == ["c", "a"]
    assert ours.zrevrangebyscore("z", "+inf", "-inf", start=0, num=1) == ["c"]
    assert ours.zrevrange("z", 0, 0, withscores=True, score_cast_func=int) == [("c", 10)]
    assert ours.zrevrange("z", 0, 1) == ["c", "a"] == theirs.zrevrange("z", 0, 1)
    assert ours.zrank("z", "b") == 2 == theirs.zrank("z", "b")
    assert ours.zrank("z", "absent") is None
    with pytest.raises(ValueError):
        ours.zrangebyscore("z", 0, 1, start=1)
    assert ours.zpopmax("z") == ("c", 10.0)
    assert ours.zpopmin("z", 2) == [(3, -4.0), (("t",), 0.0)]
    assert ours.zpopmax("empty") is None
    assert ours.zpopmin("empty", 3) == []
    assert ours.zrem("z", "b", "absent") == 1
    assert ours.zremrangebyscore("z", "-inf", "+inf") == 1
    assert ours.zcard("z") == 0


def test_versions_and_prefix_apply_to_every_key(redis_server):
    cache = make_redis(redis_server.location, KEY_PREFIX="vers")
    cache.sadd("s", 1, version=3)
    cache.hset("h", "f", 1, version=3)
    cache.zadd("z", {"m": 1}, version=3)
    assert cache.smembers("s") == set()
    assert cache.smembers("s", version=3) == {1}
    assert cache.hget("h", "f", version=3) == 1
    assert cache.zrange("z", 0, -1, version=3) == ["m"]
    assert sorted(cache.keys("*", version=3)) == ["h", "s", "z"]


def test_collections_with_failures_ignored():
    from tests.servers import SilentServer

    silent = SilentServer()
    try:
        cache = make_redis(silent.location, OPTIONS={"IGNORE_EXCEPTIONS": True, "SOCKET_TIMEOUT": 0.2})
        assert cache.smembers("s") == set()
        assert cache.sadd("s", 1) == 0
        assert cache.hgetall("h") == {}
        assert cache.zrange("z", 0, -1) == []
        assert cache.zscore("z", "m") is None
    finally:
        silent.close()
