"""Opt-in Cache Machine shim: after ``import django_rustcache.orm.compat`` (at the top of
settings.py, before any model is imported), ``import caching.base`` and the rest of Cache
Machine's module names load this package's modules, so a site keeps its imports unchanged, and
Cache Machine's own behaviour applies where ours is stricter (see ``config.CACHE_MACHINE_COMPAT``).

``caching.base`` *is* ``django_rustcache.orm.base``, not a copy: patching one patches the other.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

from django_rustcache.orm import config

NAMES = {
    "caching": "django_rustcache.orm",
    "caching.base": "django_rustcache.orm.base",
    "caching.config": "django_rustcache.orm.config",
    "caching.invalidation": "django_rustcache.orm.invalidation",
    "caching.ext": "django_rustcache.orm.ext",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: Any = None

    def create_module(self, spec: Any) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the module: give it back its own.
        module.__spec__ = self.spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in NAMES:
            return None
        return importlib.machinery.ModuleSpec(name, _Alias(NAMES[name]), is_package=name == "caching")


def install() -> None:
    config.shim_installed = True
    config.reset()
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
