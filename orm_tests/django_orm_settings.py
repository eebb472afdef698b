"""Settings for Django's own test suite with the ORM query cache on (orm_tests/django_orm.py
copies this file into Django's ``tests/`` as ``rustcache_orm_settings.py``): Django's
test_sqlite settings, the cache the ORM cache uses, and, unless RUSTCACHE_ORM_HOOK=0 (a plain
run, to compare with), every model's queryset caching."""

import json
import os

from test_sqlite import *  # noqa: F403

CACHES = {
    "default": {
        "BACKEND": os.environ.get("RUSTCACHE_ORM_BACKEND", "django_rustcache.lru.LRUObjectCache"),
        "LOCATION": os.environ.get("RUSTCACHE_ORM_LOCATION", "django-orm-suite"),
        "TIMEOUT": 600,
        "OPTIONS": json.loads(os.environ.get("RUSTCACHE_ORM_OPTIONS", "{}")),
    }
}
# With every evaluation made twice, an empty result too is served from the cache the second time.
CACHE_EMPTY_QUERYSETS = os.environ.get("RUSTCACHE_ORM_TWICE") == "1"

if os.environ.get("RUSTCACHE_ORM_HOOK", "1") == "1":
    import rustcache_orm_hook

    rustcache_orm_hook.install()
