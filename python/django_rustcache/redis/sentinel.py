"""Redis Sentinel settings, in the forms sites already write them.

django-redis's (``CLIENT_CLASS = "django_redis.client.SentinelClient"``, or its default client with
``DJANGO_REDIS_CONNECTION_FACTORY = "django_redis.pool.SentinelConnectionFactory"``)::

    "LOCATION": "redis://[:password@]mymaster/0",       # the service's name as the host
    # or ["redis://mymaster/0?is_master=1", "redis://mymaster/0?is_master=0"]
    "OPTIONS": {"SENTINELS": [("s1", 26379), ...], "SENTINEL_KWARGS": {"password": ...}}

and ours, with the service named in OPTIONS (LOCATION then only gives the data nodes'
credentials and db, and may be left out)::

    "OPTIONS": {"SENTINELS": [...], "SENTINEL_SERVICE": "mymaster", "REPLICA_READ": True}

The data nodes' password, db and TLS (``rediss://``) come from LOCATION and OPTIONS as for one
server; the sentinels' own come from ``SENTINEL_KWARGS`` only (redis-py's rule), so one can be
set without the other.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

from django_rustcache._network import setting_flag, setting_port, setting_seconds
from django_rustcache.redis.tls import TlsArgs, settings_args

SENTINEL_CLIENTS = frozenset({"django_redis.client.SentinelClient", "django_redis.client.sentinel.SentinelClient"})
# redis-py's pool class under django-redis's Sentinel factory: its work is ours here.
SENTINEL_POOLS = frozenset({"redis.sentinel.SentinelConnectionPool", "redis.SentinelConnectionPool"})
OPTIONS = frozenset(
    {"SENTINELS", "SENTINEL_KWARGS", "SENTINEL_SERVICE", "SENTINEL_SERVICE_NAME", "REPLICA_READ", "CONNECTION_FACTORY"}
)
# What SENTINEL_KWARGS may hold (redis-py's names); the rest of redis-py's socket tuning has no
# meaning for our client.
_KWARGS = frozenset({"password", "username", "ssl", "socket_connect_timeout", "socket_timeout"})
_IGNORED_KWARGS = frozenset(
    {"socket_keepalive", "socket_keepalive_options", "retry_on_timeout", "health_check_interval"}
)


@dataclasses.dataclass(frozen=True)
class SentinelSettings:
    """Where the sentinels are, the service, and how to talk to the sentinels."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    replica_reads: bool
    username: str | None
    password: str | None
    tls: TlsArgs | None
    connect_timeout: float | None

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "sentinels": list(self.sentinels),
            "service": self.service,
            "replica_reads": self.replica_reads,
            "sentinel_username": self.username,
            "sentinel_password": self.password,
            "sentinel_tls": self.tls,
            "sentinel_connect_timeout": self.connect_timeout,
        }


def _sentinel(entry: Any) -> tuple[str, int]:
    where = f"OPTIONS['SENTINELS'] entry {entry!r}"
    if isinstance(entry, str):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host:
            raise ImproperlyConfigured(f"{where}: give (host, port) or 'host:port'")
        host = host.strip("[]")
    elif isinstance(entry, (tuple, list)) and len(entry) == 2:
        host, port = entry
    else:
        raise ImproperlyConfigured(f"{where}: give (host, port) or 'host:port'")
    return str(host), setting_port(port, where)


def _without_role(url: str) -> tuple[str, bool]:
    """A LOCATION entry without django-redis's ``is_master`` query, and what it said (True when
    absent: redis-py's default)."""
    parts = urlsplit(url if "://" in url else f"redis://{url}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    said = [v for k, v in query if k == "is_master"]
    master = not said or said[-1].strip().lower() not in {"0", "f", "false", "n", "no", "off"}
    rest = urlencode([(k, v) for k, v in query if k != "is_master"])
    return urlunsplit(parts._replace(query=rest)), master


def sentinel_settings(
    servers: list[str], options: dict[str, Any], client_class: str | None
) -> tuple[str, SentinelSettings] | None:
    """The data nodes' URL (credentials, db, scheme) and the Sentinel settings, or None when
    OPTIONS name no sentinels."""
    raw = options.get("SENTINELS")
    if not raw:
        if client_class in SENTINEL_CLIENTS:
            raise ImproperlyConfigured("OPTIONS['SENTINELS'] must be given as a list of (host, port)")
        return None
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part.strip()]
    elif isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], str) and isinstance(raw[1], int):
        raw = [raw]  # one sentinel, as (host, port)
    sentinels = tuple(_sentinel(e) for e in raw)
    named = options.get("SENTINEL_SERVICE", options.get("SENTINEL_SERVICE_NAME"))
    entries = [_without_role(s) for s in servers]
    masters = [url for url, is_master in entries if is_master]
    services = {host for url, _ in entries if (host := urlsplit(url).hostname)}
    if named is None:
        if len(services) != 1:
            raise ImproperlyConfigured(
                "Redis Sentinel: name the service as LOCATION's host ('redis://mymaster/0') or in "
                f"OPTIONS['SENTINEL_SERVICE'] (LOCATION names {sorted(services) or 'none'})"
            )
        named = services.pop()
    if not isinstance(named, str) or not named:
        raise ImproperlyConfigured(f"OPTIONS['SENTINEL_SERVICE'] = {named!r}: the master's name in the sentinels")
    url = masters[0] if masters else (entries[0][0] if entries else f"redis://{named}")
    replica_reads = client_class in SENTINEL_CLIENTS or any(not is_master for _, is_master in entries)
    if "REPLICA_READ" in options:
        replica_reads = setting_flag(options["REPLICA_READ"], "OPTIONS['REPLICA_READ']")
    kwargs = options.get("SENTINEL_KWARGS") or {}
    if not isinstance(kwargs, dict):
        raise ImproperlyConfigured(f"OPTIONS['SENTINEL_KWARGS'] = {kwargs!r} is not a dict")
    unknown = set(kwargs) - _KWARGS - _IGNORED_KWARGS - {k for k in kwargs if k.startswith("ssl_")}
    if unknown:
        raise ImproperlyConfigured(f"OPTIONS['SENTINEL_KWARGS']: unknown settings {sorted(unknown)}")
    tls = None
    if setting_flag(kwargs.get("ssl", False), "OPTIONS['SENTINEL_KWARGS']['ssl']"):
        tls = settings_args(dict(kwargs), "OPTIONS['SENTINEL_KWARGS']")
    timeout = kwargs.get("socket_connect_timeout", kwargs.get("socket_timeout"))
    return url, SentinelSettings(
        sentinels=sentinels,
        service=named,
        replica_reads=replica_reads,
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        tls=tls,
        connect_timeout=None if timeout is None else setting_seconds(timeout, "OPTIONS['SENTINEL_KWARGS'] timeout"),
    )
