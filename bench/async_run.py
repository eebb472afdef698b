"""The async benchmark: N concurrent asyncio tasks doing 80 % ``aget`` / 20 % ``aset`` on 1,000
keys for a fixed time, through Django's ``a*`` API, ours against the peers, in one run.

The peers' ``a*`` methods are Django's defaults, ``sync_to_async(thread_sensitive=True)``: every
call of the process queued on one thread, as in an ASGI site. Ours run natively (the core's I/O
runtime, many calls in flight on shared connections).

Also: at N = 1, the latency of one ``aget`` against our own sync ``get`` (mean us per call over a
batch), with ``median - floor`` against a raw socket, and the asyncio raw-socket floor: the same
get with the loop's own non-blocking socket calls and no thread, the least any asyncio client
can pay.

Rounds interleave the backends in a shuffled order; cells are medians over rounds. Placement as
in ``run.py`` (default: the benchmark and its servers pinned to one CPU).

    python bench/async_run.py
    python bench/async_run.py --placement split --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import django
from django.conf import settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import SMALL, Placement, RawRedisFloor, RawSocketFloor

CONCURRENCY = (1, 16, 256)


@dataclass
class Backend:
    alias: str
    label: str
    params: dict
    family: str  # "redis" or "memcached": ratios compare within a family
    ours: bool = False


def backends(redis_loc: str, memcached_loc: str) -> list[Backend]:
    out = [
        Backend("rust_redis", "ours RedisCache", {"BACKEND": "django_rustcache.redis.RedisCache"}, "redis", True),
        Backend("dj_redis", "Django RedisCache", {"BACKEND": "django.core.cache.backends.redis.RedisCache"}, "redis"),
    ]
    try:
        import django_redis  # noqa: F401

        out.append(Backend("django_redis", "django-redis", {"BACKEND": "django_redis.cache.RedisCache"}, "redis"))
    except ImportError:
        print("django-redis is not installed: its column is left out", file=sys.stderr)
    out.append(
        Backend(
            "rust_mc",
            "ours MemcachedCache",
            {"BACKEND": "django_rustcache.memcached.MemcachedCache"},
            "memcached",
            True,
        )
    )
    try:
        import pymemcache  # noqa: F401

        out.append(
            Backend(
                "pymemcache",
                "Django PyMemcacheCache",
                {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache"},
                "memcached",
            )
        )
    except ImportError:
        print("pymemcache is not installed: its column is left out", file=sys.stderr)
    try:
        import pylibmc  # noqa: F401

        out.append(
            Backend(
                "pylibmc",
                "Django PyLibMCCache",
                {"BACKEND": "django.core.cache.backends.memcached.PyLibMCCache"},
                "memcached",
            )
        )
    except ImportError:
        print("pylibmc is not installed: its column is left out", file=sys.stderr)
    for b in out:
        b.params = {**b.params, "LOCATION": redis_loc if b.family == "redis" else memcached_loc}
        b.params["KEY_PREFIX"] = f"abench-{b.alias}"
    return out


async def throughput(cache, n: int, seconds: float) -> float:
    """Operations per second of `n` tasks doing 80 % aget / 20 % aset on 1,000 keys."""
    keys = [f"t{k}" for k in range(1000)]
    await cache.aset_many({k: SMALL for k in keys})
    done = [0] * n
    until = time.perf_counter() + seconds

    async def work(i: int) -> None:
        rng = random.Random(i)
        plan = [(rng.choice(keys), rng.random() < 0.2) for _ in range(512)]
        count = 0
        while time.perf_counter() < until:
            for key, write in plan[:32]:
                if write:
                    await cache.aset(key, SMALL)
                else:
                    await cache.aget(key)
            count += 32
            plan = plan[32:] + plan[:32]
        done[i] = count

    start = time.perf_counter()
    await asyncio.gather(*(work(i) for i in range(n)))
    return sum(done) / (time.perf_counter() - start)


async def latency_async(cache, n: int = 2000) -> float:
    await cache.aset("hit", SMALL)
    start = time.perf_counter_ns()
    for _ in range(n):
        await cache.aget("hit")
    return (time.perf_counter_ns() - start) / n / 1000


async def latency_asyncio_floor(port: int, request: bytes, terminator: bytes, n: int = 2000) -> float:
    """The least an asyncio caller can pay for a get: the pre-encoded request on a non-blocking
    socket with the loop's own ``sock_sendall``/``sock_recv_into`` (no thread at all), the reply
    read until its terminator."""
    import socket

    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    buf = memoryview(bytearray(1 << 16))
    try:
        start = time.perf_counter_ns()
        for _ in range(n):
            await loop.sock_sendall(sock, request)
            got = await loop.sock_recv_into(sock, buf)
            while buf[got - len(terminator) : got] != terminator:
                got += await loop.sock_recv_into(sock, buf[got:])
        return (time.perf_counter_ns() - start) / n / 1000
    finally:
        sock.close()


def latency_sync(cache, n: int = 2000) -> float:
    cache.set("hit", SMALL)
    start = time.perf_counter_ns()
    for _ in range(n):
        cache.get("hit")
    return (time.perf_counter_ns() - start) / n / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per backend, per N, per round")
    parser.add_argument("--latency-rounds", type=int, default=21)
    parser.add_argument("--placement", choices=["one", "split"], default="one")
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the results here (bench/record.py's format, for bench/charts.py)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.latency_rounds = 1, 0.3, 3
    placement = Placement(args.placement, args.cpu)
    placement.pin_self()

    from tests.servers import MemcachedServer, RedisServer

    redis_server = RedisServer()
    memcached_server = MemcachedServer(args=("-m", "256", "-t", "1"))
    for pid in (redis_server.proc.pid, memcached_server.proc.pid):
        placement.pin_server(pid)
    chosen = backends(redis_server.location, memcached_server.location)
    settings.configure(CACHES={b.alias: b.params for b in chosen} | {"default": {}})
    django.setup()
    from django.core.cache import caches

    ops: dict[tuple[str, int], list[float]] = {}
    names = ("ours aget", "ours get (sync)", "raw socket floor", "asyncio raw socket floor")
    lat: dict[str, list[float]] = {name: [] for name in names}
    lat_mc: dict[str, list[float]] = {name: [] for name in names}
    try:
        redis_floor = RawRedisFloor(redis_server.port, "abench-raw")
        mc_floor = RawSocketFloor(memcached_server.port, "abench-raw")
        for _ in range(args.rounds):
            order = [(b, n) for b in chosen for n in CONCURRENCY]
            random.shuffle(order)
            for b, n in order:
                ops.setdefault((b.label, n), []).append(asyncio.run(throughput(caches[b.alias], n, args.seconds)))
        redis_floor.set("hit", SMALL)
        mc_floor.set("hit", SMALL)
        # The floors' "hit" keys (their prefix, version 1), read as the floors read them.
        redis_get = RawRedisFloor._resp(b"GET", b"abench-raw:1:hit")
        redis_end = b"\r\n" + SMALL.encode() + b"\r\n"
        mc_get, mc_end = b"get abench-raw:1:hit\r\n", b"END\r\n"
        ports = {
            "redis": (redis_server.port, redis_get, redis_end),
            "memcached": (memcached_server.port, mc_get, mc_end),
        }
        for _ in range(args.latency_rounds):
            for family, table, floor in (("redis", lat, redis_floor), ("memcached", lat_mc, mc_floor)):
                ours = next(b for b in chosen if b.ours and b.family == family)
                cache = caches[ours.alias]
                steps = [
                    ("ours aget", lambda c=cache: asyncio.run(latency_async(c))),
                    ("ours get (sync)", lambda c=cache: latency_sync(c)),
                    ("raw socket floor", lambda f=floor: latency_sync(f)),
                    ("asyncio raw socket floor", lambda p=ports[family]: asyncio.run(latency_asyncio_floor(*p))),
                ]
                random.shuffle(steps)
                for name, step in steps:
                    table[name].append(step())
    finally:
        redis_server.close()
        memcached_server.close()

    print(f"## suite: async (Python {sys.version.split()[0]}, Django {django.get_version()})")
    print()
    for family in ("redis", "memcached"):
        fam = [b for b in chosen if b.family == family]
        ours = next(b for b in fam if b.ours)
        peers = [b for b in fam if not b.ours]
        print(f"### {family}: ops/s, N tasks, 80 % aget / 20 % aset")
        print()
        print(
            "| N | " + " | ".join(b.label for b in fam) + " | " + " | ".join(f"ours / {p.label}" for p in peers) + " |"
        )
        print("|---" * (1 + len(fam) + len(peers)) + "|")
        for n in CONCURRENCY:
            med = {b.label: statistics.median(ops[(b.label, n)]) for b in fam}
            cells = [f"{med[b.label]:,.0f}" for b in fam]
            ratios = [f"{med[ours.label] / med[p.label]:.1f}x" for p in peers]
            print(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        print()
        table = lat if family == "redis" else lat_mc
        floor = statistics.median(table["raw socket floor"])
        sync = statistics.median(table["ours get (sync)"])
        print(f"### {family}: one call at a time (N = 1), get hit, mean us per call")
        print()
        print("| call | median us | median - floor | vs ours sync get |")
        print("|---|---|---|---|")
        for name, vals in table.items():
            m = statistics.median(vals)
            print(f"| {name} | {m:.1f} | {m - floor:+.1f} | {m / sync:.2f}x |")
        print()
    print(
        f"{args.rounds} interleaved rounds of {args.seconds}s per backend and N; latency: {args.latency_rounds} "
        f"rounds of 2,000 calls. Placement: {placement.describe()}."
    )
    if args.json:
        from record import write

        data = {
            family: {
                "ours": next(b.label for b in chosen if b.ours and b.family == family),
                "backends": [b.label for b in chosen if b.family == family],
                "ops_per_second": {
                    b.label: {str(n): statistics.median(ops[(b.label, n)]) for n in CONCURRENCY}
                    for b in chosen
                    if b.family == family
                },
                "one_call_us": {n: statistics.median(v) for n, v in (lat if family == "redis" else lat_mc).items()},
            }
            for family in ("redis", "memcached")
        }
        write(args.json, "async", placement.describe(), data, rounds=args.rounds, seconds=args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
