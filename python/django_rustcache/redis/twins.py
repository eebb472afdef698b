"""Sync and async from one body: a backend method that sends its commands through
``self._run`` and shapes their replies gets its async twin made from it. The twin runs the same
body: each run stops at the next command not yet answered (handed over as ``_Command``), which is
sent with the native ``aexecute``; the next run gets the replies so far from ``_run`` and goes on.
One body, both ways, and the twin never blocks the event loop."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from django_rustcache._core import CacheError


def _idempotent(write: bool, idempotent: bool | None) -> bool:
    """A read may always run again on a new connection; a write when its caller says so."""
    return (not write) if idempotent is None else idempotent


def run(self: Any, *args: Any, write: bool = True, idempotent: bool | None = None) -> Any:
    """One command, as given (the sync side of a method with a twin)."""
    return self._cache.execute(*args, write=write, idempotent=_idempotent(write, idempotent))


class _Command(BaseException):
    """A command a twin's body wants sent (not an Exception: no ``except`` in a body catches it)."""

    def __init__(self, args: tuple[Any, ...], write: bool, idempotent: bool | None) -> None:
        self.args_, self.write, self.idempotent = args, write, idempotent


class _Replay:
    """The backend as a twin's body sees it: ``_run`` gives the replies got so far, in order, and
    stops at the next command; everything else is the backend's (its helper methods bound to
    this object, so their ``_run`` is this one)."""

    def __init__(self, backend: Any, replies: list[Any]) -> None:
        self._backend, self._replies, self._used = backend, replies, 0

    def _run(self, *args: Any, write: bool = True, idempotent: bool | None = None) -> Any:
        if self._used < len(self._replies):
            self._used += 1
            return self._replies[self._used - 1]
        raise _Command(args, write, idempotent)

    def __getattr__(self, name: str) -> Any:
        attr = inspect.getattr_static(type(self._backend), name, None)
        if inspect.isfunction(attr):
            return types.MethodType(attr, self)
        return getattr(self._backend, name)


def async_twin(method: Callable[..., Any]) -> Callable[..., Any]:
    """The async twin of a method whose commands go through ``self._run``."""
    answer = getattr(method, "__answer__", None)

    async def twin(self: Any, *args: Any, **kwargs: Any) -> Any:
        replies: list[Any] = []
        while True:
            try:
                return method(_Replay(self, replies), *args, **kwargs)
            except _Command as command:
                try:
                    reply = await self._cache.aexecute(
                        *command.args_, write=command.write, idempotent=_idempotent(command.write, command.idempotent)
                    )
                except CacheError as e:
                    if answer is None:
                        raise
                    return self._failed(e, answer())
                replies.append(reply)

    twin.__name__ = twin.__qualname__ = f"a{method.__name__}"
    twin.__doc__ = f"``{method.__name__}``'s async twin."
    return twin
