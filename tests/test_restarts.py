"""A server that restarts (a deploy, a failover that keeps the address, a test suite that starts
new servers between classes) costs no call that is made after it is back, whatever the command:
a pooled connection the server closed while it sat idle is replaced before use, and a refused
or reset connection opens no window of errors (only a silent server does). Issue 22, item 1."""

from __future__ import annotations

import asyncio
import shutil
import time
from unittest.mock import ANY

import pytest

from django_rustcache import ServerDown
from tests.conftest import make_memcached, make_redis
from tests.servers import Certificates, MemcachedServer, RedisServer, TlsRedisServer


@pytest.fixture(scope="module")
def certs():
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    c = Certificates()
    yield c
    c.close()


PASSWORD = "s3cret"


def _redis_server(transport: str, request) -> RedisServer:
    if transport == "tls":
        return TlsRedisServer(request.getfixturevalue("certs"), password=PASSWORD)
    return RedisServer(unix=transport == "unix", password=PASSWORD)


def _redis_options(transport: str, request, **more) -> dict:
    options = {"db": 15, **more}
    if transport == "tls":
        options["ssl_ca_certs"] = request.getfixturevalue("certs").ca
    return options


def _run(coro_or_value):
    return asyncio.run(coro_or_value) if asyncio.iscoroutine(coro_or_value) else coro_or_value


# Each call, what it answers on a server holding n=1 (and nothing else), and what n is after.
CALLS = {
    "get": (lambda c: c.get("n"), 1, 1),
    "set": (lambda c: c.set("n", 5), None, 5),
    "add": (lambda c: c.add("n", 9), False, 1),
    "add new": (lambda c: c.add("other", 9), True, 1),
    "incr": (lambda c: c.incr("n"), 2, 2),
    "decr": (lambda c: c.decr("n", 3), -2, -2),
    "delete": (lambda c: c.delete("n"), True, None),
    "touch": (lambda c: c.touch("n", 100), True, 1),
    "has_key": (lambda c: c.has_key("n"), True, 1),
    "get_many": (lambda c: c.get_many(["n", "x"]), {"n": 1}, 1),
    "set_many": (lambda c: c.set_many({"n": 7}), [], 7),
    # Django says None; django-redis's answer (how many were deleted) is ours too.
    "delete_many": (lambda c: c.delete_many(["n"]), ANY, None),
    "get_or_set": (lambda c: c.get_or_set("n", 3), 1, 1),
    "incr_version": (lambda c: c.incr_version("n"), 2, None),
    "aget": (lambda c: c.aget("n"), 1, 1),
    "aadd": (lambda c: c.aadd("n", 9), False, 1),
    "aincr": (lambda c: c.aincr("n", 4), 5, 5),
    "aset": (lambda c: c.aset("n", 6), None, 6),
    "adelete": (lambda c: c.adelete("n"), True, None),
}


def _first_call_after_restart(cache, seed, server, call):
    """Every kind of connection pooled (sync and async), the server restarted under them, n=1
    written on the new server by another client: the call answers as on a fresh cache."""
    fn, answer, after = CALLS[call]
    if call == "decr" and "memcached" in type(cache).__module__:
        answer = after = 0  # memcached's decr stops at 0
    cache.set("warm", 1)
    assert cache.get("warm") == 1
    assert asyncio.run(cache.aget("warm")) == 1
    server.restart()
    seed.set("n", 1)
    assert _run(fn(cache)) == answer
    assert seed.get("n") == after


@pytest.fixture(scope="module")
def servers(request):
    """One server per kind for the module, restarted by each test (a new server per test costs
    a second: memcached takes that long to stop on SIGTERM)."""
    made: dict[str, object] = {}

    def get(kind: str):
        if kind not in made:
            family, transport = kind.split("-")
            if family == "redis":
                made[kind] = _redis_server(transport, request)
            else:
                if transport == "sasl" and shutil.which("saslpasswd2") is None:
                    pytest.skip("needs saslpasswd2 (sasl2-bin)")
                sasl = ("user", "pw") if transport == "sasl" else None
                made[kind] = MemcachedServer(unix=transport == "unix", sasl=sasl)
        return made[kind]

    yield get
    for server in made.values():
        server.kill()
        server.close()


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("transport", ["tcp", "unix", "tls"])
def test_redis_the_first_call_after_a_restart_succeeds(transport, call, request, servers):
    """With a password and db 15, on TCP, a unix socket and TLS; RETRY_TIMEOUT at its default.
    Before: add, incr and incr_version raised ServerDown ('connection closed by the server' on
    TCP, 'send: Broken pipe' on a unix socket)."""
    server = servers(f"redis-{transport}")
    prefix = "restart-" + call.replace(" ", "-")
    cache = make_redis(server.location, KEY_PREFIX=prefix, OPTIONS=_redis_options(transport, request))
    # Another client (its own pool: another client name), for writing and checking.
    seed = make_redis(
        server.location, KEY_PREFIX=prefix, OPTIONS=_redis_options(transport, request, CLIENT_NAME="seed")
    )
    _first_call_after_restart(cache, seed, server, call)


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("transport", ["tcp", "unix", "sasl"])
def test_memcached_the_first_call_after_a_restart_succeeds(transport, call, servers):
    """Text protocol on TCP and a unix socket, the binary protocol with SASL."""
    server = servers(f"memcached-{transport}")
    options = {"binary": True, "username": "user", "password": "pw"} if transport == "sasl" else {}
    prefix = "restart-" + call.replace(" ", "-")
    cache = make_memcached(server.location, KEY_PREFIX=prefix, OPTIONS=options)
    # Another client (its own pool: other settings), for writing and checking.
    seed = make_memcached(server.location, KEY_PREFIX=prefix, OPTIONS={**options, "max_pool_size": 3})
    _first_call_after_restart(cache, seed, server, call)


def _errors_around_a_restart(call, server, *, down_for: float = 0.3) -> tuple[int, float]:
    """Kill the server, call every 5 ms while it is away and after it is back: how many calls
    failed after it was back, and how long after its return the first call succeeded."""
    server.kill()
    stop = time.monotonic() + down_for
    while time.monotonic() < stop:
        with pytest.raises(ServerDown):
            call()
        time.sleep(0.005)
    server.start()
    back = time.monotonic()
    errors, first_ok = 0, None
    while time.monotonic() - back < 0.5:
        try:
            call()
        except ServerDown:
            errors += 1
        else:
            if first_ok is None:
                first_ok = time.monotonic() - back
        time.sleep(0.005)
    return errors, first_ok


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_redis_a_refused_connection_opens_no_window_of_errors(sync):
    """Before: every call failed 'marked down' for RETRY_TIMEOUT (96 errors at one call per
    10 ms, first success 0.98 s after the server was back). Django's RedisCache: none."""
    server = RedisServer(password=PASSWORD)
    try:
        cache = make_redis(server.location, OPTIONS={"db": 15, "RETRY_TIMEOUT": 5})
        call = (lambda: cache.get("k")) if sync else (lambda: asyncio.run(cache.aget("k")))
        call()
        errors, first_ok = _errors_around_a_restart(call, server)
        assert errors == 0 and first_ok is not None
        assert cache.stats()["servers"][0]["up"] is True
    finally:
        server.close()


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("backend", ["MemcachedCache", "PyLibMCCache"])
def test_memcached_a_refused_connection_opens_no_window_of_errors(backend, sync):
    """pymemcache fails the one call that meets the refusal; so do both our classes unless
    pylibmc's retry_timeout behavior is set (before: 2 s of errors on both)."""
    server = MemcachedServer()
    try:
        cache = make_memcached(server.location, backend, OPTIONS={"ignore_exc": False})
        call = (lambda: cache.get("k")) if sync else (lambda: asyncio.run(cache.aget("k")))
        call()
        errors, first_ok = _errors_around_a_restart(call, server)
        assert errors == 0 and first_ok is not None
    finally:
        server.close()


def test_pylibmc_retry_timeout_behavior_keeps_its_window():
    """Where the site asked for pylibmc's window, it is kept: calls fail at once for that long,
    even after the server is back, then succeed."""
    server = MemcachedServer()
    try:
        cache = make_memcached(
            server.location, "PyLibMCCache", OPTIONS={"ignore_exc": False, "behaviors": {"retry_timeout": 1}}
        )
        cache.get("k")
        errors, first_ok = _errors_around_a_restart(lambda: cache.get("k"), server, down_for=0.05)
        assert errors > 10 and first_ok is None
        time.sleep(0.6)
        assert cache.get("k") is None
    finally:
        server.close()
