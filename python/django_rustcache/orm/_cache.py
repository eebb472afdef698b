"""One read through the cache: the generations read with the result in one ``get_many``
before the SQL runs, the rows this process holds, the store after the SQL, and the compiler
patched to read through the cache. A read uses the cache ``base`` hands it (Cache Machine's
tests patch ``caching.base.cache``)."""

from __future__ import annotations

import collections
import datetime
import decimal
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from itertools import chain
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models.sql.constants import GET_ITERATOR_CHUNK_SIZE, MULTI
from django.db.models.sql.query import RawQuery

from django_rustcache.orm import _engine, _stored, config
from django_rustcache.orm import stats as _stats
from django_rustcache.orm._identity import _convert, _split, _sql_key_text, _volatile
from django_rustcache.orm._stored import _MAGIC, _dump, _is_entry, _raw_shape, _storable, _StoredCursor
from django_rustcache.orm.invalidation import make_key

# A row as the database driver gives it, and the generation stamp an entry was stored under.
Row = tuple[Any, ...]
Stamp = tuple[Any, ...]


class _Unusable(Exception):
    """The cache cannot be trusted for this call: run the query without it."""


# --- reading generations ----------------------------------------------------------------------


class _Memo:
    """Rows this process read or stored lately, by key, with the stamp they are current for:
    while the tables' generations still say that stamp, they are the stored rows, so a hit
    reads the generations only (not the entry: no transfer, no unpickling). Only rows of
    values nobody can change in place are kept (numbers, strings, dates...): every caller is
    handed the same ones. Bounded by rows; the least recently used go first."""

    MAX_ROWS = 100_000
    _IMMUTABLE = frozenset(
        {int, float, str, bytes, bool, type(None), decimal.Decimal, uuid.UUID}
        | {datetime.datetime, datetime.date, datetime.time, datetime.timedelta}
    )

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[str, tuple[Stamp, list[Row], float | None]] = collections.OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[Stamp, list[Row]] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[2] is not None and entry[2] < time.monotonic():
            self.forget(key)
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        return entry[0], entry[1]

    def remember(self, key: str | None, stamp: Stamp, rows: list[Row], timeout: Any) -> None:
        if key is None or len(rows) > self.MAX_ROWS // 10 or config.CACHE_MACHINE_COMPAT:
            return
        immutable = self._IMMUTABLE
        if not all(type(v) in immutable for row in rows for v in row):
            return
        life = _seconds(timeout)
        expires = None if life is None else time.monotonic() + life
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._rows -= len(old[1])
            self._entries[key] = (stamp, rows, expires)
            self._rows += len(rows)
            while self._rows > self.MAX_ROWS and self._entries:
                _, (_, dropped, _) = self._entries.popitem(last=False)
                self._rows -= len(dropped)

    def forget(self, key: str) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._rows -= len(old[1])

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._rows = 0


_memo = _Memo()


def _seconds(timeout: Any) -> float | None:
    from django_rustcache.orm.invalidation import seconds

    return seconds(timeout)


class _Remembered:
    """What ``_stamp`` returns for a key whose rows this process holds: the rows, when their
    stamp is current; else they are stale (and so, almost surely, is the stored entry)."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Row] | None) -> None:
        self.rows = rows


def _stamp(cache: Any, db: str, tables: frozenset[str], key_text: str | None) -> tuple[str | None, Stamp, Any]:
    """One ``get_many`` of the tables' generations (and the result key, when given and its rows
    are not held here): (key, stamp, stored entry or _Remembered). Missing generations are
    created with fresh values before returning, which is before the caller runs its SQL."""
    scope = _engine.private_scope(connections[db], tables)
    key = None
    if key_text is not None:
        key = make_key(key_text + (scope[0] if scope else ""), with_locale=False)
    if not _engine.healthy(cache):
        raise _Unusable
    order = sorted(tables)
    gen_keys = [_engine.generation_key(t) for t in order]
    # Cache Machine's compatibility mode also invalidates by deleting entries (its flush
    # lists), which only a read of the entry sees: nothing is held here then.
    held = _memo.get(key) if key is not None and not config.CACHE_MACHINE_COMPAT else None
    with _engine.busy():
        got = cache.get_many(gen_keys + ([key] if key and held is None else []))
        gens = [got.get(k) for k in gen_keys]
        missing = {k: _engine.fresh_generation() for k, g in zip(gen_keys, gens, strict=True) if g is None}
        if missing:
            failed = cache.set_many(missing, timeout=None)
            # Django's contract is a list of failed keys; some third-party backends return None.
            if failed and isinstance(failed, (list, tuple, set)):
                raise _Unusable
            gens = [missing.get(k, g) for k, g in zip(gen_keys, gens, strict=True)]
    stamp = tuple(gens) + (scope[1] if scope else ())
    if held is not None:
        return key, stamp, _Remembered(held[1] if held[0] == stamp else None)
    return key, stamp, (got.get(key) if key else None)


def _safely(what: str, f: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return f(*args, **kwargs)
    except _Unusable:
        raise
    except Exception as exc:
        _engine.warn(f"ORM cache: {what} failed, using the database ({exc!r})")
        raise _Unusable from exc


# --- one read through the cache ---------------------------------------------------------------


class _Read:
    """One evaluation of a caching queryset: its timeout, and what happened (the database and
    tables read, the key, a hit, whether the rows were stored)."""

    __slots__ = ("cache", "db", "found", "hit", "key", "preset", "stored", "tables", "timeout")

    def __init__(self, timeout: Any, cache: Any) -> None:
        self.timeout = timeout
        # The cache to use: ``base.cache`` as it stands when the read starts.
        self.cache = cache
        self.hit = False
        self.stored = False
        self.key: str | None = None
        self.db: str | None = None
        self.tables: frozenset[str] = frozenset()
        # What the lookup found: (stamp, rows | _PRESENT | None), or None (cache not used).
        self.found: tuple[Stamp, Any] | None = None
        # Whether ``found`` was looked up before compiling (by the query's structure).
        self.preset = False


def _lookup(
    read: _Read, db: str, key_text: str, tables: frozenset[str], width: int | None = None
) -> tuple[Stamp, Any] | None:
    """(stamp, stored rows, or _PRESENT when something unusable is stored, or None) for a read
    about to run its SQL; None when the cache cannot be used (it is down, or owes an
    invalidation). Stored rows must be tuples of ``width`` values, when it is given."""
    read.db, read.tables = db, tables
    try:
        key, stamp, entry = _safely("a read", _stamp, read.cache, db, tables, key_text)
    except _Unusable:
        return None
    read.key = key
    if type(entry) is _Remembered:
        if entry.rows is not None and (width is None or not entry.rows or len(entry.rows[0]) == width):
            return stamp, entry.rows
        # Stale here, so most likely stale there: read the database, replace the entry.
        _memo.forget(key)
        return stamp, _PRESENT
    if _is_entry(entry, stamp):
        try:
            rows = _stored._load(entry[2])
            if width is not None and not all(type(r) is tuple and len(r) == width for r in rows):
                raise ValueError(f"rows are not tuples of {width} values")
            # Held here from now on (checked for their shape by their first use, as here).
            _memo.remember(key, stamp, rows, read.timeout)
            return stamp, rows
        except Exception as exc:  # a payload this version cannot read, a damaged value
            _engine.warn(f"ORM cache: a stored result could not be read, using the database ({exc!r})")
    return stamp, (_PRESENT if entry is not None else None)


class _Present:
    """Something (stale, or unreadable) is stored under the key: replace it, do not add."""


_PRESENT = _Present()


def _store(read: _Read, stamp: Stamp, payload: tuple[bytes, ...], present: bool, rows: list[Row] | None = None) -> None:
    """Store rows read by ``read`` under its key, with the generations read before its SQL
    (and hold them here, when given)."""
    value = (_MAGIC, stamp, payload)
    try:
        with _engine.busy():
            if present:
                # A stale entry is in the way (old entries are left to their generations).
                read.cache.set(read.key, value, timeout=read.timeout)
            else:
                read.cache.add(read.key, value, timeout=read.timeout)
    except Exception as exc:
        _engine.warn(f"ORM cache: storing a result failed ({exc!r})")
        _stats.count("store.failed")
        return
    _stats.count("store")
    read.stored = True
    if rows is not None:
        _memo.remember(read.key, stamp, rows, read.timeout)


def _streamed(read: _Read, stamp: Stamp, chunks: Iterator[list[Any]], present: bool) -> Iterator[list[Any]]:
    """Chunks of a chunked fetch (``iterator()``) passed on as they come, each pickled before
    the caller sees it (so a caller changing a value changes nothing stored); stored once the
    last has been read, unless there were more than ``MAX_ROWS`` (then none is held)."""
    held: list[bytes] | None = []
    count = 0
    for chunk in chunks:
        if held is not None:
            count += len(chunk)
            try:
                if count > config.MAX_ROWS:
                    raise OverflowError
                held.append(_dump(chunk))
            except OverflowError:
                held = None
            except Exception as exc:
                _engine.warn(f"ORM cache: a result was not cached, it holds a value pickle cannot store ({exc!r})")
                held = None
        yield chunk
    if held is not None and (count or config.CACHE_EMPTY_QUERYSETS):
        _store(read, stamp, tuple(held) or (_dump([]),), present)


def _execute(
    compiler: Any, read: _Read, result_type: Any = MULTI, chunked_fetch: bool = False, chunk_size: int = 0
) -> Any:
    """The caching twin of ``SQLCompiler.execute_sql`` for the query a caching iterable runs:
    a hit returns no rows here, its converted rows come from ``results_iter`` (``_results``)."""
    run = type(compiler).execute_sql
    chunk_size = chunk_size or GET_ITERATOR_CHUNK_SIZE
    conn = compiler.connection
    preset, read.preset = read.preset, False
    if not preset:
        read.found = None
    # A broken transaction raises on every query in Django: so it does here (no answer from
    # the cache). select_for_update(): a cached answer would skip taking the row locks.
    if result_type != MULTI or conn.needs_rollback or compiler.query.select_for_update:
        return run(compiler, result_type, chunked_fetch, chunk_size)
    try:
        sql, params = compiler.as_sql()
        if not sql:
            raise EmptyResultSet
    except EmptyResultSet:
        return iter([])
    if preset:
        found = read.found  # looked up by the query's structure, before compiling
    else:
        key_text = _sql_key_text(compiler, sql, params)
        # A parameter without a value's repr (an object's identity) is never shared; a random
        # order or the clock gives another answer each time.
        if " at 0x" in key_text or _volatile(sql):
            return run(compiler, result_type, chunked_fetch, chunk_size)
        model = compiler.query.model
        tables = _engine.tables_in(sql) | (_engine.model_tables(model) if model is not None else frozenset())
        read.found = found = _lookup(read, conn.alias, key_text, tables, compiler.col_count)
    if found is not None and type(found[1]) is list:
        read.hit = True
        _stats.read("hit", sql, params, conn.alias, compiler.query.model)
        return []
    _stats.read("miss" if found is not None else "bypass", sql, params, conn.alias, compiler.query.model)
    # Run the SQL already compiled, as Django would.
    compiler.as_sql = lambda *args, **kwargs: (sql, params)
    try:
        return run(compiler, result_type, chunked_fetch, chunk_size)
    finally:
        del compiler.as_sql


def _results(
    compiler: Any,
    read: _Read,
    results: Any = None,
    tuple_expected: bool = False,
    chunked_fetch: bool = False,
    chunk_size: int = GET_ITERATOR_CHUNK_SIZE,
) -> Iterator[Any]:
    """The caching twin of ``SQLCompiler.results_iter``: the stored rows on a hit; else the
    database's, stored once Django's own conversions are applied (as tuples: what every
    iterable reads them as); a custom field's conversion is applied after, on every read."""
    if results is None:
        results = compiler.execute_sql(MULTI, chunked_fetch=chunked_fetch, chunk_size=chunk_size)
    found = read.found
    fields = [s[0] for s in compiler.select[0 : compiler.col_count]]
    early, late = _split(compiler.get_converters(fields))
    connection = compiler.connection
    if read.hit and found is not None:
        return iter(_convert(found[1], late, connection) if late else found[1])
    composite = getattr(compiler, "has_composite_fields", None)
    if found is None or (late and composite is not None and composite(fields)):
        uncached: Iterator[Any] = type(compiler).results_iter(compiler, results, tuple_expected)
        return uncached

    def stored(chunk: Any) -> list[Row]:
        rows = _convert(chunk, early, connection) if early else chunk
        if composite is not None and composite(fields):
            rows = compiler.composite_fields_to_tuples(rows, fields)
        return list(map(tuple, rows))

    def read_back(rows: list[Row]) -> list[Row]:
        return _convert(rows, late, connection) if late else rows

    stamp, present = found[0], found[1] is not None
    if isinstance(results, list):  # every row already read (not a chunked fetch)
        rows = stored(chain.from_iterable(results))
        payload = _storable(rows, len(rows))
        if payload is not None:
            _store(read, stamp, payload, present, rows)
        return iter(read_back(rows))
    chunks = (stored(chunk) for chunk in results)
    return chain.from_iterable(map(read_back, _streamed(read, stamp, chunks, present)))


def _armed(query: Any, read: _Read) -> Any:
    """A one-shot ``get_compiler`` for ``query``: the compiler Django's iterable asks for first
    (the one that runs the query) reads through the cache; the attribute is gone once used."""

    def get_compiler(using: Any = None, connection: Any = None, elide_empty: bool = True) -> Any:
        query.__dict__.pop("get_compiler", None)
        return _reading(type(query).get_compiler(query, using, connection, elide_empty), read)

    return get_compiler


class _Bound:
    """A compiler's method replaced for one read: holds the compiler weakly, so the compiler
    and its method do not keep each other (and an open cursor) alive."""

    __slots__ = ("compiler", "function", "read")

    def __init__(self, function: Any, compiler: Any, read: _Read) -> None:
        self.function = function
        self.compiler = weakref.ref(compiler)
        self.read = read

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(self.compiler(), self.read, *args, **kwargs)


def _reading(compiler: Any, read: _Read) -> Any:
    """``compiler``, its rows read through the cache (a SELECT's compiler only)."""
    if compiler.query.compiler == "SQLCompiler":
        compiler.execute_sql = _Bound(_execute, compiler, read)
        compiler.results_iter = _Bound(_results, compiler, read)
    return compiler


def _checked(read: _Read, found: tuple[Stamp, Any], width: int) -> None:
    """Stored rows Django's iterable will read (it slices them): tuples of ``width`` values, or
    they are treated as an unusable entry (the query runs, its rows replace them)."""
    rows = found[1]
    if all(type(r) is tuple and len(r) == width for r in rows):
        read.hit = True
    else:
        _engine.warn("ORM cache: a stored result could not be read, using the database (rows of another shape)")
        read.found = (found[0], _PRESENT)


def _raw_execute(query: Any, read: _Read, model: Any) -> None:
    """The caching twin of ``RawQuery._execute_query``."""
    conn = connections[query.using]
    if conn.needs_rollback:
        RawQuery._execute_query(query)  # type: ignore[attr-defined]  # Django's; django-stubs omits it
        return None
    params = query.params
    params = tuple(params) if isinstance(params, (list, tuple)) else params
    key_text = repr(("raw", conn.alias, query.sql, params, getattr(conn, "timezone_name", None)))
    tables = _engine.tables_in(query.sql) | _engine.model_tables(model)
    looked = not (" at 0x" in key_text or _volatile(query.sql))
    found = _lookup(read, conn.alias, key_text, tables) if looked else None
    if found is not None and type(found[1]) is list:
        if _raw_shape(found[1]):
            description, stored = found[1]
            read.hit = True
            _stats.read("hit", query.sql, params, conn.alias, model)
            query.cursor = _StoredCursor(description, stored)
            return None
        _engine.warn("ORM cache: a stored result could not be read, using the database (not a raw result)")
        found = (found[0], _PRESENT)
    if looked:
        _stats.read("miss" if found is not None else "bypass", query.sql, params, conn.alias, model)
    RawQuery._execute_query(query)  # type: ignore[attr-defined]  # Django's; django-stubs omits it
    if found is None:
        return None
    cursor = query.cursor
    description = [tuple(column)[:7] for column in cursor.description or ()]
    rows: list[Any] = []
    limit = config.MAX_ROWS
    while len(rows) <= limit:
        chunk = cursor.fetchmany(GET_ITERATOR_CHUNK_SIZE)
        if not chunk:
            break
        rows.extend(chunk)
    else:
        # Too big to cache: pass on what was read, then the rest as it comes.
        query.cursor = _StoredCursor(cursor.description, rows, rest=cursor)
        return None
    cursor.close()
    query.cursor = _StoredCursor(cursor.description, rows)
    payload = _storable([description, rows], len(rows))
    if payload is not None:
        _store(read, found[0], payload, found[1] is not None)
    return None
