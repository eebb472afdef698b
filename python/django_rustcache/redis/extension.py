"""django-redis's and django-redis-cache's extension API on the cache's own keys: TTLs and
expiries, SCAN-based ``keys``/``iter_keys``/``delete_pattern`` (on every node that holds keys),
``reinsert_keys``, the herd-protected ``get_or_set`` and locks; sync and async."""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from django_rustcache._core import CacheError, RedisClient
from django_rustcache._failures import answers
from django_rustcache.redis.lock import Lock
from django_rustcache.redis.twins import async_twin, run

T = TypeVar("T")

# Stand-ins for the key and the version while a SCAN pattern is made (see _pattern).
_KEY_MARK = "rustcacheKEYmark0"
_VERSION_MARK = "rustcacheVERSIONmark0"
_GLOB = re.compile(r"[*?\[\]\\]")

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


class RedisExtension:
    """Mixed into ``RedisCache`` (which gives what the block below declares)."""

    if TYPE_CHECKING:

        @property
        def _cache(self) -> RedisClient: ...

        _scan_itersize: int
        default_timeout: Any
        key_prefix: str
        version: int
        _missing_key: Any

        def _failed(self, error: CacheError, answer: T) -> T: ...
        def make_key(self, key: Any, version: Any = None) -> str: ...
        def make_and_validate_key(self, key: Any, version: Any = None) -> str: ...
        def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int | None: ...
        def get(self, key: Any, default: Any = None, version: Any = None) -> Any: ...
        def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any: ...
        async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any: ...
        async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any: ...

    _run = run

    def _made(self, key: Any, version: Any = None) -> str:
        return self.make_and_validate_key(key, version=version)

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

    @answers(None)
    def ttl(self, key: Any, version: Any = None) -> int | None:
        """Seconds left (django-redis): None for a key that never expires, 0 for a missing key."""
        left = self._run("TTL", self._made(key, version), write=False, idempotent=True)
        return None if left == -1 else max(left, 0)

    @answers(None)
    def pttl(self, key: Any, version: Any = None) -> int | None:
        """Milliseconds left: None for a key that never expires, 0 for a missing key."""
        left = self._run("PTTL", self._made(key, version), write=False, idempotent=True)
        return None if left == -1 else max(left, 0)

    @answers(None)
    def persist(self, key: Any, version: Any = None) -> bool:
        """Make the key never expire; whether it had an expiry."""
        return bool(self._run("PERSIST", self._made(key, version), idempotent=True))

    @answers(None)
    def expire(self, key: Any, timeout: Any, version: Any = None) -> bool:
        """Expire in `timeout` seconds (DEFAULT_TIMEOUT: the cache's; None: never); whether the
        key exists."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        made = self._made(key, version)
        if timeout is None:
            self._run("PERSIST", made, idempotent=True)
            return bool(self._run("EXISTS", made, idempotent=True))
        return bool(self._run("EXPIRE", made, int(timeout), idempotent=True))

    @answers(None)
    def pexpire(self, key: Any, timeout: Any, version: Any = None) -> bool:
        """Expire in `timeout` milliseconds (DEFAULT_TIMEOUT: the cache's timeout; None:
        never); whether the key exists."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = None if self.default_timeout is None else self.default_timeout * 1000
        if timeout is None:
            return self.expire(key, None, version)
        return bool(self._run("PEXPIRE", self._made(key, version), int(timeout), idempotent=True))

    @answers(None)
    def expire_at(self, key: Any, when: datetime.datetime | int | float, version: Any = None) -> bool:
        """Expire at a datetime or Unix time; whether the key exists."""
        stamp = int(when.timestamp()) if isinstance(when, datetime.datetime) else int(when)
        return bool(self._run("EXPIREAT", self._made(key, version), stamp, idempotent=True))

    @answers(None)
    def pexpire_at(self, key: Any, when: datetime.datetime | int | float, version: Any = None) -> bool:
        """Expire at a datetime or Unix time in milliseconds; whether the key exists."""
        stamp = int(when.timestamp() * 1000) if isinstance(when, datetime.datetime) else int(when)
        return bool(self._run("PEXPIREAT", self._made(key, version), stamp, idempotent=True))

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
            return super().get_or_set(key, default, timeout, version)  # type: ignore[misc]  # BaseCache's
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
            return await super().aget_or_set(key, default, timeout, version)  # type: ignore[misc]  # BaseCache's
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


# The TTL commands' async twins (``attl``, ``aexpire``, ...), made from their sync bodies.
for _name in ("ttl", "pttl", "persist", "expire", "pexpire", "expire_at", "pexpire_at"):
    setattr(RedisExtension, f"a{_name}", async_twin(getattr(RedisExtension, _name)))
