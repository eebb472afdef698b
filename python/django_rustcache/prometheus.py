"""Our metrics in ``prometheus_client``'s default registry (so django-prometheus's ``/metrics``
view and ``generate_latest()`` show them). Registered by itself the first time a backend is
used in a process where ``prometheus_client`` is installed; ``register()`` does it earlier.

Families (every one labelled ``alias`` and ``backend``):

* ``django_rustcache_calls_total{method, outcome}``: calls, by how they ended;
* ``django_rustcache_call_duration_seconds{method}``: a histogram of their latency;
* ``django_rustcache_keys_total{result="found"|"missed"}``: keys reads asked for;
* ``django_rustcache_sent_bytes_total``, ``django_rustcache_received_bytes_total``: bytes of keys
  and values sent, and of values received;
* ``django_rustcache_connections{server, state="open"|"idle"|"waiting"}``,
  ``django_rustcache_server_up{server}``: each server's pool and health, now, and
  ``django_rustcache_server_transitions_total{server, to="down"|"up"}``;
* ``django_rustcache_near_cache_*``: the near cache's hits, misses, invalidations, flushes
  (``_total``) and what it holds (``entries``, ``bytes``);
* ``django_rustcache_orm_*``: the ORM query cache's ``reads_total{result}``, ``stores_total``,
  ``store_failures_total``, ``writes_total{path}``, ``invalidations_total`` and
  ``invalidation_failures_total`` (see ``django_rustcache.orm.stats``).

In a pre-fork server each process exports its own (as with any collector); use
prometheus_client's multiprocess mode's aggregation, or scrape every worker.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from django_rustcache import _core, _metrics

__all__ = ["BUCKETS", "RustCacheCollector", "register"]

#: The histogram's upper bounds (seconds): an in-process hit is ~0.3 us, a round trip 10 us
#: and up. Each core bucket (a quarter of a power of two wide) is counted under the first bound
#: at or above its own upper bound.
BUCKETS = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _cumulative(buckets: list[tuple[float, int]]) -> list[tuple[str, float]]:
    """The core's buckets (upper bound, calls) as Prometheus's cumulative ones."""
    out: list[tuple[str, float]] = []
    seen = 0
    rest = iter(buckets)
    pending = next(rest, None)
    for bound in BUCKETS:
        while pending is not None and pending[0] <= bound:
            seen += pending[1]
            pending = next(rest, None)
        out.append((repr(bound), float(seen)))
    total = seen + (pending[1] if pending else 0) + sum(n for _, n in rest)
    out.append(("+Inf", float(total)))
    return out


def _live_backends() -> dict[tuple[str, str], Any]:
    """One live backend per alias (they share their alias's client), for the servers' state."""
    out: dict[tuple[str, str], Any] = {}
    for backend in _metrics.tracked():
        try:
            metrics = backend._cache.metrics()
        except Exception:  # (a client gone in a fork: nothing to report)
            continue
        out.setdefault((metrics["alias"], metrics["backend"]), backend)
    return out


class RustCacheCollector(Collector):
    """Every alias's metrics, read from the cores at each scrape."""

    def collect(self) -> Iterator[Any]:
        snapshots = list(_core.metrics_snapshots())
        calls = CounterMetricFamily(
            "django_rustcache_calls",
            "Cache calls, by method and outcome.",
            labels=["alias", "backend", "method", "outcome"],
        )
        duration = HistogramMetricFamily(
            "django_rustcache_call_duration_seconds",
            "Cache call latency (in-process calls timed one in 16).",
            labels=["alias", "backend", "method"],
            unit="seconds",
        )
        keys = CounterMetricFamily(
            "django_rustcache_keys", "Keys asked for by reads, found or missed.", labels=["alias", "backend", "result"]
        )
        sent = CounterMetricFamily(
            "django_rustcache_sent_bytes",
            "Bytes of keys and values sent.",
            labels=["alias", "backend"],
            unit="bytes",
        )
        received = CounterMetricFamily(
            "django_rustcache_received_bytes",
            "Bytes of values received.",
            labels=["alias", "backend"],
            unit="bytes",
        )
        for s in snapshots:
            base = [s["alias"], s["backend"]]
            for method, row in s["calls"].items():
                for outcome, n in row.items():
                    calls.add_metric([*base, method, outcome], n)
            for method, lat in s["latency"].items():
                duration.add_metric([*base, method], _cumulative(lat["buckets"]), lat["sum_seconds"])
            keys.add_metric([*base, "found"], s["keys_found"])
            keys.add_metric([*base, "missed"], s["keys_missed"])
            sent.add_metric(base, s["bytes_sent"])
            received.add_metric(base, s["bytes_received"])
        yield from (calls, duration, keys, sent, received)
        yield from self._servers()
        yield from self._orm()

    def _orm(self) -> Iterator[Any]:
        """The ORM query cache's counts, once it is in use in this process."""
        orm = sys.modules.get("django_rustcache.orm.stats")
        if orm is None:
            return
        s = orm.stats()
        alias = s["alias"] or ""
        reads = CounterMetricFamily(
            "django_rustcache_orm_reads", "ORM cache reads: hit, miss, bypass.", labels=["alias", "result"]
        )
        for result, n in s["reads"].items():
            reads.add_metric([alias, result], n)
        writes = CounterMetricFamily(
            "django_rustcache_orm_writes", "Writes the ORM cache saw, by write path.", labels=["alias", "path"]
        )
        for path, n in s["writes"].items():
            writes.add_metric([alias, path], n)
        yield reads
        yield writes
        for name, key, text in (
            ("stores", "stores", "Results stored."),
            ("store_failures", "store_failures", "Results that could not be stored."),
            ("invalidations", "invalidations", "Tables given new generations."),
            ("invalidation_failures", "invalidation_failures", "Invalidations that failed (retried)."),
        ):
            family = CounterMetricFamily(f"django_rustcache_orm_{name}", text, labels=["alias"])
            family.add_metric([alias], s[key])
            yield family

    def _servers(self) -> Iterator[Any]:
        connections = GaugeMetricFamily(
            "django_rustcache_connections",
            "Connections of each server's pool.",
            labels=["alias", "backend", "server", "state"],
        )
        up = GaugeMetricFamily(
            "django_rustcache_server_up", "1 while calls go to the server.", labels=["alias", "backend", "server"]
        )
        transitions = CounterMetricFamily(
            "django_rustcache_server_transitions",
            "Times a server was marked down, and found up again by a call.",
            labels=["alias", "backend", "server", "to"],
        )
        near = {
            name: CounterMetricFamily(f"django_rustcache_near_cache_{name}", f"Near cache {name}.", labels=["alias"])
            for name in ("hits", "misses", "invalidations", "flushes")
        }
        near_now = {
            name: GaugeMetricFamily(f"django_rustcache_near_cache_{name}", f"Near cache {name} held.", labels=["alias"])
            for name in ("entries", "bytes")
        }
        for (alias, backend_path), backend in _live_backends().items():
            base = [alias, backend_path]
            try:
                stats = backend.stats()
            except Exception:  # (a backend that cannot answer now is left out)
                continue
            for server in stats["servers"]:
                address = str(server.get("address", ""))
                up.add_metric([*base, address], 1.0 if server.get("up", True) else 0.0)
                for state, key in (("open", "open_connections"), ("idle", "idle_connections"), ("waiting", "waiting")):
                    if key in server:
                        connections.add_metric([*base, address, state], float(server[key]))
                for to, key in (("down", "went_down"), ("up", "came_back")):
                    if key in server:
                        transitions.add_metric([*base, address, to], server[key])
            if stats["near_cache"]:
                for name, family in near.items():
                    family.add_metric([alias], stats["near_cache"][name])
                for name, gauge in near_now.items():
                    gauge.add_metric([alias], stats["near_cache"][name])
        yield connections
        yield up
        yield transitions
        yield from near.values()
        yield from near_now.values()


_registered: RustCacheCollector | None = None
_lock = threading.Lock()


def register() -> RustCacheCollector:
    """Add the collector to the default registry (once per process)."""
    global _registered
    with _lock:
        if _registered is None:
            _registered = RustCacheCollector()
            REGISTRY.register(_registered)
        return _registered
