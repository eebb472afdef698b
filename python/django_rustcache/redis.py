"""Redis backend on the Rust core (the ``redis`` crate under our own pool).

A drop-in for Django's RedisCache: the same LOCATION forms (a list means the first server takes
every write and reads go to a random one of the others), the same timeout rules, and the same
data format (ints as digits, everything else pickled), so a site switching keeps its cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured

from django_rustcache import checks as _checks  # noqa: F401  (registers the option check)
from django_rustcache._async import NativeAsync
from django_rustcache._codec import FORMAT_OPTIONS, load_class, value_format
from django_rustcache._collections import RedisCollections
from django_rustcache._core import CacheError, RedisClient
from django_rustcache._failures import answers
from django_rustcache._network import NetworkCache, setting_count, setting_flag, setting_port, setting_seconds
from django_rustcache._raw import get_redis_connection
from django_rustcache._sentinel import OPTIONS as SENTINEL_OPTIONS
from django_rustcache._sentinel import SENTINEL_CLIENTS, SENTINEL_POOLS, SentinelSettings, sentinel_settings
from django_rustcache._tls import ALL_NAMES as TLS_NAMES
from django_rustcache._tls import option_items as tls_option_items
from django_rustcache._tls import split as tls_split

__all__ = ["Lock", "LockError", "RedisCache", "RedisClusterCache", "get_redis_connection", "location_url"]

logger = logging.getLogger("django_rustcache.redis")

# Options of Django's RedisCache, django-redis and django-redis-cache that we act on.
OPTIONS = frozenset(
    {
        "db", "DB", "password", "PASSWORD", "username", "USERNAME",
        "socket_timeout", "SOCKET_TIMEOUT", "socket_connect_timeout", "SOCKET_CONNECT_TIMEOUT",
        "max_connections", "MAX_CONNECTIONS", "CONNECTION_POOL_KWARGS",
        "pickle_version", "PICKLE_VERSION", "IGNORE_EXCEPTIONS", "ignore_exc", "MASTER_CACHE",
        "RETRY_TIMEOUT", "retry_timeout", "client_name", "CLIENT_NAME", "CLUSTER", "read_from_replicas",
        "CLIENT_CLASS", "REDIS_CLIENT_KWARGS", "CONNECTION_POOL_CLASS_KWARGS",
    }
) | FORMAT_OPTIONS | TLS_NAMES | SENTINEL_OPTIONS  # fmt: skip
# Options that name the predecessors' own machinery, or tune redis-py's connections (Django's
# RedisCache passes its OPTIONS on to redis-py's pool, django-redis its CONNECTION_POOL_KWARGS
# and REDIS_CLIENT_KWARGS): accepted, with nothing to do here, and why (the system check's
# W001 says it). Our pool bounds every call with one deadline and checks a pooled connection
# before it carries a request.
_PARSER = "replies are parsed by the Rust core, not by a redis-py parser class"
_POOL = "the Rust core keeps its own pool per server (bounded by MAX_CONNECTIONS), not a redis-py pool class"
_RETRY = (
    "a pooled connection the server closed is replaced before use and a request that never went out is "
    "sent again; other failures are not retried (a command may already have run)"
)
_KEEPALIVE = "pooled connections are checked before every use instead"
_ENCODING = "values are pickled or serialized by the backend, never decoded as text"
REDIS_PY_NO_EFFECT = {
    "parser_class": _PARSER, "connection_class": "connections are the Rust core's own",
    "retry_on_timeout": _RETRY, "retry_on_error": _RETRY, "retry": _RETRY,
    "socket_keepalive": _KEEPALIVE, "socket_keepalive_options": _KEEPALIVE, "health_check_interval": _KEEPALIVE,
    "socket_read_size": "the Rust core sizes its own read buffers",
    "encoding": _ENCODING, "encoding_errors": _ENCODING, "decode_responses": _ENCODING,
    "lib_name": "CLIENT SETINFO is not sent", "lib_version": "CLIENT SETINFO is not sent",
    "single_connection_client": _POOL, "protocol": "the core speaks RESP2 on its request connections",
    "timeout": "waiting for a free pooled connection is bounded by SOCKET_TIMEOUT, the call's one deadline",
}  # fmt: skip
NO_EFFECT = {
    **REDIS_PY_NO_EFFECT,
    "PARSER_CLASS": _PARSER, "pool_class": _POOL, "CONNECTION_POOL_CLASS": _POOL,
    "REDIS_CLIENT_CLASS": "calls go through the Rust client, not a redis-py client class",
    "CLOSE_CONNECTION": (
        "close() keeps the pooled connections for the next request (one pool per process, made again after a fork)"
    ),
    "REPLICA_READ_ONLY": (
        "writes go to the leader only; django-redis's REPLICA_READ_ONLY=False (a failed write tried on a replica) "
        "is not done"
    ),
}  # fmt: skip
# Settings of the predecessors that ask for what we do anyway: no warning for these values.
NO_EFFECT_WHEN = {"REPLICA_READ_ONLY": True, "CLOSE_CONNECTION": False}
# Keys of the predecessors' nested connection settings (django-redis's CONNECTION_POOL_KWARGS and
# REDIS_CLIENT_KWARGS, django-redis-cache's CONNECTION_POOL_CLASS_KWARGS) that we act on; their
# other keys that redis-py knows have no effect (REDIS_PY_NO_EFFECT), and any other is an error.
POOL_KWARGS = frozenset(
    {"max_connections", "password", "username", "db", "socket_timeout", "socket_connect_timeout", "client_name"}
)
NESTED = ("CONNECTION_POOL_KWARGS", "REDIS_CLIENT_KWARGS", "CONNECTION_POOL_CLASS_KWARGS")


_UNIX_SCHEMES = ("unix", "redis+unix", "valkey+unix")
_TCP_SCHEMES = ("redis", "rediss", "valkey", "valkeys")
# redis-py's query names for credentials (and the redis crate's, on unix:// URLs).
_USER_QUERY = ("username", "user")
_PASSWORD_QUERY = ("password", "pass")


def _first(query: dict[str, list[str]], names: tuple[str, ...]) -> str | None:
    return next((query[n][0] for n in names if query.get(n)), None)


def location_url(server: str) -> str:
    """A LOCATION entry as a URL the core understands, from every form redis-py's ``from_url``
    accepts: ``redis://[[user]:[password]@]host[:port][/db]``, ``rediss://...``,
    ``unix://[[user]:[password]@]/path.sock[?db=N]``, credentials and the db also as ``?username=``,
    ``?password=``, ``?db=`` queries, percent-encoded or not, ``host:port``, or a bare socket
    path (whose credentials and db come from OPTIONS). A TCP port outside 1-65535, a unix URL
    without a path, or an unknown scheme is an ImproperlyConfigured naming the entry."""
    server = server.strip()
    if server.startswith("/"):
        return f"unix://{quote(server)}"
    url = server if "://" in server else f"redis://{server}"
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    user = unquote(parts.username) if parts.username else _first(query, _USER_QUERY)
    password = unquote(parts.password) if parts.password is not None and parts.password != "" else None
    password = password if password is not None else _first(query, _PASSWORD_QUERY)
    rest = [(k, v) for k, values in query.items() if k not in _USER_QUERY + _PASSWORD_QUERY for v in values]
    if parts.scheme in _UNIX_SCHEMES:
        path = unquote(parts.path)
        if not path.strip("/"):
            raise ImproperlyConfigured(f"redis LOCATION {server!r}: a unix:// URL needs the socket's path")
        # The redis crate reads a unix socket's credentials from ?user= and ?pass=.
        extra = ([("user", user)] if user else []) + ([("pass", password)] if password else [])
        q = urlencode(rest + extra)
        return f"unix://{quote(path)}" + (f"?{q}" if q else "")
    if parts.scheme not in _TCP_SCHEMES:
        raise ImproperlyConfigured(f"redis LOCATION {server!r}: unknown scheme {parts.scheme!r}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    hostport = parts.netloc.rpartition("@")[2]
    if port is not None or ":" in hostport.rpartition("]")[2]:
        setting_port(port, f"redis LOCATION {server!r}")
    auth = ""
    if user or password:
        auth = quote(user or "", safe="") + (":" + quote(password, safe="") if password else "") + "@"
    return urlunsplit((parts.scheme, auth + hostport, parts.path, urlencode(rest), ""))


@dataclasses.dataclass(frozen=True)
class RedisSettings:
    """Everything a redis client is made from (one client per distinct value)."""

    servers: tuple[str, ...]
    username: str | None
    password: str | None
    connect_timeout: float
    socket_timeout: float
    max_connections: int
    retry_timeout: float
    pickle_protocol: int | None
    client_name: str | None
    # The value format, by what the OPTIONS say (their classes are made once per client).
    value_format: str
    # The TLS settings OPTIONS give, for the servers whose URLs are rediss:// (see _tls).
    tls_options: tuple[tuple[str, Any], ...] = ()
    # With Redis Sentinel: the sentinels (``servers`` is then the data nodes' one URL).
    sentinel: SentinelSettings | None = None


def connection_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The keys we act on of the predecessors' nested connection settings, merged:
    django-redis-cache's CONNECTION_POOL_CLASS_KWARGS, then django-redis's REDIS_CLIENT_KWARGS and
    CONNECTION_POOL_KWARGS over it (the last is what django-redis hands redis-py's pool)."""
    merged: dict[str, Any] = {}
    for name in ("CONNECTION_POOL_CLASS_KWARGS", "REDIS_CLIENT_KWARGS", "CONNECTION_POOL_KWARGS"):
        given = options.get(name) or {}
        if not isinstance(given, dict):
            raise ImproperlyConfigured(f"OPTIONS[{name!r}] must be a dict, not {type(given).__name__}")
        merged.update((k, v) for k, v in given.items() if k in POOL_KWARGS and v is not None)
    return merged


def with_db(url: str, db: int | None) -> str:
    """`url` selecting `db`, unless it names a db itself: as in redis-py's ``from_url``, what the
    URL says wins over OPTIONS."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme != "unix" and "db" in query:
        # redis-py reads ?db= on any URL (over the path); the redis crate only on unix:// ones.
        rest = urlencode([(k, v) for k, values in query.items() if k != "db" for v in values])
        return urlunsplit(parts._replace(path=f"/{query['db'][0]}", query=rest))
    if db is None or "db" in query or (parts.scheme != "unix" and parts.path.strip("/")):
        return url
    if parts.scheme == "unix":
        return urlunsplit(parts._replace(query=f"{parts.query}&db={db}" if parts.query else f"db={db}"))
    return urlunsplit(parts._replace(path=f"/{db}"))


# Stand-ins for the key and the version while a SCAN pattern is made (see _pattern).
_KEY_MARK = "rustcacheKEYmark0"
_VERSION_MARK = "rustcacheVERSIONmark0"
_GLOB = re.compile(r"[*?\[\]\\]")

# Options naming a class by dotted path that we do not use (see NO_EFFECT).
CLASS_PATHS = frozenset({"PARSER_CLASS", "parser_class", "pool_class", "CONNECTION_POOL_CLASS", "REDIS_CLIENT_CLASS"})
# redis-py's own parser and pool classes, under the names any of its versions used: accepted
# whether or not the installed redis-py (if any) still has them, since we use none of them.
REDIS_PY_CLASSES = frozenset(
    {
        "redis.connection.PythonParser", "redis.connection.HiredisParser", "redis.connection._HiredisParser",
        "redis._parsers.PythonParser", "redis._parsers._HiredisParser", "redis._parsers._RESP2Parser",
        "redis._parsers._RESP3Parser", "redis.connection.ConnectionPool", "redis.ConnectionPool",
        "redis.connection.BlockingConnectionPool", "redis.BlockingConnectionPool",
        "redis.Redis", "redis.client.Redis", "redis.StrictRedis", "redis.client.StrictRedis",
    }
) | SENTINEL_POOLS  # fmt: skip

# django-redis's ShardClient (or ours by name): the LOCATION list is shards, placed by its ring.
SHARD_CLIENTS = frozenset({"django_redis.client.ShardClient", "django_redis.client.sharded.ShardClient"})

# CLIENT_CLASS values whose behaviour is ours already; any other client class changes the data
# format or the topology (django-redis's HerdClient, ShardClient, SentinelClient).
DEFAULT_CLIENTS = frozenset({"django_redis.client.DefaultClient", "django_redis.client.default.DefaultClient"})


class RedisCache(NativeAsync, NetworkCache, RedisCollections):
    """Redis backend with Django's RedisCache semantics, and django-redis's extensions and
    collection API."""

    known_options = OPTIONS
    no_effect = NO_EFFECT
    no_effect_when = NO_EFFECT_WHEN
    nested_options = dict.fromkeys(NESTED, POOL_KWARGS | TLS_NAMES)
    nested_no_effect = dict.fromkeys(NESTED, REDIS_PY_NO_EFFECT)
    _failure_logger = logger
    # The db when neither LOCATION nor OPTIONS name one (None: the server's default, 0).
    default_db: ClassVar[int | None] = None
    # SCAN's COUNT hint; django-redis's setting when a site has it (its default, 10, is slow).
    _scan_itersize = 1000

    def _configure(self) -> RedisSettings:
        if not self._servers and not self._options.get("SENTINELS"):
            raise ImproperlyConfigured("RedisCache needs a LOCATION")
        # django-redis's global switches, overridden per cache by OPTIONS.
        self._ignore_exc = setting_flag(
            self._options.get(
                "IGNORE_EXCEPTIONS",
                self._options.get("ignore_exc", getattr(settings, "DJANGO_REDIS_IGNORE_EXCEPTIONS", False)),
            ),
            "OPTIONS['IGNORE_EXCEPTIONS']",
        )
        self._log_ignored = setting_flag(
            getattr(settings, "DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS", True), "DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS"
        )
        self._scan_itersize = setting_count(
            getattr(settings, "DJANGO_REDIS_SCAN_ITERSIZE", 1000), "DJANGO_REDIS_SCAN_ITERSIZE"
        )
        leader = self._options.get("MASTER_CACHE")
        if leader:
            # django-redis-cache: MASTER_CACHE names the server that takes the writes.
            rest = [s for s in self._servers if location_url(s) != location_url(leader)]
            self._servers = [leader, *rest]
        self._note_foreign_machinery()
        made = self._client_settings()
        for url in made.servers:
            tls_split(url, made.tls_options)  # a TLS setting that cannot work fails now
        return made

    def _note_foreign_machinery(self) -> None:
        """Options that name the predecessors' client, parser or pool classes: their defaults have
        nothing to do here (a note in the log); a client class with another data format or
        topology is an error rather than a silent change."""
        client_class = self._options.get("CLIENT_CLASS")
        if client_class is not None and client_class not in DEFAULT_CLIENTS | SHARD_CLIENTS | SENTINEL_CLIENTS:
            raise ImproperlyConfigured(
                f"OPTIONS['CLIENT_CLASS'] = {client_class!r} is not supported by django-rustcache's RedisCache: "
                "it would change how values are stored or routed. Remove it to use the default client."
            )
        for name in sorted(NO_EFFECT.keys() & self._options.keys()):
            value = self._options[name]
            if name in CLASS_PATHS and isinstance(value, str) and value not in REDIS_PY_CLASSES:
                # Ignored, but still a dotted path that must import, as it did for the predecessor.
                load_class(value, name)
            logger.info("OPTIONS[%r] = %r has no meaning for django-rustcache and is ignored", name, value)
        # The serializer and compressor classes are made with the client; a path that does not
        # import is reported now (by the system check, and at first use).
        value_format(self._options, 5)

    def _client_settings(self) -> RedisSettings:
        o = self._options
        # The predecessors' nested connection settings (django-redis passes CONNECTION_POOL_KWARGS
        # and REDIS_CLIENT_KWARGS over its OPTIONS to redis-py, django-redis-cache its
        # CONNECTION_POOL_CLASS_KWARGS to the pool): what they say wins over the top level, and the
        # LOCATION's own credentials and db over both, as in redis-py's from_url.
        nested = connection_kwargs(o)
        db = nested.get("db", o.get("db", o.get("DB", self.default_db)))
        db = None if db is None else setting_count(db, "OPTIONS['DB']", minimum=0)
        max_connections = nested.get("max_connections", o.get("max_connections", o.get("MAX_CONNECTIONS", 64)))
        protocol = o.get("pickle_version", o.get("PICKLE_VERSION", -1))
        servers = [str(s) for s in self._servers]
        sentinel = sentinel_settings(servers, o, o.get("CLIENT_CLASS"))
        if sentinel is not None:
            if self._sharded or self._cluster:
                raise ImproperlyConfigured(
                    "OPTIONS['SENTINELS'] cannot be combined with a sharding CLIENT_CLASS or a cluster"
                )
            servers = [sentinel[0]]
        if self._cluster:
            if self._sharded:
                raise ImproperlyConfigured("a Redis Cluster is sharded by its slots: remove the sharding CLIENT_CLASS")
            if db:
                raise ImproperlyConfigured(f"a Redis Cluster has only db 0, not OPTIONS['DB'] = {db!r}")
        return RedisSettings(
            servers=tuple(with_db(location_url(s), db) for s in servers),
            sentinel=None if sentinel is None else sentinel[1],
            username=nested.get("username", o.get("username", o.get("USERNAME"))),
            password=nested.get("password", o.get("password", o.get("PASSWORD"))),
            connect_timeout=setting_seconds(
                nested.get(
                    "socket_connect_timeout", o.get("socket_connect_timeout", o.get("SOCKET_CONNECT_TIMEOUT", 1.0))
                ),
                "OPTIONS['SOCKET_CONNECT_TIMEOUT']",
            ),
            socket_timeout=setting_seconds(
                nested.get("socket_timeout", o.get("socket_timeout", o.get("SOCKET_TIMEOUT", 3.0))),
                "OPTIONS['SOCKET_TIMEOUT']",
            ),
            max_connections=setting_count(
                64 if max_connections is None else max_connections, "OPTIONS['MAX_CONNECTIONS']"
            ),
            # After a connection failure the server is skipped (calls fail at once) this long.
            retry_timeout=setting_seconds(
                o.get("RETRY_TIMEOUT", o.get("retry_timeout", 1.0)), "OPTIONS['RETRY_TIMEOUT']", zero=True
            ),
            pickle_protocol=None if protocol is None or int(protocol) < 0 else int(protocol),
            client_name=nested.get("client_name", o.get("client_name", o.get("CLIENT_NAME"))),
            value_format=repr(sorted((k, repr(v)) for k, v in o.items() if k in FORMAT_OPTIONS)),
            tls_options=tls_option_items(o),
        )

    @property
    def _sharded(self) -> bool:
        return self._options.get("CLIENT_CLASS") in SHARD_CLIENTS

    # A Redis Cluster (RedisClusterCache, or OPTIONS["CLUSTER"]): LOCATION lists seed nodes.
    cluster: ClassVar[bool] = False

    @property
    def _cluster(self) -> bool:
        return self.cluster or setting_flag(self._options.get("CLUSTER", False), "OPTIONS['CLUSTER']")

    def _make_client(self, s: RedisSettings) -> RedisClient:
        if self._cluster:
            # The seeds give the scheme and credentials every node is reached with; each shard is
            # its primary and (with REPLICA_READ / read_from_replicas) its replicas for reads.
            o = self._options
            replica_reads = setting_flag(
                o.get("REPLICA_READ", o.get("read_from_replicas", False)), "OPTIONS['REPLICA_READ']"
            )
            return self._make_one(s, topology="cluster", replica_reads=replica_reads)
        if self._sharded and len(s.servers) > 1:
            # django-redis's ring names the servers as it does: LOCATION split at "," (not
            # stripped), or the list as written.
            raw = self._init_args[0]
            names = raw.split(",") if isinstance(raw, str) else [str(x) for x in raw]
            return self._make_one(s, topology="sharded", ring="django-redis", ring_names=names)
        return self._make_one(s)

    def _make_one(self, s: RedisSettings, **extra: Any) -> RedisClient:
        fmt = value_format(self._options, 5 if s.pickle_protocol is None else s.pickle_protocol)
        urls, tls = zip(*(tls_split(url, s.tls_options) for url in s.servers), strict=True)
        return RedisClient(
            list(urls),
            tls=list(tls) if any(tls) else [],
            username=s.username,
            password=s.password,
            connect_timeout=s.connect_timeout,
            socket_timeout=s.socket_timeout,
            max_connections=s.max_connections,
            retry_timeout=s.retry_timeout,
            pickle_protocol=s.pickle_protocol,
            client_name=s.client_name,
            **fmt.client_kwargs(),
            **(s.sentinel.client_kwargs() if s.sentinel else {}),
            **extra,
        )

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int | None:
        """Django's rules: None makes the key persistent; non-positive values delete it."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0, int(timeout))

    def set(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool | None:
        """Django's set (returns None); with django-redis's ``nx``/``xx``, store only if the key
        is absent / present, and return whether it was stored."""
        try:
            if nx:
                return self._cache.add(*self._parts(key, version), value, self.get_backend_timeout(timeout))
            if xx:
                ttl = self.get_backend_timeout(timeout)
                if ttl == 0:
                    return bool(self._cache.execute("DEL", self._made(key, version), idempotent=True))
                args: list[Any] = ["SET", self._made(key, version), self._cache.dumps(value)]
                if ttl is not None:
                    args += ["EX", ttl]
                return self._cache.execute(*args, "XX") is not None
            self._cache.set(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            return self._failed(e, False if (nx or xx) else None)
        return None

    @answers(False)
    def has_key(self, key: Any, version: Any = None) -> bool:
        return self._cache.has_key(*self._parts(key, version))

    @answers(None)
    def incr(self, key: Any, delta: int = 1, version: Any = None, ignore_key_check: bool = False) -> int:
        if ignore_key_check:
            # django-redis: a missing key starts from 0 (with no expiry, as INCRBY makes it);
            # past 64 bits it goes on exactly, as the normal incr does.
            parts = self._parts(key, version)
            for _ in range(8):
                try:
                    return self._cache.incr(*parts, delta)
                except ValueError:
                    if self._cache.add(*parts, int(delta), None):
                        return int(delta)
            raise CacheError(f"incr of {key!r} lost 8 races with deletes")
        return self._cache.incr(*self._parts(key, version), delta)

    @answers(None)
    def incr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        """Django's incr_version in one RENAME: atomic, and the key keeps its TTL."""
        if version is None:
            version = self.version
        try:
            self._cache.rename(self._made(key, version), self._made(key, version + delta))
        except ValueError:
            raise ValueError(f"Key '{key}' not found") from None
        return version + delta

    # --- async twins of the above (the rest of Django's API: NativeAsync) -----------------------

    async def aset(  # type: ignore[override]
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool | None:
        try:
            if nx:
                return await self._cache.aadd(*self._parts(key, version), value, self.get_backend_timeout(timeout))
            if xx:
                ttl = self.get_backend_timeout(timeout)
                if ttl == 0:
                    return bool(await self._cache.aexecute("DEL", self._made(key, version), idempotent=True))
                args: list[Any] = ["SET", self._made(key, version), self._cache.dumps(value)]
                if ttl is not None:
                    args += ["EX", ttl]
                return await self._cache.aexecute(*args, "XX") is not None
            await self._cache.aset(*self._parts(key, version), value, self.get_backend_timeout(timeout))
        except CacheError as e:
            return self._failed(e, False if (nx or xx) else None)
        return None

    @answers(None)
    async def aincr(self, key: Any, delta: int = 1, version: Any = None, ignore_key_check: bool = False) -> int:
        parts = self._parts(key, version)
        if ignore_key_check:
            for _ in range(8):
                try:
                    return await self._cache.aincr(*parts, delta)
                except ValueError:
                    if await self._cache.aadd(*parts, int(delta), None):
                        return int(delta)
            raise CacheError(f"incr of {key!r} lost 8 races with deletes")
        return await self._cache.aincr(*parts, delta)

    @answers(None)
    async def aincr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        if version is None:
            version = self.version
        try:
            await self._cache.arename(self._made(key, version), self._made(key, version + delta))
        except ValueError:
            raise ValueError(f"Key '{key}' not found") from None
        return version + delta

    async def adecr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return await self.aincr_version(key, -delta, version)

    @answers(0)
    async def adelete_many(self, keys: Any, version: Any = None) -> int | None:  # type: ignore[override]
        made = [self._made(k, version) for k in keys]
        if not made:
            return None
        return int(await self._cache.aexecute("DEL", *made, idempotent=True))

    async def aclear(self, version: Any = None) -> bool:  # type: ignore[override]
        if version is None:
            try:
                return await self._cache.aclear()
            except CacheError as e:
                return self._failed(e, False)
        await self.adelete_pattern("*", version=version)
        return True

    @answers(None)
    async def attl(self, key: Any, version: Any = None) -> int | None:
        left = await self._cache.aexecute("TTL", self._made(key, version), write=False, idempotent=True)
        return None if left == -1 else max(left, 0)

    @answers(None)
    async def apttl(self, key: Any, version: Any = None) -> int | None:
        left = await self._cache.aexecute("PTTL", self._made(key, version), write=False, idempotent=True)
        return None if left == -1 else max(left, 0)

    @answers(None)
    async def apersist(self, key: Any, version: Any = None) -> bool:
        return bool(await self._cache.aexecute("PERSIST", self._made(key, version), idempotent=True))

    @answers(None)
    async def aexpire(self, key: Any, timeout: Any, version: Any = None) -> bool:
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        made = self._made(key, version)
        if timeout is None:
            await self._cache.aexecute("PERSIST", made, idempotent=True)
            return bool(await self._cache.aexecute("EXISTS", made, idempotent=True))
        return bool(await self._cache.aexecute("EXPIRE", made, int(timeout), idempotent=True))

    @answers(None)
    async def apexpire(self, key: Any, timeout: Any, version: Any = None) -> bool:
        if timeout is DEFAULT_TIMEOUT:
            timeout = None if self.default_timeout is None else self.default_timeout * 1000
        if timeout is None:
            return await self.aexpire(key, None, version)
        return bool(await self._cache.aexecute("PEXPIRE", self._made(key, version), int(timeout), idempotent=True))

    @answers(None)
    async def aexpire_at(self, key: Any, when: datetime.datetime | int | float, version: Any = None) -> bool:
        stamp = int(when.timestamp()) if isinstance(when, datetime.datetime) else int(when)
        return bool(await self._cache.aexecute("EXPIREAT", self._made(key, version), stamp, idempotent=True))

    @answers(None)
    async def apexpire_at(self, key: Any, when: datetime.datetime | int | float, version: Any = None) -> bool:
        stamp = int(when.timestamp() * 1000) if isinstance(when, datetime.datetime) else int(when)
        return bool(await self._cache.aexecute("PEXPIREAT", self._made(key, version), stamp, idempotent=True))

    async def _ascan(self, match: str, itersize: int | None, write: bool = True) -> AsyncIterator[list[bytes]]:
        for node in self._cache.nodes():
            cursor: Any = b"0"
            while True:
                count = itersize or self._scan_itersize
                cursor, batch = await self._cache.aexecute(
                    "SCAN", cursor, "MATCH", match, "COUNT", count, write=write, idempotent=True, node=node
                )
                if batch:
                    yield batch
                if cursor in (b"0", 0, "0"):
                    break

    async def aiter_keys(self, search: str, itersize: int | None = None, version: Any = None) -> AsyncIterator[str]:
        """``iter_keys`` as an async iterator (``async for key in cache.aiter_keys("a*")``)."""
        pattern = self._pattern(search, version)
        try:
            async for batch in self._ascan(pattern, itersize, write=False):
                for made in batch:
                    yield self._user_key(made, version)
        except CacheError as e:
            self._failed(e, None)

    @answers(list)
    async def akeys(self, search: str, version: Any = None) -> list[str]:
        return [key async for key in self.aiter_keys(search, version=version)]

    @answers(0)
    async def adelete_pattern(self, pattern: str, version: Any = None, itersize: int | None = None) -> int:
        match = self._pattern(pattern, version)
        deleted = 0
        async for batch in self._ascan(match, itersize):
            deleted += await self._cache.aexecute("UNLINK", *batch, idempotent=True)
        return deleted

    # --- django-redis / django-redis-cache extension API ------------------------------------

    def _made(self, key: Any, version: Any = None) -> str:
        return self.make_and_validate_key(key, version=version)

    @answers(None)
    def ttl(self, key: Any, version: Any = None) -> int | None:
        """Seconds left (django-redis): None for a key that never expires, 0 for a missing key."""
        left = self._cache.execute("TTL", self._made(key, version), write=False, idempotent=True)
        return None if left == -1 else max(left, 0)

    @answers(None)
    def pttl(self, key: Any, version: Any = None) -> int | None:
        """Milliseconds left: None for a key that never expires, 0 for a missing key."""
        left = self._cache.execute("PTTL", self._made(key, version), write=False, idempotent=True)
        return None if left == -1 else max(left, 0)

    @answers(None)
    def persist(self, key: Any, version: Any = None) -> bool:
        """Make the key never expire; whether it had an expiry."""
        return bool(self._cache.execute("PERSIST", self._made(key, version), idempotent=True))

    @answers(None)
    def expire(self, key: Any, timeout: Any, version: Any = None) -> bool:
        """Expire in `timeout` seconds (DEFAULT_TIMEOUT: the cache's; None: never); whether the
        key exists."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        made = self._made(key, version)
        if timeout is None:
            self._cache.execute("PERSIST", made, idempotent=True)
            return bool(self._cache.execute("EXISTS", made, idempotent=True))
        return bool(self._cache.execute("EXPIRE", made, int(timeout), idempotent=True))

    @answers(None)
    def pexpire(self, key: Any, timeout: Any, version: Any = None) -> bool:
        """Expire in `timeout` milliseconds (DEFAULT_TIMEOUT: the cache's timeout; None:
        never); whether the key exists."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = None if self.default_timeout is None else self.default_timeout * 1000
        if timeout is None:
            return self.expire(key, None, version)
        return bool(self._cache.execute("PEXPIRE", self._made(key, version), int(timeout), idempotent=True))

    @answers(0)
    def delete_many(self, keys: Any, version: Any = None) -> int | None:  # type: ignore[override]
        """Delete the keys; how many there were (django-redis). With no keys, None: Django's
        own suite pins that."""
        made = [self._made(k, version) for k in keys]
        if not made:
            return None
        return int(self._cache.execute("DEL", *made, idempotent=True))

    @answers(None)
    def expire_at(self, key: Any, when: datetime.datetime | int | float, version: Any = None) -> bool:
        """Expire at a datetime or Unix time; whether the key exists."""
        stamp = int(when.timestamp()) if isinstance(when, datetime.datetime) else int(when)
        return bool(self._cache.execute("EXPIREAT", self._made(key, version), stamp, idempotent=True))

    @answers(None)
    def pexpire_at(self, key: Any, when: datetime.datetime | int | float, version: Any = None) -> bool:
        """Expire at a datetime or Unix time in milliseconds; whether the key exists."""
        stamp = int(when.timestamp() * 1000) if isinstance(when, datetime.datetime) else int(when)
        return bool(self._cache.execute("PEXPIREAT", self._made(key, version), stamp, idempotent=True))

    def _user_key(self, made: bytes | str, version: Any) -> str:
        """The key as the caller gave it, from a made key (Django's default key format)."""
        text = made.decode() if isinstance(made, bytes) else made
        head = f"{self.key_prefix}:{self.version if version is None else version}:"
        return text[len(head) :] if text.startswith(head) else text

    def _pattern(self, search: str, version: Any = None) -> str:
        r"""A SCAN pattern for this cache's keys matching ``search`` (a glob; ``version="*"``:
        any version). KEY_PREFIX and the version are escaped, so a prefix holding ``*?[]\``
        matches only itself, never another cache's keys."""
        made = self.make_key(_KEY_MARK, version=_VERSION_MARK if version == "*" else version)
        escaped = _GLOB.sub(r"\\\g<0>", made)
        if _KEY_MARK not in escaped:  # a KEY_FUNCTION that hides the key: nothing to match on
            raise ValueError("this cache's KEY_FUNCTION does not keep the key in the made key")
        return escaped.replace(_VERSION_MARK, "*").replace(_KEY_MARK, search)

    @answers(None)
    def iter_keys(self, search: str, itersize: int | None = None, version: Any = None) -> Iterator[str]:
        """The caller's keys matching a glob pattern, with SCAN (never KEYS on a live server)."""
        pattern = self._pattern(search, version)
        for batch in self._scan(pattern, itersize, write=False):
            for made in batch:
                yield self._user_key(made, version)

    def _scan(self, match: str, itersize: int | None, write: bool = True) -> Iterator[list[bytes]]:
        """The keys matching a glob pattern, a SCAN batch at a time (never KEYS), on every server
        that holds this cache's keys."""
        for node in self._cache.nodes():
            cursor: Any = b"0"
            while True:
                count = itersize or self._scan_itersize
                cursor, batch = self._cache.execute(
                    "SCAN", cursor, "MATCH", match, "COUNT", count, write=write, idempotent=True, node=node
                )
                if batch:
                    yield batch
                if cursor in (b"0", 0, "0"):
                    break

    @answers(list)
    def keys(self, search: str, version: Any = None) -> list[str]:
        """The caller's keys matching a glob pattern (SCAN under the hood)."""
        return list(self.iter_keys(search, version=version))

    @answers(0)
    def delete_pattern(self, pattern: str, version: Any = None, itersize: int | None = None) -> int:
        """Delete the keys matching a glob pattern: SCAN + UNLINK in batches, so other clients
        are never blocked for long. Returns how many were deleted."""
        match = self._pattern(pattern, version)
        return sum(self._cache.execute("UNLINK", *batch, idempotent=True) for batch in self._scan(match, itersize))

    def clear(self, version: Any = None) -> bool:
        """FLUSHDB, as Django does; with `version` (django-redis-cache), only that version of
        this cache's keys."""
        if version is None:
            try:
                return self._cache.clear()
            except CacheError as e:
                return self._failed(e, False)
        self.delete_pattern("*", version=version)
        return True

    @answers(0)
    def reinsert_keys(self, itersize: int | None = None) -> int:
        """Rewrite every value of this cache (all versions) in the current format: after a change
        of PICKLE_VERSION, serializer or compressor. Each key keeps its TTL; a key changed or
        deleted meanwhile is left alone; values that do not decode are skipped. With a
        KEY_FUNCTION that cannot make a pattern over versions, only the current version is
        rewritten. Returns how many were rewritten."""
        try:
            match = self._pattern("*", version="*")
        except Exception:  # a KEY_FUNCTION that wants a number: the current version only
            match = self._pattern("*")
        rewritten = 0
        for batch in self._scan(match, itersize):
            keys, pairs = [], []
            for key, old in zip(batch, self._cache.execute("MGET", *batch, idempotent=True), strict=True):
                if old is None:
                    continue
                try:
                    new = self._cache.dumps(self._cache.loads(old))
                except Exception:  # not a value of ours: leave it
                    continue
                if new != old:
                    keys.append(key)
                    pairs += [old, new]
            for group, group_pairs in self._script_groups(keys, pairs):
                rewritten += self._cache.execute("EVAL", _REINSERT, len(group), *group, *group_pairs)
        return rewritten

    def _script_groups(self, keys: list[Any], pairs: list[Any]) -> list[tuple[list[Any], list[Any]]]:
        """The keys one script may take together (with their (old, new) value pairs): those of
        one node (on a cluster, of one hash slot)."""
        return [
            ([keys[i] for i in group], [p for i in group for p in pairs[2 * i : 2 * i + 2]])
            for group in self._cache.groups(keys)
        ]

    def get_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        lock_timeout: float | None = None,
        stale_cache_timeout: float | None = None,
    ) -> Any:
        """Django's get_or_set; with ``lock_timeout``, protected from a thundering herd: one
        caller computes the value under a lock while the others get the stale copy (kept
        ``stale_cache_timeout`` seconds longer than the value) or wait for it briefly."""
        if lock_timeout is None and stale_cache_timeout is None:
            return super().get_or_set(key, default, timeout, version)
        missing = self._missing_key
        value = self.get(key, missing, version)
        if value is not missing:
            return value
        stale_key = f"{key}:stale"
        lock = Lock(self._cache, self._made(f"{key}:compute", version), lock_timeout or 10, 0.02, True, None)
        if lock.acquire(blocking=False):
            try:
                # Another caller may have computed it between our read and the lock.
                value = self.get(key, missing, version)
                if value is not missing:
                    return value
                value = default() if callable(default) else default
                self.set(key, value, timeout, version)
                ttl = self.get_backend_timeout(timeout)
                if stale_cache_timeout and ttl is not None:
                    self.set(stale_key, value, ttl + int(stale_cache_timeout), version)
                return value
            finally:
                lock.release()
        stale = self.get(stale_key, missing, version)
        if stale is not missing:
            return stale
        # Someone else is computing: wait for them (at most lock_timeout), then read.
        if lock.acquire(blocking=True, blocking_timeout=lock_timeout or 10):
            lock.release()
        value = self.get(key, missing, version)
        if value is missing:
            value = default() if callable(default) else default
            self.set(key, value, timeout, version)
        return value

    async def aget_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        lock_timeout: float | None = None,
        stale_cache_timeout: float | None = None,
    ) -> Any:
        """The async twin of our get_or_set, herd protection included (the lock's waits sleep
        the task)."""
        if lock_timeout is None and stale_cache_timeout is None:
            return await super().aget_or_set(key, default, timeout, version)
        missing = self._missing_key
        value = await self.aget(key, missing, version)
        if value is not missing:
            return value
        stale_key = f"{key}:stale"
        lock = Lock(self._cache, self._made(f"{key}:compute", version), lock_timeout or 10, 0.02, True, None)
        if await lock.aacquire(blocking=False):
            try:
                value = await self.aget(key, missing, version)  # as in get_or_set
                if value is not missing:
                    return value
                value = default() if callable(default) else default
                await self.aset(key, value, timeout, version)
                ttl = self.get_backend_timeout(timeout)
                if stale_cache_timeout and ttl is not None:
                    await self.aset(stale_key, value, ttl + int(stale_cache_timeout), version)
                return value
            finally:
                await lock.arelease()
        stale = await self.aget(stale_key, missing, version)
        if stale is not missing:
            return stale
        if await lock.aacquire(blocking=True, blocking_timeout=lock_timeout or 10):
            await lock.arelease()
        value = await self.aget(key, missing, version)
        if value is missing:
            value = default() if callable(default) else default
            await self.aset(key, value, timeout, version)
        return value

    def alock(
        self,
        key: Any,
        version: Any = None,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        thread_local: bool = True,
    ) -> Lock:
        """``lock``, for ``async with cache.alock(key):`` (django-valkey's name); the same lock
        has ``aacquire``, ``arelease``, ``aextend``, ``alocked`` and ``aowned``."""
        return self.lock(key, version, timeout, sleep, blocking, blocking_timeout, thread_local)

    def lock(
        self,
        key: Any,
        version: Any = None,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        thread_local: bool = True,  # each Lock object holds its own token
    ) -> Lock:
        """A redis lock (SET NX PX, released only by its owner), as django-redis gives: its
        arguments in django-redis's order, named by the made key."""
        return Lock(self._cache, self._made(key, version), timeout, sleep, blocking, blocking_timeout)


# Replace each KEYS[i] whose value is still ARGV[2i-1] with ARGV[2i], keeping its TTL.
_REINSERT = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[2 * i - 1] then
    redis.call('SET', key, ARGV[2 * i], 'KEEPTTL')
    n = n + 1
  end
end
return n
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
_EXTEND = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"
)


class LockError(CacheError):
    """A lock was released or extended by someone who does not hold it."""


class Lock:
    """A redis lock: acquired with SET NX PX and a random token, released (or extended) only by
    the token's holder, so an expired lock taken over by another process is never freed by the
    first. Usable as a context manager."""

    def __init__(
        self,
        client: RedisClient,
        name: str,
        timeout: float | None,
        sleep: float,
        blocking: bool,
        blocking_timeout: float | None,
    ) -> None:
        self._client = client
        self.name = name
        self.timeout = timeout
        self.sleep = sleep
        self.blocking = blocking
        self.blocking_timeout = blocking_timeout
        self._token: str | None = None

    def _attempt(self, blocking: bool | None, blocking_timeout: float | None) -> tuple[list[Any], bool, float | None]:
        """The SET that takes the lock with a new token, whether to wait, and until when."""
        blocking = self.blocking if blocking is None else blocking
        blocking_timeout = self.blocking_timeout if blocking_timeout is None else blocking_timeout
        args: list[Any] = ["SET", self.name, uuid.uuid4().hex, "NX"]
        if self.timeout is not None:
            args += ["PX", int(self.timeout * 1000)]
        return args, blocking, None if blocking_timeout is None else time.monotonic() + blocking_timeout

    def acquire(self, blocking: bool | None = None, blocking_timeout: float | None = None) -> bool:
        args, blocking, deadline = self._attempt(blocking, blocking_timeout)
        while True:
            if self._client.execute(*args) is not None:
                self._token = args[2]
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(self.sleep)

    async def aacquire(self, blocking: bool | None = None, blocking_timeout: float | None = None) -> bool:
        """``acquire`` on the event loop: waiting for the lock sleeps the task, not the thread."""
        args, blocking, deadline = self._attempt(blocking, blocking_timeout)
        while True:
            if await self._client.aexecute(*args) is not None:
                self._token = args[2]
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            await asyncio.sleep(self.sleep)

    async def alocked(self) -> bool:
        return await self._client.aexecute("EXISTS", self.name, idempotent=True) == 1

    async def aowned(self) -> bool:
        return self._token is not None and await self._client.aexecute("GET", self.name) == self._token.encode()

    async def arelease(self) -> None:
        if self._token is None or not await self._client.aexecute("EVAL", _RELEASE, 1, self.name, self._token):
            raise LockError(f"cannot release lock {self.name!r}: it is not held by this owner")
        self._token = None

    async def aextend(self, additional_time: float) -> bool:
        if self._token is None:
            raise LockError(f"cannot extend lock {self.name!r}: it is not held")
        ms = int(additional_time * 1000)
        return bool(await self._client.aexecute("EVAL", _EXTEND, 1, self.name, self._token, ms))

    async def __aenter__(self) -> Lock:
        if not await self.aacquire():
            raise LockError(f"could not acquire lock {self.name!r}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.arelease()

    def locked(self) -> bool:
        return self._client.execute("EXISTS", self.name, idempotent=True) == 1

    def owned(self) -> bool:
        return self._token is not None and self._client.execute("GET", self.name) == self._token.encode()

    def release(self) -> None:
        if self._token is None or not self._client.execute("EVAL", _RELEASE, 1, self.name, self._token):
            raise LockError(f"cannot release lock {self.name!r}: it is not held by this owner")
        self._token = None

    def extend(self, additional_time: float) -> bool:
        """Set the lock to expire `additional_time` seconds from now (its owner only)."""
        if self._token is None:
            raise LockError(f"cannot extend lock {self.name!r}: it is not held")
        ms = int(additional_time * 1000)
        return bool(self._client.execute("EVAL", _EXTEND, 1, self.name, self._token, ms))

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockError(f"could not acquire lock {self.name!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RedisClusterCache(RedisCache):
    """RedisCache on a Redis Cluster (or Valkey / ElastiCache in cluster mode): LOCATION lists
    seed nodes; keys go to their hash slot's shard (``{hashtag}`` honoured), multi-key calls are
    split by node and run on every node at once, MOVED and ASK are followed, and SCAN-based calls
    and ``clear()`` visit every primary. Same values, serializers and compressors as RedisCache."""

    cluster = True
