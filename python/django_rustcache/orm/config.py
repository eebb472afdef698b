"""Settings of the ORM query cache, read from ``django.conf.settings`` when they are used, and
the cache they name: ``cache``, ``caches[alias]`` behind one proxy (Cache Machine's
``caching.invalidation.cache``).

Cache Machine read its settings once, at import; we read them at call time (cached until a
``setting_changed`` signal), so ``override_settings`` works and tests may still assign or patch
the module attributes (``config.TIMEOUT = 60``, ``mock.patch("...config.FETCH_BY_ID", True)``):
an assigned attribute wins over the setting until it is deleted.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured

NO_CACHE = -1
WHOLE_MODEL = "whole-model"

# module attribute -> (Django setting, default)
_SETTINGS: dict[str, tuple[str, Any]] = {
    "CACHE_PREFIX": ("CACHE_PREFIX", ""),
    "FETCH_BY_ID": ("FETCH_BY_ID", False),
    "CACHE_EMPTY_QUERYSETS": ("CACHE_EMPTY_QUERYSETS", False),
    "TIMEOUT": ("CACHE_COUNT_TIMEOUT", NO_CACHE),
    "CACHE_INVALIDATE_ON_CREATE": ("CACHE_INVALIDATE_ON_CREATE", None),
    "CACHE_MACHINE_NO_INVALIDATION": ("CACHE_MACHINE_NO_INVALIDATION", False),
    "CACHE_MACHINE_USE_REDIS": ("CACHE_MACHINE_USE_REDIS", False),
    # Ours. True when the site imports Cache Machine's names through the ``caching`` shim
    # (django_rustcache.orm.compat), or says so: Cache Machine's own behaviour where it differs.
    "CACHE_MACHINE_COMPAT": ("CACHE_MACHINE_COMPAT", None),
    # Ours: the most members one flush list holds before its model's generation is bumped instead.
    "FLUSH_LIST_LIMIT": ("CACHE_MACHINE_FLUSH_LIST_LIMIT", 1000),
    # Ours: a result of more rows than this is not cached (and not held while it streams).
    "MAX_ROWS": ("CACHE_MACHINE_MAX_ROWS", 10_000),
    # Ours: the cache alias; Cache Machine's rule (``cache_machine`` if configured, else default).
    "CACHE_ALIAS": ("CACHE_MACHINE_ALIAS", None),
}

if TYPE_CHECKING:  # the settings' types, answered by the module's __getattr__ below
    CACHE_PREFIX: str
    FLUSH: str
    FETCH_BY_ID: bool
    CACHE_EMPTY_QUERYSETS: bool
    TIMEOUT: Any
    CACHE_INVALIDATE_ON_CREATE: str | None
    CACHE_MACHINE_NO_INVALIDATION: bool
    CACHE_MACHINE_USE_REDIS: bool
    CACHE_MACHINE_COMPAT: bool
    FLUSH_LIST_LIMIT: int
    MAX_ROWS: int
    CACHE_ALIAS: str | None

_INVALIDATE_ON_CREATE_VALUES = (None, WHOLE_MODEL)
_cached: dict[str, Any] = {}
# Set by django_rustcache.orm.compat when the ``caching`` shim is installed.
shim_installed = False


def _read(name: str) -> Any:
    from django.conf import settings

    setting, default = _SETTINGS[name]
    value = getattr(settings, setting, default)
    if name == "CACHE_INVALIDATE_ON_CREATE" and value not in _INVALIDATE_ON_CREATE_VALUES:
        raise ImproperlyConfigured(
            f"CACHE_INVALIDATE_ON_CREATE must be one of {_INVALIDATE_ON_CREATE_VALUES}, not {value!r}"
        )
    if name == "CACHE_MACHINE_COMPAT" and value is None:
        value = shim_installed
    if name in ("FLUSH_LIST_LIMIT", "MAX_ROWS") and (not isinstance(value, int) or value < 1):
        raise ImproperlyConfigured(f"{setting} must be a positive int, not {value!r}")
    return value


def __getattr__(name: str) -> Any:
    if name == "FLUSH":
        return __getattr__("CACHE_PREFIX") + ":flush:"
    if name not in _SETTINGS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return _cached[name]
    except KeyError:
        value = _cached[name] = _read(name)
        return value


def reset(**kwargs: Any) -> None:
    """Forget the values read so far (connected to ``setting_changed``)."""
    _cached.clear()


def check() -> None:
    """Read every setting once, so a wrong value is reported at start-up, not at first use."""
    for name in _SETTINGS:
        __getattr__(name)


class CacheProxy:
    """``caches[alias]`` for the calling thread, the alias chosen when first used: Cache
    Machine's ``cache_machine`` alias when configured, else ``default`` (or
    ``CACHE_MACHINE_ALIAS``). Attributes set on the proxy (tests patch ``cache.get``) shadow the
    backend's until deleted."""

    def _alias(self) -> str:
        alias = _cached.get("_alias")
        if alias is None:
            from django.conf import settings

            alias = sys.modules[__name__].CACHE_ALIAS or (
                "cache_machine" if "cache_machine" in getattr(settings, "CACHES", {}) else "default"
            )
            _cached["_alias"] = alias
        return alias

    def backend(self) -> Any:
        return caches[self._alias()]

    def __getattr__(self, name: str) -> Any:
        return getattr(caches[self._alias()], name)

    def __contains__(self, key: str) -> bool:
        return key in caches[self._alias()]

    def __repr__(self) -> str:
        return f"<ORM cache proxy for caches[{self._alias()!r}]>"


cache: Any = CacheProxy()
