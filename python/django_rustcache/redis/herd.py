"""django-redis's ``HerdClient`` (``OPTIONS["CLIENT_CLASS"] = "django_redis.client.HerdClient"``),
with its data format, so a site that used it keeps its cache and its behaviour.

A value with a timeout is stored as django-redis stores it: the tuple ``(Marker(), value,
expires_at)`` (``Marker`` being ``django_redis.client.herd.Marker``: django-redis must stay
installed, its class names the format), kept ``CACHE_HERD_TIMEOUT`` (60) seconds longer than its
timeout. Past ``expires_at`` a read returns the value to most callers and a miss to a few, with a
likelihood that grows to 1 over ``CACHE_HERD_TIMEOUT`` seconds: those few recompute it while the
rest keep reading the old one. ``incr``/``decr`` raise NotImplementedError there, as in
django-redis. A value without a timeout, or not packed, reads as it is.
"""

from __future__ import annotations

import importlib
import random
import time
from typing import Any

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured

__all__ = ["HERD_CLIENTS", "install_herd"]

HERD_CLIENTS = frozenset({"django_redis.client.HerdClient", "django_redis.client.herd.HerdClient"})


def _marker_class() -> type:
    try:
        marker: type = importlib.import_module("django_redis.client.herd").Marker
    except ImportError:
        raise ImproperlyConfigured(
            "OPTIONS['CLIENT_CLASS'] = HerdClient stores values as django-redis's herd tuples, whose "
            "marker class is django_redis.client.herd.Marker: keep django-redis installed to read and write them"
        ) from None
    return marker


class _Herd:
    """The herd format on top of a redis backend's own methods."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.marker = _marker_class()
        self.timeout = int(getattr(settings, "CACHE_HERD_TIMEOUT", 60))
        self.get_plain, self.set_plain = backend.get, backend.set
        self.add_plain, self.get_many_plain = backend.add, backend.get_many
        self.aget_plain, self.aset_plain = backend.aget, backend.aset
        self.aadd_plain, self.aget_many_plain = backend.aadd, backend.aget_many

    def pack(self, value: Any, timeout: Any) -> tuple[Any, Any]:
        """(what to store, the timeout to store it with)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.backend.default_timeout
        if timeout is None or timeout <= 0:
            return value, timeout
        return (self.marker(), value, timeout + int(time.time())), timeout + self.timeout

    def unpack(self, stored: Any) -> tuple[Any, bool]:
        """(the value, whether this caller is to recompute it)."""
        if not (isinstance(stored, tuple) and len(stored) == 3 and isinstance(stored[0], self.marker)):
            return stored, False
        _, value, expires_at = stored
        now = int(time.time())
        if expires_at < now:
            late = now - expires_at
            return value, late >= self.timeout or late + random.randint(1, self.timeout) >= self.timeout
        return value, False

    # --- the backend's methods, in the herd format --------------------------------------------

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        missing = self.backend._missing_key
        stored = self.get_plain(key, missing, version)
        if stored is missing:
            return default
        value, refresh = self.unpack(stored)
        return default if refresh else value

    def get_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        out = {}
        for key, stored in self.get_many_plain(keys, version).items():
            value, refresh = self.unpack(stored)
            out[key] = None if refresh else value  # (django-redis's HerdClient answers None)
        return out

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None, **kw: Any) -> Any:
        packed, timeout = self.pack(value, timeout)
        return self.set_plain(key, packed, timeout, version, **kw)

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        packed, timeout = self.pack(value, timeout)
        return bool(self.add_plain(key, packed, timeout, version))

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list[Any]:
        for key, value in data.items():
            self.set(key, value, timeout, version)
        return []

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        missing = self.backend._missing_key
        value = self.get(key, missing, version)
        if value is missing:
            return False
        self.set(key, value, timeout, version)
        return True

    def incr(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("django-redis's HerdClient has no incr (its values are herd tuples)")

    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        missing = self.backend._missing_key
        stored = await self.aget_plain(key, missing, version)
        if stored is missing:
            return default
        value, refresh = self.unpack(stored)
        return default if refresh else value

    async def aget_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        out = {}
        for key, stored in (await self.aget_many_plain(keys, version)).items():
            value, refresh = self.unpack(stored)
            out[key] = None if refresh else value
        return out

    async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None, **kw: Any) -> Any:
        packed, timeout = self.pack(value, timeout)
        return await self.aset_plain(key, packed, timeout, version, **kw)

    async def aadd(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        packed, timeout = self.pack(value, timeout)
        return bool(await self.aadd_plain(key, packed, timeout, version))

    async def aset_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list[Any]:
        for key, value in data.items():
            await self.aset(key, value, timeout, version)
        return []

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        missing = self.backend._missing_key
        value = await self.aget(key, missing, version)
        if value is missing:
            return False
        await self.aset(key, value, timeout, version)
        return True


_METHODS = (
    "get",
    "get_many",
    "set",
    "add",
    "set_many",
    "touch",
    "aget",
    "aget_many",
    "aset",
    "aadd",
    "aset_many",
    "atouch",
)


def install_herd(backend: Any) -> None:
    """Give `backend` the herd format: its methods, as instance attributes (a backend without
    HerdClient pays nothing)."""
    herd = _Herd(backend)
    for name in _METHODS:
        setattr(backend, name, getattr(herd, name))
    for name in ("incr", "decr", "aincr", "adecr"):
        setattr(backend, name, herd.incr)
