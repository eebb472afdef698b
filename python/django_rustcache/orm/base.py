"""Cache Machine's ``caching.base``: the manager, querysets, model mixin and function caches.

The names, signatures and results are Cache Machine's. Underneath, every cached result carries
the generations of the tables its SQL reads (see ``_engine``), read in the same ``get_many`` as
the result itself and captured before the SQL runs, so a result is never served after a write to
one of its tables has returned. Module globals (``cache``, ``cached``, ``invalidator``,
``CachingModelIterable``, ``DEFAULT_TIMEOUT``, ``config.*``) are looked up when used.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import logging
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import EmptyResultSet
from django.db import connections, models
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.expressions import Col
from django.db.models.lookups import Lookup
from django.db.models.query import ModelIterable, RawQuerySet
from django.db.models.sql.datastructures import BaseTable
from django.db.models.sql.query import Query
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

_MAGIC = "rustcache-orm:1"


class _Unusable(Exception):
    """The cache cannot be trusted for this call: run the query without it."""


# --- the stored form of a result --------------------------------------------------------------


def _row(obj: Any) -> Any:
    """A snapshot of one instance (its attributes, database, related objects), taken as it is
    yielded, so a caller that changes it afterwards does not change what is cached."""
    state = obj.__dict__.copy()
    model_state = state.pop("_state")
    for name, value in state.items():
        if isinstance(value, memoryview):
            state[name] = bytes(value)
    return state, model_state.db, dict(model_state.__dict__.get("fields_cache") or ())


def _encode(cls: Any, rows: list[Any]) -> bytes:
    """Rows of one model, all with the same attributes, one database and no related objects
    (the common case) are stored as columns: names once, then a tuple of values per row, which
    unpickles in a third of the time of a dict per row. Anything else, a dict per row."""
    if cls is not None and rows:
        first, db, _ = rows[0]
        names = tuple(first)
        if all(r[1] == db and not r[2] and len(r[0]) == len(names) and tuple(r[0]) == names for r in rows):
            # Stored as read from the cache: marked so.
            at = names.index("from_cache") if "from_cache" in names else -1
            values = [tuple(r[0].values()) for r in rows]
            if at >= 0:
                values = [(*v[:at], True, *v[at + 1 :]) for v in values]
            else:
                names, values = (*names, "from_cache"), [(*v, True) for v in values]
            return pickle.dumps(("columns", cls, names, db, values), pickle.HIGHEST_PROTOCOL)
    return pickle.dumps(("rows", cls, rows), pickle.HIGHEST_PROTOCOL)


def _plain_state(state: dict[str, Any]) -> ModelState:
    model_state = ModelState()
    model_state.__dict__.update(state)
    return model_state


class _LoadedState(ModelState):
    """The state of an instance read from the cache: ``adding`` False and ``db`` from the class
    (one subclass per database alias), so no per-instance dict is made until Django sets
    something. Copied or pickled, it becomes a plain ModelState."""

    adding = False

    def __reduce__(self) -> Any:
        state = ModelState.__getstate__(self) if hasattr(ModelState, "__getstate__") else dict(self.__dict__)
        return (_plain_state, ({"db": self.db, "adding": self.adding, **state},))


_state_classes: dict[str, type] = {}


def _state_class(db: str) -> type:
    cls = _state_classes.get(db)
    if cls is None:
        cls = _state_classes[db] = type("_LoadedState", (_LoadedState,), {"db": db, "__module__": __name__})
    return cls


_builders: dict[tuple[str, ...], Any] = {}


def _builder(names: tuple[str, ...]) -> Any:
    """A function that makes instances from rows of ``names``, written for those names (a dict
    display with constant keys, rows unpacked into locals): three times faster than building
    each instance's dict with zip(). The names are written as ``repr`` literals, never as code."""
    builder = _builders.get(names)
    if builder is None:
        if not all(type(n) is str for n in names) or not 0 < len(names) <= 255:
            raise ValueError("not a row of attribute names")
        cells = [f"r{i}" for i in range(len(names))]
        items = ", ".join(f"{n!r}: {c}" for n, c in zip(names, cells, strict=True))
        source = (
            "def build(values, cls, db):\n"
            "    objects = []\n"
            "    append = objects.append\n"
            "    state = state_class(db)\n"
            f"    for ({', '.join(cells)},) in values:\n"
            "        obj = new(cls)\n"
            f"        obj.__dict__ = {{{items}, '_state': new(state)}}\n"
            "        append(obj)\n"
            "    return objects\n"
        )
        namespace: dict[str, Any] = {"new": object.__new__, "state_class": _state_class}
        exec(source, namespace)  # the names appear only as repr() literals
        builder = namespace["build"]
        if len(_builders) > 1024:
            _builders.clear()
        _builders[names] = builder
    return builder


def _decode(payload: bytes) -> list[Any]:
    stored = pickle.loads(payload)
    new = object.__new__
    objects: list[Any] = []
    append = objects.append
    if stored[0] == "columns":
        _, cls, names, db, values = stored
        return _builder(names)(values, cls, db)
    _, cls, rows = stored
    if cls is None:
        return rows
    for state, db, fields_cache in rows:
        obj = new(cls)
        model_state = new(ModelState)
        model_state.__dict__ = {"db": db, "adding": False}
        if fields_cache:
            model_state.fields_cache = fields_cache
        state["_state"] = model_state
        state["from_cache"] = True
        obj.__dict__ = state
        append(obj)
    return objects


def _is_entry(entry: Any, stamp: tuple) -> bool:
    return type(entry) is tuple and len(entry) == 3 and entry[0] == _MAGIC and entry[1] == stamp


# --- reading generations ----------------------------------------------------------------------


def _stamp(cache: Any, db: str, tables: frozenset[str], key_text: str | None) -> tuple[str | None, tuple, Any]:
    """One ``get_many`` of the tables' generations (and the result key, when given): (key,
    stamp, stored entry). Missing generations are created with fresh values before returning,
    which is before the caller runs its SQL."""
    scope = _engine.private_scope(connections[db], tables)
    key = None
    if key_text is not None:
        key = make_key(key_text + (scope[0] if scope else ""), with_locale=False)
    if not _engine.healthy(cache):
        raise _Unusable
    order = sorted(tables)
    gen_keys = [_engine.generation_key(t) for t in order]
    with _engine.busy():
        got = cache.get_many(gen_keys + ([key] if key else []))
        gens = [got.get(k) for k in gen_keys]
        missing = {k: _engine.fresh_generation() for k, g in zip(gen_keys, gens, strict=True) if g is None}
        if missing:
            failed = cache.set_many(missing, timeout=None)
            # Django's contract is a list of failed keys; some third-party backends return None.
            if failed and isinstance(failed, (list, tuple, set)):
                raise _Unusable
            gens = [missing.get(k, g) for k, g in zip(gen_keys, gens, strict=True)]
    stamp = tuple(gens) + (scope[1] if scope else ())
    return key, stamp, (got.get(key) if key else None)


def _safely(what: str, f: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return f(*args, **kwargs)
    except _Unusable:
        raise
    except Exception as exc:
        _engine.warn(f"ORM cache: {what} failed, using the database ({exc!r})")
        raise _Unusable from exc


class CachingModelIterable(ModelIterable):
    """Yields a query's objects from the cache when its stored result is still current, else from
    the database, storing them afterwards (Cache Machine's iterable, on table generations)."""

    def __init__(self, queryset: Any, *args: Any, **kwargs: Any) -> None:
        self.iter_function = kwargs.pop("iter_function", None)
        self.timeout = kwargs.pop("timeout", queryset.timeout)
        self.db = kwargs.pop("db", queryset.db)
        super().__init__(queryset, *args, **kwargs)

    def _key_text(self) -> tuple[str, frozenset[str]]:
        identity, tables = self.queryset._cache_identity()
        return f"qs:{identity}::db:{self.db}", tables

    def query_key(self) -> str:
        """The cache key of this query's result (database alias included: a replica's objects
        must not be saved to the primary)."""
        return make_key(self._key_text()[0], with_locale=False)

    def cache_objects(self, objects: list[Any], query_key: str, stamp: tuple = (), present: bool = False) -> None:
        """Store ``objects`` under ``query_key`` with the generations read before the query."""
        rows = getattr(self, "_rows", None)
        if rows is None or len(rows) != len(objects):
            rows = [_row(o) for o in objects]
        classes = {type(o) for o in objects}
        if len(classes) == 1 and isinstance(objects[0], models.Model):
            payload = _encode(next(iter(classes)), rows)
        else:
            payload = _encode(None, objects)
        value = (_MAGIC, stamp, payload)
        try:
            with _engine.busy():
                if present:
                    # A stale entry is in the way (Cache Machine deleted on invalidation; we leave
                    # old entries to their generations), so replace it.
                    cache.set(query_key, value, timeout=self.timeout)
                else:
                    cache.add(query_key, value, timeout=self.timeout)
        except Exception as exc:
            _engine.warn(f"ORM cache: storing a result failed ({exc!r})")
            return
        if config.CACHE_MACHINE_COMPAT:
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

    def __iter__(self) -> Iterator[Any]:
        iterator = self.iter_function if self.iter_function is not None else super().__iter__
        # select_for_update(): a cached answer would skip taking the row locks.
        if self.timeout == config.NO_CACHE or getattr(
            getattr(self.queryset, "query", None), "select_for_update", False
        ):
            yield from iterator()
            return
        try:
            key_text, tables = self._key_text()
        except EmptyResultSet:
            return
        try:
            key, stamp, entry = _safely("a read", _stamp, cache, self.db, tables, key_text)
        except _Unusable:
            yield from iterator()
            return
        if _is_entry(entry, stamp):
            try:
                objects = _decode(entry[2])
            except Exception as exc:  # a class that moved, a field that changed type...
                log.info("cached result %s could not be read (%r): querying", key, exc)
            else:
                log.debug("cache hit: %s", key)
                yield from objects
                return
        if config.FETCH_BY_ID and hasattr(self.queryset, "fetch_by_id"):
            iterator = self.queryset.fetch_by_id
        to_cache: list[Any] | None = []
        self._rows = rows = []
        limit = config.MAX_ROWS
        for obj in iterator():
            obj.from_cache = False
            if to_cache is not None:
                to_cache.append(obj)
                if isinstance(obj, models.Model):
                    rows.append(_row(obj))
                if len(to_cache) > limit:
                    # Too big to cache: keep streaming (``.iterator()``) without holding it all.
                    to_cache = self._rows = None
                    rows = []
            yield obj
        if to_cache is not None and (to_cache or config.CACHE_EMPTY_QUERYSETS):
            self.cache_objects(to_cache, key, stamp, present=entry is not None)


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
        if not all(type(o) is str for o in order_by):
            return None
        where = _node(query.where, alias)
    except (_NotSimple, TypeError, AttributeError):
        return None
    parts = (model._meta.label, where, order_by, query.default_ordering, query.standard_ordering)
    return "fp:" + repr((*parts, query.low_mark, query.high_mark))


class CachingQuerySet(models.query.QuerySet):
    _default_timeout_pickle_key = "__DEFAULT_TIMEOUT__"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.timeout = DEFAULT_TIMEOUT
        self._iterable_class = CachingModelIterable

    def __getstate__(self) -> dict[str, Any]:
        """Pickle a DEFAULT_TIMEOUT as a marker: another process has another DEFAULT_TIMEOUT."""
        state = dict(self.__dict__)
        if self.timeout == DEFAULT_TIMEOUT:
            state["timeout"] = self._default_timeout_pickle_key
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.timeout == self._default_timeout_pickle_key:
            self.timeout = DEFAULT_TIMEOUT

    def _sql(self) -> tuple[str, tuple]:
        clone = self.query.clone()
        sql, params = clone.get_compiler(using=self.db).as_sql()
        return sql, tuple(params)

    def _cache_identity(self) -> tuple[str, frozenset[str]]:
        """(what identifies this query, the tables it reads). A simple query on one table is
        identified by its structure (compiling SQL costs more than the rest of a hit); any other
        by ``repr`` of its SQL and parameters, not Cache Machine's ``sql % params``: ``IN (%s)``
        with ``"a, b"`` and ``IN (%s, %s)`` with ``"a"``, ``"b"`` must not share a key."""
        fingerprint = _fingerprint(self.query)
        if fingerprint is not None:
            return fingerprint, _engine.model_tables(self.model)
        sql, params = self._sql()
        return repr((sql, params)), _engine.tables_in(sql) | _engine.model_tables(self.model)

    def flush_key(self) -> str:
        return flush_key(self.query_key())

    def query_key(self) -> str:
        sql, params = self._sql()
        return sql % params

    def iterator(self, chunk_size: int | None = None) -> Any:
        if self.timeout == config.NO_CACHE or not issubclass(self._iterable_class, CachingModelIterable):
            return super().iterator(chunk_size) if chunk_size else super().iterator()
        return self._iterable_class(self)

    def fetch_by_id(self) -> Iterator[Any]:
        """Two queries: the ids, then the objects not already cached by id. Objects are cached by
        id (with the table generations), so each is stored once however many queries name it."""
        vals = self.values_list("pk", *list(self.query.extra.keys()))
        pks = [val[0] for val in vals]
        keys = {byid(self.model._cache_key(pk, self.db)): pk for pk in pks}
        tables = _engine.model_tables(self.model)
        cached_objects: dict[str, Any] = {}
        stamp: tuple | None = None
        try:
            _, stamp, _ = _safely("a read", _stamp, cache, self.db, tables, None)
            with _engine.busy():
                stored = _safely("a read", cache.get_many, list(keys))
            for key, entry in stored.items():
                if _is_entry(entry, stamp):
                    cached_objects[key] = _decode(entry[2])[0]
        except _Unusable:
            stamp = None
        missed = [pk for key, pk in keys.items() if key not in cached_objects]
        new: dict[str, Any] = {}
        if missed:
            others = list(self.fetch_missed(missed))
            new = {byid(o): o for o in others}
            if stamp is not None:
                values = {k: (_MAGIC, stamp, _encode(type(o), [_row(o)])) for k, o in new.items()}
                try:
                    with _engine.busy():
                        cache.set_many(values)
                except Exception as exc:
                    _engine.warn(f"ORM cache: storing objects failed ({exc!r})")
        objects = {o.pk: o for o in list(cached_objects.values()) + list(new.values())}
        for pk in pks:
            if pk in objects:  # a row deleted between the two queries
                yield objects[pk]

    def fetch_missed(self, pks: list[Any]) -> Any:
        others = self.all()
        others.query.clear_limits()
        others = others.order_by().filter(pk__in=pks)
        if hasattr(others, "no_cache"):
            others = others.no_cache()
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
    def __init__(self, *args: Any, **kw: Any) -> None:
        timeout = kw.pop("timeout", DEFAULT_TIMEOUT)
        super().__init__(*args, **kw)
        self.timeout = timeout

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__
        if self.timeout == config.NO_CACHE:
            yield from iterator()
        else:
            yield from CachingModelIterable(self, iter_function=iterator, timeout=self.timeout)

    def query_key(self) -> str:
        return self.raw_query % tuple(self.params or [])

    def _cache_identity(self) -> tuple[str, frozenset[str]]:
        params = self.params
        params = tuple(params) if isinstance(params, (list, tuple)) else params
        identity = repr((self.raw_query, params))
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
