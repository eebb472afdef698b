"""What the stable ABI (abi3) costs on the hot path: two installs of the package side by side.

The wheels are built for CPython's stable ABI (one wheel for 3.11+) unless that costs more than
5 % on the hot path. This compares two interpreters (two venvs), one with the per-interpreter
wheel and one with the abi3 wheel, on the calls a site makes most (get hit, set, get_many of 10,
get miss) through Django's API, on the LRU (object and pickled: nothing but the call into Rust
and back, where an ABI difference shows most), memcached and redis. Each run is a fresh process;
runs alternate between the two installs, everything pinned to one CPU; the table gives the median
over runs of each run's median ns per call, and the ratio abi3 / per-interpreter.

    maturin build --release -i python3.11 -o /tmp/w311                            # cp311-cp311
    maturin build --release -i python3.11 -o /tmp/wabi3 --features pyo3/abi3-py311  # cp311-abi3
    # two venvs, each with Django and one of the wheels, then:
    python bench/abi3_cost.py /tmp/v311/bin/python /tmp/vabi3/bin/python --runs 20
    python bench/abi3_cost.py ... --aliases lru-object      # the LRU only (more runs in the time)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALUE = {"a": 1, "b": [1, 2, 3], "s": "x" * 50}


def child(locations: dict[str, str], aliases: list[str]) -> dict[str, float]:
    """In the measured interpreter: ns per call, median of 7 batches, per alias and operation."""
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="bench",
        CACHES={
            "lru-object": {"BACKEND": "django_rustcache.lru.LRUObjectCache", "LOCATION": "o"},
            "lru-pickled": {
                "BACKEND": "django_rustcache.lru.LRUObjectCache",
                "LOCATION": "p",
                "OPTIONS": {"PICKLE": True},
            },
            "memcached": {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": locations["memcached"]},
            "redis": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": locations["redis"]},
        },
    )
    django.setup()
    from django.core.cache import caches

    result = {}
    keys = [f"k{i}" for i in range(10)]
    for alias in aliases:
        cache = caches[alias]
        cache.set("k", VALUE)
        cache.set_many(dict.fromkeys(keys, VALUE))
        calls = 20_000 if alias.startswith("lru") else 2_000
        operations = {
            "get": lambda c=cache: c.get("k"),
            "set": lambda c=cache: c.set("k", VALUE),
            "get_many(10)": lambda c=cache: c.get_many(keys),
            "get miss": lambda c=cache: c.get("missing"),
        }
        for name, call in operations.items():
            batches = []
            for _ in range(7):
                start = time.perf_counter_ns()
                for _ in range(calls):
                    call()
                batches.append((time.perf_counter_ns() - start) / calls)
            result[f"{alias} {name}"] = statistics.median(batches)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("per_interpreter", nargs="?", help="python with the cpXY-cpXY wheel installed")
    parser.add_argument("abi3", nargs="?", help="python with the abi3 wheel installed")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--aliases", default="lru-object,lru-pickled,memcached,redis")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.aliases.split(","))))
        return 0
    if not (args.per_interpreter and args.abi3):
        parser.error("give the two interpreters")
    sys.path.insert(0, str(ROOT))
    from tests.servers import MemcachedServer, RedisServer

    os.sched_setaffinity(0, {0})
    servers = [MemcachedServer(), RedisServer()]
    try:
        for server in servers:
            assert server.proc is not None
            os.sched_setaffinity(server.proc.pid, {0})
        locations = json.dumps({"memcached": servers[0].location, "redis": servers[1].location})
        pythons = {"per-interpreter": args.per_interpreter, "abi3": args.abi3}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in pythons}
        for n in range(args.runs):
            order = list(pythons) if n % 2 == 0 else list(pythons)[::-1]
            for name in order:
                command = [pythons[name], __file__, "--child", locations, "--aliases", args.aliases]
                # (cwd outside the checkout: the installed package is measured, not ./python)
                out = subprocess.run(command, capture_output=True, text=True, check=True, cwd="/")
                runs[name].append(json.loads(out.stdout))
    finally:
        for server in servers:
            server.close()
    print(f"{'call':26} {'per-interpreter ns':>19} {'abi3 ns':>9} {'abi3 / per-interp.':>19}")
    for call in runs["abi3"][0]:
        a = statistics.median(r[call] for r in runs["per-interpreter"])
        b = statistics.median(r[call] for r in runs["abi3"])
        print(f"{call:26} {a:19.0f} {b:9.0f} {b / a:19.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
