"""Redis backend on the Rust core: Django's API, thin; every topology is the core client's.

A drop-in for Django's RedisCache: the same LOCATION forms (a list means the first server takes
every write and reads go to a random one of the others), the same timeout rules, and the same
data format (ints as digits, everything else pickled), so a site switching keeps its cache.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from django_rustcache import checks as _checks  # noqa: F401  (registers the option check)
from django_rustcache._async import NativeAsync
from django_rustcache._core import CacheError, RedisClient
from django_rustcache._failures import answers
from django_rustcache._metrics import CacheStats
from django_rustcache._network import NetworkCache
from django_rustcache.redis.collections import RedisCollections
from django_rustcache.redis.extension import RedisExtension
from django_rustcache.redis.options import RedisOptions, logger
from django_rustcache.redis.raw import DjangoRedisClient


class RedisCache(RedisExtension, NativeAsync[RedisClient], RedisOptions, NetworkCache[RedisClient], RedisCollections):
    """Redis backend with Django's RedisCache semantics, and django-redis's extensions and
    collection API."""

    _system_name = "redis"
    _failure_logger = logger

    def stats(self) -> CacheStats:
        """NetworkCache's shape; with OPTIONS["NEAR_CACHE"], ``near_cache`` holds its hits,
        misses, invalidations, flushes, entries and bytes."""
        stats = super().stats()
        stats["near_cache"] = self._cache.near_stats()
        return stats

    @property
    def client(self) -> DjangoRedisClient:
        """django-redis's ``cache.client``, for its ``get_client(write)``: what
        ``django_redis.get_redis_connection()`` calls, so a site keeping that import gets the raw
        client ``django_rustcache.redis.get_redis_connection()`` gives."""
        return DjangoRedisClient(self)

    def reset_stats(self) -> None:
        """Zero this alias's counts and the near cache's (what it holds stays)."""
        super().reset_stats()
        self._cache.reset_near_stats()

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int | None:
        """Django's rules: None makes the key persistent; non-positive values delete it."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0, int(timeout))

    def set(  # type: ignore[override]  # django-redis's nx/xx, and their answer
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool | None:
        """Django's set (returns None); with django-redis's ``nx``/``xx``, store only if the key
        is absent / present, and return whether it was stored."""
        try:
            if nx:
                return self._cache.add(*self._parts(key, version), value, self.get_backend_timeout(timeout))
            if xx:
                ttl = self.get_backend_timeout(timeout)
                if ttl == 0:
                    return bool(self._cache.execute("DEL", self._made(key, version), idempotent=True))
                args: list[Any] = ["SET", self._made(key, version), self._cache.dumps(value)]
                if ttl is not None:
                    args += ["EX", ttl]
                return self._cache.execute(*args, "XX") is not None
            self._cache.set(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            return self._failed(e, False if (nx or xx) else None)
        return None

    @answers(False)
    def has_key(self, key: Any, version: Any = None) -> bool:
        return self._cache.has_key(*self._parts(key, version))

    @answers(None)
    def incr(self, key: Any, delta: int = 1, version: Any = None, ignore_key_check: bool = False) -> int:
        if ignore_key_check:
            # django-redis: a missing key starts from 0 (with no expiry, as INCRBY makes it);
            # past 64 bits it goes on exactly, as the normal incr does.
            parts = self._parts(key, version)
            for _ in range(8):
                try:
                    return self._cache.incr(*parts, delta)
                except ValueError:
                    if self._cache.add(*parts, int(delta), None):
                        return int(delta)
            raise CacheError(f"incr of {key!r} lost 8 races with deletes")
        return self._cache.incr(*self._parts(key, version), delta)

    @answers(None)
    def incr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        """Django's incr_version in one RENAME: atomic, and the key keeps its TTL."""
        old: int = self.version if version is None else version
        try:
            self._cache.rename(self._made(key, old), self._made(key, old + delta))
        except ValueError:
            raise ValueError(f"Key '{key}' not found") from None
        return old + delta

    # --- async twins of the above (the rest of Django's API: NativeAsync) -----------------------

    async def aset(  # type: ignore[override]
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool | None:
        try:
            if nx:
                return await self._cache.aadd(*self._parts(key, version), value, self.get_backend_timeout(timeout))
            if xx:
                ttl = self.get_backend_timeout(timeout)
                if ttl == 0:
                    return bool(await self._cache.aexecute("DEL", self._made(key, version), idempotent=True))
                args: list[Any] = ["SET", self._made(key, version), self._cache.dumps(value)]
                if ttl is not None:
                    args += ["EX", ttl]
                return await self._cache.aexecute(*args, "XX") is not None
            await self._cache.aset(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            return self._failed(e, False if (nx or xx) else None)
        return None

    @answers(False)
    async def ahas_key(self, key: Any, version: Any = None) -> bool:
        return await self._cache.ahas_key(*self._parts(key, version))

    @answers(None)
    async def aincr(self, key: Any, delta: int = 1, version: Any = None, ignore_key_check: bool = False) -> int:
        parts = self._parts(key, version)
        if ignore_key_check:
            for _ in range(8):
                try:
                    return await self._cache.aincr(*parts, delta)
                except ValueError:
                    if await self._cache.aadd(*parts, int(delta), None):
                        return int(delta)
            raise CacheError(f"incr of {key!r} lost 8 races with deletes")
        return await self._cache.aincr(*parts, delta)

    @answers(None)
    async def aincr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        old: int = self.version if version is None else version
        try:
            await self._cache.arename(self._made(key, old), self._made(key, old + delta))
        except ValueError:
            raise ValueError(f"Key '{key}' not found") from None
        return old + delta

    async def adecr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return await self.aincr_version(key, -delta, version)

    @answers(0)
    async def adelete_many(self, keys: Any, version: Any = None) -> int | None:  # type: ignore[override]
        made = [self._made(k, version) for k in keys]
        if not made:
            return None
        return int(await self._cache.aexecute("DEL", *made, idempotent=True))

    async def aclear(self, version: Any = None) -> bool:  # type: ignore[override]
        if version is None:
            try:
                return await self._cache.aclear()
            except CacheError as e:
                return self._failed(e, False)
        await self.adelete_pattern("*", version=version)
        return True

    @answers(0)
    def delete_many(self, keys: Any, version: Any = None) -> int | None:  # type: ignore[override]
        """Delete the keys; how many there were (django-redis). With no keys, None: Django's
        own suite pins that."""
        made = [self._made(k, version) for k in keys]
        if not made:
            return None
        return int(self._cache.execute("DEL", *made, idempotent=True))

    def clear(self, version: Any = None) -> bool:  # type: ignore[override]  # django-redis-cache's version
        """FLUSHDB, as Django does; with `version` (django-redis-cache), only that version of
        this cache's keys."""
        if version is None:
            try:
                return self._cache.clear()
            except CacheError as e:
                return self._failed(e, False)
        self.delete_pattern("*", version=version)
        return True


class RedisClusterCache(RedisCache):
    """RedisCache on a Redis Cluster (or Valkey / ElastiCache in cluster mode): LOCATION lists
    seed nodes; keys go to their hash slot's shard (``{hashtag}`` honoured), multi-key calls are
    split by node and run on every node at once, MOVED and ASK are followed, and SCAN-based calls
    and ``clear()`` visit every primary. Same values, serializers and compressors as RedisCache."""

    cluster = True
