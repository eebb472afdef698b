"""Reading OPTIONS that are dicts of their own (NEAR_CACHE, STAMPEDE)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

__all__ = ["option_dict"]


def option_dict(given: Any, name: str, keys: frozenset[str]) -> dict[str, Any] | None:
    """An option given as a dict of ``keys`` (True: {}, every default; None or False: None).
    Another type, or a key it does not take, is an ImproperlyConfigured naming it."""
    if given is None or given is False:
        return None
    if given is True:
        return {}
    if not isinstance(given, dict):
        raise ImproperlyConfigured(f"OPTIONS['{name}'] must be a dict (or True), not {type(given).__name__}")
    unknown = sorted(set(given) - keys)
    if unknown:
        takes = ", ".join(sorted(keys))
        raise ImproperlyConfigured(f"OPTIONS['{name}'] has no {', '.join(map(repr, unknown))} (it takes {takes})")
    return given
