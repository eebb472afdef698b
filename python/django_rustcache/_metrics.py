"""The metrics every backend records in its core, per cache alias: the one ``stats()`` shape,
the alias a backend belongs to, and the exporters (Prometheus when ``prometheus_client`` is
installed).

The cores count every call by method and outcome, the keys reads found and missed, the bytes of
keys and values sent and received, and each method's latency in log-linear buckets (four per
power of two). Network calls are all timed; the in-process store and the near cache's local
hits are timed one call in 16 (a clock read costs a tenth of such a hit), and counted every time.
"""

from __future__ import annotations

import re
import weakref
from typing import Any, TypedDict

from django_rustcache import _core

__all__ = ["CacheStats", "LatencyStats", "alias_of", "stats_shape", "track", "tracked"]


class LatencyStats(TypedDict):
    """One method's latencies: timed calls, their total, two quantiles (each the upper bound of
    its bucket, so at most a quarter above the truth) and the buckets that hold any."""

    count: int
    sum_seconds: float
    p50_seconds: float
    p99_seconds: float
    buckets: list[tuple[float, int]]


class CacheStats(TypedDict):
    """``cache.stats()`` of every backend."""

    alias: str
    """The alias in ``settings.CACHES`` (a backend made by hand: its class and LOCATION)."""
    backend: str
    location: Any
    """LOCATION as given, a URL's password replaced by ``***``."""
    metrics_enabled: bool
    since: float
    """Unix time the counts start from (the first call, or the last ``reset_stats()``)."""
    hits: int
    """Keys reads found (a ``get_many`` counts each key)."""
    misses: int
    """Keys reads did not find."""
    sets: int
    """Write calls that stored (``set``, ``add``, ``set_many``...)."""
    failures: int
    """Calls that ended in an error of the server or the connection (a refused key is not one)."""
    calls: dict[str, dict[str, int]]
    """method -> outcome -> calls. Outcomes: hit, miss, stored, not_stored, ok, error_timeout,
    error_connection, error_server_down, error_server, error_protocol, error_invalid_key, error."""
    latency: dict[str, LatencyStats]
    bytes_sent: int
    """Bytes of keys and values sent (the payload; not the protocol's framing)."""
    bytes_received: int
    """Bytes of values received."""
    servers: list[dict[str, Any]]
    """Each server's state (address, up, errors, last_error, connections); [] in-process."""
    store: dict[str, Any] | None
    """The in-process store's own counters (size, max_size, evictions, expirations, pickled)."""
    near_cache: dict[str, Any] | None
    """The near cache's (hits, misses, invalidations, flushes, entries, bytes), when on."""
    refused_values: int
    """Values read as misses because their signature did not verify (OPTIONS["SIGN"]), since
    the client was made."""


# The server's or the connection's failures (not a refused key, nor a value that cannot be stored).
_FAILURES = frozenset({"error_timeout", "error_connection", "error_server_down", "error_server", "error_protocol"})


def stats_shape(
    metrics: dict[str, Any],
    *,
    location: Any,
    servers: list[dict[str, Any]],
    store: dict[str, Any] | None = None,
    near_cache: dict[str, Any] | None = None,
    refused_values: int = 0,
) -> CacheStats:
    """The one ``stats()`` shape, from a core's metrics and the backend's own parts."""
    calls: dict[str, dict[str, int]] = metrics["calls"]
    return CacheStats(
        alias=metrics["alias"],
        backend=metrics["backend"],
        location=_redacted(location),
        metrics_enabled=metrics["enabled"],
        since=metrics["since"],
        hits=metrics["keys_found"],
        misses=metrics["keys_missed"],
        sets=sum(row.get("stored", 0) for row in calls.values()),
        failures=sum(n for row in calls.values() for outcome, n in row.items() if outcome in _FAILURES),
        calls=calls,
        latency=metrics["latency"],
        bytes_sent=metrics["bytes_sent"],
        bytes_received=metrics["bytes_received"],
        servers=servers,
        store=store,
        near_cache=near_cache,
        refused_values=refused_values,
    )


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def alias_of(backend: Any, location: Any, params: dict[str, Any]) -> tuple[str, bool]:
    """The alias of ``settings.CACHES`` whose entry made `backend` (Django makes a backend from
    its entry without its BACKEND and LOCATION), and True; for a backend made by hand, its class
    and LOCATION, and False. Aliases with the same settings are one cache: the first is named."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    cls = type(backend)
    try:
        caches = settings.CACHES if settings.configured else {}
    except Exception:  # (settings that cannot be read: a backend made by hand)
        caches = {}
    for alias, entry in caches.items():
        entry = dict(entry)
        path = entry.pop("BACKEND", None)
        if entry.pop("LOCATION", "") != location or entry != params or not isinstance(path, str):
            continue
        try:
            if path == _class_path(cls) or import_string(path) is cls:
                return alias, True
        except ImportError:
            continue
    return f"{cls.__name__}({_without_secrets(location)})", False


def _redacted(location: Any) -> Any:
    """LOCATION as given, a URL's password replaced by ``***`` (stats are shown and logged)."""
    if isinstance(location, (list, tuple)):
        return [_redacted(place) for place in location]
    return re.sub(r"(//[^:@/]*:)[^@/]*@", r"\1***@", location) if isinstance(location, str) else location


def _without_secrets(location: Any) -> str:
    """A LOCATION as a label: a URL's user and password left out (metrics are exported)."""
    places = location if isinstance(location, (list, tuple)) else [location]
    return ",".join(re.sub(r"//[^@/]*@", "//", str(place)) for place in places)


_UNSET = object()
_global_switch: Any = _UNSET


def _project_default() -> bool:
    """``RUSTCACHE_METRICS`` (default on), read once and again after a settings change."""
    global _global_switch
    if _global_switch is _UNSET:
        from django.conf import settings

        try:
            _global_switch = bool(getattr(settings, "RUSTCACHE_METRICS", True)) if settings.configured else True
        except Exception:
            _global_switch = True
    return bool(_global_switch)


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    global _global_switch
    if setting == "RUSTCACHE_METRICS":
        _global_switch = _UNSET


def metrics_enabled(options: dict[str, Any]) -> bool:
    """``OPTIONS["METRICS"]`` (default on), under the project-wide ``RUSTCACHE_METRICS``."""
    value = options.get("METRICS")
    if value is None:
        return _project_default()
    if isinstance(value, str):
        return value.strip().lower() not in {"0", "false", "no", "off"}
    return bool(value)


def _listen() -> None:
    from django.core.signals import setting_changed

    setting_changed.connect(_settings_changed, dispatch_uid="django_rustcache.metrics")


_listen()


_backends: weakref.WeakSet[Any] = weakref.WeakSet()


def track(backend: Any) -> None:
    """Remember a backend whose calls are counted (for the exporters' servers' state)."""
    _backends.add(backend)


def tracked() -> list[Any]:
    """The backends alive now whose calls are counted."""
    return list(_backends)


def snapshots() -> list[dict[str, Any]]:
    """Every alias's metrics alive in this process."""
    return list(_core.metrics_snapshots())
