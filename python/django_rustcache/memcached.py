"""Memcached backends on our own Rust client.

* ``MemcachedCache`` follows Django's memcached backends exactly (PyLibMCCache/PyMemcacheCache).
* ``PyLibMCCache`` keeps django-pylibmc's behaviour where it differs: a timeout of 0 never
  expires, and server errors on get/set/add/delete and the many-variants are logged (logger
  ``django.pylibmc``) and answered with the default / False instead of raised.

Both accept Django's PyLibMCCache OPTIONS (``binary``, ``username``, ``password``,
``behaviors``), PyMemcacheCache's where they mean something here (``connect_timeout``,
``timeout``, ``no_delay``, ``ignore_exc``, ``max_pool_size``, ``retry_timeout``,
``dead_timeout``), django-pylibmc's settings, and the ``MEMCACHE_*``/``MEMCACHIER_*``
environment variables.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import threading
import time
import weakref
from typing import Any

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.functional import cached_property

from django_rustcache import checks as _checks  # noqa: F401  (registers the option check)
from django_rustcache._core import CacheError, MemcachedClient, check_key
from django_rustcache._failures import FailurePolicy, answers, setting_flag, setting_seconds
from django_rustcache._keys import NativeKeys
from django_rustcache.checks import UnknownOption, nearest_hint

__all__ = ["MemcachedCache", "PyLibMCCache", "parse_server"]

logger = logging.getLogger("django_rustcache.memcached")

# pylibmc behaviors we act on, and those we accept because they have no meaning for our client
# (tcp_nodelay is always on; our pool, not libmemcached's I/O tuning, decides the rest).
BEHAVIORS = frozenset(
    {
        "ketama",
        "ketama_weighted",
        "hash",
        "distribution",
        "connect_timeout",
        "send_timeout",
        "receive_timeout",
        "retry_timeout",
        "dead_timeout",
        "remove_failed",
        "failure_limit",
        "auto_eject",
    }
)
ACCEPTED_BEHAVIORS = frozenset(
    {
        "tcp_nodelay",
        "tcp_keepalive",
        "no_block",
        "cas",
        "buffer_requests",
        "verify_keys",
        "ketama_hash",
        "num_replicas",
        "_noreply",
        "_io_msg_watermark",
        "_io_bytes_watermark",
        "_io_key_prefetch",
        "_hash_with_prefix_key",
        "_sort_hosts",
        "_poll_timeout",
        "_socket_send_size",
        "_socket_recv_size",
        "pickle_protocol",
    }
)
# Top-level OPTIONS of Django's PyLibMCCache and PyMemcacheCache, and our own.
OPTIONS = frozenset(
    {
        "binary",
        "username",
        "password",
        "behaviors",
        "connect_timeout",
        "timeout",
        "no_delay",
        "ignore_exc",
        "max_pool_size",
        "use_pooling",
        "retry_timeout",
        "dead_timeout",
        "retry_attempts",
        "pickle_protocol",
        "min_compress_len",
        "compress_level",
        "IGNORE_EXCEPTIONS",
        "PICKLE_PROTOCOL",
        "MIN_COMPRESS_LEN",
        "COMPRESS_LEVEL",
        "default_noreply",
        "allow_unicode_keys",
        "encoding",
        "socket_keepalive",
    }
)

_clients: dict[tuple, MemcachedClient] = {}
_clients_lock = threading.Lock()
_backends: weakref.WeakSet[MemcachedCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child must not share its parent's sockets: forget every client (the parent's
    # connections are simply dropped here) and let each backend make a fresh one on next use.
    _clients.clear()
    for backend in list(_backends):
        backend.__dict__.pop("_cache", None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parse_server(server: Any) -> tuple[str, int, int]:
    """A LOCATION entry as ``(host, port, weight)``; port 0 means a unix socket path."""
    weight = 1
    if isinstance(server, (tuple, list)):
        server, weight = server[0], int(server[1])
    server = str(server).strip()
    if server.startswith("unix:"):
        return server.removeprefix("unix:"), 0, weight
    if server.startswith("/"):
        return server, 0, weight
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest.removeprefix(":") or "11211"
        return host, int(port), weight
    if server.count(":") == 1:
        host, port = server.split(":")
        return host, int(port), weight
    return server, 11211, weight


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class MemcachedCache(NativeKeys, FailurePolicy, BaseCache):
    """Memcached backend with Django's exact semantics."""

    known_options = OPTIONS
    nested_options = {"behaviors": BEHAVIORS | ACCEPTED_BEHAVIORS}
    # The failure logger, and whether failures are logged and answered instead of raised.
    _failure_logger = logger
    _env_overrides_location = False
    # Django's set() returns None; django-pylibmc's returns whether it stored.
    _set_returns_bool = False

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(params)
        env_servers = _env("MEMCACHE_SERVERS", "MEMCACHIER_SERVERS")
        if env_servers and (self._env_overrides_location or not server):
            server = env_servers
        if isinstance(server, str):
            self._servers = [s for s in re.split("[;,]", server) if s.strip()] if server else []
        else:
            self._servers = list(server or [])
        if not self._servers:
            self._servers = ["127.0.0.1:11211"]
        self._options = dict(params.get("OPTIONS") or {})
        # A setting that cannot work is raised at first use (and listed by `manage.py check`),
        # not here: Django's own checks build every cache, and must not crash on one.
        self._settings_key = None
        self._config_error: ImproperlyConfigured | None = None
        try:
            self._ignore_exc = setting_flag(
                self._options.get("ignore_exc", self._options.get("IGNORE_EXCEPTIONS", False)), "OPTIONS['ignore_exc']"
            )
            self._settings_key = self._client_settings()
        except (ImproperlyConfigured, TypeError, ValueError) as e:
            self._config_error = e if isinstance(e, ImproperlyConfigured) else ImproperlyConfigured(str(e))
        _backends.add(self)

    def _behaviors(self) -> dict[str, Any]:
        return dict(self._options.get("behaviors") or {})

    def _credentials(self) -> tuple[str | None, str | None]:
        username = self._options.get("username") or _env("MEMCACHE_USERNAME", "MEMCACHIER_USERNAME")
        password = self._options.get("password") or _env("MEMCACHE_PASSWORD", "MEMCACHIER_PASSWORD")
        return username, password

    def _client_settings(self) -> tuple:
        """Everything the client is made from, as a hashable key (one client per distinct key)."""
        o, b = self._options, self._behaviors()
        unknown = sorted(set(b) - BEHAVIORS - ACCEPTED_BEHAVIORS)
        if unknown:
            hints = "; ".join(f"{name!r}: {nearest_hint(name, BEHAVIORS | ACCEPTED_BEHAVIORS)}" for name in unknown)
            raise UnknownOption(f"Unknown memcached behaviors ({hints})")
        if b.get("ketama_weighted") or b.get("distribution") == "consistent_weighted":
            distribution = "ketama_weighted"
        elif b.get("ketama") or b.get("distribution") in {"consistent", "consistent_ketama"}:
            distribution = "ketama"
        else:
            distribution = str(b.get("distribution", "modula"))
        hash_ = str(b.get("hash", "md5" if distribution == "ketama_weighted" else "default"))
        if distribution not in {"modula", "ketama", "ketama_weighted"}:
            raise ImproperlyConfigured(
                f"memcached distribution {distribution!r} is not supported (modula, consistent, consistent_ketama, "
                "consistent_weighted, or the ketama / ketama_weighted behaviors)"
            )
        if hash_ not in {"default", "md5"}:
            raise ImproperlyConfigured(
                f"memcached hash {hash_!r} is not supported: 'default' (one-at-a-time, libmemcached's default) "
                "or 'md5' route keys as pylibmc does"
            )
        # pylibmc's units: connect_timeout in ms, send/receive_timeout in microseconds; the
        # top-level (pymemcache-style) connect_timeout/timeout are seconds.
        connect = b["connect_timeout"] / 1000 if "connect_timeout" in b else o.get("connect_timeout", 1.0)
        send = b["send_timeout"] / 1_000_000 if b.get("send_timeout") else o.get("timeout", 3.0)
        receive = b["receive_timeout"] / 1_000_000 if b.get("receive_timeout") else o.get("timeout", 3.0)
        remove_failed = int(b.get("remove_failed", b.get("failure_limit", 0) if b.get("auto_eject") else 0))
        min_compress = o.get(
            "min_compress_len", o.get("MIN_COMPRESS_LEN", getattr(settings, "PYLIBMC_MIN_COMPRESS_LEN", 0))
        )
        level = o.get("compress_level", o.get("COMPRESS_LEVEL", getattr(settings, "PYLIBMC_COMPRESS_LEVEL", 6)))
        if level is None or int(level) < 0:
            level = 6
        protocol = o.get("pickle_protocol", o.get("PICKLE_PROTOCOL", b.get("pickle_protocol", -1)))
        if protocol is None or int(protocol) < 0:
            protocol = pickle.HIGHEST_PROTOCOL
        username, password = self._credentials()
        return (
            tuple(parse_server(s) for s in self._servers),
            distribution,
            hash_,
            setting_seconds(connect, "the connect_timeout"),
            setting_seconds(send, "the send timeout (OPTIONS['timeout'] or behaviors['send_timeout'])"),
            setting_seconds(receive, "the receive timeout (OPTIONS['timeout'] or behaviors['receive_timeout'])"),
            float(b.get("retry_timeout", o.get("retry_timeout", 2))),
            remove_failed,
            float(b.get("dead_timeout", o.get("dead_timeout", 10)) or 10),
            int(o.get("max_pool_size", 32) or 32),
            int(min_compress or 0),
            int(level),
            int(protocol),
            tuple(sorted((str(k), repr(v)) for k, v in b.items())),
            username,
            password,
            bool(o.get("binary", False)),
        )

    @cached_property
    def _cache(self) -> MemcachedClient:
        if self._config_error is not None:
            raise self._config_error
        key = self._settings_key
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                (servers, distribution, hash_, connect, send, receive, retry, remove_failed, dead, max_idle,
                 min_compress, level, protocol, _, username, password, binary) = key  # fmt: skip
                if bool(username) != bool(password):
                    raise ImproperlyConfigured("memcached SASL authentication needs both a username and a password")
                client = _clients[key] = self._class(
                    list(servers),
                    distribution=distribution,
                    hash=hash_,
                    connect_timeout=connect,
                    send_timeout=send,
                    receive_timeout=receive,
                    retry_timeout=retry,
                    remove_failed=remove_failed,
                    dead_timeout=dead,
                    max_idle=max_idle,
                    min_compress_len=min_compress,
                    compress_level=level,
                    pickle_protocol=protocol,
                    behaviors=self._behaviors(),
                    binary=binary,
                    username=username or None,
                    password=password or None,
                )
            return client

    @property
    def _class(self) -> type[MemcachedClient]:
        return Client

    @property
    def client_servers(self) -> list[str]:
        return [s.removeprefix("unix:") if isinstance(s, str) else s for s in self._servers]

    def validate_key(self, key: str) -> None:
        check_key(key, raise_error=True)

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int:
        """Django's memcached rules: None -> 0 (never), 0 -> -1 (expired at once), and over
        30 days an absolute Unix time, because memcached reads such values that way."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return 0
        if int(timeout) == 0:
            timeout = -1
        if timeout > 2592000:
            timeout += int(time.time())
        return int(timeout)

    # --- Django's API ---------------------------------------------------------------------

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        try:
            if self._native_keys:
                return self._cache.get(*self._scope(version), key, default)
            return self._cache.get(None, None, self.make_key(key, version), default)
        except CacheError as e:
            return self._failed(e, default)

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        try:
            stored = self._cache.set(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            stored = self._failed(e, False)
        return stored if self._set_returns_bool else None

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        try:
            return self._cache.add(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            return self._failed(e, False)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        try:
            return self._cache.touch(*self._parts(key, version), self.get_backend_timeout(timeout))
        except CacheError as e:
            return self._failed(e, False)

    def delete(self, key: Any, version: Any = None) -> bool:
        try:
            return self._cache.delete(*self._parts(key, version))
        except CacheError as e:
            return self._failed(e, False)

    def has_key(self, key: Any, version: Any = None) -> bool:
        return self.get(key, self._missing_key, version) is not self._missing_key

    def get_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        try:
            if self._native_keys:
                return self._cache.get_multi(*self._scope(version), keys, self._ignore_exc)
            made = self._made_keys(keys, version)
            found = self._cache.get_multi(None, None, list(made), self._ignore_exc)
            return {made[k]: v for k, v in found.items()}
        except CacheError as e:
            return self._failed(e, {})

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list[Any]:
        exptime = self.get_backend_timeout(timeout)
        try:
            if self._native_keys:
                return list(self._cache.set_multi(data, exptime, *self._scope(version), self._ignore_exc))
            original = {self.make_key(k, version): k for k in data}
            made = {k: data[original[k]] for k in original}
            return [original[k] for k in self._cache.set_multi(made, exptime, None, None, self._ignore_exc)]
        except CacheError as e:
            return self._failed(e, list(data))

    def delete_many(self, keys: Any, version: Any = None) -> None:
        try:
            if self._native_keys:
                self._cache.delete_multi(*self._scope(version), keys)
            else:
                self._cache.delete_multi(None, None, [self.make_key(k, version) for k in keys])
        except CacheError as e:
            self._failed(e, None)

    @answers(None)
    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        # Atomic on the server. A missing key is Django's ValueError, even when failures are
        # ignored: the caller asked for a number and there is none.
        return self._cache.incr(*self._parts(key, version), delta)

    @answers(None)
    def decr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self._cache.incr(*self._parts(key, version), -delta)

    def clear(self) -> None:
        try:
            self._cache.flush_all()
        except CacheError as e:
            self._failed(e, None)

    def close(self, **kwargs: Any) -> None:
        """Keep the pool: reconnecting at every request end is what this backend avoids."""

    def stats(self) -> dict[str, Any]:
        """Client-side counters (hits, misses, sets, failures, shared by every backend instance on
        this client) and each server's state (up, removed, errors, last error, idle connections)."""
        return {**self._cache.client_stats(), "servers": self._cache.servers(), "location": self._servers}

    def server_stats(self) -> dict[str, Any]:
        """Each server's own ``stats`` output."""
        return self._cache.server_stats()


class Client(MemcachedClient):
    """The client class backends instantiate (Django's tests patch methods on ``_class``)."""


class PyLibMCCache(MemcachedCache):
    """django-pylibmc's PyLibMCCache: timeout 0 never expires, server errors are logged and
    answered (default / False) instead of raised, BINARY/USERNAME/PASSWORD top-level params and
    OPTIONS taken as pylibmc behaviors."""

    known_options = BEHAVIORS | ACCEPTED_BEHAVIORS | OPTIONS
    nested_options: dict[str, frozenset[str]] = {}
    _failure_logger = logging.getLogger("django.pylibmc")
    _env_overrides_location = True
    _set_returns_bool = True

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        options = dict(params.get("OPTIONS") or {})
        top = {k: options.pop(k) for k in list(options) if k in OPTIONS}
        behaviors = {**options, **(top.pop("behaviors", None) or {})}
        for name in ("BINARY", "USERNAME", "PASSWORD"):
            if name in params:
                top[name.lower()] = params[name]
        top.setdefault("ignore_exc", True)
        super().__init__(server, {**params, "OPTIONS": {**top, "behaviors": behaviors}})

    def _credentials(self) -> tuple[str | None, str | None]:
        # django-pylibmc: the environment wins over the settings.
        username = _env("MEMCACHE_USERNAME", "MEMCACHIER_USERNAME") or self._options.get("username")
        password = _env("MEMCACHE_PASSWORD", "MEMCACHIER_PASSWORD") or self._options.get("password")
        return username, password

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int:
        if timeout == 0:
            return 0
        return super().get_backend_timeout(timeout)
