"""The Django-template twin of the Jinja2 fragment cache (Cache Machine had only the Jinja2 one):

    {% load rustcache_orm %}
    {% ormcache queryset_or_object [timeout=SECONDS] [extra=VALUE ...] %} ... {% endormcache %}

The fragment is rendered again once the object, or a query on its tables, changes; ``extra``
values (any number) are part of the key. Named ``ormcache`` because ``{% load cache %}`` owns
``cache``. Bypassed when ``settings.DEBUG`` is on, like the Jinja2 tag.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings
from django.utils import encoding

register = template.Library()


class OrmCacheNode(template.Node):
    def __init__(self, name: str, obj: Any, timeout: Any, extra: list[Any], nodelist: Any) -> None:
        self.name, self.obj, self.timeout, self.extra, self.nodelist = name, obj, timeout, extra, nodelist

    def render(self, context: Any) -> str:
        if settings.DEBUG:
            rendered: str = self.nodelist.render(context)
            return rendered
        from django.core.cache.backends.base import DEFAULT_TIMEOUT

        from django_rustcache.orm import base

        obj = self.obj.resolve(context)
        timeout = DEFAULT_TIMEOUT if self.timeout is None else self.timeout.resolve(context)
        extra = ":".join(encoding.smart_str(e.resolve(context)) for e in self.extra)
        key = f"fragment:{self.name}:{extra}"
        cached: str = base.cached_with(obj, lambda: self.nodelist.render(context), key, timeout)
        return cached


@register.tag("ormcache")
def ormcache(parser: Any, token: Any) -> OrmCacheNode:
    bits = token.split_contents()
    if len(bits) < 2:
        raise template.TemplateSyntaxError("'ormcache' takes a queryset or an object")
    obj = parser.compile_filter(bits[1])
    timeout = None
    extra = []
    for bit in bits[2:]:
        name, sep, value = bit.partition("=")
        if sep and name == "timeout":
            timeout = parser.compile_filter(value)
        elif sep and name == "extra":
            extra.append(parser.compile_filter(value))
        else:
            raise template.TemplateSyntaxError(f"'ormcache' takes timeout=... and extra=..., not {bit!r}")
    nodelist = parser.parse(("endormcache",))
    parser.delete_first_token()
    origin = getattr(parser, "origin", None)
    name = f"{getattr(origin, 'name', '') or '<string>'}+{token.lineno}"
    return OrmCacheNode(name, obj, timeout, extra, nodelist)
