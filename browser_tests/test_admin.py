"""The caches' admin page, in headless Chromium: who may see it and delete, the overview, an
alias's servers, metrics and charts, and the key browser of redis, memcached and the LRU (a
hostile key shown as text, a pickle never loaded, a CSRF-less POST refused)."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import pytest

from browser_tests.conftest import follow, login, shot

BASE = "/admin/rustcache_admin/cache/"


@pytest.fixture(scope="module")
def seeded(site, servers):
    redis, memcached = servers
    site.manage(
        "shell",
        "-c",
        "from django.core.cache import caches\n"
        "caches['redis'].set_many({f'browse:{i:02}': i for i in range(60)}, timeout=600)\n"
        "caches['redis'].set('text', 'plain words', timeout=None)\n"
        "caches['memcached'].set_many({f'mc:{i}': 'v' for i in range(5)}, timeout=600)\n",
    )
    return redis, memcached


def test_a_visitor_who_is_not_staff_is_sent_to_the_login(page, site):
    login(page, site, "visitor")
    page.goto(site.url + BASE)
    assert "/admin/login/" in page.url
    assert page.locator("#id_username").count() == 1


def test_staff_without_the_permission_is_refused(page, site):
    login(page, site, "staffer")
    for path in (BASE, BASE + "redis/", BASE + "redis/keys/"):
        response = page.goto(site.url + path)
        assert response.status == 403, path
    # Nor is the app in the admin's index for them.
    page.goto(site.url + "/admin/")
    assert page.locator("a[href='/admin/rustcache_admin/cache/']").count() == 0


def test_the_overview_lists_every_alias_with_its_servers(page, site):
    login(page, site, "admin")
    page.goto(site.url + "/admin/")
    follow(page, "a[href='/admin/rustcache_admin/cache/']")
    rows = {
        r.locator("th").inner_text(): r.locator("td").all_inner_texts() for r in page.locator("#aliases tbody tr").all()
    }
    assert set(rows) == {"default", "redis", "memcached", "locmem"}
    assert rows["locmem"][1] == "Not a django-rustcache backend: no metrics."
    assert rows["redis"][0] == "django_rustcache.redis.RedisCache"
    assert rows["redis"][2] == "1 / 1"
    assert rows["memcached"][2] == "1 / 1"
    assert rows["default"][1] == "this process (browser-tests)"
    shot(page, "admin-overview")


def test_an_alias_page_shows_its_metrics_and_charts(page, site):
    login(page, site, "admin")
    for _ in range(3):
        page.goto(site.url + "/calls/")
        page.wait_for_timeout(1100)  # samples are taken every second here
    page.goto(site.url + BASE + "redis/")
    hits, misses = int(page.inner_text("#hits")), int(page.inner_text("#misses"))
    # Each /calls/ finds a key and misses one in its get_many; its get_or_set misses once, then hits.
    assert hits >= 6 and misses >= 4
    charts = page.locator("svg.rustcache-chart")
    assert charts.count() == 3
    # Samples a second apart: the hit ratio and the calls per second are drawn as lines.
    assert charts.nth(0).locator("polyline").count() == 1
    assert charts.nth(1).locator("polyline").count() == 1
    # The latency histogram of the busiest method has bars.
    assert charts.nth(2).locator("rect").count() > 2
    calls = page.locator("#calls").inner_text()
    assert "get_many" in calls and "set" in calls
    assert page.locator("text=up").first.is_visible()
    # No script fetched from anywhere: the charts are the page's own SVG.
    assert page.locator("script[src^='http']").count() == 0
    shot(page, "admin-alias")


def test_the_redis_key_browser_pages_with_scan_and_escapes_keys(page, site, seeded):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, site, "admin")
    page.goto(site.url + "/calls/")  # stores the key <script>alert(1)</script>
    page.goto(site.url + BASE + "redis/keys/")
    page.fill("#pattern", "*browse:*")
    follow(page, "#search input[type=submit]")
    first = page.locator("#keys tbody tr").all_inner_texts()
    assert page.locator("#next-page").count() == 1
    follow(page, "#next-page")
    second = page.locator("#keys tbody tr").all_inner_texts()
    keys = {line.split("\t")[1].strip() if "\t" in line else line for line in first + second}
    assert len(first) + len(second) == 60
    assert len(keys) == 60
    page.fill("#pattern", "*<script>*")
    follow(page, "#search input[type=submit]")
    row = page.locator("#keys tbody tr")
    assert row.count() == 1
    assert row.locator("code.key").inner_text() == ":1:<script>alert(1)</script>"
    assert "string" in row.inner_text() and "s" in row.inner_text()
    assert page.locator("#keys script").count() == 0
    assert dialogs == []
    shot(page, "admin-keys-redis")


def test_a_key_page_describes_its_value_and_never_unpickles_it(page, site, servers, tmp_path):
    redis, _ = servers
    marker = Path(tmp_path, "unpickled")

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    port = redis.location.rsplit(":", 1)[1]
    subprocess.run(
        ["redis-cli", "-p", port, "-x", "SET", ":1:evil"], input=pickle.dumps(Boom()), check=True, capture_output=True
    )
    login(page, site, "admin")
    page.goto(site.url + BASE + "redis/keys/?pattern=:1:evil")
    follow(page, "#keys a")
    assert page.inner_text("#format").startswith("pickle, protocol")
    assert "not unpickled" in page.inner_text("#format")
    assert not marker.exists()
    page.goto(site.url + BASE + "redis/keys/?pattern=:1:browse:07")
    follow(page, "#keys a")
    assert page.inner_text("#format") == "integer"
    assert page.inner_text("#value") == "7"


def test_deleting_keys_needs_the_permission_and_the_csrf_token(page, site, seeded):
    login(page, site, "viewer")
    page.goto(site.url + BASE + "redis/keys/?pattern=*browse:1*")
    # The viewer sees keys, with nothing to delete them with.
    assert page.locator("#keys tbody tr").count() == 10
    assert page.locator("#delete-selected").count() == 0
    token = page.locator("#keys a").first.get_attribute("href").split("k=")[1]
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    refused = page.request.post(
        site.url + BASE + "redis/delete/",
        form={"k": token, "csrfmiddlewaretoken": csrf},
        headers={"Referer": site.url + BASE},
    )
    assert refused.status == 403
    page.context.clear_cookies()

    login(page, site, "admin")
    page.goto(site.url + BASE + "redis/keys/?pattern=*browse:1*")
    token = page.locator("#keys a").first.get_attribute("href").split("k=")[1]
    # A POST without the CSRF token is refused, and deletes nothing.
    no_csrf = page.request.post(site.url + BASE + "redis/delete/", form={"k": token})
    assert no_csrf.status == 403
    page.reload()
    assert page.locator("#keys tbody tr").count() == 10
    # Through the page: two keys ticked, deleted.
    boxes = page.locator("#keys input[type=checkbox]")
    boxes.nth(0).check()
    boxes.nth(1).check()
    follow(page, "#delete-selected")
    assert "Deleted 2 of 2 key(s)." in page.locator(".messagelist").inner_text()
    assert page.locator("#keys tbody tr").count() == 8


def test_the_memcached_key_browser_lists_with_metadump(page, site, seeded):
    login(page, site, "admin")
    page.goto(site.url + BASE + "memcached/keys/?pattern=:1:mc:*")
    keys = sorted(page.locator("#keys code.key").all_inner_texts())
    assert keys == [f":1:mc:{i}" for i in range(5)], page.locator("#content-main").inner_text()
    assert "metadump" in page.locator(".note").last.inner_text()
    follow(page, "#keys a >> text=:1:mc:3")
    assert page.locator("#format").count() == 1
    follow(page, "#delete-key")
    assert "Deleted 1 of 1 key(s)." in page.locator(".messagelist").inner_text()
    page.goto(site.url + BASE + "memcached/keys/?pattern=:1:mc:*")
    assert sorted(page.locator("#keys code.key").all_inner_texts()) == [f":1:mc:{i}" for i in (0, 1, 2, 4)]
    shot(page, "admin-keys-memcached")


def test_the_lru_key_browser_lists_this_process_store(page, site):
    login(page, site, "admin")
    page.goto(site.url + "/calls/")  # sets "greeting" in the site's own LRU
    page.goto(site.url + BASE + "default/keys/?pattern=*greeting")
    assert page.locator("#keys code.key").all_inner_texts() == [":1:greeting"], page.locator(
        "#content-main"
    ).inner_text()
    assert "str" in page.locator("#keys tbody tr").inner_text()
    follow(page, "#keys a")
    assert page.inner_text("#value") == "'hello'"


def test_the_app_ships_every_migration_it_needs(site):
    # A site's makemigrations must never write a migration into the installed package.
    assert "No changes detected" in site.manage("makemigrations", "rustcache_admin", "--check", "--dry-run")
