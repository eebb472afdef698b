"""Settings for the ORM query cache tests (run by orm_tests/run.py, one cache backend per run).

RUSTCACHE_ORM_CACHE picks the cache: lru, locmem, memcached, redis, redis-near, memcached-signed,
redis-signed (the network ones need RUSTCACHE_ORM_LOCATION, a live server's LOCATION).
RUSTCACHE_ORM_DB_DIR holds the SQLite files.
"""

import os
import tempfile

DB_DIR = os.environ.get("RUSTCACHE_ORM_DB_DIR") or tempfile.mkdtemp(prefix="rustcache-orm-")
KIND = os.environ.get("RUSTCACHE_ORM_CACHE", "lru")
LOCATION = os.environ.get("RUSTCACHE_ORM_LOCATION", "")

BACKENDS = {
    "lru": {"BACKEND": "django_rustcache.lru.LRUObjectCache", "LOCATION": "orm-tests"},
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "orm-tests"},
    "memcached": {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": LOCATION},
    "redis": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": LOCATION},
    # The near cache on: the ORM cache's generation keys and results read through it.
    "redis-near": {
        "BACKEND": "django_rustcache.redis.RedisCache",
        "LOCATION": LOCATION,
        "OPTIONS": {"NEAR_CACHE": {"MAX_ENTRIES": 10_000, "MAX_BYTES": 16 * 2**20}},
    },
    # Signed values (OPTIONS["SIGN"]): the ORM cache's entries and generations signed.
    "memcached-signed": {
        "BACKEND": "django_rustcache.memcached.MemcachedCache",
        "LOCATION": LOCATION,
        "OPTIONS": {"SIGN": True},
    },
    "redis-signed": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": LOCATION, "OPTIONS": {"SIGN": True}},
    "django-memcached": {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache", "LOCATION": LOCATION},
    "django-redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": LOCATION},
    "filebased": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": f"{DB_DIR}/filecache"},
    "database": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "orm_cache_table"},
}
CACHES = {"default": {**BACKENDS[KIND], "TIMEOUT": 600}}


def _sqlite(name):
    # File databases, also under test: the race tests use threads, each with its own connection.
    path = os.path.join(DB_DIR, f"{name}.sqlite3")
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "TEST": {"NAME": path + ".test"}}


DATABASES = {
    "default": _sqlite("default"),
    "other": _sqlite("other"),
    "replica": {**_sqlite("default"), "TEST": {"MIRROR": "default"}},
}
DATABASE_ROUTERS = []
if KIND == "database":
    # On SQLite the cache table lives in a database of its own (see the README).
    DATABASES["cache"] = _sqlite("cache")
    DATABASE_ROUTERS = ["orm_tests.settings.CacheRouter"]


class CacheRouter:
    def db_for_read(self, model, **hints):
        return "cache" if model._meta.app_label == "django_cache" else None

    db_for_write = db_for_read

    def allow_migrate(self, db, app_label, **hints):
        if app_label == "django_cache" or db == "cache":
            return app_label == "django_cache" and db == "cache"
        return None


INSTALLED_APPS = ["django.contrib.contenttypes", "django_rustcache.orm", "orm_tests.testapp"]
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
SECRET_KEY = "orm-tests"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
CACHE_COUNT_TIMEOUT = 60
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {name: {"handlers": ["null"], "propagate": False} for name in ("django_rustcache.orm", "caching")},
}
