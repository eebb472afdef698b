"""Side-by-side benchmark of our backends against the peers, through Django's cache API.

Every backend is reached the way a site reaches it: ``caches[alias]`` (resolved once per batch,
as a view does once per request) and then ``.get(...)``/``.set(...)``. One sample is the mean
time per operation over a batch; rounds interleave the backends in a shuffled order, so a noisy
neighbour slows every backend alike. The table gives, per backend, the median and p99 of the
samples, ``median - floor`` (where the suite has a raw-socket floor: what the client costs above
the least a Python caller can pay) and the client's CPU time per call, then each peer's median as
a ratio to ours (ours / peer: below 1 means we are faster).

Placement: on a 2-vCPU VM a loopback round trip costs ~16 us when client and server share a CPU
and ~60-75 us when they do not (a cross-CPU wake-up), and the kernel decides by chance. So by
default the benchmark pins itself and every thread of the servers it starts to one CPU
(``--placement one``); ``--placement split`` puts the servers on another CPU. memcached runs with
one worker thread (``-t 1``).

    python bench/run.py                # every suite (it starts its own memcached and redis)
    python bench/run.py --suite memcached
    python bench/run.py --placement split
    python bench/run.py --quick        # fewer rounds
    python bench/run.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import django
from django.conf import settings

SMALL = "x" * 100


@dataclass
class Backend:
    alias: str
    label: str
    params: dict
    ours: bool = False


@dataclass
class Suite:
    name: str
    backends: list[Backend]
    # op name -> (ratio target vs peer label), checked against ours / peer.
    targets: dict[str, dict[str, float]] = field(default_factory=dict)
    # Clients outside Django (the raw-socket floor): label -> factory of an object with the
    # same get/set/get_many/set_many methods.
    floors: dict[str, Callable[[], object]] = field(default_factory=dict)
    # Extra ops for this suite: name -> (make call from cache, batch size, samples per round).
    extra_ops: dict[str, tuple[Callable[[object], Callable[[], object]], int, int]] = field(default_factory=dict)
    # Absolute limits on p99 (us): op -> limit, checked for ours.
    p99_limits: dict[str, float] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    # The server processes the suite started (pinned by the placement).
    server_pids: list[int] = field(default_factory=list)
    # Run (untimed) after each batch: so a batch does not pay for what the one before left
    # (the near cache reads the invalidations its writes send back at its next read).
    settle: Callable[[object], None] | None = None
    # Ratios of these (first / second) instead of ours against each peer: a suite that compares
    # our backends with themselves (the metrics suite: on / off, per backend).
    pairs: list[tuple[str, str]] = field(default_factory=list)


class Placement:
    """Where the benchmark and its servers run: all on one CPU, or servers on another."""

    def __init__(self, mode: str, cpu: int) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.mode = mode
        self.client_cpu = cpu if cpu in cpus else cpus[0]
        others = [c for c in cpus if c != self.client_cpu]
        self.server_cpu = self.client_cpu if mode == "one" or not others else others[0]

    def pin_self(self) -> None:
        # Before any thread starts: every thread of this process inherits it.
        os.sched_setaffinity(0, {self.client_cpu})

    def pin_server(self, pid: int) -> None:
        """Every thread of `pid` (memcached and redis start helper threads of their own)."""
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(int(tid), {self.server_cpu})

    def describe(self) -> str:
        if self.server_cpu == self.client_cpu:
            return f"client and servers pinned to CPU {self.client_cpu}"
        return f"client pinned to CPU {self.client_cpu}, servers to CPU {self.server_cpu}"


def lru_suite() -> Suite:
    backends = [
        Backend(
            "rust_lru", "django_rustcache LRUObjectCache", {"BACKEND": "django_rustcache.lru.LRUObjectCache"}, True
        ),
        Backend("locmem", "Django LocMemCache", {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}),
    ]
    try:
        import lrucache_backend  # noqa: F401

        backends.append(Backend("lrucache", "django-lrucache-backend", {"BACKEND": "lrucache_backend.LRUObjectCache"}))
    except ImportError:
        print("django-lrucache-backend is not installed: its column is left out", file=sys.stderr)
    for b in backends:
        b.params = {**b.params, "LOCATION": f"bench-{b.alias}", "OPTIONS": {"MAX_ENTRIES": 100_000}}
    single = {"django-lrucache-backend": 0.4, "Django LocMemCache": 0.12}
    many = {"django-lrucache-backend": 0.3}
    return Suite(
        "lru",
        backends,
        targets={
            "get hit": single,
            "get miss": single,
            "set": single,
            "get_many(100)": many,
            "set_many(100)": many,
            "8 threads 80/20 (ops/s)": {"django-lrucache-backend": 1.5},
        },
    )


class RawSocketFloor:
    """The least any client called from Python can do: pre-encoded commands on one socket, the
    reply read until its terminator. The floor the memcached clients are measured against."""

    def __init__(self, port: int, prefix: str) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.prefix = prefix
        self.local = threading.local()

    def _conn(self):
        conn = getattr(self.local, "sock", None)
        if conn is None:
            import socket

            conn = socket.create_connection(self.sock.getpeername())
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local.sock = conn
        return conn

    def _until(self, conn, terminator: bytes) -> int:
        # Into a buffer made once per thread: a fresh recv(n) would allocate n bytes every call.
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = memoryview(bytearray(1 << 20))
        n = conn.recv_into(buf)
        while buf[n - len(terminator) : n] != terminator:
            n += conn.recv_into(buf[n:])
        return n

    def get(self, key):
        conn = self._conn()
        conn.sendall(b"get %s:1:%s\r\n" % (self.prefix.encode(), key.encode()))
        return self._until(conn, b"END\r\n")

    def set(self, key, value, timeout=None):
        conn = self._conn()
        data = value.encode() if isinstance(value, str) else value
        conn.sendall(b"set %s:1:%s 16 0 %d\r\n%s\r\n" % (self.prefix.encode(), key.encode(), len(data), data))
        return self._until(conn, b"\r\n")

    def get_many(self, keys):
        conn = self._conn()
        conn.sendall(b"get " + b" ".join(b"%s:1:%s" % (self.prefix.encode(), k.encode()) for k in keys) + b"\r\n")
        return self._until(conn, b"END\r\n")

    def set_many(self, data, timeout=None):
        conn = self._conn()
        out = []
        for k, v in data.items():
            v = v.encode() if isinstance(v, str) else v
            out.append(b"set %s:1:%s 16 0 %d noreply\r\n%s\r\n" % (self.prefix.encode(), k.encode(), len(v), v))
        conn.sendall(b"".join(out) + b"mn\r\n")
        return self._until(conn, b"MN\r\n")


def memcached_suite() -> Suite:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.servers import MemcachedServer

    server = MemcachedServer(args=("-m", "512", "-t", "1"))
    loc = server.location
    ours = "django_rustcache MemcachedCache"
    backends = [Backend("rust_mc", ours, {"BACKEND": "django_rustcache.memcached.MemcachedCache"}, True)]
    try:
        import pylibmc  # noqa: F401

        lib = "django.core.cache.backends.memcached.PyLibMCCache"
        backends += [
            Backend("pylibmc", "pylibmc", {"BACKEND": lib}),
            Backend(
                "pylibmc_nodelay",
                "pylibmc tcp_nodelay",
                {"BACKEND": lib, "OPTIONS": {"behaviors": {"tcp_nodelay": True}}},
            ),
            Backend("pylibmc_binary", "pylibmc binary", {"BACKEND": lib, "OPTIONS": {"binary": True}}),
            Backend(
                "pylibmc_binary_nodelay",
                "pylibmc binary tcp_nodelay",
                {"BACKEND": lib, "OPTIONS": {"binary": True, "behaviors": {"tcp_nodelay": True}}},
            ),
        ]
    except ImportError:
        print("pylibmc is not installed: its columns are left out", file=sys.stderr)
    try:
        import pymemcache  # noqa: F401

        backends.append(
            Backend("pymemcache", "pymemcache", {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache"})
        )
    except ImportError:
        print("pymemcache is not installed: its column is left out", file=sys.stderr)
    for b in backends:
        b.params = {**b.params, "LOCATION": loc, "KEY_PREFIX": f"bench-{b.alias}"}
    big = b"x" * 500_000
    single = {"pylibmc": 0.95, "raw socket floor": 1.15}
    return Suite(
        "memcached",
        backends,
        targets={
            "get hit": single,
            "get miss": single,
            "set": single,
            "get_many(100)": {"pylibmc": 0.5},
            "set_many(100)": {"pylibmc": 0.25},
            "8 threads 80/20 (ops/s)": {"pylibmc": 1.3},
        },
        floors={"raw socket floor": lambda: RawSocketFloor(server.port, "bench-raw")},
        extra_ops={"set 500 KB": (lambda cache: lambda: cache.set("big", big), 1, 10)},
        p99_limits={"set 500 KB": 2000.0},
        cleanup=[server.close],
        server_pids=[server.proc.pid],
    )


class RawRedisFloor:
    """The least a redis client called from Python can do: pre-encoded RESP on one socket per
    thread, the reply read until it is complete."""

    def __init__(self, port: int, prefix: str, tls: Any = None) -> None:
        self.port = port
        self.prefix = prefix.encode()
        self.local = threading.local()
        # An ssl.SSLContext: the socket is under TLS (Python's ssl module, OpenSSL).
        self.tls = tls

    def _conn(self):
        conn = getattr(self.local, "sock", None)
        if conn is None:
            import socket

            conn = socket.create_connection(("127.0.0.1", self.port))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_hostname="127.0.0.1")
            self.local.sock = conn
        return conn

    @staticmethod
    def _resp(*parts: bytes) -> bytes:
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    def _key(self, key: str) -> bytes:
        return b"%s:1:%s" % (self.prefix, key.encode())

    def _read_replies(self, conn, count: int) -> int:
        # Enough of a RESP reader for this floor: count top-level replies of known shapes, read
        # into a buffer made once per thread (a fresh recv(1 << 20) allocates 1 MiB every call).
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = memoryview(bytearray(1 << 20))
        n = 0
        while True:
            n += conn.recv_into(buf[n:])
            if self._complete(bytes(buf[:n]), count):
                return n

    @staticmethod
    def _complete(data: bytes, count: int) -> bool:
        pos = 0
        for _ in range(count):
            pos = RawRedisFloor._skip(data, pos)
            if pos < 0:
                return False
        return True

    @staticmethod
    def _skip(data: bytes, pos: int) -> int:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return -1
        kind, rest = data[pos : pos + 1], data[pos + 1 : end]
        if kind == b"$":
            n = int(rest)
            return end + 2 if n < 0 else (end + 2 + n + 2 if len(data) >= end + 2 + n + 2 else -1)
        if kind == b"*":
            pos = end + 2
            for _ in range(max(int(rest), 0)):
                pos = RawRedisFloor._skip(data, pos)
                if pos < 0:
                    return -1
            return pos
        return end + 2

    def get(self, key):
        conn = self._conn()
        conn.sendall(self._resp(b"GET", self._key(key)))
        return self._read_replies(conn, 1)

    def set(self, key, value, timeout=None):
        conn = self._conn()
        conn.sendall(self._resp(b"SET", self._key(key), value.encode(), b"EX", b"300"))
        return self._read_replies(conn, 1)

    def get_many(self, keys):
        conn = self._conn()
        conn.sendall(self._resp(b"MGET", *(self._key(k) for k in keys)))
        return self._read_replies(conn, 1)

    def set_many(self, data, timeout=None):
        conn = self._conn()
        conn.sendall(b"".join(self._resp(b"SET", self._key(k), v.encode(), b"EX", b"300") for k, v in data.items()))
        return self._read_replies(conn, len(data))


def redis_suite() -> Suite:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.servers import RedisServer

    server = RedisServer()
    loc = server.location
    ours = "django_rustcache RedisCache"
    backends = [Backend("rust_redis", ours, {"BACKEND": "django_rustcache.redis.RedisCache"}, True)]
    try:
        import redis  # noqa: F401

        backends.append(
            Backend(
                "django_redis_cache", "Django RedisCache", {"BACKEND": "django.core.cache.backends.redis.RedisCache"}
            )
        )
    except ImportError:
        print("redis-py is not installed: Django's RedisCache is left out", file=sys.stderr)
    try:
        import django_redis  # noqa: F401

        backends.append(Backend("django_redis", "django-redis", {"BACKEND": "django_redis.cache.RedisCache"}))
    except ImportError:
        print("django-redis is not installed: its column is left out", file=sys.stderr)
    for b in backends:
        b.params = {**b.params, "LOCATION": loc, "KEY_PREFIX": f"bench-{b.alias}"}
    single = {"django-redis": 0.35, "Django RedisCache": 0.12, "raw socket floor": 1.15}
    many = {"django-redis": 0.5}
    return Suite(
        "redis",
        backends,
        targets={
            "get hit": single,
            "get miss": single,
            "set": single,
            "get_many(100)": many,
            "set_many(100)": many,
            "8 threads 80/20 (ops/s)": {"django-redis": 3.0},
        },
        floors={"raw socket floor": lambda: RawRedisFloor(server.port, "bench-raw")},
        cleanup=[server.close],
        server_pids=[server.proc.pid],
    )


def redis_zlib_suite() -> Suite:
    """Compressed values: ours (zlib in Rust, without the GIL) against django-redis's
    ZlibCompressor (zlib in Python), both writing the same bytes."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.servers import RedisServer

    server = RedisServer()
    options = {"COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor"}
    backends = [
        Backend(
            "rust_redis_zlib",
            "django_rustcache RedisCache + zlib",
            {"BACKEND": "django_rustcache.redis.RedisCache"},
            True,
        )
    ]
    try:
        import django_redis  # noqa: F401

        backends.append(
            Backend("django_redis_zlib", "django-redis + zlib", {"BACKEND": "django_redis.cache.RedisCache"})
        )
    except ImportError:
        print("django-redis is not installed: its column is left out", file=sys.stderr)
    for b in backends:
        b.params = {**b.params, "LOCATION": server.location, "KEY_PREFIX": f"bench-{b.alias}", "OPTIONS": options}
    page = " ".join(f"<td>{i % 997}</td>" for i in range(10_000))  # ~120 KB of HTML-like text

    def set_page(cache):
        return lambda: cache.set("page", page)

    def get_page(cache):
        cache.set("page", page)
        return lambda: cache.get("page")

    return Suite(
        "redis-zlib",
        backends,
        # A get is mostly inflating 120 KB, which zlib does at the same speed in either process.
        targets={"set 120 KB": {"django-redis + zlib": 0.8}, "8 threads 80/20 (ops/s)": {"django-redis + zlib": 3.0}},
        extra_ops={"set 120 KB": (set_page, 10, 5), "get 120 KB": (get_page, 10, 5)},
        cleanup=[server.close],
        server_pids=[server.proc.pid],
    )


def redis_sharded_suite() -> Suite:
    """Three redis servers as shards: ours (django-redis-cache's ring, and django-redis's
    ShardClient ring) against django-redis's ShardClient and django-redis-cache's
    ShardedRedisCache, each placing keys by its own ring."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.servers import RedisServer

    servers = [RedisServer() for _ in range(3)]
    urls = [s.location for s in servers]
    hostports = [f"127.0.0.1:{s.port}" for s in servers]
    shard_client = {"CLIENT_CLASS": "django_redis.client.ShardClient"}
    backends = [
        Backend(
            "rust_sharded",
            "django_rustcache ShardedRedisCache",
            {"BACKEND": "django_rustcache.redis_cache.ShardedRedisCache", "LOCATION": hostports},
            True,
        ),
        Backend(
            "rust_shardclient",
            "django_rustcache RedisCache + ShardClient",
            {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": urls, "OPTIONS": shard_client},
        ),
    ]
    try:
        import django_redis  # noqa: F401

        backends.append(
            Backend(
                "django_redis_shards",
                "django-redis ShardClient",
                {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": urls, "OPTIONS": shard_client},
            )
        )
    except ImportError:
        print("django-redis is not installed: its column is left out", file=sys.stderr)
    try:
        import redis_cache  # noqa: F401

        backends.append(
            Backend(
                "redis_cache_shards",
                "django-redis-cache ShardedRedisCache",
                {"BACKEND": "redis_cache.ShardedRedisCache", "LOCATION": hostports},
            )
        )
    except ImportError:
        print("django-redis-cache is not installed: its column is left out", file=sys.stderr)
    for b in backends:
        b.params = {**b.params, "KEY_PREFIX": f"bench-{b.alias}"}
    many = {"django-redis ShardClient": 0.3, "django-redis-cache ShardedRedisCache": 0.3}

    def close() -> None:
        for server in servers:
            server.close()

    return Suite(
        "redis-sharded",
        backends,
        targets={"get_many(100)": many, "set_many(100)": many},
        cleanup=[close],
        server_pids=[s.proc.pid for s in servers],
    )


def redis_tls_suite() -> Suite:
    """TLS: ours over rustls against ours over plain TCP (the cost of TLS), and django-redis over
    Python's ssl module (TLS in both), each on its own redis-server: one that speaks only TLS
    (with a CA and certificates the fixture makes), one plain."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.servers import Certificates, RedisServer, TlsRedisServer

    certs = Certificates()
    tls, plain = TlsRedisServer(certs), RedisServer()
    verified = {"ssl_ca_certs": certs.ca}
    backends = [
        Backend(
            "rust_tls",
            "django_rustcache RedisCache, TLS",
            {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": tls.location, "OPTIONS": verified},
            True,
        ),
        Backend(
            "rust_plain",
            "django_rustcache RedisCache, plain TCP",
            {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": plain.location},
        ),
    ]
    try:
        import django_redis  # noqa: F401

        backends.append(
            Backend(
                "django_redis_tls",
                "django-redis, TLS",
                {
                    "BACKEND": "django_redis.cache.RedisCache",
                    "LOCATION": tls.location,
                    "OPTIONS": {"CONNECTION_POOL_KWARGS": verified},
                },
            )
        )
    except ImportError:
        print("django-redis is not installed: its column is left out", file=sys.stderr)
    for b in backends:
        b.params = {**b.params, "KEY_PREFIX": f"bench-{b.alias}"}
    within = {"django_rustcache RedisCache, plain TCP": 1.3}
    import ssl

    # What TLS costs at the least: the raw-socket floor over TLS against the same floor plain.
    context = ssl.create_default_context(cafile=certs.ca)
    floors = {
        "raw socket floor, plain": lambda: RawRedisFloor(plain.port, "bench-raw"),
        "raw socket floor, TLS": lambda: RawRedisFloor(tls.port, "bench-raw", context),
    }

    def close() -> None:
        tls.close()
        plain.close()
        certs.close()

    return Suite(
        "redis-tls",
        backends,
        targets={"get hit": within, "get miss": within, "set": within},
        floors=floors,
        cleanup=[close],
        server_pids=[tls.proc.pid, plain.proc.pid],
    )


def redis_cluster_suite() -> Suite:
    """A Redis Cluster of 3 primaries with a replica each: ours (RedisClusterCache) against
    Django's RedisCache over redis-py's RedisCluster (bench/cluster_peer.py)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.servers import RedisCluster, RedisServer, raw_command, wait_until

    cluster = RedisCluster()
    # Our own client on one server with a replica (a cluster shard's server-side work: each
    # write is also sent to its replica): a cluster call may cost at most 1.15x of it.
    single = RedisServer()
    replica = RedisServer(args=("--replicaof", "127.0.0.1", str(single.port)))
    wait_until(lambda: b"master_link_status:up" in raw_command(replica.port, "INFO", "replication"), 10)
    seeds = [f"redis://127.0.0.1:{n.port}" for n in cluster.nodes[:3]]
    one_server = "django_rustcache RedisCache, one server + replica"
    backends = [
        Backend(
            "rust_cluster",
            "django_rustcache RedisClusterCache",
            {"BACKEND": "django_rustcache.redis.RedisClusterCache", "LOCATION": seeds},
            True,
        ),
        Backend(
            "redis_py_cluster",
            "Django RedisCache on redis-py RedisCluster",
            {"BACKEND": "cluster_peer.RedisPyClusterCache", "LOCATION": seeds},
        ),
        Backend(
            "rust_single", one_server, {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": single.location}
        ),
    ]
    for b in backends:
        b.params = {**b.params, "KEY_PREFIX": f"bench-{b.alias}"}
    peer = {"Django RedisCache on redis-py RedisCluster": 0.5}
    return Suite(
        "redis-cluster",
        backends,
        targets={
            "get hit": {one_server: 1.15},
            "get miss": {one_server: 1.15},
            "set": {one_server: 1.15},
            "get_many(100)": peer,
            "set_many(100)": peer,
            "8 threads 80/20 (ops/s)": {"Django RedisCache on redis-py RedisCluster": 3.0},
        },
        cleanup=[cluster.close, replica.close, single.close],
        server_pids=[n.proc.pid for n in cluster.nodes] + [single.proc.pid, replica.proc.pid],
    )


def _read_a_few(cache) -> None:
    for _ in range(3):
        cache.get("settle")


def redis_near_suite() -> Suite:
    """The near cache (OPTIONS["NEAR_CACHE"]): a hot key's get answered in the process, against
    our own get without it and django-redis's; a set pays the local invalidation only."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.servers import RedisServer

    server = RedisServer()
    plain = "django_rustcache RedisCache, no near cache"
    near = {"NEAR_CACHE": {"MAX_ENTRIES": 10_000, "MAX_BYTES": 64 * 2**20}}
    backends = [
        Backend("rust_near", "django_rustcache RedisCache, NEAR_CACHE", {"OPTIONS": near}, True),
        Backend("rust_plain", plain, {}),
    ]
    try:
        import django_redis  # noqa: F401

        backends.append(Backend("django_redis", "django-redis", {"BACKEND": "django_redis.cache.RedisCache"}))
    except ImportError:
        print("django-redis is not installed: its column is left out", file=sys.stderr)
    for b in backends:
        b.params = {
            "BACKEND": "django_rustcache.redis.RedisCache",
            **b.params,
            "LOCATION": server.location,
            "KEY_PREFIX": f"bench-{b.alias}",
        }
    return Suite(
        "redis-near",
        backends,
        targets={
            # At least 10x faster than a round trip of ours; a write costs at most 1.1x.
            "get hit": {plain: 0.1},
            "get miss": {plain: 0.1},
            "set": {plain: 1.1},
        },
        cleanup=[server.close],
        server_pids=[server.proc.pid],
        # A few reads: the near cache reads the invalidations of the batch's own writes (and
        # answers the PING it sends when it found many waiting); a round trip for the others.
        settle=_read_a_few,
    )


def metrics_suite() -> Suite:
    """The cost of the metrics: each of our backends with them recording against the same build
    with ``OPTIONS["METRICS"] = False``, interleaved in one run (target <= 1.03x on get/set)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.servers import MemcachedServer, RedisServer

    redis_server = RedisServer()
    memcached_server = MemcachedServer(args=("-m", "256", "-t", "1"))
    kinds = {
        "LRU": ("django_rustcache.lru.LRUObjectCache", "bench-metrics-lru"),
        "memcached": ("django_rustcache.memcached.MemcachedCache", memcached_server.location),
        "redis": ("django_rustcache.redis.RedisCache", redis_server.location),
    }
    backends = []
    targets: dict[str, dict[str, float]] = {}
    for kind, (path, location) in kinds.items():
        off = f"{kind}, metrics off"
        for on in (True, False):
            label = f"{kind}, metrics on" if on else off
            backends.append(
                Backend(
                    f"metrics_{kind.lower()}_{'on' if on else 'off'}",
                    label,
                    {
                        "BACKEND": path,
                        "LOCATION": location,
                        "KEY_PREFIX": f"bench-m-{kind}-{on}",
                        "OPTIONS": {"METRICS": on, **({"MAX_ENTRIES": 100_000} if kind == "LRU" else {})},
                    },
                    on,
                )
            )
        for op in ("get hit", "get miss", "set"):
            targets.setdefault(op, {})[off] = 1.03
    return Suite(
        "metrics",
        backends,
        targets=targets,
        cleanup=[redis_server.close, memcached_server.close],
        server_pids=[redis_server.proc.pid, memcached_server.proc.pid],
        pairs=[(f"{kind}, metrics on", f"{kind}, metrics off") for kind in kinds],
    )


SUITES: dict[str, Callable[[], Suite]] = {
    "lru": lru_suite,
    "memcached": memcached_suite,
    "redis": redis_suite,
    "redis-zlib": redis_zlib_suite,
    "redis-sharded": redis_sharded_suite,
    "redis-tls": redis_tls_suite,
    "redis-cluster": redis_cluster_suite,
    "redis-near": redis_near_suite,
    "metrics": metrics_suite,
}


def ops(cache) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (one call, how many calls make a batch)."""
    keys100 = [f"many{i}" for i in range(100)]
    data100 = {k: SMALL for k in keys100}
    cache.set("hit", SMALL, None)
    cache.set_many(data100, None)
    return {
        "get hit": (lambda: cache.get("hit"), 2000),
        "get miss": (lambda: cache.get("miss"), 2000),
        "set": (lambda: cache.set("hit", SMALL), 2000),
        "get_many(100)": (lambda: cache.get_many(keys100), 50),
        "set_many(100)": (lambda: cache.set_many(data100), 50),
    }


def sample(call: Callable[[], object], n: int) -> tuple[float, float]:
    """Mean microseconds per call over a batch of n calls: wall time, and this process's CPU
    time (the client's cost; the server is another process)."""
    cpu = time.process_time_ns()
    start = time.perf_counter_ns()
    for _ in range(n):
        call()
    wall = time.perf_counter_ns() - start
    return wall / n / 1000, (time.process_time_ns() - cpu) / n / 1000


def threaded_throughput(get_cache: Callable[[], object], seconds: float, threads: int = 8) -> float:
    """Operations per second of `threads` threads doing 80 % get / 20 % set on 1,000 keys."""
    stop = threading.Event()
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        cache = get_cache()  # caches[alias] in this thread: Django's per-thread instance
        rng = random.Random(i)
        keys = [f"t{k}" for k in range(1000)]
        plan = [(rng.choice(keys), rng.random() < 0.2) for _ in range(4096)]
        barrier.wait()
        n = 0
        while not stop.is_set():
            for key, write in plan[:256]:
                if write:
                    cache.set(key, SMALL)
                else:
                    cache.get(key)
            n += 256
            plan = plan[256:] + plan[:256]
        counts[i] = n

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run_suite(suite: Suite, rounds: int, thread_rounds: int, thread_seconds: float) -> tuple[dict, dict]:
    from django.core.cache import caches

    floors = {label: make() for label, make in suite.floors.items()}
    targets: list[tuple[str, Callable[[], object]]] = [(b.label, lambda a=b.alias: caches[a]) for b in suite.backends]
    targets += [(label, lambda f=f: f) for label, f in floors.items()]
    samples: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}

    def record(op: str, label: str, measured: tuple[float, float]) -> None:
        samples.setdefault(op, {}).setdefault(label, []).append(measured[0])
        cpu.setdefault(op, {}).setdefault(label, []).append(measured[1])

    for _ in range(rounds):
        random.shuffle(targets)
        for label, get_cache in targets:
            cache = get_cache()
            for op, (call, n) in ops(cache).items():
                record(op, label, sample(call, n))
                if suite.settle is not None:
                    suite.settle(cache)
            for op, (make_call, n, repeat) in suite.extra_ops.items():
                call = make_call(cache)
                for _ in range(repeat):
                    record(op, label, sample(call, n))
                    if suite.settle is not None:
                        suite.settle(cache)
    op = "8 threads 80/20 (ops/s)"
    for _ in range(thread_rounds):
        random.shuffle(targets)
        for label, get_cache in targets:
            throughput = threaded_throughput(get_cache, thread_seconds)
            samples.setdefault(op, {}).setdefault(label, []).append(throughput)
    return samples, cpu


def report(suite: Suite, samples: dict, cpu: dict, one_cpu: bool) -> tuple[list[str], list[str]]:
    ours = next(b.label for b in suite.backends if b.ours)
    peers = [b.label for b in suite.backends if not b.ours] + list(suite.floors)
    pairs = suite.pairs or [(ours, p) for p in peers]
    labels = [b.label for b in suite.backends] + list(suite.floors)
    heads = [f"ratio vs {p}" for p in peers] if not suite.pairs else [f"{a} / {b}" for a, b in pairs]
    lines = [
        f"## suite: {suite.name} (Python {sys.version.split()[0]}, Django {django.get_version()})",
        "",
        "| op | " + " | ".join(labels) + " | " + " | ".join(heads) + " |",
        "|---" * (1 + len(labels) + len(pairs)) + "|",
    ]
    misses = []
    for op, by_backend in samples.items():
        throughput = "ops/s" in op
        cells = []
        floor = next((statistics.median(by_backend[f]) for f in suite.floors if f in by_backend), None)
        for label in labels:
            vals = by_backend[label]
            if throughput:
                cells.append(f"{statistics.median(vals):,.0f}")
                continue
            median = statistics.median(vals)
            extra = [f"p99 {percentile(vals, 99):.1f}"]
            if floor is not None and label not in suite.floors:
                extra.append(f"floor {median - floor:+.1f}")
            extra.append(f"cpu {statistics.median(cpu[op][label]):.1f}")
            # An in-process call takes tenths of a microsecond: shown to the hundredth.
            cells.append(
                f"{median:.2f} us ({', '.join(extra)})" if median < 10 else f"{median:.1f} us ({', '.join(extra)})"
            )
        ratios = []
        for mine_label, p in pairs:
            mine = statistics.median(by_backend[mine_label])
            theirs = statistics.median(by_backend[p])
            # Time: ours / peer (lower is better). Throughput: ours / peer (higher is better).
            ratio = mine / theirs
            target = suite.targets.get(op, {}).get(p)
            if throughput and one_cpu:
                # On one CPU there is no parallelism to win: throughput targets need two.
                target = None
            mark = ""
            if target is not None:
                ok = ratio >= target if throughput else ratio <= target
                mark = f" {'ok' if ok else 'MISSED'} ({'>=' if throughput else '<='}{target}x)"
                if not ok:
                    misses.append(f"{op} vs {p}: {ratio:.2f}x, target {target}x")
            ratios.append(f"{ratio:.2f}x{mark}")
        lines.append(f"| {op} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        limit = suite.p99_limits.get(op)
        if limit is not None:
            p99 = percentile(by_backend[ours], 99)
            if p99 > limit:
                misses.append(f"{op}: p99 {p99:.0f} us, limit {limit:.0f} us")
            lines.append(
                f"|  | p99 of ours {p99:.0f} us: {'ok' if p99 <= limit else 'MISSED'} (limit {limit:.0f} us) |"
            )
    return lines, misses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), action="append")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--thread-rounds", type=int, default=5)
    parser.add_argument("--thread-seconds", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument("--json", help="also write the samples here (bench/record.py's format, for bench/charts.py)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--placement",
        choices=["one", "split"],
        default="one",
        help="one: the benchmark and its servers share one CPU (default); split: servers on another",
    )
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the benchmark runs on")
    args = parser.parse_args()
    placement = Placement(args.placement, args.cpu)
    placement.pin_self()
    if args.quick:
        args.rounds, args.thread_rounds, args.thread_seconds = 5, 1, 0.3

    suites = [SUITES[name]() for name in (args.suite or sorted(SUITES))]
    for suite in suites:
        for pid in suite.server_pids:
            placement.pin_server(pid)
    settings.configure(CACHES={b.alias: b.params for s in suites for b in s.backends} | {"default": {}})
    django.setup()

    all_misses, raw = [], {}
    order: dict[str, dict[str, Any]] = {}
    for suite in suites:
        try:
            samples, cpu = run_suite(suite, args.rounds, args.thread_rounds, args.thread_seconds)
        finally:
            for cleanup in suite.cleanup:
                cleanup()
        raw[suite.name] = samples
        order[suite.name] = {
            "backends": [b.label for b in suite.backends] + list(suite.floors),
            "ours": next(b.label for b in suite.backends if b.ours),
        }
        lines, misses = report(suite, samples, cpu, placement.server_cpu == placement.client_cpu)
        all_misses += misses
        print("\n".join(lines), flush=True)
        print()
    print(f"{args.rounds} interleaved rounds; throughput: {args.thread_rounds} rounds of {args.thread_seconds}s.")
    print(f"Placement: {placement.describe()}. Cells: median us (p99, median - floor, client CPU us per call).")
    if placement.server_cpu == placement.client_cpu:
        print("Throughput targets are checked with --placement split only (one CPU has no parallelism to win).")
    print("Targets missed: " + ("; ".join(all_misses) if all_misses else "none"))
    if args.json:
        from record import write

        data = {name: {**order[name], "samples": samples} for name, samples in raw.items()}
        write(args.json, "run", placement.describe(), data, rounds=args.rounds, thread_seconds=args.thread_seconds)
    return 1 if (args.check and all_misses) else 0


if __name__ == "__main__":
    sys.exit(main())
