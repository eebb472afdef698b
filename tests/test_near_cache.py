"""The near cache (OPTIONS["NEAR_CACHE"]) against real redis-server processes: local hits, and
never a read older than a write that returned before it began, whoever wrote."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import random
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.conftest import make_redis
from tests.servers import RedisServer

redis = pytest.importorskip("redis")

NEAR = {"MAX_ENTRIES": 1000, "MAX_BYTES": 1 << 20}


def near_cache(server, prefix=None, **near):
    params = {"OPTIONS": {"NEAR_CACHE": {**NEAR, **near}}}
    if prefix is not None:
        params["KEY_PREFIX"] = prefix
    return make_redis(server.location, **params)


def raw_client(server):
    return redis.Redis(port=server.port)


@pytest.fixture
def server():
    """A server of the test's own: tests here kill clients, flush and restart it."""
    srv = RedisServer()
    yield srv
    srv.close()


def near(cache):
    return cache.stats()["near_cache"]


def test_a_repeated_get_is_answered_locally(server):
    cache = near_cache(server)
    cache.set("k", {"a": 1})
    assert cache.get("k") == {"a": 1}
    before = near(cache)
    for _ in range(50):
        value = cache.get("k")
        assert value == {"a": 1}
    value["a"] = 2  # each hit is a fresh object, as a server read is
    assert cache.get("k") == {"a": 1}
    after = near(cache)
    assert after["hits"] - before["hits"] == 51
    assert after["misses"] == before["misses"]
    assert after["entries"] == 1 and after["bytes"] > 0


def test_another_clients_write_is_seen_by_the_next_read(server):
    cache = near_cache(server)
    raw = raw_client(server)
    key = cache.make_key("k")
    for i in range(300):
        raw.set(key, pickle.dumps(i))
        # The write has returned: a read that begins now must see it (no sleep, no retry).
        assert cache.get("k") == i
        assert cache.get("k") == i
    assert near(cache)["invalidations"] >= 299  # the first write came before the subscription
    assert near(cache)["hits"] >= 290


def test_a_remembered_miss_is_dropped_when_the_key_appears(server):
    cache = near_cache(server)
    raw = raw_client(server)
    assert cache.get("later") is None
    assert cache.get("later", "default") == "default"
    assert cache.has_key("later") is False
    raw.set(cache.make_key("later"), pickle.dumps("here"))
    assert cache.has_key("later") is True
    assert cache.get("later") == "here"


@pytest.mark.parametrize(
    "write",
    [
        lambda c: c.set("k", "new"),
        lambda c: c.set_many({"k": "new"}),
        lambda c: c.add("k", "new") if c.delete("k") else None,
        lambda c: c.delete("k"),
        lambda c: c.delete_many(["k", "other"]),
        lambda c: c.incr("n"),
        lambda c: c.touch("k", 0),
        lambda c: c.expire("k", 0),
        lambda c: c.persist("k") and c.set("k", "new"),
        lambda c: c.delete_pattern("k*"),
        lambda c: c.clear(),
        lambda c: c.incr_version("k"),
        lambda c: c.set("k", "new", nx=False, xx=True),
    ],
    ids=[
        "set", "set_many", "add", "delete", "delete_many", "incr", "touch", "expire", "persist+set",
        "delete_pattern", "clear", "incr_version", "set_xx",
    ],
)  # fmt: skip
def test_own_writes_are_read_back_at_once(server, write):
    cache = near_cache(server)
    plain = make_redis(server.location, KEY_PREFIX=cache.key_prefix)
    cache.set("k", "old")
    cache.set("n", 1)
    assert cache.get("k") == "old" and cache.get("n") == 1  # held locally now
    write(cache)
    # What the server holds now, read by a client without a near cache.
    assert cache.get("k") == plain.get("k")
    assert cache.get("n") == plain.get("n")


def test_flushall_empties_the_store(server):
    cache = near_cache(server)
    cache.set("k", "v")
    assert cache.get("k") == "v"
    raw_client(server).flushall()
    assert cache.get("k") is None
    assert near(cache)["flushes"] >= 1


def test_a_killed_invalidation_connection_empties_the_store_and_comes_back(server):
    cache = near_cache(server)
    raw = raw_client(server)
    cache.set("k", "v1")
    assert cache.get("k") == "v1" and cache.get("k") == "v1"
    tracking = [c for c in raw.client_list() if "t" in c["flags"]]
    assert len(tracking) == 1, raw.client_list()
    raw.client_kill_filter(_id=tracking[0]["id"])
    # Written by another client while ours has no invalidation connection.
    raw.set(cache.make_key("k"), pickle.dumps("v2"))
    assert cache.get("k") == "v2"
    assert near(cache)["flushes"] >= 1
    # A new subscription, and local hits again.
    hits = near(cache)["hits"]
    assert cache.get("k") == "v2" and cache.get("k") == "v2"
    assert near(cache)["hits"] > hits
    assert len([c for c in raw.client_list() if "t" in c["flags"]]) == 1


def test_a_server_restart_loses_nothing(server):
    cache = near_cache(server)
    cache.set("k", "before")
    assert cache.get("k") == "before" and cache.get("k") == "before"
    server.restart()  # the data is gone (no persistence): the key no longer exists
    assert cache.get("k") is None
    raw_client(server).set(cache.make_key("k"), pickle.dumps("after"))
    assert cache.get("k") == "after"


def test_the_servers_ttl_is_honoured_locally(server):
    cache = near_cache(server)
    cache.set("short", "v", timeout=1)
    assert cache.get("short") == "v" and cache.get("short") == "v"
    time.sleep(1.05)
    assert cache.get("short") is None


def test_max_entries_and_max_bytes_hold(server):
    cache = near_cache(server, MAX_ENTRIES=10, MAX_BYTES=1 << 20)
    for i in range(50):
        cache.set(f"k{i}", i)
        cache.get(f"k{i}")
    assert near(cache)["entries"] == 10
    big = near_cache(server, MAX_ENTRIES=1000, MAX_BYTES=8192)
    for i in range(20):
        big.set(f"b{i}", "x" * 1000)
        assert big.get(f"b{i}") == "x" * 1000
    stats = near(big)
    assert stats["bytes"] <= 8192 and 0 < stats["entries"] < 20
    # A value larger than the whole budget is read, never held.
    big.set("huge", "y" * 10_000)
    assert big.get("huge") == "y" * 10_000
    assert near(big)["bytes"] <= 8192


def test_memory_is_flat_over_a_long_run(server):
    cache = near_cache(server, MAX_ENTRIES=100, MAX_BYTES=1 << 16)
    for i in range(5000):
        cache.set(f"k{i % 500}", "v" * (i % 300))
        cache.get(f"k{i % 500}")
    stats = near(cache)
    assert stats["entries"] <= 100 and stats["bytes"] <= 1 << 16


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_starts_with_an_empty_store(server):
    cache = near_cache(server)
    cache.set("k", "parent")
    assert cache.get("k") == "parent" and cache.get("k") == "parent"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            from django_rustcache.redis import RedisCache

            child = RedisCache(*cache._init_args)
            entries = near(child)["entries"]
            raw_client(server).set(cache.make_key("k"), pickle.dumps("child"))
            os.write(write, pickle.dumps((entries, child.get("k"))))
        finally:
            os._exit(0)
    os.close(write)
    answer = pickle.loads(os.read(read, 4096))
    os.waitpid(pid, 0)
    assert answer == (0, "child")
    assert cache.get("k") == "child"


def test_a_server_that_refuses_tracking_is_an_improperly_configured_cache():
    srv = RedisServer(args=("--rename-command", "CLIENT", ""))
    try:
        cache = near_cache(srv)
        with pytest.raises(ImproperlyConfigured, match="tracking"):
            cache.get("k")
        with pytest.raises(ImproperlyConfigured):
            cache.get("k")
        # Unless copies bounded by age are asked for instead.
        bounded = near_cache(srv, MAX_STALENESS=0.5)
        bounded.set("k", "v1")
        assert bounded.get("k") == "v1" and bounded.get("k") == "v1"
        raw_client(srv).set(bounded.make_key("k"), pickle.dumps("v2"))
        assert bounded.get("k") == "v1"  # stale, as documented: at most MAX_STALENESS
        time.sleep(0.55)
        assert bounded.get("k") == "v2"
    finally:
        srv.close()


def test_keys_of_a_key_function_of_its_own_still_read_fresh(server):
    cache = make_redis(
        server.location,
        KEY_FUNCTION=lambda key, prefix, version: f"custom/{key}",
        OPTIONS={"NEAR_CACHE": NEAR},
    )
    raw = raw_client(server)
    for i in range(20):
        raw.set("custom/k", pickle.dumps(i))
        assert cache.get("k") == i


@pytest.mark.parametrize(
    "bad",
    [{"MAX_ENTRIES": 0}, {"MAX_BYTES": "lots"}, {"MAX_STALENESS": -1}, {"SIZE": 10}, "yes"],
)
def test_bad_near_cache_settings_are_named(server, bad):
    cache = make_redis(server.location, OPTIONS={"NEAR_CACHE": bad})
    with pytest.raises(ImproperlyConfigured, match="NEAR_CACHE"):
        cache.get("k")


# --- the checker: many processes, threads, writers and readers, faults injected --------------


def _writer(location, prefix, announced, stop, slots):
    """Each key has one writer and a count of its own, so its values go up by one a write."""
    cache = make_redis(location, KEY_PREFIX=prefix)
    rng = random.Random()
    written = dict.fromkeys(slots, 0)
    while not stop.is_set():
        slot = rng.choice(slots)
        try:
            cache.set(f"k{slot}", written[slot] + 1)
        except Exception:
            continue  # a write that failed announces nothing
        written[slot] += 1
        announced[slot] = written[slot]


# How long after a FLUSHALL begins a read may still miss the write made in the server's pass
# with it (the server may be kept off the CPU between its two socket writes; 0.2-0.5 ms seen).
FLUSH_WINDOW = 0.05


def _reader(location, prefix, announced, erased, flushed_at, stop, counts, threads):
    cache = make_redis(location, KEY_PREFIX=prefix, OPTIONS={"NEAR_CACHE": NEAR})
    lock = threading.Lock()
    mine = {"reads": 0, "stale": 0, "flush": 0, "async": 0}

    def judge(value, floor, started):
        """Which count a read's answer goes to."""
        # Older than a returned write: stale. None: stale unless the data may have been
        # erased since (a FLUSHALL or a restart, announced before it was made).
        if (value is not None and value < floor) or (value is None and floor and not erased.value):
            # The documented limit: the one write made in the server's pass with a FLUSHALL,
            # missed by reads in the moment after it.
            if value == floor - 1 and 0 <= started - flushed_at.value < FLUSH_WINDOW:
                return "flush"
            return "stale"
        return None

    def tally(seen):
        with lock:
            for what, n in seen.items():
                mine[what] += n

    def read():
        rng = random.Random()
        seen = {"reads": 0, "stale": 0, "flush": 0}
        while not stop.is_set():
            slot = rng.randrange(4)
            floor = announced[slot]  # a write of this value had returned
            started = time.monotonic()
            try:
                value = cache.get(f"k{slot}")
            except Exception:
                continue
            seen["reads"] += 1
            if what := judge(value, floor, started):
                seen[what] += 1
        tally(seen)

    async def read_async(seen):
        rng = random.Random()
        while not stop.is_set():
            slot = rng.randrange(4)
            floor = announced[slot]
            started = time.monotonic()
            try:
                value = await cache.aget(f"k{slot}")
            except Exception:
                await asyncio.sleep(0.001)
                continue
            seen["reads"] += 1
            if what := judge(value, floor, started):
                seen[what] += 1

    def read_in_tasks():
        """Three asyncio tasks on one loop: each await of a miss lets the others run."""
        seen = {"reads": 0, "stale": 0, "flush": 0}

        async def main():
            await asyncio.gather(*(read_async(seen) for _ in range(3)))

        asyncio.run(main())
        seen["async"] = seen["reads"]
        tally(seen)

    workers = [threading.Thread(target=read) for _ in range(threads)]
    workers.append(threading.Thread(target=read_in_tasks))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    with counts.get_lock():
        counts[0] += mine["reads"]
        counts[1] += mine["stale"]
        counts[2] += near(cache)["hits"]
        counts[3] += mine["flush"]
        counts[4] += mine["async"]


@pytest.mark.failover
def test_no_reader_ever_reads_older_than_a_returned_write(server):
    """Writers in two processes set increasing values and announce each after it returned;
    readers in three processes (threads and asyncio tasks each) with near caches must never read an older one,
    while the invalidation connections are killed at random, the server is flushed and
    restarted. The one exception is the README's stated limit: a write made in the server's
    event-loop pass with a FLUSHALL may be missed, by exactly that one write, in the moment
    after the flush; such reads are counted apart, and anything else is stale.
    (RUSTCACHE_CHECKER_FAULTS=kill,flush,restart picks the faults.)"""
    faults = os.environ.get("RUSTCACHE_CHECKER_FAULTS", "all")
    faults = {"all": {"kill", "flush", "restart"}, "none": set()}.get(faults, set(faults.split(",")))
    ctx = multiprocessing.get_context("fork")
    announced = ctx.Array("q", 4, lock=False)
    erased = ctx.Value("b", 0, lock=False)
    flushed_at = ctx.Value("d", -1.0, lock=False)
    # reads, stale reads, local hits, reads in a flush's window, reads by asyncio tasks
    counts = ctx.Array("q", 5)
    stop = ctx.Event()
    prefix = f"checker{os.getpid()}"
    procs = [
        ctx.Process(target=_writer, args=(server.location, prefix, announced, stop, slots))
        for slots in ([0, 1], [2, 3])
    ]
    procs += [
        ctx.Process(target=_reader, args=(server.location, prefix, announced, erased, flushed_at, stop, counts, 3))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    raw = raw_client(server)
    try:
        started = time.monotonic()
        restarted = False
        while time.monotonic() < started + 8:
            time.sleep(0.25)
            try:
                fault = random.random() if faults else 1.0
                if fault < 0.5 and "kill" in faults:
                    for c in raw.client_list():
                        if "t" in c["flags"] and random.random() < 0.5:
                            raw.client_kill_filter(_id=c["id"])
                elif 0.5 <= fault < 0.7 and "flush" in faults:
                    erased.value = 1
                    flushed_at.value = time.monotonic()
                    raw.flushall()
                elif fault >= 0.7 and "restart" in faults and not restarted and time.monotonic() > started + 4:
                    erased.value = 1
                    server.restart()
                    restarted = True
            except redis.RedisError:
                pass
    finally:
        stop.set()
        for p in procs:
            p.join(15)
    reads, stale, hits, flush, by_tasks = counts[:]
    assert reads > 1000 and hits > reads // 10 and by_tasks > 100, (reads, hits, by_tasks)
    print(f"checker: {reads} reads ({by_tasks} by asyncio tasks), {hits} local hits, {stale} stale,", end=" ")
    print(f"{flush} in a FLUSHALL's window")
    assert stale == 0, f"{stale} stale reads of {reads}"


# --- get_many, the async calls, every topology ---------------------------------------------


def test_get_many_answers_what_it_holds_and_reads_the_rest(server):
    cache = near_cache(server)
    raw = raw_client(server)
    cache.set_many({"a": 1, "b": 2})
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    hits = near(cache)["hits"]
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert near(cache)["hits"] == hits + 3  # "c" is a remembered miss
    raw.set(cache.make_key("c"), pickle.dumps(3))
    raw.set(cache.make_key("a"), pickle.dumps(10))
    assert cache.get_many(["a", "b", "c", "b"]) == {"a": 10, "b": 2, "c": 3}
    assert cache.get("c") == 3


def test_the_async_calls_go_through_the_near_cache(server):
    import asyncio

    cache = near_cache(server)
    raw = raw_client(server)

    async def main():
        await cache.aset("k", "v1")
        assert await cache.aget("k") == "v1"  # subscribes (off the loop), keeps nothing yet
        assert await cache.aget("k") == "v1"
        await asyncio.sleep(0.05)
        assert await cache.aget("k") == "v1"
        before = near(cache)
        # A hit is a future that is done already: no turn of the loop.
        future = cache._cache.aget(cache.key_prefix, cache.version, "k")
        assert future.done() and future.result() == "v1"
        assert near(cache)["hits"] == before["hits"] + 1
        raw.set(cache.make_key("k"), pickle.dumps("v2"))
        assert await cache.aget("k") == "v2"
        assert await cache.ahas_key("k") is True
        assert await cache.ahas_key("nothing") is False
        await cache.aset_many({"x": 1, "y": 2})
        assert await cache.aget_many(["x", "y", "z"]) == {"x": 1, "y": 2}
        assert await cache.aget_many(["x", "y", "z"]) == {"x": 1, "y": 2}
        await cache.adelete("x")
        assert await cache.aget_many(["x", "y"]) == {"y": 2}
        for i in range(100):
            raw.set(cache.make_key("k"), pickle.dumps(i))
            assert await cache.aget("k") == i

    asyncio.run(main())
    assert near(cache)["hits"] > 5


def test_sharded_caches_track_every_shard():
    servers = [RedisServer() for _ in range(3)]
    try:
        location = ",".join(s.location for s in servers)
        cache = make_redis(location, OPTIONS={"CLIENT_CLASS": "django_redis.client.ShardClient", "NEAR_CACHE": NEAR})
        raws = [raw_client(s) for s in servers]
        keys = [f"key{i}" for i in range(30)]
        cache.set_many({k: 0 for k in keys})
        assert cache.get_many(keys) == {k: 0 for k in keys}
        for i in range(1, 4):
            for k in keys:
                for raw in raws:  # the key's shard is one of them: write it on each
                    if raw.exists(cache.make_key(k)):
                        raw.set(cache.make_key(k), pickle.dumps(i))
            assert cache.get_many(keys) == {k: i for k in keys}
            assert all(cache.get(k) == i for k in keys)
        assert near(cache)["hits"] > 0
        tracking = sum(len([c for c in raw.client_list() if "t" in c["flags"]]) for raw in raws)
        assert tracking == 3
    finally:
        for s in servers:
            s.close()


def test_cluster_caches_track_every_primary(redis_cluster):
    from django_rustcache.redis import RedisClusterCache

    cache = RedisClusterCache(
        redis_cluster.location, {"KEY_PREFIX": f"near{os.getpid()}", "OPTIONS": {"NEAR_CACHE": NEAR}}
    )
    plain = RedisClusterCache(redis_cluster.location, {"KEY_PREFIX": cache.key_prefix})
    keys = [f"key{i}" for i in range(30)]
    cache.set_many({k: 0 for k in keys})
    assert cache.get_many(keys) == {k: 0 for k in keys}
    for i in range(1, 4):
        plain.set_many({k: i for k in keys})  # another client writes
        assert cache.get_many(keys) == {k: i for k in keys}
        assert all(cache.get(k) == i for k in keys)
    assert near(cache)["hits"] > 0


@pytest.mark.failover
def test_a_slot_migration_under_load_never_serves_an_older_value(redis_cluster):
    """The keys' slot moves to another primary one key at a time (ASK while it is split, then
    MOVED both ways) while another client writes increasing values and near-cache readers
    read them: no read older than a returned write, and local hits before and after."""
    from django_rustcache._core import cluster_key_slot as key_slot
    from django_rustcache.redis import RedisClusterCache

    prefix = f"nearmig{os.getpid()}"
    cache = RedisClusterCache(redis_cluster.location, {"KEY_PREFIX": prefix, "OPTIONS": {"NEAR_CACHE": NEAR}})
    writer = RedisClusterCache(redis_cluster.location, {"KEY_PREFIX": prefix})
    names = [f"{{nm}}-{i}" for i in range(6)]
    slot = key_slot(cache.make_key(names[0]))
    source = redis_cluster.primary_of(slot)
    target = next(p for p in set(redis_cluster.owners()) if p not in (source, None))
    writer.set_many({f"{{nm}}-extra-{i}": i for i in range(24)})  # so the split lasts
    announced = dict.fromkeys(names, 0)
    writer.set_many(announced)
    stop = threading.Event()
    log = {"reads": 0, "stale": [], "errors": []}

    def write(mine):
        n = 0
        while not stop.is_set():
            n += 1
            for name in mine:
                try:
                    writer.set(name, n)
                except Exception as e:  # a failed write announces nothing
                    log["errors"].append(("write", round(time.monotonic() - t0, 3), repr(e)))
                    continue
                announced[name] = n

    def read():
        rng = random.Random()
        while not stop.is_set():
            name = rng.choice(names)
            floor = announced[name]
            try:
                value = cache.get(name)
            except Exception as e:
                log["errors"].append(("read", round(time.monotonic() - t0, 3), repr(e)))
                continue
            log["reads"] += 1
            if value is None or value < floor:
                log["stale"].append((name, value, floor))

    t0 = time.monotonic()
    threads = [threading.Thread(target=write, args=(names[:3],)), threading.Thread(target=write, args=(names[3:],))]
    threads += [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        try:
            time.sleep(0.3)
            hits_before = near(cache)["hits"]
            redis_cluster.migrate_slot(slot, target)
            time.sleep(0.7)
        finally:
            stop.set()
            for t in threads:
                t.join()
        _check_migration(redis_cluster, cache, slot, target, log, announced, names, hits_before)
    finally:
        # The session's cluster as it was: other files' tests count on each primary's slots
        # being one range.
        redis_cluster.wait_ok()
        if redis_cluster.primary_of(slot) != source:
            redis_cluster.migrate_slot(slot, source)
            redis_cluster.wait_ok()


def _check_migration(redis_cluster, cache, slot, target, log, announced, names, hits_before):
    """What the migration test asserts once the load stopped."""
    redis_cluster.wait_ok()
    assert redis_cluster.primary_of(slot) == target
    assert log["stale"] == [], log["stale"][:5]
    assert log["errors"] == [], log["errors"][:3]
    assert log["reads"] > 500 and hits_before > 0, (log["reads"], hits_before)
    # Settled on the new owner: read from it, then answered locally again.
    assert all(cache.get(name) == announced[name] for name in names)
    hits = near(cache)["hits"]
    assert all(cache.get(name) == announced[name] for name in names)
    assert near(cache)["hits"] == hits + len(names)


def test_with_replicas_fills_read_the_leader_never_a_lagging_replica():
    """LOCATION names a leader and a replica; the replica here never catches up (a standalone
    server: a replica lagging without end). Plain reads that land on it miss; the near cache
    fills from the leader only, so it reads every write the moment it returned."""
    leader, behind = RedisServer(), RedisServer()
    try:
        cache = make_redis([leader.location, behind.location], OPTIONS={"NEAR_CACHE": NEAR})
        writer = make_redis(leader.location, KEY_PREFIX=cache.key_prefix)
        for i in range(50):
            writer.set("k", i)
            assert cache.get("k") == i
            assert cache.get("k") == i
        assert near(cache)["hits"] >= 50
        plain = make_redis([leader.location, behind.location], KEY_PREFIX=cache.key_prefix)
        assert None in {plain.get("k") for _ in range(50)}  # the spread reads do land on it
    finally:
        leader.close()
        behind.close()


@pytest.mark.topology
def test_a_sentinel_failover_empties_the_store():
    from tests.servers import SentinelGroup

    group = SentinelGroup()
    try:
        cache = make_redis(
            f"redis://{group.service}/0",
            OPTIONS={"SENTINELS": group.addresses, "NEAR_CACHE": NEAR, "SOCKET_TIMEOUT": 1.0},
        )
        cache.set("k", "before")
        assert cache.get("k") == "before" and cache.get("k") == "before"
        group.fail_over()
        deadline = time.monotonic() + 10
        while True:  # writes fail until the sentinels name the new master
            try:
                cache.set("k", "after")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert cache.get("k") == "after"
        raw = redis.Redis(port=group.master_port())
        raw.set(cache.make_key("k"), pickle.dumps("written on the new master"))
        assert cache.get("k") == "written on the new master"
    finally:
        group.close()


def test_django_redis_cache_settings_take_the_near_cache_too(server):
    from django_rustcache.redis_cache import RedisCache as DjangoRedisCacheSuccessor

    cache = DjangoRedisCacheSuccessor(server.location, {"KEY_PREFIX": "drc", "OPTIONS": {"NEAR_CACHE": True}})
    raw = redis.Redis(port=server.port, db=1)  # django-redis-cache's default db
    cache.set("k", 1)
    assert cache.get("k") == 1 and cache.get("k") == 1
    raw.set(cache.make_key("k"), b"2")
    assert cache.get("k") == 2
    assert near(cache)["hits"] >= 1
