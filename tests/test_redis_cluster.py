"""Redis Cluster against real processes: 3 primaries with a replica each, made once for the
session with ``redis-cli --cluster create``. Every call of Django's API and the extension API;
keys on the node of their hash slot, hashtags, commands that would cross slots; a slot
migration (``redis-cli --cluster reshard``) under load from 8 threads and from async tasks; a
primary killed under load. Never a wrong value."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pickle
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_rustcache._core import CacheError, ClusterBusy
from django_rustcache._core import cluster_key_slot as key_slot
from django_rustcache.redis import RedisCache, RedisClusterCache
from tests.servers import raw_command, wait_until

# Redis Cluster / Sentinel topologies: the Rust core's subject, not the interpreter's (run on 3.11).
pytestmark = pytest.mark.topology

_prefixes = itertools.count()


def cluster_cache(cluster, **options):
    return RedisClusterCache(cluster.location, {"KEY_PREFIX": f"c{next(_prefixes)}", "OPTIONS": options})


def on_node(cluster, cache, key, version=None):
    """The value of ``key`` on the primary that owns its slot, read with a socket of our own."""
    made = cache.make_key(key, version)
    reply = raw_command(cluster.primary_of(key_slot(made)), "GET", made)
    if reply.startswith(b"$-1"):
        return None
    body = reply.split(b"\r\n", 1)[1][:-2]
    return int(body) if body.lstrip(b"-").isdigit() else pickle.loads(body)


def test_the_slot_of_a_key_is_redis_clusters():
    # CLUSTER KEYSLOT's answers, and the hashtag rule.
    assert key_slot("foo") == 12182
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == key_slot("foo{}{bar}")  # an empty tag is no tag
    assert key_slot("foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")


def test_every_key_lands_on_the_node_of_its_slot(redis_cluster):
    cache = cluster_cache(redis_cluster)
    data = {f"k{i}": i for i in range(200)}
    assert cache.set_many(data) == []
    assert cache.get_many([*data, "missing"]) == data
    for key in ("k0", "k17", "k199"):
        assert on_node(redis_cluster, cache, key) == data[key]
    # Keys went to all three primaries.
    owners = redis_cluster.owners()
    assert len({owners[key_slot(cache.make_key(k))] for k in data}) == 3
    cache.delete_many([f"k{i}" for i in range(100)])
    assert cache.get_many(list(data)) == {f"k{i}": i for i in range(100, 200)}
    assert asyncio.run(cache.aget_many(["k150", "k5"])) == {"k150": 150}


def test_djangos_api(redis_cluster):
    cache = cluster_cache(redis_cluster)
    assert cache.add("a", 1) is True
    assert cache.add("a", 2) is False
    assert cache.incr("a", 10) == 11
    assert cache.decr("a") == 10
    with pytest.raises(ValueError):
        cache.incr("missing")
    cache.set("b", {"x": [1, 2]}, timeout=100)
    assert cache.get("b") == {"x": [1, 2]}
    assert cache.touch("b", 5) is True
    assert 0 < cache.ttl("b") <= 5
    assert cache.has_key("b") and not cache.has_key("nope")
    assert cache.get_or_set("c", lambda: "made") == "made"
    # incr_version across slots (DUMP + RESTORE) keeps the value and the TTL.
    assert cache.incr_version("b") == 2
    assert cache.get("b", version=2) == {"x": [1, 2]} and cache.get("b") is None
    assert 0 < cache.ttl("b", version=2) <= 5
    assert cache.delete("a") is True and cache.delete("a") is False
    cache.set("zero", 1, timeout=0)
    assert cache.get("zero") is None
    assert cache.clear() is True
    assert cache.get("c") is None


def test_the_extension_api(redis_cluster):
    cache = cluster_cache(redis_cluster)
    cache.set_many({f"user:{i}": i for i in range(30)} | {f"other:{i}": i for i in range(5)})
    assert sorted(cache.keys("user:*")) == sorted(f"user:{i}" for i in range(30))
    assert len(list(cache.iter_keys("other:*"))) == 5
    assert cache.delete_pattern("user:*") == 30
    assert cache.keys("user:*") == []
    cache.set("t", 1, timeout=None)
    assert cache.ttl("t") is None
    assert cache.expire("t", 50) is True and 0 < cache.ttl("t") <= 50
    assert cache.persist("t") is True and cache.ttl("t") is None
    assert cache.set("t", 2, nx=True) is False and cache.set("t", 3, xx=True) is True
    assert cache.get("t") == 3
    # The collection API: one-key commands on their node; those across slots made of them.
    cache.sadd("s1", 1, 2, 3)
    cache.sadd("s2", 3, 4)
    assert key_slot(cache.make_key("s1")) != key_slot(cache.make_key("s2"))
    assert cache.sunion("s1", "s2") == {1, 2, 3, 4}
    assert cache.sinter("s1", "s2") == {3}
    assert cache.sdiff("s1", "s2") == {1, 2}
    assert cache.sunionstore("s3", "s1", "s2") == 4
    assert cache.smembers("s3") == {1, 2, 3, 4}
    assert cache.smove("s1", "s2", 1) is True
    assert cache.smembers("s2") == {1, 3, 4}
    assert asyncio.run(cache.asunion("s1", "s2")) == {1, 2, 3, 4}
    cache.hset("h", "f", "v")
    assert cache.hget("h", "f") == "v"
    cache.zadd("z", {"a": 1, "b": 2})
    assert cache.zrange("z", 0, -1) == ["a", "b"]
    lock = cache.lock("lk", timeout=5)
    assert lock.acquire(blocking=False) is True
    assert lock.locked() and not cache.lock("lk").acquire(blocking=False)
    lock.release()
    assert not lock.locked()
    # A change of format rewrites every value, slot by slot.
    cache.set_many({f"big{i}": "x" * 2000 for i in range(20)})
    zipped = RedisClusterCache(
        redis_cluster.location, {"KEY_PREFIX": cache.key_prefix, "OPTIONS": {"COMPRESSOR": "zlib"}}
    )
    assert zipped.reinsert_keys() >= 20
    assert zipped.get_many([f"big{i}" for i in range(20)]) == {f"big{i}": "x" * 2000 for i in range(20)}
    raw = raw_command(redis_cluster.primary_of(key_slot(cache.make_key("big0"))), "STRLEN", cache.make_key("big0"))
    assert int(raw[1:-2]) < 200


def test_hashtags_keep_keys_together(redis_cluster):
    cache = cluster_cache(redis_cluster)
    cache.set("{cart:7}:items", [1])
    cache.set("{cart:7}:total", 9)
    assert key_slot(cache.make_key("{cart:7}:items")) == key_slot(cache.make_key("{cart:7}:total"))
    # One slot: a multi-key set command runs natively there.
    cache.sadd("{t}a", 1)
    cache.sadd("{t}b", 2)
    assert cache.sunion("{t}a", "{t}b") == {1, 2}


def test_async_api(redis_cluster):
    cache = cluster_cache(redis_cluster)

    async def main():
        assert await cache.aadd("a", 1) is True
        assert await cache.aincr("a", 4) == 5
        await cache.aset_many({f"k{i}": i for i in range(50)})
        assert await cache.aget_many([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}
        await cache.adelete_many([f"k{i}" for i in range(25)])
        assert len(await cache.aget_many([f"k{i}" for i in range(50)])) == 25
        assert await cache.aincr_version("a") == 2
        assert await cache.aget("a", version=2) == 5
        assert await cache.atouch("a", 10, version=2) is True
        assert await cache.ahas_key("a", version=2) is True
        assert await cache.aclear() is True
        assert await cache.aget("a", version=2) is None

    asyncio.run(main())


def test_settings(redis_cluster):
    with pytest.raises(ImproperlyConfigured, match="db 0"):
        RedisClusterCache(redis_cluster.location, {"OPTIONS": {"DB": 2}}).get("k")
    with pytest.raises(ImproperlyConfigured, match="sharded by its slots"):
        RedisClusterCache(redis_cluster.location, {"OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"}}).get(
            "k"
        )
    # RedisCache with OPTIONS["CLUSTER"] is the same backend.
    cache = RedisCache(redis_cluster.location, {"OPTIONS": {"CLUSTER": True}})
    cache.set("x", 1)
    assert cache._cache.cluster is True
    # Replica reads: each shard's reads go to its replica (after READONLY).
    replicas = cluster_cache(redis_cluster, REPLICA_READ=True, CLIENT_NAME="rc-cluster-replica")
    replicas.set("r", 1)
    wait_until(lambda: replicas.get("r") == 1, 5, what="the value on a replica")
    served = [
        n.port for n in redis_cluster.alive() if b"name=rc-cluster-replica " in raw_command(n.port, "CLIENT", "LIST")
    ]
    roles = [b"role:slave" in raw_command(p, "INFO", "replication") for p in served]
    assert any(roles), "no replica served a read"


def _load(cache, stop, t, log, names):
    key, seq = names[t], 0
    while not stop.is_set():
        seq += 1
        try:
            cache.set(key, (t, seq))
            log["acked"][t] = seq
            value = cache.get(key)
            many = cache.get_many([key, names[(t + 1) % 8]])
        except CacheError as e:
            log["errors"].append((time.monotonic(), str(e)))
            continue
        # Read after our own write on the primary: exactly it (no replica reads here).
        if value != (t, seq) or many.get(key) != (t, seq):
            log["wrong"].append((key, seq, value, many.get(key)))


def _hammer(cache, seconds_before, act, names=tuple(f"load-{t}" for t in range(8))):
    log = {"acked": {}, "errors": [], "wrong": []}
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(cache, stop, t, log, names)) for t in range(8)]
    for th in threads:
        th.start()
    time.sleep(seconds_before)
    try:
        act()
        time.sleep(1.0)
    finally:
        stop.set()
        for th in threads:
            th.join()
    return log


@pytest.mark.failover
def test_a_slot_migration_under_load(redis_cluster):
    """redis-cli --cluster reshard moves a primary's first slots; the load's keys are in them."""
    cache = cluster_cache(redis_cluster)
    owners = redis_cluster.owners()
    source = owners[0]
    target = next(p for p in set(owners) if p not in (source, None))
    moving = range(owners.index(source), owners.index(source) + 200)
    names = [
        next(f"load-{t}-{n}" for n in itertools.count() if key_slot(cache.make_key(f"load-{t}-{n}")) in moving)
        for t in range(8)
    ]
    log = _hammer(cache, 0.5, lambda: redis_cluster.reshard(source, target, 200), names)
    redis_cluster.wait_ok()
    assert all(redis_cluster.primary_of(key_slot(cache.make_key(n))) == target for n in names)
    assert log["wrong"] == []
    assert log["errors"] == [], log["errors"][:3]
    for t, seq in log["acked"].items():
        assert cache.get(names[t]) == (t, seq)


def _migrate_under_load(cluster, cache, tag):
    """All the load's keys share one slot ({tag}), moved one key at a time: the keys already
    moved are only reachable with ASKING on the new node, the rest only on the old one; then
    for a moment each of the two sends clients to the other (MOVED)."""
    names = [f"{{{tag}}}-{t}" for t in range(8)]
    slot = key_slot(cache.make_key(names[0]))
    source = cluster.primary_of(slot)
    target = next(p for p in set(cluster.owners()) if p not in (source, None))
    for t in range(8):
        cache.set(names[t], (t, 0))
    extra = {f"{{{tag}}}-extra-{i}": i for i in range(24)}
    cache.set_many(extra)
    log = _hammer(cache, 0.3, lambda: cluster.migrate_slot(slot, target), names)
    cluster.wait_ok()
    assert cluster.primary_of(slot) == target
    assert log["wrong"] == []
    assert log["errors"] == [], log["errors"][:3]
    assert cache.get_many(list(extra)) == extra


@pytest.mark.failover
def test_ask_while_the_slot_of_the_keys_is_split(redis_cluster):
    _migrate_under_load(redis_cluster, cluster_cache(redis_cluster), "mig")


@pytest.mark.failover
def test_async_load_during_a_slot_migration(redis_cluster):
    cache = cluster_cache(redis_cluster)
    wrong, errors = [], []
    owners = redis_cluster.owners()
    port = owners[-1]
    other = next(p for p in set(owners) if p not in (port, None))
    first = owners.index(port)
    moving = range(first, first + 150)
    names = [
        next(f"aload-{t}-{n}" for n in itertools.count() if key_slot(cache.make_key(f"aload-{t}-{n}")) in moving)
        for t in range(32)
    ]

    async def task(t, stop):
        seq = 0
        while not stop.is_set():
            seq += 1
            try:
                await cache.aset(names[t], (t, seq))
                if (v := await cache.aget(names[t])) != (t, seq):
                    wrong.append(v)
                # Two keys (most often of two slots, two nodes): one GET pipeline per node.
                if (many := await cache.aget_many([names[t], names[(t + 1) % 32]])).get(names[t]) != (t, seq):
                    wrong.append(many)
            except CacheError as e:
                errors.append(str(e))

    async def main():
        stop = asyncio.Event()
        tasks = [asyncio.create_task(task(t, stop)) for t in range(32)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(redis_cluster.reshard, port, other, 150)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    redis_cluster.wait_ok()
    assert all(redis_cluster.primary_of(key_slot(cache.make_key(n))) == other for n in names)
    assert wrong == []
    assert errors == [], errors[:3]


@pytest.mark.failover
def test_a_primary_killed_under_load(redis_cluster):
    cache = cluster_cache(redis_cluster, SOCKET_TIMEOUT=1.0)
    victim = redis_cluster.node(redis_cluster.primary_of(key_slot(cache.make_key("load-0"))))
    killed = {}

    def kill():
        killed["at"] = time.monotonic()
        victim.kill()
        # The replica takes over after the node timeout (1 s) and an election.
        slot = key_slot(cache.make_key("load-0"))
        wait_until(lambda: redis_cluster.primary_of(slot) not in (None, victim.port), 20, what="the failover")
        killed["over"] = time.monotonic()

    log = _hammer(cache, 0.5, kill)
    try:
        assert log["wrong"] == []
        late = [e for at, e in log["errors"] if at > killed["over"] + 1.0]
        assert late == [], late[:3]
        for t, seq in log["acked"].items():
            value = cache.get(f"load-{t}")
            # A write the dead primary acknowledged but had not replicated may be lost.
            assert value is None or (value[0] == t and value[1] <= seq)
    finally:
        victim.start()
        redis_cluster.wait_ok()


# --- a cluster that speaks only TLS and wants a password (ElastiCache's in-transit encryption
# with an AUTH token, say) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cluster():
    import shutil

    from tests.servers import Certificates, RedisCluster

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    certs = Certificates()
    cluster = RedisCluster(password="cl-s3cret", certs=certs)
    yield cluster
    cluster.close()
    certs.close()


def tls_cluster_cache(cluster, location=None, **options):
    options.setdefault("ssl_ca_certs", cluster.certs.ca)
    params = {"KEY_PREFIX": f"t{next(_prefixes)}", "OPTIONS": options}
    return RedisClusterCache(location or cluster.location, params)


def test_a_tls_cluster_with_a_password(tls_cluster):
    cache = tls_cluster_cache(tls_cluster)
    data = {f"tk{i}": i for i in range(200)}
    assert cache.set_many(data) == []
    assert cache.get_many([*data, "missing"]) == data
    # The keys are on the primaries of their slots, every primary has some, and each value went
    # over TLS to the node (read back with a TLS socket of our own, after AUTH).
    owners = tls_cluster.owners()
    by_node = {}
    for key in data:
        made = cache.make_key(key)
        by_node.setdefault(owners[key_slot(made)], []).append(made)
        assert tls_cluster.ask(owners[key_slot(made)], "GET", made).split(b"\r\n")[1] == str(data[key]).encode()
    assert len(by_node) == 3
    assert cache.incr("tk5", 10) == 15
    cache.delete_many(["tk1", "tk2"])
    assert cache.get_many(["tk1", "tk2", "tk3"]) == {"tk3": 3}
    assert sorted(cache.keys("tk1*")) == sorted(k for k in data if k.startswith("tk1") and k != "tk1")

    async def run():
        await cache.aset("atk", {"a": 1})
        return await cache.aget("atk"), await cache.aget_many(["atk", "tk3"])

    assert asyncio.run(run()) == ({"a": 1}, {"atk": {"a": 1}, "tk3": 3})

    # The password in OPTIONS instead of the URL; a wrong one is refused, a missing CA too.
    plain = ",".join(f"rediss://127.0.0.1:{n.port}" for n in tls_cluster.nodes[:3])
    other = tls_cluster_cache(tls_cluster, plain, PASSWORD="cl-s3cret")
    other.key_prefix = cache.key_prefix
    assert other.get("tk3") == 3
    with pytest.raises(CacheError, match=r"WRONGPASS|invalid"):
        tls_cluster_cache(tls_cluster, plain, PASSWORD="nope").get("tk3")
    with pytest.raises(CacheError):
        RedisClusterCache(tls_cluster.location, {}).get("tk3")
    cache.clear()
    assert cache.get("tk3") is None and cache.keys("*") == []


def test_replica_reads_over_tls(tls_cluster):
    cache = tls_cluster_cache(tls_cluster, REPLICA_READ=True, CLIENT_NAME="rc-tls-replica")
    cache.set_many({f"r{i}": i for i in range(60)})
    # A replica has the writes a moment later; reads of every key then come right.
    wait_until(lambda: cache.get_many([f"r{i}" for i in range(60)]) == {f"r{i}": i for i in range(60)}, 5)
    ports = [n.port for n in tls_cluster.alive()]
    named = {p for p in ports if b"name=rc-tls-replica " in tls_cluster.ask(p, "CLIENT", "LIST")}
    replicas = {p for p in ports if b"role:slave" in tls_cluster.ask(p, "INFO", "replication")}
    assert named & replicas


@pytest.mark.failover
def test_ask_over_tls(tls_cluster):
    """The same over TLS, where the test's MIGRATE carries the password."""
    _migrate_under_load(tls_cluster, tls_cluster_cache(tls_cluster), "tmig")


def test_many_keys_in_a_slot_half_migrated(redis_cluster):
    """A slot stopped half-way through its migration: some keys are on the new node (reachable
    with ASKING only), the rest on the old one. Every multi-key call, sync and async, still
    finds, stores and deletes every key."""
    cache = cluster_cache(redis_cluster)
    names = [f"{{half}}-{i}" for i in range(10)]
    slot = key_slot(cache.make_key(names[0]))
    source = redis_cluster.primary_of(slot)
    target = next(p for p in set(redis_cluster.owners()) if p not in (source, None))
    cache.set_many({n: i for i, n in enumerate(names)})
    ids = redis_cluster.node_ids()
    redis_cluster.ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source])
    redis_cluster.ask(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target])
    try:
        moved = [cache.make_key(n) for n in names[:5]]
        redis_cluster.ask(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *moved)
        assert redis_cluster.ask(target, "CLUSTER", "COUNTKEYSINSLOT", str(slot)).startswith(b":5")
        # A key of a third node, in the same calls.
        owners = redis_cluster.owners()
        other = next(
            f"o{i}" for i in itertools.count() if owners[key_slot(cache.make_key(f"o{i}"))] not in (source, target)
        )
        cache.set(other, "o")
        assert cache.get_many([*names, other]) == {**{n: i for i, n in enumerate(names)}, other: "o"}

        async def run():
            got = await cache.aget_many([*names, other])
            await cache.aset_many({n: -i for i, n in enumerate(names)})
            again = await cache.aget_many(names)
            await cache.adelete_many([names[0], names[9]])
            return got, again, await cache.aget_many(names)

        got, again, after = asyncio.run(run())
        assert got == {**{n: i for i, n in enumerate(names)}, other: "o"}
        assert again == {n: -i for i, n in enumerate(names)}
        assert after == {n: -i for i, n in enumerate(names) if i not in (0, 9)}
    finally:
        # Finish the migration, so the session's cluster is whole again.
        rest = redis_cluster.ask(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100")
        keys = [line.decode() for line in rest.split(b"\r\n")[2::2] if line]
        if keys:
            redis_cluster.ask(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "REPLACE", "KEYS", *keys)
        for port in {p for p in redis_cluster.owners() if p is not None}:
            redis_cluster.ask(port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])
        redis_cluster.wait_ok()


def test_bytes_keys_are_made_and_placed_as_django_makes_them(redis_cluster):
    """b"abc" is ":1:b'abc'" (Django's make_key), on the node of that key's slot, apart from
    "abc"; bytes that are not UTF-8 are a key like any other."""
    cache = cluster_cache(redis_cluster)
    cache.set(b"abc", 1)
    cache.set("abc", 2)
    cache.set(b"\xff", 3)
    assert cache.make_key(b"abc") == f"{cache.key_prefix}:1:b'abc'"
    assert (on_node(redis_cluster, cache, b"abc"), on_node(redis_cluster, cache, "abc")) == (1, 2)
    assert on_node(redis_cluster, cache, b"\xff") == 3
    assert cache.get_many([b"abc", "abc", b"\xff"]) == {b"abc": 1, "abc": 2, b"\xff": 3}


def test_get_redis_connection_is_a_redis_cluster(redis_cluster):
    pytest.importorskip("redis")
    from django.core.cache import caches
    from django.test.utils import override_settings

    from django_rustcache.redis import get_redis_connection

    redis_cluster.wait_ok()  # after the failover tests: every slot served again
    backend = {"BACKEND": "django_rustcache.redis.RedisClusterCache", "LOCATION": redis_cluster.location}
    with override_settings(CACHES={"default": backend}):
        cache = caches["default"]
        r = get_redis_connection()
        from redis.cluster import RedisCluster

        assert isinstance(r, RedisCluster)
        for i in range(20):
            r.set(cache.make_key(f"k{i}"), i)
        assert cache.get_many([f"k{i}" for i in range(20)]) == {f"k{i}": i for i in range(20)}
        r.close()


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_many_keys_read_after_a_failover_with_the_old_map(redis_cluster, sync):
    """A failover moves every slot of one primary at once. A client that read the slot map
    before it and then reads 60 keys across many slots gets them all (before: the first MOVED
    corrected one slot per attempt and a get_many of more slots than attempts raised
    ClusterRedirect)."""
    redis_cluster.wait_ok()
    cache = cluster_cache(redis_cluster)
    keys = [f"fo{i}" for i in range(60)]
    cache.set_many({k: i for i, k in enumerate(keys)})
    expected = {k: i for i, k in enumerate(keys)}
    assert cache.get_many(keys) == expected  # the map is read
    primary = redis_cluster.primary_of(key_slot(cache.make_key(keys[0])))
    moved = {
        key_slot(cache.make_key(k)) for k in keys if redis_cluster.primary_of(key_slot(cache.make_key(k))) == primary
    }
    assert len(moved) > 10
    redis_cluster.failover(primary)
    if sync:
        assert cache.get_many(keys) == expected
    else:
        assert asyncio.run(cache.aget_many(keys)) == expected


def test_a_silent_primary_costs_only_the_calls_that_need_it(redis_cluster):
    """A black-holed primary (stopped for less than the cluster's node timeout, so no failover
    starts): single-key calls on the other primaries never fail. Before: 668 of 5,836 did (the
    multi-key calls charged the healthy primaries with the silent one's timeout)."""
    from tests.load import healthy_calls_while_one_server_is_silent

    cache = cluster_cache(redis_cluster, SOCKET_TIMEOUT=0.15, SOCKET_CONNECT_TIMEOUT=0.15, RETRY_TIMEOUT=5)
    silent_port = redis_cluster.primary_of(key_slot(cache.make_key("elsewhere0")))
    healthy = [
        k for k in (f"h{i}" for i in range(300)) if redis_cluster.primary_of(key_slot(cache.make_key(k))) != silent_port
    ][:40]
    for key in healthy:
        cache.set(key, 1)
    failed, made = healthy_calls_while_one_server_is_silent(
        cache, redis_cluster.node(silent_port), healthy, seconds=0.6
    )
    assert made > 50 and failed == 0, (failed, made)
    redis_cluster.wait_ok()


NONSENSE = {
    "echo": None,
    "+OK": b"+OK\r\n",
    "a range without a node": b"*1\r\n*2\r\n:0\r\n:16383\r\n",
    "a node without a port": b"*1\r\n*3\r\n:0\r\n:16383\r\n*1\r\n$9\r\n127.0.0.1\r\n",
    "slots past 16383": b"*1\r\n*3\r\n:0\r\n:20000\r\n*2\r\n$9\r\n127.0.0.1\r\n:1\r\n",
    "an integer": b":5\r\n",
}


@pytest.mark.parametrize("answer", list(NONSENSE))
def test_a_seed_that_answers_nonsense_is_passed_over(redis_cluster, answer):
    """Before: TypeError or ValueError from the slot map's parsing, even with IGNORE_EXCEPTIONS
    and a healthy node listed after it. Now its answer is that node's protocol error, the next
    seed gives the map, and with no other seed the call fails as a server failure."""
    from django_rustcache import ServerDown
    from tests.servers import EchoServer, FakeReplyServer

    fake = EchoServer() if NONSENSE[answer] is None else FakeReplyServer(NONSENSE[answer])
    try:
        both = RedisClusterCache(f"redis://{fake.location},{redis_cluster.location}", {"KEY_PREFIX": "nonsense"})
        both.set("k", 1)
        assert both.get("k") == 1 and both.get_many(["k", "x"]) == {"k": 1}
        alone = RedisClusterCache(f"redis://{fake.location}", {"KEY_PREFIX": "nonsense"})
        with pytest.raises(ServerDown, match="CLUSTER SLOTS answered"):
            alone.get("k")
        ignoring = RedisClusterCache(f"redis://{fake.location}", {"OPTIONS": {"IGNORE_EXCEPTIONS": True}})
        assert ignoring.get("k", "miss") == "miss"
        assert ignoring.set("k", 1) is None
    finally:
        fake.close()


def test_seeds_that_never_answer_cost_one_deadline_and_hold_no_other_cache(memcached_server):
    """Before: the client was made (reading the slot map) under the process-wide registry lock,
    and a failed making was tried again by every call: each call took twice its deadline, the
    calls queued behind the lock, and so did a healthy memcached cache of the same process."""
    import threading

    from django_rustcache import ServerDown
    from tests.conftest import make_memcached
    from tests.servers import SilentServer

    seeds = [SilentServer(), SilentServer()]
    try:
        options = {"SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5, "RETRY_TIMEOUT": 0}
        cache = RedisClusterCache(",".join(f"redis://{s.location}" for s in seeds), {"OPTIONS": options})
        start = time.monotonic()
        with pytest.raises(ServerDown):
            cache.get("k")
        assert time.monotonic() - start < 0.5 * 1.5
        other = make_memcached(memcached_server.location)
        other.set("k", 1)
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                with contextlib.suppress(ServerDown):
                    RedisClusterCache(cache._servers, {"OPTIONS": options}).get("k")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            slowest = 0.0
            for _ in range(50):
                began = time.monotonic()
                assert other.get("k") == 1
                slowest = max(slowest, time.monotonic() - began)
                time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert slowest < 0.25, slowest
    finally:
        for s in seeds:
            s.close()


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_a_restarted_primary_is_used_the_moment_it_is_back(redis_cluster, sync):
    """A primary restarted at once (so no failover starts) keeps its slots. Once it says its
    cluster is ok again, the calls on its slots succeed at once: no retry window is left over
    from the refused connections while it was away (before: ~1.4 s of errors after it was back).
    Until then it answers CLUSTERDOWN itself, which is ClusterBusy, never "marked down"."""
    redis_cluster.wait_ok()
    cache = cluster_cache(redis_cluster, RETRY_TIMEOUT=5)
    port = redis_cluster.primary_of(key_slot(cache.make_key("restarted")))
    call = (lambda: cache.get("restarted")) if sync else (lambda: asyncio.run(cache.aget("restarted")))
    call()
    node = redis_cluster.node(port)
    node.kill()
    with pytest.raises(CacheError):
        call()
    node.start()
    with contextlib.suppress(ClusterBusy):
        call()  # while the node still says CLUSTERDOWN: its own answer
    wait_until(lambda: b"cluster_state:ok" in raw_command(port, "CLUSTER", "INFO"), timeout=20)
    ok_at = time.monotonic()
    for _ in range(20):
        assert call() is None
    assert time.monotonic() - ok_at < 0.5
    redis_cluster.wait_ok()


def test_the_first_calls_of_many_threads_at_once_wait_for_the_slot_map(redis_cluster):
    """A fresh cache (a worker's first requests): every thread's first call waits for the one
    reading of the slot map; none fails for a map that is half made."""
    for _ in range(5):
        cache = cluster_cache(redis_cluster)
        barrier = threading.Barrier(8)
        errors = []

        def first_call(i, cache=cache, barrier=barrier, errors=errors):
            barrier.wait()
            try:
                assert cache.get(f"cold{i}") is None
                cache.set(f"cold{i}", i)
            except CacheError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=first_call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert cache.get_many([f"cold{i}" for i in range(8)]) == {f"cold{i}": i for i in range(8)}
