"""Django system checks on our caches' settings.

* ``E001`` (Error): an option no predecessor knows (a typo, most likely), with the nearest known
  name when one is close enough to be the same option misspelt.
* ``W001`` (Warning): an option a predecessor documents that has no meaning here (it named the
  predecessor's own machinery); the message says why. It stops nothing: ``migrate`` and
  ``runserver`` go on.
* ``E002``/``E003``: a backend that does not import, a setting that cannot work.
"""

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
        messages.extend(option_messages(alias, cls, params.get("OPTIONS") or {}))
    return messages


def option_messages(alias: str, cls: type, options: dict[str, Any]) -> list[checks.CheckMessage]:
    """E001 for the options (and nested option dicts) ``cls`` does not know, W001 for those a
    predecessor documents that have no meaning here (``cls.no_effect``: name -> why)."""
    known = getattr(cls, "known_options", None)
    if known is None:
        return []
    places = [("['OPTIONS']", options, known, getattr(cls, "no_effect", {}))]
    nested_no_effect = getattr(cls, "nested_no_effect", {})
    for name, nested_known in getattr(cls, "nested_options", {}).items():
        if isinstance(options.get(name), dict):
            places.append((f"['OPTIONS'][{name!r}]", options[name], nested_known, nested_no_effect.get(name, {})))
    messages: list[checks.CheckMessage] = []
    for where, given, allowed, no_effect in places:
        for name, value in given.items():
            if name in no_effect and no_effect[name] is not None and not _is_our_behaviour(cls, name, value):
                messages.append(
                    checks.Warning(
                        f"CACHES[{alias!r}]{where}[{name!r}] has no effect with {cls.__name__}: {no_effect[name]}",
                        hint="Remove it once the switch is done; it is accepted so that nothing else has to change.",
                        obj=alias,
                        id="django_rustcache.W001",
                    )
                )
            elif name not in allowed and name not in no_effect:
                messages.append(
                    checks.Error(
                        f"CACHES[{alias!r}]{where} has {name!r}, which {cls.__name__} does not know.",
                        hint=nearest_hint(name, set(allowed) | set(no_effect)),
                        obj=alias,
                        id="django_rustcache.E001",
                    )
                )
    return messages


def _is_our_behaviour(cls: type, name: str, value: Any) -> bool:
    """Whether ``value`` asks for what the backend does anyway (no warning then)."""
    ours = getattr(cls, "no_effect_when", {})
    return name in ours and value == ours[name]


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
    """'Did you mean ...?' with a known name close enough to be the same option misspelt (or in
    another case), else the list of known names: never a name that only looks alike
    (CLOSE_CONNECTION is not MAX_CONNECTIONS)."""
    text = str(name)
    same_case = [k for k in known if k.lower() == text.lower()]
    nearest = same_case or difflib.get_close_matches(text, sorted(known), n=1, cutoff=0.78)
    return f"Did you mean {nearest[0]!r}?" if nearest else f"Known: {', '.join(sorted(known))}."
