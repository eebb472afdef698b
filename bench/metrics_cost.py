"""The metrics' cost in instructions, counted by callgrind (repeatable whatever else the machine
is doing, unlike a timed median on a shared VM): a get and a set through Django's API, N times,
with OPTIONS["METRICS"] on or off; run it with N and with 0 calls, and the difference over N is
one get+set pair's client-side instructions (the kernel's and the server's are not counted).

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/metrics_cost.py lru on 20000
    ... lru off 20000, lru on 0, lru off 0; memcached/redis take the server's port last.
"""

import sys

import django
from django.conf import settings

kind, on, n = sys.argv[1], sys.argv[2] == "on", int(sys.argv[3])
port = sys.argv[4] if len(sys.argv) > 4 else ""
backend = {
    "lru": ("django_rustcache.lru.LRUObjectCache", "cg"),
    "memcached": ("django_rustcache.memcached.MemcachedCache", f"127.0.0.1:{port}"),
    "redis": ("django_rustcache.redis.RedisCache", f"redis://127.0.0.1:{port}"),
}[kind]
settings.configure(CACHES={"default": {"BACKEND": backend[0], "LOCATION": backend[1], "OPTIONS": {"METRICS": on}}})
django.setup()
from django.core.cache import cache  # noqa: E402  (after the settings it reads)

cache.set("k", "v")
for _ in range(200):
    cache.get("k")
    cache.set("k", "v")
get, set_ = cache.get, cache.set
for _ in range(n):
    get("k")
    set_("k", "v")
