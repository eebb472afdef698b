"""Redis Cluster: a key's hash slot (CRC16 of the key, or of its ``{hashtag}``) picks the shard
that serves it, by the slot map the nodes give (``CLUSTER SLOTS``).

``ClusterClient`` has a redis client's interface (the sharded client's, which it extends) over one
client per shard: the shard's primary, and its replicas for reads when asked. Every call follows
the cluster's redirections:

- MOVED (the slot has a new owner): the slot map is read again and the call made again;
- ASK (the slot is being migrated): the one key's command goes to the node named, after
  ASKING; a multi-key call then goes key by key (only those keys' nodes know where they are);
- TRYAGAIN / CLUSTERDOWN (a migration's multi-key race, a failover under way): the slot map is
  read again and the call made again after a short pause;
- a node that cannot be reached: the slot map is read again; the call is made again if another
  node serves the slot now, else it fails at once (as on one server);

each at most a few times, within the call's deadline per attempt. Multi-key calls never send a
command across slots: a node gets one pipeline of one-key commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from binascii import crc_hqx
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from django_rustcache._core import (
    CacheError,
    ClusterBusy,
    ClusterRedirect,
    ProtocolError,
    ServerDown,
    sharded_delete_many,
    sharded_get_many,
    sharded_set_many,
)
from django_rustcache._shards import ShardedClient, _made, _text, amove_key, move_key

SLOTS = 16384
T = TypeVar("T")

# How many times one call follows MOVED/ASK or waits out a busy or unreachable cluster.
ATTEMPTS = 6


def key_slot(key: str | bytes) -> int:
    """Redis Cluster's hash slot of a key: CRC16 (XMODEM) of the key, or of the text between its
    first ``{`` and the next ``}`` when that is not empty."""
    data = key.encode() if isinstance(key, str) else bytes(key)
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc_hqx(data, 0) % SLOTS


def _address(entry: Any, asked: str) -> str:
    """``host:port`` of a CLUSTER SLOTS node entry (an empty host is the node asked)."""
    if not isinstance(entry, list) or len(entry) < 2 or not isinstance(entry[0], (bytes, str)):
        raise ValueError(f"a node entry {entry!r:.80}")
    host = entry[0].decode() if isinstance(entry[0], bytes) else entry[0]
    if host in ("", "?"):
        host = asked.rpartition(":")[0]
    port = entry[1]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"a node port {port!r:.40}")
    return f"{host}:{port}"


def parse_slots(reply: Any, asked: str) -> list[tuple[int, int, str, tuple[str, ...]]]:
    """CLUSTER SLOTS as ``(first, last, primary, replicas)`` ranges. A reply of another shape (a
    node that is no cluster node, a proxy answering ``+OK`` to everything, an echo, a range
    without a node) is a ProtocolError of the node asked, so the next seed is tried."""
    try:
        if not isinstance(reply, list):
            raise ValueError(f"{reply!r:.80} instead of a list of ranges")
        entries = []
        for entry in reply:
            if not isinstance(entry, list) or len(entry) < 3:
                raise ValueError(f"a range {entry!r:.80}")
            first, last, primary, *replicas = entry
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in (first, last)):
                raise ValueError(f"a range's bounds {first!r:.20}-{last!r:.20}")
            if not 0 <= first <= last < SLOTS:
                raise ValueError(f"slots {first}-{last}")
            entries.append((first, last, _address(primary, asked), tuple(_address(r, asked) for r in replicas)))
        return entries
    except ValueError as e:
        raise ProtocolError(f"redis cluster node {asked}: CLUSTER SLOTS answered {e}") from None


class ClusterClient(ShardedClient):
    """The sharded client's interface over a Redis Cluster's shards, by hash slot."""

    def __init__(
        self, seeds: list[str], make_shard: Callable[[str, tuple[str, ...]], Any], deadline: float = 3.0
    ) -> None:
        # make_shard(primary "host:port", replica addresses) -> a client of that shard. `deadline`:
        # no redirection or pause is followed once a call has taken this long.
        self._seeds = seeds
        self._deadline = deadline
        self._make_shard = make_shard
        self._shard_index: dict[tuple[str, tuple[str, ...]], int] = {}
        self._by_primary: dict[str, int] = {}
        self._lone: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._refreshed = 0.0
        self._moves = 0
        self._local = threading.local()
        # Clients are only ever appended: an index read from any slot map stays valid.
        super().__init__([], self._owner)
        # Read on first use, not here: the client is made under the process's registry lock,
        # where no call may wait on a seed (one that never answers would hold every cache).
        self._slots: list[int] = []

    # --- the slot map ---------------------------------------------------------------------

    def _map(self) -> list[int]:
        """The slot map, read first if no seed has given it yet (within the call's deadline)."""
        if not self._slots:
            self.refresh()
            if not self._slots:
                raise ServerDown(f"redis cluster: no slot map yet (seeds {self._seeds})")
        return self._slots

    def _owner(self, made_key: str) -> int:
        return self._map()[key_slot(made_key)]

    def _place(self, made_key: str) -> int:  # no memo: the map changes
        return self._map()[key_slot(made_key)]

    def shard(self, made_key: Any) -> Any:
        asked = getattr(self._local, "ask", None)
        slot = key_slot(_text(made_key))
        if asked is not None and asked[0] == slot:
            return asked[1]
        return self.clients[self._map()[slot]]

    def primaries(self) -> list[Any]:
        """The client of every shard that serves slots now."""
        return [self.clients[i] for i in sorted(set(self._map()))]

    def _node(self, address: str) -> Any:
        """A client of the node at ``address`` (its shard's, when it is a primary we know)."""
        index = self._by_primary.get(address)
        if index is not None:
            return self.clients[index]
        with self._lock:
            client = self._lone.get(address)
            if client is None:
                client = self._lone[address] = self._make_shard(address, ())
            return client

    def _moved(self, slot: int, address: str) -> bool:
        """MOVED: the slot is served by ``address`` now (the node says so: it knows best, while
        other nodes' maps may still lag). Every so many, the whole map should be read again:
        whether it is time."""
        with self._lock:
            index = self._by_primary.get(address)
            # A primary that served no slot a moment ago: a failover or a new node, which
            # moves many slots at once, not only this one.
            news = index is None or index not in self._slots
            if index is None:
                self.clients.append(self._make_shard(address, ()))
                index = self._by_primary[address] = len(self.clients) - 1
            self._slots[slot] = index
            self._moves += 1
            return news or self._moves % 32 == 0

    def refresh(self, force: bool = False) -> None:
        """Read the slot map again (from a primary we know, else a seed), unless another thread
        just did."""
        started = time.monotonic()
        with self._lock:
            if not force and self._refreshed >= started - 0.05:
                return
            # One deadline for the whole read: a seed that never answers costs it once, and the
            # seeds after it are not tried past it.
            until = time.monotonic() + self._deadline
            last: Exception | None = None
            # The primaries serving slots now first, then the seeds, then any known before.
            serving = set(self._slots)
            current = [a for a, i in self._by_primary.items() if i in serving]
            former = [a for a, i in self._by_primary.items() if i not in serving]
            known = [*current, *(a for a in self._seeds if a not in current), *former]
            for address in dict.fromkeys(known):
                if last is not None and time.monotonic() > until:
                    break
                try:
                    index = self._by_primary.get(address)
                    client = self.clients[index] if index is not None else self._lone.get(address)
                    if client is None:
                        client = self._lone[address] = self._make_shard(address, ())
                    reply = client.execute("CLUSTER", "SLOTS", write=True, idempotent=True)
                    entries = parse_slots(reply, address)
                except CacheError as e:
                    last = e
                    continue
                if entries:
                    self._install(entries)
                    self._refreshed = time.monotonic()
                    return
            raise ServerDown(f"redis cluster: no node of {known} gave its slot map ({last})")

    def _install(self, entries: list[tuple[int, int, str, tuple[str, ...]]]) -> None:
        slots = list(self._slots) if self._slots else [0] * SLOTS
        for first, last, primary, replicas in entries:
            key = (primary, replicas)
            index = self._shard_index.get(key)
            if index is None:
                self.clients.append(self._make_shard(*key))
                index = self._shard_index[key] = len(self.clients) - 1
            self._by_primary[key[0]] = index
            for slot in range(int(first), int(last) + 1):
                slots[slot] = index
        if not self.clients:
            raise ServerDown("redis cluster: the slot map names no node")
        self._slots = slots

    # --- following redirections -------------------------------------------------------------

    def _follow(self, call: Callable[[], T], one_by_one: Callable[[], T] | None = None) -> T:
        until = time.monotonic() + self._deadline
        for attempt in range(ATTEMPTS):
            try:
                return call()
            except ClusterRedirect as e:
                if attempt == ATTEMPTS - 1 or time.monotonic() > until:
                    raise
                if not e.ask:
                    # Moved again within one call: read the whole map, not slot by slot.
                    if self._moved(e.slot, e.address) or attempt:
                        self.refresh()
                    if attempt:
                        # Moved again within one call: the nodes disagree on the slot's owner
                        # for a moment (a migration being settled, node by node).
                        time.sleep(0.02 * attempt)
                elif one_by_one is not None:
                    return one_by_one()
                else:
                    self._local.ask = (e.slot, self._node(e.address).asking())
                    try:
                        return call()
                    except ClusterRedirect as again:
                        if again.ask:
                            raise
                        if self._moved(again.slot, again.address):
                            self.refresh()
                    finally:
                        self._local.ask = None
            except (ClusterBusy, ServerDown) as e:
                if attempt == ATTEMPTS - 1 or time.monotonic() > until:
                    raise
                if isinstance(e, ClusterBusy):
                    time.sleep(0.02 * (attempt + 1))
                before = list(self._slots)
                with contextlib.suppress(ServerDown):
                    self.refresh(force=True)
                if not isinstance(e, ClusterBusy) and self._slots == before:
                    # The node is down and no other serves its slots yet: fail now.
                    raise
        raise AssertionError("unreachable")

    async def _afollow(
        self, call: Callable[[], Awaitable[T]], one_by_one: Callable[[], Awaitable[T]] | None = None
    ) -> T:
        until = time.monotonic() + self._deadline
        for attempt in range(ATTEMPTS):
            try:
                return await call()
            except ClusterRedirect as e:
                if attempt == ATTEMPTS - 1 or time.monotonic() > until:
                    raise
                if not e.ask:
                    if self._moved(e.slot, e.address) or attempt:  # as in _follow
                        await asyncio.to_thread(self.refresh)
                    if attempt:
                        await asyncio.sleep(0.02 * attempt)  # as in _follow
                elif one_by_one is not None:
                    return await one_by_one()
                else:
                    # The task's own override: set for the call, cleared once it is sent.
                    token = self._local.__dict__.get("ask")
                    self._local.ask = (e.slot, self._node(e.address).asking())
                    try:
                        awaitable = call()
                    finally:
                        self._local.ask = token
                    try:
                        return await awaitable
                    except ClusterRedirect as again:
                        if again.ask:
                            raise
                        if self._moved(again.slot, again.address):
                            await asyncio.to_thread(self.refresh)
            except (ClusterBusy, ServerDown) as e:
                if attempt == ATTEMPTS - 1 or time.monotonic() > until:
                    raise
                if isinstance(e, ClusterBusy):
                    await asyncio.sleep(0.02 * (attempt + 1))
                before = list(self._slots)
                with contextlib.suppress(ServerDown):
                    await asyncio.to_thread(self.refresh, True)
                if not isinstance(e, ClusterBusy) and self._slots == before:
                    raise
        raise AssertionError("unreachable")

    # --- one key ------------------------------------------------------------------------------

    def get(self, prefix: Any, version: Any, key: Any, default: Any = None) -> Any:
        return self._follow(lambda: ShardedClient.get(self, prefix, version, key, default))

    def set(self, prefix: Any, version: Any, key: Any, value: Any, timeout: Any) -> None:
        return self._follow(lambda: ShardedClient.set(self, prefix, version, key, value, timeout))

    def add(self, prefix: Any, version: Any, key: Any, value: Any, timeout: Any) -> bool:
        return self._follow(lambda: ShardedClient.add(self, prefix, version, key, value, timeout))

    def touch(self, prefix: Any, version: Any, key: Any, timeout: Any) -> bool:
        return self._follow(lambda: ShardedClient.touch(self, prefix, version, key, timeout))

    def delete(self, prefix: Any, version: Any, key: Any) -> bool:
        return self._follow(lambda: ShardedClient.delete(self, prefix, version, key))

    def has_key(self, prefix: Any, version: Any, key: Any) -> bool:
        return self._follow(lambda: ShardedClient.has_key(self, prefix, version, key))

    def incr(self, prefix: Any, version: Any, key: Any, delta: int) -> int:
        return self._follow(lambda: ShardedClient.incr(self, prefix, version, key, delta))

    def rename(self, source: str, target: str) -> None:
        """RENAME within one slot; across slots DUMP + RESTORE (TTL kept) + DEL."""
        if key_slot(source) == key_slot(target):
            return self._follow(lambda: self.shard(source).rename(source, target))
        return move_key(source, target, self.execute, self.execute)

    # --- many keys: one pipeline of one-key commands per node, every node at once ---------------

    def get_many(
        self, prefix: Any, version: Any, keys: Iterable[Any], partial: bool = False, on_failure: Any = None
    ) -> dict[Any, Any]:
        keys = list(keys)

        def at_once() -> dict[Any, Any]:
            parts = [(self.clients[n], group) for n, group in self._split(prefix, version, keys).items()]
            return sharded_get_many(prefix, version, parts, True)

        def one_by_one() -> dict[Any, Any]:
            found = {}
            for k in keys:
                value = self.get(prefix, version, k, _MISSING)
                if value is not _MISSING:
                    found[k] = value
            return found

        return self._follow(at_once, one_by_one)

    def set_many(
        self,
        mapping: Mapping[Any, Any],
        timeout: Any,
        prefix: Any = None,
        version: Any = None,
        partial: bool = False,
        on_failure: Any = None,
    ) -> list[Any]:
        mapping = dict(mapping)

        def at_once() -> list[Any]:
            groups = self._split(prefix, version, mapping)
            parts = [(self.clients[n], {k: mapping[k] for k in group}) for n, group in groups.items()]
            sharded_set_many(prefix, version, parts, timeout, True)
            return []

        def one_by_one() -> list[Any]:
            for k, v in mapping.items():
                self.set(prefix, version, k, v, timeout)
            return []

        return self._follow(at_once, one_by_one)

    def delete_many(self, prefix: Any, version: Any, keys: Iterable[Any]) -> None:
        keys = list(keys)

        def at_once() -> None:
            parts = [(self.clients[n], group) for n, group in self._split(prefix, version, keys).items()]
            sharded_delete_many(prefix, version, parts, True)

        def one_by_one() -> None:
            for k in keys:
                self.delete(prefix, version, k)

        self._follow(at_once, one_by_one)

    def execute(self, *args: Any, write: bool = True, idempotent: bool = False) -> Any:
        """One command on the node of its key; DEL/UNLINK as one-key DELs on every node at once;
        EXISTS, TOUCH and MGET split by slot; the set commands across slots made of one-key ones
        (see ``_across``); EVAL on the node of its first key (a script's keys must share a slot)."""
        name = str(args[0]).upper()
        if name in _SET_ACROSS and len({key_slot(_text(k)) for k in args[1 : _SET_ACROSS[name]]}) > 1:
            return _across(name, args, lambda *a: self.execute(*a, write=write, idempotent=True))
        if name in ("DEL", "UNLINK"):
            keys = list(args[1:])

            def deleted() -> int:
                parts = [(self.clients[n], [keys[i] for i in where]) for n, where in self._arg_groups(args).items()]
                return sharded_delete_many(None, None, parts, True)

            return self._follow(deleted, lambda: sum(self.execute("DEL", k) for k in keys))
        if name in ("EXISTS", "TOUCH", "MGET"):
            by_slot: dict[int, list[int]] = defaultdict(list)
            for i, key in enumerate(args[1:]):
                by_slot[key_slot(_text(key))].append(i)
            replies = {
                slot: self._follow(
                    lambda where=where: self.shard(args[1 + where[0]]).execute(
                        name, *(args[1 + i] for i in where), write=write, idempotent=idempotent or name == "MGET"
                    )
                )
                for slot, where in by_slot.items()
            }
            if name != "MGET":
                return sum(replies.values())
            values: list[Any] = [None] * (len(args) - 1)
            for slot, where in by_slot.items():
                for i, value in zip(where, replies[slot], strict=True):
                    values[i] = value
            return values
        return self._follow(lambda: self._keyed(name, args).execute(*args, write=write, idempotent=idempotent))

    def clear(self) -> bool:
        return all([c.execute("FLUSHDB", write=True, idempotent=True) in (b"OK", "OK", True) for c in self.primaries()])

    def servers(self) -> list[dict[str, Any]]:
        return [s for c in self.primaries() for s in c.servers()]

    # --- async twins ------------------------------------------------------------------------------

    async def aget(self, prefix: Any, version: Any, key: Any, default: Any = None) -> Any:
        return await self._afollow(lambda: self.shard(_made(prefix, version, key)).aget(prefix, version, key, default))

    async def aset(self, prefix: Any, version: Any, key: Any, value: Any, timeout: Any) -> None:
        return await self._afollow(
            lambda: self.shard(_made(prefix, version, key)).aset(prefix, version, key, value, timeout)
        )

    async def aadd(self, prefix: Any, version: Any, key: Any, value: Any, timeout: Any) -> bool:
        return await self._afollow(
            lambda: self.shard(_made(prefix, version, key)).aadd(prefix, version, key, value, timeout)
        )

    async def atouch(self, prefix: Any, version: Any, key: Any, timeout: Any) -> bool:
        return await self._afollow(
            lambda: self.shard(_made(prefix, version, key)).atouch(prefix, version, key, timeout)
        )

    async def adelete(self, prefix: Any, version: Any, key: Any) -> bool:
        return await self._afollow(lambda: self.shard(_made(prefix, version, key)).adelete(prefix, version, key))

    async def ahas_key(self, prefix: Any, version: Any, key: Any) -> bool:
        return await self._afollow(lambda: self.shard(_made(prefix, version, key)).ahas_key(prefix, version, key))

    async def aincr(self, prefix: Any, version: Any, key: Any, delta: int) -> int:
        return await self._afollow(lambda: self.shard(_made(prefix, version, key)).aincr(prefix, version, key, delta))

    async def arename(self, source: str, target: str) -> None:
        if key_slot(source) == key_slot(target):
            return await self._afollow(lambda: self.shard(source).arename(source, target))
        return await amove_key(source, target, self.aexecute, self.aexecute)

    async def aget_many(
        self, prefix: Any, version: Any, keys: Iterable[Any], partial: bool = False, on_failure: Any = None
    ) -> dict[Any, Any]:
        keys = list(keys)

        async def at_once() -> dict[Any, Any]:
            # A pipeline of GETs per node (a node's MGET may not span slots), every node at once.
            groups = self._split(prefix, version, keys).items()
            found: dict[Any, Any] = {}
            parts = (self.clients[n].aget_many(prefix, version, g, per_key=True) for n, g in groups)
            for part in await asyncio.gather(*parts):
                found.update(part)
            return found

        async def one_by_one() -> dict[Any, Any]:
            # Each key follows its own redirections.
            values = await asyncio.gather(*(self.aget(prefix, version, k, _MISSING) for k in keys))
            return {k: v for k, v in zip(keys, values, strict=True) if v is not _MISSING}

        return await self._afollow(at_once, one_by_one)

    async def aset_many(
        self,
        mapping: Mapping[Any, Any],
        timeout: Any,
        prefix: Any = None,
        version: Any = None,
        partial: bool = False,
        on_failure: Any = None,
    ) -> list[Any]:
        mapping = dict(mapping)

        async def at_once() -> list[Any]:
            groups = self._split(prefix, version, mapping).items()
            await asyncio.gather(
                *(self.clients[n].aset_many({k: mapping[k] for k in g}, timeout, prefix, version) for n, g in groups)
            )
            return []

        async def one_by_one() -> list[Any]:
            await asyncio.gather(*(self.aset(prefix, version, k, v, timeout) for k, v in mapping.items()))
            return []

        return await self._afollow(at_once, one_by_one)

    async def adelete_many(self, prefix: Any, version: Any, keys: Iterable[Any]) -> int:
        keys = list(keys)

        async def at_once() -> int:
            groups = self._split(prefix, version, keys).items()
            parts = (self.clients[n].adelete_many(prefix, version, g, per_key=True) for n, g in groups)
            return sum(await asyncio.gather(*parts))

        async def one_by_one() -> int:
            return sum(await asyncio.gather(*(self.adelete(prefix, version, k) for k in keys)))

        return await self._afollow(at_once, one_by_one)

    async def aexecute(self, *args: Any, write: bool = True, idempotent: bool = False) -> Any:
        name = str(args[0]).upper()
        if name in _SET_ACROSS and len({key_slot(_text(k)) for k in args[1 : _SET_ACROSS[name]]}) > 1:
            return await _aacross(name, args, lambda *a: self.aexecute(*a, write=write, idempotent=True))
        if name in ("DEL", "UNLINK", "EXISTS", "TOUCH") and len(args) > 2:
            replies = await asyncio.gather(
                *(self.aexecute("DEL" if name == "UNLINK" else name, k, write=write, idempotent=True) for k in args[1:])
            )
            return sum(replies)
        if name == "MGET" and len(args) > 2:
            return list(
                await asyncio.gather(*(self.aexecute("GET", k, write=write, idempotent=True) for k in args[1:]))
            )
        return await self._afollow(lambda: self._keyed(name, args).aexecute(*args, write=write, idempotent=idempotent))

    async def aclear(self) -> bool:
        replies = await asyncio.gather(*(c.aexecute("FLUSHDB", write=True, idempotent=True) for c in self.primaries()))
        return all(r in (b"OK", "OK", True) for r in replies)


_MISSING = object()

# The set commands whose keys may sit in several slots, and where their keys end (SMOVE's third
# argument is a member).
_SET_ACROSS = {
    "SUNION": None, "SINTER": None, "SDIFF": None,
    "SUNIONSTORE": None, "SINTERSTORE": None, "SDIFFSTORE": None, "SMOVE": 3,
}  # fmt: skip


def _combine(name: str, sets: list[set[Any]]) -> set[Any]:
    if name.startswith("SUNION"):
        return set().union(*sets)
    if name.startswith("SINTER"):
        return set.intersection(*sets) if sets else set()
    return sets[0].difference(*sets[1:]) if sets else set()


def _across(name: str, args: tuple[Any, ...], run: Callable[..., Any]) -> Any:
    """A set command over keys in several slots, made of one-key commands (not atomic, as no
    cross-slot command can be): the members are read with SMEMBERS and combined here; the
    STORE forms then replace the destination (DEL + SADD); SMOVE is SREM, then SADD if it
    removed the member."""
    if name == "SMOVE":
        _, source, destination, member = args
        if not run("SREM", source, member):
            return 0
        run("SADD", destination, member)
        return 1
    store = name.endswith("STORE")
    keys = args[2:] if store else args[1:]
    result = _combine(name, [set(run("SMEMBERS", k) or ()) for k in keys])
    if not store:
        return list(result)
    run("DEL", args[1])
    if result:
        run("SADD", args[1], *result)
    return len(result)


async def _aacross(name: str, args: tuple[Any, ...], run: Callable[..., Awaitable[Any]]) -> Any:
    """``_across``'s async twin."""
    if name == "SMOVE":
        _, source, destination, member = args
        if not await run("SREM", source, member):
            return 0
        await run("SADD", destination, member)
        return 1
    store = name.endswith("STORE")
    keys = args[2:] if store else args[1:]
    members = await asyncio.gather(*(run("SMEMBERS", k) for k in keys))
    result = _combine(name, [set(m or ()) for m in members])
    if not store:
        return list(result)
    await run("DEL", args[1])
    if result:
        await run("SADD", args[1], *result)
    return len(result)
