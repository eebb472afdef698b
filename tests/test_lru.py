"""LRUObjectCache: Django's cache contract, both storage modes, and what Django's suite leaves out."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time

import pytest
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache

from tests.conftest import make_lru


class Boom(Exception):
    pass


def test_backend_is_reachable_through_caches_setting():
    from django_rustcache.lru import LRUObjectCache

    assert isinstance(caches["default"], LRUObjectCache)
    caches["default"].set("via-settings", 1)
    assert caches["default"].get("via-settings") == 1


def test_return_values_are_djangos(cache):
    assert cache.set("k", "v") is None
    assert cache.add("k", "other") is False
    assert cache.add("new", "n") is True
    assert cache.touch("k") is True
    assert cache.touch("missing") is False
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert cache.has_key("new") is True
    assert cache.has_key("k") is False
    assert cache.set_many({"a": 1, "b": 2}) == []
    assert cache.delete_many(["a", "b"]) is None
    assert cache.clear() is None
    assert cache.get("new") is None


def test_get_default_and_cached_none(cache):
    assert cache.get("missing", "dflt") == "dflt"
    cache.set("none", None)
    assert cache.get("none", "dflt") is None
    assert "none" in cache


def test_incr_decr(cache):
    cache.set("n", 10)
    assert cache.incr("n") == 11
    assert cache.incr("n", 5) == 16
    assert cache.decr("n", 20) == -4
    assert cache.get("n") == -4
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    assert cache.has_key("missing") is False
    cache.set("s", "abc")
    with pytest.raises(TypeError):
        cache.incr("s")
    assert cache.get("s") == "abc"


def test_incr_past_64_bits_and_non_int_numbers(cache):
    cache.set("big", 2**63 - 1)
    assert cache.incr("big") == 2**63
    assert cache.get("big") == 2**63
    cache.set("f", 1.5)
    assert cache.incr("f", 2) == 3.5


def test_incr_keeps_expiry_and_promotes(cache):
    cache.set("n", 1, timeout=1000)
    made = cache.make_key("n")
    before = cache._expire_info[made]
    cache.incr("n")
    assert cache._expire_info[made] == before


def test_timeouts(cache):
    cache.set("forever", 1, timeout=None)
    assert cache._expire_info[cache.make_key("forever")] is None
    cache.set("zero", 1, timeout=0)
    assert cache.get("zero") is None
    cache.set("neg", 1, timeout=-5)
    assert cache.get("neg") is None
    # A zero timeout removes what was there.
    cache.set("gone", 1)
    cache.set("gone", 2, timeout=0)
    assert cache.has_key("gone") is False
    assert cache.add("zero-add", 1, timeout=0) is True
    assert cache.get("zero-add") is None
    cache.set("float", 1, timeout=0.2)
    assert cache.get("float") == 1
    time.sleep(0.3)
    assert cache.get("float") is None
    # DEFAULT_TIMEOUT means the backend's TIMEOUT.
    short = make_lru(TIMEOUT=1)
    short.set("d", 1)
    expires = short._expire_info[short.make_key("d")]
    assert time.time() < expires <= time.time() + 1
    none_default = make_lru(TIMEOUT=None)
    none_default.set("d", 1)
    assert none_default._expire_info[none_default.make_key("d")] is None
    with pytest.raises(TypeError):
        cache.set("bad-timeout", 1, timeout="soon")
    assert cache.has_key("bad-timeout") is False


def test_touch_changes_expiry(cache):
    cache.set("t", 1, timeout=0.2)
    assert cache.touch("t", timeout=None) is True
    time.sleep(0.3)
    assert cache.get("t") == 1
    assert cache.touch("t", timeout=0) is True
    assert cache.has_key("t") is False


def test_key_expiring_between_has_key_and_get(cache):
    cache.set("brief", "v", timeout=0.3)
    assert cache.has_key("brief") is True
    time.sleep(0.4)
    assert cache.get("brief", "gone") == "gone"
    assert cache.has_key("brief") is False
    assert cache.stats()["store"]["expirations"] == 1


def test_get_many_set_many_delete_many(cache):
    cache.set_many({"a": 1, "b": [2], 3: "three"})
    assert cache.get_many(["a", "b", 3, "missing"]) == {"a": 1, "b": [2], 3: "three"}
    assert cache.get_many(iter(["a"])) == {"a": 1}
    cache.delete_many(["a", 3])
    assert cache.get_many(["a", "b", 3]) == {"b": [2]}
    assert cache.get_many([]) == {}
    assert cache.set_many({}) == []


def test_set_many_expiry(cache):
    cache.set_many({"a": 1, "b": 2}, timeout=0.2)
    time.sleep(0.3)
    assert cache.get_many(["a", "b"]) == {}


def test_prefix_version_and_key_function(mode):
    plain = make_lru(mode, LOCATION="shared-keys")
    prefixed = make_lru(mode, LOCATION="shared-keys", KEY_PREFIX="site1")
    v2 = make_lru(mode, LOCATION="shared-keys", VERSION=2)
    custom = make_lru(mode, LOCATION="shared-keys", KEY_FUNCTION=lambda k, p, v: f"custom|{k}")
    dotted = make_lru(mode, LOCATION="shared-keys", KEY_FUNCTION="tests.test_lru.dotted_key_func")
    plain.set("k", "plain")
    prefixed.set("k", "prefixed")
    v2.set("k", "v2")
    custom.set("k", "custom")
    assert [c.get("k") for c in (plain, prefixed, v2, custom)] == ["plain", "prefixed", "v2", "custom"]
    assert plain.get("k", version=2) == "v2"
    assert dotted.get("k") == "custom"
    assert plain._cache.expiry("site1:1:k") is not None
    assert custom.get_many(["k", "x"]) == {"k": "custom"}
    custom.set_many({"m": 1})
    assert plain._cache.expiry("custom|m") is not None
    custom.delete_many(["m"])
    assert custom.has_key("m") is False


def dotted_key_func(key, prefix, version):
    return f"custom|{key}"


def test_subclass_make_key_is_honoured(mode):
    from django_rustcache.lru import LRUObjectCache

    class Upper(LRUObjectCache):
        def make_key(self, key, version=None):
            return f"UP:{key}".upper()

    c = Upper("subclassed", {"OPTIONS": {"PICKLE": mode == "pickled"}})
    c.set("abc", 1)
    assert c._cache.expiry("UP:ABC") is not None
    assert c.get("abc") == 1


def test_incr_decr_version(cache):
    cache.set("k", "v", timeout=1000)
    expires = cache._expire_info[cache.make_key("k")]
    assert cache.incr_version("k") == 2
    assert cache.get("k") is None
    assert cache.get("k", version=2) == "v"
    # The value keeps its expiry when it moves to the new version.
    assert cache._expire_info[cache.make_key("k", version=2)] == expires
    assert cache.decr_version("k", version=2) == 1
    assert cache.get("k") == "v"
    with pytest.raises(ValueError, match="Key 'missing' not found"):
        cache.incr_version("missing")


def test_get_or_set(cache):
    assert cache.get_or_set("g", lambda: [1]) == [1]
    assert cache.get_or_set("g", lambda: [2]) == [1]
    assert cache.get_or_set("n", None) is None
    assert cache.get("n", "dflt") is None


def test_object_mode_stores_live_objects():
    cache = make_lru("object")
    value = {"list": [1]}
    cache.set("obj", value)
    assert cache.get("obj") is value
    assert cache.get_many(["obj"])["obj"] is value
    unpicklable = threading.Lock()
    cache.set("lock", unpicklable)
    assert cache.get("lock") is unpicklable


def test_pickled_mode_stores_copies():
    cache = make_lru("pickled")
    value = {"list": [1]}
    cache.set("obj", value)
    value["list"].append(2)
    got = cache.get("obj")
    assert got == {"list": [1]}
    assert got is not cache.get("obj")
    with pytest.raises(TypeError):
        cache.set("lock", threading.Lock())
    assert cache.has_key("lock") is False

    class Unpicklable:
        def __getstate__(self):
            raise pickle.PickleError("no")

    with pytest.raises(pickle.PickleError):
        cache.add("u", Unpicklable())
    with pytest.raises(pickle.PickleError):
        cache.set_many({"ok": 1, "u": Unpicklable()})
    # set_many encodes every value before storing any.
    assert cache.has_key("ok") is False


def test_pickle_protocol_option():
    cache = make_lru("pickled", OPTIONS={"PICKLE_PROTOCOL": 2})
    assert cache._cache.pickle_protocol == 2
    cache.set("k", {"a": 1})
    assert cache.get("k") == {"a": 1}


def test_modes_do_not_share_a_store():
    obj = make_lru("object", LOCATION="same-place")
    pickled = make_lru("pickled", LOCATION="same-place")
    assert obj._shared is not pickled._shared
    assert make_lru("object", LOCATION="same-place")._shared is obj._shared


def test_lru_order_get_promotes_has_key_does_not(mode):
    small = make_lru(mode, OPTIONS={"MAX_ENTRIES": 3, "CULL_FREQUENCY": 3})
    for k in "abc":
        small.set(k, k)
    assert small.has_key("a") is True  # no promotion: "a" is still the oldest
    small.set("d", "d")  # full: culls 3 // 3 = 1, the least recently used
    assert small.has_key("a") is False
    for k in "bcd":
        assert small.get(k) == k
    small.get("b")  # "c" is now the oldest
    small.set("e", "e")
    assert small.has_key("c") is False
    assert small.has_key("b") is True


def test_max_entries_held_exactly_after_many_writes(mode):
    c = make_lru(mode, OPTIONS={"MAX_ENTRIES": 100, "CULL_FREQUENCY": 4})
    sizes = set()
    for i in range(5000):
        c.set(f"k{i}", i)
        sizes.add(len(c._cache))
    assert max(sizes) == 100
    assert c.stats()["store"]["size"] <= 100
    # The most recent writes survive.
    assert c.get("k4999") == 4999
    assert c.stats()["store"]["evictions"] == 5000 - len(c._cache)


def test_cull_frequency_zero_empties_store(mode):
    c = make_lru(mode, OPTIONS={"MAX_ENTRIES": 10, "CULL_FREQUENCY": 0})
    for i in range(10):
        c.set(i, i)
    c.set("next", 1)
    assert len(c._cache) == 1
    assert c.get("next") == 1


def test_max_entries_can_change_at_run_time(mode):
    c = make_lru(mode, OPTIONS={"MAX_ENTRIES": 1000})
    for i in range(20):
        c.set(i, i)
    c._max_entries = 10
    c.set("trigger", 1)
    assert len(c._cache) <= 10


def test_stats(cache):
    cache.set("a", 1)
    cache.get("a")
    cache.get("missing")
    cache.get_many(["a", "missing"])
    s = cache.stats()
    assert (s["hits"], s["misses"], s["sets"], s["store"]["size"]) == (2, 2, 1, 1)
    assert s["store"]["max_size"] == 300
    cache.reset_stats()
    assert cache.stats()["hits"] == 0


def test_async_api_calls_the_store_directly(mode):
    seen_threads = []

    def key_func(key, prefix, version):
        seen_threads.append(threading.get_ident())
        return f"{prefix}:{version}:{key}"

    cache = make_lru(mode, KEY_FUNCTION=key_func)
    for name in ("aget", "aset", "aadd", "adelete", "aget_many", "aset_many", "aincr", "ahas_key", "atouch"):
        assert getattr(type(cache), name) is not getattr(BaseCache, name), name

    async def scenario():
        loop_thread = threading.get_ident()
        await cache.aset("k", 1)
        assert await cache.aget("k") == 1
        assert await cache.aadd("k", 2) is False
        assert await cache.aincr("k", 4) == 5
        assert await cache.adecr("k") == 4
        assert await cache.ahas_key("k") is True
        assert await cache.atouch("k", None) is True
        assert await cache.aset_many({"a": 1, "b": 2}) == []
        assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        await cache.adelete_many(["a"])
        assert await cache.aget_or_set("c", lambda: 3) == 3
        assert await cache.aincr_version("c") == 2
        assert await cache.adecr_version("c", version=2) == 1
        assert await cache.adelete("k") is True
        await cache.aclear()
        assert await cache.aget("b") is None
        await cache.aclose()
        return loop_thread

    loop_thread = asyncio.run(scenario())
    assert seen_threads and set(seen_threads) == {loop_thread}


def test_close_keeps_the_store(cache):
    cache.set("k", 1)
    cache.close()
    assert cache.get("k") == 1


def test_unknown_option_is_reported_by_system_check():
    from django.test.utils import override_settings

    from django_rustcache.checks import check_cache_options

    with override_settings(
        CACHES={
            "default": {"BACKEND": "django_rustcache.lru.LRUObjectCache", "OPTIONS": {"MAX_ENTRIE": 5}},
            "fine": {"BACKEND": "django_rustcache.lru.LRUObjectCache", "OPTIONS": {"MAX_ENTRIES": 5, "PICKLE": 1}},
            "theirs": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "OPTIONS": {"WHATEVER": 1}},
        }
    ):
        errors = check_cache_options()
    assert [e.id for e in errors] == ["django_rustcache.E001"]
    assert "'MAX_ENTRIE'" in errors[0].msg
    assert errors[0].hint == "Did you mean 'MAX_ENTRIES'?"


def test_manage_py_check_reports_unknown_option():
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.test.utils import override_settings

    with (
        override_settings(
            CACHES={"default": {"BACKEND": "django_rustcache.lru.LRUObjectCache", "OPTIONS": {"PICKEL": True}}}
        ),
        pytest.raises(SystemCheckError, match="Did you mean 'PICKLE'"),
    ):
        call_command("check")
