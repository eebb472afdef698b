"""Side-by-side benchmark of our backends against the peers, through Django's cache API.

Every backend is reached the way a site reaches it: ``caches[alias]`` (resolved once per batch,
as a view does once per request) and then ``.get(...)``/``.set(...)``. One sample is the mean
time per operation over a batch; rounds interleave the backends in a shuffled order, so a noisy
neighbour slows every backend alike. The table gives the median and p99 of the samples and each
peer's median as a ratio to ours (ours / peer: below 1 means we are faster).

    python bench/run.py                # the in-process suite (LRU vs LocMem vs django-lrucache-backend)
    python bench/run.py --quick        # fewer rounds
    python bench/run.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import django
from django.conf import settings

SMALL = "x" * 100


@dataclass
class Backend:
    alias: str
    label: str
    params: dict
    ours: bool = False


@dataclass
class Suite:
    name: str
    backends: list[Backend]
    # op name -> (ratio target vs peer label), checked against ours / peer.
    targets: dict[str, dict[str, float]] = field(default_factory=dict)


def lru_suite() -> Suite:
    backends = [
        Backend(
            "rust_lru", "django_rustcache LRUObjectCache", {"BACKEND": "django_rustcache.lru.LRUObjectCache"}, True
        ),
        Backend("locmem", "Django LocMemCache", {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}),
    ]
    try:
        import lrucache_backend  # noqa: F401

        backends.append(Backend("lrucache", "django-lrucache-backend", {"BACKEND": "lrucache_backend.LRUObjectCache"}))
    except ImportError:
        print("django-lrucache-backend is not installed: its column is left out", file=sys.stderr)
    for b in backends:
        b.params = {**b.params, "LOCATION": f"bench-{b.alias}", "OPTIONS": {"MAX_ENTRIES": 100_000}}
    single = {"django-lrucache-backend": 0.4, "Django LocMemCache": 0.12}
    many = {"django-lrucache-backend": 0.3}
    return Suite(
        "lru",
        backends,
        targets={
            "get hit": single,
            "get miss": single,
            "set": single,
            "get_many(100)": many,
            "set_many(100)": many,
            "8 threads 80/20 (ops/s)": {"django-lrucache-backend": 1.5},
        },
    )


SUITES: dict[str, Callable[[], Suite]] = {"lru": lru_suite}


def ops(cache) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (one call, how many calls make a batch)."""
    keys100 = [f"many{i}" for i in range(100)]
    data100 = {k: SMALL for k in keys100}
    cache.set("hit", SMALL, None)
    cache.set_many(data100, None)
    return {
        "get hit": (lambda: cache.get("hit"), 2000),
        "get miss": (lambda: cache.get("miss"), 2000),
        "set": (lambda: cache.set("hit", SMALL), 2000),
        "get_many(100)": (lambda: cache.get_many(keys100), 50),
        "set_many(100)": (lambda: cache.set_many(data100), 50),
    }


def sample(call: Callable[[], object], n: int) -> float:
    """Mean microseconds per call over a batch of n calls."""
    start = time.perf_counter_ns()
    for _ in range(n):
        call()
    return (time.perf_counter_ns() - start) / n / 1000


def threaded_throughput(alias: str, seconds: float, threads: int = 8) -> float:
    """Operations per second of `threads` threads doing 80 % get / 20 % set on 1,000 keys."""
    from django.core.cache import caches

    stop = threading.Event()
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        cache = caches[alias]
        rng = random.Random(i)
        keys = [f"t{k}" for k in range(1000)]
        plan = [(rng.choice(keys), rng.random() < 0.2) for _ in range(4096)]
        barrier.wait()
        n = 0
        while not stop.is_set():
            for key, write in plan[:256]:
                if write:
                    cache.set(key, SMALL)
                else:
                    cache.get(key)
            n += 256
            plan = plan[256:] + plan[:256]
        counts[i] = n

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run_suite(suite: Suite, rounds: int, thread_rounds: int, thread_seconds: float) -> dict:
    from django.core.cache import caches

    samples: dict[str, dict[str, list[float]]] = {}
    order = list(suite.backends)
    for _ in range(rounds):
        random.shuffle(order)
        for b in order:
            cache = caches[b.alias]
            for op, (call, n) in ops(cache).items():
                samples.setdefault(op, {}).setdefault(b.label, []).append(sample(call, n))
    op = "8 threads 80/20 (ops/s)"
    for _ in range(thread_rounds):
        random.shuffle(order)
        for b in order:
            samples.setdefault(op, {}).setdefault(b.label, []).append(threaded_throughput(b.alias, thread_seconds))
    return samples


def report(suite: Suite, samples: dict) -> tuple[list[str], list[str]]:
    ours = next(b.label for b in suite.backends if b.ours)
    peers = [b.label for b in suite.backends if not b.ours]
    lines = [
        f"## suite: {suite.name} (Python {sys.version.split()[0]}, Django {django.get_version()})",
        "",
        "| op | "
        + " | ".join(b.label for b in suite.backends)
        + " | "
        + " | ".join(f"ratio vs {p}" for p in peers)
        + " |",
        "|---" * (1 + len(suite.backends) + len(peers)) + "|",
    ]
    misses = []
    for op, by_backend in samples.items():
        throughput = "ops/s" in op
        cells = []
        for b in suite.backends:
            vals = by_backend[b.label]
            if throughput:
                cells.append(f"{statistics.median(vals):,.0f}")
            else:
                cells.append(f"{statistics.median(vals):.3f} us (p99 {percentile(vals, 99):.3f})")
        ratios = []
        mine = statistics.median(by_backend[ours])
        for p in peers:
            theirs = statistics.median(by_backend[p])
            # Time: ours / peer (lower is better). Throughput: ours / peer (higher is better).
            ratio = mine / theirs
            target = suite.targets.get(op, {}).get(p)
            mark = ""
            if target is not None:
                ok = ratio >= target if throughput else ratio <= target
                mark = f" {'ok' if ok else 'MISSED'} ({'>=' if throughput else '<='}{target}x)"
                if not ok:
                    misses.append(f"{op} vs {p}: {ratio:.2f}x, target {target}x")
            ratios.append(f"{ratio:.2f}x{mark}")
        lines.append(f"| {op} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return lines, misses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), action="append")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--thread-rounds", type=int, default=5)
    parser.add_argument("--thread-seconds", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument("--json", help="also write the raw samples here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.thread_rounds, args.thread_seconds = 5, 1, 0.3

    suites = [SUITES[name]() for name in (args.suite or sorted(SUITES))]
    settings.configure(CACHES={b.alias: b.params for s in suites for b in s.backends} | {"default": {}})
    django.setup()

    all_misses, raw = [], {}
    for suite in suites:
        samples = run_suite(suite, args.rounds, args.thread_rounds, args.thread_seconds)
        raw[suite.name] = samples
        lines, misses = report(suite, samples)
        all_misses += misses
        print("\n".join(lines), flush=True)
        print()
    print(f"{args.rounds} interleaved rounds; throughput: {args.thread_rounds} rounds of {args.thread_seconds}s.")
    print("Targets missed: " + ("; ".join(all_misses) if all_misses else "none"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    return 1 if (args.check and all_misses) else 0


if __name__ == "__main__":
    sys.exit(main())
