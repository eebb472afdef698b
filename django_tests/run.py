"""Run Django's own cache test suite (tests/cache/tests.py) against our backends.

Django's test tree is not copied into this repository: this script downloads the source
distribution of the Django version that is installed (with pip), unpacks its ``tests/``
directory under ``.django-src/`` (ignored by git), drops ``rustcache_suite.py`` into its
``cache`` test app, and runs it with Django's own ``tests/runtests.py``.

    python django_tests/run.py                          # every backend and variant
    python django_tests/run.py --only lru-pickled       # one of them

memcached runs come with their own memcached processes (a TCP port and a unix socket), started
here and stopped by PID.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUITE = HERE / "rustcache_suite.py"
sys.path.insert(0, str(ROOT))

from tests.servers import (  # noqa: E402
    Certificates,
    MemcachedServer,
    RedisCluster,
    RedisServer,
    SentinelGroup,
    TlsRedisServer,
)

# name -> environment for rustcache_suite.py; "{memcached}" is filled with a live server's LOCATION.
VARIANTS = {
    "lru-object": {"RUSTCACHE_SUITE": "lru", "RUSTCACHE_MODE": "object"},
    "lru-pickled": {"RUSTCACHE_SUITE": "lru", "RUSTCACHE_MODE": "pickled"},
    "memcached-tcp": {"RUSTCACHE_SUITE": "memcached", "RUSTCACHE_MEMCACHED": "tcp"},
    "memcached-unix": {"RUSTCACHE_SUITE": "memcached", "RUSTCACHE_MEMCACHED": "unix"},
    "redis-tcp": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "tcp"},
    "redis-unix": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "unix"},
    "redis-auth": {
        "RUSTCACHE_SUITE": "redis",
        "RUSTCACHE_REDIS": "auth",
        "RUSTCACHE_REDIS_OPTIONS": '{"PASSWORD": "suite-secret", "DB": 3}',
    },
    "redis-compressed": {
        "RUSTCACHE_SUITE": "redis",
        "RUSTCACHE_REDIS": "tcp",
        "RUSTCACHE_REDIS_OPTIONS": '{"COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor"}',
    },
    # Signed values (OPTIONS["SIGN"]): every value but digits carries a tag, checked on read.
    "redis-signed": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "tcp", "RUSTCACHE_REDIS_OPTIONS": '{"SIGN": true}'},
    "memcached-signed": {
        "RUSTCACHE_SUITE": "memcached",
        "RUSTCACHE_MEMCACHED": "tcp",
        "RUSTCACHE_MEMCACHED_OPTIONS": '{"SIGN": true}',
    },
    "redis-sharded": {
        "RUSTCACHE_SUITE": "redis",
        "RUSTCACHE_REDIS": "shards",
        "RUSTCACHE_REDIS_OPTIONS": '{"CLIENT_CLASS": "django_redis.client.ShardClient"}',
    },
    # Mutual TLS with the certificate's chain and name checked; the options are filled in with
    # the certificates the run makes.
    "redis-tls": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "tls"},
    # A master, two replicas and three sentinels, configured as django-redis's Sentinel factory
    # is (the service as LOCATION's host; reads on the master, as Django's suite needs).
    "redis-sentinel": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "sentinel"},
    "redis-sentinel-async": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "sentinel", "RUSTCACHE_VIA_ASYNC": "1"},
    # A Redis Cluster of 3 primaries with a replica each (LOCATION: seed nodes).
    "redis-cluster": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "cluster"},
    "redis-cluster-async": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "cluster", "RUSTCACHE_VIA_ASYNC": "1"},
    # Django's suite on the native async methods: every sync call made by its async twin.
    "redis-async": {"RUSTCACHE_SUITE": "redis", "RUSTCACHE_REDIS": "tcp", "RUSTCACHE_VIA_ASYNC": "1"},
    "redis-sharded-async": {
        "RUSTCACHE_SUITE": "redis",
        "RUSTCACHE_REDIS": "shards",
        "RUSTCACHE_REDIS_OPTIONS": '{"CLIENT_CLASS": "django_redis.client.ShardClient"}',
        "RUSTCACHE_VIA_ASYNC": "1",
    },
    # The near cache on (a process-local copy the server keeps coherent), sync and async.
    "redis-near": {
        "RUSTCACHE_SUITE": "redis",
        "RUSTCACHE_REDIS": "tcp",
        "RUSTCACHE_REDIS_OPTIONS": '{"NEAR_CACHE": {"MAX_ENTRIES": 10000, "MAX_BYTES": 16777216}}',
    },
    "redis-near-async": {
        "RUSTCACHE_SUITE": "redis",
        "RUSTCACHE_REDIS": "tcp",
        "RUSTCACHE_REDIS_OPTIONS": '{"NEAR_CACHE": {"MAX_ENTRIES": 10000, "MAX_BYTES": 16777216}}',
        "RUSTCACHE_VIA_ASYNC": "1",
    },
    "memcached-async": {"RUSTCACHE_SUITE": "memcached", "RUSTCACHE_MEMCACHED": "tcp", "RUSTCACHE_VIA_ASYNC": "1"},
    "memcached-binary-async": {
        "RUSTCACHE_SUITE": "memcached",
        "RUSTCACHE_MEMCACHED": "tcp",
        "RUSTCACHE_MEMCACHED_OPTIONS": '{"binary": true}',
        "RUSTCACHE_VIA_ASYNC": "1",
    },
    "memcached-binary": {
        "RUSTCACHE_SUITE": "memcached",
        "RUSTCACHE_MEMCACHED": "tcp",
        "RUSTCACHE_MEMCACHED_OPTIONS": '{"binary": true}',
    },
    "memcached-sasl": {
        "RUSTCACHE_SUITE": "memcached",
        "RUSTCACHE_MEMCACHED": "sasl",
        "RUSTCACHE_MEMCACHED_OPTIONS": '{"username": "django", "password": "suite-secret"}',
    },
}


def django_tests_dir(version: str) -> Path:
    """The ``tests/`` directory of Django ``version``'s sdist, fetched once."""
    dest = Path(os.environ.get("RUSTCACHE_DJANGO_SRC", ROOT / ".django-src")) / version
    tests = dest / "tests"
    if (tests / "runtests.py").exists():
        return tests
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                tmp,
                f"django=={version}",
            ],
            check=True,
        )
        sdist = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(sdist) as tar:
            top = tar.getmembers()[0].name.split("/")[0]
            members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
            tar.extractall(tmp, members=members, filter="data")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tests, ignore_errors=True)
        shutil.move(str(Path(tmp) / top / "tests"), tests)
    return tests


def run_variant(name: str, tests: Path, verbosity: str) -> tuple[bool, str]:
    """Start one variant's servers, run Django's cache suite against it, stop them: (passed,
    the run's output)."""
    import django

    head = f"=== Django {django.get_version()} cache suite: {name} ===\n"
    env = {**os.environ, **VARIANTS[name], "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    server = None
    extra: list = []
    try:
        if env.get("RUSTCACHE_MEMCACHED"):
            kind = env["RUSTCACHE_MEMCACHED"]
            sasl = ("django", "suite-secret") if kind == "sasl" else None
            server = MemcachedServer(unix=kind == "unix", sasl=sasl)
            env["RUSTCACHE_MEMCACHED_LOCATION"] = server.location
        if env.get("RUSTCACHE_REDIS") == "tls":
            certs = Certificates()
            extra.append(certs)
            server = TlsRedisServer(certs, auth_clients="yes")
            env["RUSTCACHE_REDIS_LOCATION"] = server.location
            env["RUSTCACHE_REDIS_OPTIONS"] = json.dumps(
                {"ssl_ca_certs": certs.ca, "ssl_certfile": certs.client, "ssl_keyfile": certs.client_key}
            )
        elif env.get("RUSTCACHE_REDIS") == "sentinel":
            server = SentinelGroup()
            env["RUSTCACHE_REDIS_LOCATION"] = f"redis://{server.service}/0"
            env["RUSTCACHE_REDIS_OPTIONS"] = json.dumps({"SENTINELS": server.addresses})
        elif env.get("RUSTCACHE_REDIS") == "cluster":
            server = RedisCluster()
            env["RUSTCACHE_REDIS_LOCATION"] = server.location
            env["RUSTCACHE_REDIS_OPTIONS"] = json.dumps({"CLUSTER": True})
        elif env.get("RUSTCACHE_REDIS") == "shards":
            server, *extra = [RedisServer() for _ in range(3)]
            env["RUSTCACHE_REDIS_LOCATION"] = ",".join(s.location for s in (server, *extra))
        elif env.get("RUSTCACHE_REDIS"):
            kind = env["RUSTCACHE_REDIS"]
            server = RedisServer(unix=kind == "unix", password="suite-secret" if kind == "auth" else None)
            # The password travels in OPTIONS, not in the URL.
            env["RUSTCACHE_REDIS_LOCATION"] = server.location.replace(":suite-secret@", "")
        proc = subprocess.run(
            [
                sys.executable,
                "runtests.py",
                "cache.test_rustcache",
                "--settings=test_sqlite",
                "--parallel=1",
                f"--verbosity={verbosity}",
                "--noinput",
            ],
            cwd=tests,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except Exception as exc:  # a server that did not start: this variant fails, the others run
        return False, f"{head}could not run: {exc!r}\n"
    finally:
        for each in (server, *extra):
            if each:
                each.close()
    return proc.returncode == 0, head + proc.stdout


def main() -> int:
    import django

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(VARIANTS), action="append")
    parser.add_argument("-v", "--verbosity", default="2")
    parser.add_argument("-j", "--jobs", type=int, default=12, help="variants run at once (default 12)")
    args = parser.parse_args()

    tests = django_tests_dir(django.get_version())
    shutil.copy(SUITE, tests / "cache" / "test_rustcache.py")
    names = args.only or list(VARIANTS)
    # Each variant is a runtests.py process with servers of its own; most of its time is the
    # suite's sleeps (13 s of a variant's 14), so twelve at once on two CPUs still take 14 s each:
    # the 24 variants in 40 s (4 at once: 93 s, 8: 53 s). Output is kept per variant and printed
    # whole, in order, as each one ends.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = [pool.submit(run_variant, name, tests, args.verbosity) for name in names]
        failed = []
        for name, run in zip(names, runs, strict=True):
            ok, out = run.result()
            sys.stdout.write(out)
            sys.stdout.flush()
            if not ok:
                failed.append(name)
    print(f"=== failed: {', '.join(failed)} ===" if failed else "=== every variant passed ===")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
