"""OPTIONS["KEY_HASHING"] on memcached: keys the server would refuse (over 250 bytes, spaces,
control characters) are stored under a stable digest form instead of raising InvalidCacheKey;
valid keys are untouched (a warm switch keeps its entries); off by default."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from django.core.cache.backends.base import InvalidCacheKey

from tests.conftest import make_memcached

ODD = {
    "long": "k" * 300,
    "spaces": "user name with spaces",
    "controls": "line\r\nbreak\tand\x7f",
    "long unicode": "é" * 200,
}


def digest_form(made: str) -> str:
    head = "".join("_" if c <= " " or c == "\x7f" else c for c in made.encode()[:150].decode(errors="ignore"))
    return head + "#" + hashlib.sha256(made.encode()).hexdigest()


@pytest.mark.parametrize("backend", ["MemcachedCache", "PyLibMCCache"])
def test_odd_keys_are_stored_under_their_digest_form(memcached_server, backend):
    options = {"KEY_HASHING": True, **({"binary": True} if backend == "PyLibMCCache" else {})}
    cache = make_memcached(memcached_server.location, backend, OPTIONS=options)
    for name, key in ODD.items():
        assert cache.set(key, name) is not False
        assert cache.get(key) == name, name
        assert cache.has_key(key)
        stored = memcached_server.raw(b"get " + digest_form(cache.make_key(key)).encode() + b"\r\n")
        assert stored.startswith(b"VALUE "), name
    assert cache.get_many(list(ODD.values())) == {key: name for name, key in ODD.items()}
    assert cache.add(ODD["long"], "again") is False
    cache.set("n" * 300, 1)
    assert cache.incr("n" * 300, 4) == 5
    assert cache.touch(ODD["spaces"], 60)
    assert asyncio.run(cache.aget(ODD["controls"])) == "controls"
    assert cache.delete(ODD["long"])
    assert cache.get(ODD["long"]) is None
    cache.delete_many(list(ODD.values()))
    assert cache.get_many(list(ODD.values())) == {}


def test_valid_keys_are_untouched(memcached_server):
    cache = make_memcached(memcached_server.location, OPTIONS={"KEY_HASHING": True})
    cache.set("plain", 1)
    assert memcached_server.raw(b"get " + cache.make_key("plain").encode() + b"\r\n").startswith(b"VALUE ")


def test_a_custom_key_function_gets_digest_forms_too(memcached_server):
    cache = make_memcached(
        memcached_server.location,
        OPTIONS={"KEY_HASHING": True},
        KEY_FUNCTION=lambda key, prefix, version: f"custom {prefix} {version} {key}",
    )
    cache.set("a key", "v")
    assert cache.get("a key") == "v"
    assert cache.get_many(["a key", "b"]) == {"a key": "v"}


def test_off_by_default_odd_keys_are_refused_before_any_byte_is_sent(memcached_server):
    cache = make_memcached(memcached_server.location)
    for key in ODD.values():
        with pytest.raises(InvalidCacheKey):
            cache.set(key, 1)
        with pytest.raises(InvalidCacheKey):
            cache.get(key)
