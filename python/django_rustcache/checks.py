"""A Django system check that reports OPTIONS our backends do not know, with the nearest name."""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string


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
        known = getattr(cls, "known_options", None)
        if known is None:
            continue
        for name in params.get("OPTIONS") or {}:
            if name in known:
                continue
            nearest = difflib.get_close_matches(str(name), sorted(known), n=1)
            hint = f"Did you mean {nearest[0]!r}?" if nearest else f"Known options: {', '.join(sorted(known))}."
            messages.append(
                checks.Error(
                    f"CACHES[{alias!r}]['OPTIONS'] has {name!r}, which {cls.__name__} does not know.",
                    hint=hint,
                    obj=alias,
                    id="django_rustcache.E001",
                )
            )
    return messages
