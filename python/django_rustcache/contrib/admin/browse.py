"""The key browser's view of each kind of cache: a page of keys matching a glob pattern (with
type, TTL and size), one key's details, and deleting keys. Keys are the server's own (made by
KEY_FUNCTION, prefix and version included). Values are described, never unpickled."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from django_rustcache import _core

__all__ = ["Browser", "Row", "browser_for", "describe"]

PAGE = 50
PREVIEW = 2000
# A listing reads at most this much of a server's key dump, and never past its deadline.
MAX_DUMP_BYTES = 32 << 20
DEADLINE = 5.0


@dataclass
class Row:
    key: bytes
    type: str = ""
    ttl: float | None = None
    """Seconds left; None: never expires."""
    size: int | None = None

    @property
    def text(self) -> str:
        return self.key.decode("utf-8", "backslashreplace")


@dataclass
class Details:
    row: Row
    format: str = ""
    preview: str = ""
    items: list[str] = field(default_factory=list)
    length: int | None = None


class Unlistable(Exception):
    """This cache's keys cannot be listed (the reason is the message)."""


def describe(data: bytes) -> tuple[str, str]:
    """What stored bytes are, and as much of them as is safe to show: text when they are text,
    else a hex dump. A pickle is named, never loaded."""
    size = len(data)
    if re.fullmatch(rb"-?\d{1,40}", data):
        return "integer", data.decode()
    if size >= 2 and data[0] == 0x80 and data[1] <= 5:
        return f"pickle, protocol {data[1]} (not unpickled here)", _hex(data)
    for magic, name in (
        (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
        (b"\x04\x22\x4d\x18", "lz4-compressed"),
        (b"\x1f\x8b", "gzip-compressed"),
    ):
        if data.startswith(magic):
            return name, _hex(data)
    if size >= 2 and data[0] == 0x78 and data[1] in (0x01, 0x5E, 0x9C, 0xDA):
        return "zlib-compressed", _hex(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "binary", _hex(data)
    if not text.isprintable() and not all(c.isprintable() or c in "\r\n\t" for c in text):
        return "binary", _hex(data)
    try:
        json.loads(text)
        kind = "JSON"
    except ValueError:
        kind = "text"
    return kind, text if len(text) <= PREVIEW else text[:PREVIEW] + "…"


def _hex(data: bytes) -> str:
    head = data[:256]
    lines = [head[i : i + 16].hex(" ") for i in range(0, len(head), 16)]
    return "\n".join(lines) + ("\n…" if len(data) > len(head) else "")


class Browser:
    kind = ""

    def page(self, pattern: str, cursor: str) -> tuple[list[Row], str | None, str]:
        """A page of keys matching `pattern` from `cursor` (``""``: the start), the cursor of the
        next page (None: this was the last), and a note on how it was read."""
        raise NotImplementedError

    def details(self, key: bytes) -> Details | None:
        raise NotImplementedError

    def delete(self, keys: list[bytes]) -> int:
        raise NotImplementedError


class RedisBrowser(Browser):
    """SCAN (never KEYS) over every node holding the cache's keys, then TYPE, PTTL and MEMORY
    USAGE of each key found."""

    kind = "redis"

    def __init__(self, client: Any) -> None:
        self.client = client

    def _run(self, *args: Any, node: int | None = None) -> Any:
        return self.client.execute(*args, write=False, idempotent=True, node=node)

    def page(self, pattern: str, cursor: str) -> tuple[list[Row], str | None, str]:
        # The cursor: node, SCAN cursor, and how many of that SCAN's batch were shown already
        # (a page ends at PAGE keys, within a batch if it must).
        nodes = self.client.nodes()
        parts = cursor.split(":")
        index, scan, skip = (
            (int(parts[0]), parts[1], int(parts[2])) if len(parts) == 3 and parts[0].isdigit() else (0, "0", 0)
        )
        keys: list[bytes] = []
        deadline = time.monotonic() + DEADLINE
        following: str | None = None
        while index < len(nodes):
            answer, batch = self._run("SCAN", scan, "MATCH", pattern, "COUNT", 500, node=nodes[index])
            batch = batch[skip:]
            room = PAGE - len(keys)
            if len(batch) > room:
                keys.extend(batch[:room])
                following = f"{index}:{scan}:{skip + room}"
                break
            keys.extend(batch)
            skip = 0
            scan = answer.decode() if isinstance(answer, bytes) else str(answer)
            if scan == "0":
                index += 1
            if index < len(nodes) and (len(keys) >= PAGE or time.monotonic() > deadline):
                following = f"{index}:{scan}:0"
                break
        return [self._row(k) for k in keys], following, f"SCAN MATCH over {len(nodes)} node(s)"

    def _row(self, key: bytes) -> Row:
        kind = self._run("TYPE", key)
        ttl = self._run("PTTL", key)
        try:
            size = self._run("MEMORY", "USAGE", key)
        except Exception:  # (MEMORY refused by an ACL, or an old server)
            size = None
        return Row(
            key,
            kind.decode() if isinstance(kind, bytes) else str(kind),
            None if ttl is None or ttl < 0 else ttl / 1000,
            size,
        )

    def details(self, key: bytes) -> Details | None:
        row = self._row(key)
        if row.type == "none":
            return None
        d = Details(row)
        if row.type == "string":
            data = self._run("GETRANGE", key, 0, 1 << 20)
            d.length = self._run("STRLEN", key)
            d.format, d.preview = describe(data)
        elif row.type == "hash":
            d.length = self._run("HLEN", key)
            _, flat = self._run("HSCAN", key, 0, "COUNT", 20)
            d.items = [f"{_show(flat[i])} = {_show(flat[i + 1])}" for i in range(0, min(len(flat), 40), 2)]
        elif row.type == "list":
            d.length = self._run("LLEN", key)
            d.items = [_show(v) for v in self._run("LRANGE", key, 0, 19)]
        elif row.type == "set":
            d.length = self._run("SCARD", key)
            _, members = self._run("SSCAN", key, 0, "COUNT", 20)
            d.items = [_show(v) for v in members[:20]]
        elif row.type == "zset":
            d.length = self._run("ZCARD", key)
            flat = self._run("ZRANGE", key, 0, 19, "WITHSCORES")
            d.items = [f"{_show(flat[i])} ({_show(flat[i + 1])})" for i in range(0, len(flat), 2)]
        elif row.type == "stream":
            d.length = self._run("XLEN", key)
        return d

    def delete(self, keys: list[bytes]) -> int:
        return int(self.client.execute("DEL", *keys, idempotent=True)) if keys else 0


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        kind, text = describe(value)
        return text if kind in ("integer", "text", "JSON") else f"<{kind}, {len(value)} bytes>"
    return str(value)


class MemcachedBrowser(Browser):
    """``lru_crawler metadump all`` on each server (memcached 1.4.31+, when the crawler is on
    and the server speaks the text protocol without SASL or TLS), read up to a bound."""

    kind = "memcached"

    def __init__(self, addresses: list[str], sasl: bool) -> None:
        self.addresses = addresses
        self.sasl = sasl

    def _connect(self, address: str) -> socket.socket:
        if self.sasl:
            raise Unlistable("the servers require SASL (binary protocol only): they do not list their keys")
        path = address.removeprefix("unix:")
        if path.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = path
        else:
            host, _, port = address.rpartition(":")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            target = (host.strip("[]"), int(port))
        sock.settimeout(DEADLINE)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        return sock

    def _ask(self, address: str, command: bytes, until: tuple[bytes, ...], bound: int = 4096) -> tuple[bytes, bool]:
        """The server's answer to one command, up to an ending in `until`, and whether it came
        whole: the answer is cut at `bound` bytes. One deadline for the whole exchange."""
        deadline = time.monotonic() + DEADLINE
        with self._connect(address) as sock:
            sock.sendall(command)
            got = bytearray()
            while not any(got.endswith(end) for end in until):
                if len(got) >= bound:
                    return bytes(got[:bound]), False
                chunk = _recv(sock, deadline, address)
                if not chunk:
                    raise ConnectionError(f"{address} closed the connection mid-answer")
                got += chunk
            return bytes(got), True

    def _dump(self) -> tuple[list[tuple[bytes, dict[str, str]]], bool]:
        """Every server's keys and their metadata, and whether every dump came whole."""
        found = []
        whole = True
        for address in self.addresses:
            try:
                answer, complete = self._ask(
                    address, b"lru_crawler metadump all\r\n", (b"END\r\n", b"ERROR\r\n"), MAX_DUMP_BYTES
                )
            except OSError as exc:
                raise Unlistable(f"{address}: {exc}") from None
            if not answer.startswith(b"key=") and not answer.startswith(b"END"):
                first = answer.split(b"\r\n", 1)[0][:80].decode("ascii", "replace")
                raise Unlistable(f"{address} does not list its keys (it answered {first!r})")
            if not complete:
                whole = False
                answer = answer[: answer.rfind(b"\n") + 1]  # (the cut line is dropped)
            for line in answer.split(b"\n"):
                if not line.startswith(b"key="):
                    continue
                text = line.strip().decode("ascii", "replace")
                fields = dict(part.split("=", 1) for part in text.split(" ") if "=" in part)
                found.append((unquote_to_bytes(fields.pop("key")), fields))
        return found, whole

    def page(self, pattern: str, cursor: str) -> tuple[list[Row], str | None, str]:
        skip = int(cursor) if cursor.isdigit() else 0
        now = time.time()
        dump, whole = self._dump()
        matched = [
            Row(key, "item", _expiry(fields.get("exp"), now), _int(fields.get("size")))
            for key, fields in dump
            if _core.glob_match(pattern, key.decode("utf-8", "surrogateescape"))
        ]
        rows = matched[skip : skip + PAGE]
        following = str(skip + PAGE) if skip + PAGE < len(matched) else None
        cut = "" if whole else f" (a dump was cut at {MAX_DUMP_BYTES >> 20} MiB: not every key is listed)"
        note = f"lru_crawler metadump on {len(self.addresses)} server(s): {len(matched)} matched{cut}"
        return rows, following, note

    @staticmethod
    def _check(key: bytes) -> None:
        # A key goes on a text command line: one that could end or split it is refused.
        if not 0 < len(key) <= 250 or any(b <= 0x20 or b == 0x7F for b in key):
            raise ValueError(f"not a memcached key: {key!r}")

    def details(self, key: bytes) -> Details | None:
        self._check(key)
        for address in self.addresses:
            found = self._meta_get(address, key)
            if found is None:
                continue
            head, data = found
            size = int(head[1])
            flags = {p[:1]: p[1:].decode("ascii", "replace") for p in head[2:]}
            ttl = _int(flags.get(b"t")) or -1
            d = Details(Row(key, f"item (flags {flags.get(b'f', '0')})", None if ttl < 0 else float(ttl), size))
            d.length = size
            d.format, d.preview = describe(data)
            return d
        return None

    def _meta_get(self, address: str, key: bytes) -> tuple[list[bytes], bytes] | None:
        """``mg`` (memcached 1.6+): the reply's head words and the value's first MiB; None on a
        miss. The length the server gives is read up to that bound only."""
        deadline = time.monotonic() + DEADLINE
        with self._connect(address) as sock:
            sock.sendall(b"mg " + key + b" s t f v\r\n")
            buf = bytearray()

            def more() -> None:
                chunk = _recv(sock, deadline, address)
                if not chunk:
                    raise ConnectionError(f"{address} closed the connection")
                buf.extend(chunk)

            while b"\r\n" not in buf:
                if len(buf) > 4096:
                    raise Unlistable(f"{address} sent a head line longer than 4 KiB")
                more()
            line = bytes(buf[: buf.index(b"\r\n")])
            if line.startswith(b"EN"):
                return None
            head = line.split(b" ")
            if head[0] != b"VA" or len(head) < 2 or not head[1].isdigit():
                raise Unlistable(f"{address} does not answer mg (it said {line[:80]!r})")
            start = len(line) + 2
            need = start + min(int(head[1]), 1 << 20)
            while len(buf) < need:
                more()
            return head, bytes(buf[start:need])

    def delete(self, keys: list[bytes]) -> int:
        gone = 0
        for key in keys:
            self._check(key)
        for key in keys:
            for address in self.addresses:
                if self._ask(address, b"delete " + key + b"\r\n", (b"\r\n",))[0].startswith(b"DELETED"):
                    gone += 1
                    break
        return gone


def _recv(sock: socket.socket, deadline: float, address: str) -> bytes:
    """One read, within what is left of the call's deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{address} did not answer within {DEADLINE:g} s")
    sock.settimeout(left)
    try:
        return sock.recv(1 << 16)
    except TimeoutError:
        raise TimeoutError(f"{address} did not answer within {DEADLINE:g} s") from None


def _expiry(exp: str | None, now: float) -> float | None:
    value = _int(exp)
    return None if value is None or value <= 0 else max(0.0, value - now)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class LruBrowser(Browser):
    """The in-process store of this process, most recently used first."""

    kind = "lru"

    def __init__(self, store: Any) -> None:
        self.store = store

    def page(self, pattern: str, cursor: str) -> tuple[list[Row], str | None, str]:
        skip = int(cursor) if cursor.isdigit() else 0
        found, matched = self.store.entries(pattern, skip, PAGE)
        now = time.time()
        rows = []
        for key, at, value in found:
            kind, size = self._kind_size(value)
            rows.append(Row(key.encode(), kind, None if at is None else max(0.0, at - now), size))
        following = str(skip + PAGE) if skip + PAGE < matched else None
        return rows, following, f"this process's store, most recently used first: {matched} matched"

    def _kind_size(self, value: Any) -> tuple[str, int | None]:
        if self.store.pickle_protocol is not None:
            return "pickle", len(value)
        return type(value).__qualname__, sys.getsizeof(value)

    def details(self, key: bytes) -> Details | None:
        text = key.decode()
        found, _ = self.store.entries(_escape_glob(text), 0, 1)
        if not found:
            return None
        _, at, value = found[0]
        kind, size = self._kind_size(value)
        d = Details(Row(key, kind, None if at is None else max(0.0, at - time.time()), size))
        if self.store.pickle_protocol is not None:
            d.format, d.preview = describe(value)
        elif isinstance(value, (str, bytes, int, float, bool, type(None))):
            d.format, d.preview = "live object", repr(value)[:PREVIEW]
        elif isinstance(value, (list, tuple, dict, set, frozenset)):
            d.format, d.length = "live object", len(value)
        else:
            d.format = "live object (not shown: its repr would run the site's code)"
        return d

    def delete(self, keys: list[bytes]) -> int:
        return sum(bool(self.store.delete(None, None, key.decode())) for key in keys)


def _escape_glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def browser_for(cache: Any) -> Browser:
    """The key browser of a cache backend; Unlistable when its kind has none."""
    from django_rustcache.lru import LRUObjectCache
    from django_rustcache.memcached import MemcachedCache
    from django_rustcache.redis import RedisCache

    # The alias's own client: the browser's calls are counted as the alias's (``execute``).
    if isinstance(cache, LRUObjectCache):
        return LruBrowser(cache._cache)
    if isinstance(cache, RedisCache):
        return RedisBrowser(cache._cache)
    if isinstance(cache, MemcachedCache):
        servers = [s["address"] for s in cache._cache.servers() if not s.get("removed")]
        return MemcachedBrowser(servers, bool(getattr(cache._settings, "username", None)))
    raise Unlistable(f"{type(cache).__qualname__} is not a django-rustcache backend: its keys cannot be listed here")
