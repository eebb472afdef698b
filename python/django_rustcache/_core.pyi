"""The native core of django-rustcache (built from ``src/`` by maturin).

Backends call these with Django's key parts so that the key is made and checked in the same
call that reads or writes. ``prefix=None`` means ``key`` is already a made key (a custom
``KEY_FUNCTION`` made it) and only needs checking. Invalid keys (longer than 250 characters,
or holding whitespace or control characters) raise Django's ``CacheKeyWarning`` through the
``warnings`` module, before the store is touched.
"""

from collections.abc import Iterable, Mapping
from typing import Any, final

__all__ = ["CacheError", "LruStore", "__version__", "check_key"]
__version__: str

class CacheError(Exception):
    """Base class of every error django-rustcache raises on its own account."""

def check_key(key: str) -> None:
    """Warn (``CacheKeyWarning``) about a made key memcached would refuse, as Django's
    ``BaseCache.validate_key`` does."""

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

    def purge_expired(self) -> int:
        """Remove every expired entry now; returns how many entries are left."""

    def stats(self) -> dict[str, int]:
        """Counters since creation (or ``reset_stats``): hits, misses, sets, evictions,
        expirations; and size, the entries held."""

    def reset_stats(self) -> None:
        """Zero the counters."""
