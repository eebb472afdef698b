"""A quick probe of the near cache's freshness under FLUSHALL (the README's one exception: a
write in the server's pass with a flush may be missed, by that one write, just after it):
one process, a writer thread (values increasing, each announced after it returned), a thread
that FLUSHALLs every 10 ms, and N reader threads with near caches that count every read older
than the last announced write; it fails only for one older by more than that one write.

    python bench/near_probe.py [readers=3] [seconds=5]
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_redis(location: str, **params):
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(CACHES={"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}})
        django.setup()
    from django_rustcache.redis import RedisCache

    return RedisCache(location, params)


def main() -> int:
    import redis
    from tests.servers import RedisServer

    readers = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    server = RedisServer()
    near = {"NEAR_CACHE": {"MAX_ENTRIES": 1000, "MAX_BYTES": 1 << 20}}
    writer = make_redis(server.location, KEY_PREFIX="probe")
    reader = make_redis(server.location, KEY_PREFIX="probe", OPTIONS=near)
    announced = [0]
    stop = threading.Event()
    stale: list[tuple[int, int]] = []

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            writer.set("k", n)
            announced[0] = n

    def flush() -> None:
        raw = redis.Redis(port=server.port)
        while not stop.is_set():
            time.sleep(0.01)
            raw.flushall()

    def read() -> None:
        while not stop.is_set():
            floor = announced[0]
            value = reader.get("k")
            if value is not None and value < floor:
                stale.append((value, floor))

    threads = [threading.Thread(target=write), threading.Thread(target=flush)]
    threads += [threading.Thread(target=read) for _ in range(readers)]
    try:
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
    finally:
        server.close()
    beyond = [(value, floor) for value, floor in stale if value < floor - 1]
    print(
        f"{len(stale)} reads older than the last returned write ({len(stale) - len(beyond)} by exactly"
        f" one: the flush's window), {len(beyond)} older still {beyond[:5]};"
        f" near cache {reader.stats()['near_cache']}; writes {announced[0]}"
    )
    return 1 if beyond else 0


if __name__ == "__main__":
    sys.exit(main())
