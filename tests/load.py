"""Shared by the network backends' tests: load from 8 threads while a server is killed and
restarted, checking that no call ever returns a value that was not written under its key."""

from __future__ import annotations

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
