"""The redis backends: ``RedisCache`` (Django's RedisCache and django-redis's, on every topology),
``RedisClusterCache``, django-redis's ``get_redis_connection`` and the lock."""

from django_rustcache.redis.backend import RedisCache, RedisClusterCache
from django_rustcache.redis.lock import Lock, LockError
from django_rustcache.redis.options import location_url
from django_rustcache.redis.raw import get_redis_connection

__all__ = ["Lock", "LockError", "RedisCache", "RedisClusterCache", "get_redis_connection", "location_url"]
