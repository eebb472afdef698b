"""Client-side sharding for the redis backends: a key's server chosen by a hash ring, so each key
lands where the predecessor put it.

``DjangoRedisCacheRing`` is django-redis-cache's ring (``redis_cache.sharder.HashRing``): 16 points
per server at ``md5("{i}:{node}")``'s last 8 hex digits, where ``node`` is the server's
``(host, port, db, unix_socket_path)`` as django-redis-cache computes it; a key goes to the last
point at or below the same hash of the key (the last point of all for keys below the first).

``DjangoRedisRing`` is django-redis's ShardClient ring (below).

``ShardedClient`` has a redis client's interface over one client per server: single-key calls go to
the key's server, multi-key calls are split by server and merged.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlparse

from django_rustcache._core import sharded_delete_many, sharded_get_many, sharded_set_many


def _slot(text: str) -> int:
    return int(hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[-8:], 16)


def django_redis_cache_node(server: str, db: int) -> tuple[Any, Any, Any, Any]:
    """The ``(host, port, db, unix_socket_path)`` django-redis-cache names a LOCATION entry by
    (its ``parse_connection_kwargs`` and connection-pool defaults), ``db`` being the cache's db
    (OPTIONS DB, 1 by default) where the entry names none."""
    if "://" in server:
        url = urlparse(server)
        query = {k: v[0] for k, v in parse_qs(url.query).items() if v}
        url_db = query.get("db")
        if url.scheme == "unix":
            return ("127.0.0.1", 6379, int(url_db if url_db is not None else db or 0), url.path)
        if url_db is None and url.path:
            try:
                url_db = int(url.path.replace("/", ""))
            except ValueError:
                url_db = None
        host, port = url.hostname, int(url.port or 6379)
        return (host, port, int(url_db if url_db is not None else db or 0), None if url.scheme == "rediss" else "")
    if ":" in server:
        host, port = server.rsplit(":", 1)
        return (host, int(port), db, None)
    return (None, None, db, server)


class DjangoRedisCacheRing:
    REPLICAS = 16

    def __init__(self, nodes: list[Any]) -> None:
        points = sorted(
            ((_slot(f"{i}:{node}"), n) for n, node in enumerate(nodes) for i in range(self.REPLICAS)),
            key=lambda p: p[0],
        )
        self._positions = [p for p, _ in points]
        self._owners = [n for _, n in points]

    def index(self, key: str) -> int:
        """The server (by position in LOCATION) that holds ``key`` (the made key)."""
        return self._owners[bisect.bisect(self._positions, _slot(key)) - 1]


class DjangoRedisRing:
    """django-redis's ShardClient ring (``django_redis.hash_ring.HashRing``): 128 points per server
    at ``sha256("{location}:{i}")`` (hex, compared as text), the location as written in LOCATION;
    a key goes to the last point at or below ``sha256`` of the key, or of its ``{tag}`` when it has
    one (the text between the last ``{`` and the last ``}`` after it)."""

    REPLICAS = 128
    _TAG = re.compile(r".*\{(.*)\}.*")

    def __init__(self, names: list[str]) -> None:
        ring: dict[str, int] = {}
        for n, name in enumerate(names):
            for x in range(self.REPLICAS):
                ring[hashlib.sha256(f"{name}:{x}".encode()).hexdigest()] = n
        self._hashes = sorted(ring)
        self._owners = [ring[h] for h in self._hashes]

    def index(self, key: str) -> int:
        tag = self._TAG.match(key)
        if tag is not None:
            key = tag.group(1)
        return self._owners[bisect.bisect(self._hashes, hashlib.sha256(key.encode()).hexdigest()) - 1]


def _made(prefix: Any, version: Any, key: Any) -> str:
    """The key as the core makes it (Django's default ``prefix:version:key``), or as given."""
    return _text(key) if prefix is None else f"{prefix}:{version}:{key}"


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


def move_key(source: str, target: str, old: Callable[..., Any], new: Callable[..., Any]) -> None:
    """RENAME where no RENAME can go (another server, another slot): DUMP + RESTORE (TTL kept)
    + DEL, with ``old``/``new`` running one command on each side; ValueError when missing."""
    data = old("DUMP", source, idempotent=True)
    if data is None:
        raise ValueError(f"Key {source!r} not found")
    ttl = old("PTTL", source, idempotent=True)
    new("RESTORE", target, max(int(ttl), 0), data, "REPLACE")
    old("DEL", source)


async def amove_key(source: str, target: str, old: Callable[..., Any], new: Callable[..., Any]) -> None:
    """``move_key``'s async twin (``old``/``new`` return awaitables)."""
    data = await old("DUMP", source, idempotent=True)
    if data is None:
        raise ValueError(f"Key {source!r} not found")
    ttl = await old("PTTL", source, idempotent=True)
    await new("RESTORE", target, max(int(ttl), 0), data, "REPLACE")
    await old("DEL", source)


# Commands whose keys are all their arguments after the name: split by server, answers merged.
_MULTI_KEY = {"DEL": sum, "UNLINK": sum, "EXISTS": sum, "TOUCH": sum}


class ShardedClient:
    """A redis client's interface over several servers, one client each."""

    # Placements remembered (a ring lookup is a hash and a bisect: most of a multi-key call's
    # Python time); forgotten wholesale past this many keys.
    MEMO = 1 << 16

    def __init__(self, clients: list[Any], place: Callable[[str], int]) -> None:
        self.clients = clients
        self._ring = place
        self._memo: dict[str, int] = {}

    def _place(self, made_key: str) -> int:
        where = self._memo.get(made_key)
        if where is None:
            if len(self._memo) >= self.MEMO:
                self._memo.clear()
            where = self._memo[made_key] = self._ring(made_key)
        return where

    def shard(self, made_key: Any) -> Any:
        return self.clients[self._place(_text(made_key))]

    def _split(self, prefix: Any, version: Any, keys: Iterable[Any]) -> dict[int, list[Any]]:
        groups: dict[int, list[Any]] = defaultdict(list)
        for key in keys:
            groups[self._place(_made(prefix, version, key))].append(key)
        return groups

    # --- one key ----------------------------------------------------------------------------

    def get(self, prefix: Any, version: Any, key: Any, default: Any = None) -> Any:
        return self.shard(_made(prefix, version, key)).get(prefix, version, key, default)

    def set(self, prefix: Any, version: Any, key: Any, value: Any, timeout: Any) -> None:
        return self.shard(_made(prefix, version, key)).set(prefix, version, key, value, timeout)

    def add(self, prefix: Any, version: Any, key: Any, value: Any, timeout: Any) -> bool:
        return self.shard(_made(prefix, version, key)).add(prefix, version, key, value, timeout)

    def touch(self, prefix: Any, version: Any, key: Any, timeout: Any) -> bool:
        return self.shard(_made(prefix, version, key)).touch(prefix, version, key, timeout)

    def delete(self, prefix: Any, version: Any, key: Any) -> bool:
        return self.shard(_made(prefix, version, key)).delete(prefix, version, key)

    def has_key(self, prefix: Any, version: Any, key: Any) -> bool:
        return self.shard(_made(prefix, version, key)).has_key(prefix, version, key)

    def incr(self, prefix: Any, version: Any, key: Any, delta: int) -> int:
        return self.shard(_made(prefix, version, key)).incr(prefix, version, key, delta)

    def rename(self, source: str, target: str) -> None:
        """RENAME, or across servers DUMP + RESTORE (TTL kept) + DEL; ValueError when missing."""
        old, new = self.shard(source), self.shard(target)
        if old is new:
            return old.rename(source, target)
        return move_key(source, target, old.execute, new.execute)

    # --- many keys ----------------------------------------------------------------------------

    def get_many(
        self, prefix: Any, version: Any, keys: Iterable[Any], partial: bool = False, on_failure: Any = None
    ) -> dict[Any, Any]:
        # Every server's MGET is sent before any reply is read: one round trip, one deadline.
        parts = [(self.clients[n], group) for n, group in self._split(prefix, version, keys).items()]
        return sharded_get_many(prefix, version, parts)

    def set_many(
        self,
        mapping: Mapping[Any, Any],
        timeout: Any,
        prefix: Any = None,
        version: Any = None,
        partial: bool = False,
        on_failure: Any = None,
    ) -> list[Any]:
        parts = [
            (self.clients[n], {k: mapping[k] for k in group})
            for n, group in self._split(prefix, version, mapping).items()
        ]
        sharded_set_many(prefix, version, parts, timeout)
        return []

    def delete_many(self, prefix: Any, version: Any, keys: Iterable[Any]) -> None:
        parts = [(self.clients[n], group) for n, group in self._split(prefix, version, keys).items()]
        sharded_delete_many(prefix, version, parts)

    def execute(self, *args: Any, write: bool = True, idempotent: bool = False) -> Any:
        """One command, on the server of its key; DEL/UNLINK/EXISTS/TOUCH and MGET split by
        server; EVAL on the server of its first key (a script's keys must share a server)."""
        name = str(args[0]).upper()
        if name in _MULTI_KEY or name == "MGET":
            groups = self._arg_groups(args)
            if name == "DEL":
                # Every server's DEL at once.
                parts = [(self.clients[n], [args[1 + i] for i in where]) for n, where in groups.items()]
                return sharded_delete_many(None, None, parts)
            if name == "MGET":
                values: list[Any] = [None] * (len(args) - 1)
                for n, where in groups.items():
                    got = self.clients[n].execute("MGET", *(args[1 + i] for i in where), write=write, idempotent=True)
                    for i, value in zip(where, got, strict=True):
                        values[i] = value
                return values
            return _MULTI_KEY[name](
                self.clients[n].execute(name, *(args[1 + i] for i in where), write=write, idempotent=idempotent)
                for n, where in groups.items()
            )
        return self._keyed(name, args).execute(*args, write=write, idempotent=idempotent)

    def _arg_groups(self, args: tuple[Any, ...]) -> dict[int, list[int]]:
        """A multi-key command's keys (``args[1:]``) by server: their positions."""
        groups: dict[int, list[int]] = defaultdict(list)
        for i, key in enumerate(args[1:]):
            groups[self._place(_text(key))].append(i)
        return groups

    def _keyed(self, name: str, args: tuple[Any, ...]) -> Any:
        """The client of a one-key command: EVAL on the server of its first key."""
        if name in ("EVAL", "EVALSHA"):
            return self.shard(args[3]) if int(args[2]) > 0 else self.clients[0]
        if len(args) > 1:
            return self.shard(args[1])
        raise ValueError(f"{name} has no key to place it by: send it to each of .clients")

    # --- async twins: one key on its server; many keys on every server at once ------------------

    async def aget(self, prefix: Any, version: Any, key: Any, default: Any = None) -> Any:
        return await self.shard(_made(prefix, version, key)).aget(prefix, version, key, default)

    async def aset(self, prefix: Any, version: Any, key: Any, value: Any, timeout: Any) -> None:
        return await self.shard(_made(prefix, version, key)).aset(prefix, version, key, value, timeout)

    async def aadd(self, prefix: Any, version: Any, key: Any, value: Any, timeout: Any) -> bool:
        return await self.shard(_made(prefix, version, key)).aadd(prefix, version, key, value, timeout)

    async def atouch(self, prefix: Any, version: Any, key: Any, timeout: Any) -> bool:
        return await self.shard(_made(prefix, version, key)).atouch(prefix, version, key, timeout)

    async def adelete(self, prefix: Any, version: Any, key: Any) -> bool:
        return await self.shard(_made(prefix, version, key)).adelete(prefix, version, key)

    async def ahas_key(self, prefix: Any, version: Any, key: Any) -> bool:
        return await self.shard(_made(prefix, version, key)).ahas_key(prefix, version, key)

    async def aincr(self, prefix: Any, version: Any, key: Any, delta: int) -> int:
        return await self.shard(_made(prefix, version, key)).aincr(prefix, version, key, delta)

    async def arename(self, source: str, target: str) -> None:
        old, new = self.shard(source), self.shard(target)
        if old is new:
            return await old.arename(source, target)
        return await amove_key(source, target, old.aexecute, new.aexecute)

    async def aget_many(
        self, prefix: Any, version: Any, keys: Iterable[Any], partial: bool = False, on_failure: Any = None
    ) -> dict[Any, Any]:
        groups = self._split(prefix, version, keys).items()
        found: dict[Any, Any] = {}
        for part in await asyncio.gather(*(self.clients[n].aget_many(prefix, version, g) for n, g in groups)):
            found.update(part)
        return found

    async def aset_many(
        self,
        mapping: Mapping[Any, Any],
        timeout: Any,
        prefix: Any = None,
        version: Any = None,
        partial: bool = False,
        on_failure: Any = None,
    ) -> list[Any]:
        groups = self._split(prefix, version, mapping).items()
        await asyncio.gather(
            *(self.clients[n].aset_many({k: mapping[k] for k in g}, timeout, prefix, version) for n, g in groups)
        )
        return []

    async def adelete_many(self, prefix: Any, version: Any, keys: Iterable[Any]) -> int:
        groups = self._split(prefix, version, keys).items()
        return sum(await asyncio.gather(*(self.clients[n].adelete_many(prefix, version, g) for n, g in groups)))

    async def aexecute(self, *args: Any, write: bool = True, idempotent: bool = False) -> Any:
        """``execute``'s async twin: multi-key commands go to every server at once."""
        name = str(args[0]).upper()
        if name in _MULTI_KEY or name == "MGET":
            groups = self._arg_groups(args)
            replies = await asyncio.gather(
                *(
                    self.clients[n].aexecute(
                        name, *(args[1 + i] for i in where), write=write, idempotent=idempotent or name == "MGET"
                    )
                    for n, where in groups.items()
                )
            )
            if name != "MGET":
                return _MULTI_KEY[name](replies)
            values: list[Any] = [None] * (len(args) - 1)
            for where, got in zip(groups.values(), replies, strict=True):
                for i, value in zip(where, got, strict=True):
                    values[i] = value
            return values
        return await self._keyed(name, args).aexecute(*args, write=write, idempotent=idempotent)

    async def aclear(self) -> bool:
        return all(await asyncio.gather(*(c.aclear() for c in self.clients)))

    # --- every server ----------------------------------------------------------------------------

    def clear(self) -> bool:
        return all([c.clear() for c in self.clients])

    def servers(self) -> list[dict[str, Any]]:
        return [s for c in self.clients for s in c.servers()]

    def client_stats(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for c in self.clients:
            for k, v in c.client_stats().items():
                total[k] += v
        return dict(total)

    def loads(self, data: bytes) -> Any:
        return self.clients[0].loads(data)

    def dumps(self, value: Any, ints_as_digits: bool = True, pickle_protocol: int | None = None) -> bytes:
        return self.clients[0].dumps(value, ints_as_digits, pickle_protocol)

    def server_for(self, write: bool = False) -> int:
        return 0
