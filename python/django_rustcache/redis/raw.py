"""``get_redis_connection``: a redis-py client on the same server, db, credentials and TLS as one
of our redis caches, for what a cache API does not cover (pipelines, pub/sub, Lua, rate
limiters), as django-redis sites have it. redis-py is an optional extra: ``pip install
django-rustcache[redis-py]``."""

from __future__ import annotations

import os
import random
import threading
import weakref
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from django_rustcache._core import RedisClient
from django_rustcache.redis.tls import ALL_NAMES as TLS_NAMES
from django_rustcache.redis.tls import TLS_SCHEMES

_made: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()


def _redis_py() -> Any:
    try:
        import redis
    except ImportError as e:
        raise ImproperlyConfigured(
            "get_redis_connection() returns a redis-py client, and redis-py is not installed: "
            "pip install 'django-rustcache[redis-py]' (or redis>=5)"
        ) from e
    return redis


def _connection_kwargs(url: str, s: Any) -> dict[str, Any]:
    """redis-py's keyword arguments for one of the core's server URLs (``redis://``, ``rediss://``,
    ``unix://``, credentials and db in it or in the settings, TLS settings from OPTIONS)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    kwargs: dict[str, Any] = {
        "username": (unquote(parts.username) if parts.username else None) or query.get("user") or s.username,
        "password": (unquote(parts.password) if parts.password else None) or query.get("pass") or s.password,
        "socket_timeout": s.socket_timeout,
        "socket_connect_timeout": s.connect_timeout,
        "client_name": s.client_name,
    }
    if parts.scheme == "unix":
        kwargs["unix_socket_path"] = unquote(parts.path)
        kwargs["db"] = int(query.get("db", 0))
        return kwargs
    kwargs.update(host=parts.hostname or "localhost", port=parts.port or 6379, db=int(parts.path.strip("/") or 0))
    if parts.scheme in TLS_SCHEMES:
        kwargs["ssl"] = True
        kwargs.update((k, v) for k, v in s.tls_options if v is not None)
        kwargs.update((k, v) for k, v in query.items() if k in TLS_NAMES)
    return kwargs


def get_redis_connection(alias: str = "default", write: bool = True) -> Any:
    """A redis-py client on the server a call of ``caches[alias]`` would use: the leader for a
    write, a replica (when LOCATION lists some) for a read; for Sentinel the master the sentinels
    name now (or a replica), for a Redis Cluster a ``RedisCluster``. Clients are kept per settings,
    role and process, so their pools are shared as django-redis's are. A sharded cache has a
    server per key, so none (as django-redis's ShardClient): ``cache.client.get_server(made_key)``
    gives the key's, as there (``cache.get_client(made_key)`` on django-redis-cache's classes)."""
    from django.core.cache import caches

    from django_rustcache.redis.backend import RedisCache

    cache = caches[alias]
    if not isinstance(cache, RedisCache):
        raise NotImplementedError(f"caches[{alias!r}] ({type(cache).__name__}) is not a django-rustcache redis cache")
    return raw_client(cache, write)


def raw_client(cache: Any, write: bool = True) -> Any:
    """The redis-py client of ``get_redis_connection`` for a cache instance: one per settings,
    role and process (Django's per-thread instances of an alias share it)."""
    redis = _redis_py()
    if cache._config_error is not None:
        raise cache._config_error
    s = cache._settings
    key = (s, write, os.getpid())
    with _lock:
        client = _made.get(key)
        if client is None:
            client = _made[key] = _make(redis, cache, s, write)
    return client


def server_client(cache: Any, index: int) -> Any:
    """A redis-py client on one of a cache's servers (its place in LOCATION, the leader first),
    for the predecessors' calls that name a server: one per settings, server and process."""
    redis = _redis_py()
    if cache._config_error is not None:
        raise cache._config_error
    s = cache._settings
    if cache._cluster or s.sentinel is not None:
        raise NotImplementedError(
            "a Redis Cluster or a Sentinel service names no fixed server: use get_redis_connection()"
        )
    key = (s, "server", index, os.getpid())
    with _lock:
        client = _made.get(key)
        if client is None:
            client = _made[key] = redis.Redis(
                max_connections=s.max_connections, **_connection_kwargs(s.servers[index], s)
            )
    return client


def shard_of(cache: Any, made_key: str) -> int:
    """The place in LOCATION of the server that holds a made key (its shard; 0 unsharded)."""
    if cache._cluster:
        raise NotImplementedError("a Redis Cluster routes each key by its slot: use get_redis_connection()")
    return int(cache._cache.node_of(made_key))


class Client(RedisClient):
    """The client class our redis caches make. A cache's view of it (``cache._cache``) also
    answers Django's ``RedisCacheClient.get_client(key=None, *, write=False)``, which sites on
    Django's RedisCache call for a raw redis-py client (``cache._cache.get_client()``)."""

    # The cache this view belongs to (set by the cache, held weakly: the cache holds the view).
    _backend: weakref.ref[Any] | None = None

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        """A redis-py client: the leader for a write, else a replica when LOCATION lists some
        (as ``get_redis_connection(alias, write)``); ``key`` is not used, as in Django."""
        backend = None if self._backend is None else self._backend()
        if backend is None:
            raise NotImplementedError("get_client() answers on a cache's own client: cache._cache.get_client()")
        return raw_client(backend, write)


class DjangoRedisClient:
    """What django-redis sites reach through ``cache.client``: ``get_client(write)``, the raw
    client that django-redis's own ``django_redis.get_redis_connection()`` asks for, so a site
    that keeps that import keeps working; with a sharding CLIENT_CLASS, ShardClient's
    ``get_server(key)`` and ``get_server_name(key)`` for a made key."""

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def get_client(self, write: bool = True, tried: Any = None, show_index: bool = False) -> Any:
        client = raw_client(self._cache, write)
        # (django-redis's index is the server's place in LOCATION: 0, the leader, for writes)
        return (client, 0) if show_index else client

    def get_server(self, key: Any) -> Any:
        return server_client(self._cache, shard_of(self._cache, str(key)))

    def get_server_name(self, key: Any) -> str:
        """The LOCATION entry of the server that holds a made key, as written there."""
        cache = self._cache
        return str(cache._server_names()[shard_of(cache, str(key))])


def _make(redis: Any, cache: Any, s: Any, write: bool) -> Any:
    if cache._cluster:
        from redis.cluster import ClusterNode, RedisCluster

        first = _connection_kwargs(s.servers[0], s)
        for name in ("db", "unix_socket_path", "host", "port"):
            first.pop(name, None)
        nodes = [
            ClusterNode(urlsplit(u).hostname, urlsplit(u).port or 6379)  # type: ignore[no-untyped-call]  # redis-py's
            for u in s.servers
        ]
        # It routes each command itself (writes and reads to the slot's primary).
        return RedisCluster(startup_nodes=nodes, **first)
    if cache._sharded and len(s.servers) > 1:
        raise NotImplementedError(
            "a sharded cache has one server per key: get_redis_connection() cannot choose one "
            "(django-redis's ShardClient has no raw client either)"
        )
    if s.sentinel is not None:
        from redis.sentinel import Sentinel

        kwargs = _connection_kwargs(s.servers[0], s)
        for name in ("host", "port", "unix_socket_path"):
            kwargs.pop(name, None)
        sentinel_kwargs = {"username": s.sentinel.username, "password": s.sentinel.password}
        if s.sentinel.tls is not None:
            sentinel_kwargs["ssl"] = True
        sentinel = Sentinel(list(s.sentinel.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs)
        pick = sentinel.master_for if write or not s.sentinel.replica_reads else sentinel.slave_for
        return pick(s.sentinel.service)
    servers = s.servers
    url = servers[0] if write or len(servers) == 1 else random.choice(servers[1:])
    return redis.Redis(max_connections=s.max_connections, **_connection_kwargs(url, s))
