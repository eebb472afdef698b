"""The browser tests' fixtures: a redis and a memcached server, the test site served by
``manage.py runserver`` on a free port (its database migrated, its users made), and headless
Chromium (Debian's ``chromium``) driven by Playwright. Screenshots go to
``browser_tests/artifacts/``."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.servers import MemcachedServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("RC_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying Google's hosts on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USERS = """
from django.contrib.auth.models import Permission, User
User.objects.create_superuser("admin", "admin@example.com", "pw")
viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
viewer.user_permissions.add(Permission.objects.get(codename="view_cache"))
User.objects.create_user("staffer", password="pw", is_staff=True)
User.objects.create_user("visitor", password="pw")
from browser_tests.site.shop.models import Book
Book.objects.bulk_create([Book(title=t) for t in ("Beloved", "Bleak House", "Dune")])
"""


class Site:
    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url = url
        self.env = env

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "browser_tests/site/manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="session")
def servers():
    redis, memcached = RedisServer(), MemcachedServer()
    yield redis, memcached
    redis.close()
    memcached.close()


@pytest.fixture(scope="session")
def site(servers):
    redis, memcached = servers
    folder = tempfile.mkdtemp(prefix="rustcache-site-")
    env = {
        **os.environ,
        "RC_SITE_DIR": folder,
        "RC_REDIS": redis.location,
        "RC_MEMCACHED": memcached.location,
        "DJANGO_SETTINGS_MODULE": "browser_tests.site.settings",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    s = Site(f"http://127.0.0.1:{port}", env)
    s.manage("migrate", "--run-syncdb", "-v", "0")
    s.manage("shell", "-c", USERS)
    try:
        with serving(s, "runserver", "browser_tests/site/manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"):
            yield s
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def serving(site: Site, name: str, *args: str):
    """The site served by a server process (stopped by PID afterwards), once it answers."""
    log_path = Path(site.env["RC_SITE_DIR"], f"{name}.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=site.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(site.url + "/admin/login/", timeout=2).read()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(log_path.read_text()) from None
                    time.sleep(0.2)
            yield
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (nox -s browser installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    context.close()


def login(page, site, user: str) -> None:
    # The debug toolbar folded away (as its "Hide" leaves it), so the admin's pages are seen whole.
    page.context.add_init_script("localStorage.setItem('djdt.show', 'false')")
    page.goto(site.url + "/admin/login/?next=/admin/")
    page.fill("#id_username", user)
    page.fill("#id_password", "pw")
    follow(page, "input[type=submit]")


def follow(page, selector: str) -> None:
    """Click what leads to another page, and wait until that page has loaded (reading the
    page before it has would read the one clicked on)."""
    with page.expect_navigation():
        page.click(selector)


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def asgi_site(site):
    """The same site (and database) served by uvicorn: async views run on its event loop."""
    port = free_port()
    s = Site(f"http://127.0.0.1:{port}", site.env)
    with serving(s, "uvicorn", "-m", "uvicorn", "browser_tests.site.asgi:application", "--port", str(port)):
        yield s
