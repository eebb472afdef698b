"""TLS (``rediss://``) against real redis-servers that speak only TLS, with a CA, server and
client certificates the fixture makes: redis-py's settings in OPTIONS, CONNECTION_POOL_KWARGS and
the URL's query; verification on and off; hostname checks; a wrong CA; mutual TLS; replicas."""

from __future__ import annotations

import shutil
import ssl
import time
import urllib.parse
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_rustcache._core import ServerDown, TLSError
from tests.conftest import make_redis
from tests.servers import Certificates, SilentServer, TlsRedisServer, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certs():
    c = Certificates()
    yield c
    c.close()


@pytest.fixture(scope="module")
def tls_server(certs):
    server = TlsRedisServer(certs)
    yield server
    server.close()


@pytest.fixture(scope="module")
def mtls_server(certs):
    server = TlsRedisServer(certs, auth_clients="yes")
    yield server
    server.close()


def trusting(certs, **more):
    return {"ssl_ca_certs": certs.ca, **more}


def round_trip(cache, value="v"):
    cache.set("k", value)
    assert cache.get("k") == value
    assert cache.get_many(["k", "missing"]) == {"k": value}


def test_verified_tls_with_the_ca_in_options(tls_server, certs):
    cache = make_redis(tls_server.location, OPTIONS=trusting(certs))
    round_trip(cache)
    assert cache.add("n", 1) is True
    assert cache.incr("n", 5) == 6
    # The value went to the TLS server (read back over a TLS socket of Python's own).
    assert b"v" in tls_server.raw(b"GET " + cache.make_key("k").encode())


def test_django_redis_connection_pool_kwargs_and_url_queries(tls_server, certs):
    round_trip(make_redis(tls_server.location, OPTIONS={"CONNECTION_POOL_KWARGS": trusting(certs)}))
    query = urllib.parse.urlencode({"ssl_ca_certs": certs.ca, "ssl_cert_reqs": "required"})
    round_trip(make_redis(f"{tls_server.location}/3?{query}"))
    # The URL's query wins over OPTIONS (as in redis-py's from_url).
    round_trip(make_redis(f"{tls_server.location}?ssl_ca_certs={certs.ca}", OPTIONS={"ssl_ca_certs": "/nonexistent"}))
    # ssl_ca_data (PEM text, or DER bytes as the ssl module takes them) instead of a file.
    pem = Path(certs.ca).read_text()
    round_trip(make_redis(tls_server.location, OPTIONS={"ssl_ca_data": pem}))
    round_trip(make_redis(tls_server.location, OPTIONS={"ssl_ca_data": ssl.PEM_cert_to_DER_cert(pem)}))


def test_a_db_and_a_password_over_tls(certs):
    server = TlsRedisServer(certs, password="s3cret")
    try:
        cache = make_redis(f"rediss://:s3cret@127.0.0.1:{server.port}/5", OPTIONS=trusting(certs))
        round_trip(cache)
        made = cache.make_key("k").encode()
        assert server.raw(b"GET " + made) == b"$-1\r\n"  # not in db 0
        db5 = make_redis(
            f"rediss://127.0.0.1:{server.port}",
            KEY_PREFIX=cache.key_prefix,
            OPTIONS=trusting(certs, PASSWORD="s3cret", DB=5),
        )
        assert db5.get("k") == "v"
        wrong = make_redis(f"rediss://:nope@127.0.0.1:{server.port}", OPTIONS=trusting(certs))
        with pytest.raises(Exception, match=r"WRONGPASS|invalid password|AUTH"):
            wrong.get("k")
    finally:
        server.close()


def test_a_certificate_from_an_untrusted_ca_is_refused_clearly(tls_server, certs):
    cache = make_redis(tls_server.location, OPTIONS={"ssl_ca_certs": certs.other_ca})
    with pytest.raises(TLSError, match="not signed by a trusted CA") as raised:
        cache.get("k")
    assert isinstance(raised.value, ServerDown)
    assert "set ssl_ca_certs" in str(raised.value)
    # With no CA named, the system's CAs are used; they do not know the test CA either.
    with pytest.raises(TLSError, match=r"UnknownIssuer|not signed"):
        make_redis(tls_server.location).set("k", 1)
    # A failure ignored reads as a miss, like any unreachable server.
    quiet = make_redis(tls_server.location, OPTIONS={"ssl_ca_certs": certs.other_ca, "IGNORE_EXCEPTIONS": True})
    assert quiet.get("k", "default") == "default"


@pytest.mark.parametrize("reqs", ["none", None, ssl.CERT_NONE])
def test_verification_off_accepts_any_certificate(tls_server, reqs):
    round_trip(make_redis(tls_server.location, OPTIONS={"ssl_cert_reqs": reqs}))


def test_the_hostname_is_checked_unless_told_not_to(certs):
    server = TlsRedisServer(certs, cert=(certs.elsewhere, certs.elsewhere_key))
    try:
        with pytest.raises(TLSError, match="does not name this host"):
            make_redis(server.location, OPTIONS=trusting(certs)).get("k")
        # The chain is still checked without the name...
        round_trip(make_redis(server.location, OPTIONS=trusting(certs, ssl_check_hostname=False)))
        round_trip(make_redis(f"{server.location}?ssl_check_hostname=false&ssl_ca_certs={certs.ca}"))
        with pytest.raises(TLSError, match="not signed by a trusted CA"):
            make_redis(server.location, OPTIONS={"ssl_ca_certs": certs.other_ca, "ssl_check_hostname": False}).get("k")
        # ... and CERT_OPTIONAL is CERT_REQUIRED on a client, as in the ssl module.
        with pytest.raises(TLSError):
            make_redis(server.location, OPTIONS=trusting(certs, ssl_cert_reqs="optional")).get("k")
    finally:
        server.close()
    # The server's own certificate names localhost as well as 127.0.0.1.
    local = TlsRedisServer(certs)
    try:
        round_trip(make_redis(f"rediss://localhost:{local.port}", OPTIONS=trusting(certs)))
    finally:
        local.close()


def test_mutual_tls(mtls_server, certs):
    round_trip(
        make_redis(
            mtls_server.location,
            OPTIONS=trusting(certs, ssl_certfile=certs.client, ssl_keyfile=certs.client_key),
        )
    )
    # The key may sit in the certificate file, as the ssl module allows.
    both = certs.dir / "client-and-key.pem"
    both.write_text(Path(certs.client).read_text() + Path(certs.client_key).read_text())
    round_trip(make_redis(mtls_server.location, OPTIONS=trusting(certs, ssl_certfile=str(both))))
    # Without a client certificate the server refuses us, and the error says what to set.
    with pytest.raises(TLSError, match="ssl_certfile"):
        make_redis(mtls_server.location, OPTIONS=trusting(certs)).get("k")


def test_replicas_over_tls(certs):
    leader = TlsRedisServer(certs, auth_clients="optional")
    replica = TlsRedisServer(certs, auth_clients="optional")
    try:
        replica.raw(f"REPLICAOF 127.0.0.1 {leader.port}".encode())
        wait_until(lambda: b"master_link_status:up" in replica.raw(b"INFO replication"), what="TLS replication")
        options = trusting(certs)
        cache = make_redis([leader.location, replica.location], OPTIONS=options)
        cache.set("k", "from the leader")
        only_replica = make_redis([replica.location], KEY_PREFIX=cache.key_prefix, OPTIONS=options)
        wait_until(lambda: only_replica.get("k") == "from the leader", what="the write on the replica")
        # Reads go to the replica: one there and not on the leader is seen.
        replica.raw(b"CONFIG SET replica-read-only no")
        replica.raw(b"SET " + cache.make_key("only-here").encode() + b" 7")
        assert cache.get("only-here") == 7
    finally:
        replica.close()
        leader.close()


def test_tls_13_only_and_a_server_that_speaks_12_only(certs):
    old = TlsRedisServer(certs, args=("--tls-protocols", "TLSv1.2"))
    try:
        round_trip(make_redis(old.location, OPTIONS=trusting(certs)))
        for version in (ssl.TLSVersion.TLSv1_3, "TLSv1_3"):
            with pytest.raises(TLSError, match="TLS handshake failed"):
                make_redis(old.location, OPTIONS=trusting(certs, ssl_min_version=version)).get("k")
        round_trip(make_redis(old.location, OPTIONS=trusting(certs, ssl_min_version=ssl.TLSVersion.TLSv1_2)))
    finally:
        old.close()


def test_large_values_cross_tls_whole(tls_server, certs):
    cache = make_redis(tls_server.location, OPTIONS=trusting(certs))
    for size in (16 * 1024 - 5, 16 * 1024 + 7, 1 << 20, 24 << 20):
        value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        cache.set("big", value)
        assert cache.get("big") == value
    many = {f"k{i}": "v" * 1000 * (i % 7) for i in range(300)}
    cache.set_many(many)
    assert cache.get_many(list(many)) == many


def test_a_silent_server_fails_within_the_connect_deadline(certs):
    silent = SilentServer()
    try:
        cache = make_redis(
            f"rediss://{silent.location}",
            OPTIONS=trusting(certs, SOCKET_CONNECT_TIMEOUT=0.3, SOCKET_TIMEOUT=0.5),
        )
        start = time.monotonic()
        with pytest.raises(ServerDown, match=r"TLS handshake|timed out"):
            cache.get("k")
        assert time.monotonic() - start < 1.0
    finally:
        silent.close()


def test_tls_to_a_plain_server_fails_within_the_deadline(redis_server, certs):
    # redis reads the ClientHello as the start of an inline command and waits for its end.
    plain = redis_server.location.replace("redis://", "rediss://")
    start = time.monotonic()
    with pytest.raises(ServerDown, match="TLS handshake"):
        make_redis(plain, OPTIONS=trusting(certs, SOCKET_CONNECT_TIMEOUT=0.3)).get("k")
    assert time.monotonic() - start < 1.0
    # And the plain server is still fine for plain clients.
    round_trip(make_redis(redis_server.location))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ssl_cert_reqs": "sometimes"}, "ssl_cert_reqs"),
        ({"ssl_password": "x"}, "encrypted private keys"),
        ({"ssl_ciphers": "HIGH"}, "cipher"),
        ({"ssl_validate_ocsp": True}, "OCSP"),
        ({"ssl_min_version": "TLSv9"}, "TLSVersion"),
        ({"ssl_keyfile": "/tmp/k.pem"}, "needs ssl_certfile"),
    ],
)
def test_settings_that_cannot_work_are_improperly_configured(tls_server, options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        make_redis(tls_server.location, OPTIONS=options).get("k")


def test_missing_or_empty_files_name_the_setting(tls_server, certs, tmp_path):
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    for options, name in [
        ({"ssl_ca_certs": "/nonexistent/ca.pem"}, "ssl_ca_certs"),
        ({"ssl_ca_certs": str(empty)}, "ssl_ca_certs"),
        (trusting(certs, ssl_certfile=certs.client, ssl_keyfile=str(empty)), "ssl_keyfile"),
    ]:
        with pytest.raises((ImproperlyConfigured, ValueError), match=name):
            make_redis(tls_server.location, OPTIONS=options).get("k")


def test_a_ca_directory(tls_server, certs, tmp_path):
    (tmp_path / "a.pem").write_text(Path(certs.other_ca).read_text())
    (tmp_path / "b.pem").write_text(Path(certs.ca).read_text())
    (tmp_path / "README").write_text("not a certificate")
    round_trip(make_redis(tls_server.location, OPTIONS={"ssl_ca_path": str(tmp_path)}))


def test_plain_urls_ignore_tls_options(redis_server, certs):
    # A redis:// server stays plain whatever OPTIONS say (as redis-py's from_url does).
    round_trip(make_redis(redis_server.location, OPTIONS=trusting(certs)))


def test_django_redis_cache_flavour_over_tls(tls_server, certs):
    from django_rustcache.redis_cache import RedisCache

    cache = RedisCache(tls_server.location, {"KEY_PREFIX": "drc-tls", "OPTIONS": trusting(certs)})
    assert cache.set("k", "v") is True
    assert cache.get("k") == "v"


def test_the_backend_pickles_with_its_tls_settings(tls_server, certs):
    import pickle

    cache = make_redis(tls_server.location, OPTIONS=trusting(certs))
    cache.set("k", "v")
    assert pickle.loads(pickle.dumps(cache)).get("k") == "v"


def test_a_restarted_tls_server_costs_no_error(certs):
    """A pooled TLS connection gone stale (the server restarted) is retried on a new one, with
    a new handshake, within the call."""
    server = TlsRedisServer(certs)
    try:
        cache = make_redis(server.location, OPTIONS=trusting(certs))
        round_trip(cache)
        server.restart()
        assert cache.get("k") is None  # a new server without persistence: empty, and no error
        round_trip(cache, "again")
    finally:
        server.close()


def test_async_calls_over_mutual_tls(mtls_server, certs):
    """The async calls' multiplexed connections handshake as the blocking ones do (the chain
    and name verified, our client certificate shown), and carry many calls at once."""
    import asyncio

    from django_rustcache import TLSError

    options = trusting(certs, ssl_certfile=certs.client, ssl_keyfile=certs.client_key)
    cache = make_redis(mtls_server.location, OPTIONS=options)
    big = "x" * (1 << 20)

    async def main():
        await asyncio.gather(*(cache.aset(f"k{i}", i) for i in range(200)))
        got = await asyncio.gather(*(cache.aget(f"k{i}") for i in range(200)))
        await cache.aset("big", big)
        return got, await cache.aget("big"), await cache.aget_many(["k1", "k2"])

    got, back, many = asyncio.run(main())
    assert got == list(range(200)) and back == big and many == {"k1": 1, "k2": 2}
    assert cache.get("k7") == 7
    # Without a client certificate the server refuses, as it does the blocking calls.
    refused = make_redis(mtls_server.location, OPTIONS=trusting(certs))
    with pytest.raises(TLSError):
        asyncio.run(refused.aget("k1"))


def test_get_redis_connection_speaks_tls_with_the_caches_settings(tls_server, certs):
    pytest.importorskip("redis")
    from django.core.cache import caches
    from django.test.utils import override_settings

    from django_rustcache.redis import get_redis_connection

    backend = {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": tls_server.location,
               "OPTIONS": trusting(certs)}  # fmt: skip
    with override_settings(CACHES={"default": backend}):
        caches["default"].set("k", "v")
        r = get_redis_connection()
        assert r.exists(caches["default"].make_key("k")) == 1
        r.connection_pool.disconnect()


def test_the_near_cache_over_tls_with_a_password(certs):
    """The invalidation connection speaks TLS and logs in like the data connections: another
    client's writes are seen by the next read, again and again, while hits are local."""
    server = TlsRedisServer(certs, password="s3cret")
    try:
        location = f"rediss://:s3cret@127.0.0.1:{server.port}"
        near = make_redis(location, OPTIONS={**trusting(certs), "NEAR_CACHE": True})
        other = make_redis(location, KEY_PREFIX=near.key_prefix, OPTIONS=trusting(certs))
        near.set("k", 0)
        for i in range(1, 201):
            assert near.get("k") == i - 1
            assert near.get("k") == i - 1  # answered locally
            other.set("k", i)
            assert near.get("k") == i
        stats = near.stats()["near_cache"]
        assert stats["hits"] >= 200 and stats["invalidations"] >= 200, stats
        # The invalidation connection is a TLS client of its own on the server, logged in.
        clients = server.raw(b"CLIENT LIST").decode()
        assert any(" flags=tB " in line and "resp=3" in line for line in clients.splitlines()), clients  # BCAST
    finally:
        server.close()
