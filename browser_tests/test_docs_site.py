"""The documentation site, as built by ``mkdocs build --strict`` into site/, reviewed page by page
in headless Chromium: every page loads with its title and navigation, with no script error and
no request that fails, every image and chart is drawn, every link to another page of the site
leads to a page that exists, and the search finds an option. A screenshot of each page is kept
in browser_tests/artifacts/docs/. Run by ``nox -s docs`` after it builds the site."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest

from browser_tests.conftest import ARTIFACTS
from tests.servers import free_port

SITE = Path(__file__).resolve().parent.parent / "site"
PAGES = sorted(str(p.relative_to(SITE)) for p in SITE.rglob("*.html") if p.name != "404.html") if SITE.exists() else []


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def docs_url():
    if not (SITE / "index.html").exists():
        pytest.fail("site/ is not built: nox -s docs builds it (mkdocs build --strict)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(_Quiet, directory=SITE))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_the_site_has_every_page_the_issue_asks_for():
    wanted = {
        "index.html", "getting-started.html", "reference/options.html", "reference/exceptions.html",
        "operations.html", "security.html", "observability.html", "benchmarks.html", "changelog.html",
        "backends/orm.html",
        *(f"migrating/{name}.html" for name in (
            "django-redis", "django-redis-cache", "django-rediscache", "django-pylibmc", "django-pylibmccache",
            "django-pymemcachecache", "django-lrucache-backend", "locmemcache", "django-cache-machine",
        )),
    }  # fmt: skip
    assert wanted <= set(PAGES), sorted(wanted - set(PAGES))


@pytest.mark.parametrize("name", PAGES)
def test_each_page_loads_whole_in_chromium(name, docs_url, page):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"script: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    response = page.goto(urljoin(docs_url, name))
    assert response is not None and response.ok
    page.wait_for_load_state("networkidle")
    assert page.locator("article h1").count() == 1, "a page has one title"
    assert page.locator("nav.md-nav--primary").count() >= 1
    # Every image (the screenshots, the benchmark charts) is drawn, not a broken icon.
    broken = page.eval_on_selector_all(
        "article img", "imgs => imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
    )
    assert broken == []
    # Every link to a page of this site leads to one that exists (and its anchor to an element).
    hrefs = page.eval_on_selector_all("article a[href]", "links => links.map(a => a.href)")
    for href in hrefs:
        target, fragment = urldefrag(href)
        if not target.startswith(docs_url):
            continue
        path = SITE / urlsplit(target).path.lstrip("/")
        if path.is_dir():
            path = path / "index.html"
        assert path.exists(), f"{name} links to {href}, which the site does not have"
        if fragment and path.suffix == ".html":
            assert f'id="{fragment}"' in path.read_text(), f"{name} links to #{fragment}, absent from {path.name}"
    (ARTIFACTS / "docs").mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "docs" / (name.replace("/", "_").removesuffix(".html") + ".png")
    page.screenshot(path=str(shot), full_page=True)
    assert errors == []


def test_the_search_finds_an_option(docs_url, page):
    page.goto(docs_url + "index.html")
    page.click("label.md-search__icon, .md-search__input", timeout=5_000)
    # The index is loaded by a worker; a query typed before it is ready is not run again, so
    # wait until the search says it is ready ("Type to start searching").
    page.wait_for_function(
        "() => { const m = document.querySelector('.md-search-result__meta');"
        " return m && m.textContent.trim() !== '' && !/Initializing/i.test(m.textContent); }",
        timeout=30_000,
    )
    page.type("input.md-search__input", "SOCKET_CONNECT_TIMEOUT")
    results = page.locator(".md-search-result__item")
    results.first.wait_for(timeout=15_000)
    assert results.count() >= 1
    assert "options" in " ".join(results.locator("a").evaluate_all("links => links.map(a => a.href)"))
