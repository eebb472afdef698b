"""Django's own cache tests, run against django_rustcache's backends.

``run.py`` copies this file into the ``cache`` app of Django's test tree, so ``tests`` below is
Django's ``tests/cache/tests.py``. Only its mixins and test classes are reused; no test of
Django's is copied. The environment picks what runs:

* ``RUSTCACHE_SUITE=lru``: LRUObjectCache with BaseCacheTests + LocMemCacheTests;
  ``RUSTCACHE_MODE`` is ``object`` (live objects) or ``pickled`` (``OPTIONS={"PICKLE": True}``).
* ``RUSTCACHE_SUITE=redis``: RedisCache with BaseCacheTests and the RedisCacheTests that apply,
  against ``RUSTCACHE_REDIS_LOCATION``, with ``RUSTCACHE_REDIS_OPTIONS`` (JSON) as its OPTIONS
  (with django-redis's ShardClient, the LOCATION is three servers, keys placed by its ring).
* ``RUSTCACHE_SUITE=memcached``: MemcachedCache with BaseMemcachedTests, against the server at
  ``RUSTCACHE_MEMCACHED_LOCATION`` (run.py starts one), with ``RUSTCACHE_MEMCACHED_OPTIONS``
  (JSON): the text protocol over TCP or a unix socket, the binary protocol, or SASL.

Tests that cannot apply are listed in ``NOT_APPLICABLE`` with the reason, and reported as skipped
with that reason; nothing is skipped silently.
"""

import inspect
import json
import os
import unittest

from django.test import TestCase, override_settings

from . import tests as django_tests

LRU = "django_rustcache.lru.LRUObjectCache"
MEMCACHED = "django_rustcache.memcached.MemcachedCache"
REDIS = "django_rustcache.redis.RedisCache"
SUITE = os.environ.get("RUSTCACHE_SUITE", "lru")
MODE = os.environ.get("RUSTCACHE_MODE", "object")

NOT_PICKLED = (
    "object mode stores live objects and never pickles; OPTIONS={'PICKLE': True} raises "
    "PickleError as LocMemCache does (run in pickled mode)"
)

# (suite, mode) -> {test name: reason}
NOT_APPLICABLE = {
    ("lru", "object"): {
        "test_add_fail_on_pickleerror": NOT_PICKLED,
        "test_set_fail_on_pickleerror": NOT_PICKLED,
    },
}


def _not_applicable(cls):
    for name, reason in NOT_APPLICABLE.get((SUITE, MODE), {}).items():
        setattr(cls, name, unittest.skip(reason)(getattr(cls, name)))
    return cls


def _with_caches(test, caches):
    """Django's test method, with its own LocMemCache override replaced by our backend."""
    return override_settings(CACHES=caches)(inspect.unwrap(test))


def lru_caches(**params):
    """Django's test CACHES, pointing every alias at our LRU backend in the chosen mode."""
    setting = django_tests.caches_setting_for_tests(BACKEND=LRU, **params)
    if MODE == "pickled":
        for alias in setting.values():
            alias["OPTIONS"] = {**alias.get("OPTIONS", {}), "PICKLE": True}
    return setting


if SUITE == "lru":
    _LIMITED = lru_caches(OPTIONS={"MAX_ENTRIES": 9, **({"PICKLE": True} if MODE == "pickled" else {})})

    @_not_applicable
    @override_settings(CACHES=lru_caches())
    class LRUObjectCacheTests(django_tests.LocMemCacheTests):
        """BaseCacheTests plus LocMemCacheTests (LRU order, culling, locking, expiry info)."""

        test_lru_get = _with_caches(django_tests.LocMemCacheTests.test_lru_get, _LIMITED)
        test_lru_set = _with_caches(django_tests.LocMemCacheTests.test_lru_set, _LIMITED)
        test_lru_incr = _with_caches(django_tests.LocMemCacheTests.test_lru_incr, _LIMITED)
        test_multiple_caches = _with_caches(
            django_tests.LocMemCacheTests.test_multiple_caches,
            {"default": {"BACKEND": LRU}, "other": {"BACKEND": LRU, "LOCATION": "other"}},
        )

    class SuiteIsOurs(TestCase):
        """Guard: the suite above really runs against our backend, not Django's LocMemCache."""

        @override_settings(CACHES=lru_caches())
        def test_backend_in_use(self):
            from django.core.cache import caches

            cache = caches["default"]
            self.assertEqual(f"{type(cache).__module__}.{type(cache).__qualname__}", LRU)
            self.assertEqual(type(cache._cache).__name__, "LruStore")
            self.assertEqual(cache.stats()["pickled"], MODE == "pickled")


if SUITE == "memcached":
    MEMCACHED_PARAMS = {
        "BACKEND": MEMCACHED,
        "LOCATION": os.environ["RUSTCACHE_MEMCACHED_LOCATION"],
        "OPTIONS": json.loads(os.environ.get("RUSTCACHE_MEMCACHED_OPTIONS", "{}")),
    }

    @_not_applicable
    @override_settings(
        CACHES=django_tests.caches_setting_for_tests(
            base=MEMCACHED_PARAMS, exclude=django_tests.memcached_excluded_caches
        )
    )
    class MemcachedCacheTests(django_tests.BaseMemcachedTests, TestCase):
        """BaseCacheTests plus BaseMemcachedTests (key rules, far timeouts, failed sets, ...)."""

        base_params = MEMCACHED_PARAMS
        # Our client keeps its pooled connections at request end (Django's memcached backends
        # reconnect per request); test_close checks disconnect_all is *not* called.
        should_disconnect_on_close = False

        def test_backend_in_use(self):
            from django.core.cache import caches

            cache = caches["default"]
            self.assertEqual(f"{type(cache).__module__}.{type(cache).__qualname__}", MEMCACHED)
            self.assertEqual(type(cache._cache).__mro__[1].__name__, "MemcachedClient")
            options = MEMCACHED_PARAMS["OPTIONS"]
            self.assertIs(cache._cache.binary, bool(options.get("binary") or options.get("username")))
            self.assertEqual(cache.client_servers, [MEMCACHED_PARAMS["LOCATION"].removeprefix("unix:")])


# RedisCacheTests that test Django's own redis-py client class rather than the cache contract.
REDIS_CLIENT_INTERNALS = {
    "test_incr_write_connection": "patches RedisCacheClient.get_client, a method of Django's redis-py client",
    "test_cache_client_class": "asserts cache._class is Django's RedisCacheClient",
    "test_get_connection_pool_index": "calls RedisCacheClient._get_connection_pool_index (redis-py pools)",
    "test_get_connection_pool": "asserts a redis-py ConnectionPool",
    "test_get_client": "asserts a redis-py Redis client",
    "test_serializer_dumps": "reads RedisCacheClient._serializer (ours serializes in Rust, in the same format)",
    "test_redis_pool_options": "reads redis-py pool connection_kwargs",
    "test_client_driver_info": "reads redis-py's CLIENT SETINFO lib-name",
}

if SUITE == "redis":
    REDIS_PARAMS = {
        "BACKEND": REDIS,
        "LOCATION": os.environ["RUSTCACHE_REDIS_LOCATION"],
        "OPTIONS": json.loads(os.environ.get("RUSTCACHE_REDIS_OPTIONS", "{}")),
    }

    @override_settings(
        CACHES=django_tests.caches_setting_for_tests(base=REDIS_PARAMS, exclude=django_tests.redis_excluded_caches)
    )
    class RedisCacheTests(django_tests.BaseCacheTests, TestCase):
        """BaseCacheTests plus the RedisCacheTests about the cache contract."""

        base_params = REDIS_PARAMS
        test_get_backend_timeout_method = django_tests.RedisCacheTests.test_get_backend_timeout_method

        def test_backend_in_use(self):
            from django.core.cache import caches

            cache = caches["default"]
            self.assertEqual(f"{type(cache).__module__}.{type(cache).__qualname__}", REDIS)
            sharded = REDIS_PARAMS["OPTIONS"].get("CLIENT_CLASS") == "django_redis.client.ShardClient"
            self.assertEqual(type(cache._cache).__name__, "ShardedClient" if sharded else "RedisClient")
            if sharded:
                self.assertEqual(len(cache._cache.clients), len(REDIS_PARAMS["LOCATION"].split(",")))

    for _name, _reason in REDIS_CLIENT_INTERNALS.items():
        if hasattr(django_tests.RedisCacheTests, _name):
            setattr(RedisCacheTests, _name, unittest.skip(_reason)(getattr(django_tests.RedisCacheTests, _name)))
