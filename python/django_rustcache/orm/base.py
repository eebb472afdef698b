"""Cache Machine's ``caching.base``: the manager, querysets, model mixin and function caches.

The names, signatures and results are Cache Machine's. What is cached is what the database
returned: the rows of a query's SQL, as its cursor gave them, under a key made of that SQL, its
parameters and the database. A hit hands those rows to Django's own code (the queryset's
iterable, its compiler's converters, ``from_db``, select_related's populators, known related
objects, prefetching), which builds exactly what it builds from the database: the same classes,
values and relations, the caller's related instances attached. No instance and no model class
is ever pickled.

Every cached result carries the generations of the tables its SQL reads (see ``_engine``), read
in the same ``get_many`` as the result itself and captured before the SQL runs, so a result is
never served after a write to one of its tables has returned. Anything the cache cannot store
or read back is a miss that goes to the database, said once in the log, never an error. Module
globals (``cache``, ``cached``, ``invalidator``, ``CachingModelIterable``, ``DEFAULT_TIMEOUT``,
``config.*``) are looked up when used.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import functools
import io
import logging
import operator
import pickle
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from itertools import chain
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import EmptyResultSet
from django.db import connections, models
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.expressions import Col
from django.db.models.fields.files import FileDescriptor, ImageFileDescriptor
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.lookups import Lookup
from django.db.models.query import ModelIterable, RawQuerySet
from django.db.models.query_utils import DeferredAttribute
from django.db.models.sql.constants import GET_ITERATOR_CHUNK_SIZE, MULTI
from django.db.models.sql.datastructures import BaseTable
from django.db.models.sql.query import Query, RawQuery
from django.db.models.sql.where import WhereNode
from django.utils import encoding

from django_rustcache.orm import _engine, config
from django_rustcache.orm.invalidation import FlushListBusy, byid, cache, flush_key, invalidator, make_key

__all__ = [
    "DEFAULT_TIMEOUT",
    "CachingManager",
    "CachingMixin",
    "CachingModelIterable",
    "CachingQuerySet",
    "CachingRawQuerySet",
    "byid",
    "cached",
    "cached_method",
    "cached_with",
    "flush_key",
    "invalidate",
    "make_key",
]

log = logging.getLogger("caching")

_engine.install()

# The shape of a stored result: (_MAGIC, stamp, payload), payload a tuple of pickled lists of rows.
_MAGIC = "rustcache-orm:2"


class _Unusable(Exception):
    """The cache cannot be trusted for this call: run the query without it."""


# --- the stored form of a result: the rows a cursor returned ----------------------------------


class _RowPickler(pickle.Pickler):
    """Rows holding values plain pickle refuses but a database driver returns (a memoryview
    for a binary column): stored as what they hold, read back as the same type."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview:
            return memoryview, (obj.tobytes(),)
        return NotImplemented


def _dump(rows: list[Any]) -> bytes:
    """One list of rows, pickled; raises what pickle raises for a value it cannot store."""
    try:
        return pickle.dumps(rows, pickle.HIGHEST_PROTOCOL)
    except (TypeError, pickle.PicklingError):
        out = io.BytesIO()
        _RowPickler(out, pickle.HIGHEST_PROTOCOL).dump(rows)
        return out.getvalue()


def _load(payload: tuple[bytes, ...]) -> list[Any]:
    rows = pickle.loads(payload[0]) if len(payload) == 1 else [row for part in payload for row in pickle.loads(part)]
    if type(rows) is not list:
        raise TypeError(f"not a list of rows: {type(rows).__name__}")
    return rows


def _is_entry(entry: Any, stamp: tuple) -> bool:
    return type(entry) is tuple and len(entry) == 3 and entry[0] == _MAGIC and entry[1] == stamp


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
        self._entries: collections.OrderedDict[str, tuple[tuple, list[tuple], float | None]] = collections.OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[tuple, list[tuple]] | None:
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

    def remember(self, key: str | None, stamp: tuple, rows: list[tuple], timeout: Any) -> None:
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

    def __init__(self, rows: list[tuple] | None) -> None:
        self.rows = rows


def _stamp(cache: Any, db: str, tables: frozenset[str], key_text: str | None) -> tuple[str | None, tuple, Any]:
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

    __slots__ = ("db", "found", "hit", "key", "preset", "stored", "tables", "timeout")

    def __init__(self, timeout: Any) -> None:
        self.timeout = timeout
        self.hit = False
        self.stored = False
        self.key: str | None = None
        self.db: str | None = None
        self.tables: frozenset[str] = frozenset()
        # What the lookup found: (stamp, rows | _PRESENT | None), or None (cache not used).
        self.found: tuple[tuple, Any] | None = None
        # Whether ``found`` was looked up before compiling (by the query's structure).
        self.preset = False


def _lookup(
    read: _Read, db: str, key_text: str, tables: frozenset[str], width: int | None = None
) -> tuple[tuple, Any] | None:
    """(stamp, stored rows, or _PRESENT when something unusable is stored, or None) for a read
    about to run its SQL; None when the cache cannot be used (it is down, or owes an
    invalidation). Stored rows must be tuples of ``width`` values, when it is given."""
    read.db, read.tables = db, tables
    try:
        key, stamp, entry = _safely("a read", _stamp, cache, db, tables, key_text)
    except _Unusable:
        return None
    read.key = key
    if type(entry) is _Remembered:
        if entry.rows is not None and (width is None or not entry.rows or len(entry.rows[0]) == width):
            return stamp, entry.rows
        # Stale here, so most likely stale there: read the database, replace the entry.
        _memo.forget(key)  # type: ignore[arg-type]
        return stamp, _PRESENT
    if _is_entry(entry, stamp):
        try:
            rows = _load(entry[2])
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


def _store(
    read: _Read, stamp: tuple, payload: tuple[bytes, ...], present: bool, rows: list[tuple] | None = None
) -> None:
    """Store rows read by ``read`` under its key, with the generations read before its SQL
    (and hold them here, when given)."""
    value = (_MAGIC, stamp, payload)
    try:
        with _engine.busy():
            if present:
                # A stale entry is in the way (old entries are left to their generations).
                cache.set(read.key, value, timeout=read.timeout)
            else:
                cache.add(read.key, value, timeout=read.timeout)
    except Exception as exc:
        _engine.warn(f"ORM cache: storing a result failed ({exc!r})")
        return
    read.stored = True
    if rows is not None:
        _memo.remember(read.key, stamp, rows, read.timeout)


def _storable(value: list[Any], count: int) -> tuple[bytes, ...] | None:
    """The payload of ``value`` (``count`` rows), or None when it must not be cached (too many
    rows, none, or a value pickle refuses: said once in a while, the answer is unaffected)."""
    if count > config.MAX_ROWS or not (count or config.CACHE_EMPTY_QUERYSETS):
        return None
    try:
        return (_dump(value),)
    except Exception as exc:
        _engine.warn(f"ORM cache: a result was not cached, it holds a value pickle cannot store ({exc!r})")
        return None


def _streamed(read: _Read, stamp: tuple, chunks: Iterator[list[Any]], present: bool) -> Iterator[list[Any]]:
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


_SIMPLE = (str, int, float, bool, type(None))
# Field attributes that name or count a field rather than shape the values it converts.
_NOT_SHAPING = frozenset({"creation_counter", "verbose_name", "help_text", "_rustcache_identity"})


def _field_identity(field: Any) -> tuple:
    """What a field's conversion of database values depends on: its class and its plain
    settings (``decimal_places``, a custom field's options...). A model's field keeps it."""
    known = field.__dict__.get("_rustcache_identity")
    if known is not None:
        return known
    cls = type(field)
    settings_ = tuple(sorted((k, v) for k, v in vars(field).items() if type(v) in _SIMPLE and k not in _NOT_SHAPING))
    identity = (cls.__module__, cls.__qualname__, settings_)
    if getattr(field, "model", None) is not None:
        field.__dict__["_rustcache_identity"] = identity
    return identity


def _callable_identity(f: Any) -> tuple:
    f = getattr(f, "__func__", f)
    return (getattr(f, "__module__", None), getattr(f, "__qualname__", None) or type(f).__qualname__)


def _converters_identity(compiler: Any) -> tuple:
    """Which conversions Django applies to each column of this query's rows (two queries of one
    SQL may convert differently: ``Sum(..., output_field=FloatField())``)."""
    fields = [s[0] for s in compiler.select[0 : compiler.col_count]]
    out = []
    for pos, (convs, expression) in compiler.get_converters(fields).items():
        try:
            field = _field_identity(expression.output_field)
        except Exception:
            field = (type(expression).__module__, type(expression).__qualname__)
        out.append((pos, tuple(_callable_identity(c) for c in convs), field))
    return tuple(out)


def _made_by_django(converter: Any) -> bool:
    f = getattr(converter, "__func__", converter)
    return (getattr(f, "__module__", None) or "").startswith("django.db.")


def _split(converters: dict[int, Any]) -> tuple[dict[int, Any], dict[int, Any]]:
    """(columns converted before storing, columns converted on every read). A column whose
    conversions are all Django's own gives plain values (datetimes, decimals, dicts from JSON)
    that pickle keeps exactly; a custom field's ``from_db_value`` may give anything (an object
    holding a connection, a lock, attributes pickle drops), so its column is stored as the
    database returned it and converted each time, as Django does."""
    early: dict[int, Any] = {}
    late: dict[int, Any] = {}
    for pos, (convs, expression) in converters.items():
        (early if all(_made_by_django(c) for c in convs) else late)[pos] = (convs, expression)
    return early, late


def _convert(rows: Any, converters: dict[int, Any], connection: Any) -> list[tuple]:
    """Django's ``apply_converters``, giving tuples."""
    items = list(converters.items())
    out = []
    for row in rows:
        values = list(row)
        for pos, (convs, expression) in items:
            value = values[pos]
            for converter in convs:
                value = converter(value, expression, connection)
            values[pos] = value
        out.append(tuple(values))
    return out


def _sql_key_text(compiler: Any, sql: str, params: Any) -> str:
    """Everything a query's converted rows depend on besides the data: the database, the SQL,
    its parameters (``repr``: ``1``, ``True`` and ``1.0`` differ), the columns kept of each row,
    the conversions applied to them, and the time zone settings they are converted with."""
    from django.conf import settings

    conn = compiler.connection
    extra = compiler.col_count if compiler.has_extra_select else None
    return repr(
        (
            "sql",
            conn.alias,
            sql,
            tuple(params),
            extra,
            _converters_identity(compiler),
            settings.USE_TZ,
            getattr(conn, "timezone_name", None),
        )
    )


# Functions whose value changes without any write (random numbers, the clock, new ids), as
# each backend spells them: a query using one is never cached.
_VOLATILE = re.compile(
    r"\b(?:RANDOM|RAND|DBMS_RANDOM|NOW|CURRENT_TIMESTAMP|CURRENT_DATE|CURRENT_TIME|LOCALTIMESTAMP|LOCALTIME"
    r"|STATEMENT_TIMESTAMP|CLOCK_TIMESTAMP|TRANSACTION_TIMESTAMP|TIMEOFDAY|SYSDATE|SYSTIMESTAMP|UTC_TIMESTAMP"
    r"|UUID|GEN_RANDOM_UUID|NEWID)\b|'now'",  # SQLite's clock: STRFTIME(..., 'now')
    re.IGNORECASE,
)
_QUOTED = re.compile(r'"[^"]*"|`[^`]*`|\[[^\]]*\]')
_volatile_sql: dict[str, bool] = {}


def _volatile(sql: str) -> bool:
    """Whether ``sql`` calls a function whose result changes with no write (outside quoted
    names: a column may be called "now")."""
    known = _volatile_sql.get(sql)
    if known is None:
        known = _VOLATILE.search(_QUOTED.sub("", sql)) is not None
        if len(_volatile_sql) >= 4096:
            _volatile_sql.clear()
        _volatile_sql[sql] = known
    return known


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
        return []
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
        return type(compiler).results_iter(compiler, results, tuple_expected)

    def stored(chunk: Any) -> list[tuple]:
        rows = _convert(chunk, early, connection) if early else chunk
        if composite is not None and composite(fields):
            rows = compiler.composite_fields_to_tuples(rows, fields)
        return list(map(tuple, rows))

    def read_back(rows: list[tuple]) -> list[tuple]:
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


# --- identifying a simple query without compiling it -----------------------------------------

# Query attributes a simple query may set: the ones its identity is made of, and bookkeeping
# that does not change the SQL of a query on one table. Any other attribute must still have a
# fresh Query's value, or the query is compiled instead.
_IDENTITY_ATTRS = ("where", "order_by", "default_ordering", "standard_ordering", "low_mark", "high_mark")
_BOOKKEEPING = frozenset(
    {
        "model",
        "alias_map",
        "alias_refcount",
        "table_map",
        "used_aliases",
        "_lookup_joins",
        "filter_is_sticky",
        "_annotation_select_cache",
        "alias_cols",
        "base_table",  # a cached property, set once the query is compiled
    }
)
_VALUE_TYPES = (int, str, float, bool, type(None), bytes, decimal.Decimal, datetime.date, datetime.time, uuid.UUID)
_fresh_attrs: dict[Any, dict[str, Any]] = {}


class _NotSimple(Exception):
    pass


def _value(v: Any) -> Any:
    if type(v) in (list, tuple):
        if not v:
            raise _NotSimple  # an empty IN: compiling says EmptyResultSet
        return tuple(_value(x) for x in v)
    if isinstance(v, _VALUE_TYPES) and not isinstance(v, models.Model):
        return (type(v).__qualname__, v)
    raise _NotSimple


def _node(node: Any, alias: str) -> Any:
    if type(node) is WhereNode:
        return ("W", node.connector, node.negated, tuple(_node(c, alias) for c in node.children))
    if not isinstance(node, Lookup):
        raise _NotSimple
    lhs = node.lhs
    if type(lhs) is not Col or lhs.alias != alias or not node.rhs_is_direct_value():
        raise _NotSimple
    target, kind = lhs.target, type(node)
    field = type(lhs.output_field).__qualname__
    return (kind.__module__, kind.__qualname__, target.model._meta.label, target.column, field, _value(node.rhs))


def _fingerprint(query: Any) -> str | None:
    """A structural identity for a query on one table filtered by plain values, or None."""
    model = query.model
    if model._meta.concrete_model._meta.parents:
        return None  # multi-table inheritance: a join, once compiled
    fresh = _fresh_attrs.get(model)
    if fresh is None:
        fresh = _fresh_attrs[model] = dict(Query(model).__dict__)
    attrs = query.__dict__
    table = model._meta.db_table
    try:
        for name, value in attrs.items():
            if name in _BOOKKEEPING or name in _IDENTITY_ATTRS:
                continue
            default = fresh[name] if name in fresh else getattr(Query, name, _NotSimple)
            if value != default:
                return None
        alias_map = attrs.get("alias_map") or {}
        if len(alias_map) > 1 or any(type(t) is not BaseTable or t.table_name != table for t in alias_map.values()):
            return None
        alias = next(iter(alias_map), table)
        order_by = query.order_by
        # The ordering that applies: an explicit one, else the model's (Meta.ordering). A
        # related field's ("author__name") joins once compiled; "?" is random.
        effective = order_by or (model._meta.ordering if query.default_ordering else ())
        if not all(type(o) is str and "__" not in o and "?" not in o for o in effective):
            return None
        where = _node(query.where, alias)
    except (_NotSimple, TypeError, AttributeError):
        return None
    parts = (model._meta.label, where, order_by, query.default_ordering, query.standard_ordering)
    return "fp:" + repr((*parts, query.low_mark, query.high_mark))


_model_conversions: dict[tuple[type, str], str] = {}
_model_late: dict[tuple[type, str], dict[int, Any]] = {}


def _model_late_converters(model: Any, conn: Any) -> dict[int, Any]:
    """The conversions applied on every read to the columns of a simple query of ``model``
    (its concrete fields, in order): those of its custom fields, as a compiler finds them."""
    late = _model_late.get((model, conn.alias))
    if late is None:
        compiler = Query(model).get_compiler(connection=conn)
        compiler.setup_query()
        late = _split(compiler.get_converters([s[0] for s in compiler.select]))[1]
        _model_late[(model, conn.alias)] = late
    return late


def _fingerprint_key_text(fingerprint: str, model: Any, conn: Any) -> str:
    """The key text of a simple query's rows: its structure, with what every column's
    conversion depends on (the backend, the model's fields, the time zone settings)."""
    from django.conf import settings

    conversions = _model_conversions.get((model, conn.alias))
    if conversions is None:
        ops = type(conn.ops)
        fields = tuple(_field_identity(f) for f in model._meta.concrete_fields)
        conversions = _model_conversions[(model, conn.alias)] = repr((ops.__module__, ops.__qualname__, fields))
    tz = repr((settings.USE_TZ, getattr(conn, "timezone_name", None)))
    return f"fp|{conn.alias!r}|{fingerprint}|{conversions}|{tz}"


# --- building objects from stored rows ---------------------------------------------------------

# Descriptors a model may have on a field's attname whose ``__set__`` on a new instance only
# stores the value in its ``__dict__`` (what a plain attribute does).
_PLAIN_SETTERS = (DeferredAttribute, ForeignKeyDeferredAttribute, FileDescriptor, ImageFileDescriptor)
_plain_recipes: dict[tuple[type, tuple[str, ...]], bool] = {}


def _plain_recipe(model: Any, names: tuple[str, ...]) -> bool:
    """Whether ``model.from_db(db, names, values)`` only makes an instance whose ``__dict__`` is
    ``_state`` then ``names`` with their values: Django's ``from_db`` and ``__init__``, every
    name a concrete field's attname in field order, with nothing but storing on assignment."""
    known = _plain_recipes.get((model, names))
    if known is not None:
        return known
    ok = (
        getattr(model.from_db, "__func__", None) is models.Model.from_db.__func__
        and model.__init__ is models.Model.__init__
        and list(names) == [f.attname for f in model._meta.concrete_fields if f.attname in names]
    )
    for name in names if ok else ():
        owner = next((k for k in model.__mro__ if name in k.__dict__), None)
        if owner is not None and type(owner.__dict__[name]) not in _PLAIN_SETTERS:
            ok = False
            break
    if len(_plain_recipes) > 4096:
        _plain_recipes.clear()
    _plain_recipes[(model, names)] = ok
    return ok


def _plain_build(compiler: Any, queryset: Any) -> Any:
    """For stored rows of a query Django would turn into objects with ``from_db`` alone (no
    select_related, no init signals, known related objects whose ids are loaded): a function
    that builds exactly those objects, without ``Model.__init__``'s per-field work. Else None,
    and Django's iterable builds them."""
    klass_info = compiler.klass_info
    if not klass_info or klass_info.get("related_klass_infos"):
        return None
    fields = klass_info["select_fields"]
    start, end = fields[0], fields[-1] + 1
    names = tuple(f[0].target.attname for f in compiler.select[start:end])
    annotations = list((compiler.annotation_col_map or {}).items())
    return _builder(klass_info["model"], names, start, end, annotations, queryset)


def _builder(model: Any, names: tuple[str, ...], start: int, end: int, annotations: list, queryset: Any) -> Any:
    if not _plain_recipe(model, names):
        return None
    if signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        return None
    known = []
    for field, related in queryset._known_related_objects.items():
        attnames = [
            field.attname if f == "self" else queryset.model._meta.get_field(f).attname for f in field.from_fields
        ]
        if any(a not in names for a in attnames):
            return None  # Django 5.2 would fetch the deferred id, 6.x skips it: let Django do it
        known.append((field, related, operator.attrgetter(*attnames)))
    fetch_mode = getattr(queryset, "_fetch_mode", None)  # Django 6.1+
    db = queryset.db
    if not known and not annotations and start == 0 and not (fetch_mode is not None and fetch_mode.track_peers):
        # The common case (rows of the model's columns only): a loop written for these names.
        fast = _fast_builder(model, names, fetch_mode is not None)
        return lambda rows: fast(rows, db, fetch_mode)

    def build(rows: list[Any]) -> Iterator[Any]:
        new = object.__new__
        peers: list[Any] | None = [] if fetch_mode is not None and fetch_mode.track_peers else None
        for row in rows:
            obj = new(model)
            state = ModelState()
            state.adding = False
            state.db = db
            if fetch_mode is not None:
                state.fetch_mode = fetch_mode
            values = {"_state": state}
            values.update(zip(names, row[start:end], strict=True))
            obj.__dict__ = values
            if peers is not None:
                peers.append(weakref.ref(obj))
                state.peers = peers
            for name, pos in annotations:
                setattr(obj, name, row[pos])
            for field, related, getter in known:
                if field.is_cached(obj):
                    continue
                try:
                    rel_obj = related[getter(obj)]
                except KeyError:
                    pass
                else:
                    setattr(obj, field.name, rel_obj)
            obj.from_cache = True
            yield obj

    return build


_fast_builders: dict[tuple[type, tuple[str, ...], bool], Any] = {}


def _fast_builder(model: Any, names: tuple[str, ...], with_fetch_mode: bool) -> Any:
    """``build(rows, db, fetch_mode)``: the objects Django's ``from_db`` makes from rows that
    hold exactly ``names`` (a ModelState of ``adding`` False and ``db``, and the fetch mode on
    Django 6.1+; then the values, in field order), marked ``from_cache``, as a list. Written
    for the names (a dict display with constant keys, each row unpacked into locals): three
    times faster than a dict made with zip(). The names are a model's attnames, written as
    ``repr`` literals, never as code."""
    key = (model, names, with_fetch_mode)
    build = _fast_builders.get(key)
    if build is None:
        if not all(type(n) is str for n in names) or not 0 < len(names) <= 255:
            raise ValueError("not a row of attribute names")
        cells = [f"r{i}" for i in range(len(names))]
        items = ", ".join(f"{n!r}: {c}" for n, c in zip(names, cells, strict=True))
        state = (
            "{'adding': False, 'db': db, 'fetch_mode': fetch_mode}"
            if with_fetch_mode
            else "{'adding': False, 'db': db}"
        )
        source = (
            "def build(rows, db, fetch_mode):\n"
            "    objects = []\n"
            "    append = objects.append\n"
            f"    for ({', '.join(cells)},) in rows:\n"
            "        state = new(State)\n"
            f"        state.__dict__ = {state}\n"
            "        obj = new(cls)\n"
            f"        obj.__dict__ = {{'_state': state, {items}, 'from_cache': True}}\n"
            "        append(obj)\n"
            "    return objects\n"
        )
        namespace: dict[str, Any] = {"new": object.__new__, "State": ModelState, "cls": model}
        exec(source, namespace)  # the names appear only as repr() literals
        build = namespace["build"]
        if len(_fast_builders) > 1024:
            _fast_builders.clear()
        _fast_builders[key] = build
    return build


def _checked(read: _Read, found: tuple[tuple, Any], width: int) -> None:
    """Stored rows Django's iterable will read (it slices them): tuples of ``width`` values, or
    they are treated as an unusable entry (the query runs, its rows replace them)."""
    rows = found[1]
    if all(type(r) is tuple and len(r) == width for r in rows):
        read.hit = True
    else:
        _engine.warn("ORM cache: a stored result could not be read, using the database (rows of another shape)")
        read.found = (found[0], _PRESENT)


class CachingModelIterable(ModelIterable):
    """Django's ModelIterable, whose query reads its rows through the cache: current stored
    rows when the tables' generations say so, else the database's (stored afterwards). Every
    object is built by Django's own code; ``from_cache`` says where its row came from."""

    def __init__(self, queryset: Any, *args: Any, **kwargs: Any) -> None:
        self.timeout = kwargs.pop("timeout", getattr(queryset, "timeout", DEFAULT_TIMEOUT))
        self.db = kwargs.pop("db", queryset.db)
        super().__init__(queryset, *args, **kwargs)

    def query_key(self) -> str:
        """The cache key of this query's rows (database included: a replica's rows are not the
        primary's)."""
        compiler = self.queryset.query.get_compiler(using=self.db)
        sql, params = compiler.as_sql()
        return make_key(_sql_key_text(compiler, sql, params), with_locale=False)

    def __iter__(self) -> Iterator[Any]:
        queryset = self.queryset
        if self.timeout == config.NO_CACHE or queryset.query.select_for_update:
            return super().__iter__()
        # What this evaluation did (a hit, the key): for tools that show it.
        self.read = read = _Read(self.timeout)
        built = self._by_structure(read)
        if built is not None:
            return iter(built)  # built from the cache, marked so
        return self._iterate(read)

    def _iterate(self, read: _Read) -> Iterator[Any]:
        """Through the compiler: its rows from the cache (when ``_by_structure`` found them but
        Django must build the objects, or the query is not simple) or from the database."""
        queryset = self.queryset
        query = queryset.query
        objects: list[Any] | None = [] if config.CACHE_MACHINE_COMPAT else None
        try:
            compiler = _reading(query.get_compiler(using=queryset.db), read)
            results = compiler.execute_sql(chunked_fetch=self.chunked_fetch, chunk_size=self.chunk_size)
            build = _plain_build(compiler, queryset) if read.hit and read.found is not None else None
            built: Any = None
            if build is not None:
                fields = [s[0] for s in compiler.select[0 : compiler.col_count]]
                late = _split(compiler.get_converters(fields))[1]
                rows = read.found[1]  # type: ignore[index]
                built = list(build(_convert(rows, late, compiler.connection) if late else rows))
            if built is None:
                # Django's own iterable, on this compiler and its rows (each handed over once:
                # nothing here may keep a cursor open after the iteration ends).
                handover = [compiler, results]
                query.__dict__["get_compiler"] = lambda *args, **kwargs: handover.pop(0)
                compiler.execute_sql = lambda *args, **kwargs: handover.pop(0)
                del compiler, results
                built = super().__iter__()
            if type(built) is list and objects is None:
                yield from built  # built from the cache, marked so
            else:
                for obj in built:
                    obj.from_cache = read.hit
                    if objects is not None and not read.hit:
                        objects.append(obj)
                    yield obj
        finally:
            query.__dict__.pop("get_compiler", None)
        if objects is not None and read.stored and read.key is not None:
            self._register(objects, read.key)

    def _by_structure(self, read: _Read) -> Iterator[Any] | None:
        """A simple query (one table, filtered by plain values) is looked up by its structure,
        without compiling it: compiling costs more than the rest of a hit. Its objects when its
        rows are stored and plain to build; else None, with ``read`` holding what was found
        (the compiler then runs the SQL, or Django builds from the stored rows)."""
        queryset = self.queryset
        query = queryset.query
        fingerprint = _fingerprint(query)
        if fingerprint is None:
            return None
        conn = connections[queryset.db]
        if conn.needs_rollback:
            return None
        model = query.model
        names = tuple(f.attname for f in model._meta.concrete_fields)
        key_text = _fingerprint_key_text(fingerprint, model, conn)
        # The rows' shape is checked by building (each row unpacked into its names), so the
        # lookup does not check it first.
        read.found = found = _lookup(read, conn.alias, key_text, _engine.model_tables(model))
        read.preset = True
        if found is None or type(found[1]) is not list:
            return None
        build = _builder(model, names, 0, len(names), [], queryset)
        if build is None:
            return _checked(read, found, len(names))
        late = _model_late_converters(model, conn)
        try:
            built = build(_convert(found[1], late, conn) if late else found[1])
            if type(built) is not list:
                built = list(built)
        except (TypeError, ValueError) as exc:  # rows of another shape: a damaged value
            _engine.warn(f"ORM cache: a stored result could not be read, using the database ({exc!r})")
            read.found = (found[0], _PRESENT)
            return None
        read.hit = True
        return built

    def _register(self, objects: list[Any], query_key: str) -> None:
        """Cache Machine's flush lists (its compatibility mode): each object's list names the
        stored result, which is dropped if they cannot be kept."""
        query_flush = flush_key(self.queryset.query_key())
        try:
            registered = invalidator.cache_objects(
                self.queryset.model, objects, query_key, query_flush, timeout=self.timeout
            )
        except (FlushListBusy, Exception) as exc:
            log.warning("flush lists not updated (%r): dropping %s", exc, query_key)
            registered = False
        if registered is False:
            try:
                cache.delete(query_key)
            except Exception as exc:
                _engine.warn(f"ORM cache: delete failed ({exc!r})")


# --- raw querysets ----------------------------------------------------------------------------


class _StoredCursor:
    """What a raw query's iteration reads from its cursor: the description and the rows."""

    def __init__(self, description: Any, rows: list[Any], rest: Any = None) -> None:
        self.description = description
        self.rows = rows
        self.rest = rest  # a real cursor, for a result too big to be held

    def __iter__(self) -> Iterator[Any]:
        yield from self.rows
        if self.rest is not None:
            yield from self.rest

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()


def _raw_shape(stored: list[Any]) -> bool:
    """Whether a stored raw result is what ``_raw_execute`` stores: the columns, then rows of
    as many values."""
    if len(stored) != 2 or type(stored[0]) is not list or type(stored[1]) is not list:
        return False
    width = len(stored[0])
    return all(type(c) is tuple and c for c in stored[0]) and all(
        type(r) is tuple and len(r) == width for r in stored[1]
    )


def _raw_execute(query: Any, read: _Read, model: Any) -> None:
    """The caching twin of ``RawQuery._execute_query``."""
    conn = connections[query.using]
    if conn.needs_rollback:
        return RawQuery._execute_query(query)
    params = query.params
    params = tuple(params) if isinstance(params, (list, tuple)) else params
    key_text = repr(("raw", conn.alias, query.sql, params, getattr(conn, "timezone_name", None)))
    tables = _engine.tables_in(query.sql) | _engine.model_tables(model)
    found = None if " at 0x" in key_text or _volatile(query.sql) else _lookup(read, conn.alias, key_text, tables)
    if found is not None and type(found[1]) is list:
        if _raw_shape(found[1]):
            description, rows = found[1]
            read.hit = True
            query.cursor = _StoredCursor(description, rows)
            return None
        _engine.warn("ORM cache: a stored result could not be read, using the database (not a raw result)")
        found = (found[0], _PRESENT)
    RawQuery._execute_query(query)
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


class CachingQuerySet(models.query.QuerySet):
    _default_timeout_pickle_key = "__DEFAULT_TIMEOUT__"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.timeout = DEFAULT_TIMEOUT
        self._iterable_class = CachingModelIterable

    def __getstate__(self) -> dict[str, Any]:
        """Django's: the results are read first, and its version recorded. A DEFAULT_TIMEOUT is
        pickled as a marker: another process has another DEFAULT_TIMEOUT."""
        state = super().__getstate__()
        if self.timeout == DEFAULT_TIMEOUT:
            state["timeout"] = self._default_timeout_pickle_key
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.timeout == self._default_timeout_pickle_key:
            self.timeout = DEFAULT_TIMEOUT

    def _sql(self) -> tuple[str, tuple]:
        clone = self.query.clone()
        sql, params = clone.get_compiler(using=self.db).as_sql()
        return sql, tuple(params)

    def _cache_identity(self) -> tuple[str, frozenset[str]]:
        """(what identifies this query, the tables it reads), with its database: a simple query
        (one table, filtered by plain values) by its structure, without compiling it; any other
        by ``repr`` of its SQL and parameters, not Cache Machine's ``sql % params`` (``IN (%s)``
        with ``"a, b"`` and ``IN (%s, %s)`` with ``"a"``, ``"b"`` must not share a key)."""
        fingerprint = _fingerprint(self.query)
        if fingerprint is not None:
            return repr((self.db, fingerprint)), _engine.model_tables(self.model)
        sql, params = self._sql()
        return repr((self.db, sql, params)), _engine.tables_in(sql) | _engine.model_tables(self.model)

    def flush_key(self) -> str:
        return flush_key(self.query_key())

    def query_key(self) -> str:
        sql, params = self._sql()
        return sql % params

    def fetch_by_id(self) -> Iterator[Any]:
        """Cache Machine's by-id fetch, for code that calls it: the ids first, then the objects
        of those ids in that order, each query's rows through the cache. (The FETCH_BY_ID
        setting no longer routes evaluation here: a query's own rows are cached, one query on a
        miss, where Cache Machine made two to share pickled objects between queries.)"""
        vals = self.values_list("pk", *list(self.query.extra.keys()))
        query = vals.query
        query.get_compiler = _armed(query, _Read(self.timeout))
        try:
            pks = [val[0] for val in vals]
        finally:
            query.__dict__.pop("get_compiler", None)
        if not pks:
            return
        found = {o.pk: o for o in self.fetch_missed(pks)}
        for pk in pks:
            if pk in found:  # a row deleted between the two queries is left out
                yield found[pk]

    def fetch_missed(self, pks: list[Any]) -> Any:
        others = self.all()
        others.query.clear_limits()
        others = others.order_by().filter(pk__in=pks)
        if self.query.select_related:
            others.query.select_related = self.query.select_related
        return others

    def count(self) -> int:
        if self._result_cache is not None:
            return len(self._result_cache)
        super_count = super().count
        if self.timeout == config.NO_CACHE or config.TIMEOUT == config.NO_CACHE:
            return super_count()
        try:
            identity = self._cache_identity()  # compiled once, for the key and the tables
        except EmptyResultSet:
            return 0
        return cached_with(self, super_count, "count", config.TIMEOUT, _identity=identity)

    def cache(self, timeout: Any = DEFAULT_TIMEOUT) -> CachingQuerySet:
        qs = self._clone()
        qs.timeout = timeout
        return qs

    def no_cache(self) -> CachingQuerySet:
        return self.cache(config.NO_CACHE)

    def _clone(self, *args: Any, **kw: Any) -> Any:
        qs = super()._clone(*args, **kw)
        qs.timeout = self.timeout
        return qs


class CachingManager(models.Manager):
    """A manager whose querysets are cached; in Cache Machine compatibility mode it also keeps
    Cache Machine's flush lists on save and delete."""

    def get_queryset(self) -> CachingQuerySet:
        return CachingQuerySet(self.model, using=self._db)

    def contribute_to_class(self, cls: Any, name: str) -> None:
        signals.pre_save.connect(self.pre_save, sender=cls)
        signals.post_save.connect(self.post_save, sender=cls)
        signals.post_delete.connect(self.post_delete, sender=cls)
        return super().contribute_to_class(cls, name)

    def pre_save(self, instance: Any, raw: bool = False, using: str | None = None, **kwargs: Any) -> None:
        # Cache Machine's rule, in its compatibility mode only: a new row does not invalidate
        # the model's lists unless CACHE_INVALIDATE_ON_CREATE = 'whole-model'.
        if (
            config.CACHE_MACHINE_COMPAT
            and not raw
            and instance._state.adding
            and config.CACHE_INVALIDATE_ON_CREATE != config.WHOLE_MODEL
        ):
            _engine.expect_new_row(using or "default", _engine.model_tables(type(instance)), True)

    def post_save(self, instance: Any, **kwargs: Any) -> None:
        _engine.expect_new_row(kwargs.get("using") or "default", _engine.model_tables(type(instance)), False)
        if config.CACHE_MACHINE_COMPAT:
            self._flush((instance,), is_new_instance=kwargs.get("created", False), model_cls=kwargs.get("sender"))

    def post_delete(self, instance: Any, **kwargs: Any) -> None:
        if config.CACHE_MACHINE_COMPAT:
            self._flush((instance,))

    def _flush(self, objects: Any, **kwargs: Any) -> None:
        try:
            invalidator.invalidate_objects(objects, **kwargs)
        except Exception as exc:
            _engine.warn(f"ORM cache: flush lists not cleared ({exc!r})")

    def invalidate(self, *objects: Any, **kwargs: Any) -> None:
        """Invalidate everything cached about ``objects``: their flush lists, and every query on
        their tables."""
        self._flush(objects, **kwargs)
        invalidate(*objects)

    def raw(self, raw_query: str, params: Any = (), translations: Any = None, **kwargs: Any) -> CachingRawQuerySet:
        return CachingRawQuerySet(
            raw_query, self.model, params=params, translations=translations, using=self._db, **kwargs
        )

    def cache(self, timeout: Any = DEFAULT_TIMEOUT) -> CachingQuerySet:
        return self.get_queryset().cache(timeout)

    def no_cache(self) -> CachingQuerySet:
        return self.cache(config.NO_CACHE)


class CachingMixin:
    """Inherit from this class to get caching and invalidation helpers."""

    def flush_key(self) -> str:
        return flush_key(self)

    def get_cache_key(self, incl_db: bool = True) -> str:
        """A cache key from the primary key (without the database for flush lists, so every copy
        of an object is invalidated whichever database it was changed on)."""
        return self._cache_key(self.pk, (incl_db and self._state.db) or None)

    cache_key = property(get_cache_key)

    @classmethod
    def model_flush_key(cls) -> str:
        """The flush list of the whole model."""
        return flush_key(cls._cache_key("all-pks", "all-dbs"))

    @classmethod
    def _cache_key(cls, pk: Any, db: str | None = None) -> str:
        """``o:app.model:pk[:db]``."""
        key_parts = ("o", cls._meta, pk, db) if db else ("o", cls._meta, pk)
        return ":".join(map(encoding.smart_str, key_parts))

    def _cache_keys(self, incl_db: bool = True) -> tuple[str, ...]:
        """The cache key of self and of every object its foreign keys point to."""
        keys = []
        for f in self._meta.fields:
            if isinstance(f, models.ForeignKey):
                val = getattr(self, f.attname)
                related_model = self._get_fk_related_model(f)
                if val is not None and hasattr(related_model, "_cache_key"):
                    keys.append(related_model._cache_key(val, (incl_db and self._state.db) or None))
        return (self.get_cache_key(incl_db=incl_db), *keys)

    def _flush_keys(self) -> Any:
        return map(flush_key, self._cache_keys(incl_db=False))

    def _get_fk_related_model(self, fk: Any) -> Any:
        return fk.remote_field.model


class CachingRawQuerySet(RawQuerySet):
    """Django's RawQuerySet, whose SQL reads its rows (and their columns) through the cache."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        timeout = kw.pop("timeout", DEFAULT_TIMEOUT)
        super().__init__(*args, **kw)
        self.timeout = timeout

    def iterator(self) -> Iterator[Any]:
        if self.timeout == config.NO_CACHE:
            yield from super().iterator()
            return
        read = _Read(self.timeout)
        query = self.query
        query._execute_query = functools.partial(_raw_execute, query, read, self.model)
        try:
            for obj in super().iterator():
                obj.from_cache = read.hit
                yield obj
        finally:
            query.__dict__.pop("_execute_query", None)

    def _clone(self) -> CachingRawQuerySet:
        clone = super()._clone()
        clone.timeout = self.timeout
        return clone

    def using(self, alias: str | None) -> CachingRawQuerySet:
        """Django's, keeping the class (Django's makes a plain RawQuerySet)."""
        return CachingRawQuerySet(
            self.raw_query,
            model=self.model,
            query=self.query.chain(using=alias),
            params=self.params,
            translations=self.translations,
            using=alias,
            timeout=self.timeout,
        )

    def query_key(self) -> str:
        return self.raw_query % tuple(self.params or [])

    def _cache_identity(self) -> tuple[str, frozenset[str]]:
        params = self.params
        params = tuple(params) if isinstance(params, (list, tuple)) else params
        identity = repr((self.db, self.raw_query, params))
        return identity, _engine.tables_in(self.raw_query) | _engine.model_tables(self.model)


# --- function caches --------------------------------------------------------------------------


def _function_cache_key(key: str) -> str:
    return make_key(f"f:{key}", with_locale=True)


def cached(function: Any, key_: str, duration: Any = DEFAULT_TIMEOUT) -> Any:
    """Only calls the function if ``key`` is not already in the cache."""
    key = _function_cache_key(key_)
    try:
        val = cache.get(key)
    except Exception as exc:
        _engine.warn(f"ORM cache: get failed, calling the function ({exc!r})")
        return function()
    if val is None:
        log.debug("cache miss for %s", key)
        val = function()
        try:
            cache.set(key, val, duration)
        except Exception as exc:
            _engine.warn(f"ORM cache: set failed ({exc!r})")
    else:
        log.debug("cache hit for %s", key)
    return val


def _tables_of(obj: Any) -> tuple[frozenset[str], str]:
    """The tables ``obj``'s cached values depend on, and the database it came from."""
    if isinstance(obj, (CachingQuerySet, CachingRawQuerySet)):
        return obj._cache_identity()[1], obj.db
    if isinstance(obj, models.Model):
        return _engine.model_tables(type(obj)), obj._state.db or "default"
    return frozenset(), "default"


def cached_with(obj: Any, f: Any, f_key: str, timeout: Any = DEFAULT_TIMEOUT, _identity: Any = None) -> Any:
    """Cache a function call in ``obj``'s name: computed again once ``obj`` (or a query on its
    tables) changed. The key carries the tables' generations, read before ``f`` runs."""
    try:
        if _identity is None and isinstance(obj, (CachingQuerySet, CachingRawQuerySet)):
            _identity = obj._cache_identity()
        if _identity is not None:
            obj_key, tables = _identity
            db = obj.db
        else:
            obj_key = obj.query_key() if hasattr(obj, "query_key") else obj.cache_key
            tables, db = _tables_of(obj)
    except (AttributeError, EmptyResultSet):
        log.warning("%r cannot be cached.", encoding.smart_str(obj))
        return f()
    if tables:
        try:
            _, stamp, _ = _safely("a read", _stamp, cache, db, tables, None)
        except _Unusable:
            return f()
        obj_key = f"{obj_key}:gen:{stamp!r}"
    key = "{}:{}".format(*map(encoding.smart_str, (f_key, obj_key)))
    if config.CACHE_MACHINE_COMPAT:
        # Registered before it is stored, so it can never be stored and not registered.
        try:
            if invalidator.add_to_flush_list({obj.flush_key(): [_function_cache_key(key)]}, timeout=timeout) is False:
                return f()
        except Exception as exc:
            log.warning("flush list not updated (%r): not caching", exc)
            return f()
    return cached(f, key, timeout)


class cached_method:
    """Cache a method's result in its object's name: once per (object, arguments) in the cache,
    then in the object itself; invalidated with the object."""

    def __init__(self, func: Any) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj: Any, type: Any = None) -> Any:
        if obj is None:
            return self
        _missing = object()
        value = obj.__dict__.get(self.__name__, _missing)
        if value is _missing:
            w = MethodWrapper(obj, self.func)
            obj.__dict__[self.__name__] = w
            return w
        return value


class MethodWrapper:
    """An object's method with two levels of cache: the external one for the first call with
    some (args, kwargs), then a dict on the object."""

    def __init__(self, obj: Any, func: Any) -> None:
        self.obj = obj
        self.func = func
        functools.update_wrapper(self, func)
        self.cache: dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        def k(o: Any) -> Any:
            return o.cache_key if hasattr(o, "cache_key") else o

        arg_keys = list(map(k, args))
        kwarg_keys = [(key, k(val)) for key, val in list(kwargs.items())]
        key_parts = ("m", self.obj.cache_key, self.func.__name__, arg_keys, kwarg_keys)
        key = ":".join(map(encoding.smart_str, key_parts))
        if key not in self.cache:
            f = functools.partial(self.func, self.obj, *args, **kwargs)
            self.cache[key] = cached_with(self.obj, f, key)
        return self.cache[key]


def invalidate(*targets: Any, using: str | None = None) -> None:
    """Invalidate every cached query on the tables of ``targets``: models, instances,
    querysets or table names. With ``using`` inside ``atomic()`` on that database, it happens at
    commit, like a write; otherwise now."""
    tables: set[str] = set()
    for target in targets:
        if isinstance(target, str):
            tables.add(target.lower())
        elif isinstance(target, type) and issubclass(target, models.Model):
            tables |= _engine.model_tables(target)
        elif isinstance(target, models.Model):
            tables |= _engine.model_tables(type(target))
        elif isinstance(target, (models.QuerySet, RawQuerySet)):
            tables |= _engine.model_tables(target.model)
            if isinstance(target, (CachingQuerySet, CachingRawQuerySet)):
                tables |= _tables_of(target)[0]
        else:
            raise TypeError(f"invalidate() takes models, instances, querysets or table names, not {target!r}")
    if not tables:
        return
    if using is not None and connections[using].in_atomic_block:
        _engine.wrote(connections[using], tables)
    else:
        _engine.bump(tables)
