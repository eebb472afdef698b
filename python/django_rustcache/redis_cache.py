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

from typing import Any, ClassVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from django_rustcache._core import CacheError
from django_rustcache.redis import Lock
from django_rustcache.redis import RedisCache as _RedisCache

__all__ = ["RedisCache"]


class RedisCache(_RedisCache):
    """RedisCache with django-redis-cache's return values and defaults."""

    default_db: ClassVar[int | None] = 1

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

    def get_or_set(  # type: ignore[override]
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        lock_timeout: float | None = None,
        stale_cache_timeout: float | None = None,
        version: Any = None,
    ) -> Any:
        return super().get_or_set(
            key,
            default,
            timeout,
            version=version,
            lock_timeout=lock_timeout,
            stale_cache_timeout=stale_cache_timeout,
        )

    async def aget_or_set(  # type: ignore[override]
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        lock_timeout: float | None = None,
        stale_cache_timeout: float | None = None,
        version: Any = None,
    ) -> Any:
        return await super().aget_or_set(
            key,
            default,
            timeout,
            version=version,
            lock_timeout=lock_timeout,
            stale_cache_timeout=stale_cache_timeout,
        )

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
