"""The near cache under a Zipf workload: 100,000 keys, 1,000,000 reads through Django's API in
one process, while another process writes 5 % as many times (keys drawn from the same Zipf
law, each write announced after it returned). Reports the local hit ratio, the reads' time
with and without the near cache, and the stale reads (a read that began after a write of a
newer value had returned): there must be none.

    python bench/near_zipf.py [--reads 1000000] [--keys 100000] [--cpu 0]
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def zipf_table(n: int, s: float = 1.0) -> list[float]:
    """The cumulative weights of ranks 1..n under Zipf's law with exponent s."""
    total, table = 0.0, []
    for rank in range(1, n + 1):
        total += 1 / rank**s
        table.append(total)
    return [t / total for t in table]


def draws(table: list[float], count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [bisect.bisect_left(table, rng.random()) for _ in range(count)]


def make_cache(location: str, near: bool):
    from django_rustcache.redis import RedisCache

    options = {"NEAR_CACHE": {"MAX_ENTRIES": 100_000, "MAX_BYTES": 256 * 2**20}} if near else {}
    return RedisCache(location, {"KEY_PREFIX": "zipf", "OPTIONS": options, "TIMEOUT": None})


def writer(location, keys, writes, versions, started, done, cpu):
    os.sched_setaffinity(0, {cpu})
    setup()
    cache = make_cache(location, near=False)
    table = zipf_table(keys)
    started.wait()
    for i, key in enumerate(draws(table, writes, seed=2), start=1):
        if done.is_set():
            break
        cache.set(f"k{key}", i)
        versions[key] = i  # announced: the write of i has returned
    done.set()


def setup() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(CACHES={"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}})
        django.setup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the reader, the writer and redis share")
    parser.add_argument("--json", help="also write the results here (bench/record.py's format, for bench/charts.py)")
    args = parser.parse_args()
    setup()
    from tests.servers import RedisServer

    cpu = args.cpu
    os.sched_setaffinity(0, {cpu})
    server = RedisServer()
    for tid in os.listdir(f"/proc/{server.proc.pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})
    try:
        plain = make_cache(server.location, near=False)
        plain.set_many({f"k{i}": 0 for i in range(args.keys)})
        table = zipf_table(args.keys)
        reads = draws(table, args.reads, seed=1)
        ctx = multiprocessing.get_context("fork")
        versions = ctx.Array("q", args.keys, lock=False)
        started, done = ctx.Event(), ctx.Event()
        writes = args.reads * 5 // 100
        proc = ctx.Process(target=writer, args=(server.location, args.keys, writes, versions, started, done, cpu))
        proc.start()
        cache = make_cache(server.location, near=True)
        cache.get("k0")  # subscribes
        started.set()
        stale = 0
        begin = time.perf_counter()
        for key in reads:
            floor = versions[key]
            value = cache.get(f"k{key}")
            if value < floor:
                stale += 1
        near_seconds = time.perf_counter() - begin
        done.set()
        proc.join(30)
        stats = cache.stats()["near_cache"]
        sample = reads[: args.reads // 10]
        begin = time.perf_counter()
        for key in sample:
            plain.get(f"k{key}")
        plain_us = (time.perf_counter() - begin) / len(sample) * 1e6
        near_us = near_seconds / args.reads * 1e6
        print(f"Zipf (s=1) over {args.keys:,} keys, {args.reads:,} reads, {writes:,} writes from another process")
        print(f"placement: reader, writer and redis pinned to CPU {cpu}; {time.strftime('%Y-%m-%d')}")
        print(f"local hit ratio: {stats['hits'] / max(1, stats['hits'] + stats['misses']):.1%}")
        print(f"invalidations received: {stats['invalidations']:,}; flushes: {stats['flushes']}")
        print(f"entries: {stats['entries']:,}; bytes: {stats['bytes']:,}")
        print(f"get with the near cache: {near_us:.2f} us/read (mean, writer running)")
        print(f"get without it: {plain_us:.2f} us/read (mean, {len(sample):,} reads, writer stopped)")
        print(f"stale reads: {stale}")
        if args.json:
            from record import write

            data = {
                "keys": args.keys, "reads": args.reads, "writes": writes, "stale_reads": stale,
                "local_hit_ratio": stats["hits"] / max(1, stats["hits"] + stats["misses"]),
                "invalidations": stats["invalidations"], "near_us": near_us, "plain_us": plain_us,
            }  # fmt: skip
            write(args.json, "near", f"reader, writer and redis pinned to CPU {cpu}", data)
        return 1 if stale else 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
