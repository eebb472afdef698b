"""Our metrics through OpenTelemetry's global ``MeterProvider``, and, if asked, a span per call
following OpenTelemetry's database semantic conventions. Opt-in, by a setting::

    RUSTCACHE_OPENTELEMETRY = True                                # the metrics
    RUSTCACHE_OPENTELEMETRY = {"METRICS": True, "SPANS": True}    # and a span per network call

Instruments (meter ``django_rustcache``; attributes ``alias``, ``backend``, and as named):

* ``django_rustcache.calls`` (``{call}``; ``method``, ``outcome``), observable counter;
* ``django_rustcache.keys`` (``{key}``; ``result``: found / missed), observable counter;
* ``django_rustcache.sent_bytes`` and ``django_rustcache.received_bytes`` (``By``);
* ``django_rustcache.orm.reads`` (``result``), ``.orm.writes`` (``path``), ``.orm.invalidations``:
  the ORM query cache's counts (see ``django_rustcache.orm.stats``);
* ``django_rustcache.call.duration.sum`` (``s``) and ``django_rustcache.call.duration.count``
  (``{call}``) per ``method``, observable counters, and ``django_rustcache.call.duration.p99``
  (``s``), a gauge. (The cores keep each method's latencies as a histogram of their own; an
  OpenTelemetry histogram takes single measurements, which would cost every call a trip into
  Python: the sum, the count and the p99 are read from the cores at each collection instead.)

Spans (redis and memcached; the in-process store makes no client calls): kind CLIENT, named by
the operation (``GET``, ``SET``, ``MGET``... for redis; ``get``, ``set``, ``get_multi``... for
memcached), with ``db.system.name``, ``db.operation.name``, ``server.address``,
``server.port``, ``db.namespace`` (redis's db), ``error.type`` and an error status on failure.
Async calls' spans end when their future does. With spans off, calls pay nothing for them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from django_rustcache import _core

__all__ = ["enable", "settings_ask", "traced"]

_METER = "django_rustcache"
_lock = threading.Lock()
_enabled = False


def settings_ask() -> tuple[bool, bool]:
    """What ``RUSTCACHE_OPENTELEMETRY`` asks for: (metrics, spans)."""
    from django.conf import settings

    try:
        value = getattr(settings, "RUSTCACHE_OPENTELEMETRY", False) if settings.configured else False
    except Exception:  # (settings that cannot be read: nothing asked)
        return False, False
    if isinstance(value, dict):
        return bool(value.get("METRICS", True)), bool(value.get("SPANS", False))
    return bool(value), False


def _observe(read: Callable[[dict[str, Any]], Iterable[tuple[float, dict[str, str]]]]) -> Callable[[Any], Any]:
    """An observable instrument's callback: every alias's snapshot read through `read`."""
    from opentelemetry.metrics import Observation

    def callback(options: Any) -> Iterable[Any]:
        for s in _core.metrics_snapshots():
            base = {"alias": s["alias"], "backend": s["backend"]}
            for value, attributes in read(s):
                yield Observation(value, {**base, **attributes})

    return callback


def _orm(read: Callable[[dict[str, Any]], Iterable[tuple[float, dict[str, str]]]]) -> Callable[[Any], Any]:
    """An observable instrument's callback over the ORM query cache's counts (once it is used)."""
    from opentelemetry.metrics import Observation

    def callback(options: Any) -> Iterable[Any]:
        orm = sys.modules.get("django_rustcache.orm.stats")
        if orm is None:
            return
        s = orm.stats()
        for value, attributes in read(s):
            yield Observation(value, {"alias": s["alias"] or "", **attributes})

    return callback


def enable() -> None:
    """Create the observable instruments on the global ``MeterProvider`` (once per process)."""
    global _enabled
    with _lock:
        if _enabled:
            return
        _enabled = True
    from opentelemetry import metrics

    from django_rustcache import __version__

    meter = metrics.get_meter(_METER, __version__)
    meter.create_observable_counter(
        "django_rustcache.calls",
        [
            _observe(
                lambda s: (
                    (n, {"method": method, "outcome": outcome})
                    for method, row in s["calls"].items()
                    for outcome, n in row.items()
                )
            )
        ],
        unit="{call}",
        description="Cache calls, by method and outcome.",
    )
    meter.create_observable_counter(
        "django_rustcache.keys",
        [_observe(lambda s: ((s["keys_found"], {"result": "found"}), (s["keys_missed"], {"result": "missed"})))],
        unit="{key}",
        description="Keys asked for by reads, found or missed.",
    )
    meter.create_observable_counter(
        "django_rustcache.sent_bytes",
        [_observe(lambda s: ((s["bytes_sent"], {}),))],
        unit="By",
        description="Bytes of keys and values sent.",
    )
    meter.create_observable_counter(
        "django_rustcache.received_bytes",
        [_observe(lambda s: ((s["bytes_received"], {}),))],
        unit="By",
        description="Bytes of values received.",
    )
    meter.create_observable_counter(
        "django_rustcache.call.duration.sum",
        [_observe(lambda s: ((lat["sum_seconds"], {"method": m}) for m, lat in s["latency"].items()))],
        unit="s",
        description="Total time of the timed calls, per method.",
    )
    meter.create_observable_counter(
        "django_rustcache.call.duration.count",
        [_observe(lambda s: ((lat["count"], {"method": m}) for m, lat in s["latency"].items()))],
        unit="{call}",
        description="Timed calls, per method (in-process calls are timed one in 16).",
    )
    meter.create_observable_counter(
        "django_rustcache.orm.reads",
        [_orm(lambda s: ((n, {"result": r}) for r, n in s["reads"].items()))],
        unit="{read}",
        description="ORM query cache reads: hit, miss, bypass.",
    )
    meter.create_observable_counter(
        "django_rustcache.orm.writes",
        [_orm(lambda s: ((n, {"path": p}) for p, n in s["writes"].items()))],
        unit="{statement}",
        description="Writes the ORM query cache saw, by write path.",
    )
    meter.create_observable_counter(
        "django_rustcache.orm.invalidations",
        [_orm(lambda s: ((s["invalidations"], {}),))],
        unit="{table}",
        description="Tables the ORM query cache gave new generations.",
    )
    meter.create_observable_gauge(
        "django_rustcache.call.duration.p99",
        [_observe(lambda s: ((lat["p99_seconds"], {"method": m}) for m, lat in s["latency"].items()))],
        unit="s",
        description="99th percentile of the timed calls' latency, per method (a bucket's upper bound).",
    )


# --- spans ---------------------------------------------------------------------------------------

# The client methods that make no call to a server.
_LOCAL = frozenset(
    {
        "metrics",
        "reset_metrics",
        "with_metrics",
        "servers",
        "client_stats",
        "loop_stats",
        "near_stats",
        "reset_near_stats",
        "behaviors",
        "binary",
        "server_index",
        "server_for",
        "nodes",
        "node_of",
        "cluster",
        "groups",
        "made_keys",
        "encode_items",
        "loads",
        "dumps",
        "disconnect_all",
        "get_client",
    }
)

# Redis: our client's method -> the command it sends (the span's name).
_REDIS_OPERATIONS = {
    "get": "GET",
    "get_many": "MGET",
    "set": "SET",
    "set_many": "MSET",
    "add": "SET",
    "touch": "EXPIRE",
    "delete": "DEL",
    "delete_many": "DEL",
    "has_key": "EXISTS",
    "incr": "INCRBY",
    "rename": "RENAME",
    "clear": "FLUSHDB",
}


class _Traced:
    """A client whose calls each make a CLIENT span (see the module's docstring)."""

    def __init__(self, client: Any, system: str, address: str, port: int | None, namespace: str | None) -> None:
        from opentelemetry import trace

        from django_rustcache import __version__

        self._client = client
        self._tracer = trace.get_tracer(_METER, __version__)
        self._system = system
        self._attributes: dict[str, Any] = {"db.system.name": system, "server.address": address}
        if port is not None:
            self._attributes["server.port"] = port
        if namespace is not None:
            self._attributes["db.namespace"] = namespace
        self._wrapped: dict[str, Any] = {}

    def _operation(self, name: str, args: tuple[Any, ...]) -> str:
        plain = name[1:] if name.startswith("a") and name[1:] in _REDIS_OPERATIONS else name
        if self._system != "redis":
            return plain.removeprefix("a") if name.startswith("a") and hasattr(self._client, name[1:]) else plain
        if plain in ("execute", "aexecute") and args:
            first = args[0]
            return (first.decode() if isinstance(first, bytes) else str(first)).upper()
        return _REDIS_OPERATIONS.get(plain, plain.upper())

    def __getattr__(self, name: str) -> Any:
        found = self._wrapped.get(name)
        if found is not None:
            return found
        target = getattr(self._client, name)
        if name in _LOCAL or name.startswith("_") or not callable(target):
            return target
        is_async = name.startswith("a") and hasattr(self._client, name[1:])

        def call(*args: Any, **kwargs: Any) -> Any:
            from opentelemetry.trace import SpanKind, Status, StatusCode

            operation = self._operation(name, args)
            span = self._tracer.start_span(
                operation,
                kind=SpanKind.CLIENT,
                attributes={**self._attributes, "db.operation.name": operation},
            )

            def failed(e: BaseException) -> None:
                span.record_exception(e)
                span.set_attribute("error.type", type(e).__name__)
                span.set_status(Status(StatusCode.ERROR, str(e)))

            try:
                result = target(*args, **kwargs)
            except BaseException as e:
                failed(e)
                span.end()
                raise
            if not is_async:
                span.end()
                return result

            def done(future: Any) -> None:
                if future.cancelled():
                    span.set_attribute("error.type", "cancelled")
                elif future.exception() is not None:
                    failed(future.exception())
                span.end()

            result.add_done_callback(done)
            return result

        self._wrapped[name] = call
        return call


def traced(client: Any, system: str, location: Any, namespace: str | None = None) -> Any:
    """`client`, its calls traced when spans are asked for (else `client` itself)."""
    spans = settings_ask()[1]
    if not spans:
        return client
    first = location[0] if isinstance(location, (list, tuple)) and location else location
    text = str(first)
    host, port = text, None
    rest = text.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    if ":" in rest and not text.startswith("unix:"):
        host, _, digits = rest.rpartition(":")
        port = int(digits) if digits.isdigit() else None
    elif not text.startswith(("unix:", "/")):
        host = rest
    return _Traced(client, system, host, port, namespace)
