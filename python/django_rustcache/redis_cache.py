"""The redis backend with django-redis-cache's answers, for sites that move from
``redis_cache.RedisCache``: ``BACKEND = "django_rustcache.redis_cache.RedisCache"``.

It is ``django_rustcache.redis.RedisCache`` (same core, same data format, every option of
django-redis-cache accepted) where django-redis-cache answers differently from Django:

- the db is 1 when neither LOCATION nor OPTIONS (``DB``/``db``) name one;
- ``set()`` returns True when it stored the value; a timeout of 0 deletes the key and returns
  whether there was one; a negative timeout stores nothing, leaves the key alone and returns False;
- ``get_or_set(key, default, timeout, lock_timeout, stale_cache_timeout)`` takes the herd options
  in django-redis-cache's positions (``version`` only by keyword);
- ``lock(key, timeout, sleep, blocking_timeout, thread_local)`` takes its arguments in
  django-redis-cache's order and, as there, names the lock by ``key`` itself (no prefix or
  version), so old and new processes share their locks while both run.
"""

from __future__ import annotations

import random
from contextlib import suppress
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from django_rustcache._core import CacheError, RedisClient
from django_rustcache.redis.backend import RedisCache as _RedisCache
from django_rustcache.redis.lock import Lock
from django_rustcache.redis.raw import server_client, shard_of

__all__ = ["RedisCache", "ShardedRedisCache", "django_redis_cache_node"]

# The value (kept ARGV[2] seconds, 0: forever) and its freshness marker (ARGV[3] seconds, 0:
# forever), in one step: django-redis-cache writes both in one MULTI.
_STORE_FRESH = """
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else redis.call('SET', KEYS[1], ARGV[1]) end
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[2], 1, 'EX', ARGV[3])
else redis.call('SET', KEYS[2], 1) end
return 1
"""


def django_redis_cache_node(server: str, db: int) -> tuple[Any, Any, Any, Any]:
    """The ``(host, port, db, unix_socket_path)`` django-redis-cache names a LOCATION entry by
    (its ``parse_connection_kwargs`` and connection-pool defaults), ``db`` being the cache's db
    (OPTIONS DB, 1 by default) where the entry names none."""
    if "://" in server:
        url = urlparse(server)
        query = {k: v[0] for k, v in parse_qs(url.query).items() if v}
        url_db: str | int | None = query.get("db")
        if url.scheme == "unix":
            return ("127.0.0.1", 6379, int(url_db if url_db is not None else db or 0), url.path)
        if url_db is None and url.path:
            try:
                url_db = int(url.path.replace("/", ""))
            except ValueError:
                url_db = None
        host, port = url.hostname, int(url.port or 6379)
        return (host, port, int(url_db if url_db is not None else db or 0), None if url.scheme == "rediss" else "")
    if ":" in server:
        host, port_text = server.rsplit(":", 1)
        return (host, int(port_text), db, None)
    return (None, None, db, server)


class RedisCache(_RedisCache):
    """RedisCache with django-redis-cache's return values and defaults."""

    default_db: ClassVar[int | None] = 1

    def _configure(self) -> Any:
        settings = super()._configure()
        db = self._options.get("db", self._options.get("DB", self.default_db))
        db = 1 if db is None else int(db)
        # Each server as django-redis-cache names it (its clients' keys, its hash ring's nodes).
        self._nodes = [django_redis_cache_node(s, db) for s in self._servers]
        return settings

    # --- django-redis-cache's ways to its redis-py clients (redis-py: the redis-py extra) ---

    @property
    def clients(self) -> dict[tuple[Any, ...], Any]:
        """A redis-py client per server, by django-redis-cache's name for it: ``(host, port, db,
        unix socket path)``."""
        return {node: server_client(self, i) for i, node in enumerate(self._nodes)}

    @property
    def client_list(self) -> list[Any]:
        return list(self.clients.values())

    def get_master_client(self) -> Any:
        """The server that takes the writes (OPTIONS MASTER_CACHE, or the first in LOCATION)."""
        return server_client(self, 0)

    @property
    def master_client(self) -> Any:
        return self.get_master_client()

    def get_client(self, key: Any, write: bool = False) -> Any:
        """The server a made key is written to (the master), or read from (any of them)."""
        if write:
            return self.get_master_client()
        return server_client(self, random.randrange(len(self._nodes)))

    def set(  # type: ignore[override]
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool:
        """Store the value; True when stored. Timeout 0 deletes (whether the key was there);
        a negative timeout stores nothing and returns False."""
        seconds = self.default_timeout if timeout is DEFAULT_TIMEOUT else timeout
        if seconds is not None and int(seconds) < 0:
            return False
        if seconds is not None and int(seconds) == 0:
            return self.delete(key, version)
        if nx or xx:
            return bool(super().set(key, value, timeout, version, nx=nx, xx=xx))
        try:
            self._cache.set(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            return self._failed(e, False)
        return True

    async def aset(  # type: ignore[override]
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool:
        seconds = self.default_timeout if timeout is DEFAULT_TIMEOUT else timeout
        if seconds is not None and int(seconds) < 0:
            return False
        if seconds is not None and int(seconds) == 0:
            return await self.adelete(key, version)
        if nx or xx:
            return bool(await super().aset(key, value, timeout, version, nx=nx, xx=xx))
        try:
            await self._cache.aset(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            return self._failed(e, False)
        return True

    async def adelete_many(self, keys: Any, version: Any = None) -> None:
        await super().adelete_many(keys, version)

    def delete_many(self, keys: Any, version: Any = None) -> None:
        """django-redis-cache's delete_many returns nothing."""
        super().delete_many(keys, version)

    def _fresh_and_value(self, both: list[Any]) -> tuple[bool, Any]:
        """Whether the marker is there, and the value (None when missing), read together from
        the value's node."""
        marker, value = both
        return marker is not None, None if value is None else self._cache.loads(value)

    def get_or_set(  # type: ignore[override]
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        lock_timeout: float | None = None,
        stale_cache_timeout: float | None = None,
        version: Any = None,
    ) -> Any:
        """django-redis-cache's get_or_set, exactly, with its key layout: the value is fresh
        while ``__fresh__<key>`` exists (``timeout`` seconds). When it is not, the one caller
        that takes the non-blocking lock ``__lock__<key>`` (held at most ``lock_timeout``; None:
        until released) computes ``default`` and stores it, kept ``stale_cache_timeout`` seconds
        past ``timeout`` (None: forever), with a new marker; every other caller returns at once
        whatever is stored (the stale copy) or None. Nobody waits."""
        made = self._made(key, version)
        fresh_key, lock_key = f"__fresh__{made}", f"__lock__{made}"
        # The value and its marker live where the value's key does; the lock where its own does.
        client = self._cache
        try:
            fresh, stored = self._fresh_and_value(client.execute("MGET", fresh_key, made, node=client.node_of(made)))
        except CacheError as e:
            return self._failed(e, default() if callable(default) else default)
        if fresh:
            return stored
        ttl = self.get_backend_timeout(timeout)
        lock = Lock(self._cache, lock_key, lock_timeout, 0.1, False, None)
        try:
            acquired = lock.acquire(blocking=False)
        except CacheError as e:
            return self._failed(e, stored)
        if not acquired:
            return stored
        try:
            value = default() if callable(default) else default
            if ttl is None or ttl > 0:
                keep = None if stale_cache_timeout is None or ttl is None else ttl + int(stale_cache_timeout)
                client.execute("EVAL", _STORE_FRESH, 2, made, fresh_key, client.dumps(value), keep or 0, ttl or 0)
            return value
        finally:
            # A lock that outlived lock_timeout may be another caller's now: theirs to free.
            with suppress(CacheError):
                lock.release()

    async def aget_or_set(  # type: ignore[override]
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        lock_timeout: float | None = None,
        stale_cache_timeout: float | None = None,
        version: Any = None,
    ) -> Any:
        """``get_or_set``'s async twin, django-redis-cache's semantics and key layout included."""
        made = self._made(key, version)
        fresh_key, lock_key = f"__fresh__{made}", f"__lock__{made}"
        client = self._cache
        try:
            both = await client.aexecute("MGET", fresh_key, made, node=client.node_of(made))
            fresh, stored = self._fresh_and_value(both)
        except CacheError as e:
            return self._failed(e, default() if callable(default) else default)
        if fresh:
            return stored
        ttl = self.get_backend_timeout(timeout)
        lock = Lock(self._cache, lock_key, lock_timeout, 0.1, False, None)
        try:
            acquired = await lock.aacquire(blocking=False)
        except CacheError as e:
            return self._failed(e, stored)
        if not acquired:
            return stored
        try:
            value = default() if callable(default) else default
            if ttl is None or ttl > 0:
                keep = None if stale_cache_timeout is None or ttl is None else ttl + int(stale_cache_timeout)
                await client.aexecute(
                    "EVAL", _STORE_FRESH, 2, made, fresh_key, client.dumps(value), keep or 0, ttl or 0
                )
            return value
        finally:
            with suppress(CacheError):
                await lock.arelease()

    def alock(  # type: ignore[override]
        self,
        key: str,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking_timeout: float | None = None,
        thread_local: bool = True,
        version: Any = None,
    ) -> Lock:
        """``lock``, for ``async with cache.alock(key):``."""
        return self.lock(key, timeout, sleep, blocking_timeout, thread_local, version)

    def lock(  # type: ignore[override]
        self,
        key: str,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking_timeout: float | None = None,
        thread_local: bool = True,  # each Lock object holds its own token
        version: Any = None,  # the lock is named by the key as given
    ) -> Lock:
        """A redis lock named ``key`` as given, as django-redis-cache names it."""
        return Lock(self._cache, key, timeout, sleep, True, blocking_timeout)


class ShardedRedisCache(RedisCache):
    """django-redis-cache's ``ShardedRedisCache``: the LOCATION list is shards, not a leader and
    replicas. Each key lives on the server django-redis-cache's own hash ring gives it (so a site
    switching keeps its keys where they are); multi-key calls are split by server; ``clear()``,
    ``delete_pattern``, ``iter_keys``, ``keys``, ``reinsert_keys`` and ``clear(version=)`` visit
    every server."""

    def get_client(self, key: Any, write: bool = False) -> Any:
        """The server that holds a made key (its shard), for writes and reads alike."""
        return server_client(self, shard_of(self, str(key)))

    def _make_client(self, s: Any) -> RedisClient:
        # Placed by django-redis-cache's ring over its own names of the servers.
        names = [str(node) for node in self._nodes]
        return self._make_one(s, topology="sharded", ring="django-redis-cache", ring_names=names)
