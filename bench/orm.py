"""The ORM query cache benchmark: uncached Django vs ours (django_rustcache.orm) vs Cache Machine.

One database (an SQLite file, or with ``--db postgresql`` a PostgreSQL server the benchmark
starts, as production runs) with 1,000 rows, one table behind three model classes (plain, ours,
Cache Machine's), the same cache for both caching layers. Ops: a cached ``filter()`` returning
100 rows, ``get(pk=)``, ``count()``, and one ``save()`` (an UPDATE plus each layer's
invalidation). Rounds interleave the three in a shuffled order; cells are median us per call
(p99). Our SQL hook is switched off while the others run, so they do not pay for it. The
round's save() invalidates every layer's cached reads: before each batch of reads, one untimed
call stores them again, so the read rows measure hits.

    python bench/orm.py                 # memcached (ours) and Django's LocMemCache
    python bench/orm.py --rounds 11 --cache locmem
    python bench/orm.py --db postgresql          # PostgreSQL (Debian: apt-get install -y postgresql)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import Placement, percentile, sample  # noqa: E402

LAYERS = ["uncached", "ours", "Cache Machine"]
# (op, batch size)
OPS = [("filter() 100 rows", 20), ("get(pk=)", 50), ("count()", 50), ("save()", 20)]


def configure(cache: str, tmp: str, memcached_location: str, database: dict | None = None) -> None:
    import django
    from django.conf import settings

    caches = {
        "memcached": {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": memcached_location},
        "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "bench-orm"},
    }
    settings.configure(
        DATABASES={"default": database or {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{tmp}/bench.sqlite3"}},
        CACHES={"default": {**caches[cache], "TIMEOUT": 600}},
        INSTALLED_APPS=["ormapp"],
        CACHE_COUNT_TIMEOUT=600,  # Cache Machine caches count() only when this is set
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


def populate() -> None:
    from django.core.management import call_command
    from ormapp.models import PlainItem

    call_command("migrate", run_syncdb=True, verbosity=0)
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    PlainItem.objects.bulk_create(
        PlainItem(name=f"item {i}", category=i % 10, price=i * 7 % 1000, note="n" * 100, created=now)
        for i in range(1000)
    )


def calls(layer: str):
    from ormapp.models import CMItem, OurItem, PlainItem

    model = {"uncached": PlainItem, "ours": OurItem, "Cache Machine": CMItem}[layer]
    obj = model.objects.get(pk=500) if layer == "uncached" else model.objects.no_cache().get(pk=500)
    return {
        "filter() 100 rows": lambda: len(list(model.objects.filter(category=3))),
        "get(pk=)": lambda: model.objects.get(pk=123),
        "count()": lambda: model.objects.filter(category=4).count(),
        "save()": obj.save,
    }


def run(cache: str, rounds: int) -> dict:
    from django.core.cache import caches

    from django_rustcache.orm import _engine

    table = {layer: calls(layer) for layer in LAYERS}
    caches["default"].clear()
    for layer in LAYERS:  # warm: every cached op has its entry
        for op, _ in OPS:
            table[layer][op]()
    samples: dict = {op: {layer: [] for layer in LAYERS} for op, _ in OPS}
    for _ in range(rounds):
        order = LAYERS[:]
        random.shuffle(order)
        for op, n in OPS:
            for layer in order:
                call = table[layer][op]
                if op != "save()":
                    # The round's save() invalidated the cached reads: one call, untimed,
                    # stores them again, so the batch measures hits (for every layer alike).
                    with _engine.busy() if layer != "ours" else contextlib.nullcontext():
                        call()
                if layer == "ours":
                    samples[op][layer].append(sample(call, n)[0])
                else:
                    with _engine.busy():  # our SQL hook off: the others do not pay for it
                        samples[op][layer].append(sample(call, n)[0])
    return samples


def report(cache: str, samples: dict, db: str = "sqlite") -> tuple[list[str], list[str]]:
    import django

    med = {op: {layer: statistics.median(v) for layer, v in by.items()} for op, by in samples.items()}
    database = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[db]
    lines = [
        f"## suite: orm on {cache} (Python {sys.version.split()[0]}, Django {django.get_version()}, "
        f"{database}, 1,000 rows)",
        "",
        "| op | uncached | ours | Cache Machine | uncached / ours | ours / Cache Machine |",
        "|---|---|---|---|---|---|",
    ]
    for op, by in samples.items():
        cells = [f"{med[op][layer]:.1f} ({percentile(by[layer], 99):.1f})" for layer in LAYERS]
        m = med[op]
        ratios = f"{m['uncached'] / m['ours']:.1f}x | {m['ours'] / m['Cache Machine']:.2f}x"
        lines.append(f"| {op} | {' | '.join(cells)} | {ratios} |")
    save = med["save()"]
    ours_extra = save["ours"] - save["uncached"]
    cm_extra = save["Cache Machine"] - save["uncached"]
    lines.append("")
    lines.append(
        f"Cost added to one save(): ours {ours_extra:.1f} us, Cache Machine {cm_extra:.1f} us "
        f"(ours / Cache Machine {ours_extra / cm_extra:.2f}x)."
    )
    misses = []
    f = med["filter() 100 rows"]
    if f["ours"] > 0.5 * f["Cache Machine"]:
        misses.append(f"{cache}: cached filter() {f['ours'] / f['Cache Machine']:.2f}x Cache Machine (target <= 0.5)")
    if cm_extra > 0 and ours_extra / cm_extra > 1.5:
        misses.append(f"{cache}: save() overhead {ours_extra / cm_extra:.2f}x Cache Machine's (target <= 1.5x)")
    return lines, misses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", choices=["memcached", "locmem"], action="append")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 5
    placement = Placement("one", args.cpu)
    placement.pin_self()
    misses: list[str] = []
    for cache in args.cache or ["memcached", "locmem"]:
        # One process per cache (Django is configured once per process).
        if len(args.cache or ["memcached", "locmem"]) > 1:
            import subprocess

            cmd = [sys.executable, __file__, "--cache", cache, "--rounds", str(args.rounds), "--cpu", str(args.cpu)]
            cmd += ["--db", args.db]
            rc = subprocess.run([*cmd, *(["--check"] if args.check else [])]).returncode
            misses += [cache] if rc else []
            continue
        from tests.servers import MemcachedServer, PostgresServer

        server = MemcachedServer(args=("-t", "1")) if cache == "memcached" else None
        postgres = PostgresServer() if args.db == "postgresql" else None
        try:
            for each in (server, postgres):
                if each is not None:
                    # The database's sessions are forked from its postmaster: pinned with it.
                    placement.pin_server(each.proc.pid)
                    for child in _children(each.proc.pid):
                        placement.pin_server(child)
            with tempfile.TemporaryDirectory(prefix="bench-orm-") as tmp:
                configure(cache, tmp, server.location if server else "", postgres.database() if postgres else None)
                populate()
                lines, missed = report(cache, run(cache, args.rounds), args.db)
        finally:
            for each in (server, postgres):
                if each is not None:
                    each.close()
        print("\n".join(lines))
        print(f"\n{args.rounds} interleaved rounds; {placement.describe()}. Cells: median us per call (p99).")
        print("Targets missed: " + ("; ".join(missed) if missed else "none"), flush=True)
        misses += missed
    return 1 if (args.check and misses) else 0


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (runuser's postgres, its postmaster's helpers)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            out += [int(child), *_children(int(child))]
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
