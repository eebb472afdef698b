"""A django-debug-toolbar panel that shows every cache call of the request, sync and async.

List it in place of (or next to) the toolbar's own cache panel::

    DEBUG_TOOLBAR_PANELS = [
        ...
        "django_rustcache.debug_toolbar.CachePanel",
    ]

It records each call made on a cache of ``settings.CACHES`` while the request runs: alias,
method, key(s), outcome (hit, miss, stored, not stored, deleted, error...), time and where in
the site's code it was made. ``a*`` calls are recorded when the awaited call completes, so a
native async call is timed for what it really took. A call a backend makes inside another (a
``get_or_set`` that does a ``get`` and an ``add``) is shown once, as the call the site made. It
works for every Django cache backend, ours or not; our backends' extensions (``ttl``,
``delete_pattern``, the hash and set commands...) are recorded too.

The ORM query cache's reads of the request are listed with their SQL: answered by the cache
(the SQL was not run), read from the database and stored, or read past the cache.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from debug_toolbar.panels import Panel
from django.conf import settings
from django.core.cache import CacheHandler, caches
from django.template import Context, Engine
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_rustcache.orm import stats as _orm_stats

__all__ = ["CachePanel"]

# Django's cache API, then our backends' extensions. Their a* twins are recorded too.
_METHODS = (
    "get",
    "get_many",
    "has_key",
    "get_or_set",
    "set",
    "add",
    "set_many",
    "touch",
    "delete",
    "delete_many",
    "incr",
    "decr",
    "incr_version",
    "decr_version",
    "clear",
    # django-redis / django-redis-cache extensions
    "ttl",
    "pttl",
    "expire",
    "pexpire",
    "expire_at",
    "pexpire_at",
    "persist",
    "keys",
    "delete_pattern",
    "reinsert_keys",
    "hset",
    "hget",
    "hdel",
    "hlen",
    "hkeys",
    "hexists",
    "hgetall",
    "hmget",
    "sadd",
    "srem",
    "scard",
    "smembers",
    "sismember",
    "smismember",
    "spop",
    "srandmember",
    "smove",
    "sdiff",
    "sinter",
    "sunion",
    "sdiffstore",
    "sinterstore",
    "sunionstore",
    "zadd",
    "zrem",
    "zcard",
    "zcount",
    "zscore",
    "zrank",
    "zincrby",
    "zrange",
    "zrevrange",
    "zrangebyscore",
    "zrevrangebyscore",
    "zremrangebyscore",
    "zpopmin",
    "zpopmax",
    # memcached
    "server_stats",
)
_MANY_KEYS = frozenset({"get_many", "delete_many"})
_NO_KEY = frozenset({"clear", "incr_version_all", "server_stats", "reinsert_keys"})
_PATTERN = frozenset({"keys", "delete_pattern"})

# The panel recording this context's calls (a request and the tasks and threads it starts).
_current: contextvars.ContextVar[CachePanel | None] = contextvars.ContextVar(
    "django_rustcache_debug_panel", default=None
)
# Set while a recorded call runs: the calls it makes itself are not recorded.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("django_rustcache_debug_inside", default=False)
_MISSING = object()
_PATCHED = "_rustcache_panel_patched"
_SKIP = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(inspect.getfile(caches.__class__))).rsplit(os.sep, 2)[0] + os.sep,
    "<frozen ",
    os.sep + "asgiref" + os.sep,
    os.sep + "debug_toolbar" + os.sep,
    os.sep + "asyncio" + os.sep,
    os.sep + "concurrent" + os.sep,
    os.sep + "threading.py",
    os.sep + "contextlib.py",
)
_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
_SHOWN = 120


def _short(value: Any, limit: int = _SHOWN) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # (a value whose repr fails is shown as such)
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _caller() -> str:
    """``file:line in function`` of the first frame outside Django, the toolbar, asyncio and
    us: the site's line that made the call."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_SKIP[:2]) and not any(part in name for part in _SKIP[2:]):
            return f"{name}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def _keys_of(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    if method in _NO_KEY:
        return []
    if method in _PATTERN:
        first = kwargs.get("search", kwargs.get("pattern", args[0] if args else ""))
        return [_short(first)]
    if method == "set_many":
        data = kwargs.get("data", args[0] if args else {})
        return [_short(k) for k in (data or {})]
    if method in _MANY_KEYS:
        keys = kwargs.get("keys", args[0] if args else ())
        return [_short(k) for k in keys]
    key = kwargs.get("key", kwargs.get("name", args[0] if args else None))
    return [] if key is None else [_short(key)]


class _Call:
    """How one call is made and what its outcome was."""

    __slots__ = ("args", "default", "kwargs", "method", "outcome")

    def __init__(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.method = method
        self.outcome = ""
        self.default: Any = None
        if method in _MANY_KEYS:
            # Keys given as an iterator are read once, here: the call gets them as a list.
            if args and not isinstance(args[0], (list, tuple)):
                args = (list(args[0]), *args[1:])
            elif "keys" in kwargs and not isinstance(kwargs["keys"], (list, tuple)):
                kwargs = {**kwargs, "keys": list(kwargs["keys"])}
        if method == "get":
            # A private default tells a miss from a stored value equal to the caller's default.
            if len(args) >= 2:
                self.default, args = args[1], (args[0], _MISSING, *args[2:])
            else:
                self.default = kwargs.get("default")
                kwargs = {**kwargs, "default": _MISSING}
        elif method == "get_or_set":
            # A default made by calling it means the key was missing.
            if len(args) >= 2:
                args = (args[0], self._made(args[1]), *args[2:])
            elif "default" in kwargs:
                kwargs = {**kwargs, "default": self._made(kwargs["default"])}
        self.args = args
        self.kwargs = kwargs

    def _made(self, default: Any) -> Callable[[], Any]:
        def make() -> Any:
            self.outcome = "miss (set)"
            return default() if callable(default) else default

        return make

    def result(self, value: Any) -> Any:
        """The value to give the caller, having noted the outcome."""
        method = self.method
        if method == "get":
            if value is _MISSING:
                self.outcome = "miss"
                return self.default
            self.outcome = "hit"
        elif method == "get_or_set":
            self.outcome = self.outcome or "hit"
        elif method == "get_many":
            asked = len(_keys_of(method, self.args, self.kwargs))
            self.outcome = f"{len(value)} of {asked} hit"
        elif method in ("has_key", "hexists", "sismember"):
            self.outcome = "hit" if value else "miss"
        elif method == "add":
            self.outcome = "stored" if value else "not stored"
        elif method == "set":
            self.outcome = "not stored" if value is False else "stored"
        elif method == "set_many":
            self.outcome = f"not stored: {len(value)}" if value else "stored"
        elif method in ("delete", "touch", "persist", "expire", "pexpire", "expire_at", "pexpire_at"):
            self.outcome = ("ok" if value else "miss") if isinstance(value, bool) else "ok"
        else:
            self.outcome = "ok"
        return value

    def failed(self, exc: BaseException) -> None:
        if self.method in ("incr", "decr", "incr_version", "decr_version") and isinstance(exc, ValueError):
            self.outcome = "miss (ValueError)"
        else:
            self.outcome = f"error: {type(exc).__name__}"


def _wrap(cache: Any, alias: str, name: str) -> None:
    method = name[1:] if name.startswith("a") and name[1:] in _METHODS else name
    original = getattr(cache, name)
    backend = f"{type(cache).__module__}.{type(cache).__qualname__}"

    @functools.wraps(original)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        panel = _current.get()
        if panel is None or _inside.get():
            return original(*args, **kwargs)
        timing = _Timing(panel, alias, backend, name, _Call(method, args, kwargs))
        token = _inside.set(True)
        try:
            value = original(*timing.call.args, **timing.call.kwargs)
        except BaseException as exc:
            timing.failed(exc)
            raise
        finally:
            _inside.reset(token)
        if name != method and inspect.isawaitable(value):
            return _completed(timing, value)
        return timing.done(value)

    setattr(cache, name, recorded)


class _Timing:
    """One recorded call on its way: where it was made, when it began; recorded when it ends."""

    __slots__ = ("alias", "backend", "call", "name", "panel", "start", "where")

    def __init__(self, panel: CachePanel, alias: str, backend: str, name: str, call: _Call) -> None:
        self.panel, self.alias, self.backend, self.name, self.call = panel, alias, backend, name, call
        self.where = _caller()
        self.start = time.perf_counter()

    def _record(self) -> None:
        seconds = time.perf_counter() - self.start
        self.panel._record(self.alias, self.backend, self.name, self.call, seconds, self.where)

    def failed(self, exc: BaseException) -> None:
        self.call.failed(exc)
        self._record()

    def done(self, value: Any) -> Any:
        value = self.call.result(value)
        self._record()
        return value


async def _completed(timing: _Timing, pending: Any) -> Any:
    token = _inside.set(True)
    try:
        value = await pending
    except BaseException as exc:
        timing.failed(exc)
        raise
    finally:
        _inside.reset(token)
    return timing.done(value)


def _patch(cache: Any, alias: str) -> None:
    """Wrap the cache's methods once; the wrappers record only while a panel is current."""
    if cache.__dict__.get(_PATCHED):
        return
    for method in _METHODS:
        for name in (method, "a" + method):
            if callable(getattr(cache, name, None)):
                _wrap(cache, alias, name)
    cache.__dict__[_PATCHED] = True


class CachePanel(Panel):  # type: ignore[misc]  # (the toolbar has no type hints)
    """Every cache call of the request (sync and async), totals per alias, and the ORM query
    cache's reads with their SQL."""

    template = "django_rustcache/debug_toolbar/cache.html"
    is_async = True
    nav_title = _("Cache")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []
        self.orm: list[dict[str, Any]] = []
        self._tokens: list[tuple[contextvars.Token[Any], contextvars.Token[Any]]] = []

    @classmethod
    def ready(cls) -> None:
        if getattr(CacheHandler, "_rustcache_panel", False):
            return
        create = CacheHandler.create_connection

        @functools.wraps(create)
        def create_connection(self: CacheHandler, alias: str) -> Any:
            cache = create(self, alias)
            if _current.get() is not None:
                _patch(cache, alias)
            return cache

        CacheHandler.create_connection = create_connection  # type: ignore[method-assign]
        CacheHandler._rustcache_panel = True  # type: ignore[attr-defined]

    # Recording

    def _record(self, alias: str, backend: str, name: str, call: _Call, seconds: float, where: str) -> None:
        self.calls.append(
            {
                "alias": alias,
                "backend": backend,
                "method": name,
                "is_async": name != call.method,
                "keys": _keys_of(call.method, call.args, call.kwargs),
                "outcome": call.outcome,
                "ms": seconds * 1000,
                "where": where,
            }
        )

    def _record_orm(self, outcome: str, sql: str, params: Any, db: str, model: str) -> None:
        self.orm.append({"outcome": outcome, "sql": sql, "params": _short(params, 400), "db": db, "model": model})

    def enable_instrumentation(self) -> None:
        for alias in caches:
            if hasattr(cast(Any, caches)._connections, alias):
                _patch(caches[alias], alias)
        self._tokens.append((_current.set(self), _orm_stats.recorder.set(self._record_orm)))

    def disable_instrumentation(self) -> None:
        while self._tokens:
            panel, orm = self._tokens.pop()
            try:
                _orm_stats.recorder.reset(orm)
                _current.reset(panel)
            except ValueError:  # (reset in another context than it was set in)
                _orm_stats.recorder.set(None)
                _current.set(None)

    # The toolbar's API

    def _totals(self) -> list[dict[str, Any]]:
        totals: dict[str, dict[str, Any]] = {}
        for call in self.calls:
            t = totals.setdefault(
                call["alias"],
                {
                    "alias": call["alias"],
                    "backend": call["backend"],
                    "calls": 0,
                    "hits": 0,
                    "misses": 0,
                    "errors": 0,
                    "ms": 0.0,
                },
            )
            t["calls"] += 1
            t["ms"] += call["ms"]
            outcome = call["outcome"]
            if outcome.startswith("error"):
                t["errors"] += 1
            elif call["method"] in ("get_many", "aget_many"):
                found, _of, asked, _hit = outcome.split(" ", 3)
                t["hits"] += int(found)
                t["misses"] += int(asked) - int(found)
            elif outcome == "hit":
                t["hits"] += 1
            elif outcome.startswith("miss"):
                t["misses"] += 1
        return list(totals.values())

    def generate_stats(self, request: Any, response: Any) -> None:
        orm = {k: sum(1 for r in self.orm if r["outcome"] == k) for k in ("hit", "miss", "bypass")}
        self.record_stats(
            {
                "calls": self.calls,
                "total_calls": len(self.calls),
                "total_ms": sum(c["ms"] for c in self.calls),
                "totals": self._totals(),
                "orm_reads": self.orm,
                "orm": orm,
                "aliases": list(getattr(settings, "CACHES", {})),
            }
        )

    @property
    def nav_subtitle(self) -> str:
        stats = self.get_stats()
        n = stats.get("total_calls", 0)
        text = ngettext("%(n)d call in %(ms).2fms", "%(n)d calls in %(ms).2fms", n) % {
            "n": n,
            "ms": stats.get("total_ms", 0.0),
        }
        orm = stats.get("orm") or {}
        if orm.get("hit"):
            text += ngettext(", %(n)d query saved", ", %(n)d queries saved", orm["hit"]) % {"n": orm["hit"]}
        return text

    @property
    def title(self) -> str:
        return str(_("Cache calls"))

    @property
    def content(self) -> str:
        return _engine().get_template(self.template).render(Context(self.get_stats(), autoescape=True))

    def generate_server_timing(self, request: Any, response: Any) -> None:
        stats = self.get_stats()
        self.record_server_timing(
            "total_time", f"Cache {stats.get('total_calls', 0)} Calls", stats.get("total_ms", 0.0)
        )


@functools.cache
def _engine() -> Engine:
    """Templates of ours, found whether or not ``django_rustcache`` is an installed app."""
    return Engine(dirs=[_TEMPLATE], app_dirs=False, builtins=["django.templatetags.i18n"])
