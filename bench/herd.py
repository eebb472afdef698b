"""The thundering herd, side by side (issue 27): P processes x T threads ask, at one instant, for
one missing key whose computation takes 200 ms, through ``get_or_set``; rounds on fresh keys.
Reported per backend: computations per round, callers left without a value (None), and the
callers' waits (median, p99, slowest).

- ours: ``django_rustcache.redis.RedisCache`` with ``OPTIONS["STAMPEDE"]``;
- Django's ``RedisCache`` (get, compute, add: every caller computes);
- django-redis-cache's herd ``get_or_set(..., lock_timeout=5, stale_cache_timeout=60)``.

    python bench/herd.py [rounds] [processes] [threads]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.servers import RedisServer  # noqa: E402

WORKER = ROOT / "tests" / "herd_worker.py"


def run(config: dict, kwargs: dict, key: str, processes: int, threads: int) -> tuple[int, int, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "log")
        log.write_text("")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HERD_TASKS": "0",
            "HERD_THREADS": str(threads),
            "HERD_KWARGS": json.dumps(kwargs),
        }
        start = time.time() + 2.0
        procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(config), key, str(start), str(log)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        reports, hung = [], 0
        for p in procs:
            try:
                reports.append(json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                # A process whose callers never returned: each counted as one without a value.
                p.kill()
                p.communicate()
                hung += threads
        computed = sum(1 for line in log.read_text().splitlines() if line.startswith("done"))
    without = hung + sum(1 for r in reports for v in r["values"] if v is None) + sum(len(r["errors"]) for r in reports)
    return computed, without, [w for r in reports for w in r["waits"]]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    server = RedisServer()
    backends = {
        "ours (STAMPEDE)": (
            {
                "BACKEND": "django_rustcache.redis.RedisCache",
                "LOCATION": server.location,
                "OPTIONS": {"STAMPEDE": True},
            },
            {},
        ),
        "Django's RedisCache": (
            {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": server.location},
            {},
        ),
        "django-redis-cache herd": (
            {"BACKEND": "redis_cache.RedisCache", "LOCATION": server.location},
            {"lock_timeout": 5, "stale_cache_timeout": 60},
        ),
    }
    results: dict[str, list[tuple[int, int, list[float]]]] = {name: [] for name in backends}
    try:
        for r in range(rounds):
            for name, (config, kwargs) in backends.items():  # interleaved
                results[name].append(run(config, kwargs, f"herd-{r}-{time.monotonic_ns()}", processes, threads))
    finally:
        server.close()
    callers = processes * threads
    print(f"herd: {processes} processes x {threads} threads = {callers} callers, 200 ms computation, {rounds} rounds")
    print("| backend | computations per round (median, max) | callers without a value | wait median | p99 | slowest |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        computed = [c for c, _, _ in rows]
        without = [w for _, w, _ in rows]
        waits = sorted(w for _, _, ws in rows for w in ws)
        p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else 0
        print(
            f"| {name} | {statistics.median(computed):g}, {max(computed)} | {statistics.median(without):g} "
            f"| {statistics.median(waits) * 1000:.0f} ms | {p99 * 1000:.0f} ms | {waits[-1] * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
