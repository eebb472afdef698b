"""The redis backends: ``RedisCache`` (Django's RedisCache and django-redis's, on every topology),
``RedisClusterCache``, django-redis's ``get_redis_connection`` and the lock."""

from django_rustcache.redis.backend import RedisCache, RedisClusterCache
from django_rustcache.redis.lock import Lock, LockError
from django_rustcache.redis.options import location_url
from django_rustcache.redis.raw import get_redis_connection

__all__ = ["Lock", "LockError", "RedisCache", "RedisClusterCache", "get_redis_connection", "location_url"]

# The public classes say where they are imported from (as they did when this was one module):
# ``type(cache).__module__`` names the BACKEND path, and pickles refer to it.
for _public in (RedisCache, RedisClusterCache, Lock, LockError):
    _public.__module__ = __name__
del _public
