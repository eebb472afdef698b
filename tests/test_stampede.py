"""OPTIONS["STAMPEDE"]: get_or_set computes once. The thundering herd against real servers:
4 processes x (16 threads + 64 asyncio tasks) ask for one missing key whose computation takes
200 ms; a lease holder killed mid-computation; a computation that raises; stale values served
while one caller recomputes; early recomputation; the option's checks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.conftest import make_lru, make_memcached, make_redis

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "herd_worker.py"
OPTIONS = {"STAMPEDE": {"LEASE": 5, "WAIT": 3}}


def configs(request) -> dict:
    kind = request.param
    if kind == "memcached":
        server = request.getfixturevalue("memcached_server")
        return {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": server.location}
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        return {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": server.location}
    cluster = request.getfixturevalue("redis_cluster")
    return {"BACKEND": "django_rustcache.redis.RedisClusterCache", "LOCATION": cluster.location}


@pytest.fixture(params=["memcached", "redis", "redis-cluster"])
def shared(request):
    return configs(request)


def herd(config: dict, key: str, tmp_path: Path, processes: int = 4, die_first: bool = False):
    """Run the herd; (each process's report, the computation log's lines)."""
    log = tmp_path / "computations.log"
    log.write_text("")
    start = time.time() + 2.0  # every process imported and waiting by then
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    arg = json.dumps({**config, "KEY_PREFIX": key, "OPTIONS": OPTIONS})
    procs = []
    if die_first:
        # One process takes the lease first and dies half way through its computation.
        first = subprocess.Popen([sys.executable, str(WORKER), arg, key, str(time.time()), str(log), "die"], env=env)
        first.wait(30)
        assert first.returncode == 9
        start = time.time() + 2.0
    for _ in range(processes):
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), arg, key, str(start), str(log)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    reports = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return reports, log.read_text().split("\n")[:-1]


def test_a_thundering_herd_computes_once(shared, tmp_path):
    reports, lines = herd(shared, f"herd{time.monotonic_ns()}", tmp_path)
    assert [line.split()[0] for line in lines] == ["start", "done"], lines
    values = {v for r in reports for v in r["values"]}
    assert len(values) == 1
    assert all(len(r["values"]) == 80 and not r["errors"] for r in reports)
    # Nobody waited past the bound (WAIT 3 s) plus the computation.
    assert max(r["slowest"] for r in reports) < 3.0 + 0.2 + 1.0


def test_a_dead_lease_holder_costs_at_most_one_computation_per_process(shared, tmp_path):
    reports, lines = herd(shared, f"dead{time.monotonic_ns()}", tmp_path, processes=3, die_first=True)
    done = [line for line in lines if line.startswith("done")]
    pids = [line.split()[1] for line in done]
    assert 1 <= len(done) <= 3 and len(set(pids)) == len(pids), lines
    assert all(len(r["values"]) == 80 and not r["errors"] for r in reports)
    assert max(r["slowest"] for r in reports) < 3.0 + 0.2 + 1.5


@pytest.fixture(params=["lru", "memcached", "redis"])
def cache(request):
    if request.param == "lru":
        return make_lru("object", OPTIONS={"STAMPEDE": {"LEASE": 5, "WAIT": 2, "STALE": 30}})
    if request.param == "memcached":
        server = request.getfixturevalue("memcached_server")
        return make_memcached(server.location, OPTIONS={"STAMPEDE": {"LEASE": 5, "WAIT": 2, "STALE": 30}})
    server = request.getfixturevalue("redis_server")
    return make_redis(server.location, OPTIONS={"STAMPEDE": {"LEASE": 5, "WAIT": 2, "STALE": 30}})


def test_threads_of_one_process_compute_once(cache):
    computed = []

    def compute():
        computed.append(1)
        time.sleep(0.2)
        return "v"

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or_set("k", compute, 60))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert computed == [1] and got == ["v"] * 16
    assert cache.get("k") == "v"


def test_tasks_of_one_loop_compute_once(cache):
    computed = []

    def compute():
        computed.append(1)
        return "v"

    async def go():
        return await asyncio.gather(*(cache.aget_or_set("k", compute, 60) for _ in range(64)))

    assert asyncio.run(go()) == ["v"] * 64
    assert computed == [1]


def test_a_computation_that_raises_is_seen_by_its_waiters_and_the_next_call_computes_again(cache):
    started = threading.Event()

    def fail():
        started.set()
        time.sleep(0.2)
        raise RuntimeError("backend down")

    errors, values = [], []

    def call(default):
        try:
            values.append(cache.get_or_set("k", default, 60))
        except RuntimeError as e:
            errors.append(str(e))

    first = threading.Thread(target=call, args=(fail,))
    first.start()
    started.wait(5)
    waiters = [threading.Thread(target=call, args=(lambda: "never",)) for _ in range(4)]
    for t in waiters:
        t.start()
    for t in [first, *waiters]:
        t.join()
    assert errors == ["backend down"] * 5 and values == []
    # The lease was released: the next call computes.
    assert cache.get_or_set("k", lambda: "second try", 60) == "second try"


@pytest.fixture(params=["lru", "memcached", "redis"])
def quick(request):
    """A cache whose WAIT is half a second."""
    options = {"STAMPEDE": {"LEASE": 5, "WAIT": 0.5}}
    if request.param == "lru":
        return make_lru("object", OPTIONS=options)
    if request.param == "memcached":
        return make_memcached(request.getfixturevalue("memcached_server").location, OPTIONS=options)
    return make_redis(request.getfixturevalue("redis_server").location, OPTIONS=options)


def run_together(*calls) -> None:
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_a_dead_lease_holder_costs_one_computation_shared_by_threads_and_event_loops(quick):
    # Another process took the lease and died: every caller here waits WAIT, then one computes
    # for the whole process (its threads, and the tasks of its two event loops), not one each.
    assert quick.add("k:lease", "a dead process's token", 30)
    computed, got = [], []

    def compute():
        computed.append(1)
        time.sleep(0.2)
        return "v"

    def loop():
        async def go():
            return await asyncio.gather(*(quick.aget_or_set("k", compute, 60) for _ in range(8)))

        got.extend(asyncio.run(go()))

    run_together(*[lambda: got.append(quick.get_or_set("k", compute, 60))] * 6, loop, loop)
    assert computed == [1] and got == ["v"] * 22


def test_callers_wait_for_their_process_computer_past_wait(quick):
    # The computation takes longer than WAIT: the process's other callers take its result.
    computed, got = [], []

    def compute():
        computed.append(1)
        time.sleep(1.2)
        return "v"

    def loop():
        async def go():
            return await asyncio.gather(*(quick.aget_or_set("k", compute, 60) for _ in range(8)))

        got.extend(asyncio.run(go()))

    run_together(*[lambda: got.append(quick.get_or_set("k", compute, 60))] * 6, loop)
    assert computed == [1] and got == ["v"] * 14


def test_a_computation_asking_for_its_own_key_does_not_wait_for_itself(quick):
    def outer():
        began = time.monotonic()
        inner = quick.get_or_set("k", lambda: "inner", 60)
        return inner, time.monotonic() - began

    value, waited = quick.get_or_set("k", outer, 60)
    # Waiting for itself would last WAIT + LEASE (5.5 s) before computing.
    assert value == "inner" and waited < 2.0

    async def aouter():
        began = time.monotonic()
        inner = await quick.aget_or_set("k2", lambda: "inner", 60)
        return inner, time.monotonic() - began

    value, waited = asyncio.run(quick.aget_or_set("k2", aouter, 60))
    assert value == "inner" and waited < 2.0


def test_a_cancelled_computer_leaves_its_waiters_to_compute_once(quick):
    computed = []

    async def never():
        await asyncio.sleep(30)

    def quickly():
        computed.append(1)
        return "v"

    async def go():
        leader = asyncio.ensure_future(quick.aget_or_set("k", never, 60))
        await asyncio.sleep(0.1)
        waiters = [asyncio.ensure_future(quick.aget_or_set("k", quickly, 60)) for _ in range(4)]
        await asyncio.sleep(0.1)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        return await asyncio.gather(*waiters)

    assert asyncio.run(go()) == ["v"] * 4
    assert computed == [1]
    assert quick.get("k") == "v"


def test_a_stale_value_is_served_while_one_caller_recomputes(cache):
    cache.get_or_set("k", lambda: "old", 1)
    time.sleep(1.1)
    assert cache.get("k") == "old"  # kept STALE seconds past its timeout
    entered, release = threading.Event(), threading.Event()

    def slow():
        entered.set()
        release.wait(5)
        return "new"

    refresher = threading.Thread(target=lambda: cache.get_or_set("k", slow, 60))
    refresher.start()
    entered.wait(5)
    started = time.monotonic()
    assert cache.get_or_set("k", lambda: "not called", 60) == "old"
    assert time.monotonic() - started < 0.5  # at once: nobody waits for the refresh
    release.set()
    refresher.join()
    assert cache.get_or_set("k", lambda: "not called", 60) == "new"


def test_early_recomputation_refreshes_a_value_before_it_expires(redis_server):
    cache = make_redis(redis_server.location, OPTIONS={"STAMPEDE": {"EARLY": 50}})
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return len(calls)

    assert cache.get_or_set("k", compute, 2) == 1
    # With a large beta and a computation of 50 ms, a call 1 s before expiry recomputes.
    time.sleep(1.0)
    got = [cache.get_or_set("k", compute, 2) for _ in range(5)]
    assert len(calls) >= 2 and got[-1] == len(calls)
    assert cache.ttl("k") > 1


def test_without_the_option_get_or_set_is_djangos(redis_server):
    cache = make_redis(redis_server.location)
    assert cache.get_or_set("k", lambda: 1, 60) == 1
    assert cache.get_many(["k", "k:stampede"]) == {"k": 1}


@pytest.mark.parametrize(
    "given", [{"LEASE": 0}, {"WAIT": -1}, {"STALE": "5"}, {"NOPE": 1}, "yes", {"EARLY": float("inf")}]
)
def test_a_malformed_option_is_refused(given, redis_server):
    with pytest.raises(ImproperlyConfigured, match="STAMPEDE"):
        make_redis(redis_server.location, OPTIONS={"STAMPEDE": given}).get("k")
    with pytest.raises(ImproperlyConfigured, match="STAMPEDE"):
        make_lru("object", OPTIONS={"STAMPEDE": given})
