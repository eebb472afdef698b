"""Redis Sentinel against real processes: a master, two replicas and three sentinels (started
once for the module), in django-redis's settings and ours; a failover under load from 8 threads
and from 64 tasks, a manual failover that leaves the old master up as a replica, and sentinels
and data nodes with passwords of their own."""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import re
import shutil
import signal
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_rustcache._core import CacheError, ServerDown
from django_rustcache.redis import RedisCache
from tests.servers import SentinelGroup, raw_command, wait_until

# Redis Cluster / Sentinel topologies: the Rust core's subject, not the interpreter's (run on 3.11).
pytestmark = pytest.mark.topology

_names = itertools.count()


@pytest.fixture(scope="module")
def group():
    g = SentinelGroup()
    yield g
    g.close()


def sentinel_cache(group, location=None, **options):
    """A cache over the group, with a client name of its own (to find its connections)."""
    name = f"rc-sentinel-{next(_names)}"
    opts = {"SENTINELS": group.addresses, "CLIENT_NAME": name, **options}
    cache = RedisCache(location if location is not None else f"redis://{group.service}/0", {"OPTIONS": opts})
    return cache, name


def connected(port: int, name: str) -> bool:
    """Whether the node on ``port`` has a connection named ``name``."""
    return f"name={name} ".encode() in raw_command(port, "CLIENT", "LIST")


def stored(port: int, cache: RedisCache, key: str) -> object:
    """The value of ``key`` on the node on ``port``, read with a socket of our own."""
    reply = raw_command(port, "GET", cache.make_key(key))
    if reply.startswith(b"$-1"):
        return None
    body = reply.split(b"\r\n", 1)[1][:-2]
    return int(body) if body.isdigit() else pickle.loads(body)


def replica_ports(group) -> list[int]:
    master = group.master_port()
    return [n.port for n in group.nodes if n.port != master and n.proc and n.proc.poll() is None]


def test_django_redis_sentinel_client_writes_to_the_master_and_reads_from_replicas(group):
    cache, name = sentinel_cache(
        group,
        CLIENT_CLASS="django_redis.client.SentinelClient",
        CONNECTION_POOL_CLASS="redis.sentinel.SentinelConnectionPool",
        SENTINEL_KWARGS={},
    )
    cache.set("k", {"v": 1})
    assert stored(group.master_port(), cache, "k") == {"v": 1}
    wait_until(lambda: cache.get("k") == {"v": 1}, 5, what="the value on a replica")
    for _ in range(4):
        cache.get("k")
    assert connected(group.master_port(), name)
    # Reads went to a replica (each new connection takes the next one).
    assert any(connected(port, name) for port in replica_ports(group))
    servers = cache.stats()["servers"]
    assert [s["service"] for s in servers] == [group.service, group.service]
    assert servers[0]["master"] == f"127.0.0.1:{group.master_port()}"


def test_our_form_reads_from_the_master_unless_asked(group):
    cache, name = sentinel_cache(group, "", SENTINEL_SERVICE=group.service)
    cache.set("k", "on the master")
    for _ in range(4):
        assert cache.get("k") == "on the master"
    assert connected(group.master_port(), name)
    assert not any(connected(port, name) for port in replica_ports(group))
    assert len(cache.stats()["servers"]) == 1

    replicas, name = sentinel_cache(group, "", SENTINEL_SERVICE=group.service, REPLICA_READ=True)
    for _ in range(4):
        replicas.get("k")
    assert any(connected(port, name) for port in replica_ports(group))


def test_the_location_list_with_is_master(group):
    cache, _ = sentinel_cache(
        group, [f"redis://{group.service}/2?is_master=1", f"redis://{group.service}/2?is_master=0"]
    )
    cache.set("k", 5)
    assert cache.incr("k") == 6
    assert raw_command(group.master_port(), "SELECT", "2").startswith(b"+OK")
    assert len(cache.stats()["servers"]) == 2
    wait_until(lambda: cache.get("k") == 6, 5, what="the value on a replica")


def test_settings_that_cannot_work_are_refused():
    def configured(location, **options):
        cache = RedisCache(location, {"OPTIONS": options})
        return cache._cache

    with pytest.raises(ImproperlyConfigured, match="SENTINELS"):
        configured("redis://mymaster/0", CLIENT_CLASS="django_redis.client.SentinelClient")
    with pytest.raises(ImproperlyConfigured, match="host, port"):
        configured("redis://mymaster/0", SENTINELS=[("127.0.0.1",)])
    with pytest.raises(ImproperlyConfigured, match="port"):
        configured("redis://mymaster/0", SENTINELS=[("127.0.0.1", 0)])
    with pytest.raises(ImproperlyConfigured, match="SENTINEL_KWARGS"):
        configured("redis://mymaster/0", SENTINELS=[("127.0.0.1", 26379)], SENTINEL_KWARGS={"passwrd": "x"})
    with pytest.raises(ImproperlyConfigured, match="service"):
        configured("", SENTINELS=[("127.0.0.1", 26379)])
    with pytest.raises(ImproperlyConfigured, match="cannot be combined"):
        configured(
            "redis://mymaster/0", SENTINELS=[("127.0.0.1", 26379)], CLIENT_CLASS="django_redis.client.ShardClient"
        )


def test_no_sentinel_answering_is_server_down_within_the_deadline():
    from tests.servers import free_port

    cache = RedisCache(
        "redis://mymaster/0",
        {"OPTIONS": {"SENTINELS": [("127.0.0.1", free_port()), ("127.0.0.1", free_port())], "SOCKET_TIMEOUT": 0.5}},
    )
    started = time.monotonic()
    with pytest.raises(ServerDown, match="no sentinel gave a master"):
        cache.set("k", 1)
    assert time.monotonic() - started < 1.0


def _hammer(cache, stop: threading.Event, t: int, log: dict) -> None:
    """Write (t, seq) to a key of this thread's own and read it back, until ``stop``."""
    key = f"load-{t}"
    seq = 0
    while not stop.is_set():
        seq += 1
        try:
            cache.set(key, (t, seq))
            log["write_ok"].append(time.monotonic())
        except CacheError as e:
            log["write_errors"].append(time.monotonic())
            log.setdefault("messages", []).append((time.monotonic(), str(e)))
        try:
            value = cache.get(key)
        except CacheError:
            log["read_errors"].append(time.monotonic())
            continue
        # A replica may lag, and a failover may lose the last acknowledged writes; but a value
        # is never another key's, nor one not yet written.
        if value is not None and not (isinstance(value, tuple) and value[0] == t and value[1] <= seq):
            log["wrong"].append((key, seq, value))
        time.sleep(0.002)


@pytest.mark.failover
def test_a_master_killed_under_load_from_8_threads(group):
    cache, _ = sentinel_cache(group, REPLICA_READ=True, SOCKET_TIMEOUT=1.0)
    check, _ = sentinel_cache(group)
    log: dict = {"write_ok": [], "write_errors": [], "read_errors": [], "wrong": []}
    stop = threading.Event()
    threads = [threading.Thread(target=_hammer, args=(cache, stop, t, log)) for t in range(8)]
    for th in threads:
        th.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    old, new = group.fail_over()
    switched_at = time.monotonic()
    time.sleep(2.0)
    stop.set()
    for th in threads:
        th.join()
    try:
        assert log["wrong"] == []
        assert log["write_ok"], "no write went through"
        # Writes failed only until the failover was done plus one deadline, then went on.
        last_error = max(log["write_errors"], default=killed_at)
        assert last_error - switched_at < 1.0 + 0.5, (round(switched_at - killed_at, 2), log.get("messages", [])[-3:])
        assert [t for t in log["write_ok"] if t > last_error]
        # Reads went on from the replicas while the master was gone.
        assert log["read_errors"] == []
        # The last values are on the new master.
        assert stored(new, check, "load-0") is not None
        assert cache.stats()["servers"][0]["master"] == f"127.0.0.1:{new}"
    finally:
        group.revive(old)
        group.wait_healthy()


@pytest.mark.failover
def test_a_master_killed_under_async_load(group):
    cache, _ = sentinel_cache(group, SOCKET_TIMEOUT=1.0)
    wrong: list = []
    errors: list = []
    done: list = []

    async def task(t: int, stop: asyncio.Event) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            try:
                await cache.aset(f"aload-{t}", (t, seq))
                done.append(time.monotonic())
                value = await cache.aget(f"aload-{t}")
                if value is not None and not (value[0] == t and value[1] <= seq):
                    wrong.append(value)
            except CacheError:
                errors.append(time.monotonic())
                await asyncio.sleep(0.01)

    async def main() -> tuple[int, float, float]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(task(t, stop)) for t in range(64)]
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        old, _ = await asyncio.to_thread(group.fail_over)
        switched_at = time.monotonic()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks)
        return old, killed_at, switched_at

    old, killed_at, switched_at = asyncio.run(main())
    try:
        assert wrong == []
        last_error = max(errors, default=killed_at)
        assert last_error - switched_at < 1.0 + 0.5
        assert [t for t in done if t > last_error]
    finally:
        group.revive(old)
        group.wait_healthy()


def get_calls(port: int) -> int:
    """How many GETs the node on ``port`` has served."""
    info = raw_command(port, "INFO", "commandstats").decode()
    found = re.search(r"cmdstat_get:calls=(\d+)", info)
    return int(found.group(1)) if found else 0


@pytest.mark.failover
def test_a_replica_that_stops_answering_costs_only_the_reads_on_it(group):
    """One replica frozen (SIGSTOP: its sockets stay open and silent) under reads from 8
    threads: the reads already on it fail within one deadline, the other replica takes every
    read after, and the master none (the replica pool is not marked down as a whole, which
    would send every read to the master for the retry window)."""
    cache, name = sentinel_cache(group, REPLICA_READ=True, SOCKET_TIMEOUT=0.5, RETRY_TIMEOUT=3)
    master = group.master_port()
    frozen, alive = replica_ports(group)
    for t in range(8):
        cache.set(f"frozen-{t}", t)
    for port in (frozen, alive):
        wait_until(lambda port=port: stored(port, cache, "frozen-7") == 7, 5, what="the values on the replicas")
    stop = threading.Event()
    errors: list = []
    wrong: list = []
    ready = threading.Barrier(9)

    def reader(t: int) -> None:
        ready.wait()
        while not stop.is_set():
            try:
                value = cache.get(f"frozen-{t}")
            except CacheError:
                errors.append(time.monotonic())
                continue
            if value != t:
                wrong.append((t, value))

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    ready.wait()
    time.sleep(0.5)
    # Each new connection takes the next replica: some of ours are on the one to freeze.
    assert connected(frozen, name) and connected(alive, name)
    node = next(n for n in group.nodes if n.port == frozen)
    before = get_calls(master), get_calls(alive)
    os.kill(node.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        time.sleep(2.5)
        served = get_calls(master) - before[0], get_calls(alive) - before[1]
        stop.set()
        for th in threads:
            th.join()
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    group.wait_healthy()
    assert wrong == []
    # Only the reads that were on the frozen replica failed: one per thread at most, each
    # within its deadline.
    assert len(errors) <= 8, len(errors)
    assert all(at - frozen_at < 0.5 + 0.5 for at in errors), [round(at - frozen_at, 2) for at in errors]
    # The other replica took the reads; the master served (almost) none of them.
    assert served[1] > 500, served
    assert served[0] <= served[1] // 100, served


@pytest.mark.failover
def test_a_manual_failover_leaves_the_demoted_master_at_once(group):
    """SENTINEL FAILOVER keeps the old master up, as a replica: the pooled connections to it
    are not used again, and writes land on the new master."""
    cache, _ = sentinel_cache(group)
    for i in range(8):
        cache.set(f"m{i}", i)
    old = group.master_port()
    assert raw_command(group.sentinels[0].port, "SENTINEL", "FAILOVER", group.service).startswith(b"+OK")
    wait_until(lambda: group.master_port() != old, 20, what="the manual failover")
    new = group.master_port()
    # The client hears of it from the sentinel it watches (within the sentinels' own gossip).
    wait_until(lambda: cache.stats()["servers"][0]["master"] == f"127.0.0.1:{new}", 5, what="the switch heard")
    cache.set("after", "new master")
    assert stored(new, cache, "after") == "new master"
    assert cache.get("after") == "new master"
    assert asyncio.run(cache.aget("after")) == "new master"
    # The pooled connections to the old master went: none of ours is left there.
    wait_until(lambda: b"role:slave" in raw_command(old, "INFO", "replication"), 20, what="the old master's demotion")
    cache.set("later", 1)
    assert stored(new, cache, "later") == 1


@pytest.fixture(scope="module")
def guarded():
    g = SentinelGroup(replicas=0, sentinels=1, password="data-secret", sentinel_password="sentinel-secret")
    yield g
    g.close()


def test_sentinels_and_data_nodes_have_passwords_of_their_own(guarded):
    location = f"redis://:data-secret@{guarded.service}/0"
    good = RedisCache(
        location, {"OPTIONS": {"SENTINELS": guarded.addresses, "SENTINEL_KWARGS": {"password": "sentinel-secret"}}}
    )
    good.set("k", "v")
    assert good.get("k") == "v"
    assert asyncio.run(good.aget("k")) == "v"
    # The data nodes' password is not the sentinels' (redis-py's rule: SENTINEL_KWARGS only).
    no_sentinel_auth = RedisCache(location, {"OPTIONS": {"SENTINELS": guarded.addresses, "SOCKET_TIMEOUT": 0.5}})
    with pytest.raises(ServerDown, match=r"NOAUTH|Authentication"):
        no_sentinel_auth.get("k")
    wrong_data_auth = RedisCache(
        f"redis://:wrong@{guarded.service}/0",
        {"OPTIONS": {"SENTINELS": guarded.addresses, "SENTINEL_KWARGS": {"password": "sentinel-secret"}}},
    )
    with pytest.raises(CacheError):
        wrong_data_auth.get("k")


def test_a_master_demoted_behind_the_sentinels_back():
    """No announcement reaches the client (the sentinel it asks lags): a write on a pooled
    connection to the demoted master gets READONLY, and goes to the master the sentinel names
    once asked again, in the same call; a new connection to a server that is not a master is
    refused (ROLE), never written to."""
    from tests.servers import FakeSentinel, RedisServer

    a, b = RedisServer(), RedisServer()
    sentinel = FakeSentinel("lagging", a.port)
    try:
        cache = RedisCache(
            "redis://lagging/0", {"OPTIONS": {"SENTINELS": [("127.0.0.1", sentinel.port)], "SOCKET_TIMEOUT": 1.0}}
        )
        cache.set("k", "on a")
        assert stored(a.port, cache, "k") == "on a"
        # The client's watch subscribed, then asked once more (its catch-up): from here on it
        # hears nothing.
        wait_until(lambda: sentinel.subscribed == 1 and sentinel.asked == 2, 5, what="the watch")
        # a becomes a replica of b; the sentinel now names b, but tells no one.
        assert raw_command(a.port, "REPLICAOF", "127.0.0.1", str(b.port)).startswith(b"+OK")
        sentinel.master_port = b.port
        cache.set("k2", "on b")
        assert stored(b.port, cache, "k2") == "on b"
        assert cache.get("k2") == "on b"
        # The same on the async connections: one to b is open, then b is demoted in turn.
        assert asyncio.run(cache.aset("k3", "on b")) is None
        assert stored(b.port, cache, "k3") == "on b"
        assert raw_command(a.port, "REPLICAOF", "NO", "ONE").startswith(b"+OK")
        assert raw_command(b.port, "REPLICAOF", "127.0.0.1", str(a.port)).startswith(b"+OK")
        sentinel.master_port = a.port
        assert asyncio.run(cache.aset("k3", "on a again")) is None
        assert stored(a.port, cache, "k3") == "on a again"
        assert asyncio.run(cache.aget("k3")) == "on a again"
        # Back to b for the rest.
        assert raw_command(b.port, "REPLICAOF", "NO", "ONE").startswith(b"+OK")
        assert raw_command(a.port, "REPLICAOF", "127.0.0.1", str(b.port)).startswith(b"+OK")
        # The sentinel names a replica: a new connection asks ROLE and refuses it.
        sentinel.master_port = a.port
        fresh = RedisCache("redis://lagging/0", {"OPTIONS": {"SENTINELS": [("127.0.0.1", sentinel.port)]}})
        with pytest.raises(ServerDown, match="not a master"):
            fresh.set("k4", "never")
        with pytest.raises(ServerDown, match="not a master"):
            asyncio.run(
                RedisCache("redis://lagging/0", {"OPTIONS": {"SENTINELS": [("127.0.0.1", sentinel.port)]}}).aset(
                    "k4", "never"
                )
            )
        assert stored(b.port, cache, "k4") is None and stored(a.port, cache, "k4") is None
    finally:
        sentinel.close()
        a.close()
        b.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_call_that_fails_on_the_former_master_leaves_the_new_one_alone(mode):
    """A call is still waiting on the old master (its replies come late, through a proxy) when
    the sentinel announces a new one; the other calls go to the new master. The late call then
    fails at its deadline: that costs only the former master's connections. The new master is
    not marked down for it (for RETRY_TIMEOUT), nor doubted, and the calls after go on."""
    from tests.servers import DelayProxy, FakeSentinel, RedisServer

    a, b = RedisServer(), RedisServer()
    old = DelayProxy(a.port, 0.0)
    sentinel = FakeSentinel("announced", old.port)
    try:
        cache = RedisCache(
            "redis://announced/0",
            {"OPTIONS": {"SENTINELS": [("127.0.0.1", sentinel.port)], "SOCKET_TIMEOUT": 1.0, "RETRY_TIMEOUT": 30}},
        )
        cache.set("k", "on a")
        if mode == "async":
            assert asyncio.run(cache.aget("k")) == "on a"
        wait_until(lambda: sentinel.subscribed == 1, 5, what="the watch")
        old.delay = 3.0
        late: list = []

        def waiting_call() -> None:
            started = time.monotonic()
            try:
                cache.get("k") if mode == "sync" else asyncio.run(cache.aget("k"))
            except CacheError as e:
                late.append((time.monotonic() - started, e))

        waiting = threading.Thread(target=waiting_call)
        waiting.start()
        time.sleep(0.2)
        sentinel.announce(b.port)
        wait_until(lambda: cache.stats()["servers"][0]["master"] == f"127.0.0.1:{b.port}", 5, what="the switch")
        cache.set("k2", "on b")
        waiting.join()
        # The late call failed at its deadline (not the proxy's 3 s)...
        assert len(late) == 1 and late[0][0] < 1.0 + 0.5, late
        # ... and the new master goes on serving, still the one known, with no new asking.
        asked = sentinel.asked
        cache.set("k3", "on b")
        assert asyncio.run(cache.aget("k3")) == "on b"
        assert cache.get("k2") == "on b"
        assert stored(b.port, cache, "k3") == "on b" and stored(a.port, cache, "k3") is None
        assert cache.stats()["servers"][0]["master"] == f"127.0.0.1:{b.port}"
        assert sentinel.asked == asked
    finally:
        sentinel.close()
        old.close()
        a.close()
        b.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_sentinels_and_data_nodes_have_tls_settings_of_their_own():
    """The sentinel and the data node both speak only TLS, with passwords of their own: the
    sentinels' TLS and password come from SENTINEL_KWARGS, the data node's from LOCATION
    (``rediss://``) and OPTIONS; neither is taken for the other."""
    from tests.servers import Certificates, TlsRedisServer, TlsSentinelServer

    certs = Certificates()
    node = TlsRedisServer(certs, password="data-secret")
    sentinel = TlsSentinelServer(certs, "secure", node.port, password="sentinel-secret", master_password="data-secret")
    try:
        wait_until(lambda: b"flags\r\n$6\r\nmaster\r\n" in sentinel.ask("SENTINEL", "MASTER", "secure"), 10)
        sentinels = [("127.0.0.1", sentinel.port)]
        tls_kwargs = {"ssl": True, "ssl_ca_certs": certs.ca, "password": "sentinel-secret"}
        data = {"ssl_ca_certs": certs.ca, "PASSWORD": "data-secret", "SOCKET_TIMEOUT": 1.0}
        cache = RedisCache(
            "rediss://secure/0", {"OPTIONS": {"SENTINELS": sentinels, "SENTINEL_KWARGS": tls_kwargs, **data}}
        )
        cache.set("k", "over TLS")
        assert cache.get("k") == "over TLS"
        assert asyncio.run(cache.aget("k")) == "over TLS"
        # The data node's TLS settings do not reach the sentinels ...
        plain_sentinels = RedisCache(
            "rediss://secure/0",
            {"OPTIONS": {"SENTINELS": sentinels, "SENTINEL_KWARGS": {"password": "sentinel-secret"}, **data}},
        )
        with pytest.raises(ServerDown, match="no sentinel gave a master"):
            plain_sentinels.get("k")
        # ... nor the sentinels' the data node.
        plain_data = RedisCache(
            "redis://secure/0", {"OPTIONS": {"SENTINELS": sentinels, "SENTINEL_KWARGS": tls_kwargs, **data}}
        )
        with pytest.raises(CacheError):
            plain_data.get("k")
    finally:
        sentinel.close()
        node.close()
        certs.close()


def test_get_redis_connection_is_the_master_the_sentinels_name(group):
    pytest.importorskip("redis")
    from django.core.cache import caches
    from django.test.utils import override_settings

    from django_rustcache.redis import get_redis_connection

    backend = {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": f"redis://{group.service}/0",
               "OPTIONS": {"SENTINELS": group.addresses}}  # fmt: skip
    with override_settings(CACHES={"default": backend}):
        r = get_redis_connection()
        r.set(caches["default"].make_key("raw"), 7)
        assert caches["default"].get("raw") == 7
        assert r.role()[0] == b"master"
        r.connection_pool.disconnect()
