"""The exporters of our metrics, each turned on by itself when its library is installed."""

from __future__ import annotations

import threading

__all__ = ["ensure_exported"]

_exported = False
_lock = threading.Lock()


def ensure_exported() -> None:
    """Put the metrics in ``prometheus_client``'s default registry, once, when it is installed."""
    global _exported
    if _exported:
        return
    with _lock:
        if _exported:
            return
        _exported = True
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            return
        from django_rustcache.prometheus import register

        register()
