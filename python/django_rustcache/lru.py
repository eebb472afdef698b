"""An in-process LRU object cache: the successor of django-lrucache-backend and a faster LocMemCache.

Values are kept as live objects by default (no pickling, like django-lrucache-backend); with
``OPTIONS = {"PICKLE": True}`` they are kept as pickled copies, like LocMemCache. Every backend
instance with the same LOCATION (and storage mode) shares one store, as LocMemCache's do.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from django_rustcache import _exporters, _metrics
from django_rustcache import checks as _checks  # noqa: F401  (registers the option check)
from django_rustcache._core import LruStore, check_key
from django_rustcache._keys import NativeKeys
from django_rustcache._stampede import Stampede

__all__ = ["LRUObjectCache"]

_stores: dict[tuple[str, int | None], LruStore] = {}
_stores_lock = threading.Lock()


def _store(name: str, pickle_protocol: int | None) -> LruStore:
    with _stores_lock:
        store = _stores.get((name, pickle_protocol))
        if store is None:
            store = _stores[(name, pickle_protocol)] = LruStore(pickle_protocol)
        return store


class _ExpireInfo:
    """LocMemCache's ``_expire_info`` as a read-only view: made key -> expiry timestamp or None."""

    def __init__(self, store: LruStore) -> None:
        self._store = store

    def __getitem__(self, key: str) -> float | None:
        return self._store.expiry(key)

    def __contains__(self, key: object) -> bool:
        try:
            self._store.expiry(str(key))
        except KeyError:
            return False
        return True

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self._store.expiry(key)
        except KeyError:
            return default


class _StoreLock:
    """LocMemCache's ``_lock``, enough to ask whether the store is locked right now."""

    def __init__(self, store: LruStore) -> None:
        self._store = store

    def locked(self) -> bool:
        return self._store.locked()


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


class LRUObjectCache(NativeKeys, Stampede, BaseCache):
    """In-process LRU cache; the store, key making and key checks are in Rust."""

    # SIGN: accepted, changes nothing (the values never leave the process: see _signing).
    known_options = frozenset(
        {"MAX_ENTRIES", "CULL_FREQUENCY", "PICKLE", "PICKLE_PROTOCOL", "METRICS", "SIGN", "STAMPEDE"}
    )

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._options = params.get("OPTIONS") or {}
        self._read_stampede(self._options)
        protocol: int | None = None
        if _truthy(self._options.get("PICKLE", False)):
            protocol = int(self._options.get("PICKLE_PROTOCOL", pickle.HIGHEST_PROTOCOL))
        self._name = name
        alias, named = _metrics.alias_of(self, name, params)
        path = f"{type(self).__module__}.{type(self).__qualname__}"
        # The store of this LOCATION (and mode), shared by every backend instance; and as this
        # backend's alias sees it (its calls counted under it).
        self._shared = _store(name, protocol)
        self._cache = self._shared.with_metrics(alias, path, named, _metrics.metrics_enabled(self._options))
        _metrics.track(self)
        _exporters.ensure_exported()
        self._expire_info = _ExpireInfo(self._cache)
        self._lock = _StoreLock(self._cache)

    def validate_key(self, key: str) -> None:
        check_key(key)

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        if self._native_keys:
            return self._cache.get(self.key_prefix, self.version if version is None else version, key, default)
        return self._cache.get(None, None, self.make_key(key, version), default)

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> None:
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if self._native_keys:
            self._cache.set(
                self.key_prefix,
                self.version if version is None else version,
                key,
                value,
                timeout,
                self._max_entries,
                self._cull_frequency,
            )
        else:
            self._cache.set(
                None, None, self.make_key(key, version), value, timeout, self._max_entries, self._cull_frequency
            )

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if self._native_keys:
            return self._cache.add(
                self.key_prefix,
                self.version if version is None else version,
                key,
                value,
                timeout,
                self._max_entries,
                self._cull_frequency,
            )
        return self._cache.add(
            None, None, self.make_key(key, version), value, timeout, self._max_entries, self._cull_frequency
        )

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if self._native_keys:
            return self._cache.touch(self.key_prefix, self.version if version is None else version, key, timeout)
        return self._cache.touch(None, None, self.make_key(key, version), timeout)

    def delete(self, key: Any, version: Any = None) -> bool:
        if self._native_keys:
            return self._cache.delete(self.key_prefix, self.version if version is None else version, key)
        return self._cache.delete(None, None, self.make_key(key, version))

    def has_key(self, key: Any, version: Any = None) -> bool:
        if self._native_keys:
            return self._cache.has_key(self.key_prefix, self.version if version is None else version, key)
        return self._cache.has_key(None, None, self.make_key(key, version))

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        if self._native_keys:
            return self._cache.incr(self.key_prefix, self.version if version is None else version, key, delta)
        return self._cache.incr(None, None, self.make_key(key, version), delta)

    def decr(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        return self.incr(key, -delta, version)

    def get_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        if self._native_keys:
            return self._cache.get_many(self.key_prefix, self.version if version is None else version, keys)
        made = self._made_keys(keys, version)
        found = self._cache.get_many(None, None, list(made))
        return {made[k]: v for k, v in found.items()}

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list[Any]:
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if self._native_keys:
            return self._cache.set_many(
                self.key_prefix,
                self.version if version is None else version,
                data,
                timeout,
                self._max_entries,
                self._cull_frequency,
            )
        made = {self.make_key(k, version): v for k, v in data.items()}
        return self._cache.set_many(None, None, made, timeout, self._max_entries, self._cull_frequency)

    def delete_many(self, keys: Any, version: Any = None) -> None:
        if self._native_keys:
            self._cache.delete_many(self.key_prefix, self.version if version is None else version, keys)
        else:
            self._cache.delete_many(None, None, [self.make_key(k, version) for k in keys])

    def incr_version(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        """Move the value to version + delta in one step, keeping its expiry."""
        if version is None:
            version = self.version
        old, new = self.make_key(key, version), self.make_key(key, version + delta)
        if not self._cache.rename(old, new, self._max_entries, self._cull_frequency):
            raise ValueError(f"Key '{key}' not found")
        return version + delta

    def clear(self) -> None:
        self._cache.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing to close: the store lives as long as the process."""

    def stats(self) -> _metrics.CacheStats:
        """The one shape of every backend (see ``CacheStats``); ``store`` holds the shared
        store's own counters: size, max_size, evictions, expirations, pickled."""
        own = self._cache.stats()
        store = {
            "size": own["size"],
            "max_size": self._max_entries,
            "evictions": own["evictions"],
            "expirations": own["expirations"],
            "pickled": self._cache.pickle_protocol is not None,
        }
        return _metrics.stats_shape(self._cache.metrics(), location=self._name, servers=[], store=store)

    def reset_stats(self) -> None:
        """Zero this alias's counts, and the store's own."""
        self._cache.reset_metrics()
        self._cache.reset_stats()

    # The store never blocks on I/O, so the async API calls it directly instead of hopping to a
    # thread with sync_to_async as BaseCache does.
    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return self.get(key, default, version)

    async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> None:
        self.set(key, value, timeout, version)

    async def aadd(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return self.add(key, value, timeout, version)

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return self.touch(key, timeout, version)

    async def adelete(self, key: Any, version: Any = None) -> bool:
        return self.delete(key, version)

    async def ahas_key(self, key: Any, version: Any = None) -> bool:
        return self.has_key(key, version)

    async def aincr(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        return self.incr(key, delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        return self.incr(key, -delta, version)

    async def aget_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        return self.get_many(keys, version)

    async def aset_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list[Any]:
        return self.set_many(data, timeout, version)

    async def adelete_many(self, keys: Any, version: Any = None) -> None:
        self.delete_many(keys, version)

    async def aget_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        if self._stampede is not None:
            # (its waits must not block the loop: tasks wait on the loop)
            return await Stampede.aget_or_set(self, key, default, timeout, version)
        return self.get_or_set(key, default, timeout, version)

    async def aincr_version(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        return self.incr_version(key, delta, version)

    async def adecr_version(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        return self.incr_version(key, -delta, version)

    async def aclear(self) -> None:
        self.clear()

    async def aclose(self, **kwargs: Any) -> None:
        self.close(**kwargs)
