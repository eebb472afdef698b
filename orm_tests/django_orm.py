"""Django's own ORM test apps with every model's queryset caching (the ORM query cache on).

    python orm_tests/django_orm.py                    # LRU cache, every evaluation made twice
    python orm_tests/django_orm.py --only redis       # one variant
    python orm_tests/django_orm.py --apps queries     # some apps only

Django's ``tests/`` comes from the sdist of the installed Django (fetched once, as for the cache
suite). Each variant runs Django's runtests.py over the apps below with
orm_tests/django_orm_settings.py, which makes every manager's queryset a caching one
(orm_tests/django_orm_hook.py). A test that fails is run again without the cache: only a test
that passes on plain Django and fails with the cache fails the run. Query-count assertions that
saw fewer queries (answers from the cache) are listed, with their tests, not failed: the test
goes on, so its data assertions still run.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer  # noqa: E402

# Django's ORM test apps: models, querysets, relations, expressions, transactions, pickling.
APPS = [
    "aggregation",
    "aggregation_regress",
    "annotations",
    "async",
    "basic",
    "bulk_create",
    "composite_pk",
    "custom_columns",
    "custom_lookups",
    "custom_managers",
    "custom_methods",
    "custom_pk",
    "dates",
    "datetimes",
    "db_functions",
    "defer",
    "defer_regress",
    "delete",
    "delete_regress",
    "distinct_on_fields",
    "expressions",
    "expressions_case",
    "expressions_window",
    "extra_regress",
    "field_defaults",
    "filtered_relation",
    "fixtures",
    "fixtures_regress",
    "foreign_object",
    "from_db_value",
    "generic_relations",
    "generic_relations_regress",
    "get_earliest_or_latest",
    "get_object_or_404",
    "get_or_create",
    "known_related_objects",
    "lookup",
    "m2m_and_m2o",
    "m2m_intermediary",
    "m2m_multiple",
    "m2m_recursive",
    "m2m_regress",
    "m2m_signals",
    "m2m_through",
    "m2m_through_regress",
    "m2o_recursive",
    "many_to_many",
    "many_to_one",
    "many_to_one_null",
    "model_fields",
    "model_inheritance",
    "model_inheritance_regress",
    "model_regress",
    "mutually_referential",
    "nested_foreign_keys",
    "null_fk",
    "null_fk_ordering",
    "null_queries",
    "one_to_one",
    "or_lookups",
    "order_with_respect_to",
    "ordering",
    "pagination",
    "prefetch_related",
    "proxy_model_inheritance",
    "proxy_models",
    "queries",
    "queryset_pickle",
    "raw_query",
    "reverse_lookup",
    "select_for_update",
    "select_related",
    "select_related_onetoone",
    "select_related_regress",
    "signals",
    "string_lookup",
    "transactions",
    "update",
    "update_only_fields",
]

VARIANTS = {
    # Every evaluation made twice: stored, then served from the cache.
    "lru-twice": {"RUSTCACHE_ORM_TWICE": "1"},
    # As a site runs: the first evaluation from the database, later ones from the cache.
    "lru": {},
    "redis-twice": {
        "RUSTCACHE_ORM_TWICE": "1",
        "RUSTCACHE_ORM_BACKEND": "django_rustcache.redis.RedisCache",
    },
}

_FAILED = re.compile(r"^(?:FAIL|ERROR): \S+ \(([\w.]+)\)", re.MULTILINE)
_RAN = re.compile(r"^Ran (\d+) tests?", re.MULTILINE)


def django_tests_dir() -> Path:
    import django

    spec = importlib.util.spec_from_file_location("rustcache_django_suite", ROOT / "django_tests" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.django_tests_dir(django.get_version())


def runtests(tests: Path, labels: list[str], env: dict[str, str], parallel: int) -> tuple[int, list[str], str]:
    """(tests run, failed test ids, output) of one runtests.py run."""
    cmd = [sys.executable, "runtests.py", "--settings=rustcache_orm_settings", f"--parallel={parallel}"]
    cmd += ["--noinput", "--verbosity=1", *labels]
    proc = subprocess.run(cmd, cwd=tests, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    ran = sum(int(n) for n in _RAN.findall(out))
    failed = sorted(set(_FAILED.findall(out)))
    if proc.returncode != 0 and not failed:
        print(out[-4000:])
        raise SystemExit(f"runtests.py exited {proc.returncode} without naming a failed test")
    return ran, failed, out


def run_variant(name: str, tests: Path, apps: list[str], parallel: int) -> bool:
    import django

    print(f"=== Django {django.get_version()} ORM test apps, every queryset cached: {name} ===", flush=True)
    env = {**os.environ, **VARIANTS[name], "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    server = None
    if "redis" in name:
        server = RedisServer()
        env["RUSTCACHE_ORM_LOCATION"] = server.location
        parallel = 1  # one cache, one database: test processes must not share a cache
    with tempfile.TemporaryDirectory(prefix="rustcache-orm-suite-") as tmp:
        env["RUSTCACHE_ORM_REPORT"] = report = os.path.join(tmp, "counts.jsonl")
        try:
            ran, failed, out = runtests(tests, apps, env, parallel)
            plain_failed: list[str] = []
            if failed:
                # The same tests without the cache: which of them fail on plain Django too?
                _, plain_failed, _ = runtests(tests, failed, {**env, "RUSTCACHE_ORM_HOOK": "0"}, 1)
        finally:
            if server is not None:
                server.close()
        counts = []
        if os.path.exists(report):
            with open(report) as f:
                counts = [json.loads(line) for line in f]
    ours = [t for t in failed if t not in plain_failed]
    print(f"{ran} tests; {len(failed)} failed, of which {len(plain_failed)} fail on plain Django too")
    by_test = collections.defaultdict(list)
    for c in counts:
        by_test[c["test"]].append((c["expected"], len(c["answered"])))
    print(
        f"assertNumQueries blocks where the cache answered a query Django runs (logged as run, "
        f"so the count and the SQL checks see Django's; the test went on): {len(by_test)} tests"
    )
    for test, seen in sorted(by_test.items()):
        print(f"  {test}: " + ", ".join(f"{s} of {e} queries" for e, s in seen))
    if ours:
        print("FAILED with the cache only:")
        for test in ours:
            print(f"  {test}")
        blocks = re.split(r"\n={70}\n", out)
        for block in blocks:
            if any(f"({t})" in block.split("\n", 1)[0] for t in ours):
                print("=" * 70)
                print(block[:3000])
    return not ours


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--apps", nargs="*", help="apps (or test labels) to run instead of the whole list")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    tests = django_tests_dir()
    shutil.copy(HERE / "django_orm_hook.py", tests / "rustcache_orm_hook.py")
    shutil.copy(HERE / "django_orm_settings.py", tests / "rustcache_orm_settings.py")
    results = {name: run_variant(name, tests, args.apps or APPS, args.parallel) for name in args.only or ["lru-twice"]}
    bad = [name for name, ok in results.items() if not ok]
    print(f"=== failed: {', '.join(bad)} ===" if bad else "=== Django's ORM test apps pass with the cache on ===")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
