"""Serializers and compressors of the redis backend: what the predecessors' settings select, and
that the bytes are what they write and read (checked against django-redis itself)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import pickle
import threading
import time
import zlib

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.conftest import make_redis

LONG = "compress me " * 40  # well past every minimum length
VALUES = {
    "int": 42,
    "neg": -7,
    "str": "text",
    "long": LONG,
    "list": [1, "two", 3.5],
    "dict": {"a": [1, 2]},
    "none": None,
}

MAGIC = {
    "zlib": b"\x78",
    "gzip": b"\x1f\x8b",
    "lzma": b"\xfd7zXZ\x00",
    "lz4": b"\x04\x22\x4d\x18",
    "zstd": b"\x28\xb5\x2f\xfd",
    "bz2": b"BZh",
}
DJANGO_REDIS_COMPRESSORS = {
    "zlib": "django_redis.compressors.zlib.ZlibCompressor",
    "gzip": "django_redis.compressors.gzip.GzipCompressor",
    "lzma": "django_redis.compressors.lzma.LzmaCompressor",
    "lz4": "django_redis.compressors.lz4.Lz4Compressor",
    "zstd": "django_redis.compressors.zstd.ZStdCompressor",
}
DJANGO_REDIS_SERIALIZERS = {
    "pickle": "django_redis.serializers.pickle.PickleSerializer",
    "json": "django_redis.serializers.json.JSONSerializer",
    "msgpack": "django_redis.serializers.msgpack.MSGPackSerializer",
}


def raw_client(server):
    redis = pytest.importorskip("redis")
    return redis.Redis(port=server.port)


@pytest.mark.parametrize(
    ("serializer", "compressor"),
    [(s, None) for s in DJANGO_REDIS_SERIALIZERS]
    + [("pickle", c) for c in DJANGO_REDIS_COMPRESSORS]
    + [("json", "zlib"), ("msgpack", "zstd"), ("json", "lz4")],
)
def test_django_redis_reads_ours_and_we_read_theirs(redis_server, serializer, compressor):
    pytest.importorskip("django_redis")
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    if compressor == "lz4":
        pytest.importorskip("lz4")
    if compressor == "zstd":
        pytest.importorskip("pyzstd")
    from django_redis.cache import RedisCache as DjangoRedis

    options = {"SERIALIZER": DJANGO_REDIS_SERIALIZERS[serializer]}
    if compressor:
        options["COMPRESSOR"] = DJANGO_REDIS_COMPRESSORS[compressor]
    prefix = f"fmt-{serializer}-{compressor}"
    theirs = DjangoRedis(redis_server.location, {"KEY_PREFIX": prefix, "OPTIONS": options})
    ours = make_redis(redis_server.location, KEY_PREFIX=prefix, OPTIONS=options)

    theirs.set_many(VALUES)
    assert ours.get_many(list(VALUES)) == VALUES
    ours.set_many({f"o-{k}": v for k, v in VALUES.items()})
    assert theirs.get_many([f"o-{k}" for k in VALUES]) == {f"o-{k}": v for k, v in VALUES.items()}
    # Both sides store ints as digits, so INCR works across them.
    assert theirs.incr("o-int") == 43
    assert ours.incr("int") == 43

    raw = raw_client(redis_server)
    stored = raw.get(ours.make_key("o-long"))
    if compressor:
        assert stored.startswith(MAGIC[compressor]), stored[:8]
        assert len(stored) < len(LONG) / 4
    assert raw.get(ours.make_key("o-int")) == b"43"


def test_each_compressor_by_short_name_with_level_and_minimum(redis_server):
    raw = raw_client(redis_server)
    readers = {
        "zlib": zlib.decompress,
        "gzip": gzip.decompress,
        "lzma": lzma.decompress,
        "bz2": bz2.decompress,
    }
    for name, magic in MAGIC.items():
        cache = make_redis(redis_server.location, OPTIONS={"COMPRESSOR": name, "COMPRESS_MIN_LEN": 100})
        cache.set("long", LONG)
        cache.set("short", "x" * 50)  # pickled: under 100 bytes
        stored = raw.get(cache.make_key("long"))
        assert stored.startswith(magic), name
        if name in readers:  # Python's own module reads it
            assert pickle.loads(readers[name](stored)) == LONG
        assert raw.get(cache.make_key("short")).startswith(b"\x80"), f"{name}: short value compressed"
        assert cache.get("long") == LONG
        assert cache.get("short") == "x" * 50
    # The level is honoured: zlib level 1 vs 9 on compressible data of some variety.
    data = [f"item {i} {i * i % 97}" for i in range(3000)]
    sizes = {}
    for level in (1, 9):
        cache = make_redis(redis_server.location, OPTIONS={"COMPRESSOR": "zlib", "COMPRESS_LEVEL": level})
        cache.set("data", data)
        sizes[level] = len(raw.get(cache.make_key("data")))
        assert cache.get("data") == data
    assert sizes[9] < sizes[1]


def test_python_reads_lz4_and_zstd_frames_we_write(redis_server):
    lz4_frame = pytest.importorskip("lz4.frame")
    pyzstd = pytest.importorskip("pyzstd")
    raw = raw_client(redis_server)
    for name, inflate in (("lz4", lz4_frame.decompress), ("zstd", pyzstd.decompress)):
        cache = make_redis(redis_server.location, OPTIONS={"COMPRESSOR": name})
        big = [LONG, list(range(100_000))]  # several LZ4 blocks
        cache.set("big", big)
        assert pickle.loads(inflate(raw.get(cache.make_key("big")))) == big


def test_values_written_under_another_compressor_still_read(redis_server):
    before = make_redis(redis_server.location, KEY_PREFIX="switch", OPTIONS={"COMPRESSOR": "zlib"})
    before.set("k", LONG)
    for name in ("lz4", "none"):
        after = make_redis(redis_server.location, KEY_PREFIX="switch", OPTIONS={"COMPRESSOR": name})
        assert after.get("k") == LONG
    # A plain pickled value whose bytes are not a valid stream is never mangled.
    plain = make_redis(redis_server.location, KEY_PREFIX="switch")
    plain.set("bytes", b"\x78\x9c not really zlib")
    assert plain.get("bytes") == b"\x78\x9c not really zlib"


def test_django_redis_cache_options(redis_server):
    """django-redis-cache: SERIALIZER_CLASS / COMPRESSOR_CLASS with their kwargs. Its zlib
    compressor compresses every value (and cannot read an uncompressed one), so ours does too."""
    raw = raw_client(redis_server)
    cache = make_redis(
        redis_server.location,
        OPTIONS={
            "SERIALIZER_CLASS": "redis_cache.serializers.JSONSerializer",
            "COMPRESSOR_CLASS": "redis_cache.compressors.ZLibCompressor",
            "COMPRESSOR_CLASS_KWARGS": {"level": 9},
        },
    )
    cache.set("short", "s")
    stored = raw.get(cache.make_key("short"))
    assert json.loads(zlib.decompress(stored)) == "s"  # what django-redis-cache's reader does
    assert cache.get("short") == "s"
    cache.set("n", 5)
    assert raw.get(cache.make_key("n")) == b"5"
    bz = make_redis(redis_server.location, OPTIONS={"COMPRESSOR_CLASS": "redis_cache.compressors.BZip2Compressor"})
    bz.set("v", {"x": 1})
    assert pickle.loads(bz2.decompress(raw.get(bz.make_key("v")))) == {"x": 1}


class UpperJSON:
    """A serializer of Django's kind (RedisCache's ``serializer`` option): it gets every value."""

    calls = 0

    def dumps(self, value):
        UpperJSON.calls += 1
        return json.dumps({"v": value}).encode()

    def loads(self, data):
        return json.loads(data)["v"]


class TaggedSerializer:
    """A serializer of django-redis's kind, made with ``options=``."""

    def __init__(self, options):
        self.tag = options.get("TAG", "t").encode()

    def dumps(self, value):
        return self.tag + b":" + json.dumps(value).encode()

    def loads(self, data):
        return json.loads(data.split(b":", 1)[1])


class ReversingCompressor:
    """A compressor of the user's own (django-redis's kind): run in Python around the serializer."""

    def __init__(self, options):
        pass

    def compress(self, data):
        return b"REV" + data[::-1]

    def decompress(self, data):
        if not data.startswith(b"REV"):
            raise ValueError("not ours")
        return data[3:][::-1]


def test_custom_serializers_and_compressors(redis_server):
    raw = raw_client(redis_server)
    django_style = make_redis(redis_server.location, OPTIONS={"serializer": UpperJSON})
    django_style.set("n", 5)
    assert raw.get(django_style.make_key("n")) == b'{"v": 5}'  # even ints go through it, as in Django
    assert django_style.get("n") == 5
    assert UpperJSON.calls == 1

    dr_style = make_redis(
        redis_server.location,
        OPTIONS={
            "SERIALIZER": f"{__name__}.TaggedSerializer",
            "TAG": "x",
            "COMPRESSOR": f"{__name__}.ReversingCompressor",
        },
    )
    dr_style.set("d", {"a": 1})
    assert raw.get(dr_style.make_key("d")) == b"REV" + b'x:{"a": 1}'[::-1]
    assert dr_style.get("d") == {"a": 1}
    dr_style.set("n", 7)
    assert raw.get(dr_style.make_key("n")) == b"7"
    assert dr_style.incr("n") == 8

    # Django's own serializer by path is the native format.
    native = make_redis(
        redis_server.location, OPTIONS={"serializer": "django.core.cache.backends.redis.RedisSerializer"}
    )
    native.set("n", 3)
    assert raw.get(native.make_key("n")) == b"3"


def test_a_django_redis_compressor_subclass_keeps_its_settings(redis_server):
    pytest.importorskip("django_redis")
    raw = raw_client(redis_server)
    cache = make_redis(redis_server.location, OPTIONS={"COMPRESSOR": f"{__name__}.EagerZlib"})
    cache.set("k", "abc")  # a 19-byte pickle: over EagerZlib's min_length of 5
    stored = raw.get(cache.make_key("k"))
    assert pickle.loads(zlib.decompress(stored)) == "abc"
    assert cache._cache.dumps("abc") == stored


def _eager_zlib():
    try:
        from django_redis.compressors.zlib import ZlibCompressor
    except ImportError:
        return None

    class EagerZlib(ZlibCompressor):
        min_length = 5
        preset = 1

    EagerZlib.__module__ = __name__
    return EagerZlib


EagerZlib = _eager_zlib()


def test_bad_format_options_are_clear_errors(redis_server):
    for options in (
        {"COMPRESSOR": "no.such.Compressor"},
        {"SERIALIZER": "no.such.Serializer"},
        {"COMPRESSOR": "zlib", "COMPRESS_LEVEL": "high"},
    ):
        cache = make_redis(redis_server.location, OPTIONS=options)
        with pytest.raises(ImproperlyConfigured):
            cache.get("k")


def test_compression_runs_without_the_gil(redis_server):
    """While one thread compresses a large value (xz at its highest level takes a while), the
    others keep running Python."""
    cache = make_redis(redis_server.location, OPTIONS={"COMPRESSOR": "lzma", "COMPRESS_LEVEL": 9})
    value = bytes(range(256)) * 4 + b"".join(i.to_bytes(4, "little") for i in range(2_000_000))
    ticks: list[float] = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.05)
    started = time.perf_counter()
    encoded = cache._cache.dumps(value)
    ended = time.perf_counter()
    done.set()
    ticker.join()
    assert lzma.decompress(encoded) == pickle.dumps(value, 5)
    span = ended - started
    assert span > 0.05, "the value compressed too fast to tell"
    during = [t for t in ticks if started + span * 0.1 < t < ended - span * 0.1]
    assert len(during) >= 10, f"only {len(during)} ticks of another thread in {span:.2f}s of compression"
