"""Shared by the network backends' tests: load from 8 threads while a server is killed and
restarted, checking that no call ever returns a value that was not written under its key."""

from __future__ import annotations

import contextlib
import threading
import time


def hammer_through_restarts(cache, server, expected_error: type[Exception], restarts: int = 3) -> None:
    stop = threading.Event()
    wrong, errors, ok = [], [], [0]

    def work(t: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"t{t}-{i % 50}"
            try:
                cache.set(key, key)
                got = cache.get(key)
                if got is not None and got != key:
                    wrong.append((key, got))
                many = cache.get_many([f"t{t}-{j}" for j in range(5)])
                wrong.extend((k, v) for k, v in many.items() if v != k)
                ok[0] += 1
            except expected_error as e:
                errors.append(e)
            i += 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for _ in range(restarts):
            server.kill()
            time.sleep(0.3)
            server.start()
            time.sleep(0.5)
        before = ok[0]
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not wrong, wrong[:5]
    assert errors, "the restarts were never noticed"
    assert ok[0] > before, "the pool did not recover after the last restart"


def healthy_calls_while_one_server_is_silent(cache, stopped, healthy_keys, seconds: float) -> tuple[int, int]:
    """Stop one server (SIGSTOP: it keeps its connections and accepts new ones in the kernel,
    and answers nothing, as a black-holed host), then, from 2 threads, multi-key calls over every
    server and from 2 more single-key calls on keys the other servers hold, for ``seconds``.
    How many of those single-key calls failed, and how many were made."""
    import os
    import signal

    everything = list(healthy_keys) + [f"elsewhere{i}" for i in range(30)]
    failed, made = [0], [0]
    os.kill(stopped.proc.pid, signal.SIGSTOP)
    try:
        stop = time.monotonic() + seconds

        def many() -> None:
            while time.monotonic() < stop:
                with contextlib.suppress(Exception):
                    cache.get_many(everything)

        def single() -> None:
            while time.monotonic() < stop:
                for key in healthy_keys:
                    made[0] += 1
                    try:
                        assert cache.get(key) == 1
                    except Exception:
                        failed[0] += 1

        threads = [threading.Thread(target=many) for _ in range(2)] + [
            threading.Thread(target=single) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.kill(stopped.proc.pid, signal.SIGCONT)
    return failed[0], made[0]
