"""The network backends' failure policy: raise, or (with IGNORE_EXCEPTIONS / ignore_exc) log and
answer as a miss, with one error line per burst of failures rather than one per call."""

from __future__ import annotations

import logging
import time
from typing import Any

from django_rustcache._core import CacheError


class FailurePolicy:
    _failure_logger: logging.Logger
    _ignore_exc: bool = False
    _failing_since: float | None = None
    _log_ignored = True
    # Seconds after which a new failure is logged again.
    _log_every = 60.0

    def _failed(self, error: CacheError, answer: Any) -> Any:
        """Give `answer` for a failed call (logged), or raise `error` when failures count."""
        if not self._ignore_exc:
            raise error
        now = time.monotonic()
        if self._log_ignored and (self._failing_since is None or now - self._failing_since > self._log_every):
            self._failure_logger.error("cache server failure (answered as a miss): %s", error)
            self._failing_since = now
        return answer
