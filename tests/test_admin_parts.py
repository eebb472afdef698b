"""The admin page's parts that need no browser: how stored bytes are described (never
unpickled), the SVG charts (text escaped), the samples over time, the LRU's listing, and the
memcached key browser against a real server and hostile ones (bounded, one deadline)."""

from __future__ import annotations

import json
import os
import pickle
import time
import zlib

import pytest
from django.core.cache import caches

from django_rustcache import _core
from django_rustcache.contrib.admin import browse, charts, history
from tests.conftest import make_lru


class Boom:
    def __reduce__(self):
        return (os.system, ("echo unpickled > /dev/null",))


@pytest.mark.parametrize(
    ("data", "kind", "shown"),
    [
        (b"42", "integer", "42"),
        (b"-7", "integer", "-7"),
        (pickle.dumps(Boom(), protocol=5), "pickle, protocol 5 (not unpickled here)", None),
        (zlib.compress(b"x" * 100), "zlib-compressed", None),
        (b"\x28\xb5\x2f\xfd" + b"\0" * 8, "zstd-compressed", None),
        (json.dumps({"a": [1, 2]}).encode(), "JSON", '{"a": [1, 2]}'),
        ("plain words, été".encode(), "text", "plain words, été"),
        (b"\x00\x01\xff\xfe", "binary", "00 01 ff fe"),
    ],
)
def test_stored_bytes_are_described_and_shown_only_as_text_or_hex(data, kind, shown):
    got_kind, got_text = browse.describe(data)
    assert got_kind == kind
    if shown is not None:
        assert got_text == shown
    if kind.startswith("pickle"):
        # A hex dump of the bytes, not anything loaded from them.
        assert got_text.startswith(data[:16].hex(" "))


def test_a_long_value_is_shown_in_part():
    kind, text = browse.describe(b"a" * 10_000)
    assert kind == "text" and len(text) == browse.PREVIEW + 1 and text.endswith("…")
    kind, text = browse.describe(bytes(range(256)) * 8)
    assert kind == "binary" and text.endswith("…") and text.count("\n") == 16


def test_charts_escape_their_text_and_say_when_there_is_nothing_to_draw():
    hostile = "<script>alert(1)</script>"
    svg = charts.line(hostile, [(1000.0, 0.5), (1010.0, 0.25)], lambda v: f"{v:.0%}", top=1.0)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<polyline" in svg and "now 25%" in svg
    assert "Not enough samples" in charts.line("t", [(1.0, 1.0)], str)
    bars = charts.histogram("h", [(64e-6, 3), (128e-6, 1), (1.5e-3, 7)])
    assert bars.count("<rect") == 4  # the frame and three bars
    assert "≤ 1.5 ms: 7 calls" in bars
    assert "No timed calls" in charts.histogram("h", [])


def test_a_value_above_the_top_is_drawn_at_the_top():
    svg = charts.line("t", [(0.0, 0.0), (1.0, 5.0)], str, top=1.0)
    points = svg.split('points="')[1].split('"')[0].split()
    assert float(points[1].split(",")[1]) == charts.TOP


@pytest.mark.parametrize(("seconds", "text"), [(5e-7, "500 ns"), (6.4e-5, "64 µs"), (1.5e-3, "1.5 ms"), (2.0, "2.0 s")])
def test_durations_read_as_people_read_them(seconds, text):
    assert charts.seconds(seconds) == text


def test_samples_give_the_hit_ratio_and_calls_per_second_between_them():
    cache = caches["default"]
    cache.clear()
    cache.reset_stats()
    history.sample()
    cache.set("a", 1)
    cache.get("a")
    cache.get_many(["a", "b", "c"])
    time.sleep(0.05)
    history.sample()
    series = history.series("default")
    # 2 keys found of 4 looked up; 4 calls (clear was before the first sample).
    assert series["hit_ratio"][-1][1] == pytest.approx(0.5)
    t0 = history._samples["default"][-2][0]
    t1 = history._samples["default"][-1][0]
    assert series["ops"][-1][1] == pytest.approx(3 / (t1 - t0))
    # A reset between samples: that interval is left out, not drawn as a negative rate.
    cache.reset_stats()
    history.sample()
    assert len(history.series("default")["ops"]) == len(series["ops"])


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [("*", "", True), (":1:user*", ":1:user:9", True), ("h[^e]llo", "hello", False), ("a\\*b", "a*b", True)],
)
def test_glob_matches_as_redis_does(pattern, text, expected):
    assert _core.glob_match(pattern, text) is expected


@pytest.mark.parametrize("mode", ["object", "pickled"])
def test_the_lru_listing_is_most_recent_first_and_never_promotes(mode):
    cache = make_lru(mode)
    for key in ("one", "two", "three"):
        cache.set(key, key.upper())
    cache.set("gone", 1, timeout=0.01)
    time.sleep(0.03)
    store = cache._cache

    def order() -> list[str]:
        found, matched = store.entries("*", 0, 10)
        assert matched == len(found) == 3  # the expired entry is not listed
        return [k for k, _, _ in found]

    assert order() == [cache.make_key(k) for k in ("three", "two", "one")]
    # Listing again lists the same order: being listed did not make an entry recent...
    assert order() == [cache.make_key(k) for k in ("three", "two", "one")]
    # ...as a read does.
    cache.get("one")
    assert order() == [cache.make_key(k) for k in ("one", "three", "two")]
    found, _ = store.entries(cache.make_key("two"), 0, 1)
    if mode == "pickled":
        assert isinstance(found[0][2], bytes) and pickle.loads(found[0][2]) == "TWO"
    else:
        assert found[0][2] == "TWO"
    rows, following, _ = browse.LruBrowser(store).page("*t*", "")
    assert [r.text for r in rows] == [cache.make_key("three"), cache.make_key("two")] and following is None
    assert browse.LruBrowser(store).delete([cache.make_key("two").encode()]) == 1
    assert cache.get("two") is None


def test_the_memcached_browser_lists_shows_and_deletes_keys(memcached_server):
    memcached_server.raw(b"flush_all\r\n")
    for i in range(3):
        memcached_server.raw(b"set admin:%d 0 600 5\r\nhello\r\n" % i)
    b = browse.MemcachedBrowser([memcached_server.location], sasl=False)
    rows, following, note = b.page("admin:*", "")
    assert sorted(r.text for r in rows) == ["admin:0", "admin:1", "admin:2"]
    assert following is None and "3 matched" in note
    assert all(r.size and 0 < r.ttl <= 600 for r in rows)
    d = b.details(b"admin:1")
    assert d is not None and d.format == "text" and d.preview == "hello" and d.length == 5
    assert b.details(b"admin:9") is None
    assert b.delete([b"admin:1", b"admin:9"]) == 1
    assert sorted(r.text for r in b.page("admin:*", "")[0]) == ["admin:0", "admin:2"]


def test_a_key_that_could_split_a_command_line_is_refused_before_any_byte_is_sent():
    from tests.servers import SilentServer

    silent = SilentServer()
    try:
        b = browse.MemcachedBrowser([silent.location], sasl=False)
        for key in (b"a\r\nflush_all", b"two words", b"", b"k" * 251):
            with pytest.raises(ValueError, match="not a memcached key"):
                b.delete([b"ok", key])
            with pytest.raises(ValueError, match="not a memcached key"):
                b.details(key)
        assert silent.connections_since_last_asked() == 0
    finally:
        silent.close()


def test_a_silent_or_trickling_server_fails_the_listing_within_its_deadline(monkeypatch):
    from tests.servers import FakeReplyServer, SilentServer

    monkeypatch.setattr(browse, "DEADLINE", 0.5)
    silent, trickle = SilentServer(), FakeReplyServer(b"key=a exp=-1 size=1\n", trickle=0.05)
    try:
        for server in (silent, trickle):
            b = browse.MemcachedBrowser([server.location], sasl=False)
            started = time.monotonic()
            with pytest.raises(browse.Unlistable, match="did not answer within"):
                b.page("*", "")
            assert time.monotonic() - started < 1.5
    finally:
        silent.close()
        trickle.close()


def test_a_hostile_length_is_read_only_up_to_its_bound(monkeypatch):
    from tests.servers import FakeReplyServer

    monkeypatch.setattr(browse, "DEADLINE", 0.5)
    liar = FakeReplyServer(b"VA 99999999999 s1 t-1 f0\r\nabc")
    try:
        b = browse.MemcachedBrowser([liar.location], sasl=False)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            b.details(b"k")
        assert time.monotonic() - started < 1.5
    finally:
        liar.close()


def test_a_server_that_does_not_list_says_so():
    from tests.servers import FakeReplyServer

    refuses = FakeReplyServer(b"CLIENT_ERROR lru crawler disabled\r\nERROR\r\n")
    try:
        with pytest.raises(browse.Unlistable, match="does not list its keys"):
            browse.MemcachedBrowser([refuses.location], sasl=False).page("*", "")
    finally:
        refuses.close()
    with pytest.raises(browse.Unlistable, match="SASL"):
        browse.MemcachedBrowser(["127.0.0.1:1"], sasl=True).page("*", "")


def test_the_redis_browser_pages_without_losing_or_repeating_keys(redis_server):
    from django_rustcache.redis import RedisCache

    cache = RedisCache(redis_server.location, {})
    cache.clear()
    cache.set_many({f"page:{i:03}": i for i in range(123)})
    b = browse.browser_for(cache)
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        rows, following, _ = b.page(":1:page:*", cursor)
        assert len(rows) <= browse.PAGE
        seen += [r.text for r in rows]
        pages += 1
        if following is None:
            break
        cursor = following
    assert sorted(seen) == sorted(cache.make_key(f"page:{i:03}") for i in range(123))
    assert pages == 3
    # The browser's calls are the alias's: no other set of metrics appears for them.
    assert all(snap["alias"] for snap in _core.metrics_snapshots())
    d = b.details(cache.make_key("page:007").encode())
    assert d.row.type == "string" and d.format == "integer" and d.preview == "7"
    assert b.delete([cache.make_key("page:007").encode()]) == 1
    assert cache.get("page:007") is None


@pytest.mark.topology
def test_the_redis_browser_covers_every_primary_of_a_cluster(redis_cluster):
    from django_rustcache.redis import RedisClusterCache

    cache = RedisClusterCache(redis_cluster.location, {"KEY_PREFIX": "admin-browse"})
    cache.set_many({f"n{i}": i for i in range(70)})
    b = browse.browser_for(cache)
    assert len(cache._cache.nodes()) == 3
    seen: list[str] = []
    cursor = ""
    while True:
        rows, following, note = b.page("admin-browse:*", cursor)
        seen += [r.text for r in rows]
        if following is None:
            break
        cursor = following
    assert "over 3 node(s)" in note
    assert sorted(seen) == sorted(cache.make_key(f"n{i}") for i in range(70))
    # Keys on several nodes deleted in one call (split by node).
    doomed = [cache.make_key(f"n{i}").encode() for i in range(10)]
    assert b.delete(doomed) == 10
    assert cache.get_many([f"n{i}" for i in range(12)]) == {"n10": 10, "n11": 11}
