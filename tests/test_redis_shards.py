"""django-redis-cache's ShardedRedisCache: every key on the server its own hash ring picks, and
every call that spans keys or servers answered across all of them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from django_rustcache import ServerDown
from tests.servers import RedisServer


def predecessor(name: str):
    """A module of the installed django-redis-cache, loaded alone (its package imports a redis-py
    older than ours)."""
    spec = importlib.util.find_spec("redis_cache")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("django-redis-cache is not installed (pip install --no-deps django-redis-cache)")
    path = Path(next(iter(spec.submodule_search_locations))) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"predecessor_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def their_node(server: str, db: int):
    """The node django-redis-cache names a server by, through its own code."""
    utils, connection = predecessor("utils"), predecessor("connection")
    kwargs = utils.parse_connection_kwargs(
        server, db=db, password=None, socket_timeout=None, socket_connect_timeout=None
    )
    if kwargs.get("ssl", False):
        for name in ("socket_timeout", "socket_connect_timeout", "unix_socket_path"):
            del kwargs[name]

    class Pool:
        def __init__(self, **kwargs):
            pass

    pool = connection.CacheConnectionPool().get_connection_pool(
        object(), **kwargs, parser_class=None, connection_pool_class=Pool, connection_pool_class_kwargs={}
    )
    return pool.connection_identifier


@pytest.mark.parametrize("db", [1, 0, 7])
def test_every_key_lands_where_django_redis_cache_put_it(db):
    from django_rustcache._core import HashRing
    from django_rustcache.redis_cache import django_redis_cache_node

    sharder = predecessor("sharder")
    servers = [
        "127.0.0.1:6379",
        "redis://10.0.0.2:6380",
        "redis://cache.example.com:6381/3",
        "redis://10.0.0.4?db=5",
        "rediss://10.0.0.5:6390",
        "unix:///run/redis/one.sock?db=2",
        "unix:///run/redis/two.sock",
        "/run/redis/three.sock",
    ]
    ring = sharder.HashRing()
    for server in servers:
        ring.add(their_node(server, db))
    nodes = [django_redis_cache_node(s, db) for s in servers]
    assert nodes == [their_node(s, db) for s in servers]
    ours = HashRing("django-redis-cache", [str(n) for n in nodes])
    for i in range(10_000):
        for made in (f":1:key{i}", f"site:2:user:{i}", f"p:{i % 7}:{i * 7919}"):
            assert nodes[ours.index(made)] == ring.get_node(made), made


@pytest.fixture(scope="module")
def shards():
    servers = [RedisServer(), RedisServer(), RedisServer(unix=True)]
    yield servers
    for server in servers:
        server.close()


def make_sharded(shards, **params):
    from django_rustcache.redis_cache import ShardedRedisCache

    location = [f"127.0.0.1:{shards[0].port}", f"redis://127.0.0.1:{shards[1].port}/4", shards[2].socket_path]
    params.setdefault("KEY_PREFIX", "sharded")
    return ShardedRedisCache(location, params)


def raw(shards):
    redis = pytest.importorskip("redis")
    return [
        redis.Redis(port=shards[0].port, db=1),
        redis.Redis(port=shards[1].port, db=4),
        redis.Redis(unix_socket_path=shards[2].socket_path, db=1),
    ]


def test_keys_are_spread_and_found_on_their_servers(shards):
    from django_rustcache._core import HashRing
    from django_rustcache.redis_cache import django_redis_cache_node

    cache = make_sharded(shards)
    cache.clear()
    data = {f"k{i}": i for i in range(300)}
    assert cache.set_many(data) == []
    nodes = [django_redis_cache_node(s, 1) for s in cache._servers]
    ring = HashRing("django-redis-cache", [str(n) for n in nodes])
    clients = raw(shards)
    per_server = [0, 0, 0]
    for key in data:
        made = cache.make_key(key)
        n = ring.index(made)
        per_server[n] += 1
        assert clients[n].exists(made), (key, n)
        assert not any(c.exists(made) for i, c in enumerate(clients) if i != n)
    assert all(count > 30 for count in per_server), per_server
    assert cache.get_many([*data, "missing"]) == data
    assert cache.get("k7") == 7
    assert cache.incr("k7", 3) == 10
    assert sorted(cache.keys("k1*")) == sorted(k for k in data if k.startswith("k1"))
    assert cache.delete_pattern("k2*") == len([k for k in data if k.startswith("k2")])
    cache.set("versioned", "v", version=2)
    cache.clear(version=2)
    assert cache.get("versioned", version=2) is None
    assert cache.get("k3") == 3
    # incr_version moves a key to the server its new name belongs to, keeping its TTL.
    for i in range(20):
        cache.set(f"moving{i}", i, 100)
        assert cache.incr_version(f"moving{i}") == 2
        assert cache.get(f"moving{i}", version=2) == i
        assert 90 < cache.ttl(f"moving{i}", version=2) <= 100
    assert cache.delete_many([f"k{i}" for i in range(100)]) is None
    assert cache.get_many([f"k{i}" for i in range(100)]) == {}
    assert cache.reinsert_keys() == 0
    assert len(cache.stats()["servers"]) == 3
    assert cache.clear() is True
    assert not any(c.dbsize() for c in clients)


def test_django_redis_cache_clients_are_its_servers(shards):
    # django-redis-cache's own ways to a redis-py client: its clients by (host, port, db, unix
    # socket), the master client, and get_client(made key) giving the key's shard.
    pytest.importorskip("redis")
    cache = make_sharded(shards, KEY_PREFIX="clients")
    clients = cache.clients
    assert list(clients) == [
        ("127.0.0.1", shards[0].port, 1, None),
        ("127.0.0.1", shards[1].port, 4, ""),
        (None, None, 1, shards[2].socket_path),
    ]
    assert cache.client_list == list(clients.values())
    assert cache.master_client is cache.get_master_client() is cache.client_list[0]
    data = {f"k{i}": i for i in range(60)}
    cache.set_many(data)
    used = set()
    for key in data:
        made = cache.make_key(key)
        client = cache.get_client(made)
        assert client is cache.get_client(made, write=True) and client.exists(made), key
        used.add(id(client))
    assert len(used) == 3
    assert clients[("127.0.0.1", shards[1].port, 4, "")].client_info()["db"] == 4
    cache.clear()
    for client in cache.client_list:
        client.connection_pool.disconnect()


def test_herd_and_locks_on_their_servers(shards):
    cache = make_sharded(shards, KEY_PREFIX="herd")
    calls = []
    assert cache.get_or_set("h", lambda: calls.append(1) or "v", 10, 5, 20) == "v"
    assert cache.get_or_set("h", lambda: calls.append(1) or "w", 10) == "v"
    assert calls == [1]
    lock = cache.lock("jobs", 10, 0.01, 0.05)
    assert lock.acquire()
    assert cache.lock("jobs", 10, 0.01, 0.05).acquire() is False
    lock.release()
    import pickle

    again = pickle.loads(pickle.dumps(cache))
    assert again.get_or_set("h", "x", 10) == "v"


def test_django_redis_shard_client_placement():
    from django_redis.hash_ring import HashRing as TheirRing

    from django_rustcache._core import HashRing

    names = ["redis://127.0.0.1:6379/1", "redis://127.0.0.1:6380/1", "unix:///run/redis.sock?db=2"]
    theirs = TheirRing(names)
    ours = HashRing("django-redis", names)
    find_tag = __import__("re").compile(r".*\{(.*)\}.*")
    for i in range(10_000):
        for made in (f":1:key{i}", f"site:2:{{user{i % 50}}}:cart", f"p:1:{{a}}{{b{i}}}"):
            tag = find_tag.match(made)
            assert names[ours.index(made)] == theirs.get_node(tag.group(1) if tag else made), made


def test_django_redis_shard_client_site(shards):
    from tests.conftest import make_redis

    location = [f"redis://127.0.0.1:{shards[0].port}/1", f"redis://127.0.0.1:{shards[1].port}/1"]
    options = {"CLIENT_CLASS": "django_redis.client.ShardClient"}
    cache = make_redis(location, KEY_PREFIX="drshard", OPTIONS=options)
    cache.clear()
    data = {f"k{i}": i for i in range(200)}
    assert cache.set_many(data) == []
    from django_redis.hash_ring import HashRing

    ring = HashRing(location)
    redis = pytest.importorskip("redis")
    clients = {location[0]: redis.Redis(port=shards[0].port, db=1), location[1]: redis.Redis(port=shards[1].port, db=1)}
    for key in data:
        made = cache.make_key(key)
        assert clients[ring.get_node(made)].exists(made), key
    assert cache.get_many(list(data)) == data
    assert len(cache.keys("k*")) == 200
    # {tag}s keep related keys on one server.
    cache.set_many({"{cart7}:a": 1, "{cart7}:b": 2})
    assert clients[ring.get_node("cart7")].exists(cache.make_key("{cart7}:a"), cache.make_key("{cart7}:b")) == 2
    assert cache.delete_pattern("k1*") == len([k for k in data if k.startswith("k1")])
    # ShardClient's ways to a key's server: get_server(made key), get_server_name; no get_client().
    for key in ("k2", "k3", "{cart7}:a"):
        made = cache.make_key(key)
        tag = re.match(r".*\{(.*)\}.*", made)  # ShardClient places a key by its {tag}
        name = ring.get_node(tag.group(1) if tag else made)
        assert cache.client.get_server_name(made) == name
        assert cache.client.get_server(made) is clients_of(cache)[name]
        assert cache.client.get_server(made).exists(made)
    with pytest.raises(NotImplementedError):
        cache.client.get_client()
    assert cache.clear() is True


def clients_of(cache):
    return {cache.client.get_server_name(cache.make_key(f"probe{i}")): cache.client.get_server(
        cache.make_key(f"probe{i}")) for i in range(50)}  # fmt: skip


def test_multi_key_calls_have_every_shard_working_at_once():
    """Three shards that each answer 0.25 s late: a get_many/set_many/delete_many spanning them
    takes about one delay, not three (each server's request is sent before any reply is read);
    and with a SOCKET_TIMEOUT shorter than the delay, it fails after one deadline."""
    import time

    from django_rustcache import ServerDown
    from tests.conftest import make_redis
    from tests.servers import DelayProxy

    server = RedisServer()
    proxies = [DelayProxy(server.port, 0.25) for _ in range(3)]
    try:
        location = [f"{p.location}/{db}" for db, p in enumerate(proxies)]
        options = {"CLIENT_CLASS": "django_redis.client.ShardClient", "RETRY_TIMEOUT": 0}
        cache = make_redis(location, OPTIONS=options)
        keys = [f"k{i}" for i in range(60)]
        assert len(cache._cache.groups([cache.make_key(k) for k in keys])) == 3
        cache.get("warm")  # connections are made (and logged in) before timing
        for call, answer in (
            (lambda: cache.set_many(dict.fromkeys(keys, 1)), []),
            (lambda: cache.get_many(keys), dict.fromkeys(keys, 1)),
            (lambda: cache.delete_many(keys), 60),
        ):
            call()  # each shard's first connection
            if answer == 60:
                cache.set_many(dict.fromkeys(keys, 1))
            start = time.monotonic()
            assert call() == answer
            took = time.monotonic() - start
            assert 0.24 < took < 0.6, took
        hurried = make_redis(location, KEY_PREFIX=cache.key_prefix, OPTIONS={**options, "SOCKET_TIMEOUT": 0.15})
        start = time.monotonic()
        with pytest.raises(ServerDown, match="timed out"):
            hurried.get_many(keys)
        assert time.monotonic() - start < 0.35
        # Every connection was settled, none left out of step: the next calls answer right.
        assert cache.get_many(keys) == {}
        cache.set_many({k: k for k in keys})
        assert cache.get_many(keys) == {k: k for k in keys}
    finally:
        for p in proxies:
            p.close()
        server.close()


def test_multi_key_calls_survive_a_shard_restart(shards):
    """A pooled connection gone stale (its shard restarted) is retried on a new one within the
    call, so a restart costs no error; values land on and come from every shard."""
    cache = make_sharded(shards, KEY_PREFIX="restart")
    data = {f"k{i}": i for i in range(90)}
    cache.set_many(data)
    assert cache.get_many(list(data)) == data
    shards[1].restart()
    cache.set_many(data)
    assert cache.get_many(list(data)) == data
    shards[0].restart()
    assert cache.get_many(list(data)) == {k: v for k, v in data.items() if cache._cache.node_of(cache.make_key(k)) != 0}
    cache.delete_many(list(data))
    assert cache.get_many(list(data)) == {}
    # set_many with timeout 0 deletes on every shard.
    cache.set_many(data)
    cache.set_many(data, 0)
    assert cache.get_many(list(data)) == {}


def test_async_calls_go_to_every_shard_at_once():
    """The async multi-key calls send every shard's part at once, as the blocking ones do."""
    import asyncio
    import time

    from tests.conftest import make_redis
    from tests.servers import DelayProxy

    server = RedisServer()
    proxies = [DelayProxy(server.port, 0.25) for _ in range(3)]
    try:
        location = [f"{p.location}/{db}" for db, p in enumerate(proxies)]
        cache = make_redis(location, OPTIONS={"CLIENT_CLASS": "django_redis.client.ShardClient"})
        keys = [f"k{i}" for i in range(60)]
        assert len(cache._cache.groups([cache.make_key(k) for k in keys])) == 3

        async def timed(call):
            start = time.monotonic()
            answer = await call
            return answer, time.monotonic() - start

        async def main():
            await cache.aset_many(dict.fromkeys(keys, 1))  # each shard's first connection
            set_many = await timed(cache.aset_many({k: k for k in keys}))
            get_many = await timed(cache.aget_many(keys))
            deleted = await timed(cache.adelete_many(keys))
            return set_many, get_many, deleted

        (stored, t1), (found, t2), (deleted, t3) = asyncio.run(main())
        assert stored == [] and found == {k: k for k in keys} and deleted == 60
        assert all(0.24 < t < 0.6 for t in (t1, t2, t3)), (t1, t2, t3)
        assert cache.get_many(keys) == {}
    finally:
        for p in proxies:
            p.close()
        server.close()


def test_bytes_keys_are_made_and_placed_as_django_makes_them(shards):
    """b"abc" is ":1:b'abc'" (Django's make_key), on the shard the ring gives that key, apart
    from "abc"; bytes that are not UTF-8 are a key like any other."""
    cache = make_sharded(shards, KEY_PREFIX="bytes")
    cache.set(b"abc", 1)
    cache.set("abc", 2)
    cache.set(b"\xff", 3)
    made = cache.make_key(b"abc")
    assert made == "bytes:1:b'abc'"
    holders = [i for i, r in enumerate(raw(shards)) if r.exists(made)]
    assert len(holders) == 1 and cache._cache.node_of(made) == holders[0]
    assert cache.get_many([b"abc", "abc", b"\xff"]) == {b"abc": 1, "abc": 2, b"\xff": 3}


@pytest.mark.parametrize("settings", ["django-redis", "django-redis-cache"])
def test_a_silent_shard_costs_only_the_calls_that_need_it(shards, settings):
    """A black-holed shard: multi-key calls wait on it (and fail), but single-key calls on the
    other shards never do. Before: a multi-key call that waited on the silent shard charged the
    healthy shards it visited with its timeout, and they were marked down (django-redis's
    ShardClient settings: 1,540 of 6,052 such calls failed; django-redis-cache's: 386)."""
    from tests.load import healthy_calls_while_one_server_is_silent

    options = {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2, "RETRY_TIMEOUT": 5}
    if settings == "django-redis":
        from django_rustcache.redis import RedisCache

        location = [shards[0].location, shards[1].location, f"unix://{shards[2].socket_path}"]
        cache = RedisCache(location, {"KEY_PREFIX": "silent", "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.ShardClient", **options}})  # fmt: skip
    else:
        cache = make_sharded(shards, KEY_PREFIX="silent-drc", OPTIONS=options)
    ring = cache._cache
    silent_node = ring.node_of(cache.make_key("elsewhere0"))
    stopped = shards[silent_node]
    healthy = [k for k in (f"h{i}" for i in range(300)) if ring.node_of(cache.make_key(k)) != silent_node][:40]
    for key in healthy:
        cache.set(key, 1)
    failed, made = healthy_calls_while_one_server_is_silent(cache, stopped, healthy, seconds=1.5)
    assert made > 100 and failed == 0, (failed, made)
    # The silent shard itself is skipped for RETRY_TIMEOUT: its calls fail at once.
    with pytest.raises(ServerDown, match="marked down"):
        cache.get("elsewhere0")
