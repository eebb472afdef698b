"""``get_or_set`` that computes once: OPTIONS["STAMPEDE"] on every backend, sync and async.

Django's ``get_or_set`` is get, compute, add: when a hot key expires, every worker computes it at
once. With ``"STAMPEDE": {"LEASE": 10, "WAIT": 5, "STALE": 0, "EARLY": 0}``:

- **One computer per key.** In a process, the callers of one key line up behind one and take its
  result (threads and the tasks of every event loop behind the same one). Across processes,
  that one takes a lease on the server (``add`` of ``<key>:lease`` for ``LEASE`` seconds: redis
  ``SET NX``, memcached ``add``) before computing; the others poll for the value.
- **Bounded waits.** No process waits more than ``WAIT`` seconds for another: its computer then
  computes the value itself (a lease holder that died is not waited for past that; at most one
  computation per process follows), and its other callers take that result (past ``WAIT +
  LEASE`` they compute themselves: a computation is expected to end within its lease). A
  computer that raises releases the lease at once: its process's waiters get the same
  exception, other processes' waiters take the lease and compute.
- **Stale while recomputed** (``STALE`` seconds): values are kept that much past their timeout;
  once a value is past its timeout, the one caller that takes the lease recomputes it while every
  other caller gets the previous value at once. Never past ``timeout + STALE``.
- **Early recomputation** (``EARLY``: XFetch's beta, 1 the usual): a caller recomputes a fresh
  value before it expires with a probability that rises as expiry nears and with how long the
  value took to compute, so a hot key is usually refreshed before anyone misses it.

The value stays under its key as a plain value (``get`` reads it; predecessors' clients too);
its freshness (expiry, compute time) is kept beside it under ``<key>:stampede``, read in the
same round trip (``get_many``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured

from django_rustcache._settings import option_dict

__all__ = ["Stampede", "StampedeSettings", "stampede_settings"]

_KEYS = frozenset({"LEASE", "WAIT", "STALE", "EARLY"})


@dataclasses.dataclass(frozen=True)
class StampedeSettings:
    lease: float = 10.0
    wait: float = 5.0
    stale: float = 0.0
    early: float = 0.0


def stampede_settings(given: Any) -> StampedeSettings | None:
    """OPTIONS["STAMPEDE"] read: a dict of LEASE, WAIT, STALE, EARLY (True: the defaults)."""
    given = option_dict(given, "STAMPEDE", _KEYS)
    if given is None:
        return None
    values = {}
    for name in _KEYS:
        if name not in given:
            continue
        value = given[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ImproperlyConfigured(f"OPTIONS['STAMPEDE']['{name}'] must be a number of seconds >= 0, not {value!r}")
        if name in ("LEASE", "WAIT") and value <= 0:
            raise ImproperlyConfigured(f"OPTIONS['STAMPEDE']['{name}'] must be more than 0 seconds")
        values[name.lower()] = float(value)
    return StampedeSettings(**values)


class _Flight:
    """One computation of one key in this process, and those waiting for it: threads and the
    tasks of any event loop wait for the same one (its leader's thread, and task if async)."""

    __slots__ = ("abandoned", "done", "error", "task", "thread", "value", "waiters")

    def __init__(self, thread: int, task: Any) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: Exception | None = None
        self.abandoned = False  # the leader was cancelled or interrupted: a follower leads anew
        self.thread, self.task = thread, task
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def blocks(self, thread: int, task: Any) -> bool:
        """Whether waiting here would wait for oneself: a get_or_set of this key called inside
        its own computation (on the leader's thread when the leader is sync, or in its task)."""
        return self.thread == thread and (self.task is None or self.task is task)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    async def wait_async(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        with _flights_lock:
            if self.done.is_set():
                return True
            self.waiters.append((loop, waiter))
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with _flights_lock:
                if (loop, waiter) in self.waiters:
                    self.waiters.remove((loop, waiter))


def _join(scope: tuple[Any, ...], thread: int, task: Any) -> tuple[_Flight, bool]:
    """The process's flight for a key, and whether the caller leads it (a new one)."""
    with _flights_lock:
        flight = _flights.get(scope)
        if flight is not None:
            return flight, False
        flight = _flights[scope] = _Flight(thread, task)
        return flight, True


@contextlib.contextmanager
def _leading(scope: tuple[Any, ...], flight: _Flight) -> Iterator[None]:
    """The leader's computation: its error for the waiters, or abandoned if it was cancelled or
    interrupted; landed either way."""
    try:
        yield
    except Exception as e:
        flight.error = e
        raise
    except BaseException:
        flight.abandoned = True
        raise
    finally:
        _land(scope, flight)


def _land(scope: tuple[Any, ...], flight: _Flight) -> None:
    """The leader is done (its outcome set): later callers start afresh, waiters wake."""
    with _flights_lock:
        if _flights.get(scope) is flight:
            del _flights[scope]
        flight.done.set()
        waiters, flight.waiters = flight.waiters, []
    for loop, waiter in waiters:
        with contextlib.suppress(RuntimeError):  # a closed loop: its waiter went with it
            loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_flights_lock = threading.Lock()
_flights: dict[tuple[Any, ...], _Flight] = {}
_MISSING = object()


def _backoff(attempt: int) -> float:
    return min(0.005 * 2.0 ** min(attempt, 10), 0.05) * (0.5 + random.random())


class Stampede:
    """The ``get_or_set``/``aget_or_set`` of a backend with OPTIONS["STAMPEDE"]; Django's without."""

    _stampede: StampedeSettings | None = None

    def _read_stampede(self, options: dict[str, Any]) -> None:
        self._stampede = stampede_settings(options.get("STAMPEDE"))

    def _names(self, key: Any) -> tuple[str, str]:
        return f"{key}:stampede", f"{key}:lease"

    def _scope(self, key: Any, version: Any) -> tuple[Any, ...]:
        backend: Any = self
        return (type(self), str(getattr(backend, "_servers", "")), backend.make_key(key, version))

    def _fresh(self, meta: Any, s: StampedeSettings) -> bool:
        """Whether a value with this freshness is served as it is (no refresh)."""
        if not (isinstance(meta, tuple) and len(meta) == 2):
            return True  # stored without freshness (a plain set): fresh, as Django reads it
        fresh_until, delta = float(meta[0]), float(meta[1])
        now = time.time()
        if s.early and delta > 0:
            # XFetch: -log(u) is exponential; recompute early with growing likelihood near expiry.
            return now - delta * s.early * math.log(random.random() or 1e-12) < fresh_until
        return now < fresh_until

    def _timeouts(self, timeout: Any, s: StampedeSettings) -> tuple[float | None, float | None]:
        """(seconds the value is fresh, seconds the server keeps it); None: forever."""
        backend: Any = self
        if timeout is DEFAULT_TIMEOUT:
            timeout = backend.default_timeout
        if timeout is None:
            return None, None
        return float(timeout), float(timeout) + s.stale

    def _lease(self, key: Any, s: StampedeSettings) -> tuple[str, int, float]:
        """The lease's key and seconds (memcached counts whole ones), and when waiting ends."""
        return self._names(key)[1], max(1, math.ceil(s.lease)), time.monotonic() + s.wait

    def _token(self) -> str:
        return f"{os.getpid()}:{threading.get_ident()}:{random.getrandbits(48):x}"

    # --- sync -----------------------------------------------------------------------------------

    def get_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        s = self._stampede
        if s is None:
            return super().get_or_set(key, default, timeout, version)  # type: ignore[misc]
        backend: Any = self
        meta_key, _ = self._names(key)
        found = backend.get_many([key, meta_key], version=version)
        if key in found:
            if self._fresh(found.get(meta_key), s):
                return found[key]
            # Stale (or due early): one caller refreshes, the others serve this value.
            return self._refresh(key, default, timeout, version, s, found[key])
        return self._single_flight(key, default, timeout, version, s)

    def _single_flight(self, key: Any, default: Any, timeout: Any, version: Any, s: StampedeSettings) -> Any:
        scope = self._scope(key, version)
        thread = threading.get_ident()
        while True:
            flight, leader = _join(scope, thread, None)
            if leader:
                break
            # The process's computer waits at most WAIT for another process, then computes (a
            # computation is expected within LEASE): past both, compute here.
            if flight.blocks(thread, None) or not flight.done.wait(s.wait + s.lease):
                return self._compute_and_store(key, default, timeout, version, s)
            if flight.abandoned:
                continue
            return flight.outcome()
        with _leading(scope, flight):
            flight.value = self._across_processes(key, default, timeout, version, s)
            return flight.value

    def _across_processes(self, key: Any, default: Any, timeout: Any, version: Any, s: StampedeSettings) -> Any:
        backend: Any = self
        lease_key, lease, deadline = self._lease(key, s)
        attempt = unleased = 0
        while True:
            token = self._token()
            if backend.add(lease_key, token, timeout=lease, version=version):
                try:
                    # Computed by another between our read and the lease?
                    value = backend.get(key, _MISSING, version=version)
                    if value is not _MISSING:
                        return value
                    return self._compute_and_store(key, default, timeout, version, s)
                finally:
                    self._release(lease_key, token, version)
            found = backend.get_many([key, lease_key], version=version)
            if key in found:
                return found[key]
            if lease_key not in found:
                # No lease, and ours was not taken: it expired just now, or the server failed
                # (a failure answered as a miss): once more at once, then compute here.
                unleased += 1
                if unleased > 1:
                    return self._compute_and_store(key, default, timeout, version, s)
                continue
            if time.monotonic() >= deadline:
                # The lease holder has not stored a value in WAIT seconds (slow, or dead).
                return self._compute_and_store(key, default, timeout, version, s)
            time.sleep(_backoff(attempt))
            attempt += 1

    def _refresh(self, key: Any, default: Any, timeout: Any, version: Any, s: StampedeSettings, current: Any) -> Any:
        backend: Any = self
        _, lease_key = self._names(key)
        token = self._token()
        if not backend.add(lease_key, token, timeout=max(1, math.ceil(s.lease)), version=version):
            return current  # another caller is refreshing it: the previous value meanwhile
        try:
            return self._compute_and_store(key, default, timeout, version, s)
        finally:
            self._release(lease_key, token, version)

    def _release(self, lease_key: str, token: str, version: Any) -> None:
        backend: Any = self
        # (A lease that outlived LEASE may be another caller's now: theirs to release.)
        if backend.get(lease_key, version=version) == token:
            backend.delete(lease_key, version=version)

    def _compute_and_store(self, key: Any, default: Any, timeout: Any, version: Any, s: StampedeSettings) -> Any:
        backend: Any = self
        started = time.monotonic()
        value = default() if callable(default) else default
        stored = self._entries(key, value, started, timeout, s)
        if stored is not None:
            backend.set_many(stored[0], timeout=stored[1], version=version)
        return value

    def _entries(
        self, key: Any, value: Any, started: float, timeout: Any, s: StampedeSettings
    ) -> tuple[dict[Any, Any], float | None] | None:
        """What a computed value is stored as: the value and its freshness, and the seconds the
        server keeps them; None when nothing is stored (Django: a timeout of 0 or less)."""
        fresh, keep = self._timeouts(timeout, s)
        if fresh is not None and fresh <= 0:
            return None
        meta_key, _ = self._names(key)
        data = {key: value}
        if fresh is not None:
            data[meta_key] = (time.time() + fresh, time.monotonic() - started)
        return data, keep

    # --- async ----------------------------------------------------------------------------------

    async def aget_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        s = self._stampede
        if s is None:
            return await super().aget_or_set(key, default, timeout, version)  # type: ignore[misc]
        backend: Any = self
        meta_key, _ = self._names(key)
        found = await backend.aget_many([key, meta_key], version=version)
        if key in found:
            if self._fresh(found.get(meta_key), s):
                return found[key]
            return await self._arefresh(key, default, timeout, version, s, found[key])
        return await self._asingle_flight(key, default, timeout, version, s)

    async def _asingle_flight(self, key: Any, default: Any, timeout: Any, version: Any, s: StampedeSettings) -> Any:
        scope = self._scope(key, version)
        thread, task = threading.get_ident(), asyncio.current_task()
        while True:
            flight, leader = _join(scope, thread, task)
            if leader:
                break
            if flight.blocks(thread, task) or not await flight.wait_async(s.wait + s.lease):
                return await self._acompute_and_store(key, default, timeout, version, s)
            if flight.abandoned:
                continue
            return flight.outcome()
        with _leading(scope, flight):
            flight.value = await self._aacross_processes(key, default, timeout, version, s)
            return flight.value

    async def _aacross_processes(self, key: Any, default: Any, timeout: Any, version: Any, s: StampedeSettings) -> Any:
        backend: Any = self
        lease_key, lease, deadline = self._lease(key, s)
        attempt = unleased = 0
        while True:
            token = self._token()
            if await backend.aadd(lease_key, token, timeout=lease, version=version):
                try:
                    value = await backend.aget(key, _MISSING, version=version)
                    if value is not _MISSING:
                        return value
                    return await self._acompute_and_store(key, default, timeout, version, s)
                finally:
                    await self._arelease(lease_key, token, version)
            found = await backend.aget_many([key, lease_key], version=version)
            if key in found:
                return found[key]
            if lease_key not in found:
                unleased += 1
                if unleased > 1:
                    return await self._acompute_and_store(key, default, timeout, version, s)
                continue
            if time.monotonic() >= deadline:
                return await self._acompute_and_store(key, default, timeout, version, s)
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def _arefresh(
        self, key: Any, default: Any, timeout: Any, version: Any, s: StampedeSettings, current: Any
    ) -> Any:
        backend: Any = self
        _, lease_key = self._names(key)
        token = self._token()
        if not await backend.aadd(lease_key, token, timeout=max(1, math.ceil(s.lease)), version=version):
            return current
        try:
            return await self._acompute_and_store(key, default, timeout, version, s)
        finally:
            await self._arelease(lease_key, token, version)

    async def _arelease(self, lease_key: str, token: str, version: Any) -> None:
        backend: Any = self
        if await backend.aget(lease_key, version=version) == token:
            await backend.adelete(lease_key, version=version)

    async def _acompute_and_store(self, key: Any, default: Any, timeout: Any, version: Any, s: StampedeSettings) -> Any:
        backend: Any = self
        started = time.monotonic()
        value = default() if callable(default) else default
        if asyncio.iscoroutine(value):
            value = await value
        stored = self._entries(key, value, started, timeout, s)
        if stored is not None:
            await backend.aset_many(stored[0], timeout=stored[1], version=version)
        return value
