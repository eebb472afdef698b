"""Django's ``a*`` cache methods over a client's native async calls.

Django's defaults run each async call through ``sync_to_async(thread_sensitive=True)``: every
async cache call of a process queued on one thread. Here each ``a*`` method makes its key (in
Rust where the default ``KEY_FUNCTION`` is in force), hands the call to the core's I/O runtime
and awaits an asyncio future of the running loop; the event loop is never blocked by I/O, and
any number of calls are in flight at once. Values are unpickled on the loop's thread; the
failure policy (``IGNORE_EXCEPTIONS``) is the sync path's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from django_rustcache._core import CacheError
from django_rustcache._failures import answers

T = TypeVar("T")


class AsyncClient(Protocol):
    """The core client's native async calls ``NativeAsync`` makes (each an asyncio future of the
    running loop; ``_core.pyi`` states them per client)."""

    def aget(self, prefix: str | None, version: Any, key: Any, default: Any = None) -> Awaitable[Any]: ...
    def aadd(self, prefix: str | None, version: Any, key: Any, value: Any, timeout: Any, /) -> Awaitable[bool]: ...
    def atouch(self, prefix: str | None, version: Any, key: Any, timeout: Any, /) -> Awaitable[bool]: ...
    def adelete(self, prefix: str | None, version: Any, key: Any) -> Awaitable[bool]: ...


AsyncClientT = TypeVar("AsyncClientT", bound=AsyncClient)


class NativeAsync(Generic[AsyncClientT]):
    """Mixed into a network backend (``NetworkCache``) whose client has the ``a*`` calls."""

    if TYPE_CHECKING:  # provided by the backend (NetworkCache, FailurePolicy, BaseCache)

        @property
        def _cache(self) -> AsyncClientT: ...

        _native_keys: bool
        _get_many_method: ClassVar[str]
        _set_many_method: ClassVar[str]
        _delete_many_method: ClassVar[str]
        key_prefix: str
        version: int
        _partial: tuple[bool, Any]
        _missing_key: Any

        def _failed(self, error: CacheError, answer: T) -> T: ...
        def make_key(self, key: Any, version: Any = None) -> Any: ...
        def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> Any: ...
        def _parts(self, key: Any, version: Any) -> tuple[Any, Any, Any]: ...
        def _made_keys(self, keys: Any, version: Any) -> dict[Any, Any]: ...
        # Each backend's own (their sync twins differ: redis's nx/xx, memcached's exptime).
        async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any: ...
        async def aincr(self, key: Any, delta: int = 1, version: Any = None) -> int: ...

    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        try:
            if self._native_keys:
                return await self._cache.aget(
                    self.key_prefix, self.version if version is None else version, key, default
                )
            return await self._cache.aget(None, None, self.make_key(key, version), default)
        except CacheError as e:
            return self._failed(e, default)

    @answers(False)
    async def aadd(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return await self._cache.aadd(*self._parts(key, version), value, self.get_backend_timeout(timeout))

    @answers(False)
    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return await self._cache.atouch(*self._parts(key, version), self.get_backend_timeout(timeout))

    @answers(False)
    async def adelete(self, key: Any, version: Any = None) -> bool:
        return await self._cache.adelete(*self._parts(key, version))

    async def aget_many(self, keys: Any, version: Any = None) -> dict[Any, Any]:
        get_many: Callable[..., Awaitable[dict[Any, Any]]] = getattr(self._cache, "a" + self._get_many_method)
        try:
            if self._native_keys:
                return await get_many(
                    self.key_prefix, self.version if version is None else version, keys, *self._partial
                )
            made = self._made_keys(keys, version)
            found = await get_many(None, None, list(made), *self._partial)
            return {made[k]: v for k, v in found.items()}
        except CacheError as e:
            return self._failed(e, {})

    async def aset_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list[Any]:
        if not data:
            return []
        set_many: Callable[..., Awaitable[list[Any]]] = getattr(self._cache, "a" + self._set_many_method)
        timeout = self.get_backend_timeout(timeout)
        try:
            if self._native_keys:
                v = self.version if version is None else version
                return list(await set_many(data, timeout, self.key_prefix, v, *self._partial))
            original = {self.make_key(k, version): k for k in data}
            made = {k: data[original[k]] for k in original}
            return [original[k] for k in await set_many(made, timeout, None, None, *self._partial)]
        except CacheError as e:
            return self._failed(e, list(data))

    @answers(None)
    async def adelete_many(self, keys: Any, version: Any = None) -> None:
        delete_many = getattr(self._cache, "a" + self._delete_many_method)
        if self._native_keys:
            await delete_many(self.key_prefix, self.version if version is None else version, keys)
        else:
            await delete_many(None, None, [self.make_key(k, version) for k in keys])

    async def adecr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return await self.aincr(key, -delta, version)

    # Django 6.1's defaults for these run the sync method in a thread whenever a backend has its
    # own sync one: here they are made of the native calls.

    async def aget_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        if getattr(self, "_stampede", None) is not None:
            from django_rustcache._stampede import Stampede

            return await Stampede.aget_or_set(self, key, default, timeout, version)  # type: ignore[arg-type]
        missing = self._missing_key
        value = await self.aget(key, missing, version=version)
        if value is not missing:
            return value
        if callable(default):
            default = default()
        await self.aadd(key, default, timeout=timeout, version=version)
        # Read again: another caller may have added a value between the aget and the aadd.
        return await self.aget(key, default, version=version)

    async def aincr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        old: int = self.version if version is None else version
        value = await self.aget(key, self._missing_key, version=old)
        if value is self._missing_key:
            raise ValueError(f"Key '{key}' not found")
        await self.aset(key, value, version=old + delta)
        await self.adelete(key, version=old)
        return old + delta

    async def adecr_version(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return await self.aincr_version(key, -delta, version)

    async def aclose(self, **kwargs: Any) -> None:
        """Keep the pool, as ``close`` does (nothing to hand to a thread)."""
