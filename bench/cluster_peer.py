"""The peer of the cluster suite: Django's own RedisCache over redis-py's ``RedisCluster``, the
smallest change that makes Django's backend work on a cluster (django-redis has no cluster
client). One ``RedisCluster`` per process (it keeps the slot map and a pool per node);
``get_many`` with ``mget_nonatomic`` (a cluster's MGET may not span slots); everything else is
Django's RedisCacheClient as it is (its ``set_many`` pipeline and ``delete`` multi-key split are
redis-py's cluster versions)."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

_clients: dict[tuple[str, ...], Any] = {}
_lock = threading.Lock()


class ClusterCacheClient(RedisCacheClient):
    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        with _lock:
            client = _clients.get(tuple(self._servers))
            if client is None:
                from redis.cluster import ClusterNode, RedisCluster

                nodes = []
                for url in self._servers:
                    host, _, port = url.split("://", 1)[-1].rpartition(":")
                    nodes.append(ClusterNode(host, int(port)))
                client = _clients[tuple(self._servers)] = RedisCluster(startup_nodes=nodes)
            return client

    def get_many(self, keys: Any) -> dict[Any, Any]:
        keys = list(keys)
        values = self.get_client(None).mget_nonatomic(keys)
        return {k: self._serializer.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, data: dict[Any, Any], timeout: Any) -> None:
        pipeline = self.get_client(write=True).pipeline()
        for k, v in data.items():
            pipeline.set(k, self._serializer.dumps(v), ex=timeout)
        pipeline.execute()


class RedisPyClusterCache(RedisCache):
    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ClusterCacheClient
