"""The caches' admin pages: the overview (every alias), one alias (servers, metrics, charts) and
its key browser. Behind the admin's login (staff only) and CSRF protection; seeing needs
``rustcache_admin.view_cache``, deleting keys ``rustcache_admin.delete_cache``."""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.cache import caches
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from django_rustcache.contrib.admin import browse, charts, history
from django_rustcache.contrib.admin.models import Cache

__all__ = ["CacheAdmin"]


def _token(key: bytes) -> str:
    """A key as it goes in a URL (a key may hold any byte)."""
    return base64.urlsafe_b64encode(key).decode()


def _key(token: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(token.encode())
    except (binascii.Error, ValueError):
        raise Http404("no such key") from None


def _where(stats: Any) -> str:
    """Where a cache's data is: its servers, or this process (the LRU, by its LOCATION)."""
    location = stats["location"]
    if stats["servers"] or not isinstance(location, str):
        return ", ".join(map(str, location or ()))
    return f"this process ({location})" if location else "this process"


def _ours(cache: Any) -> bool:
    return callable(getattr(cache, "stats", None)) and type(cache).__module__.startswith("django_rustcache.")


@admin.register(Cache)
class CacheAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<str:alias>/", wrap(self.alias_view), name="rustcache_admin_alias"),
            path("<str:alias>/keys/", wrap(self.keys_view), name="rustcache_admin_keys"),
            path("<str:alias>/key/", wrap(self.key_view), name="rustcache_admin_key"),
            path("<str:alias>/delete/", wrap(require_POST(self.delete_keys_view)), name="rustcache_admin_delete"),
            path("", wrap(self.changelist_view), name="rustcache_admin_cache_changelist"),
        ]

    # --- helpers -------------------------------------------------------------------------------

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        history.start()
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "pid": os.getpid(),
            "can_delete": self.has_delete_permission(request),
            **extra,
        }

    @staticmethod
    def _cache(alias: str) -> Any:
        if alias not in settings.CACHES:
            raise Http404("no such cache alias")
        return caches[alias]

    # --- views ---------------------------------------------------------------------------------

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        rows = []
        for alias in settings.CACHES:
            cache: Any = caches[alias]
            row: dict[str, Any] = {"alias": alias, "backend": f"{type(cache).__module__}.{type(cache).__qualname__}"}
            if _ours(cache):
                stats = cache.stats()
                looked = stats["hits"] + stats["misses"]
                row.update(
                    ours=True,
                    location=_where(stats),
                    servers=stats["servers"],
                    up=sum(1 for s in stats["servers"] if s.get("up")),
                    hit_ratio=stats["hits"] / looked if looked else None,
                    calls=sum(sum(o.values()) for o in stats["calls"].values()),
                    failures=stats["failures"],
                )
            rows.append(row)
        context = self._context(request, "Caches", rows=rows)
        return TemplateResponse(request, "rustcache_admin/overview.html", context)

    def alias_view(self, request: HttpRequest, alias: str) -> HttpResponse:
        cache = self._cache(alias)
        if not _ours(cache):
            raise Http404("not a django-rustcache backend")
        stats = cache.stats()
        history.sample()
        series = history.series(alias)
        methods = sorted(stats["latency"], key=lambda m: -stats["latency"][m]["count"])
        method = request.GET.get("method") or (methods[0] if methods else "")
        latency = stats["latency"].get(method)
        looked = stats["hits"] + stats["misses"]
        calls = [
            {"method": m, "outcomes": sorted(o.items()), "total": sum(o.values()), "latency": stats["latency"].get(m)}
            for m, o in sorted(stats["calls"].items())
        ]
        context = self._context(
            request,
            f"Cache “{alias}”",
            alias=alias,
            stats=stats,
            where=_where(stats),
            calls=calls,
            hit_ratio=stats["hits"] / looked if looked else None,
            methods=methods,
            method=method,
            hit_chart=charts.line("Hit ratio over time", series["hit_ratio"], lambda v: f"{v:.0%}", top=1.0),
            ops_chart=charts.line("Calls per second", series["ops"], lambda v: f"{v:.1f}/s"),
            latency_chart=charts.histogram(
                f"Latency of {method}", [tuple(b) for b in latency["buckets"]] if latency else []
            ),
            interval=history._interval(),
        )
        return TemplateResponse(request, "rustcache_admin/alias.html", context)

    def keys_view(self, request: HttpRequest, alias: str) -> HttpResponse:
        cache = self._cache(alias)
        pattern = request.GET.get("pattern") or "*"
        cursor = request.GET.get("cursor", "")
        rows: list[browse.Row] = []
        following = None
        note = error = ""
        try:
            rows, following, note = browse.browser_for(cache).page(pattern, cursor)
        except browse.Unlistable as exc:
            error = str(exc)
        except Exception as exc:  # (a server down: said on the page)
            error = f"{type(exc).__name__}: {exc}"
        base = reverse("admin:rustcache_admin_key", args=[alias])
        context = self._context(
            request,
            f"Keys of “{alias}”",
            alias=alias,
            pattern=pattern,
            rows=[{"row": r, "token": _token(r.key), "url": f"{base}?{urlencode({'k': _token(r.key)})}"} for r in rows],
            next_url=(f"?{urlencode({'pattern': pattern, 'cursor': following})}" if following else ""),
            note=note,
            error=error,
        )
        return TemplateResponse(request, "rustcache_admin/keys.html", context)

    def key_view(self, request: HttpRequest, alias: str) -> HttpResponse:
        cache = self._cache(alias)
        key = _key(request.GET.get("k", ""))
        try:
            details = browse.browser_for(cache).details(key)
        except browse.Unlistable as exc:
            raise Http404(str(exc)) from None
        except ValueError as exc:
            raise Http404(str(exc)) from None
        except Exception as exc:  # (a server down or silent: said on the keys page)
            messages.error(request, f"{type(exc).__name__}: {exc}")
            return HttpResponseRedirect(reverse("admin:rustcache_admin_keys", args=[alias]))
        if details is None:
            raise Http404("no such key (it may have expired or been deleted)")
        context = self._context(request, f"Key in “{alias}”", alias=alias, d=details, token=_token(key))
        return TemplateResponse(request, "rustcache_admin/key.html", context)

    def delete_keys_view(self, request: HttpRequest, alias: str) -> HttpResponse:
        cache = self._cache(alias)
        if not self.has_delete_permission(request):
            raise PermissionDenied
        keys = [_key(t) for t in request.POST.getlist("k")]
        try:
            gone = browse.browser_for(cache).delete(keys)
        except (browse.Unlistable, ValueError) as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Deleted {gone} of {len(keys)} key(s).")
        back = reverse("admin:rustcache_admin_keys", args=[alias])
        pattern = request.POST.get("pattern")
        return HttpResponseRedirect(f"{back}?{urlencode({'pattern': pattern})}" if pattern else back)
