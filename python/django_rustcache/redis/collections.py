"""django-redis 7's collection API on the cache's own keys: sets, hashes (with ``hget``,
``hmget`` and ``hgetall``, which django-redis lacks) and sorted sets.

Every key argument gets the cache's prefix and version, as django-redis makes it (``version``
for all of them, except where django-redis names a version per key: ``sdiffstore``'s
``version_dest``/``version_keys``; ``smove``'s destination takes the cache's version, as in
django-redis). Members and hash values are encoded as the cache's values are (ints as digits,
the rest serialized and compressed), sorted-set members always serialized (django-redis's
``allow_int=False``), so what django-redis wrote is read back and the reverse. Return types are
django-redis's.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from django_rustcache._core import CacheError, RedisClient
from django_rustcache._failures import answers
from django_rustcache.redis.twins import async_twin, run


def _pairs(flat: list[Any], cast: Any) -> list[tuple[Any, Any]]:
    return [(flat[i], cast(flat[i + 1])) for i in range(0, len(flat), 2)]


def _field(field: Any) -> Any:
    return field.decode() if isinstance(field, bytes) else field


class RedisCollections:
    """Mixed into the redis backends (which provide ``_made``, ``_cache`` and the failure policy)."""

    if TYPE_CHECKING:

        @property
        def _cache(self) -> RedisClient: ...

    _made: Any

    @property
    def _member_protocol(self) -> int:
        """Members are compared byte for byte, so they are pickled as django-redis pickles them:
        with PICKLE_VERSION when set, else pickle's default protocol (values may use another:
        they are decoded, not compared)."""
        options = getattr(self, "_options", {})
        version = options.get("PICKLE_VERSION", options.get("pickle_version"))
        if version is None:
            return pickle.DEFAULT_PROTOCOL
        return pickle.HIGHEST_PROTOCOL if int(version) < 0 else int(version)

    def _enc(self, value: Any) -> bytes:
        return self._cache.dumps(value, True, self._member_protocol)

    def _member(self, value: Any) -> bytes:
        return self._cache.dumps(value, False, self._member_protocol)

    def _dec(self, data: Any) -> Any:
        return None if data is None else self._cache.loads(data)

    _run = run

    def _no_match_with_compression(self, match: Any) -> None:
        options = getattr(self, "_options", {})
        if match and (options.get("COMPRESSOR") or options.get("COMPRESSOR_CLASS")):
            raise ValueError("Using match with compression is not supported.")

    # --- sets ------------------------------------------------------------------------------------

    @answers(0)
    def sadd(self, key: Any, *values: Any, version: Any = None) -> int:
        return int(self._run("SADD", self._made(key, version), *map(self._enc, values)))

    @answers(0)
    def scard(self, key: Any, version: Any = None) -> int:
        return int(self._run("SCARD", self._made(key, version), write=False))

    @answers(set)
    def sdiff(self, *keys: Any, version: Any = None) -> set[Any]:
        return {self._dec(v) for v in self._run("SDIFF", *(self._made(k, version) for k in keys), write=False)}

    @answers(0)
    def sdiffstore(self, dest: Any, *keys: Any, version_dest: Any = None, version_keys: Any = None) -> int:
        made = [self._made(k, version_keys) for k in keys]
        return int(self._run("SDIFFSTORE", self._made(dest, version_dest), *made))

    @answers(set)
    def sinter(self, *keys: Any, version: Any = None) -> set[Any]:
        return {self._dec(v) for v in self._run("SINTER", *(self._made(k, version) for k in keys), write=False)}

    @answers(0)
    def sinterstore(self, dest: Any, *keys: Any, version: Any = None) -> int:
        made = [self._made(k, version) for k in keys]
        return int(self._run("SINTERSTORE", self._made(dest, version), *made))

    @answers(list)
    def smismember(self, key: Any, *members: Any, version: Any = None) -> list[bool]:
        found = self._run("SMISMEMBER", self._made(key, version), *map(self._enc, members), write=False)
        return [bool(v) for v in found]

    @answers(False)
    def sismember(self, key: Any, member: Any, version: Any = None) -> bool:
        return bool(self._run("SISMEMBER", self._made(key, version), self._enc(member), write=False))

    @answers(set)
    def smembers(self, key: Any, version: Any = None) -> set[Any]:
        return {self._dec(v) for v in self._run("SMEMBERS", self._made(key, version), write=False)}

    @answers(False)
    def smove(self, source: Any, destination: Any, member: Any, version: Any = None) -> bool:
        made = self._made(source, version), self._made(destination)
        return bool(self._run("SMOVE", *made, self._enc(member)))

    @answers(None)
    def spop(self, key: Any, count: int | None = None, version: Any = None) -> Any:
        args = ["SPOP", self._made(key, version)] + ([] if count is None else [int(count)])
        result = self._run(*args)
        if isinstance(result, list):
            return {self._dec(v) for v in result}
        return self._dec(result)

    @answers(None)
    def srandmember(self, key: Any, count: int | None = None, version: Any = None) -> Any:
        args = ["SRANDMEMBER", self._made(key, version)] + ([] if count is None else [int(count)])
        result = self._run(*args, write=False)
        if isinstance(result, list):
            return [self._dec(v) for v in result]
        return self._dec(result)

    @answers(0)
    def srem(self, key: Any, *members: Any, version: Any = None) -> int:
        return int(self._run("SREM", self._made(key, version), *map(self._enc, members)))

    def _sscan_args(self, match: Any, count: int | None) -> list[Any]:
        self._no_match_with_compression(match)
        # django-redis encodes the pattern as a value (so it is matched against stored bytes).
        return (["MATCH", self._enc(match)] if match else []) + ([] if count is None else ["COUNT", int(count)])

    @answers(set)
    def sscan(self, key: Any, match: Any = None, count: int | None = 10, version: Any = None) -> set[Any]:
        """One SSCAN step from the start, as django-redis's ``sscan``."""
        extra = self._sscan_args(match, count)
        _, found = self._run("SSCAN", self._made(key, version), 0, *extra, write=False)
        return {self._dec(v) for v in found}

    @answers(None)
    def sscan_iter(self, key: Any, match: Any = None, count: int | None = 10, version: Any = None) -> Iterator[Any]:
        extra = self._sscan_args(match, count)
        made, cursor = self._made(key, version), b"0"
        while True:
            cursor, found = self._run("SSCAN", made, cursor, *extra, write=False)
            for v in found:
                yield self._dec(v)
            if cursor in (b"0", 0, "0"):
                return

    @answers(set)
    def sunion(self, *keys: Any, version: Any = None) -> set[Any]:
        return {self._dec(v) for v in self._run("SUNION", *(self._made(k, version) for k in keys), write=False)}

    @answers(0)
    def sunionstore(self, destination: Any, *keys: Any, version: Any = None) -> int:
        made = [self._made(k, version) for k in keys]
        return int(self._run("SUNIONSTORE", self._made(destination, version), *made))

    # --- hashes ----------------------------------------------------------------------------------

    @answers(0)
    def hset(self, key: Any, field: Any = None, value: Any = None, mapping: Any = None, version: Any = None) -> int:
        pairs: list[Any] = []
        if field is not None:
            pairs += [field, self._enc(value)]
        for f, v in (mapping or {}).items():
            pairs += [f, self._enc(v)]
        if not pairs:
            raise ValueError("hset needs a field and value, or a mapping")
        return int(self._run("HSET", self._made(key, version), *pairs))

    @answers(0)
    def hdel(self, key: Any, field: Any, version: Any = None) -> int:
        return int(self._run("HDEL", self._made(key, version), field))

    @answers(0)
    def hlen(self, key: Any, version: Any = None) -> int:
        return int(self._run("HLEN", self._made(key, version), write=False))

    @answers(list)
    def hkeys(self, key: Any, version: Any = None) -> list[str]:
        return [_field(k) for k in self._run("HKEYS", self._made(key, version), write=False)]

    @answers(False)
    def hexists(self, key: Any, field: Any, version: Any = None) -> bool:
        return bool(self._run("HEXISTS", self._made(key, version), field, write=False))

    @answers(None)
    def hget(self, key: Any, field: Any, version: Any = None) -> Any:
        """A field's value, or None (not in django-redis)."""
        return self._dec(self._run("HGET", self._made(key, version), field, write=False))

    @answers(list)
    def hmget(self, key: Any, *fields: Any, version: Any = None) -> list[Any]:
        """The fields' values, None for a missing one (not in django-redis)."""
        return [self._dec(v) for v in self._run("HMGET", self._made(key, version), *fields, write=False)]

    @answers(dict)
    def hgetall(self, key: Any, version: Any = None) -> dict[str, Any]:
        """Every field and its value (not in django-redis)."""
        flat = self._run("HGETALL", self._made(key, version), write=False)
        if isinstance(flat, dict):
            return {_field(f): self._dec(v) for f, v in flat.items()}
        return {_field(flat[i]): self._dec(flat[i + 1]) for i in range(0, len(flat), 2)}

    # --- sorted sets ----------------------------------------------------------------------------

    @answers(None)
    def zadd(
        self,
        key: Any,
        mapping: dict[Any, float],
        nx: bool = False,
        xx: bool = False,
        ch: bool = False,
        incr: bool = False,
        gt: bool = False,
        lt: bool = False,
        version: Any = None,
    ) -> int | float | None:
        if incr and len(mapping) != 1:
            raise ValueError("zadd with incr takes one member")
        flags = [
            name for name, on in (("NX", nx), ("XX", xx), ("GT", gt), ("LT", lt), ("CH", ch), ("INCR", incr)) if on
        ]
        pairs = [x for member, score in mapping.items() for x in (repr(float(score)), self._member(member))]
        result = self._run("ZADD", self._made(key, version), *flags, *pairs)
        if incr:
            return None if result is None else float(result)
        return int(result)

    @answers(0)
    def zcard(self, key: Any, version: Any = None) -> int:
        return int(self._run("ZCARD", self._made(key, version), write=False))

    @answers(0)
    def zcount(self, key: Any, min: float | str, max: float | str, version: Any = None) -> int:
        return int(self._run("ZCOUNT", self._made(key, version), min, max, write=False))

    @answers(None)
    def zincrby(self, key: Any, amount: float, value: Any, version: Any = None) -> float | None:
        result = self._run("ZINCRBY", self._made(key, version), repr(float(amount)), self._member(value))
        return None if result is None else float(result)

    def _pop(self, command: str, key: Any, count: int | None, version: Any) -> Any:
        args = [command, self._made(key, version)] + ([] if count is None else [int(count)])
        decoded = [(self._dec(m), s) for m, s in _pairs(self._run(*args) or [], float)]
        if count is None:
            return decoded[0] if decoded else None
        return decoded

    @answers(None)
    def zpopmax(self, key: Any, count: int | None = None, version: Any = None) -> Any:
        return self._pop("ZPOPMAX", key, count, version)

    @answers(None)
    def zpopmin(self, key: Any, count: int | None = None, version: Any = None) -> Any:
        return self._pop("ZPOPMIN", key, count, version)

    def _scored(self, args: list[Any], withscores: bool, cast: Any) -> list[Any]:
        result = self._run(*args, *(["WITHSCORES"] if withscores else []), write=False)
        if withscores:
            return [(self._dec(m), s) for m, s in _pairs(result, cast)]
        return [self._dec(m) for m in result]

    @staticmethod
    def _limit(start: int | None, num: int | None) -> list[Any]:
        if (start is None) != (num is None):
            raise ValueError("``start`` and ``num`` must both be specified")
        return [] if start is None else ["LIMIT", int(start), int(num)]  # type: ignore[arg-type]

    @answers(list)
    def zrange(
        self,
        key: Any,
        start: int,
        end: int,
        desc: bool = False,
        withscores: bool = False,
        score_cast_func: Any = float,
        version: Any = None,
    ) -> list[Any]:
        args = ["ZRANGE", self._made(key, version), int(start), int(end)] + (["REV"] if desc else [])
        return self._scored(args, withscores, score_cast_func)

    @answers(list)
    def zrangebyscore(
        self,
        key: Any,
        min: float | str,
        max: float | str,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: Any = float,
        version: Any = None,
    ) -> list[Any]:
        args = ["ZRANGEBYSCORE", self._made(key, version), min, max, *self._limit(start, num)]
        return self._scored(args, withscores, score_cast_func)

    @answers(None)
    def zrank(self, key: Any, value: Any, withscore: bool = False, version: Any = None) -> Any:
        args = ["ZRANK", self._made(key, version), self._member(value)] + (["WITHSCORE"] if withscore else [])
        result = self._run(*args, write=False)
        if withscore and result is not None:
            return [int(result[0]), float(result[1])]
        return result

    @answers(0)
    def zrem(self, key: Any, *values: Any, version: Any = None) -> int:
        return int(self._run("ZREM", self._made(key, version), *map(self._member, values)))

    @answers(0)
    def zremrangebyscore(self, key: Any, min: float | str, max: float | str, version: Any = None) -> int:
        return int(self._run("ZREMRANGEBYSCORE", self._made(key, version), min, max))

    @answers(list)
    def zrevrange(
        self,
        key: Any,
        start: int,
        end: int,
        withscores: bool = False,
        score_cast_func: Any = float,
        version: Any = None,
    ) -> list[Any]:
        args = ["ZREVRANGE", self._made(key, version), int(start), int(end)]
        return self._scored(args, withscores, score_cast_func)

    @answers(list)
    def zrevrangebyscore(
        self,
        key: Any,
        max: float | str,
        min: float | str,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: Any = float,
        version: Any = None,
    ) -> list[Any]:
        args = ["ZREVRANGEBYSCORE", self._made(key, version), max, min, *self._limit(start, num)]
        return self._scored(args, withscores, score_cast_func)

    @answers(None)
    def zscore(self, key: Any, value: Any, version: Any = None) -> float | None:
        result = self._run("ZSCORE", self._made(key, version), self._member(value), write=False)
        return None if result is None else float(result)


# Every collection method sends its commands through ``self._run``: its async twin (``asadd``,
# ``ahgetall``, ``azrange``, ...: django-valkey's names) is made from it (see ``twins``).


async def _asscan_iter(
    self: Any, key: Any, match: Any = None, count: int | None = 10, version: Any = None
) -> AsyncIterator[Any]:
    """``sscan_iter``'s async twin (``async for member in cache.asscan_iter(key)``)."""
    extra = self._sscan_args(match, count)
    made, cursor = self._made(key, version), b"0"
    try:
        while True:
            cursor, found = await self._cache.aexecute("SSCAN", made, cursor, *extra, write=False, idempotent=True)
            for v in found:
                yield self._dec(v)
            if cursor in (b"0", 0, "0"):
                return
    except CacheError as e:
        self._failed(e, None)


for _name, _method in list(vars(RedisCollections).items()):
    if _name.startswith("_") or not inspect.isfunction(_method):
        continue
    if _name == "sscan_iter":
        RedisCollections.asscan_iter = _asscan_iter  # type: ignore[attr-defined]
    else:
        setattr(RedisCollections, f"a{_name}", async_twin(_method))
