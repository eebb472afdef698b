"""Signed values: OPTIONS["SIGN"] (or the ``RUSTCACHE_SIGN`` setting for every cache).

With ``SIGN: True`` each value a network backend stores carries an HMAC-SHA256 tag, keyed from
``SECRET_KEY``, computed in the Rust core without the GIL; a value read back whose tag does not
verify under ``SECRET_KEY`` or any of ``SECRET_KEY_FALLBACKS`` is a miss, never decoded (never
unpickled), counted (``refused_values`` in ``stats()``) and logged (``django_rustcache.signing``,
at most once a minute). ``SIGN: "migrate"`` also reads values without a tag (those written before
signing was turned on) and writes signed ones. Ints stored as digits stay unsigned (the server's
INCR/incr works on them; digits decode as nothing but an int). The in-process LRU keeps values in
the process: nothing to sign, the option is accepted and changes nothing.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["sign_settings"]


def sign_settings(options: dict[str, Any]) -> tuple[tuple[bytes, ...] | None, bool, bool]:
    """The secrets values are checked with (current first; None without a SECRET_KEY), whether
    values written are signed, and whether values without a tag are read.

    With ``SIGN`` off, values are written unsigned but signed ones are still read (checked): a
    site that turns signing off keeps its cache, and never decodes a forged signed value."""
    given = options.get("SIGN", getattr(settings, "RUSTCACHE_SIGN", False))
    if given is None or given is False:
        writes, accept_unsigned = False, True
    elif given is True:
        writes, accept_unsigned = True, False
    elif isinstance(given, str) and given.lower() == "migrate":
        writes, accept_unsigned = True, True
    else:
        raise ImproperlyConfigured(f"OPTIONS['SIGN'] = {given!r}: it takes True, False or 'migrate'")
    try:
        secret = settings.SECRET_KEY
    except ImproperlyConfigured:
        # Django raises on reading an empty SECRET_KEY; a site without one (a script configuring
        # only CACHES) must still get its cache, as with Django's own backends.
        secret = None
    if not secret:
        if writes:
            raise ImproperlyConfigured("OPTIONS['SIGN'] signs values with SECRET_KEY, which is empty")
        return None, False, True
    secrets = (secret, *getattr(settings, "SECRET_KEY_FALLBACKS", ()))
    return tuple(s.encode() if isinstance(s, str) else bytes(s) for s in secrets), writes, accept_unsigned
