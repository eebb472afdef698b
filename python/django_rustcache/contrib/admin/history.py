"""This process's metrics over time, for the admin page's charts: a sample of every alias's
counts every ``RUSTCACHE_ADMIN_SAMPLE_SECONDS`` (10) by a daemon thread started with the first
page view, the last ``RUSTCACHE_ADMIN_SAMPLES`` (360: an hour) kept. Each process samples its own
(the counts are per process)."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import deque

from django.conf import settings

from django_rustcache import _core

__all__ = ["sample", "series", "start"]

_lock = threading.Lock()
_samples: dict[str, deque[tuple[float, int, int, int, int]]] = {}
_started: int | None = None  # the pid whose thread samples


def _interval() -> float:
    return float(getattr(settings, "RUSTCACHE_ADMIN_SAMPLE_SECONDS", 10))


def _kept() -> int:
    return int(getattr(settings, "RUSTCACHE_ADMIN_SAMPLES", 360))


def sample() -> None:
    """Note every alias's counts now: (time, keys found, keys missed, calls, failed calls)."""
    now = time.time()
    totals: dict[str, list[int]] = {}
    for snap in _core.metrics_snapshots():
        t = totals.setdefault(snap["alias"], [0, 0, 0, 0])
        t[0] += snap["keys_found"]
        t[1] += snap["keys_missed"]
        for outcomes in snap["calls"].values():
            for outcome, n in outcomes.items():
                t[2] += n
                if outcome.startswith("error") and outcome != "error_invalid_key":
                    t[3] += n
    with _lock:
        for alias, (found, missed, calls, errors) in totals.items():
            kept = _samples.get(alias)
            if kept is None or kept.maxlen != _kept():
                kept = _samples[alias] = deque(kept or (), maxlen=_kept())
            kept.append((now, found, missed, calls, errors))


def start() -> None:
    """Sample now, and every interval from now on in this process (once per process: a forked
    worker starts its own)."""
    global _started
    sample()
    with _lock:
        if _started == os.getpid():
            return
        _started = os.getpid()
    threading.Thread(target=_run, name="rustcache-admin-sampler", daemon=True).start()


def _run() -> None:
    while True:
        time.sleep(_interval())
        with contextlib.suppress(Exception):  # (the next interval tries again)
            sample()


def series(alias: str) -> dict[str, list[tuple[float, float]]]:
    """Per interval between samples: ``hit_ratio`` (keys found / keys looked up, when any were),
    ``ops`` (calls per second) and ``errors`` (failed calls per second). An interval over a
    reset of the counts is left out."""
    with _lock:
        points = list(_samples.get(alias, ()))
    out: dict[str, list[tuple[float, float]]] = {"hit_ratio": [], "ops": [], "errors": []}
    for (t0, f0, m0, c0, e0), (t1, f1, m1, c1, e1) in itertools.pairwise(points):
        df, dm, dc, de, dt = f1 - f0, m1 - m0, c1 - c0, e1 - e0, t1 - t0
        if min(df, dm, dc, de) < 0 or dt <= 0:
            continue
        if df + dm:
            out["hit_ratio"].append((t1, df / (df + dm)))
        out["ops"].append((t1, dc / dt))
        out["errors"].append((t1, de / dt))
    return out
