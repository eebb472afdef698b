"""The stored form of a cached result: the rows a cursor returned, pickled with nothing of a
model in them (no instance, no model class), and the objects built back from them as Django
builds them."""

from __future__ import annotations

import io
import operator
import pickle
import weakref
from collections.abc import Iterator
from typing import Any

from django.db import models
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.fields.files import FileDescriptor, ImageFileDescriptor
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute

from django_rustcache.orm import _engine, config

# The shape of a stored result: (_MAGIC, stamp, payload), payload a tuple of pickled lists of rows.
_MAGIC = "rustcache-orm:2"


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


def _is_entry(entry: Any, stamp: tuple[Any, ...]) -> bool:
    return type(entry) is tuple and len(entry) == 3 and entry[0] == _MAGIC and entry[1] == stamp


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


# --- building objects from stored rows ---------------------------------------------------------

# Descriptors a model may have on a field's attname whose ``__set__`` on a new instance only
# stores the value in its ``__dict__`` (what a plain attribute does).
_PLAIN_SETTERS = (DeferredAttribute, ForeignKeyDeferredAttribute, FileDescriptor, ImageFileDescriptor)
_plain_recipes: dict[tuple[type, tuple[str, ...]], bool] = {}
# The function behind Model.from_db (a classmethod): a model that keeps it builds plainly.
_MODEL_FROM_DB = vars(models.Model)["from_db"].__func__


def _plain_recipe(model: Any, names: tuple[str, ...]) -> bool:
    """Whether ``model.from_db(db, names, values)`` only makes an instance whose ``__dict__`` is
    ``_state`` then ``names`` with their values: Django's ``from_db`` and ``__init__``, every
    name a concrete field's attname in field order, with nothing but storing on assignment."""
    known = _plain_recipes.get((model, names))
    if known is not None:
        return known
    ok = (
        getattr(model.from_db, "__func__", None) is _MODEL_FROM_DB
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


def _builder(model: Any, names: tuple[str, ...], start: int, end: int, annotations: list[Any], queryset: Any) -> Any:
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
                state.fetch_mode = fetch_mode  # type: ignore[attr-defined]  # Django 6.1's; not in django-stubs 5.2
            values = {"_state": state}
            values.update(zip(names, row[start:end], strict=True))
            obj.__dict__ = values
            if peers is not None:
                peers.append(weakref.ref(obj))
                state.peers = peers  # type: ignore[attr-defined]  # Django 6.1's; not in django-stubs 5.2
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
