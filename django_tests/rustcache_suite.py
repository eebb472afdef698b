"""Django's own cache tests, run against django_rustcache's backends.

``run.py`` copies this file into the ``cache`` app of Django's test tree, so ``tests`` below is
Django's ``tests/cache/tests.py``. Only mixins and the LocMemCache test class are reused; no test
of Django's is copied. ``RUSTCACHE_MODE`` picks the storage mode: ``object`` (live objects, the
default) or ``pickled`` (``OPTIONS={"PICKLE": True}``).
"""

import inspect
import os
import unittest

from django.test import TestCase, override_settings

from . import tests as django_tests

LRU = "django_rustcache.lru.LRUObjectCache"
MODE = os.environ.get("RUSTCACHE_MODE", "object")


def lru_caches(**params):
    """Django's test CACHES, pointing every alias at our backend in the chosen mode."""
    setting = django_tests.caches_setting_for_tests(BACKEND=LRU, **params)
    if MODE == "pickled":
        for alias in setting.values():
            alias["OPTIONS"] = {**alias.get("OPTIONS", {}), "PICKLE": True}
    return setting


# Tests that cannot apply, with the reason. Each is reported as skipped with this reason.
NOT_APPLICABLE = {
    "object": {
        "test_add_fail_on_pickleerror": "object mode stores live objects and never pickles; "
        "OPTIONS={'PICKLE': True} raises PickleError as LocMemCache does (run in pickled mode)",
        "test_set_fail_on_pickleerror": "object mode stores live objects and never pickles; "
        "OPTIONS={'PICKLE': True} raises PickleError as LocMemCache does (run in pickled mode)",
    },
    "pickled": {},
}


def _not_applicable(cls):
    for name, reason in NOT_APPLICABLE[MODE].items():
        setattr(cls, name, unittest.skip(reason)(getattr(cls, name)))
    return cls


def _with_caches(test, caches):
    """Django's test method, with its own LocMemCache override replaced by our backend."""
    return override_settings(CACHES=caches)(inspect.unwrap(test))


@_not_applicable
@override_settings(CACHES=lru_caches())
class LRUObjectCacheTests(django_tests.LocMemCacheTests):
    """BaseCacheTests plus LocMemCacheTests (LRU order, culling, locking, expiry info)."""

    _limited = lru_caches(OPTIONS={"MAX_ENTRIES": 9, **({"PICKLE": True} if MODE == "pickled" else {})})
    test_lru_get = _with_caches(django_tests.LocMemCacheTests.test_lru_get, _limited)
    test_lru_set = _with_caches(django_tests.LocMemCacheTests.test_lru_set, _limited)
    test_lru_incr = _with_caches(django_tests.LocMemCacheTests.test_lru_incr, _limited)
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
