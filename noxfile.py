"""Sessions: lint, rust, tests, django (5.2 on 3.11, 6.0 on 3.13 from the built wheel, 6.1 on
3.12), browser, docs, bench, demo.

``nox`` alone runs lint, rust, docs, tests, django and browser: the whole test suite that CI runs.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
nox.options.sessions = ["lint", "rust", "docs", "tests", "django", "browser"]
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


# (python, Django) pairs: Django 6.0 and 6.1 need Python 3.12+. Django 6.0 runs against the
# release wheel, installed where no Rust toolchain is (see django_from_wheel).
DJANGO_MATRIX = [(PY311, "5.2"), (PY313 or "3.13", "6.0"), (PY312 or "3.12", "6.1")]
DJANGO_PYTHON = {"5.2": "3.11", "6.0": "3.13", "6.1": "3.12"}
# What the Django suites need beside Django (tblib: Django's parallel runner sends failures'
# tracebacks between processes).
DJANGO_SUITE_DEPS = ("jinja2>=3", "dj-database-url>=2", "redis>=5", "django-redis>=5.4", "tblib>=3")


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
        # Their subject is how our cores meet servers that fail over, and the cluster and
        # sentinel topologies the Rust core drives, not the interpreter: once (on 3.11) keeps the
        # whole CI run under 35 minutes. Every other test runs on every interpreter.
        session.log("the failover and topology tests (Cluster, Sentinel, kills, slot migrations) run on 3.11 only")
        args = ["-m", "not failover and not topology", *args]
    session.run("pytest", *args)


@nox.session
@nox.parametrize("python,django", DJANGO_MATRIX, ids=["5.2", "6.0", "6.1"])
def django(session: nox.Session, django: str) -> None:
    """Django's own cache test suite against our backends, both storage modes; then the ORM query
    cache's tests and Cache Machine's own suite (orm_tests/run.py); then Django's own ORM test
    apps with every model's queryset caching (orm_tests/django_orm.py). On Django 6.0 all of it
    runs against the release wheel (see ``django_from_wheel``)."""
    require_python(session, DJANGO_PYTHON[django])
    ensure_servers(session)
    if django == "6.0":
        django_from_wheel(session, django)
        return
    install_package(session)
    session.install(f"Django~={django}.0", *DJANGO_SUITE_DEPS)
    session.run("python", "-c", "import django; print('Django', django.get_version())")
    session.run("python", "django_tests/run.py", *session.posargs)
    session.run("python", "orm_tests/run.py")
    session.run("python", "orm_tests/django_orm.py")


def build_dist(session: nox.Session) -> tuple[Path, Path]:
    """The release wheel and the sdist, built by maturin into dist/ and checked by twine: the
    wheel for CPython's stable ABI (cp311-abi3: one wheel for 3.11 and later; bench/abi3_cost.py
    measured what that costs), linked by zig against glibc 2.17 (manylinux2014: it installs on
    every Linux distribution still supported, not only on those as new as this machine), the
    sdist with everything a source build needs."""
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    # ziglang: zig's linker and the old glibc's symbols it links against, from PyPI.
    session.install("maturin>=1.16,<2", "twine>=6", "ziglang>=0.13")
    session.run(
        "maturin", "build", "--release", "--sdist", "--zig", "--compatibility", "manylinux_2_17",
        "--out", str(dist), env=BUILD_ENV,
    )  # fmt: skip
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        session.error(f"expected one wheel and one sdist in dist/, found {[p.name for p in dist.iterdir()]}")
    wheel, sdist = wheels[0], sdists[0]
    if "-cp311-abi3-" not in wheel.name or "manylinux_2_17_x86_64" not in wheel.name:
        session.error(f"the wheel is not the stable-ABI manylinux2014 one (cp311-abi3, manylinux_2_17): {wheel.name}")
    session.run("twine", "check", "--strict", str(wheel), str(sdist))
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[-1] for name in tar.getnames()}
    needed = {"Cargo.toml", "Cargo.lock", "pyproject.toml", "LICENSE", "src/lib.rs", "python/django_rustcache/lru.py"}
    if missing := sorted(needed - names):
        session.error(f"the sdist lacks {missing}")
    session.log(f"built {wheel.name} and {sdist.name}")
    return wheel, sdist


def without_rust() -> dict[str, str]:
    """An environment with no Rust toolchain: PATH without any directory holding cargo or rustc,
    and CARGO_HOME / RUSTUP_HOME pointing nowhere, so a source build could not happen."""
    keep = [
        d for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not any(os.path.exists(os.path.join(d, exe)) for exe in ("cargo", "rustc", "rustup"))
    ]  # fmt: skip
    return {"PATH": os.pathsep.join(keep), "CARGO_HOME": "/nonexistent", "RUSTUP_HOME": "/nonexistent"}


# Run in the wheel's venv, with the environment the suites get (nox's PATH additions included).
WHEEL_CHECK = """
import shutil, sys
import django
import django_rustcache._core as core
found = [exe for exe in ("cargo", "rustc") if shutil.which(exe)]
if found:
    sys.exit(f"{found} on PATH: the wheel is to be tested where no Rust toolchain is")
if "/site-packages/" not in core.__file__:
    sys.exit(f"{core.__file__} is not the installed wheel's")
print("Django", django.get_version(), "with", core.__file__, "and no Rust toolchain on PATH")
"""


def django_from_wheel(session: nox.Session, django: str) -> None:
    """Build the wheel and sdist, then install the wheel (never the source) into a fresh venv
    where no Rust toolchain can be found, and run Django's cache suite and the ORM cache's runs
    there (with ``-- --orm-apps``, Django's own ORM test apps too)."""
    wheel, _ = build_dist(session)
    venv = ROOT / ".nox" / "wheel-without-rust"
    shutil.rmtree(venv, ignore_errors=True)
    session.run("python", "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    env = without_rust()
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env["PATH"]])
    # --only-binary: pip may not fall back to building anything from source.
    pip = [python, "-m", "pip", "install", "-q", "--only-binary", "django-rustcache"]
    session.run(*pip, str(wheel), f"Django~={django}.0", *DJANGO_SUITE_DEPS, env=env, external=True)
    session.run(python, "-c", WHEEL_CHECK, env=env, external=True)
    suite_args = [a for a in session.posargs if a != "--orm-apps"]
    session.run(python, "django_tests/run.py", *suite_args, env=env, external=True)
    session.run(python, "orm_tests/run.py", env=env, external=True)
    # Django's own ORM test apps with the ORM cache on run on the oldest and the newest Django
    # (5.2 and 6.1); here they would cost the minute that keeps CI under 35 minutes:
    # `nox -s "django(6.0)" -- --orm-apps` runs them too (4,283 tests passed on 6.0.10).
    if "--orm-apps" in session.posargs:
        session.run(python, "orm_tests/django_orm.py", env=env, external=True)


@nox.session
@nox.parametrize("python,django", [DJANGO_MATRIX[0], DJANGO_MATRIX[2]], ids=["5.2", "6.1"])
def browser(session: nox.Session, django: str) -> None:
    """The debug toolbar's panel and the caches' admin page in headless Chromium (Debian's
    ``chromium``, driven by Playwright's Python package: no browser download), against the
    test site served by ``runserver`` and by uvicorn (ASGI), with real redis and memcached
    servers. Screenshots are kept in browser_tests/artifacts/."""
    require_python(session, DJANGO_PYTHON[django])
    ensure_servers(session)
    # (with its recommended packages: the fonts pages are drawn with)
    ensure_debian_packages(
        session, {"chromium": "chromium"}, "the browser tests drive Debian's Chromium", recommends=True
    )
    install_package(session, "test")
    session.install(f"Django~={django}.0", "django-debug-toolbar>=6", "playwright>=1.50", "uvicorn>=0.30")
    # (the docs pages are reviewed by the docs session, which builds the site first)
    session.run(
        "pytest", "browser_tests", "--ignore", "browser_tests/test_docs_site.py", "-p", "no:cacheprovider",
        *session.posargs,
    )  # fmt: skip


@nox.session(python=PY311)
def docs(session: nox.Session) -> None:
    """The documentation site: the benchmark charts drawn from bench/results/*.json (SVG, into
    docs/bench/), ``mkdocs build --strict`` into site/ (a broken link, anchor or missing page
    fails it), then every page reviewed in headless Chromium (browser_tests/test_docs_site.py,
    screenshots in browser_tests/artifacts/docs/). ``nox -s docs -- --build-only`` stops after
    the build (no Chromium needed)."""
    session.install("mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "matplotlib>=3.8")
    session.run("python", "bench/charts.py")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
    session.log(f"the site is in {ROOT / 'site'}: open site/index.html")
    if "--build-only" in session.posargs:
        return
    ensure_debian_packages(
        session, {"chromium": "chromium"}, "the docs pages are reviewed in Debian's Chromium", recommends=True
    )
    session.install("pytest>=8", "pytest-timeout>=2.3", "playwright>=1.50")
    session.run("pytest", "browser_tests/test_docs_site.py", "-p", "no:cacheprovider", "-q")


@nox.session(python=PY311)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmark against the peers (release build); the results as JSON in
    bench/results/ and the docs' charts drawn from them (bench/charts.py, into docs/bench/)."""
    ensure_servers(session)
    install_package(session, "bench", release=True)
    # django-redis-cache for the sharded suite (without its redis<4 pin; it runs on redis-py 8).
    session.install("--no-deps", "django-redis-cache>=3")
    # The runs the docs' charts are drawn from write their JSON into bench/results/.
    session.run("python", "bench/run.py", "--json", "bench/results/run-one.json", *session.posargs)
    session.run("python", "bench/async_run.py", "--json", "bench/results/async.json")
    session.run("python", "bench/near_zipf.py", "--json", "bench/results/near.json")
    session.run("python", "bench/orm.py")
    ensure_postgres(session)
    session.run("python", "bench/orm.py", "--db", "postgresql")
    session.install("matplotlib>=3.8")
    session.run("python", "bench/charts.py")


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
