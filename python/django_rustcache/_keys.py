"""Shared by the backends: when Django's default key function is in force, keys are made in
Rust, in the same call that reads or writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
        make_key: object = type(self).make_key
        self._native_keys = func is default_key_func and make_key is BaseCache.make_key

    # Set by BaseCache.__init__ in the backends this is mixed into.
    key_prefix: str
    version: int

    if TYPE_CHECKING:

        def make_key(self, key: Any, version: Any = None) -> Any: ...  # BaseCache's, or a subclass's

    def _parts(self, key: Any, version: Any) -> tuple[Any, Any, Any]:
        """The core's (prefix, version, key): made in Rust when native, else made here."""
        # Where a call is hot (every LRU method, the network get), callers spell out the native
        # case inline instead: this call and its star-unpack cost ~0.2 us, as much as an LRU hit.
        if self._native_keys:
            return self.key_prefix, self.version if version is None else version, key
        return None, None, self.make_key(key, version)

    def _made_keys(self, keys: Any, version: Any) -> dict[Any, Any]:
        """Keys made in Python, each mapped to the key as given."""
        return {self.make_key(k, version): k for k in keys}
