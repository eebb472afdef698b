"""Which serializer and compressor a redis cache uses, from the OPTIONS of any predecessor.

Django's RedisCache (``serializer``), django-redis (``SERIALIZER``, ``COMPRESSOR``) and
django-redis-cache (``SERIALIZER_CLASS``/``_KWARGS``, ``COMPRESSOR_CLASS``/``_KWARGS``) name
their classes by dotted path. The ones they ship map to our native formats (pickle in the core,
compression in Rust with the GIL released), byte-compatible with what they write. Any other class
is the user's own and is called as its predecessor would call it.
"""

from __future__ import annotations

import functools
import json
import pickle
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.module_loading import import_string

__all__ = ["FORMAT_OPTIONS", "ValueFormat", "value_format"]

# The OPTIONS that choose the value format.
FORMAT_OPTIONS = frozenset(
    {
        "serializer", "SERIALIZER", "SERIALIZER_CLASS", "SERIALIZER_CLASS_KWARGS",
        "COMPRESSOR", "COMPRESSOR_CLASS", "COMPRESSOR_CLASS_KWARGS",
        "COMPRESS_LEVEL", "compress_level", "COMPRESS_MIN_LEN", "min_compress_len",
    }
)  # fmt: skip

# Serializers the predecessors ship (and our short names) -> our native serializer.
SERIALIZERS = {
    "pickle": "pickle",
    "django.core.cache.backends.redis.RedisSerializer": "pickle",
    "django_redis.serializers.pickle.PickleSerializer": "pickle",
    "redis_cache.serializers.PickleSerializer": "pickle",
    "json": "json",
    "django_redis.serializers.json.JSONSerializer": "json",
    "redis_cache.serializers.JSONSerializer": "json",
    "msgpack": "msgpack",
    "django_redis.serializers.msgpack.MSGPackSerializer": "msgpack",
    "redis_cache.serializers.MSGPackSerializer": "msgpack",
}

# Compressors the predecessors ship -> (format, level, minimum length), as each writes: django-redis
# compresses values longer than its class's ``min_length``; django-redis-cache compresses all.
COMPRESSORS: dict[str, tuple[str, int, int] | None] = {
    "none": None,
    "django_redis.compressors.identity.IdentityCompressor": None,
    "redis_cache.compressors.NoopCompressor": None,
    "zlib": ("zlib", 6, 15),
    "gzip": ("gzip", 9, 15),
    "lzma": ("lzma", 4, 100),
    "lz4": ("lz4", 0, 15),
    "zstd": ("zstd", 3, 15),
    "bz2": ("bz2", 9, 15),
    "django_redis.compressors.zlib.ZlibCompressor": ("zlib", 6, 15),
    "django_redis.compressors.gzip.GzipCompressor": ("gzip", 9, 15),
    "django_redis.compressors.lzma.LzmaCompressor": ("lzma", 4, 100),
    "django_redis.compressors.lz4.Lz4Compressor": ("lz4", 0, 15),
    "django_redis.compressors.zstd.ZStdCompressor": ("zstd", 3, 15),
    "redis_cache.compressors.ZLibCompressor": ("zlib", 6, 0),
    "redis_cache.compressors.BZip2Compressor": ("bz2", 9, 0),
}


@dataclass(frozen=True)
class ValueFormat:
    """What the core needs: None for pickle, else ``(dumps, loads)``; whether plain ints are
    stored as digits (everyone but Django's own ``serializer`` option); the native compressor."""

    serializer: tuple[Any, Any] | None = None
    ints_as_digits: bool = True
    compressor: str | None = None
    compress_level: int | None = None
    compress_min_len: int = 15

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "serializer": self.serializer,
            "ints_as_digits": self.ints_as_digits,
            "compressor": self.compressor,
            "compress_level": self.compress_level,
            "compress_min_len": self.compress_min_len,
        }


def _path(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return f"{spec.__module__}.{spec.__qualname__}"


def _json_dumps(value: Any) -> bytes:
    # django-redis's JSONSerializer: DjangoJSONEncoder, Python's default separators.
    return json.dumps(value, cls=DjangoJSONEncoder).encode()


def _native_serializer(name: str) -> tuple[Any, Any] | None:
    if name == "pickle":
        return None
    if name == "json":
        return _json_dumps, json.loads
    try:
        import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints
    except ImportError as e:
        raise ImproperlyConfigured(
            "the msgpack serializer needs the msgpack package: pip install 'django-rustcache[msgpack]'"
        ) from e
    return msgpack.packb, functools.partial(msgpack.unpackb, raw=False)


def load_class(spec: Any, option: str) -> Any:
    if not isinstance(spec, str):
        return spec
    try:
        return import_string(spec)
    except ImportError as e:
        raise ImproperlyConfigured(f"OPTIONS[{option!r}]: cannot import {spec!r}: {e}") from e


def _serializer(options: dict[str, Any]) -> tuple[tuple[Any, Any] | None, bool]:
    """(dumps, loads) or None for pickle; and whether ints are stored as digits."""
    if "serializer" in options:  # Django's RedisCache: its class gets every value.
        spec, option, style = options["serializer"], "serializer", "django"
    elif "SERIALIZER" in options:  # django-redis
        spec, option, style = options["SERIALIZER"], "SERIALIZER", "django-redis"
    elif "SERIALIZER_CLASS" in options:  # django-redis-cache
        spec, option, style = options["SERIALIZER_CLASS"], "SERIALIZER_CLASS", "django-redis-cache"
    else:
        return None, True
    native = SERIALIZERS.get(_path(spec))
    if native is not None:
        return _native_serializer(native), True
    cls = load_class(spec, option)
    if style == "django":
        obj = cls()
        return (obj.dumps, obj.loads), False
    if style == "django-redis":
        obj = cls(options=options)
        return (obj.dumps, obj.loads), True
    obj = cls(**dict(options.get("SERIALIZER_CLASS_KWARGS") or {}))
    return (obj.serialize, obj.deserialize), True


def _native_compressor(cls: Any) -> tuple[str, int, int] | None:
    """For a subclass of a django-redis compressor that only changes ``min_length`` or
    ``preset``: the native format with those values."""
    for base in getattr(cls, "__mro__", ())[1:]:
        native = COMPRESSORS.get(_path(base))
        if native is None or not _path(base).startswith("django_redis."):
            continue
        if "compress" in vars(cls) or "decompress" in vars(cls):
            return None
        fmt, level, min_len = native
        return fmt, int(getattr(cls, "preset", level)), int(getattr(cls, "min_length", min_len))
    return None


def _with_python_compressor(serializer: tuple[Any, Any] | None, comp: Any, protocol: int) -> tuple[Any, Any]:
    """A compressor class of the user's own: run it in Python around the serializer, falling back
    to the raw bytes when it cannot decompress (as django-redis does)."""
    dumps, loads = serializer or (functools.partial(pickle.dumps, protocol=protocol), pickle.loads)

    def packed(value: Any) -> bytes:
        return bytes(comp.compress(dumps(value)))

    def unpacked(data: bytes) -> Any:
        with suppress(Exception):
            data = comp.decompress(data)
        return loads(data)

    return packed, unpacked


def value_format(options: dict[str, Any], pickle_protocol: int) -> ValueFormat:
    """The value format OPTIONS ask for (ImproperlyConfigured if they ask for something we
    cannot do)."""
    serializer, ints_as_digits = _serializer(options)
    level = options.get("compress_level", options.get("COMPRESS_LEVEL"))
    min_len = options.get("min_compress_len", options.get("COMPRESS_MIN_LEN"))
    if "COMPRESSOR" in options:
        spec, option, kwargs = options["COMPRESSOR"], "COMPRESSOR", None
    elif "COMPRESSOR_CLASS" in options:
        spec, option = options["COMPRESSOR_CLASS"], "COMPRESSOR_CLASS"
        kwargs = dict(options.get("COMPRESSOR_CLASS_KWARGS") or {})
    else:
        spec, option, kwargs = None, "", None
    if spec is None or spec is False:
        return ValueFormat(serializer, ints_as_digits)
    path = _path(spec)
    if path in COMPRESSORS:
        native = COMPRESSORS[path]
    else:
        cls = load_class(spec, option)
        native = _native_compressor(cls)
        if native is None:
            comp = cls(**kwargs) if kwargs is not None else cls(options=options)
            return ValueFormat(_with_python_compressor(serializer, comp, pickle_protocol), ints_as_digits)
    if native is None:
        return ValueFormat(serializer, ints_as_digits)
    fmt, default_level, default_min = native
    if kwargs:  # django-redis-cache: ZLibCompressor(level=...), BZip2Compressor(compresslevel=...)
        level = kwargs.get("level", kwargs.get("compresslevel", level))
    try:
        return ValueFormat(
            serializer,
            ints_as_digits,
            fmt,
            int(default_level if level is None else level),
            int(default_min if min_len is None else min_len),
        )
    except (TypeError, ValueError) as e:
        raise ImproperlyConfigured(f"OPTIONS: the compression level and minimum length must be integers: {e}") from e
