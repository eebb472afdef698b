"""Run the ORM query cache tests: ours on every cache kind, then Cache Machine's own suite.

    python orm_tests/run.py                       # everything
    python orm_tests/run.py --only lru            # one of ours
    python orm_tests/run.py --only cm-locmem      # one Cache Machine settings module

Ours (orm_tests/testapp) run with Django's test runner once per cache: our LRU, memcached and
redis backends, and Django's LocMemCache. Cache Machine's suite (orm_tests/cache_machine, its
``tests/`` and ``examples/`` as released, unchanged) runs once per settings module of its
``examples/``, with ``caching`` mapped onto django_rustcache.orm by the opt-in shim. The
memcached and redis servers are started here, on free loopback ports, and stopped by PID.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CM = HERE / "cache_machine"
sys.path.insert(0, str(ROOT))

from tests.servers import MemcachedServer, RedisServer  # noqa: E402

OURS = [
    "lru",
    "locmem",
    "memcached",
    "redis",
    "redis-near",
    "memcached-signed",
    "redis-signed",
    "filebased",
    "database",
]
# Cache Machine's examples/cache_machine settings modules (its run_tests.py list).
CACHE_MACHINE = [
    "locmem_settings",
    "settings",
    "memcache_byid",
    "custom_backend",
    "redis_settings",
    "redis_byid",
    "django_redis_settings",
]
VARIANTS = OURS + [f"cm-{name}" for name in CACHE_MACHINE]


def main() -> int:
    import django

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=VARIANTS, action="append")
    parser.add_argument("-v", "--verbosity", default="1")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="runs at once, each on its own servers (default 2)")
    parser.add_argument("tests", nargs="*", help="test labels for our runs (default: orm_tests.testapp)")
    args = parser.parse_args()

    names = args.only or VARIANTS
    # Two lanes, each with a memcached and a redis of its own (runs flush their servers), take
    # the variants in turn: a run spends a third of its time waiting on its servers and its
    # process start, so two at once take ~60 % of the wall time on two CPUs. Each run's output
    # is kept and printed whole, in order.
    lanes: queue.Queue[tuple[MemcachedServer, RedisServer]] = queue.Queue()
    servers = [(MemcachedServer(), RedisServer()) for _ in range(min(args.jobs, len(names)))]
    for pair in servers:
        lanes.put(pair)

    def run(name: str) -> tuple[bool, str]:
        pair = lanes.get()
        try:
            return run_variant(name, *pair, args)
        finally:
            lanes.put(pair)

    failed = []
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(servers)) as pool:
            runs = [pool.submit(run, name) for name in names]
            for name, future in zip(names, runs, strict=True):
                ok, out = future.result()
                print(f"=== Django {django.get_version()} ORM cache: {name} ===", flush=True)
                sys.stdout.write(out)
                sys.stdout.flush()
                if not ok:
                    failed.append(name)
    finally:
        for memcached, redis in servers:
            memcached.close()
            redis.close()
    print(f"=== failed: {', '.join(failed)} ===" if failed else "=== every ORM run passed ===")
    return 1 if failed else 0


def run_variant(
    name: str, memcached: MemcachedServer, redis: RedisServer, args: argparse.Namespace
) -> tuple[bool, str]:
    """One run on a lane's servers (emptied first): whether it passed, and its output."""
    with tempfile.TemporaryDirectory(prefix="rustcache-orm-") as tmp:
        env = {
            **os.environ,
            "RUSTCACHE_ORM_DB_DIR": tmp,
            "RUSTCACHE_MEMCACHED_LOCATION": memcached.location,
            "RUSTCACHE_REDIS_LOCATION": redis.location,
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
        }
        flush(memcached.port, b"flush_all\r\n")
        flush(redis.port, b"FLUSHALL\r\n")
        if name.startswith("cm-"):
            cmd, cwd = cache_machine_command(name[3:], env, tmp, args.verbosity), CM
        else:
            env["RUSTCACHE_ORM_CACHE"] = name
            locations = {"memcached": memcached.location, "redis": redis.location}
            env["RUSTCACHE_ORM_LOCATION"] = locations.get(name.split("-")[0], "")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            labels = args.tests or ["orm_tests.testapp"]
            cmd = [sys.executable, "-m", "django", "test", *labels, "--settings=orm_tests.settings"]
            cmd += ["--noinput", f"--verbosity={args.verbosity}"]
            cwd = ROOT
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return done.returncode == 0, done.stdout


def flush(port: int, command: bytes) -> None:
    """Empty a server between runs: each run has new databases, so nothing cached may survive."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        sock.recv(64)


def cache_machine_command(settings: str, env: dict[str, str], tmp: str, verbosity: str) -> list[str]:
    """Cache Machine's suite under one of its settings modules, as its run_tests.py runs it."""
    env["PYTHONPATH"] = os.pathsep.join([str(CM), str(CM / "examples")])
    env["RUSTCACHE_CM_SETTINGS"] = f"cache_machine.{settings}"
    # dj_database_url reads these: SQLite files instead of the PostgreSQL the examples default to.
    env["DATABASE_URL"] = f"sqlite:///{tmp}/cache_machine.sqlite3"
    env["DATABASE_URL_2"] = f"sqlite:///{tmp}/cache_machine2.sqlite3"
    cmd = [sys.executable, "-m", "django", "test", "--keepdb", "--noinput", f"--verbosity={verbosity}"]
    return [*cmd, "--settings=rustcache_settings"]


if __name__ == "__main__":
    sys.exit(main())
