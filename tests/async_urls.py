"""URLs for the ASGI tests: an async view behind ``cache_page`` (Django's cache middleware), and
one that awaits the cache itself."""

from __future__ import annotations

from django.core.cache import cache
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.cache import cache_page

CALLS = {"n": 0}


async def counted(request):
    CALLS["n"] += 1
    return HttpResponse(f"call {CALLS['n']}")


async def direct(request):
    if not await cache.aadd("visits", 1):
        await cache.aincr("visits")
    return JsonResponse({"visits": await cache.aget("visits"), "greeting": await cache.aget("greeting")})


def sync_counted(request):
    CALLS["n"] += 1
    return HttpResponse(f"call {CALLS['n']}")


urlpatterns = [
    path("cached/", cache_page(60)(counted)),
    path("sync-cached/", cache_page(60)(sync_counted)),
    path("direct/", direct),
]
