"""What the network backends (memcached, redis) share: LOCATION and OPTIONS read once into a
frozen settings object (a setting that cannot work is kept for first use, and listed by
``manage.py check``, rather than raised while Django builds its caches), one client per distinct
settings in the process (forgotten in a forked child), the failure policy, and Django's API
written once on top of the client."""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.functional import cached_property

from django_rustcache import _compat, _core, _exporters, _metrics, opentelemetry
from django_rustcache._core import CacheError
from django_rustcache._failures import FailurePolicy, answers
from django_rustcache._keys import NativeKeys
from django_rustcache._stampede import Stampede

# --- settings: each a clear ImproperlyConfigured naming the setting ---------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def setting_flag(value: Any, name: str) -> bool:
    """A yes/no setting: a bool, 0/1, or one of true/false, yes/no, on/off (any case). Anything
    else is an ImproperlyConfigured naming the setting (``bool("false")`` would be True)."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ImproperlyConfigured(f"{name} must be True or False (or 'true'/'false', 'yes'/'no'), not {value!r}")


def setting_seconds(value: Any, name: str, *, zero: bool = False) -> float:
    """A duration in seconds: a positive number (calls are always bounded, so 0 and None, which
    would mean 'fail at once' or 'wait forever', are refused), or with ``zero`` also 0."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not (seconds > 0 or (zero and seconds == 0)) or seconds == float("inf"):
        what = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
        raise ImproperlyConfigured(f"{name} must be {what}, not {value!r}")
    return seconds


def setting_count(value: Any, name: str, *, minimum: int = 1, maximum: int = 1 << 31) -> int:
    """A whole number within bounds (pool sizes, limits)."""
    try:
        number = int(value)
        exact = number == value or isinstance(value, str)
    except (TypeError, ValueError):
        number, exact = minimum - 1, False
    if not exact or not minimum <= number <= maximum:
        raise ImproperlyConfigured(f"{name} must be a whole number from {minimum} to {maximum}, not {value!r}")
    return number


def setting_port(value: Any, where: str) -> int:
    """A TCP port, 1-65535 (0 is no port: never silently a unix socket)."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 1 <= port <= 65535:
        raise ImproperlyConfigured(f"{where}: the port must be a number from 1 to 65535, not {value!r}")
    return port


def split_location(server: Any) -> list[Any]:
    """LOCATION as a list of servers: a string split on ``;`` and ``,``, or a list as given."""
    if isinstance(server, str):
        return [s.strip() for s in re.split("[;,]", server) if s.strip()]
    return list(server or [])


# --- one client per distinct settings ----------------------------------------------------------


class _Registry:
    """The clients of the process, by settings; forgotten in a forked child, which must never
    share its parent's sockets.

    A client lives while a backend instance uses it (each holds its own) and, for the
    ``KEEP`` settings used last, a while after: Django makes backend instances per thread (and
    per async context), and they must find the same pool. A client of settings nobody uses any
    more goes with its connections, so a site or a test suite that makes caches on the fly
    (thousands of LOCATIONs) holds at most ``KEEP`` idle clients, not one per LOCATION."""

    KEEP = 32

    def __init__(self) -> None:
        self._clients: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
        self._recent: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._backends: weakref.WeakSet[NetworkCache[Any]] = weakref.WeakSet()

    def client(self, backend: NetworkCache[ClientT]) -> ClientT:
        key = backend._settings
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                # Making a client does no I/O (connections and a cluster's slot map come with
                # the first call), so no call ever waits on a server under this lock.
                client = self._clients[key] = backend._make_client(key)
            self._recent[key] = client
            self._recent.move_to_end(key)
            while len(self._recent) > self.KEEP:
                self._recent.popitem(last=False)
            return cast("ClientT", client)

    def track(self, backend: NetworkCache[Any]) -> None:
        self._backends.add(backend)

    def after_fork_in_child(self) -> None:
        # The lock may have been held by a thread that does not exist in the child.
        self._lock = threading.Lock()
        self._clients = weakref.WeakValueDictionary()
        self._recent.clear()
        for backend in list(self._backends):
            backend.__dict__.pop("_cache", None)
            backend.__dict__.pop("_shared", None)
        # The parent's calls are the parent's: the child counts its own.
        _core.reset_all_metrics()


_registry = _Registry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_registry.after_fork_in_child)


# --- the shared backend ------------------------------------------------------------------------


class NetworkClient(Protocol):
    """What ``NetworkCache`` calls on the core client a backend makes (``RedisClient``,
    ``MemcachedClient``: one type per backend, for every topology; ``_core.pyi`` states the
    rest of each). Timeouts are the backend's own (seconds for redis, an exptime for memcached)."""

    def get(self, prefix: str | None, version: Any, key: Any, default: Any = None) -> Any: ...
    def add(self, prefix: str | None, version: Any, key: Any, value: Any, timeout: Any, /) -> bool: ...
    def touch(self, prefix: str | None, version: Any, key: Any, timeout: Any, /) -> bool: ...
    def delete(self, prefix: str | None, version: Any, key: Any) -> bool: ...
    def servers(self) -> list[dict[str, Any]]: ...
    def client_stats(self) -> dict[str, int]: ...
    def refused_values(self) -> int: ...
    def with_metrics(self, alias: str, backend: str, named: bool, enabled: bool) -> Any: ...
    def metrics(self) -> dict[str, Any]: ...
    def reset_metrics(self) -> None: ...


ClientT = TypeVar("ClientT", bound=NetworkClient)


class NetworkCache(NativeKeys, FailurePolicy, Stampede, BaseCache, Generic[ClientT]):
    """Django's cache API over a network client. Subclasses say how settings are read
    (``_configure``), how a client is made (``_make_client``), how timeouts convert, and the
    names of the client's multi-key methods."""

    _settings: Hashable | None = None
    _config_error: ImproperlyConfigured | None = None
    # OpenTelemetry's db.system.name for this backend's spans.
    _system_name: ClassVar[str] = ""
    # The client's multi-key methods (memcached keeps pylibmc's names: Django's suite patches them).
    _get_many_method: ClassVar[str] = "get_many"
    _set_many_method: ClassVar[str] = "set_many"
    _delete_many_method: ClassVar[str] = "delete_many"

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        # The predecessors' exception classes (where installed) catch ours too.
        _compat.install()
        self._init_args = (server, params)
        super().__init__(params)
        self._options = dict(params.get("OPTIONS") or {})
        self._servers = split_location(server)
        try:
            self._read_stampede(self._options)
            self._settings = self._configure()
        except (ImproperlyConfigured, TypeError, ValueError) as e:
            self._config_error = e if isinstance(e, ImproperlyConfigured) else ImproperlyConfigured(str(e))
        _registry.track(self)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (or copied), a backend is its LOCATION and params: the copy made from them
        talks to the same servers, through the same pooled client in this process."""
        return (type(self), self._init_args)

    def _configure(self) -> Hashable:
        """Read LOCATION and OPTIONS into the settings the client is made from."""
        raise NotImplementedError

    def _make_client(self, settings: Any) -> ClientT:
        raise NotImplementedError

    @cached_property
    def _shared(self) -> ClientT:
        """The client of these settings, shared by every backend instance that has them (held
        here: the registry keeps it while a backend uses it)."""
        if self._config_error is not None:
            raise self._config_error
        return _registry.client(self)

    @cached_property
    def _cache(self) -> ClientT:
        """The shared client, as this backend's alias sees it (its calls counted under it)."""
        server, params = self._init_args
        alias, named = _metrics.alias_of(self, server, params)
        path = f"{type(self).__module__}.{type(self).__qualname__}"
        view = self._shared.with_metrics(alias, path, named, _metrics.metrics_enabled(self._options))
        if hasattr(view, "_backend"):
            # A view that answers for its cache (redis's get_client) knows it, weakly.
            view._backend = weakref.ref(self)
        view = opentelemetry.traced(view, self._system_name, self._servers)
        _metrics.track(self)
        _exporters.ensure_exported()
        return cast("ClientT", view)

    def close(self, **kwargs: Any) -> None:
        """Keep the pool: reconnecting at every request end is what these backends avoid."""

    def stats(self) -> _metrics.CacheStats:
        """The one shape of every backend (see ``CacheStats``): this alias's calls, keys, bytes
        and latencies, and each server's state (address, up, errors, last_error,
        idle_connections, and per backend removed / open_connections)."""
        return _metrics.stats_shape(
            self._cache.metrics(),
            location=self._servers,
            servers=self._cache.servers(),
            refused_values=self._cache.refused_values(),
        )

    def reset_stats(self) -> None:
        """Zero this alias's counts."""
        self._cache.reset_metrics()

    # --- Django's API, answered per the failure policy ---------------------------------------

    @property
    def _partial(self) -> tuple[bool, Any]:
        """How a multi-key call treats a failed server: raise (failures count), or go on without
        it and hand its error to the failure policy (logged once per burst)."""
        return (True, self._partial_failure) if self._ignore_exc else (False, None)

    def _partial_failure(self, error: CacheError) -> None:
        self._failed(error, None)

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        try:
            if self._native_keys:
                return self._cache.get(self.key_prefix, self.version if version is None else version, key, default)
            return self._cache.get(None, None, self.make_key(key, version), default)
        except CacheError as e:
            return self._failed(e, default)

    @answers(False)
    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return self._cache.add(*self._parts(key, version), value, self.get_backend_timeout(timeout))

    @answers(False)
    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return self._cache.touch(*self._parts(key, version), self.get_backend_timeout(timeout))

    @answers(False)
    def delete(self, key: Any, version: Any = None) -> bool:
        return self._cache.delete(*self._parts(key, version))

    def get_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        get_many = getattr(self._cache, self._get_many_method)
        try:
            found: dict[Any, Any]
            if self._native_keys:
                found = get_many(self.key_prefix, self.version if version is None else version, keys, *self._partial)
                return found
            made = self._made_keys(keys, version)
            found = get_many(None, None, list(made), *self._partial)
            return {made[k]: v for k, v in found.items()}
        except CacheError as e:
            return self._failed(e, {})

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list[Any]:
        if not data:
            return []
        set_many = getattr(self._cache, self._set_many_method)
        timeout = self.get_backend_timeout(timeout)
        try:
            if self._native_keys:
                return list(
                    set_many(
                        data, timeout, self.key_prefix, self.version if version is None else version, *self._partial
                    )
                )
            original = {self.make_key(k, version): k for k in data}
            made = {k: data[original[k]] for k in original}
            return [original[k] for k in set_many(made, timeout, None, None, *self._partial)]
        except CacheError as e:
            return self._failed(e, list(data))

    @answers(None)
    def delete_many(self, keys: Any, version: Any = None) -> None:
        delete_many = getattr(self._cache, self._delete_many_method)
        if self._native_keys:
            delete_many(self.key_prefix, self.version if version is None else version, keys)
        else:
            delete_many(None, None, [self.make_key(k, version) for k in keys])

    @answers(None)
    def decr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr(key, -delta, version)
