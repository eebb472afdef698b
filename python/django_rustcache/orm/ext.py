"""Cache Machine's ``caching.ext``: the Jinja2 fragment cache.

    {% cache queryset_or_object[, timeout][, extra=[...]] %} ... {% endcache %}

The fragment is cached with ``cached_with``: rendered again once the object or a query on its
tables changes. Bypassed when ``settings.DEBUG`` is on, as in Cache Machine.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import encoding
from jinja2 import nodes
from jinja2.ext import Extension

from django_rustcache.orm import base


class FragmentCacheExtension(Extension):
    tags = {"cache"}

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        self.name = filename or name
        return source

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        # The template's name and line, and the object, make the key.
        args = [nodes.Const(f"{self.name}+{lineno}"), parser.parse_expression()]
        timeout: Any = nodes.Const(None)
        extra: Any = nodes.Const([])
        while parser.stream.skip_if("comma"):
            x = parser.parse_expression()
            if parser.stream.current.type == "assign":
                next(parser.stream)
                extra = parser.parse_expression()
            else:
                timeout = x
        args.extend([timeout, extra])
        body = parser.parse_statements(["name:endcache"], drop_needle=True)
        self.process_cache_arguments(args)
        return nodes.CallBlock(self.call_method("_cache_support", args), [], [], body).set_lineno(lineno)

    def process_cache_arguments(self, args: list[Any]) -> None:
        """Extension point for adding anything extra to the cache_support."""

    def _cache_support(self, name: str, obj: Any, timeout: Any, extra: Any, caller: Any) -> Any:
        if settings.DEBUG:
            return caller()
        extra = ":".join(map(encoding.smart_str, extra))
        key = f"fragment:{name}:{extra}"
        return base.cached_with(obj, caller, key, timeout)


cache = FragmentCacheExtension
