"""Sessions: lint, rust, tests, django (5.2 on 3.11, 6.1 on 3.12), browser, bench, demo.

``nox`` alone runs lint, rust, tests, django and browser: the whole test suite that CI runs.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
nox.options.sessions = ["lint", "rust", "tests", "django", "browser"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
# A session whose interpreter is missing fails the run (nox's default outside CI is to skip it
# and still exit 0).
nox.options.error_on_missing_interpreters = True

# Reuse one cargo target dir across sessions and interpreters, so each build is incremental.
BUILD_ENV = {"CARGO_TARGET_DIR": str(ROOT / "target")}
DEV_BUILD = {**BUILD_ENV, "MATURIN_PEP517_ARGS": "--profile=dev"}


def find_python(version: str) -> str | None:
    """An interpreter for ``version``: on PATH, or under pyenv (whose shims hide all but one)."""
    exe = shutil.which(f"python{version}")
    if exe:
        try:
            subprocess.run([exe, "--version"], check=True, capture_output=True)
            return exe
        except (OSError, subprocess.CalledProcessError):
            pass
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    for root in filter(None, roots):
        found = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
        if found:
            return found[-1]
    return None


PY311 = find_python("3.11") or "3.11"
PY312 = find_python("3.12")
PY313 = find_python("3.13")
FOUND = {"3.11": PY311, "3.12": PY312, "3.13": PY313}


def require_python(session: nox.Session, version: str) -> None:
    """Fail, saying so, when a supported interpreter is missing: never a silent skip."""
    if FOUND[version] is None:
        session.error(
            f"Python {version} was not found on PATH or under pyenv; install it "
            f"(e.g. `pyenv install {version}`) to run this session."
        )


# (python, Django) pairs: Django 6.1 needs Python 3.12+.
DJANGO_MATRIX = [(PY311, "5.2"), (PY312 or "3.12", "6.1")]


# Server binaries the tests start themselves, and the Debian packages that bring them.
SERVERS = {
    "memcached": "memcached", "saslpasswd2": "sasl2-bin", "redis-server": "redis-server",
    # The cluster is made with `redis-cli --cluster create`; sentinels are `redis-server --sentinel`.
    "redis-cli": "redis-tools",
    # The TLS tests make their CA and certificates with it.
    "openssl": "openssl",
}  # fmt: skip


def ensure_servers(session: nox.Session) -> None:
    """Install the servers the tests run (as root, with apt-get), or say exactly what to install."""
    ensure_debian_packages(session, SERVERS, "the tests start real servers")


def ensure_debian_packages(session: nox.Session, packages: dict[str, str], why: str, recommends: bool = False) -> None:
    """Install Debian packages (program -> package) a session needs, as root with apt-get, or
    say exactly what to install."""
    missing = sorted({pkg for exe, pkg in packages.items() if shutil.which(exe) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.error(f"{why}; install them first: sudo apt-get install -y {' '.join(missing)}")
    session.log(f"installing {', '.join(missing)} with apt-get")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    lean = () if recommends else ("--no-install-recommends",)
    session.run("apt-get", "install", "-y", "-qq", *lean, *missing, external=True, env=env)


def install_package(session: nox.Session, *extras: str, release: bool = False) -> None:
    target = f".[{','.join(extras)}]" if extras else "."
    session.install(target, env=BUILD_ENV if release else DEV_BUILD)


@nox.session(python=PY311)
def lint(session: nox.Session) -> None:
    """rustfmt, clippy (pedantic, -D warnings), no pyo3 outside src/bindings, ruff, mypy
    (strict, on the package), stubtest."""
    session.run("cargo", "fmt", "--check", external=True)
    session.run("cargo", "clippy", "--all-targets", "--", "-D", "warnings", external=True, env=BUILD_ENV)
    leaks = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "src").rglob("*.rs")
        if "pyo3" in p.read_text() and p.relative_to(ROOT / "src").parts[0] not in ("bindings", "lib.rs")
    ]
    if leaks:
        session.error(f"pyo3 used outside src/bindings (DESIGN.md keeps the cores pure): {leaks}")
    install_package(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("python", "-m", "mypy")
    session.run("python", "-m", "mypy.stubtest", "django_rustcache._core", "--allowlist", ".stubtest-allowlist")


@nox.session(python=False)
def rust(session: nox.Session) -> None:
    """The pure cores' unit tests."""
    session.run("cargo", "test", "--lib", env=BUILD_ENV)


@nox.session
@nox.parametrize("python", [PY311, PY312 or "3.12", PY313 or "3.13"], ids=["3.11", "3.12", "3.13"])
def tests(session: nox.Session) -> None:
    """Build the package and run our pytest suite, on every supported Python."""
    require_python(session, next(v for v, exe in FOUND.items() if session.python in (v, exe)))
    ensure_servers(session)
    install_package(session, "test")
    # pylibmc, for the interoperability tests, where it installs (PyPI has wheels for some
    # interpreters only); without it those tests are skipped and say why.
    try:
        session.install("--only-binary", ":all:", "pylibmc", silent=True)
    except nox.command.CommandFailed:
        session.log("pylibmc has no wheel for this interpreter: the pylibmc interoperability tests will skip")
    # django-redis-cache, for its hash ring only (tests load its modules alone: its package wants a
    # redis-py older than the one the other tests use).
    session.install("--no-deps", "django-redis-cache>=3")
    args = session.posargs or ["tests"]
    if not session.posargs and session.python not in ("3.11", PY311):
        # Their subject is how our cores meet servers that fail over, not the interpreter: once
        # (on 3.11) keeps the whole CI run under 30 minutes.
        session.log("the failover tests (kills, failovers, slot migrations under load) run on 3.11 only")
        args = ["-m", "not failover", *args]
    session.run("pytest", *args)


@nox.session
@nox.parametrize("python,django", DJANGO_MATRIX, ids=["5.2", "6.1"])
def django(session: nox.Session, django: str) -> None:
    """Django's own cache test suite against our backends, both storage modes; then the ORM query
    cache's tests and Cache Machine's own suite (orm_tests/run.py); then Django's own ORM test
    apps with every model's queryset caching (orm_tests/django_orm.py)."""
    require_python(session, "3.12" if django == "6.1" else "3.11")
    ensure_servers(session)
    install_package(session)
    session.install(f"Django~={django}.0")
    # tblib: Django's parallel test runner sends failures' tracebacks between processes.
    session.install("jinja2>=3", "dj-database-url>=2", "redis>=5", "django-redis>=5.4", "tblib>=3")
    session.run("python", "-c", "import django; print('Django', django.get_version())")
    session.run("python", "django_tests/run.py", *session.posargs)
    session.run("python", "orm_tests/run.py")
    session.run("python", "orm_tests/django_orm.py")


@nox.session
@nox.parametrize("python,django", DJANGO_MATRIX, ids=["5.2", "6.1"])
def browser(session: nox.Session, django: str) -> None:
    """The debug toolbar's panel and the caches' admin page in headless Chromium (Debian's
    ``chromium``, driven by Playwright's Python package: no browser download), against the
    test site served by ``runserver`` and by uvicorn (ASGI), with real redis and memcached
    servers. Screenshots are kept in browser_tests/artifacts/."""
    require_python(session, "3.12" if django == "6.1" else "3.11")
    ensure_servers(session)
    # (with its recommended packages: the fonts pages are drawn with)
    ensure_debian_packages(
        session, {"chromium": "chromium"}, "the browser tests drive Debian's Chromium", recommends=True
    )
    install_package(session, "test")
    session.install(f"Django~={django}.0", "django-debug-toolbar>=6", "playwright>=1.50", "uvicorn>=0.30")
    session.run("pytest", "browser_tests", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PY311)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmark against the peers (release build)."""
    ensure_servers(session)
    install_package(session, "bench", release=True)
    # django-redis-cache for the sharded suite (without its redis<4 pin; it runs on redis-py 8).
    session.install("--no-deps", "django-redis-cache>=3")
    session.run("python", "bench/run.py", *session.posargs)
    session.run("python", "bench/async_run.py")
    session.run("python", "bench/orm.py")
    ensure_postgres(session)
    session.run("python", "bench/orm.py", "--db", "postgresql")


def ensure_postgres(session: nox.Session) -> None:
    """PostgreSQL's server programs for the ORM benchmark (installed as root with apt-get, or
    named)."""
    if glob.glob("/usr/lib/postgresql/*/bin/postgres") or shutil.which("postgres"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.error("the ORM benchmark on PostgreSQL starts a server: sudo apt-get install -y postgresql")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql", external=True, env=env)


@nox.session
def demo(session: nox.Session) -> None:
    """A small Django site on LRUObjectCache, exercised through every caching layer (on the
    interpreter nox runs on: any supported one)."""
    install_package(session, release=True)
    session.run("python", "demo/demo.py", *session.posargs)
