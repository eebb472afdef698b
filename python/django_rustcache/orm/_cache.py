"""The cache the ORM cache uses: ``caches[alias]`` behind one proxy object, Cache Machine's
``caching.invalidation.cache`` (tests patch its methods)."""

from __future__ import annotations

from typing import Any

from django.core.cache import caches

from django_rustcache.orm import config


class CacheProxy:
    """``caches[alias]`` for the calling thread, the alias chosen when first used: Cache
    Machine's ``cache_machine`` alias when configured, else ``default`` (or
    ``CACHE_MACHINE_ALIAS``). Attributes set on the proxy (tests patch ``cache.get``) shadow the
    backend's until deleted."""

    def _alias(self) -> str:
        alias = config._cached.get("_alias")
        if alias is None:
            from django.conf import settings

            alias = config.CACHE_ALIAS or (
                "cache_machine" if "cache_machine" in getattr(settings, "CACHES", {}) else "default"
            )
            config._cached["_alias"] = alias
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
