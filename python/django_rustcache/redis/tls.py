"""redis-py's TLS settings, read as redis-py reads them, for the core's rustls client.

A server is under TLS when its URL is ``rediss://`` (or ``valkeys://``). Its settings come from
the URL's query (``?ssl_cert_reqs=none&ssl_ca_certs=/path``), which wins, then from OPTIONS
(Django's RedisCache passes its OPTIONS to redis-py's pool) and ``OPTIONS['CONNECTION_POOL_KWARGS']``
(django-redis). The defaults are redis-py's: the certificate's chain and its host name are
checked against the system's CAs.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

# Settings we act on.
TLS_OPTIONS = frozenset(
    {
        "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile",
        "ssl_check_hostname", "ssl_min_version",
    }
)  # fmt: skip
# redis-py's settings that rustls cannot honour: accepted only when unset (None or False), else
# refused, since ignoring them would weaken or change what the site asked for.
UNSUPPORTED = {
    "ssl_password": "encrypted private keys are not supported: give an unencrypted key file",
    "ssl_ciphers": "rustls offers only its own modern cipher suites; remove the setting",
    "ssl_include_verify_flags": "OpenSSL verify flags do not apply to rustls",
    "ssl_exclude_verify_flags": "OpenSSL verify flags do not apply to rustls",
    "ssl_validate_ocsp": "OCSP validation is not supported",
    "ssl_validate_ocsp_stapled": "OCSP validation is not supported",
    "ssl_ocsp_context": "OCSP validation is not supported",
    "ssl_ocsp_expected_cert": "OCSP validation is not supported",
}
ALL_NAMES = TLS_OPTIONS | UNSUPPORTED.keys()

TLS_SCHEMES = {"rediss": "redis", "valkeys": "valkey"}
_FALSE = {"0", "f", "false", "n", "no"}
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

# What the core takes per server: (verify, ca_certs, ca_path, ca_data, certfile, keyfile,
# tls13_only).
TlsArgs = tuple[str, str | None, str | None, str | None, str | None, str | None, bool]


def option_items(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The TLS settings OPTIONS give (CONNECTION_POOL_KWARGS first, top-level OPTIONS over them),
    hashable, to be kept with the client's settings."""
    merged: dict[str, Any] = {}
    for nested in ("CONNECTION_POOL_CLASS_KWARGS", "REDIS_CLIENT_KWARGS", "CONNECTION_POOL_KWARGS"):
        merged.update((k, v) for k, v in (options.get(nested) or {}).items() if k in ALL_NAMES)
    merged.update((k, v) for k, v in options.items() if k in ALL_NAMES)
    return tuple(sorted(((k, v if not isinstance(v, list) else tuple(v)) for k, v in merged.items()), key=str))


def _flag(value: Any, name: str, where: str) -> bool:
    if isinstance(value, str):  # from a URL query, as redis-py's to_bool reads it
        return value.strip().lower() not in _FALSE and value != ""
    if value is None or isinstance(value, (bool, int)):
        return bool(value)
    raise ImproperlyConfigured(f"{where}: {name} = {value!r} is not a boolean")


def _cert_reqs(value: Any, where: str) -> int:
    if value is None:
        return ssl.CERT_NONE
    if isinstance(value, str):
        if value not in _CERT_REQS:
            raise ImproperlyConfigured(
                f"{where}: ssl_cert_reqs = {value!r}: one of 'none', 'optional', 'required' (or ssl.CERT_*)"
            )
        return _CERT_REQS[value]
    if isinstance(value, int) and value in (ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED):
        return int(value)
    raise ImproperlyConfigured(f"{where}: ssl_cert_reqs = {value!r}: one of 'none', 'optional', 'required'")


def _tls13_only(value: Any, where: str) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        try:
            value = ssl.TLSVersion[value.removeprefix("ssl.").removeprefix("TLSVersion.")]
        except KeyError:
            raise ImproperlyConfigured(f"{where}: ssl_min_version = {value!r} is not an ssl.TLSVersion") from None
    if not isinstance(value, ssl.TLSVersion):
        raise ImproperlyConfigured(f"{where}: ssl_min_version = {value!r} is not an ssl.TLSVersion")
    # rustls speaks TLS 1.2 and 1.3: any minimum up to 1.2 allows both.
    return value in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.MAXIMUM_SUPPORTED)


def _ca_data(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):  # DER, as ssl's cadata takes it
        return ssl.DER_cert_to_PEM_cert(bytes(value))
    if isinstance(value, str):
        return value
    raise ImproperlyConfigured(f"{where}: ssl_ca_data = {value!r}: PEM text or DER bytes")


def _path(value: Any, name: str, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        return str(value)
    raise ImproperlyConfigured(f"{where}: {name} = {value!r} is not a path")


def split(url: str, options: tuple[tuple[str, Any], ...]) -> tuple[str, TlsArgs | None]:
    """A server URL as the core takes it (TLS schemes and queries taken out) and its TLS
    settings, or None when it is not under TLS. Settings in the URL's query win over OPTIONS'."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = {k: v for k, v in query if k in ALL_NAMES}
    plain = parts.scheme not in TLS_SCHEMES
    if plain:
        return url, None
    rest = urlencode([(k, v) for k, v in query if k not in ALL_NAMES])
    url = urlunsplit(parts._replace(scheme=TLS_SCHEMES[parts.scheme], query=rest))
    where = f"redis LOCATION {urlunsplit(parts._replace(netloc=parts.netloc.rpartition('@')[2]))!r}"
    s: dict[str, Any] = dict(options)
    s.update(from_url)
    return url, settings_args(s, where)


def settings_args(s: dict[str, Any], where: str) -> TlsArgs:
    """redis-py's ``ssl_*`` settings (a connection under TLS) as the core takes them."""
    for name, why in UNSUPPORTED.items():
        value = s.get(name)
        if value is not None and value is not False and value != "":
            raise ImproperlyConfigured(f"{where}: {name} = {value!r} is not supported by django-rustcache: {why}")
    reqs = _cert_reqs(s.get("ssl_cert_reqs", "required"), where)
    # As redis-py: no hostname check without a certificate check; CERT_OPTIONAL is CERT_REQUIRED
    # on a client (the ssl module's rule).
    check_hostname = _flag(s.get("ssl_check_hostname", True), "ssl_check_hostname", where)
    verify = "none" if reqs == ssl.CERT_NONE else ("full" if check_hostname else "chain")
    certfile = _path(s.get("ssl_certfile"), "ssl_certfile", where)
    keyfile = _path(s.get("ssl_keyfile"), "ssl_keyfile", where)
    if keyfile and not certfile:
        raise ImproperlyConfigured(f"{where}: ssl_keyfile needs ssl_certfile (the client's certificate) too")
    args: TlsArgs = (
        verify,
        _path(s.get("ssl_ca_certs"), "ssl_ca_certs", where),
        _path(s.get("ssl_ca_path"), "ssl_ca_path", where),
        _ca_data(s.get("ssl_ca_data"), where),
        certfile,
        keyfile,
        _tls13_only(s.get("ssl_min_version"), where),
    )
    return args
