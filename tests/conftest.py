"""Django settings for our tests, and fixtures that make fresh, isolated backends."""

from __future__ import annotations

import itertools

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["django_rustcache"],
        CACHES={"default": {"BACKEND": "django_rustcache.lru.LRUObjectCache", "LOCATION": "tests-default"}},
        USE_TZ=True,
        # (signed values are keyed from it; with it, every network client checks signed values)
        SECRET_KEY="tests-secret-key",
    )
    django.setup()

_locations = itertools.count()

MODES = {"object": {}, "pickled": {"PICKLE": True}}


def make_lru(mode: str = "object", **params):
    """A backend on a store of its own (a LOCATION no other test uses)."""
    from django_rustcache.lru import LRUObjectCache

    options = {**MODES[mode], **params.pop("OPTIONS", {})}
    location = params.pop("LOCATION", f"test-{next(_locations)}")
    return LRUObjectCache(location, {"OPTIONS": options, **params})


@pytest.fixture(params=list(MODES))
def mode(request):
    return request.param


@pytest.fixture
def cache(mode):
    return make_lru(mode)


# --- memcached -------------------------------------------------------------------------------

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def memcached_server():
    from tests.servers import MemcachedServer

    server = MemcachedServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def memcached_unix_server():
    from tests.servers import MemcachedServer

    server = MemcachedServer(unix=True)
    yield server
    server.close()


@pytest.fixture(scope="session")
def memcached_trio():
    from tests.servers import MemcachedServer

    servers = [MemcachedServer() for _ in range(3)]
    yield servers
    for s in servers:
        s.close()


def make_memcached(location, backend="MemcachedCache", **params):
    """A memcached backend with a key prefix no other test uses."""
    from django_rustcache import memcached

    params.setdefault("KEY_PREFIX", f"t{next(_prefixes)}")
    return getattr(memcached, backend)(location, params)


# --- redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server():
    from tests.servers import RedisServer

    server = RedisServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_unix_server():
    from tests.servers import RedisServer

    server = RedisServer(unix=True)
    yield server
    server.close()


def make_redis(location, **params):
    """A redis backend with a key prefix no other test uses."""
    from django_rustcache.redis import RedisCache

    params.setdefault("KEY_PREFIX", f"r{next(_prefixes)}")
    return RedisCache(location, params)


@pytest.fixture(scope="session")
def redis_cluster():
    """A Redis Cluster (3 primaries, a replica each), made once for the session."""
    from tests.servers import RedisCluster

    cluster = RedisCluster()
    yield cluster
    cluster.close()
