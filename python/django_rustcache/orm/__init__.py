"""The ORM query cache: Django querysets cached in any Django cache, never stale after a write.

Cache Machine's API (``django_rustcache.orm.base``, ``.config``, ``.invalidation``, ``.ext``) on
table generations; see the README's "ORM query cache" section. The names below are imported
lazily, so ``import django_rustcache.orm.compat`` works in a settings module.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CachingManager",
    "CachingMixin",
    "CachingModelIterable",
    "CachingQuerySet",
    "CachingRawQuerySet",
    "DEFAULT_TIMEOUT",
    "cached",
    "cached_method",
    "cached_with",
    "invalidate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from django_rustcache.orm import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
