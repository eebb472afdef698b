"""The panel under an ASGI server (uvicorn): native async calls on the event loop are recorded,
and requests served at once on one loop each see only their own calls."""

from __future__ import annotations

import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from browser_tests.test_panel import ASYNC_CALLS, open_panel, rows


def test_async_calls_on_the_event_loop_are_recorded(page, asgi_site):
    panel, _ = open_panel(page, asgi_site, "/async-calls/")
    calls = rows(panel, "djdt-rustcache-calls")
    assert [(c[2], c[3], c[5]) for c in calls] == ASYNC_CALLS


def _panel_of(site, path: str) -> str:
    html = urllib.request.urlopen(site.url + path, timeout=10).read().decode()
    request_id = re.search(r'data-request-id="([^"]+)"', html).group(1)
    url = f"{site.url}/__debug__/render_panel/?request_id={request_id}&panel_id=CachePanel"
    return json.loads(urllib.request.urlopen(url, timeout=10).read())["content"]


def test_requests_served_at_once_each_see_only_their_own_calls(asgi_site):
    tags = ["red", "green", "blue", "gold"]
    with ThreadPoolExecutor(len(tags)) as pool:
        panels = dict(zip(tags, pool.map(lambda t: _panel_of(asgi_site, f"/tagged/?tag={t}"), tags), strict=True))
    for tag, content in panels.items():
        keys = re.findall(r"tag:(\w+):1", content)
        assert keys and set(keys) == {tag}, (tag, keys)
        assert content.count("(async)") == 3
