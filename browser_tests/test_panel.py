"""The debug toolbar's panel, in headless Chromium: every call of a request (sync and native
async) with alias, method, keys and outcome; totals per alias; the ORM cache's reads with the
SQL a hit saved; a hostile key shown as text."""

from __future__ import annotations

import re

from browser_tests.conftest import shot

# The calls of /async-calls/: alias, method, outcome.
ASYNC_CALLS = [
    ("redis", "aset (async)", "stored"),
    ("redis", "aget (async)", "hit"),
    ("redis", "aget (async)", "miss"),
    ("memcached", "ahas_key (async)", "miss"),
]


def open_panel(page, site, path: str):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(site.url + path)
    page.click("#djdt-CachePanel a, #djdt-CachePanel")
    panel = page.locator("#CachePanel")
    panel.locator("table.djdt-rustcache-totals").wait_for()
    return panel, dialogs


def rows(panel, table: str) -> list[list[str]]:
    return [
        [" ".join(cell.split()) for cell in row.locator("td").all_inner_texts()]
        for row in panel.locator(f"table.{table} tbody tr").all()
    ]


def test_every_sync_call_is_listed_with_its_outcome(page, site):
    panel, dialogs = open_panel(page, site, "/calls/")
    calls = rows(panel, "djdt-rustcache-calls")
    seen = [(c[2], c[3], c[4], c[5]) for c in calls]
    assert seen == [
        ("default", "set", "'greeting'", "stored"),
        ("default", "get", "'greeting'", "hit"),
        ("default", "get", "'absent'", "miss"),
        ("redis", "delete_many", "'made'", "ok"),
        ("redis", "set", "'<script>alert(1)</script>'", "stored"),
        ("redis", "get_many", "'<script>alert(1)</script>', 'nothing-here'", "1 of 2 hit"),
        ("redis", "get_or_set", "'made'", "miss (set)"),
        ("memcached", "add", "'counter'", "stored"),
        ("memcached", "incr", "'counter'", "ok"),
        ("memcached", "delete", "'counter'", "ok"),
        ("memcached", "incr", "'counter'", "miss (ValueError)"),
        ("locmem", "set", "'plain'", "stored"),
        ("locmem", "get_many", "'plain', 'other'", "1 of 2 hit"),
    ]
    # Where each call was made: the view's own line.
    assert all("views.py" in c[6] and "in calls" in c[6] for c in calls)
    totals = {r[0]: r for r in rows(panel, "djdt-rustcache-totals")}
    # alias, backend, calls, hits, misses, errors
    assert totals["default"][2:6] == ["3", "1", "1", "0"]
    assert totals["redis"][2:6] == ["4", "1", "2", "0"]
    assert totals["memcached"][2:6] == ["4", "0", "1", "0"]
    assert totals["locmem"][1:6] == ["django.core.cache.backends.locmem.LocMemCache", "2", "1", "1", "0"]
    assert totals["redis"][1] == "django_rustcache.redis.RedisCache"
    # The hostile key is text on the page, never markup: no script ran, no element was made.
    assert dialogs == []
    assert panel.locator("script").count() == 0
    assert "<script>alert(1)</script>" in panel.inner_text()
    nav = page.locator("#djdt-CachePanel").inner_text()
    assert re.search(r"13 calls in [\d.]+ms", nav), nav
    shot(page, "panel-calls")


def test_native_async_calls_are_recorded_when_they_complete(page, site):
    panel, _ = open_panel(page, site, "/async-calls/")
    calls = rows(panel, "djdt-rustcache-calls")
    assert [(c[2], c[3], c[5]) for c in calls] == ASYNC_CALLS
    # Each timed for what the awaited call took: a positive time.
    assert all(float(c[1]) > 0 for c in calls)


def test_the_orm_cache_reads_are_listed_with_the_sql_a_hit_saved(page, site):
    site.manage("shell", "-c", "from django.core.cache import caches; caches['default'].clear()")
    panel, _ = open_panel(page, site, "/books/")
    assert page.locator("h1").inner_text() == "books"
    reads = rows(panel, "djdt-rustcache-orm")
    # The first read goes to the database and is stored; the same query again is a hit.
    assert [r[1] for r in reads] == ["miss", "hit (query saved)"]
    assert all(r[2] == "default" and r[3] == "shop.Book" for r in reads)
    assert 'FROM "shop_book"' in reads[1][4] and "LIKE" in reads[1][4]
    assert "B%" in reads[1][5] or "'B" in reads[1][5]
    assert "1 answered by the cache" in panel.inner_text()
    assert "1 query saved" in page.locator("#djdt-CachePanel").inner_text()
    shot(page, "panel-orm")
