"""The exporters of our metrics, each turned on by itself when its library is installed."""

from __future__ import annotations

import threading

__all__ = ["ensure_exported"]

_exported = False
_lock = threading.Lock()


def ensure_exported() -> None:
    """Put the metrics in ``prometheus_client``'s default registry when it is installed, and on
    OpenTelemetry's global ``MeterProvider`` when ``RUSTCACHE_OPENTELEMETRY`` asks (once)."""
    global _exported
    if _exported:
        return
    with _lock:
        if _exported:
            return
        _exported = True
        from django_rustcache import opentelemetry

        if opentelemetry.settings_ask()[0]:
            opentelemetry.enable()
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            return
        from django_rustcache.prometheus import register

        register()
