"""One process of the thundering-herd tests: at a given instant, 16 threads and 64 asyncio tasks
ask for one key with get_or_set / aget_or_set; the computation (200 ms) notes itself in a file.
Prints a JSON line: the values got, the slowest caller's wait, the errors.

    python tests/herd_worker.py '<CACHES["default"] as JSON>' <key> <start (unix time)> <log file> [die]

With ``die`` the computation kills its process half way (a lease holder that dies). For the
benchmark (bench/herd.py): HERD_TASKS (64) and HERD_THREADS (16) callers, and HERD_KWARGS (JSON)
passed to get_or_set (django-redis-cache's lock_timeout...)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

import django
from django.conf import settings

config, key, start, log = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
die = len(sys.argv) > 5 and sys.argv[5] == "die"
settings.configure(CACHES={"default": config}, SECRET_KEY="herd", USE_TZ=True)
django.setup()
from django.core.cache import cache  # noqa: E402


def note(what: str) -> None:
    with open(log, "a") as f:
        f.write(f"{what} {os.getpid()}\n")


def compute() -> str:
    note("start")
    time.sleep(0.1)
    if die:
        os._exit(9)
    time.sleep(0.1)
    note("done")
    return f"value from {os.getpid()}"


KWARGS = json.loads(os.environ.get("HERD_KWARGS", "{}"))
results: list[tuple[str, float]] = []
errors: list[str] = []
lock = threading.Lock()


def thread_caller() -> None:
    time.sleep(max(0.0, start - time.time()))
    began = time.monotonic()
    try:
        value = cache.get_or_set(key, compute, 30)
    except Exception as e:
        with lock:
            errors.append(repr(e))
        return
    with lock:
        results.append((value, time.monotonic() - began))


async def task_caller() -> None:
    began = time.monotonic()
    try:
        value = await cache.aget_or_set(key, compute, 30)
    except Exception as e:
        errors.append(repr(e))
        return
    results.append((value, time.monotonic() - began))


async def tasks() -> None:
    await asyncio.sleep(max(0.0, start - time.time()))
    await asyncio.gather(*(task_caller() for _ in range(int(os.environ.get("HERD_TASKS", 64)))))


threads = [threading.Thread(target=thread_caller) for _ in range(int(os.environ.get("HERD_THREADS", 16)))]
for t in threads:
    t.start()
asyncio.run(tasks())
for t in threads:
    t.join()
report = {
    "values": [v for v, _ in results],
    "waits": [w for _, w in results],
    "slowest": max((w for _, w in results), default=0),
    "errors": errors,
}
print(json.dumps(report))
