"""The metrics through OpenTelemetry's global MeterProvider, read back by the SDK's in-memory
reader after a known sequence of calls; and a span per call (sync and async, a failure among
them), read back by the SDK's in-memory exporter, with the database semantic conventions'
attributes. Real servers."""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from django_rustcache._core import ServerDown
from tests.conftest import make_lru, make_memcached, make_redis

otel_metrics = pytest.importorskip("opentelemetry.metrics")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from django_rustcache import opentelemetry as ours  # noqa: E402


@pytest.fixture(scope="module")
def reader():
    # The global providers can be set once per process: this module sets them.
    reader = InMemoryMetricReader()
    otel_metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    ours.enable()
    return reader


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def points(reader, name, **attributes):
    """The data points of instrument `name` whose attributes include `attributes`."""
    found = []
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                found += [
                    p for p in metric.data.data_points if all(p.attributes.get(k) == v for k, v in attributes.items())
                ]
    return found


def test_the_metrics_reach_the_meter_provider_by_value(reader, redis_server, memcached_server):
    caches = {"redis": make_redis(redis_server.location), "memcached": make_memcached(memcached_server.location)}
    caches["lru"] = make_lru()
    for cache in caches.values():
        cache.set("a", "x" * 10)
        cache.get("a")
        cache.get("a")
        cache.get("nope")
    for cache in caches.values():
        alias = cache.stats()["alias"]
        (hits,) = points(reader, "django_rustcache.calls", alias=alias, method="get", outcome="hit")
        (misses,) = points(reader, "django_rustcache.calls", alias=alias, method="get", outcome="miss")
        (stored,) = points(reader, "django_rustcache.calls", alias=alias, method="set", outcome="stored")
        assert (hits.value, misses.value, stored.value) == (2, 1, 1)
        (found,) = points(reader, "django_rustcache.keys", alias=alias, result="found")
        assert found.value == 2
    alias = caches["redis"].stats()["alias"]
    (count,) = points(reader, "django_rustcache.call.duration.count", alias=alias, method="get")
    (total,) = points(reader, "django_rustcache.call.duration.sum", alias=alias, method="get")
    (p99,) = points(reader, "django_rustcache.call.duration.p99", alias=alias, method="get")
    assert count.value == 3 and 0 < total.value < 5 and 0 < p99.value < 5
    (received,) = points(reader, "django_rustcache.received_bytes", alias=alias)
    assert received.value >= 20


def test_spans_are_asked_for_and_follow_the_database_conventions(spans, redis_server, memcached_server):
    with override_settings(RUSTCACHE_OPENTELEMETRY={"SPANS": True}):
        redis_cache = make_redis(redis_server.location)
        memcached_cache = make_memcached(memcached_server.location)
        spans.clear()
        redis_cache.set("k", 1)
        assert redis_cache.get("k") == 1
        assert asyncio.run(redis_cache.aget("k")) == 1
        assert 0 < redis_cache.ttl("k") <= 300  # the default timeout
        # Django's way to a raw client passes the tracing proxy (no span: no command was sent).
        assert redis_cache._cache.get_client(write=True).get(redis_cache.make_key("k")) == b"1"
        memcached_cache.set("k", 1)
        assert asyncio.run(memcached_cache.aget("k")) == 1
        down = make_redis("redis://127.0.0.1:1")  # nothing listens on port 1
        with pytest.raises(ServerDown):
            down.get("k")
    done = spans.get_finished_spans()
    named = [(s.name, s.attributes["db.system.name"]) for s in done]
    assert named == [
        ("SET", "redis"),
        ("GET", "redis"),
        ("GET", "redis"),
        ("TTL", "redis"),
        ("set", "memcached"),
        ("get", "memcached"),
        ("GET", "redis"),
    ]
    first = done[0]
    assert first.kind == SpanKind.CLIENT
    assert first.attributes["db.operation.name"] == "SET"
    assert first.attributes["server.address"] == "127.0.0.1"
    assert first.attributes["server.port"] == redis_server.port
    failed = done[-1]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "ServerDown"
    assert failed.attributes["server.port"] == 1


def test_without_the_setting_calls_make_no_span(spans, redis_server):
    cache = make_redis(redis_server.location)
    spans.clear()
    cache.set("k", 1)
    cache.get("k")
    assert spans.get_finished_spans() == ()
    from django_rustcache._core import RedisClient

    assert isinstance(cache._cache, RedisClient)  # the client itself, no tracing proxy
