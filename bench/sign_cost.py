"""The cost of signed values (OPTIONS["SIGN"]) per get and per set of a small value: the
codec's write path (serialize, sign) and read path (verify, deserialize) of our redis client,
timed in-process with signing on and off, interleaved round by round, pinned to one CPU, medians
of many rounds; the difference is what signing adds to a ``set`` and to a ``get`` (the round trip
itself is the same bytes plus 37). Memcached's client signs with the same code (its context is
the 4 bytes of flags).

    python bench/sign_cost.py [rounds]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from django_rustcache._core import RedisClient

SECRET = [b"bench-secret-key-bench-secret-key-bench-secret-key"]
VALUES = {
    "small dict (pickled ~60 B)": {"user": 42, "name": "ada", "roles": ["admin"]},
    "str of 1 KiB": "x" * 1024,
    "bytes of 16 KiB": b"y" * 16384,
}
N = 2000  # calls per timed batch


def per_call(fn, arg) -> float:
    start = time.perf_counter_ns()
    for _ in range(N):
        fn(arg)
    return (time.perf_counter_ns() - start) / N / 1000  # us


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 101
    os.sched_setaffinity(0, {0})
    clients = {
        "off": RedisClient(["redis://127.0.0.1:1"]),
        "on": RedisClient(["redis://127.0.0.1:1"], sign_secrets=SECRET, sign_writes=True),
    }
    print(f"signing cost, {rounds} rounds of {N} calls, pinned to CPU 0 (us per call, medians)")
    print("| value | set path off | on | **added** | get path off | on | **added** |")
    print("|---|---|---|---|---|---|---|")
    for name, value in VALUES.items():
        stored = {k: c.dumps(value) for k, c in clients.items()}
        assert clients["on"].loads(stored["on"]) == value
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for k, c in clients.items():  # interleaved: drift hits both alike
                times.setdefault(("set", k), []).append(per_call(c.dumps, value))
                times.setdefault(("get", k), []).append(per_call(c.loads, stored[k]))
        m = {key: statistics.median(v) for key, v in times.items()}
        s_off, s_on, g_off, g_on = m["set", "off"], m["set", "on"], m["get", "off"], m["get", "on"]
        print(
            f"| {name} | {s_off:.2f} | {s_on:.2f} | **{s_on - s_off:+.2f}** "
            f"| {g_off:.2f} | {g_on:.2f} | **{g_on - g_off:+.2f}** |"
        )


if __name__ == "__main__":
    main()
