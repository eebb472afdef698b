"""A Django system check that reports OPTIONS our backends do not know, with the nearest name."""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string


class UnknownOption(ImproperlyConfigured):
    """A setting names an option the backend does not know (E001 reports it, with the nearest)."""


@checks.register(checks.Tags.caches)
def check_cache_options(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for alias, params in getattr(settings, "CACHES", {}).items():
        backend = params.get("BACKEND", "")
        if not backend.startswith("django_rustcache."):
            continue
        try:
            cls = import_string(backend)
        except ImportError as e:
            messages.append(
                checks.Error(f"CACHES[{alias!r}]: cannot import {backend!r}: {e}", id="django_rustcache.E002")
            )
            continue
        messages.extend(_settings_errors(alias, cls, params))
        known = getattr(cls, "known_options", None)
        if known is None:
            continue
        options = params.get("OPTIONS") or {}
        places = [("['OPTIONS']", options, known)]
        for name, nested_known in getattr(cls, "nested_options", {}).items():
            if isinstance(options.get(name), dict):
                places.append((f"['OPTIONS'][{name!r}]", options[name], nested_known))
        for where, given, allowed in places:
            for name in given:
                if name in allowed:
                    continue
                messages.append(
                    checks.Error(
                        f"CACHES[{alias!r}]{where} has {name!r}, which {cls.__name__} does not know.",
                        hint=nearest_hint(name, allowed),
                        obj=alias,
                        id="django_rustcache.E001",
                    )
                )
    return messages


def _settings_errors(alias: str, cls: type, params: dict[str, Any]) -> list[checks.CheckMessage]:
    """What the backend itself finds wrong with its settings (it keeps that for first use)."""
    try:
        backend = cls(params.get("LOCATION", ""), params)
    except Exception as e:  # a backend that still raises at construction: reported, not crashed on
        error: BaseException | None = e
    else:
        error = getattr(backend, "_config_error", None)
    if error is None or isinstance(error, UnknownOption):
        return []
    return [checks.Error(f"CACHES[{alias!r}]: {error}", obj=alias, id="django_rustcache.E003")]


def nearest_hint(name: object, known: frozenset[str] | set[str]) -> str:
    """'Did you mean ...?' with the closest known name, or the list of known names."""
    nearest = difflib.get_close_matches(str(name), sorted(known), n=1)
    return f"Did you mean {nearest[0]!r}?" if nearest else f"Known: {', '.join(sorted(known))}."
