"""The network backends' failure policy: raise, or (with IGNORE_EXCEPTIONS / ignore_exc) log and
answer as a miss, with one error line per burst of failures rather than one per call."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django_rustcache._core import CacheError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class FailurePolicy:
    _failure_logger: logging.Logger
    _ignore_exc: bool = False
    _failing_since: float | None = None
    _log_ignored = True
    # Seconds after which a new failure is logged again.
    _log_every = 60.0

    def _failed(self, error: CacheError, answer: T) -> T:
        """Give `answer` for a failed call (logged), or raise `error` when failures count."""
        if not self._ignore_exc:
            raise error
        now = time.monotonic()
        if self._log_ignored and (self._failing_since is None or now - self._failing_since > self._log_every):
            self._failure_logger.error("cache server failure (answered as a miss): %s", error)
            self._failing_since = now
        return answer


def answers(value: Any) -> Callable[[F], F]:
    """Decorate a backend method so that, when failures are ignored, a server failure answers
    ``value`` (a fresh one each time when it is a type such as ``list``) instead of raising; a
    generator method then simply ends; a coroutine method answers it when awaited. Django's own
    contract errors (``ValueError`` for a missing key) are not failures and still raise."""

    def fresh() -> Any:
        return value() if isinstance(value, type) else value

    def wrap(method: F) -> F:
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def generate(self: FailurePolicy, *args: Any, **kwargs: Any) -> Any:
                try:
                    yield from method(self, *args, **kwargs)
                except CacheError as e:
                    self._failed(e, None)

            return cast(F, generate)

        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def await_call(self: FailurePolicy, *args: Any, **kwargs: Any) -> Any:
                try:
                    return await method(self, *args, **kwargs)
                except CacheError as e:
                    return self._failed(e, fresh())

            return cast(F, await_call)

        @functools.wraps(method)
        def call(self: FailurePolicy, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except CacheError as e:
                return self._failed(e, fresh())

        call.__answer__ = fresh  # type: ignore[attr-defined]  # for the async twins made from it
        return cast(F, call)

    return wrap
