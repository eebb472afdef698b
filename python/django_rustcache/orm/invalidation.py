"""Cache Machine's ``caching.invalidation``: the cache used, keys, and flush lists.

Flush lists are Cache Machine's per-object invalidation (``invalidate(obj)``, ``cached_method``,
fragments, and, in Cache Machine compatibility mode, the lists of queries an object appears in).
They are not what keeps query results correct here (table generations do that), but where they
are kept they are kept properly: updates hold a lock, so two processes never lose each other's
members; a list lives at least as long as the longest entry it names; and a list that outgrows
``CACHE_MACHINE_FLUSH_LIST_LIMIT`` members is dropped and its model's tables invalidated
instead (Cache Machine's lists grew until one invalidation took minutes).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl

from django.core.cache import InvalidCacheBackendError
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.utils import encoding, translation

from django_rustcache.orm import _engine, config
from django_rustcache.orm.config import cache

log = logging.getLogger("caching.invalidation")


def make_key(k: str, with_locale: bool = True) -> str:
    """The full key for ``k``: md5 of the prefix, ``k`` and (by default) the active language."""
    key = encoding.smart_bytes(f"{config.CACHE_PREFIX}:{k}")
    if with_locale:
        key += encoding.smart_bytes(translation.get_language())
    return hashlib.md5(key, usedforsecurity=False).hexdigest()


def flush_key(obj: Any) -> str:
    """The flush list of an object (or of a key string)."""
    key = obj if isinstance(obj, str) else obj.get_cache_key(incl_db=False)
    return config.FLUSH + make_key(key, with_locale=False)


def byid(obj: Any) -> str:
    key = obj if isinstance(obj, str) else obj.cache_key
    return make_key("byid:" + key)


def seconds(timeout: Any) -> float | None:
    """A Django timeout as seconds (None: forever), with the cache's default for DEFAULT_TIMEOUT."""
    if timeout is DEFAULT_TIMEOUT:
        timeout = getattr(cache, "default_timeout", 300)
    return None if timeout is None else float(timeout)


_local_lock = threading.Lock()


class FlushListBusy(Exception):
    """The flush-list lock could not be taken in time."""


class Invalidator:
    """Flush lists stored as sets in any Django cache, updated under a lock."""

    LOCK_TIMEOUT = 5
    LOCK_WAIT = 5.0

    def invalidate_objects(self, objects: Iterable[Any], is_new_instance: bool = False, model_cls: Any = None) -> None:
        """Invalidate all the flush lists for the given ``objects``."""
        objects = list(objects)
        obj_keys = [k for o in objects for k in o._cache_keys()]
        flush_keys = [k for o in objects for k in o._flush_keys()]
        if (
            config.CACHE_INVALIDATE_ON_CREATE == config.WHOLE_MODEL
            and is_new_instance
            and model_cls
            and hasattr(model_cls, "model_flush_key")
        ):
            flush_keys.append(model_cls.model_flush_key())
        if not obj_keys or not flush_keys:
            return
        stale_objs, stale_lists = self.expand_flush_lists(obj_keys, flush_keys)
        if stale_objs:
            log.debug("deleting object keys: %s", stale_objs)
            cache.delete_many(list(stale_objs))
        if stale_lists:
            log.debug("clearing flush lists: %s", stale_lists)
            self.clear_flush_lists(list(stale_lists))

    def cache_objects(
        self,
        model: Any,
        objects: list[Any],
        query_key: str,
        query_flush: str,
        timeout: Any = DEFAULT_TIMEOUT,
    ) -> bool:
        """Put ``query_key`` in the flush lists of every object in it and of their foreign keys."""
        flush_lists: dict[str, set[str]] = collections.defaultdict(set)
        tables: dict[str, frozenset[str]] = {}
        for obj in objects:
            flush_lists[obj.flush_key()].add(query_flush)
            tables[obj.flush_key()] = _engine.model_tables(type(obj))
        flush_lists[query_flush].add(query_key)
        tables[query_flush] = _engine.model_tables(model)
        model_flush = model.model_flush_key()
        if config.CACHE_INVALIDATE_ON_CREATE == config.WHOLE_MODEL:
            flush_lists[model_flush].add(query_key)
            tables[model_flush] = _engine.model_tables(model)
        for obj in objects:
            obj_flush = obj.flush_key()
            for key in obj._flush_keys():
                if key not in (obj_flush, model_flush):
                    flush_lists[key].add(obj_flush)
        return self.add_to_flush_list(flush_lists, timeout=timeout, tables=tables)

    def expand_flush_lists(self, obj_keys: Iterable[str], flush_keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """Follow flush lists named in flush lists: ({keys to delete}, {flush lists found})."""
        obj_keys = set(obj_keys)
        search_keys = flush_keys = set(flush_keys)
        while True:
            new_keys = set()
            for key in self.get_flush_lists(search_keys):
                if key.startswith(config.FLUSH):
                    new_keys.add(key)
                else:
                    obj_keys.add(key)
            new_keys -= flush_keys  # lists that name each other (mutual foreign keys)
            if not new_keys:
                return obj_keys, flush_keys
            flush_keys = flush_keys | new_keys
            search_keys = new_keys

    def add_to_flush_list(
        self,
        mapping: Mapping[str, Iterable[str]],
        timeout: Any = None,
        tables: dict[str, frozenset[str]] | None = None,
    ) -> bool:
        """Add members to flush lists: {flush_key: [key, ...]}. ``timeout`` is the longest life
        of the entries named (None: they never expire). False when the lock was not taken: the
        caller must not leave an entry it could not register."""
        if not mapping:
            return True
        keys = list(mapping)
        life = seconds(timeout) if timeout is not None else None
        with self._locked():
            stored = cache.get_many(keys + [k + ":ttl" for k in keys])
            now = time.time()
            lists: dict[str, Any] = {}
            overflow: list[str] = []
            for key, members in mapping.items():
                current = set(stored.get(key) or ())
                current.update(members)
                if len(current) > config.FLUSH_LIST_LIMIT:
                    overflow.append(key)
                    continue
                expiry = None if life is None else now + life
                old = stored.get(key + ":ttl", "never" if stored.get(key) is not None else None)
                if old == "never" or expiry is None:
                    expiry = None
                elif isinstance(old, (int, float)):
                    expiry = max(expiry, old)
                lists[key] = (current, expiry)
            by_life: dict[float | None, dict[str, Any]] = collections.defaultdict(dict)
            for key, (members, expiry) in lists.items():
                remaining = None if expiry is None else max(1.0, expiry - now)
                by_life[remaining][key] = members
                by_life[remaining][key + ":ttl"] = "never" if expiry is None else expiry
            for remaining, values in by_life.items():
                cache.set_many(values, timeout=remaining)
        if overflow:
            self._overflow(overflow, tables or {})
        return True

    def _overflow(self, keys: list[str], tables: dict[str, frozenset[str]]) -> None:
        known = set().union(*(tables[k] for k in keys if k in tables))
        unknown = [k for k in keys if k not in tables]
        log.info("flush lists over %d members: %d dropped", config.FLUSH_LIST_LIMIT, len(keys))
        if known:
            _engine.bump(known)
        if unknown:
            obj_keys, _ = self.expand_flush_lists((), unknown)
            cache.delete_many(list(obj_keys))
        self.clear_flush_lists(keys)

    def get_flush_lists(self, keys: Iterable[str]) -> set[str]:
        """The members of the lists in ``keys``."""
        return {e for flush_list in cache.get_many(keys).values() if flush_list for e in flush_list}

    def clear_flush_lists(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        cache.delete_many(keys + [k + ":ttl" for k in keys])

    class _Lock:
        def __init__(self, owner: Invalidator) -> None:
            self.owner = owner
            self.key = config.FLUSH + "lock"
            self.token = f"{random.getrandbits(64):016x}"

        def __enter__(self) -> None:
            # A process-wide lock first: a cache whose add() is not atomic (FileBasedCache:
            # has_key, then set) still loses nothing between this process's threads.
            if not _local_lock.acquire(timeout=self.owner.LOCK_WAIT):
                raise FlushListBusy(self.key)
            try:
                deadline = time.monotonic() + self.owner.LOCK_WAIT
                pause = 0.0005
                while not cache.add(self.key, self.token, timeout=self.owner.LOCK_TIMEOUT):
                    if time.monotonic() > deadline:
                        raise FlushListBusy(self.key)
                    time.sleep(pause)
                    pause = min(pause * 2, 0.02)
            except BaseException:
                _local_lock.release()
                raise

        def __exit__(self, *exc: object) -> None:
            try:
                if cache.get(self.key) == self.token:
                    cache.delete(self.key)
            finally:
                _local_lock.release()

    def _locked(self) -> Invalidator._Lock:
        return self._Lock(self)


F = TypeVar("F", bound=Callable[..., Any])


def safe_redis(return_type: Any) -> Callable[[F], F]:
    """Log redis errors and return ``return_type`` (called when callable) instead."""

    def decorator(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            import redis as redislib

            try:
                return f(*args, **kw)
            except (OSError, redislib.RedisError) as e:
                log.error("redis error: %s", e)
                return return_type() if callable(return_type) else return_type

        return cast(F, wrapper)

    return decorator


class RedisInvalidator(Invalidator):
    """Flush lists as redis sets (``CACHE_MACHINE_USE_REDIS``): SADD is atomic, no lock needed."""

    def safe_key(self, key: str) -> str:
        if " " in key or "\n" in key:
            log.warning('BAD KEY: "%s"', key)
            return ""
        return key

    # One atomic step per list: add the members, keep the longer of the list's life and the
    # new entries' (-1: forever), and report the size.
    SCRIPT = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
local life = tonumber(ARGV[1])
if life < 0 then
  redis.call('PERSIST', KEYS[1])
elseif existed == 0 then
  redis.call('EXPIRE', KEYS[1], life)
else
  local current = redis.call('TTL', KEYS[1])
  if current >= 0 and current < life then redis.call('EXPIRE', KEYS[1], life) end
end
return redis.call('SCARD', KEYS[1])
"""
    _script: Any = None

    @safe_redis(False)
    def add_to_flush_list(
        self,
        mapping: Mapping[str, Iterable[str]],
        timeout: Any = None,
        tables: dict[str, frozenset[str]] | None = None,
    ) -> bool:
        life = seconds(timeout) if timeout is not None else None
        ttl = -1 if life is None else max(1, int(life + 0.999))
        if RedisInvalidator._script is None or RedisInvalidator._script.registered_client is not redis:
            RedisInvalidator._script = redis.register_script(self.SCRIPT)
        script = RedisInvalidator._script
        pipe = redis.pipeline(transaction=False)
        keys = []
        for key, members in mapping.items():
            encoded = [m.encode() for m in members]
            if encoded:
                keys.append(self.safe_key(key))
                script(keys=[keys[-1]], args=[ttl, *encoded], client=pipe)
        sizes = pipe.execute()
        overflow = [k for k, n in zip(keys, sizes, strict=True) if n > config.FLUSH_LIST_LIMIT]
        if overflow:
            self._overflow(overflow, tables or {})
        return True

    @safe_redis(set)
    def get_flush_lists(self, keys: Iterable[str]) -> set[str]:
        keys = [self.safe_key(k) for k in keys]
        if not keys:
            return set()
        return {k.decode() for k in redis.sunion(keys)}

    @safe_redis(None)
    def clear_flush_lists(self, keys: Iterable[str]) -> None:
        keys = [self.safe_key(k) for k in keys]
        if keys:
            redis.delete(*keys)


class NullInvalidator(Invalidator):
    def add_to_flush_list(self, mapping: Any, timeout: Any = None, tables: Any = None) -> bool:
        return True


def parse_backend_uri(backend_uri: str) -> tuple[str, dict[str, str]]:
    """``scheme://host:port/?a=b`` -> (``host:port``, {"a": "b"})."""
    parts = backend_uri.split("://")
    if len(parts) > 2:
        raise InvalidCacheBackendError("Backend URI can't have more than one scheme://")
    rest = parts[-1]
    host, _, query = rest.partition("?")
    params = dict(parse_qsl(query)) if query else {}
    return (host[:-1] if host.endswith("/") else host), params


def get_redis_backend() -> Any:
    """A redis-py client for ``settings.REDIS_BACKEND`` (Cache Machine's format)."""
    from django.conf import settings

    import redis as redislib

    server, params = parse_backend_uri(settings.REDIS_BACKEND)
    try:
        db = int(params.pop("db", 0))
    except (TypeError, ValueError):
        db = 0
    try:
        socket_timeout: float | None = float(params.pop("socket_timeout"))
    except (KeyError, ValueError):
        socket_timeout = None
    password = params.pop("password", None)
    host, port = "localhost", 6379
    if ":" in server:
        host, _, port_text = server.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            port = 6379
    elif server:
        host = server
    return redislib.Redis(host=host, port=port, db=db, password=password, socket_timeout=socket_timeout)


redis: Any = None


def _make_invalidator() -> Invalidator:
    global redis
    if config.CACHE_MACHINE_NO_INVALIDATION:
        return NullInvalidator()
    if config.CACHE_MACHINE_USE_REDIS:
        redis = get_redis_backend()
        return RedisInvalidator()
    return Invalidator()


invalidator: Invalidator = _make_invalidator()
