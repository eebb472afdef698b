"""LRUObjectCache under hostile conditions: threads, fork, re-entrant destructors, bad keys."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import warnings

import pytest
from django.core.cache import CacheKeyWarning

from tests.conftest import make_lru

THREADS = 16


def run_threads(target, n=THREADS):
    errors = []
    barrier = threading.Barrier(n)

    def wrapper(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as e:  # reported below, with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


@pytest.mark.parametrize("start", [0, 0.5, 2**62])
def test_threads_hammering_incr_lose_no_update(mode, start):
    """Exact ints take the in-lock path, floats and big ints the compare-and-swap path."""
    cache = make_lru(mode)
    cache.set("counter", start)
    per_thread = 300

    def work(i):
        for _ in range(per_thread):
            cache.incr("counter")
            cache.decr("counter", 2)
            cache.incr("counter", 2)

    run_threads(work)
    assert cache.get("counter") == start + THREADS * per_thread


class SlowNumber:
    """A number whose addition yields the interpreter to other threads half-way, so concurrent
    incr() calls really overlap in the window between reading and writing the value."""

    def __init__(self, n):
        self.n = n

    def __add__(self, delta):
        n = self.n
        time.sleep(0)  # lets the other threads run (and incr) right here
        return SlowNumber(n + delta)

    def __eq__(self, other):
        return isinstance(other, SlowNumber) and other.n == self.n

    __hash__ = None


def test_incr_of_a_value_whose_add_yields_loses_no_update(mode):
    cache = make_lru(mode)
    cache.set("slow", SlowNumber(0))
    per_thread = 50

    def work(i):
        for _ in range(per_thread):
            cache.incr("slow")

    run_threads(work, n=8)
    assert cache.get("slow").n == 8 * per_thread


class Meddler:
    """A number whose addition writes the key being incremented (so every attempt loses)."""

    cache = None

    def __init__(self, n):
        self.n = n

    def __add__(self, delta):
        Meddler.cache.set("meddled", Meddler(self.n))
        return Meddler(self.n + delta)


def test_incr_of_a_value_whose_add_writes_the_same_key_gives_up_with_a_clear_error(mode):
    cache = Meddler.cache = make_lru(mode)
    cache.set("meddled", Meddler(0))
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="gave up after 1000 attempts"):
        cache.incr("meddled")
    assert time.monotonic() - start < 2
    assert cache.get("meddled").n == 0


def test_threads_hammering_shared_keys_see_only_values_written(mode):
    cache = make_lru(mode, OPTIONS={"MAX_ENTRIES": 50})
    keys = [f"shared{i}" for i in range(64)]
    rounds = 400

    def work(i):
        for r in range(rounds):
            k = keys[(i * 7 + r) % len(keys)]
            cache.set(k, (k, i, r))
            got = cache.get(k)
            assert got is None or got[0] == k, (k, got)
            if r % 5 == 0:
                cache.delete(keys[(i + r) % len(keys)])
            if r % 7 == 0:
                many = cache.get_many(keys[:8])
                assert all(v[0] == k for k, v in many.items())
            if r % 11 == 0:
                cache.set_many({k2: (k2, i, r) for k2 in keys[8:12]})

    run_threads(work)
    assert len(cache._cache) <= 50
    for k, v in cache.get_many(keys).items():
        assert v[0] == k

    # Per-key final state: every thread writes, then nobody else touches the key.
    def final(i):
        cache.set(f"own{i}", i)
        for _ in range(200):
            assert cache.get(f"own{i}") in (i, None)

    big = make_lru(mode)
    cache = big
    run_threads(final)
    assert [cache.get(f"own{i}") for i in range(THREADS)] == list(range(THREADS))


def test_add_is_atomic_across_threads(mode):
    cache = make_lru(mode)
    winners = []

    def work(i):
        for r in range(200):
            if cache.add(f"race{r}", i):
                winners.append((r, i))

    run_threads(work)
    assert sorted(r for r, _ in winners) == list(range(200))
    for r, i in winners:
        assert cache.get(f"race{r}") == i


class ReentrantDel:
    """Uses the cache from its destructor, as a careless __del__ might."""

    log: list[str] = []

    def __init__(self, cache, name):
        self.cache = cache
        self.name = name

    def __del__(self):
        self.cache.set(f"del-{self.name}", 1)
        self.cache.get("anything")
        self.cache.delete("anything")
        ReentrantDel.log.append(self.name)


def test_del_that_uses_the_cache_during_eviction_does_not_deadlock():
    ReentrantDel.log = []
    cache = make_lru("object", OPTIONS={"MAX_ENTRIES": 10, "CULL_FREQUENCY": 2})
    for i in range(30):
        cache.set(f"obj{i}", ReentrantDel(cache, f"evicted{i}"))
    cache.set("overwrite", ReentrantDel(cache, "overwritten"))
    cache.set("overwrite", 1)
    cache.set("deleted", ReentrantDel(cache, "deleted"))
    cache.delete("deleted")
    cache.set("incr", ReentrantDel(cache, "incr"))
    cache.set("expired", ReentrantDel(cache, "expired"), timeout=0)
    cache.clear()
    gc.collect()
    assert "overwritten" in ReentrantDel.log
    assert "deleted" in ReentrantDel.log
    assert "expired" in ReentrantDel.log
    assert sum(name.startswith("evicted") for name in ReentrantDel.log) >= 20


def test_del_reentering_from_many_threads():
    ReentrantDel.log = []
    cache = make_lru("object", OPTIONS={"MAX_ENTRIES": 20})

    def work(i):
        for r in range(100):
            cache.set(f"k{r % 30}", ReentrantDel(cache, f"{i}-{r}"))

    run_threads(work, n=8)
    cache.clear()
    gc.collect()
    assert len(ReentrantDel.log) == 8 * 100


class Hostile:
    """A value whose comparison and hashing raise."""

    def __eq__(self, other):
        raise RuntimeError("__eq__ called")

    def __hash__(self):
        raise RuntimeError("__hash__ called")

    def __add__(self, other):
        raise RuntimeError("__add__ called")

    def __reduce__(self):
        return (Hostile, ())


def test_values_whose_eq_and_hash_raise(mode):
    cache = make_lru(mode)
    value = Hostile()
    cache.set("h", value)
    assert cache.add("h", value) is False
    got = cache.get("h")
    assert isinstance(got, Hostile)
    if mode == "object":
        assert got is value
    cache.set_many({"h1": value, "h2": value})
    assert len(cache.get_many(["h1", "h2"])) == 2
    assert cache.incr_version("h") == 2
    with pytest.raises(RuntimeError, match="__add__"):
        cache.incr("h", version=2)
    assert isinstance(cache.get("h", version=2), Hostile)
    assert cache.delete("h", version=2) is True


# --- keys -----------------------------------------------------------------------------------


def test_non_str_keys_are_rendered_like_djangos_default_key_function(cache):
    cache.set(1, "int")
    cache.set(("a",), "tuple")
    cache.set(3.5, "float")
    assert cache.get(1) == "int"
    assert cache.get("1") == "int"  # ':1:1' either way, as with Django's "%s" formatting
    assert cache.get(("a",)) == "tuple"
    assert cache.get_many([1, 3.5]) == {1: "int", 3.5: "float"}
    assert cache._cache.expiry(":1:('a',)") is not None


def test_key_whose_str_raises_is_an_error_and_stores_nothing(cache):
    class BadKey:
        def __str__(self):
            raise RuntimeError("no str for you")

    before = len(cache._cache)
    with pytest.raises(RuntimeError, match="no str for you"):
        cache.set(BadKey(), 1)
    with pytest.raises(RuntimeError):
        cache.set_many({"fine": 1, BadKey(): 2})
    assert len(cache._cache) == before
    assert cache.has_key("fine") is False


def test_key_function_that_raises(mode):
    def explode(key, prefix, version):
        raise LookupError("key function failed")

    cache = make_lru(mode, KEY_FUNCTION=explode)
    for call in (
        lambda: cache.set("k", 1),
        lambda: cache.get("k"),
        lambda: cache.get_many(["k"]),
        lambda: cache.incr("k"),
        lambda: cache.delete("k"),
    ):
        with pytest.raises(LookupError):
            call()
    assert len(cache._cache) == 0


@pytest.mark.parametrize(
    "key, message",
    [
        ("key with spaces", "Cache key contains characters that will cause errors if used with memcached: "),
        ("crlf\r\nflush_all", "Cache key contains characters that will cause errors if used with memcached: "),
        ("nul\x00", "Cache key contains characters that will cause errors if used with memcached: "),
        ("del\x7f", "Cache key contains characters that will cause errors if used with memcached: "),
        ("a" * 250, "Cache key will cause errors if used with memcached: "),
    ],
)
def test_invalid_keys_warn_with_djangos_message(cache, key, message):
    made = cache.make_key(key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.set(key, 1)
        assert cache.get(key) == 1
    assert caught, "no warning"
    assert all(w.category is CacheKeyWarning for w in caught)
    assert str(caught[0].message).startswith(message + repr(made))


def test_invalid_key_as_error_stores_nothing(cache):
    # With warnings turned into errors (as this suite runs), an invalid key raises before the
    # store is touched.
    with pytest.raises(CacheKeyWarning):
        cache.set("bad key", 1)
    with pytest.raises(CacheKeyWarning):
        cache.set_many({"good": 1, "bad key": 2})
    assert len(cache._cache) == 0


def test_long_and_bad_key_gives_both_warnings(cache):
    key = "x y" * 100
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.set(key, 1)
    assert len(caught) == 2
    assert "(longer than 250)" in str(caught[0].message)


def test_validate_key_matches_djangos():
    from django.core.cache.backends.base import memcache_key_warnings

    cache = make_lru()
    for key in ["ok", "a b", "é" * 251, "\t", "x" * 250, "x" * 251, "\u3000wide-space"]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache.validate_key(key)
        assert [str(w.message) for w in caught] == list(memcache_key_warnings(key)), key


def test_huge_value_and_key(cache):
    big = b"x" * (20 * 1024 * 1024)
    cache.set("big", big)
    assert cache.get("big") == big
    long_key = "k" * 10_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheKeyWarning)
        cache.set(long_key, 1)
        assert cache.get(long_key) == 1


# --- fork -----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_sees_a_consistent_store_and_can_use_it(mode):
    cache = make_lru(mode, OPTIONS={"MAX_ENTRIES": 10_000})
    cache.set_many({f"k{i}": i for i in range(100)})
    stop = threading.Event()

    def writer():  # the parent keeps writing while it forks
        n = 0
        while not stop.is_set():
            cache.set(f"busy{n % 50}", n)
            n += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() with threads running; that is the point here.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    finally:
        stop.set()
        t.join()
    if pid == 0:  # the child: no pytest from here on, only an exit code
        code = 0
        try:
            if cache.get_many([f"k{i}" for i in range(100)]) != {f"k{i}": i for i in range(100)}:
                code = 2
            cache.set("child", "mine")
            if cache.get("child") != "mine" or cache.incr("k1", 10) != 11:
                code = 3
            cache.set_many({f"c{i}": i for i in range(1000)})
            if len(cache.get_many([f"c{i}" for i in range(1000)])) != 1000:
                code = 4
        except BaseException:
            code = 5
        sys.stdout.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The child's writes stay in the child.
    assert cache.get("child") is None
    assert cache.get("k1") == 1
