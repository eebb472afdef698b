"""What the ORM query cache did in this process: reads answered by the cache (hit), read from the
database and kept (miss), or read from it past the cache (bypass: the cache down, or owing an
invalidation); results stored; writes seen, by their statement's verb (the write path:
``insert``, ``update``, ``delete``, ``schema`` for CREATE/ALTER/DROP, ``other``); tables given
new generations, and the invalidations that failed (retried before the cache is used again).

``stats()`` returns them; ``reset_stats()`` zeroes them. They are in the Prometheus collector
(``django_rustcache_orm_*``) and the OpenTelemetry instruments as well.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

__all__ = ["count", "read", "recorder", "reset_stats", "stats", "write_path"]

# Told of each read of this context (the debug toolbar's panel sets it for a request):
# (outcome, sql, params, database alias, model label).
recorder: ContextVar[Callable[[str, str, Any, str, str], None] | None] = ContextVar(
    "django_rustcache_orm_recorder", default=None
)

_lock = threading.Lock()
_counts: Counter[str] = Counter()

_SCHEMA = frozenset({"create", "alter", "drop", "rename", "truncate"})
_PATHS = frozenset({"insert", "update", "delete", "replace", "merge"})


def count(name: str, n: int = 1) -> None:
    """Add `n` to counter `name` (``read.hit``, ``store``, ``write.update``, ...)."""
    with _lock:
        _counts[name] += n


def read(outcome: str, sql: str | None, params: Any, db: str, model: Any, query: Any = None) -> None:
    """Count a read (``hit``, ``miss`` or ``bypass``) and tell this context's recorder (a hit
    found by the query's structure has no SQL yet: it is compiled from ``query`` only then)."""
    count("read." + outcome)
    told = recorder.get()
    if told is None:
        return
    if sql is None and query is not None:
        try:
            sql, params = type(query).get_compiler(query, using=db).as_sql()
        except Exception as exc:  # (shown in its place)
            sql, params = f"(not compiled: {exc!r})", ()
    told(outcome, sql or "", params, db, model._meta.label if model is not None else "")


def write_path(verb: str | None) -> str:
    """The write path a statement's leading verb is counted under."""
    verb = (verb or "").lower()
    if verb in _SCHEMA:
        return "schema"
    return verb if verb in _PATHS else "other"


def stats() -> dict[str, Any]:
    """``reads`` (hit, miss, bypass), ``stores``, ``store_failures``, ``writes`` (by path),
    ``invalidations`` (tables given new generations), ``invalidation_failures``, and the
    cache alias the ORM cache uses."""
    from django_rustcache.orm import config

    with _lock:
        c = dict(_counts)
    try:
        alias = config.cache._alias()
    except Exception:  # (settings not ready: no alias yet)
        alias = None
    return {
        "alias": alias,
        "reads": {r: c.get(f"read.{r}", 0) for r in ("hit", "miss", "bypass")},
        "stores": c.get("store", 0),
        "store_failures": c.get("store.failed", 0),
        "writes": {k.removeprefix("write."): v for k, v in sorted(c.items()) if k.startswith("write.")},
        "invalidations": c.get("invalidation", 0),
        "invalidation_failures": c.get("invalidation.failed", 0),
    }


def reset_stats() -> None:
    """Zero every count."""
    with _lock:
        _counts.clear()
