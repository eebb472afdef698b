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

With ``RUSTCACHE_VIA_ASYNC=1`` the backend is a subclass whose every sync method of Django's API
(``get``, ``set``, ``get_many``, ``incr_version``, ``get_or_set``, ...) awaits its async twin
(``aget``, ``aset``, ...) on an event loop in another thread: Django's whole cache contract, as
its suite checks it, is then checked on the native async methods. (Django's own async cache
tests, ``tests_async.py``, are DummyCache's: they assert that nothing is ever stored.)

Tests that cannot apply are listed in ``NOT_APPLICABLE`` with the reason, and reported as skipped
with that reason; nothing is skipped silently.
"""

import asyncio
import inspect
import json
import os
import threading
import unittest

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.test import TestCase, override_settings

from django_rustcache.memcached import MemcachedCache
from django_rustcache.redis import RedisCache

from . import tests as django_tests

SUITE = os.environ.get("RUSTCACHE_SUITE", "lru")
MODE = os.environ.get("RUSTCACHE_MODE", "object")
VIA_ASYNC = os.environ.get("RUSTCACHE_VIA_ASYNC") == "1"
LRU = "django_rustcache.lru.LRUObjectCache"
MEMCACHED = f"{__name__}.MemcachedViaAsync" if VIA_ASYNC else "django_rustcache.memcached.MemcachedCache"
REDIS = f"{__name__}.RedisViaAsync" if VIA_ASYNC else "django_rustcache.redis.RedisCache"

_LOOP = asyncio.new_event_loop()
if VIA_ASYNC:
    threading.Thread(target=_LOOP.run_forever, daemon=True).start()


def _awaited(coroutine):
    return asyncio.run_coroutine_threadsafe(coroutine, _LOOP).result()


class ViaAsync:
    """Django's sync API, each call made by its async twin on the event loop."""

    def get(self, key, default=None, version=None):
        return _awaited(self.aget(key, default, version))

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None, **kwargs):
        return _awaited(self.aset(key, value, timeout, version, **kwargs))

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return _awaited(self.aadd(key, value, timeout, version))

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return _awaited(self.atouch(key, timeout, version))

    def delete(self, key, version=None):
        return _awaited(self.adelete(key, version))

    def get_many(self, keys, version=None):
        return _awaited(self.aget_many(keys, version))

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return _awaited(self.aset_many(data, timeout, version))

    def delete_many(self, keys, version=None):
        return _awaited(self.adelete_many(keys, version))

    def has_key(self, key, version=None):
        return _awaited(self.ahas_key(key, version))

    def incr(self, key, delta=1, version=None):
        return _awaited(self.aincr(key, delta, version))

    def decr(self, key, delta=1, version=None):
        return _awaited(self.adecr(key, delta, version))

    def incr_version(self, key, delta=1, version=None):
        return _awaited(self.aincr_version(key, delta, version))

    def decr_version(self, key, delta=1, version=None):
        return _awaited(self.adecr_version(key, delta, version))

    def get_or_set(self, key, default, timeout=DEFAULT_TIMEOUT, version=None):
        return _awaited(self.aget_or_set(key, default, timeout, version))

    def clear(self):
        return _awaited(self.aclear())


class RedisViaAsync(ViaAsync, RedisCache):
    pass


class MemcachedViaAsync(ViaAsync, MemcachedCache):
    pass


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


# Through the async twins (RUSTCACHE_VIA_ASYNC=1), on top of the above.
QUERYSET_IN_LOOP = (
    "pickling a lazy QuerySet runs its SQL, and inside an event loop Django refuses that "
    "(SynchronousOnlyOperation), as it does for any async caller"
)
NOT_APPLICABLE_VIA_ASYNC = {
    "test_cache_read_for_model_instance_with_deferred": QUERYSET_IN_LOOP,
    "test_cache_write_for_model_instance_with_deferred": QUERYSET_IN_LOOP,
    "test_set_many_returns_failing_keys": (
        "patches the client's sync set_multi; the async twin sends through aset_multi "
        "(its failing keys are tested in tests/test_async.py)"
    ),
}


def _not_applicable(cls):
    skips = dict(NOT_APPLICABLE.get((SUITE, MODE), {}))
    if VIA_ASYNC:
        skips.update(NOT_APPLICABLE_VIA_ASYNC)
    for name, reason in skips.items():
        if hasattr(cls, name):
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
            self.assertEqual(cache.stats()["store"]["pickled"], MODE == "pickled")


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
            self.assertIs(isinstance(cache, ViaAsync), VIA_ASYNC)
            options = MEMCACHED_PARAMS["OPTIONS"]
            self.assertIs(cache._cache.binary, bool(options.get("binary") or options.get("username")))
            self.assertEqual(cache.client_servers, [MEMCACHED_PARAMS["LOCATION"].removeprefix("unix:")])


# RedisCacheTests that test Django's own redis-py client class rather than the cache contract.
REDIS_CLIENT_INTERNALS = {
    "test_incr_write_connection": "patches RedisCacheClient.get_client, a method of Django's redis-py client",
    "test_cache_client_class": "asserts cache._class is Django's RedisCacheClient",
    "test_get_connection_pool_index": "calls RedisCacheClient._get_connection_pool_index (redis-py pools)",
    "test_get_connection_pool": "asserts a redis-py ConnectionPool",
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

    @_not_applicable
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
            self.assertIs(isinstance(cache, ViaAsync), VIA_ASYNC)
            sharded = REDIS_PARAMS["OPTIONS"].get("CLIENT_CLASS") == "django_redis.client.ShardClient"
            clustered = bool(REDIS_PARAMS["OPTIONS"].get("CLUSTER"))
            # One client type for every topology.
            from django_rustcache._core import RedisClient

            self.assertIsInstance(cache._cache, RedisClient)
            self.assertIs(cache._cache.cluster, clustered)
            if clustered:
                # Keys went to every primary, by slot.
                cache.set_many({f"cluster-probe-{i}": i for i in range(64)})
                self.assertEqual(len(cache._cache.nodes()), 3)
                for node in cache._cache.nodes():
                    self.assertTrue(cache._cache.execute("DBSIZE", write=True, node=node))
            if sharded:
                self.assertEqual(len(cache._cache.nodes()), len(REDIS_PARAMS["LOCATION"].split(",")))
            if REDIS_PARAMS["OPTIONS"].get("SENTINELS"):
                # Every call went to the master the sentinels name.
                cache.set("sentinel-probe", 1)
                (server,) = cache.stats()["servers"]
                self.assertEqual(server["service"], "rustcache")
                self.assertIsNotNone(server["master"])

        def test_get_client(self):
            """Django's own test: ``cache._cache.get_client()`` is a redis-py ``Redis`` (a Redis
            Cluster's is a ``RedisCluster``; a sharded cache has none, as django-redis's)."""
            from django.core.cache import caches

            import redis

            self.lib = redis
            options = REDIS_PARAMS["OPTIONS"]
            if options.get("CLIENT_CLASS") == "django_redis.client.ShardClient":
                with self.assertRaises(NotImplementedError):
                    caches["default"]._cache.get_client()
            elif options.get("CLUSTER"):
                self.assertIsInstance(caches["default"]._cache.get_client(), redis.cluster.RedisCluster)
            else:
                django_tests.RedisCacheTests.test_get_client(self)

    for _name, _reason in REDIS_CLIENT_INTERNALS.items():
        if hasattr(django_tests.RedisCacheTests, _name):
            setattr(RedisCacheTests, _name, unittest.skip(_reason)(getattr(django_tests.RedisCacheTests, _name)))
