"""Pages that make a known sequence of cache calls (the tests check the panel shows each)."""

import asyncio
import contextlib

from django.core.cache import caches
from django.http import HttpResponse

from browser_tests.site.shop.models import Book

PAGE = "<html><head><title>{title}</title></head><body><h1>{title}</h1><p>{body}</p></body></html>"


def calls(request):
    lru, redis, memcached = caches["default"], caches["redis"], caches["memcached"]
    lru.set("greeting", "hello")
    lru.get("greeting")
    lru.get("absent", "fallback")
    redis.delete_many(["made"])
    redis.set("<script>alert(1)</script>", 1)
    redis.get_many(["<script>alert(1)</script>", "nothing-here"])
    redis.get_or_set("made", lambda: 42)
    memcached.add("counter", 1)
    memcached.incr("counter")
    memcached.delete("counter")
    with contextlib.suppress(ValueError):
        memcached.incr("counter")
    caches["locmem"].set("plain", 1)
    caches["locmem"].get_many(iter(["plain", "other"]))
    return HttpResponse(PAGE.format(title="calls", body="done"))


async def tagged(request):
    """Calls named after the request's tag, with a pause between them, so that requests served
    at once on one event loop interleave."""
    tag = request.GET["tag"]
    redis = caches["redis"]
    await redis.aset(f"tag:{tag}:1", tag)
    await asyncio.sleep(0.2)
    await redis.aget(f"tag:{tag}:1")
    await asyncio.sleep(0.2)
    await redis.adelete(f"tag:{tag}:1")
    return HttpResponse(PAGE.format(title=f"tagged {tag}", body="done"))


async def async_calls(request):
    redis = caches["redis"]
    await redis.aset("async-key", "value")
    await redis.aget("async-key")
    await redis.aget("async-absent")
    await caches["memcached"].ahas_key("async-absent")
    return HttpResponse(PAGE.format(title="async calls", body="done"))


def books(request):
    titles = [b.title for b in Book.objects.filter(title__startswith="B").order_by("title")]
    titles += [b.title for b in Book.objects.filter(title__startswith="B").order_by("title")]
    return HttpResponse(PAGE.format(title="books", body=", ".join(titles)))
