"""What makes the ORM query cache strict: table generations, the write hook, transactions.

* Every table has a *generation* in the cache: a random 63-bit value, replaced by a fresh random
  value each time a write to the table is committed. A cached result carries the generations of
  every table its SQL reads, as read *before* the SQL ran; it is served only while they are all
  still current. A generation is never re-used, so an evicted one that is re-created cannot make
  old entries valid again, and a lost update cannot exist (two writers both replace the value).
* Writes are seen where all of them pass: an execute wrapper on every database connection. Any
  statement that is not a read (INSERT, UPDATE, DELETE, DDL, ...) marks the tables it names:
  in autocommit they get new generations as soon as the statement returns; inside ``atomic()``
  they are remembered and get them after the outermost commit, before ``on_commit`` callbacks
  run (nothing happens on rollback).
* Inside a transaction, a query that reads a table the transaction wrote (or any query, where
  the isolation level would let the transaction read an old snapshot) is cached under a key of
  that transaction's own, stamped with the savepoint stack and the transaction's write counts,
  so nobody else ever reads it and a rolled-back savepoint cannot be read back.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.db import connections

from django_rustcache.orm import config as _config
from django_rustcache.orm import stats as _stats

log = logging.getLogger("django_rustcache.orm")

_local = threading.local()

_WARN_EVERY = 10.0
_last_warning = [0.0]


def warn(message: str) -> None:
    """A cache that is down degrades to the database: say so, at most every few seconds."""
    now = time.monotonic()
    if now - _last_warning[0] >= _WARN_EVERY:
        _last_warning[0] = now
        log.warning(message)


def make_hash_key(text: str) -> str:
    """Cache Machine's key shape: md5 of ``CACHE_PREFIX:text`` (memcached-safe at any length)."""
    from django_rustcache.orm import config

    return hashlib.md5(f"{config.CACHE_PREFIX}:{text}".encode(), usedforsecurity=False).hexdigest()


_generation_keys: dict[tuple[str, str], str] = {}


def generation_key(table: str) -> str:
    from django_rustcache.orm import config

    prefix = config.CACHE_PREFIX
    key = _generation_keys.get((prefix, table))
    if key is None:
        if len(_generation_keys) > 65536:
            _generation_keys.clear()
        key = _generation_keys[(prefix, table)] = make_hash_key(f"gen:{table}")
    return key


def fresh_generation() -> int:
    return random.getrandbits(63) | 1


class busy:
    """While we talk to the cache, statements a database cache runs are not writes to track."""

    def __enter__(self) -> None:
        _local.busy = getattr(_local, "busy", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _local.busy -= 1


def _is_busy() -> bool:
    return getattr(_local, "busy", 0) > 0


# --- tables ---------------------------------------------------------------------------------

_known: frozenset[str] | None = None
_sql_tables: dict[str, frozenset[str]] = {}
_SQL_TABLES_MAX = 4096

_IDENT = re.compile(r'"([^"]+)"|`([^`]+)`|\[([^\]]+)\]|([A-Za-z_][\w$]*)')
_NAME = r'(?:"[^"]+"|`[^`]+`|\[[^\]]+\]|[\w$]+)'
_TARGET = re.compile(
    rf"\b(?:into|update|from|join|table|truncate|using)\s+(?:only\s+|if\s+(?:not\s+)?exists\s+)*({_NAME}(?:\s*\.\s*{_NAME})?)",
    re.IGNORECASE,
)
_LEAD = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*[\s(]*([A-Za-z]+)", re.DOTALL)
_WRITE_IN_WITH = re.compile(r"\b(?:insert|update|delete|merge)\b", re.IGNORECASE)
_READ_VERBS = frozenset(
    [
        "select",
        "values",
        "explain",
        "show",
        "describe",
        "desc",
        "pragma",
        "savepoint",
        "release",
        "rollback",
        "begin",
        "commit",
        "end",
        "start",
        "set",
        "reset",
        "declare",
        "fetch",
        "close",
        "move",
        "lock",
        "analyze",
        "listen",
        "unlisten",
        "notify",
        "checkpoint",
        "prepare",
        "deallocate",
    ]
)


def _cache_tables() -> set[str]:
    """Tables of database caches in CACHES: their own statements are never query-cache writes."""
    from django.conf import settings

    return {
        str(conf.get("LOCATION", "")).lower()
        for conf in getattr(settings, "CACHES", {}).values()
        if "DatabaseCache" in str(conf.get("BACKEND", ""))
    }


def known_tables() -> frozenset[str]:
    """Every model table (auto-created m2m tables included), lower-cased."""
    global _known
    if _known is None:
        from django.apps import apps

        if not apps.models_ready:
            return frozenset()
        names = {m._meta.db_table.lower() for m in apps.get_models(include_auto_created=True)}
        _known = frozenset(names - _cache_tables())
    return _known


def forget_tables(**kwargs: Any) -> None:
    global _known
    _known = None
    _sql_tables.clear()
    _same_database.clear()


def _unquote(name: str) -> str:
    last = re.split(r"\s*\.\s*", name)[-1]
    return last.strip('"`[]').lower()


def tables_in(sql: str) -> frozenset[str]:
    """The tables a statement names: model tables among its identifiers, plus the names after
    FROM/JOIN/INTO/UPDATE/TABLE (so raw SQL on a table no model declares is tracked too).
    Conservative: a column that shares a table's name only costs an extra invalidation."""
    found = _sql_tables.get(sql)
    if found is not None:
        return found
    known = known_tables()
    words = {next(filter(None, m.groups())).lower() for m in _IDENT.finditer(sql)}
    names = {_unquote(m.group(1)) for m in _TARGET.finditer(sql)}
    found = frozenset((words & known) | (names - _cache_tables()))
    if len(_sql_tables) >= _SQL_TABLES_MAX:
        _sql_tables.clear()
    _sql_tables[sql] = found
    return found


def is_write(sql: str) -> bool:
    match = _LEAD.match(sql)
    if match is None:
        return True
    verb = match.group(1).lower()
    if verb == "with":
        return _WRITE_IN_WITH.search(sql) is not None
    return verb not in _READ_VERBS


def model_tables(model: Any) -> frozenset[str]:
    """A model's table and its multi-table-inheritance parents' tables."""
    meta = model._meta.concrete_model._meta
    tables = {meta.db_table.lower()}
    tables.update(parent._meta.db_table.lower() for parent in meta.get_parent_list())
    return frozenset(tables)


# --- bumping generations --------------------------------------------------------------------

_pending: set[str] = set()
_pending_lock = threading.Lock()


def _shared_cache() -> Any:
    return _config.cache


def bump(tables: Iterable[str], cache: Any = None) -> bool:
    """Give ``tables`` new generations now. A cache that fails is logged, and the tables are
    kept to retry before this process serves anything from the cache again."""
    tables = set(tables)
    with _pending_lock:
        # Owed invalidations stay owed (so other threads keep bypassing the cache) until they
        # are delivered.
        tables |= _pending
    if not tables:
        return True
    cache = _shared_cache() if cache is None else cache
    values = {generation_key(t): fresh_generation() for t in tables}
    try:
        with busy():
            failed = cache.set_many(values, timeout=None)
            if _loses_sets(cache):
                failed = _confirm(cache, values)
    except Exception as exc:
        warn(f"ORM cache: could not invalidate {sorted(tables)} ({exc!r}); will retry")
        failed = list(values)
    lost: set[str] = set()
    if failed and isinstance(failed, (list, tuple, set)):
        failed_keys = set(failed)
        lost = {t for t in tables if generation_key(t) in failed_keys}
    _stats.count("invalidation", len(tables) - len(lost))
    if lost:
        _stats.count("invalidation.failed", len(lost))
    with _pending_lock:
        _pending.difference_update(tables - lost)
        _pending.update(lost)
    return not lost


def _loses_sets(cache: Any) -> bool:
    """Django's DatabaseCache drops a set() that races another (its select-then-insert fails and
    is swallowed), and reports nothing."""
    from django.core.cache.backends.db import DatabaseCache

    backend = cache.backend() if hasattr(type(cache), "backend") else cache
    return isinstance(backend, DatabaseCache)


def _confirm(cache: Any, values: dict[str, int], attempts: int = 8) -> list[str]:
    """Read the generations back, and set again any that did not stick (another writer's
    transaction won the row), until they do."""
    for attempt in range(attempts):
        stored = cache.get_many(list(values))
        lost = [k for k, v in values.items() if stored.get(k) != v]
        if not lost:
            return []
        time.sleep(0.001 * attempt)
        values = {k: fresh_generation() for k in lost}
        cache.set_many(values, timeout=None)
    return list(values)


def healthy(cache: Any) -> bool:
    """False while an invalidation this process owes has not reached the cache."""
    if not _pending:
        return True
    return bump((), cache=cache)


def bump_all(**kwargs: Any) -> None:
    """After migrations, everything is new."""
    bump(known_tables())


# --- transactions ---------------------------------------------------------------------------


class Txn:
    """What one database connection's current transaction wrote."""

    __slots__ = ("counts", "dirty", "token")

    def __init__(self) -> None:
        self.token = f"{random.getrandbits(64):016x}"
        self.dirty: set[str] = set()
        self.counts: dict[str, int] = {}


def current_txn(conn: Any, create: bool = False) -> Txn | None:
    if not conn.in_atomic_block:
        conn.__dict__.pop("_rustcache_txn", None)
        return None
    txn: Txn | None = conn.__dict__.get("_rustcache_txn")
    if txn is None and create:
        txn = conn.__dict__["_rustcache_txn"] = Txn()
    return txn


def _publishes_in_txn(conn: Any) -> bool:
    """Whether a read inside a transaction sees every commit made before the statement (READ
    COMMITTED), so its result may be shared. Otherwise (REPEATABLE READ, SERIALIZABLE, SQLite in
    WAL mode) the transaction may read an old snapshot, and its results stay private."""
    known: bool | None = conn.__dict__.get("_rustcache_publishes")
    if known is not None:
        return known
    vendor = conn.vendor
    level = str(getattr(conn, "isolation_level", "") or "").lower().replace("_", " ")
    if vendor == "postgresql":
        result = level in ("", "1") or "read committed" in level
    elif vendor == "mysql":
        result = "read committed" in level or "read uncommitted" in level
    elif vendor == "sqlite":
        try:
            # On the driver's own connection: not a query of the site's (no query log, no
            # assertNumQueries, no debug toolbar sees it).
            conn.ensure_connection()
            cursor = conn.connection.cursor()
            try:
                cursor.execute("PRAGMA journal_mode")
                result = str(cursor.fetchone()[0]).lower() != "wal"
            finally:
                cursor.close()
        except Exception:
            result = False
    else:
        result = vendor == "oracle"
    conn.__dict__["_rustcache_publishes"] = result
    return result


def private_scope(conn: Any, tables: frozenset[str]) -> tuple[str, tuple[Any, ...]] | None:
    """For a read on ``conn`` of ``tables``: None when its result may be shared, else the key
    suffix and the stamp that keep it inside the current transaction."""
    if not conn.in_atomic_block:
        return None
    txn = current_txn(conn)
    touched = txn is not None and not txn.dirty.isdisjoint(tables)
    if not touched and _publishes_in_txn(conn):
        return None
    txn = txn or current_txn(conn, create=True)
    assert txn is not None
    counts = tuple(txn.counts.get(t, 0) for t in sorted(tables))
    return f"::txn:{txn.token}", (txn.token, tuple(conn.savepoint_ids), counts)


def _suppressed(conn: Any, tables: frozenset[str]) -> bool:
    """Cache Machine compatibility: the INSERT of a new row a compat model's save() makes."""
    pending = getattr(_local, "new_rows", None)
    if not pending:
        return False
    hits = [t for t in tables if pending.get((conn.alias, t), 0) > 0]
    if not hits or len(hits) != len(tables):
        return False
    for t in hits:
        pending[(conn.alias, t)] -= 1
    return True


def expect_new_row(alias: str, tables: Iterable[str], on: bool) -> None:
    pending = _local.__dict__.setdefault("new_rows", {})
    for t in tables:
        if on:
            pending[(alias, t)] = pending.get((alias, t), 0) + 1
        else:
            pending.pop((alias, t), None)


def wrote(conn: Any, tables: Iterable[str]) -> None:
    """``tables`` were written on ``conn``: new generations now, or after the outermost commit."""
    tables = frozenset(tables) or known_tables()
    if conn.in_atomic_block:
        txn = current_txn(conn, create=True)
        assert txn is not None
        txn.dirty |= tables
        for t in tables:
            txn.counts[t] = txn.counts.get(t, 0) + 1
        return
    # Autocommit, or manual transaction management (set_autocommit(False)), where commit() has
    # no hook: both get their new generations after the statement.
    bump(tables)


_same_database: dict[str, bool] = {}


def _shares_cache_database(conn: Any) -> bool:
    """Whether ``conn`` is an SQLite database holding the table of the DatabaseCache we use."""
    same = _same_database.get(conn.alias)
    if same is None:
        same = False
        if conn.vendor == "sqlite":
            from django.core.cache.backends.db import DatabaseCache
            from django.db import router

            cache = _shared_cache()
            backend = cache.backend() if hasattr(type(cache), "backend") else cache
            if isinstance(backend, DatabaseCache):
                same = (router.db_for_write(backend.cache_model_class) or "default") == conn.alias
        _same_database[conn.alias] = same
    return same


_SCHEMA_VERBS = frozenset({"create", "alter", "drop"})


def _refuse_or_defer(conn: Any, sql: str, tables: frozenset[str]) -> bool:
    """On SQLite, a DatabaseCache in the database being written cannot be told of a write until
    the statement's results are read (an INSERT ... RETURNING holds it open). Schema changes and
    the migration log there are told later (before this process next uses the cache); a write
    to a model's table is refused, before it runs, with what to do instead."""
    match = _LEAD.match(sql)
    if (match and match.group(1).lower() in _SCHEMA_VERBS) or tables <= {"django_migrations"}:
        with _pending_lock:
            _pending.update(tables)
        return True
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "The ORM query cache on a DatabaseCache needs the cache table in its own database on SQLite: "
        f"route app label 'django_cache' to an alias other than {conn.alias!r} (DATABASE_ROUTERS)."
    )


def _execute(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    if _is_busy():
        return execute(sql, params, many, context)
    try:
        write = is_write(sql)
    except Exception:
        write = True
    if not write:
        return execute(sql, params, many, context)
    conn = context["connection"]
    try:
        tables = tables_in(sql) if isinstance(sql, str) else frozenset()
    except Exception:
        tables = frozenset()
    if isinstance(sql, str):
        lead = _LEAD.match(sql)
        _stats.count("write." + _stats.write_path(lead.group(1) if lead else None))
    if _shares_cache_database(conn) and _refuse_or_defer(conn, sql, tables):
        return execute(sql, params, many, context)
    try:
        return execute(sql, params, many, context)
    finally:
        # Also after a failed statement: it may have changed rows before it failed.
        if not _suppressed(conn, tables):
            wrote(conn, tables)


def instrument(connection: Any = None, **kwargs: Any) -> None:
    """Hook one connection: the execute wrapper, and commit/rollback bookkeeping."""
    conn = connection
    if conn is None or conn.__dict__.get("_rustcache_instrumented"):
        return
    conn.__dict__["_rustcache_instrumented"] = True
    conn.execute_wrappers.append(_execute)
    run_hooks, rollback, close = conn.run_and_clear_commit_hooks, conn.rollback, conn.close

    def run_and_clear_commit_hooks() -> None:
        # Called once the outermost atomic block has committed: publish before users' callbacks.
        txn = conn.__dict__.pop("_rustcache_txn", None)
        if txn is not None and txn.dirty:
            bump(txn.dirty)
        run_hooks()

    def rollback_() -> None:
        conn.__dict__.pop("_rustcache_txn", None)
        rollback()

    def close_() -> None:
        conn.__dict__.pop("_rustcache_txn", None)
        conn.__dict__.pop("_rustcache_publishes", None)
        close()

    conn.run_and_clear_commit_hooks = run_and_clear_commit_hooks
    conn.rollback = rollback_
    conn.close = close_


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Connect the signals once per process (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
    from django.core.signals import setting_changed
    from django.db.backends.signals import connection_created
    from django.db.models.signals import class_prepared, post_migrate

    from django_rustcache.orm import config

    connection_created.connect(instrument, dispatch_uid="django_rustcache.orm.instrument")
    class_prepared.connect(forget_tables, dispatch_uid="django_rustcache.orm.forget_tables")
    post_migrate.connect(bump_all, dispatch_uid="django_rustcache.orm.bump_all")
    setting_changed.connect(config.reset, dispatch_uid="django_rustcache.orm.config")
    setting_changed.connect(forget_tables, dispatch_uid="django_rustcache.orm.tables")
    for conn in connections.all(initialized_only=True):
        instrument(conn)
