"""The native core of django-rustcache (built from ``src/`` by maturin).

Backends call these with Django's key parts so that the key is made and checked in the same
call that reads or writes. ``prefix=None`` means ``key`` is already a made key (a custom
``KEY_FUNCTION`` made it) and only needs checking. An invalid key is refused before any byte
reaches a server: the LRU store and redis warn with Django's ``CacheKeyWarning`` (as Django's
``validate_key`` does); memcached, which cannot store such a key, raises ``InvalidCacheKey``.

The network clients give every call one deadline (connect, handshake, send and the whole reply
together); while a call waits, Python's signal handlers run every 50 ms or so, and an exception
one raises (``KeyboardInterrupt`` for Ctrl-C) ends the call and is raised as it is.
"""

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self, final

from typing_extensions import disjoint_base

__all__ = [
    "CacheError",
    "ClusterBusy",
    "ClusterRedirect",
    "HashRing",
    "LruStore",
    "MemcachedClient",
    "ProtocolError",
    "RedisClient",
    "ServerDown",
    "ServerError",
    "TLSError",
    "__version__",
    "check_key",
    "cluster_key_slot",
    "glob_match",
    "metrics_labels",
    "metrics_snapshots",
    "reset_all_metrics",
    "set_exception_classes",
]
__version__: str

class CacheError(Exception):
    """Base class of every error django-rustcache raises on its own account."""

class ServerDown(CacheError):
    """A cache server cannot be reached, did not answer in time, or is marked down after a failure."""

class TLSError(ServerDown):
    """A TLS handshake with a cache server failed: its certificate is not trusted or does not
    name it, or it refused ours."""

class ServerError(CacheError):
    """A cache server answered with an error."""

class ClusterRedirect(ServerError):
    """A Redis Cluster node does not serve the key's slot: ``ask`` (False: MOVED, the slot has a
    new owner; True: ASK, it is being migrated, ask the node once with ASKING), ``slot`` and
    ``address`` (``host:port``) say where to go."""

    ask: bool
    slot: int
    address: str

class ClusterBusy(ServerDown):
    """A Redis Cluster cannot serve the call now (TRYAGAIN during a slot migration, CLUSTERDOWN,
    MASTERDOWN): nothing was applied, and the same call may work a moment later."""

class ProtocolError(CacheError):
    """A cache server answered something its protocol does not allow."""

def check_key(key: str, raise_error: bool = False) -> None:
    """Warn (``CacheKeyWarning``) about a made key memcached would refuse, as Django's
    ``BaseCache.validate_key`` does."""

def set_exception_classes(
    server_down: type[ServerDown],
    timeout: type[ServerDown],
    server_error: type[ServerError],
    protocol_error: type[ProtocolError],
    tls_error: type[TLSError],
    cluster_busy: type[ClusterBusy],
) -> None:
    """Raise these subclasses of ours from now on (a server down, a timeout, an error reply, a
    protocol error, a TLS failure, a busy cluster); the first call per process counts."""

@final
class LruStore:
    """An in-process LRU store of live objects (or of pickled copies, when made with a pickle
    protocol), with per-entry expiry and Django's cull rule.

    Thread-safe. No Python code runs while its lock is held: pickling, ``__add__`` and the
    destructors of values it lets go of all run after the lock is released.

    Timeouts are Django's, already resolved from ``DEFAULT_TIMEOUT``: ``None`` never expires,
    ``0`` or less is "do not store" (and removes what was there), otherwise seconds from now.
    ``max_entries``/``cull_frequency`` come with each write, so a backend's limits can change
    at run time: when a new key finds the store full, expired entries go first, then
    ``len // cull_frequency`` of the least recently used (``0`` empties the store), and always
    enough to make room.
    """

    def __new__(cls, pickle_protocol: int | None = None) -> LruStore: ...
    def with_metrics(self, alias: str, backend: str, named: bool, enabled: bool) -> Self:
        """The same store, its calls recorded in ``alias``'s metrics: with ``named`` (an alias
        of ``settings.CACHES``) those every view of that alias shares, else this view's own."""
    def metrics(self) -> dict[str, Any]:
        """This view's alias's metrics: alias, backend, enabled, since, calls (method ->
        outcome -> n), keys_found, keys_missed, bytes_sent, bytes_received, latency (method ->
        count, sum_seconds, p50_seconds, p99_seconds, buckets)."""
    def reset_metrics(self) -> None:
        """Zero this view's alias's metrics."""
    @property
    def pickle_protocol(self) -> int | None:
        """The pickle protocol values are stored with; None when live objects are stored."""

    def __len__(self) -> int:
        """Entries held, expired ones not yet removed included."""

    def locked(self) -> bool:
        """Whether some thread holds the store's lock right now."""

    def get(self, prefix: str | None, version: Any, key: Any, default: Any = None) -> Any:
        """The live value under the key, marked most recently used; ``default`` otherwise."""

    def set(
        self,
        prefix: str | None,
        version: Any,
        key: Any,
        value: Any,
        timeout: float | None,
        max_entries: int,
        cull_frequency: int,
    ) -> None:
        """Store ``value`` (most recently used), culling first if a new key finds the store full."""

    def add(
        self,
        prefix: str | None,
        version: Any,
        key: Any,
        value: Any,
        timeout: float | None,
        max_entries: int,
        cull_frequency: int,
    ) -> bool:
        """Store ``value`` only if no live entry is under the key; whether it was stored."""

    def touch(self, prefix: str | None, version: Any, key: Any, timeout: float | None) -> bool:
        """Give the live entry a new timeout (without promoting it); whether there was one."""

    def delete(self, prefix: str | None, version: Any, key: Any) -> bool:
        """Remove the entry; whether a live one was there."""

    def has_key(self, prefix: str | None, version: Any, key: Any) -> bool:
        """Whether a live entry is under the key. Does not change its recency."""

    def incr(self, prefix: str | None, version: Any, key: Any, delta: Any) -> Any:
        """Add ``delta`` to the value atomically, keeping its expiry, and return the sum.
        ValueError when there is no live entry; whatever ``value + delta`` raises otherwise."""

    def get_many(self, prefix: str | None, version: Any, keys: Iterable[Any]) -> dict[Any, Any]:
        """The found keys (as given) and their values, looked up under one lock."""

    def set_many(
        self,
        prefix: str | None,
        version: Any,
        data: Mapping[Any, Any],
        timeout: float | None,
        max_entries: int,
        cull_frequency: int,
    ) -> list[Any]:
        """Store every item under one lock; every key is made and every value encoded first, so
        an error stores nothing. Returns the keys that failed: always none."""

    def delete_many(self, prefix: str | None, version: Any, keys: Iterable[Any]) -> None:
        """Remove every key, under one lock."""

    def rename(self, old: str, new: str, max_entries: int, cull_frequency: int) -> bool:
        """Move the live entry under made key ``old`` to made key ``new``, keeping its expiry;
        whether there was one."""

    def clear(self) -> None:
        """Remove every entry."""

    def expiry(self, key: str) -> float | None:
        """The expiry (seconds since the epoch; None: never) of the live entry under a made key.
        KeyError when there is none."""

    def entries(
        self, pattern: str = "*", skip: int = 0, limit: int = 100
    ) -> tuple[list[tuple[str, float | None, Any]], int]:
        """The live entries whose made key matches a glob ``pattern`` (redis's MATCH rules), most
        recently used first and not promoted: ``skip`` passed over, then at most ``limit`` as
        (made key, expiry or None, stored value); and how many matched in all. The values are as
        stored (pickled bytes when the store keeps pickles): nothing is unpickled."""

    def purge_expired(self) -> int:
        """Remove every expired entry now; returns how many entries are left."""

    def stats(self) -> dict[str, int]:
        """Counters since creation (or ``reset_stats``): hits, misses, sets, evictions,
        expirations; and size, the entries held."""

    def reset_stats(self) -> None:
        """Zero the counters."""

@disjoint_base
class MemcachedClient:
    """A memcached client (text protocol), shared by every backend instance of one configuration.

    ``servers`` are ``(host, port, weight)`` tuples; port 0 means ``host`` is a unix socket path.
    Keys go to servers as libmemcached (and so pylibmc) sends them: ``distribution`` is
    ``"modula"``, ``"ketama"`` or ``"ketama_weighted"``, ``hash`` is ``"default"``
    (one-at-a-time) or ``"md5"``. Values are stored with pylibmc's flags (bytes 0, pickle 1,
    int 4, str 16, zlib 8), compressed when at least ``min_compress_len`` bytes (0: never).

    Every round trip runs with the GIL released, within its deadlines (seconds). A server that
    stays silent past a deadline is not contacted again for ``retry_timeout`` seconds (calls to
    it raise ``ServerDown`` at once); with ``window_on_any_failure`` a refused, reset or closed
    connection starts that window too (pylibmc's rule). A pooled connection the server closed
    while it sat idle is replaced before use. With ``remove_failed=N`` it leaves the ring after N failures in a row, for
    ``dead_timeout`` seconds. A connection that failed or timed out is dropped, never reused.
    """

    def __new__(
        cls,
        servers: list[tuple[str, int, int]] | None = None,
        *,
        distribution: str = "modula",
        hash: str = "default",
        connect_timeout: float = 1.0,
        send_timeout: float = 3.0,
        receive_timeout: float = 3.0,
        retry_timeout: float = 2.0,
        window_on_any_failure: bool = False,
        remove_failed: int = 0,
        dead_timeout: float = 10.0,
        max_idle: int = 32,
        min_compress_len: int = 0,
        compress_level: int = 6,
        pickle_protocol: int | None = None,
        behaviors: dict[str, Any] | None = None,
        binary: bool = False,
        username: str | None = None,
        password: str | None = None,
        view_of: MemcachedClient | None = None,
        metrics_for: tuple[str, str, bool, bool] | None = None,
        sign_secrets: list[bytes] | None = None,
        sign_writes: bool = False,
        sign_accept_unsigned: bool = False,
        key_hashing: bool = False,
    ) -> MemcachedClient: ...
    def with_metrics(self, alias: str, backend: str, named: bool, enabled: bool) -> Self:
        """The same client (the same Python class), its calls recorded in ``alias``'s metrics: with ``named`` (an alias
        of ``settings.CACHES``) those every view of that alias shares, else this view's own."""
    def metrics(self) -> dict[str, Any]:
        """This view's alias's metrics: alias, backend, enabled, since, calls (method ->
        outcome -> n), keys_found, keys_missed, bytes_sent, bytes_received, latency (method ->
        count, sum_seconds, p50_seconds, p99_seconds, buckets)."""
    def reset_metrics(self) -> None:
        """Zero this view's alias's metrics."""
    @property
    def behaviors(self) -> dict[str, Any]:
        """The behaviors this client was configured with (pylibmc's ``Client.behaviors``)."""

    @property
    def binary(self) -> bool:
        """Whether the binary protocol is spoken: asked for, or needed for SASL (``username``
        and ``password`` set, authenticated with SASL PLAIN on every new connection)."""

    def get(self, prefix: str | None, version: Any, key: Any, default: Any = None) -> Any:
        """The value under the key, or ``default``."""

    def has_key(self, prefix: str | None, version: Any, key: Any) -> bool:
        """Whether a value is stored under the key (read, not decoded)."""
    def ahas_key(self, prefix: str | None, version: Any, key: Any) -> asyncio.Future[bool]: ...
    def get_multi(
        self,
        prefix: str | None,
        version: Any,
        keys: Iterable[Any],
        partial: bool = False,
        on_failure: Callable[[CacheError], object] | None = None,
    ) -> dict[Any, Any]:
        """The found keys (as given) and their values: one ``get`` per server, all servers at
        once. A failing server raises ``ServerDown``, or with ``partial`` reads as misses and its
        error goes to ``on_failure``."""

    def set(self, prefix: str | None, version: Any, key: Any, value: Any, exptime: int) -> bool:
        """Store; on a refusal (too large) the old value is deleted, as Django does."""

    def add(self, prefix: str | None, version: Any, key: Any, value: Any, exptime: int) -> bool:
        """Store only if nothing is stored under the key."""

    def replace(self, prefix: str | None, version: Any, key: Any, value: Any, exptime: int) -> bool:
        """Store only if something is stored under the key."""

    def set_multi(
        self,
        mapping: Mapping[Any, Any],
        exptime: int = 0,
        prefix: str | None = None,
        version: Any = None,
        partial: bool = False,
        on_failure: Callable[[CacheError], object] | None = None,
    ) -> list[Any]:
        """Store every item, pipelined per server; the keys (as given) that were not stored. A
        failing server raises ``ServerDown`` unless ``partial``: then its keys are returned too,
        and its error goes to ``on_failure``."""

    def delete(self, prefix: str | None, version: Any, key: Any) -> bool:
        """Delete; whether the key was there."""

    def delete_multi(self, prefix: str | None, version: Any, keys: Iterable[Any]) -> None:
        """Delete every key, pipelined per server."""

    def incr(self, prefix: str | None, version: Any, key: Any, delta: int) -> int:
        """Add ``delta`` (negative: subtract) atomically on the server. ValueError when the key
        is missing; TypeError when its value is not a number."""

    def touch(self, prefix: str | None, version: Any, key: Any, exptime: int) -> bool:
        """Give the key a new expiry; whether it was there."""

    def flush_all(self) -> None:
        """``flush_all`` on every server."""

    def disconnect_all(self) -> None:
        """Drop every pooled connection (they are made again on demand)."""

    def versions(self) -> dict[str, str | None]:
        """Each server's version (None when it failed)."""

    def server_stats(self) -> dict[str, dict[str, str] | None]:
        """Each server's ``stats`` (None when it failed)."""

    def get_stats(self) -> list[tuple[bytes, dict[str, bytes]]]:
        """pylibmc's ``get_stats()``: ``[(b"host:port (i)", {stat: b"value"}), ...]`` in server
        order (a unix socket is ``path:0``); a server that fails raises ``ServerDown``."""

    def servers(self) -> list[dict[str, Any]]:
        """Each server's health: address, up, removed, errors, last_error, idle_connections,
        async_connections."""

    def refused_values(self) -> int:
        """Values refused since the client was made: signed values whose tag did not verify,
        and (with signing on, outside migrate mode) values without one."""
    def client_stats(self) -> dict[str, int]:
        """Client-side counters since the client was made: hits, misses, sets, failures."""

    def loop_stats(self) -> dict[str, int]:
        """The calls read on an event loop's own thread (one ``aget`` at a time) since the
        client was made (``calls``), and the loops' connections open now (``connections``)."""

    def server_index(self, key: str) -> int:
        """The index of the configured server a made key goes to."""

    # Async twins: each returns an asyncio future of the running loop (RuntimeError outside
    # one); requests are pipelined on a few multiplexed connections per server, within the
    # same deadline as the sync calls. Values are decoded on the loop's thread.
    def aget(self, prefix: str | None, version: Any, key: Any, default: Any = None) -> asyncio.Future[Any]: ...
    def aget_multi(
        self,
        prefix: str | None,
        version: Any,
        keys: Iterable[Any],
        partial: bool = False,
        on_failure: Callable[[CacheError], object] | None = None,
    ) -> asyncio.Future[dict[Any, Any]]: ...
    def aset(self, prefix: str | None, version: Any, key: Any, value: Any, exptime: int) -> asyncio.Future[bool]: ...
    def aadd(self, prefix: str | None, version: Any, key: Any, value: Any, exptime: int) -> asyncio.Future[bool]: ...
    def areplace(
        self, prefix: str | None, version: Any, key: Any, value: Any, exptime: int
    ) -> asyncio.Future[bool]: ...
    def aset_multi(
        self,
        mapping: Mapping[Any, Any],
        exptime: int = 0,
        prefix: Any = None,
        version: Any = None,
        partial: bool = False,
        on_failure: Callable[[CacheError], object] | None = None,
    ) -> asyncio.Future[list[Any]]: ...
    def adelete(self, prefix: str | None, version: Any, key: Any) -> asyncio.Future[bool]: ...
    def adelete_multi(self, prefix: str | None, version: Any, keys: Iterable[Any]) -> asyncio.Future[None]: ...
    def aincr(self, prefix: str | None, version: Any, key: Any, delta: int) -> asyncio.Future[int]: ...
    def atouch(self, prefix: str | None, version: Any, key: Any, exptime: int) -> asyncio.Future[bool]: ...
    def aflush_all(self) -> asyncio.Future[None]: ...

@disjoint_base
class RedisClient:
    """A redis client over one topology. ``topology="single"`` (the default): a leader and its
    read replicas (the first of ``servers`` takes every write; reads go to a random one of the
    others), or a Sentinel service (below). ``topology="sharded"``: one server per shard, each
    key placed by a predecessor's ring (``ring``: "django-redis" or "django-redis-cache";
    ``ring_names``: the servers as that ring names them). ``topology="cluster"``: ``servers`` are
    a Redis Cluster's seed nodes; the slot map is read on first use, MOVED, ASK, TRYAGAIN,
    CLUSTERDOWN and unreachable nodes are followed (a few times, within ``socket_timeout``), and
    with ``replica_reads`` reads go to a shard's replicas (after READONLY). Every call crosses
    into the core once: its keys are made, placed and, when they span nodes, sent to every node
    at once (one pipeline of one-key commands per cluster node). One bounded pool per server; every round trip
    runs with the GIL released, within ``socket_timeout`` (a new connection's connect and AUTH/SELECT
    within ``connect_timeout`` of it); a server that stays silent past a deadline is skipped for
    ``retry_timeout`` seconds (calls raise ``ServerDown`` at once), while a refused, reset or
    closed connection is tried again by the next call. A reply may be at most 512 MiB.
    Values are stored as Django's RedisCache and django-redis store them: an exact ``int`` as digits (unless
    ``ints_as_digits`` is false), anything else pickled, or passed to ``serializer``'s
    ``(dumps, loads)``; then compressed with ``compressor`` (zlib, gzip, lzma, lz4, zstd, bz2) when
    longer than ``compress_min_len`` bytes, without the GIL. Compressed values are recognised by
    their header when read. ``tls`` gives, per server, None or its TLS settings ``(verify,
    ca_certs, ca_path, ca_data, certfile, keyfile, tls13_only)`` (``verify``: "none", "chain" or
    "full"); the handshake runs within the connect deadline, and a failed one raises
    ``TLSError``. With ``sentinels`` ((host, port) pairs), the one URL in ``servers`` gives the
    data nodes' credentials and db; writes go to ``service``'s master as the sentinels name it
    (every new connection must answer ROLE with master; a failover announced on a sentinel, a
    failed connection or a READONLY reply sends the pool back to the sentinels, and connections
    to the old master are not used again), and with ``replica_reads`` reads go to its replicas
    in turn (to the master when none is up). The ``sentinel_*`` settings are the sentinels' own."""

    def __new__(
        cls,
        servers: list[str] | None = None,
        *,
        view_of: RedisClient | None = None,
        metrics_for: tuple[str, str, bool, bool] | None = None,
        db: int | None = None,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 1.0,
        socket_timeout: float = 3.0,
        max_connections: int = 64,
        retry_timeout: float = 1.0,
        client_name: str | None = None,
        pickle_protocol: int | None = None,
        serializer: tuple[Any, Any] | None = None,
        ints_as_digits: bool = True,
        compressor: str | None = None,
        compress_level: int | None = None,
        compress_min_len: int = 15,
        tls: list[tuple[str, str | None, str | None, str | None, str | None, str | None, bool] | None] = ...,
        sentinels: list[tuple[str, int]] = ...,
        service: str | None = None,
        replica_reads: bool = False,
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
        sentinel_tls: tuple[str, str | None, str | None, str | None, str | None, str | None, bool] | None = None,
        sentinel_connect_timeout: float | None = None,
        topology: str = "single",
        ring: str | None = None,
        ring_names: list[str] = ...,
        near_max_entries: int | None = None,
        near_max_bytes: int | None = None,
        near_prefix: bytes | None = None,
        near_max_staleness: float | None = None,
        sign_secrets: list[bytes] | None = None,
        sign_writes: bool = False,
        sign_accept_unsigned: bool = False,
    ) -> RedisClient:
        """An unknown keyword is a TypeError. ``near_max_entries`` with ``near_max_bytes`` turn
        the near cache on: ``get`` and ``has_key`` answered from a process-local copy of what
        ``get`` read, which the server keeps coherent by invalidation pushes for the keys under
        ``near_prefix`` (every key when None), or, with ``near_max_staleness`` (seconds), copies
        served for at most that long. With ``view_of``, a view of that client (see
        ``with_metrics``): the rest is not read."""
    def get(self, prefix: str | None, version: Any, key: Any, default: Any = None) -> Any:
        """GET: the value, or ``default``."""

    def get_many(
        self,
        prefix: str | None,
        version: Any,
        keys: Iterable[Any],
        partial: bool = False,
        on_failure: Callable[[CacheError], object] | None = None,
    ) -> dict[Any, Any]:
        """One MGET per node, every node at once: the found keys (as given) and their values
        (``partial`` has no effect: the call answers or fails as a whole)."""

    def set(self, prefix: str | None, version: Any, key: Any, value: Any, timeout: int | None) -> None:
        """SET with EX; ``timeout=0`` deletes the key, None never expires."""

    def add(self, prefix: str | None, version: Any, key: Any, value: Any, timeout: int | None) -> bool:
        """SET NX; whether it was stored."""

    def touch(self, prefix: str | None, version: Any, key: Any, timeout: int | None) -> bool:
        """EXPIRE, or PERSIST for None; whether the key exists."""

    def delete(self, prefix: str | None, version: Any, key: Any) -> bool:
        """DEL; whether the key was there."""

    def has_key(self, prefix: str | None, version: Any, key: Any) -> bool:
        """EXISTS."""

    def incr(self, prefix: str | None, version: Any, key: Any, delta: int) -> int:
        """INCRBY on an existing key only, atomically, keeping its TTL (past 64 bits: WATCH/MULTI
        with big-integer arithmetic). ValueError when the key is missing; TypeError when its value
        is not an integer."""

    def set_many(
        self,
        mapping: Mapping[Any, Any],
        timeout: int | None,
        prefix: Any = None,
        version: Any = None,
        partial: bool = False,
        on_failure: Callable[[CacheError], object] | None = None,
    ) -> list[Any]:
        """One pipeline of SET ... EX per node; ``timeout=0`` deletes the keys. Returns []
        (``partial`` has no effect: the call answers or fails as a whole)."""

    def delete_many(self, prefix: str | None, version: Any, keys: Iterable[Any]) -> int:
        """DEL (one per node); how many keys were there."""

    def rename(self, source: str, target: str) -> None:
        """RENAME one made key to another, its TTL kept: atomic when both are on one node (in one
        slot), else DUMP + RESTORE + DEL. ValueError when ``source`` is missing."""

    def clear(self) -> bool:
        """FLUSHDB on every primary."""

    def servers(self) -> list[dict[str, Any]]:
        """Each server's pool: address, up, errors, last_error, idle_connections, open_connections,
        async_connections (the multiplexed connections of the async calls)."""

    def refused_values(self) -> int:
        """Values refused since the client was made: signed values whose tag did not verify,
        and (with signing on, outside migrate mode) values without one."""
    def client_stats(self) -> dict[str, int]:
        """Client-side counters: hits, misses, sets, failures."""
    def loop_stats(self) -> dict[str, int]:
        """The calls read on an event loop's own thread (one ``aget`` at a time) since the
        client was made (``calls``), and the loops' connections open now (``connections``)."""
    def with_metrics(self, alias: str, backend: str, named: bool, enabled: bool) -> Self:
        """The same client (the same Python class), its calls recorded in ``alias``'s metrics:
        with ``named`` (an alias of ``settings.CACHES``) those every view of that alias shares,
        else this view's own."""
    def metrics(self) -> dict[str, Any]:
        """This view's alias's metrics: alias, backend, enabled, since, calls (method ->
        outcome -> n), keys_found, keys_missed, bytes_sent, bytes_received, latency (method ->
        count, sum_seconds, p50_seconds, p99_seconds, buckets)."""
    def reset_metrics(self) -> None:
        """Zero this view's alias's metrics."""
    def near_stats(self) -> dict[str, int] | None:
        """The near cache's counters (hits, misses, invalidations, flushes) and what it holds
        (entries, bytes); None without a near cache."""
    def reset_near_stats(self) -> None:
        """Zero the near cache's counters."""

    def execute(
        self,
        *args: bytes | str | int | float,
        write: bool = True,
        idempotent: bool = False,
        node: int | None = None,
        op: str | None = None,
    ) -> Any:
        """Run one command as given; its reply as None, int, bytes, str, list or dict. It goes to
        the node of its key (EVAL: of its first key; none: the first node); DEL, UNLINK, EXISTS,
        TOUCH and MGET are split by node and their answers merged; SUNION, SINTER, SDIFF (and
        their STORE forms) and SMOVE over keys on several nodes are made of one-key commands;
        ``node`` sends it to that node (see ``nodes()``). ``write`` picks a primary (else a
        replica may answer); ``idempotent`` allows one retry on a new connection when a pooled
        one went stale."""

    def loads(self, data: bytes) -> Any:
        """Decode stored bytes as ``get`` does (inflated if compressed, then deserialized)."""

    def dumps(self, value: Any, ints_as_digits: bool = True, pickle_protocol: int | None = None) -> bytes:
        """Encode a value as ``set`` stores it (serialized, then compressed if configured); with
        ``ints_as_digits=False``, an int is serialized like any other value; ``pickle_protocol``
        overrides the client's (when values are pickled)."""

    def server_for(self, write: bool = False) -> int:
        """The index of the server a read (or a write) of the first node goes to."""

    def nodes(self) -> list[int]:
        """The nodes a call over every node visits (SCAN), for ``execute(..., node=)``: the one
        node, every shard, or every cluster primary serving slots now."""

    def node_of(self, key: bytes | str) -> int:
        """The node of a made key's primary (see ``nodes()``)."""

    def groups(self, keys: list[bytes | str]) -> list[list[int]]:
        """The made keys, by position, in groups one command may take together (one node; on a
        cluster, one slot)."""

    @property
    def cluster(self) -> bool:
        """Whether this is a Redis Cluster."""

    # Async twins: each returns an asyncio future of the running loop (RuntimeError outside
    # one); the call runs on the process's I/O runtime, over multiplexed connections, within
    # the same deadline as its sync twin. The value is decoded on the loop's thread.
    def aget(self, prefix: str | None, version: Any, key: Any, default: Any = None) -> asyncio.Future[Any]: ...
    def aget_many(
        self,
        prefix: str | None,
        version: Any,
        keys: Iterable[Any],
        partial: bool = False,
        on_failure: Callable[[CacheError], object] | None = None,
    ) -> asyncio.Future[dict[Any, Any]]: ...
    def aset(
        self, prefix: str | None, version: Any, key: Any, value: Any, timeout: int | None
    ) -> asyncio.Future[None]: ...
    def aadd(
        self, prefix: str | None, version: Any, key: Any, value: Any, timeout: int | None
    ) -> asyncio.Future[bool]: ...
    def atouch(self, prefix: str | None, version: Any, key: Any, timeout: int | None) -> asyncio.Future[bool]: ...
    def adelete(self, prefix: str | None, version: Any, key: Any) -> asyncio.Future[bool]: ...
    def ahas_key(self, prefix: str | None, version: Any, key: Any) -> asyncio.Future[bool]: ...
    def aincr(self, prefix: str | None, version: Any, key: Any, delta: int) -> asyncio.Future[int]: ...
    def aset_many(
        self,
        mapping: Mapping[Any, Any],
        timeout: int | None,
        prefix: Any = None,
        version: Any = None,
        partial: bool = False,
        on_failure: Callable[[CacheError], object] | None = None,
    ) -> asyncio.Future[list[Any]]: ...
    def adelete_many(self, prefix: str | None, version: Any, keys: Iterable[Any]) -> asyncio.Future[int]: ...
    def arename(self, source: str, target: str) -> asyncio.Future[None]: ...
    def aclear(self) -> asyncio.Future[bool]: ...
    def aexecute(
        self,
        *args: bytes | str | int | float,
        write: bool = True,
        idempotent: bool = False,
        node: int | None = None,
        op: str | None = None,
    ) -> asyncio.Future[Any]: ...

def glob_match(pattern: str, text: str) -> bool:
    """Whether ``text`` matches a glob ``pattern`` as redis's MATCH reads one (``*``, ``?``,
    ``[a-z]``, ``[^a]``, ``\\`` escaping)."""

def metrics_snapshots() -> list[dict[str, Any]]:
    """Every alias's metrics alive in this process (each as ``metrics()`` gives it)."""

def metrics_labels() -> dict[str, list[str]]:
    """The method and outcome names metrics use."""

def reset_all_metrics() -> None:
    """Zero every alias's metrics (a forked child starts from zero)."""

def cluster_key_slot(key: bytes | str) -> int:
    """Redis Cluster's hash slot of a key: CRC16 (XMODEM) of the key, or of the text between its
    first ``{`` and the next ``}`` when that is not empty."""

@final
class HashRing:
    """A predecessor's hash ring: ``kind`` "django-redis" (its ShardClient's) or
    "django-redis-cache" (its ShardedRedisCache's), ``names`` the servers as that ring names them,
    in LOCATION order."""

    def __new__(cls, kind: str, names: list[str]) -> HashRing: ...
    def index(self, key: bytes | str) -> int:
        """The position of the server that holds ``key`` (a made key)."""
