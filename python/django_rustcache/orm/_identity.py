"""What a cached result is keyed by: its SQL and parameters, the database, the conversions
Django applies to each column and the time zone; or, for a simple one-table query, its
structure (no compile); and the queries never cached (a random order, the clock)."""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from typing import Any

from django.db import models
from django.db.models.expressions import Col
from django.db.models.lookups import Lookup
from django.db.models.sql.datastructures import BaseTable
from django.db.models.sql.query import Query
from django.db.models.sql.where import WhereNode

_SIMPLE = (str, int, float, bool, type(None))
# Field attributes that name or count a field rather than shape the values it converts.
_NOT_SHAPING = frozenset({"creation_counter", "verbose_name", "help_text", "_rustcache_identity"})


def _field_identity(field: Any) -> tuple[Any, ...]:
    """What a field's conversion of database values depends on: its class and its plain
    settings (``decimal_places``, a custom field's options...). A model's field keeps it."""
    known: tuple[Any, ...] | None = field.__dict__.get("_rustcache_identity")
    if known is not None:
        return known
    cls = type(field)
    settings_ = tuple(sorted((k, v) for k, v in vars(field).items() if type(v) in _SIMPLE and k not in _NOT_SHAPING))
    identity = (cls.__module__, cls.__qualname__, settings_)
    if getattr(field, "model", None) is not None:
        field.__dict__["_rustcache_identity"] = identity
    return identity


def _callable_identity(f: Any) -> tuple[Any, ...]:
    f = getattr(f, "__func__", f)
    return (getattr(f, "__module__", None), getattr(f, "__qualname__", None) or type(f).__qualname__)


def _converters_identity(compiler: Any) -> tuple[Any, ...]:
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


def _convert(rows: Any, converters: dict[int, Any], connection: Any) -> list[tuple[Any, ...]]:
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
