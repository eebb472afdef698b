"""Django cache backends whose cores are written in Rust.

Name a backend in ``CACHES``:

* ``django_rustcache.lru.LRUObjectCache``: an in-process LRU object cache.
"""

from django_rustcache._core import CacheError, __version__

__all__ = ["CacheError", "__version__"]
