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

import dataclasses
import logging
import os
import pickle
import time
from typing import Any

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured

from django_rustcache import checks as _checks  # noqa: F401  (registers the option check)
from django_rustcache._async import NativeAsync
from django_rustcache._core import CacheError, MemcachedClient, check_key
from django_rustcache._failures import answers
from django_rustcache._network import (
    NetworkCache,
    setting_count,
    setting_flag,
    setting_port,
    setting_seconds,
    split_location,
)
from django_rustcache._signing import sign_settings
from django_rustcache.checks import UnknownOption, nearest_hint

__all__ = ["MemcachedCache", "PyLibMCCache", "parse_server"]

logger = logging.getLogger("django_rustcache.memcached")

# pylibmc behaviors we act on, and those we accept because they have no meaning for our client
# (tcp_nodelay is always on; our pool, not libmemcached's I/O tuning, decides the rest).
BEHAVIORS = frozenset(
    {
        "ketama_hash",
        "num_replicas",
        "_sort_hosts",
        "sort_hosts",
        "pickle_protocol",
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
_IO_TUNING = "libmemcached's I/O tuning: our client pipelines multi-key calls and bounds each call by one deadline"
# Behaviors that change nothing where our client is concerned, and why (the system check's W001).
NO_EFFECT_BEHAVIORS = {
    "tcp_nodelay": "TCP_NODELAY is always on",
    "tcp_keepalive": "pooled connections are checked before every use instead",
    "no_block": _IO_TUNING,
    "cas": "CAS is not offered (Django's cache API has no cas())",
    "buffer_requests": _IO_TUNING,
    "verify_keys": "keys are always checked, before anything is sent (InvalidCacheKey)",
    "_noreply": "every write waits for the server's answer (set_many reports the keys that failed)",
    "_io_msg_watermark": _IO_TUNING,
    "_io_bytes_watermark": _IO_TUNING,
    "_io_key_prefetch": _IO_TUNING,
    "_hash_with_prefix_key": "libmemcached's own prefix key is never set by pylibmc, so keys hash the same",
    "_poll_timeout": "one deadline per call (timeout, send_timeout/receive_timeout) bounds every wait",
    "_socket_send_size": "socket buffers keep the system's sizes",
    "_socket_recv_size": "socket buffers keep the system's sizes",
}
# Values that ask for what our client does anyway: no warning.
NO_EFFECT_WHEN = {"tcp_nodelay": True, "verify_keys": True, "no_block": True, "_noreply": False, "cas": False}
ACCEPTED_BEHAVIORS = frozenset(NO_EFFECT_BEHAVIORS)
# Top-level OPTIONS of Django's PyLibMCCache and PyMemcacheCache, and our own.
OPTIONS = frozenset(
    {
        # Ours: whether this cache's calls are counted (see the README's Metrics); signed values.
        "METRICS",
        "SIGN",
        "KEY_HASHING",
        "STAMPEDE",
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


def parse_server(server: Any) -> tuple[str, int, int]:
    """A LOCATION entry as ``(host, port, weight)``; port 0 means a unix socket path (given as
    ``unix:/path`` or ``/path``: a ``host:0`` is an error, never a socket path)."""
    weight = 1
    if isinstance(server, (tuple, list)):
        server, weight = server[0], setting_count(server[1], f"the weight of memcached server {server[0]!r}")
    server = str(server).strip()
    where = f"memcached LOCATION {server!r}"
    if server.startswith("unix:"):
        return server.removeprefix("unix:"), 0, weight
    if server.startswith("/"):
        return server, 0, weight
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        return host, setting_port(rest.removeprefix(":") or 11211, where), weight
    if server.count(":") == 1:
        host, port = server.split(":")
        if not host:
            raise ImproperlyConfigured(f"{where}: no host")
        return host, setting_port(port, where), weight
    return server, 11211, weight


@dataclasses.dataclass(frozen=True)
class MemcachedSettings:
    """Everything a memcached client is made from (one client per distinct value)."""

    servers: tuple[tuple[str, int, int], ...]
    distribution: str
    hash: str
    connect_timeout: float
    send_timeout: float
    receive_timeout: float
    retry_timeout: float
    window_on_any_failure: bool
    remove_failed: int
    dead_timeout: float
    max_idle: int
    min_compress_len: int
    compress_level: int
    pickle_protocol: int
    behaviors: tuple[tuple[str, str], ...]
    username: str | None
    password: str | None
    binary: bool
    # OPTIONS["SIGN"]: the secrets values are checked with, whether writes are signed, and
    # whether values without a tag are read (see _signing).
    sign_secrets: tuple[bytes, ...] | None = None
    sign_writes: bool = False
    sign_accept_unsigned: bool = True
    # OPTIONS["KEY_HASHING"]: a key memcached would refuse takes a digest form instead.
    key_hashing: bool = False


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class MemcachedCache(NativeAsync[MemcachedClient], NetworkCache[MemcachedClient]):
    """Memcached backend with Django's exact semantics."""

    known_options = OPTIONS
    _system_name = "memcached"
    nested_options = {"behaviors": BEHAVIORS}
    nested_no_effect = {"behaviors": NO_EFFECT_BEHAVIORS}
    no_effect_when = NO_EFFECT_WHEN
    # The failure logger, and whether failures are logged and answered instead of raised.
    _failure_logger = logger
    _env_overrides_location = False
    # Django's set() returns None; django-pylibmc's returns whether it stored.
    _set_returns_bool = False
    # pylibmc's names, which Django's own memcached tests patch on `_class`.
    _get_many_method = "get_multi"
    _set_many_method = "set_multi"
    _delete_many_method = "delete_multi"

    def _configure(self) -> MemcachedSettings:
        env_servers = _env("MEMCACHE_SERVERS", "MEMCACHIER_SERVERS")
        if env_servers and (self._env_overrides_location or not self._servers):
            self._servers = split_location(env_servers)
        if not self._servers:
            raise ImproperlyConfigured(
                f"{type(self).__name__} needs a LOCATION (or the MEMCACHE_SERVERS environment variable)"
            )
        self._ignore_exc = setting_flag(
            self._options.get("ignore_exc", self._options.get("IGNORE_EXCEPTIONS", False)), "OPTIONS['ignore_exc']"
        )
        return self._client_settings()

    def _behaviors(self) -> dict[str, Any]:
        return dict(self._options.get("behaviors") or {})

    def _credentials(self) -> tuple[str | None, str | None]:
        username = self._options.get("username") or _env("MEMCACHE_USERNAME", "MEMCACHIER_USERNAME")
        password = self._options.get("password") or _env("MEMCACHE_PASSWORD", "MEMCACHIER_PASSWORD")
        return username, password

    def _client_settings(self) -> MemcachedSettings:
        """Everything the client is made from."""
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
        ketama_hash = b.get("ketama_hash")
        if ketama_hash is not None and distribution != "modula" and str(ketama_hash) != hash_:
            # libmemcached hashes the continuum's points with it: another hash than the keys' would
            # put keys on other servers than pylibmc does, so it is refused rather than ignored.
            raise ImproperlyConfigured(
                f"memcached behaviors['ketama_hash'] = {ketama_hash!r} is not supported: the ketama points are hashed "
                f"with the key hash ({hash_!r}); remove it, or set it to {hash_!r}"
            )
        if int(b.get("num_replicas") or 0) > 0:
            raise ImproperlyConfigured(
                "memcached behaviors['num_replicas'] (libmemcached's replication: every write stored on several "
                "servers) is not supported; remove it, or set it to 0"
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
        sign_secrets, sign_writes, sign_accept_unsigned = sign_settings(o)
        username, password = self._credentials()
        if bool(username) != bool(password):
            raise ImproperlyConfigured("memcached SASL authentication needs both a username and a password")
        servers = [parse_server(s) for s in self._servers]
        if b.get("_sort_hosts") or b.get("sort_hosts"):
            # libmemcached's sort: by host name (byte order), then port, before the ring is made;
            # with modula it decides which server holds which key.
            servers.sort(key=lambda s: (s[0].encode(), s[1]))
        return MemcachedSettings(
            servers=tuple(servers),
            distribution=distribution,
            hash=hash_,
            connect_timeout=setting_seconds(connect, "the connect_timeout"),
            send_timeout=setting_seconds(send, "the send timeout (OPTIONS['timeout'] or behaviors['send_timeout'])"),
            receive_timeout=setting_seconds(
                receive, "the receive timeout (OPTIONS['timeout'] or behaviors['receive_timeout'])"
            ),
            retry_timeout=setting_seconds(
                b.get("retry_timeout", o.get("retry_timeout", 2)), "the retry_timeout", zero=True
            ),
            # pylibmc's window after any failure only where its retry_timeout behavior asks for it;
            # otherwise (pymemcache's way) only a silent server is skipped for a while.
            window_on_any_failure="retry_timeout" in b,
            remove_failed=setting_count(remove_failed, "behaviors['remove_failed']", minimum=0),
            dead_timeout=setting_seconds(b.get("dead_timeout", o.get("dead_timeout", 10)) or 10, "the dead_timeout"),
            max_idle=setting_count(o.get("max_pool_size", 32) or 32, "OPTIONS['max_pool_size']"),
            min_compress_len=setting_count(min_compress or 0, "the minimum compression length", minimum=0),
            compress_level=int(level),
            pickle_protocol=int(protocol),
            behaviors=tuple(sorted((str(k), repr(v)) for k, v in b.items())),
            username=username or None,
            password=password or None,
            binary=setting_flag(o.get("binary", False), "OPTIONS['binary']"),
            sign_secrets=sign_secrets,
            sign_writes=sign_writes,
            sign_accept_unsigned=sign_accept_unsigned,
            key_hashing=setting_flag(o.get("KEY_HASHING", False), "OPTIONS['KEY_HASHING']"),
        )

    def _make_client(self, s: MemcachedSettings) -> MemcachedClient:
        return self._class(
            list(s.servers),
            distribution=s.distribution,
            hash=s.hash,
            connect_timeout=s.connect_timeout,
            send_timeout=s.send_timeout,
            receive_timeout=s.receive_timeout,
            retry_timeout=s.retry_timeout,
            window_on_any_failure=s.window_on_any_failure,
            remove_failed=s.remove_failed,
            dead_timeout=s.dead_timeout,
            max_idle=s.max_idle,
            min_compress_len=s.min_compress_len,
            compress_level=s.compress_level,
            pickle_protocol=s.pickle_protocol,
            behaviors=self._behaviors(),
            binary=s.binary,
            username=s.username,
            password=s.password,
            sign_secrets=None if s.sign_secrets is None else list(s.sign_secrets),
            sign_writes=s.sign_writes,
            sign_accept_unsigned=s.sign_accept_unsigned,
            key_hashing=s.key_hashing,
        )

    @property
    def _class(self) -> type[MemcachedClient]:
        return Client

    @property
    def client_servers(self) -> list[str]:
        return [s.removeprefix("unix:") if isinstance(s, str) else s for s in self._servers]

    def validate_key(self, key: str) -> None:
        """Django's memcached rule (InvalidCacheKey); with OPTIONS["KEY_HASHING"], a key the
        server would refuse is accepted: the core stores it under its digest form."""
        if getattr(self._settings, "key_hashing", False):
            return
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

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        try:
            stored = self._cache.set(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            stored = self._failed(e, False)
        return stored if self._set_returns_bool else None

    def has_key(self, key: Any, version: Any = None) -> bool:
        try:
            return self._cache.has_key(*self._parts(key, version))
        except CacheError as e:
            return bool(self._failed(e, False))

    @answers(None)
    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        # Atomic on the server. A missing key is Django's ValueError, even when failures are
        # ignored: the caller asked for a number and there is none.
        return self._cache.incr(*self._parts(key, version), delta)

    @answers(None)
    def clear(self) -> None:
        self._cache.flush_all()

    # --- the async twins of the above (the rest of Django's API: NativeAsync) ---------------

    async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        try:
            stored = await self._cache.aset(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            stored = self._failed(e, False)
        return stored if self._set_returns_bool else None

    async def ahas_key(self, key: Any, version: Any = None) -> bool:
        try:
            return await self._cache.ahas_key(*self._parts(key, version))
        except CacheError as e:
            return bool(self._failed(e, False))

    @answers(None)
    async def aincr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return await self._cache.aincr(*self._parts(key, version), delta)

    @answers(None)
    async def aclear(self) -> None:
        await self._cache.aflush_all()

    def server_stats(self) -> dict[str, Any]:
        """Each server's own ``stats`` output."""
        return self._cache.server_stats()


class Client(MemcachedClient):
    """The client class backends instantiate (Django's tests patch methods on ``_class``)."""


class PyLibMCCache(MemcachedCache):
    """django-pylibmc's PyLibMCCache: timeout 0 never expires, server errors are logged and
    answered (default / False) instead of raised, BINARY/USERNAME/PASSWORD top-level params and
    OPTIONS taken as pylibmc behaviors."""

    known_options = BEHAVIORS | OPTIONS
    no_effect = NO_EFFECT_BEHAVIORS
    nested_options: dict[str, frozenset[str]] = {}
    nested_no_effect: dict[str, dict[str, str]] = {}
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
