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
``config.*``) are looked up when used: each read takes ``cache`` as it stands then.

The parts: ``_identity`` (what a result is keyed by), ``_stored`` (the stored form, and the
objects built back from it), ``_cache`` (one read through the cache, the compiler patched to
read through it), ``_engine`` (generations, invalidation, transactions).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, cast

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import EmptyResultSet
from django.db import connections, models
from django.db.models import signals
from django.db.models.query import ModelIterable, RawQuerySet
from django.utils import encoding

from django_rustcache.orm import _engine, _stored, config
from django_rustcache.orm import stats as _stats
from django_rustcache.orm._cache import (
    _PRESENT,
    _armed,
    _checked,
    _lookup,
    _raw_execute,
    _Read,
    _reading,
    _safely,
    _stamp,
    _Unusable,
)
from django_rustcache.orm._identity import (
    _convert,
    _fingerprint,
    _fingerprint_key_text,
    _model_late_converters,
    _split,
    _sql_key_text,
)
from django_rustcache.orm._stored import _plain_build
from django_rustcache.orm.config import cache
from django_rustcache.orm.invalidation import FlushListBusy, byid, flush_key, invalidator, make_key

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


if TYPE_CHECKING:  # generic in django-stubs only (Django's own classes take no parameters)
    _ModelIterable = ModelIterable[Any]
    _RawQuerySet = RawQuerySet[Any]
else:
    _ModelIterable = ModelIterable
    _RawQuerySet = RawQuerySet


class CachingModelIterable(_ModelIterable):
    """Django's ModelIterable, whose query reads its rows through the cache: current stored
    rows when the tables' generations say so, else the database's (stored afterwards). Every
    object is built by Django's own code; ``from_cache`` says where its row came from."""

    queryset: CachingQuerySet

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
        self.read = read = _Read(self.timeout, cache)
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

    def _by_structure(self, read: _Read) -> list[Any] | None:
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
        if model is None:
            return None
        names = tuple(f.attname for f in model._meta.concrete_fields)
        key_text = _fingerprint_key_text(fingerprint, model, conn)
        # The rows' shape is checked by building (each row unpacked into its names), so the
        # lookup does not check it first.
        read.found = found = _lookup(read, conn.alias, key_text, _engine.model_tables(model))
        read.preset = True
        if found is None or type(found[1]) is not list:
            return None
        build = _stored._builder(model, names, 0, len(names), [], queryset)
        if build is None:
            _checked(read, found, len(names))
            return None
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
        _stats.read("hit", None, None, conn.alias, model, query)
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


class CachingQuerySet(models.query.QuerySet[Any]):
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
        super().__setstate__(state)  # type: ignore[misc]  # Django's; django-stubs omits it
        if self.timeout == self._default_timeout_pickle_key:
            self.timeout = DEFAULT_TIMEOUT

    def _sql(self) -> tuple[str, tuple[Any, ...]]:
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
        query.get_compiler = _armed(query, _Read(self.timeout, cache))  # type: ignore[method-assign]  # for this read
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
        counted: int = cached_with(self, super_count, "count", config.TIMEOUT, _identity=identity)
        return counted

    def cache(self, timeout: Any = DEFAULT_TIMEOUT) -> CachingQuerySet:
        qs = self._clone()
        qs.timeout = timeout
        return qs

    def no_cache(self) -> CachingQuerySet:
        return self.cache(config.NO_CACHE)

    def _clone(self, *args: Any, **kw: Any) -> CachingQuerySet:
        qs: CachingQuerySet = super()._clone(*args, **kw)  # type: ignore[misc]  # Django's; django-stubs omits it
        qs.timeout = self.timeout
        return qs


class CachingManager(models.Manager[Any]):
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

    def raw(  # type: ignore[override]  # also takes the queryset's timeout
        self, raw_query: str, params: Any = (), translations: Any = None, **kwargs: Any
    ) -> CachingRawQuerySet:
        return CachingRawQuerySet(
            raw_query, self.model, params=params, translations=translations, using=self._db, **kwargs
        )

    def cache(self, timeout: Any = DEFAULT_TIMEOUT) -> CachingQuerySet:
        return self.get_queryset().cache(timeout)

    def no_cache(self) -> CachingQuerySet:
        return self.cache(config.NO_CACHE)


class CachingMixin:
    """Inherit from this class to get caching and invalidation helpers."""

    if TYPE_CHECKING:  # the model's, which this is mixed into
        pk: Any
        _state: Any
        _meta: ClassVar[Any]

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


class CachingRawQuerySet(_RawQuerySet):
    """Django's RawQuerySet, whose SQL reads its rows (and their columns) through the cache."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        timeout = kw.pop("timeout", DEFAULT_TIMEOUT)
        super().__init__(*args, **kw)
        self.timeout = timeout

    def iterator(self) -> Iterator[Any]:
        if self.timeout == config.NO_CACHE:
            yield from super().iterator()
            return
        read = _Read(self.timeout, cache)
        query = self.query
        query._execute_query = functools.partial(_raw_execute, query, read, self.model)  # type: ignore[attr-defined]
        try:
            for obj in super().iterator():
                obj.from_cache = read.hit
                yield obj
        finally:
            query.__dict__.pop("_execute_query", None)

    def _clone(self) -> CachingRawQuerySet:
        clone: CachingRawQuerySet = super()._clone()  # type: ignore[misc]  # Django's; django-stubs omits it
        clone.timeout = self.timeout
        return clone

    def using(self, alias: str | None) -> CachingRawQuerySet:
        """Django's, keeping the class (Django's makes a plain RawQuerySet)."""
        return CachingRawQuerySet(
            self.raw_query,
            model=self.model,
            query=self.query.chain(using=alias),  # type: ignore[arg-type]  # as Django's own using()
            params=self.params,
            translations=self.translations,
            using=alias,
            timeout=self.timeout,
        )

    @property
    def _sql_text(self) -> str:
        sql = self.raw_query  # the SQL as given (django-stubs also allows a RawQuery)
        return sql if isinstance(sql, str) else str(sql)

    def query_key(self) -> str:
        return self._sql_text % tuple(self.params or [])

    def _cache_identity(self) -> tuple[str, frozenset[str]]:
        params = self.params
        params = tuple(params) if isinstance(params, (list, tuple)) else params
        identity = repr((self.db, self.raw_query, params))
        return identity, _engine.tables_in(self._sql_text) | _engine.model_tables(self.model)


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

    __name__: str

    def __init__(self, func: Any) -> None:
        self.func = func
        functools.update_wrapper(cast(Any, self), func)

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
