"""What a redis cache is made from: LOCATION and OPTIONS (Django's RedisCache's, django-redis's
and django-redis-cache's) read once into one ``RedisSettings``, the client made from it for the
topology they ask for (a leader and replicas, Sentinel, client-side shards, Redis Cluster), and
the predecessors' options that name their own machinery (noted, or refused when they would
change the data format or the topology)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.cache.backends.base import BaseCache, default_key_func
from django.core.exceptions import ImproperlyConfigured

from django_rustcache._core import RedisClient
from django_rustcache._network import setting_count, setting_flag, setting_port, setting_seconds
from django_rustcache._settings import option_dict
from django_rustcache._signing import sign_settings
from django_rustcache.redis.herd import HERD_CLIENTS, install_herd
from django_rustcache.redis.raw import Client
from django_rustcache.redis.sentinel import OPTIONS as SENTINEL_OPTIONS
from django_rustcache.redis.sentinel import SENTINEL_CLIENTS, SENTINEL_POOLS, SentinelSettings, sentinel_settings
from django_rustcache.redis.serializers import FORMAT_OPTIONS, load_class, value_format
from django_rustcache.redis.tls import ALL_NAMES as TLS_NAMES
from django_rustcache.redis.tls import option_items as tls_option_items
from django_rustcache.redis.tls import split as tls_split

logger = logging.getLogger("django_rustcache.redis")

# Options of Django's RedisCache, django-redis and django-redis-cache that we act on.
OPTIONS = frozenset(
    {
        "METRICS",
        "db", "DB", "password", "PASSWORD", "username", "USERNAME",
        "socket_timeout", "SOCKET_TIMEOUT", "socket_connect_timeout", "SOCKET_CONNECT_TIMEOUT",
        "max_connections", "MAX_CONNECTIONS", "CONNECTION_POOL_KWARGS",
        "pickle_version", "PICKLE_VERSION", "IGNORE_EXCEPTIONS", "ignore_exc", "MASTER_CACHE",
        "RETRY_TIMEOUT", "retry_timeout", "client_name", "CLIENT_NAME", "CLUSTER", "read_from_replicas",
        "CLIENT_CLASS", "REDIS_CLIENT_KWARGS", "CONNECTION_POOL_CLASS_KWARGS", "NEAR_CACHE", "SIGN", "STAMPEDE",
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
    near_cache: NearCacheSettings | None = None
    # OPTIONS["SIGN"]: the secrets values are checked with, whether writes are signed, and
    # whether values without a tag are read (see _signing).
    sign_secrets: tuple[bytes, ...] | None = None
    sign_writes: bool = False
    sign_accept_unsigned: bool = True


# OPTIONS["NEAR_CACHE"]'s keys, and the defaults of the bounds.
NEAR_CACHE_KEYS = frozenset({"MAX_ENTRIES", "MAX_BYTES", "MAX_STALENESS"})
NEAR_CACHE_DEFAULTS = {"MAX_ENTRIES": 10_000, "MAX_BYTES": 64 * 2**20}


@dataclasses.dataclass(frozen=True)
class NearCacheSettings:
    """OPTIONS["NEAR_CACHE"]: a process-local copy of what ``get`` reads, which the server keeps
    coherent (tracking the keys under ``prefix``), or, with MAX_STALENESS, copies served for at
    most that many seconds."""

    max_entries: int
    max_bytes: int
    prefix: bytes | None
    max_staleness: float | None

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "near_max_entries": self.max_entries,
            "near_max_bytes": self.max_bytes,
            "near_prefix": self.prefix,
            "near_max_staleness": self.max_staleness,
        }


def near_cache_settings(given: Any, prefix: bytes | None) -> NearCacheSettings | None:
    """OPTIONS["NEAR_CACHE"] read: a dict of MAX_ENTRIES, MAX_BYTES and MAX_STALENESS (True: the
    defaults; None or False: none). ``prefix``: what every key of the cache starts with (None
    when a key function of the site's own makes them)."""
    given = option_dict(given, "NEAR_CACHE", NEAR_CACHE_KEYS)
    if given is None:
        return None
    entries = given.get("MAX_ENTRIES", NEAR_CACHE_DEFAULTS["MAX_ENTRIES"])
    size = given.get("MAX_BYTES", NEAR_CACHE_DEFAULTS["MAX_BYTES"])
    staleness = given.get("MAX_STALENESS")
    return NearCacheSettings(
        max_entries=setting_count(entries, "OPTIONS['NEAR_CACHE']['MAX_ENTRIES']"),
        max_bytes=setting_count(size, "OPTIONS['NEAR_CACHE']['MAX_BYTES']", minimum=1024, maximum=1 << 40),
        prefix=prefix,
        max_staleness=None
        if staleness is None
        else setting_seconds(staleness, "OPTIONS['NEAR_CACHE']['MAX_STALENESS']"),
    )


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

# CLIENT_CLASS values whose behaviour is ours already; django-redis's HerdClient, ShardClient and
# SentinelClient are honoured too (redis/herd.py, the ring, sentinel.py); any other client class
# would change the data format or the topology: refused.
DEFAULT_CLIENTS = frozenset({"django_redis.client.DefaultClient", "django_redis.client.default.DefaultClient"})


class RedisOptions:
    """The settings side of a redis backend: ``NetworkCache``'s ``_configure`` and
    ``_make_client`` for redis."""

    _servers: list[str]
    _options: dict[str, Any]
    _init_args: tuple[Any, ...]
    _ignore_exc: bool
    _log_ignored: bool
    _failure_logger: logging.Logger
    known_options = OPTIONS
    no_effect = NO_EFFECT
    no_effect_when = NO_EFFECT_WHEN
    nested_options = dict.fromkeys(NESTED, POOL_KWARGS | TLS_NAMES)
    nested_no_effect = dict.fromkeys(NESTED, REDIS_PY_NO_EFFECT)
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
        # django-redis's DJANGO_REDIS_LOGGER names the logger ignored failures go to.
        name = getattr(settings, "DJANGO_REDIS_LOGGER", None)
        if isinstance(name, str) and name:
            self._failure_logger = logging.getLogger(name)
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
        if client_class in HERD_CLIENTS:
            install_herd(self)
        elif client_class is not None and client_class not in DEFAULT_CLIENTS | SHARD_CLIENTS | SENTINEL_CLIENTS:
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
        signing = sign_settings(o)
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
            near_cache=near_cache_settings(o.get("NEAR_CACHE"), self._near_prefix()),
            sign_secrets=signing[0],
            sign_writes=signing[1],
            sign_accept_unsigned=signing[2],
        )

    def _near_prefix(self) -> bytes | None:
        """What every key this cache makes starts with (Django's default key function:
        ``KEY_PREFIX:``), for the near cache's tracking; None when a key function of the site's
        own makes them (every key of the server is then tracked)."""
        backend: Any = self
        if backend.key_func is not default_key_func or type(backend).make_key is not BaseCache.make_key:
            return None
        return f"{backend.key_prefix}:".encode()

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
            return self._make_one(s, topology="sharded", ring="django-redis", ring_names=self._server_names())
        return self._make_one(s)

    def _server_names(self) -> list[str]:
        """The servers as LOCATION names them: split at "," (not stripped), or the list as
        written (django-redis's hash ring names its nodes so)."""
        raw = self._init_args[0]
        return raw.split(",") if isinstance(raw, str) else [str(x) for x in raw]

    def _make_one(self, s: RedisSettings, **extra: Any) -> RedisClient:
        fmt = value_format(self._options, 5 if s.pickle_protocol is None else s.pickle_protocol)
        urls, tls = zip(*(tls_split(url, s.tls_options) for url in s.servers), strict=True)
        return Client(
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
            **(s.near_cache.client_kwargs() if s.near_cache else {}),
            sign_secrets=None if s.sign_secrets is None else list(s.sign_secrets),
            sign_writes=s.sign_writes,
            sign_accept_unsigned=s.sign_accept_unsigned,
            **extra,
        )
