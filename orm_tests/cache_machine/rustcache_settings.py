"""Ours, not Cache Machine's: run its suite on its own example settings, with ``caching`` mapped
onto django_rustcache.orm.

``RUSTCACHE_CM_SETTINGS`` names one of its ``examples/cache_machine`` modules; it is imported
as it is. Only what cannot work on this machine is adapted: the servers are the ones
orm_tests/run.py started (not localhost:11211/6379), the databases are SQLite files (the
examples' dj_database_url reads DATABASE_URL), and python-memcached's ``MemcachedCache``, which
Django 4.1 removed, is replaced by its successor, ours.
"""

import importlib
import os

import django_rustcache.orm.compat  # noqa: F401  (import caching.* -> django_rustcache.orm.*)

_example = importlib.import_module(os.environ["RUSTCACHE_CM_SETTINGS"])
globals().update({name: value for name, value in vars(_example).items() if name.isupper()})

_MEMCACHED = os.environ["RUSTCACHE_MEMCACHED_LOCATION"]
_REDIS = os.environ["RUSTCACHE_REDIS_LOCATION"]

for _conf in CACHES.values():  # noqa: F821  (from the example module)
    if _conf["BACKEND"] == "django.core.cache.backends.memcached.MemcachedCache":
        _conf["BACKEND"] = "django_rustcache.memcached.MemcachedCache"
        _conf["LOCATION"] = _MEMCACHED
    elif _conf["BACKEND"] == "django_redis.cache.RedisCache":
        _conf["LOCATION"] = f"{_REDIS}/0"
if "REDIS_BACKEND" in globals():
    REDIS_BACKEND = _REDIS

TEST_RUNNER = "rustcache_runner.Runner"
