"""The documentation site's reference pages against the code: every option a backend knows is on
the OPTIONS page (in its backend's section), every name there is one the code knows, and every
setting the package reads is on the Settings page. A new option without its line in the docs
fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PACKAGE = Path(__file__).resolve().parent.parent / "python" / "django_rustcache"


def sections(page: str) -> dict[str, set[str]]:
    """Heading -> the backticked names in the first column of that section's table rows."""
    found: dict[str, set[str]] = {}
    heading = ""
    for line in (DOCS / page).read_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            found.setdefault(heading, set())
        elif line.startswith("| `"):
            first = line.split("|")[1]
            found[heading].update(re.findall(r"`([^`]+)`", first))
    return found


OPTIONS = sections("reference/options.md")
COMMON = OPTIONS["OPTIONS reference"]
REDIS_SECTIONS = [
    "Connections and deadlines", "Topology", "Values", "Ours", "TLS", "The predecessors' machinery",
]  # fmt: skip


def test_the_options_every_backend_takes_are_listed_once_for_all():
    assert {"METRICS", "STAMPEDE", "SIGN"} == COMMON


def test_the_lru_options_are_the_codes():
    from django_rustcache.lru import LRUObjectCache

    assert set(LRUObjectCache.known_options) == OPTIONS["LRU"]


def test_the_memcached_options_and_behaviors_are_the_codes():
    from django_rustcache.memcached import MemcachedCache, PyLibMCCache

    top, behaviors = OPTIONS["Memcached"], OPTIONS["Memcached behaviors"]
    assert set(MemcachedCache.known_options) == top
    assert set(MemcachedCache.nested_options["behaviors"]) | set(MemcachedCache.nested_no_effect["behaviors"]) == (
        behaviors
    )
    # django-pylibmc's class: its OPTIONS are the behaviors, beside the same top-level names.
    assert set(PyLibMCCache.known_options) | set(PyLibMCCache.no_effect) == top | behaviors


@pytest.mark.parametrize("path", ["redis.RedisCache", "redis.RedisClusterCache", "redis_cache.RedisCache",
                                  "redis_cache.ShardedRedisCache"])  # fmt: skip
def test_the_redis_options_are_the_codes(path):
    from django.utils.module_loading import import_string

    cls = import_string(f"django_rustcache.{path}")
    documented = set().union(*(OPTIONS[name] for name in REDIS_SECTIONS))
    assert set(cls.known_options) | set(cls.no_effect) == documented
    # the W001 ones are those the page says have no effect
    assert set(cls.no_effect) <= OPTIONS["The predecessors' machinery"]


def test_the_nested_options_are_the_codes():
    from django_rustcache._stampede import _KEYS
    from django_rustcache.redis.options import NEAR_CACHE_KEYS

    assert set(_KEYS) == OPTIONS["`STAMPEDE`"]
    assert set(NEAR_CACHE_KEYS) == OPTIONS["`NEAR_CACHE`"]


def test_every_setting_the_package_reads_is_on_the_settings_page():
    documented = set().union(*sections("reference/settings.md").values())
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    read = set(re.findall(r'getattr\(settings, "([A-Z][A-Z0-9_]+)"', source))
    read |= set(re.findall(r'\("([A-Z][A-Z0-9_]+)", [^)]*\),', (PACKAGE / "orm" / "config.py").read_text()))
    for pair in re.findall(r'_env\("([A-Z_]+)", "([A-Z_]+)"\)', source):  # memcached's environment
        read |= set(pair)
    read -= {"CACHES"}
    assert read, "the scan found no settings: its patterns are out of date"
    assert read <= documented, sorted(read - documented)
