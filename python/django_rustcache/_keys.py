"""Shared by the backends: when Django's default key function is in force, keys are made in
Rust, in the same call that reads or writes."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.base import BaseCache, default_key_func


class NativeKeys:
    """Tracks whether keys can be made in Rust: the default ``KEY_FUNCTION`` and an unchanged
    ``make_key``. Assigning another key function (Django's own tests do, at run time) moves key
    making back to Python for that backend."""

    _native_keys = True

    @property
    def key_func(self) -> Any:
        return self._key_func

    @key_func.setter
    def key_func(self, func: Any) -> None:
        self._key_func = func
        self._native_keys = func is default_key_func and type(self).make_key is BaseCache.make_key
