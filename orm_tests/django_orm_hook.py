"""Every model's queryset caching, inside Django's own test suite (see orm_tests/django_orm.py).

Loaded by the settings module the suite runs with. Every manager's ``get_queryset()`` returns
a caching twin of its own queryset class (custom querysets included: ``CachingQuerySet`` is
mixed in front of it), so each model query of each test reads its rows through the ORM cache.

With ``RUSTCACHE_ORM_TWICE=1`` every evaluation is made twice: first its rows are read from the
database and stored (no object is built, no signal sent), then the evaluation Django asked for
runs and is served from the cache wherever the cache may serve it.

Queries the cache answered: an evaluation served from the cache (where Django would have run
its SQL) is logged in the connection's query log as that SQL, marked ``rustcache``, so a test's
``assertNumQueries`` and captured SQL see what Django runs, and the data assertions after them
still run. Each ``assertNumQueries`` block that contained such answers is written to
``RUSTCACHE_ORM_REPORT`` (one JSON line: test, expected count, the SQL answered), and the
runner lists them. Every other failure stays a failure.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any

_classes: dict[type, type] = {}


def caching_class(cls: type) -> type:
    """``cls`` with CachingQuerySet in front: a manager's own queryset, cached."""
    from django_rustcache.orm import base

    if issubclass(cls, base.CachingQuerySet):
        return cls
    made = _classes.get(cls)
    if made is None:
        # Its own name (messages show it), a unique qualified name for pickle to find it by.
        qualname = f"Caching_{len(_classes)}_{cls.__name__}"
        made = type(cls.__name__, (base.CachingQuerySet, cls), {"__module__": __name__, "__qualname__": qualname})
        globals()[qualname] = made
        _classes[cls] = made
    return made


def _prime(iterable: Any) -> bool:
    """Read a caching iterable's rows from the database into the cache, building nothing:
    whether its SQL ran."""
    from django_rustcache.orm import _cache, base, config

    queryset = iterable.queryset
    if iterable.timeout == config.NO_CACHE or queryset.query.select_for_update:
        return False
    read = _cache._Read(iterable.timeout, base.cache)
    if iterable._by_structure(read) is not None:
        return False  # already stored
    compiler = _cache._reading(queryset.query.get_compiler(using=queryset.db), read)
    results = compiler.execute_sql(chunked_fetch=iterable.chunked_fetch, chunk_size=iterable.chunk_size)
    for _ in compiler.results_iter(results):
        pass
    return not read.hit


def _log_hit(iterable: Any) -> None:
    """An evaluation the cache answered, logged as the query Django would have run (marked as
    answered by the cache) where queries are being captured: query counts and captured SQL
    stay Django's, the runner lists the tests where it happened."""
    from django.db import connections

    read = getattr(iterable, "read", None)
    queryset = iterable.queryset
    conn = connections[queryset.db]
    if read is None or not read.hit or not conn.queries_logged:
        return
    sql, params = queryset.query.chain().get_compiler(using=queryset.db).as_sql()
    conn.queries_log.append({"sql": sql % tuple(params), "time": "0.000", "rustcache": True})


def install() -> None:
    from django.core.cache.backends.base import DEFAULT_TIMEOUT
    from django.db.models import manager
    from django.db.models.query import ModelIterable
    from django.test import testcases
    from django.test.utils import CaptureQueriesContext

    from django_rustcache.orm import base

    real_get_queryset = manager.BaseManager.get_queryset

    def get_queryset(self: Any) -> Any:
        qs = real_get_queryset(self)
        if not isinstance(qs, base.CachingQuerySet):
            qs.__class__ = caching_class(type(qs))
            qs.timeout = DEFAULT_TIMEOUT
            if qs._iterable_class is ModelIterable:
                qs._iterable_class = base.CachingModelIterable
        return qs

    manager.BaseManager.get_queryset = get_queryset

    real_iter = base.CachingModelIterable.__iter__
    twice = os.environ.get("RUSTCACHE_ORM_TWICE") == "1"

    def iterate(self: Any) -> Any:
        # Twice: the query runs (stored), then its evaluation is answered by the cache, as one
        # query; answered by the cache without running at all, it is logged as if it ran.
        ran = _prime(self) if twice else False
        yield from real_iter(self)
        if not ran:
            _log_hit(self)

    base.CachingModelIterable.__iter__ = iterate

    # Each test starts with an empty cache, as it starts with its own data: what one test
    # stored never answers another's queries.
    real_setup_and_call = testcases.SimpleTestCase._setup_and_call

    def setup_and_call(self: Any, result: Any, debug: bool = False) -> Any:
        from django.core.cache import caches

        caches["default"].clear()
        return real_setup_and_call(self, result, debug)

    testcases.SimpleTestCase._setup_and_call = setup_and_call

    report = os.environ.get("RUSTCACHE_ORM_REPORT")

    @contextmanager
    def assert_num_queries(self: Any, num: int, func: Any = None, *args: Any, using: str = "default", **kwargs: Any):
        from django.db import connections

        conn = connections[using]
        with CaptureQueriesContext(conn) as context:
            yield context
        seen = len(context)
        answered = [q["sql"] for q in context.captured_queries if q.get("rustcache")]
        if answered and report:
            with open(report, "a") as out:
                out.write(json.dumps({"test": self.id(), "expected": num, "answered": answered}) + "\n")
        if seen == num:
            return
        queries = "\n".join(f"{i}. {q['sql']}" for i, q in enumerate(context.captured_queries, start=1))
        raise self.failureException(f"{seen} != {num} : {seen} queries executed, {num} expected\n{queries}")

    def assertNumQueries(self: Any, num: int, func: Any = None, *args: Any, using: str = "default", **kwargs: Any):
        context = assert_num_queries(self, num, using=using)
        if func is None:
            return context
        with context:
            func(*args, **kwargs)
        return None

    testcases.TransactionTestCase.assertNumQueries = assertNumQueries
