"""A small Django site on django_rustcache's in-process LRUObjectCache, exercised for real.

It starts the site on a loopback port (wsgiref, in a thread of this process), sends it HTTP
requests, and shows, per caching layer, which responses came from the cache and how long each
took, then the cache's own stats. No external server is needed.

Layers: the per-site cache middleware, ``@cache_page``, the ``{% cache %}`` template fragment
tag, and the low-level API (``cache.get_or_set``, ``cache.incr``, ``cache.get_many``).

    python demo/demo.py
"""

from __future__ import annotations

import http.client
import statistics
import sys
import threading
import time
from collections import Counter
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings

# Each "expensive" piece of work sleeps this long, standing in for queries and rendering.
WORK_SECONDS = 0.03

TEMPLATE = """<html><body>
<h1>Dashboard</h1>
<p>Rendered for {{ user }} at {{ now }}.</p>
{% load cache %}
{% cache 60 sidebar %}<aside>{{ sidebar.render }}</aside>{% endcache %}
</body></html>"""

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="demo-only-not-secret",
    CACHES={
        "default": {
            "BACKEND": "django_rustcache.lru.LRUObjectCache",
            "LOCATION": "demo",
            "TIMEOUT": 60,
            "OPTIONS": {"MAX_ENTRIES": 10_000},
        }
    },
    MIDDLEWARE=[
        "django.middleware.cache.UpdateCacheMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.cache.FetchFromCacheMiddleware",
    ],
    CACHE_MIDDLEWARE_SECONDS=60,
    CACHE_MIDDLEWARE_KEY_PREFIX="demo",
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": False}],
    INSTALLED_APPS=["django_rustcache"],
    USE_TZ=True,
)
django.setup()

from django.core.cache import cache  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.template import engines  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils import timezone  # noqa: E402
from django.views.decorators.cache import cache_page, never_cache  # noqa: E402

# How many times each piece of work really ran (a cache hit does not run it).
work_done: Counter[str] = Counter()
_work_lock = threading.Lock()


def expensive(name: str) -> str:
    with _work_lock:
        work_done[name] += 1
    time.sleep(WORK_SECONDS)
    return f"{name} computed at {timezone.now():%H:%M:%S.%f}"


def home(request):
    """Cached by the per-site middleware (every GET page is, unless it says otherwise)."""
    return HttpResponse(f"<h1>Home</h1><p>{expensive('home page')}</p>")


@cache_page(60, key_prefix="reports")
def report(request, year):
    """Cached per URL by @cache_page."""
    return HttpResponse(f"<h1>Report {year}</h1><p>{expensive(f'report {year}')}</p>")


class Sidebar:
    def render(self):
        return expensive("sidebar fragment")


@never_cache
def dashboard(request):
    """Rendered on every request; only its sidebar is cached, by {% cache %}."""
    template = engines["django"].from_string(TEMPLATE)
    html = template.render({"user": request.GET.get("user", "guest"), "now": timezone.now(), "sidebar": Sidebar()})
    return HttpResponse(html)


@never_cache
def api_stats(request):
    """The low-level API: an expensive value memoised with get_or_set, a hit counter with incr."""
    summary = cache.get_or_set("api:summary", lambda: expensive("api summary"), timeout=60)
    cache.add("api:calls", 0, timeout=None)
    calls = cache.incr("api:calls")
    flags = cache.get_many(["feature:a", "feature:b"])
    return JsonResponse({"summary": summary, "calls": calls, "flags": flags})


urlpatterns = [
    path("", home),
    path("report/<int:year>/", report),
    path("dashboard/", dashboard),
    path("api/stats/", api_stats),
]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


def serve() -> tuple[WSGIServer, int]:
    from django.core.wsgi import get_wsgi_application

    server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_port


def main() -> int:
    cache.clear()
    cache.set_many({"feature:a": True, "feature:b": False}, timeout=None)
    cache.reset_stats()
    server, port = serve()
    print(f"Demo site on http://127.0.0.1:{port}/ with BACKEND {settings.CACHES['default']['BACKEND']}\n")

    layers = {
        "per-site middleware": ("/", "home page"),
        "@cache_page": ("/report/2026/", "report 2026"),
        "{% cache %} fragment": ("/dashboard/?user=ada", "sidebar fragment"),
        "low-level API": ("/api/stats/", "api summary"),
    }
    timings: dict[str, dict[bool, list[float]]] = {layer: {True: [], False: []} for layer in layers}
    print(f"{'layer':<22} {'request':<24} {'status':>6} {'served':>14} {'ms':>8}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    failures = 0
    for round_no in range(5):
        for layer, (url, work) in layers.items():
            before = work_done[work]
            start = time.perf_counter()
            conn.request("GET", url)
            response = conn.getresponse()
            response.read()
            ms = (time.perf_counter() - start) * 1000
            from_cache = work_done[work] == before
            timings[layer][from_cache].append(ms)
            served = "from cache" if from_cache else "computed"
            if response.status != 200:
                failures += 1
            if round_no < 2:
                print(f"{layer:<22} {url:<24} {response.status:>6} {served:>14} {ms:8.2f}")
    conn.close()
    server.shutdown()

    print("\nPer layer (5 requests each; the first one computes, the rest should come from the cache):")
    print(f"{'layer':<22} {'computed':>9} {'cached':>7} {'ms uncached':>12} {'ms cached':>10} {'speed-up':>9}")
    for layer, t in timings.items():
        uncached = statistics.median(t[False]) if t[False] else float("nan")
        cached = statistics.median(t[True]) if t[True] else float("nan")
        print(
            f"{layer:<22} {len(t[False]):>9} {len(t[True]):>7} {uncached:>12.2f} {cached:>10.2f} "
            f"{uncached / cached:>8.1f}x"
        )
        if len(t[False]) != 1 or len(t[True]) != 4:
            failures += 1

    stats = caches_stats()
    print(
        f"\nCache stats: hits={stats['hits']}, misses={stats['misses']}, sets={stats['sets']}, "
        f"entries={stats['store']['size']}, get p50={stats['latency']['get']['p50_seconds'] * 1e6:.1f} us"
    )
    print(f"Work really done: {dict(work_done)}")
    if failures:
        print(f"\nDEMO FAILED: {failures} unexpected result(s)")
        return 1
    print("\nEvery layer served repeat requests from LRUObjectCache.")
    return 0


def caches_stats() -> dict:
    from django.core.cache import caches

    return caches["default"].stats()


if __name__ == "__main__":
    sys.exit(main())
