"""A redis lock, as django-redis and redis-py give it: SET NX PX with a random token, released
or extended only by the token's holder; sync and async."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from django_rustcache._core import CacheError, RedisClient

# Replace each KEYS[i] whose value is still ARGV[2i-1] with ARGV[2i], keeping its TTL.
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
        return bool(await self._client.aexecute("EXISTS", self.name, idempotent=True) == 1)

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
        return bool(self._client.execute("EXISTS", self.name, idempotent=True) == 1)

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
