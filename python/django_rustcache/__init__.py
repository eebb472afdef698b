"""Django cache backends whose cores are written in Rust.

Name a backend in ``CACHES``:

* ``django_rustcache.lru.LRUObjectCache``: an in-process LRU object cache.
* ``django_rustcache.memcached.MemcachedCache`` / ``PyLibMCCache``: memcached.
* ``django_rustcache.redis.RedisCache`` (and ``redis_cache.RedisCache``): redis.

``django_rustcache.orm`` caches ORM querysets in any of them (or any Django cache).
"""

from django_rustcache._core import (
    CacheError,
    ClusterBusy,
    ClusterRedirect,
    ProtocolError,
    ServerDown,
    ServerError,
    TLSError,
    __version__,
)

__all__ = [
    "CacheError",
    "ClusterBusy",
    "ClusterRedirect",
    "ProtocolError",
    "ServerDown",
    "ServerError",
    "TLSError",
    "__version__",
]
