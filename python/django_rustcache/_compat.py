"""Our exceptions, catchable the way the predecessors' users catch theirs.

Code written for django-redis catches ``django_redis.exceptions.ConnectionInterrupted`` (which it
raises for every connection failure, timeout and error reply) or redis-py's
``ConnectionError``/``TimeoutError``/``ResponseError``; code written for pylibmc catches
``pylibmc.Error``. Where those packages are installed (a site that is switching has them), the
exceptions our cores raise are subclasses of ours *and* of theirs, so that code keeps working;
nothing is imported that is not installed, and catching ours works either way.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from typing import Any

from django_rustcache import _core

_done = False
_lock = threading.Lock()

ROLES = ("server_down", "timeout", "server_error", "protocol_error", "tls_error", "cluster_busy")
OURS = {
    "server_down": _core.ServerDown,
    "timeout": _core.ServerDown,
    "server_error": _core.ServerError,
    "protocol_error": _core.ProtocolError,
    "tls_error": _core.TLSError,
    "cluster_busy": _core.ClusterBusy,
}


def _module(name: str) -> Any:
    """The module, if its package is installed (never an import error of ours)."""
    try:
        if importlib.util.find_spec(name.partition(".")[0]) is None:
            return None
        return importlib.import_module(name)
    except Exception:  # a broken install of a package we only borrow class names from
        return None


def predecessor_bases() -> dict[str, list[type]]:
    """For each role, the installed predecessors' exception classes it should also be."""
    bases: dict[str, list[type]] = {role: [] for role in ROLES}
    redis_errors = _module("redis.exceptions")
    if redis_errors is not None:
        bases["server_down"].append(redis_errors.ConnectionError)
        bases["timeout"].append(redis_errors.TimeoutError)
        bases["server_error"].append(redis_errors.ResponseError)
        bases["protocol_error"].append(redis_errors.InvalidResponse)
        bases["tls_error"].append(redis_errors.ConnectionError)
        bases["cluster_busy"].append(redis_errors.ConnectionError)
    django_redis = _module("django_redis.exceptions")
    if django_redis is not None:
        # django-redis wraps connection failures, timeouts and error replies alike.
        for role in ("server_down", "timeout", "server_error", "tls_error", "cluster_busy"):
            bases[role].append(django_redis.ConnectionInterrupted)
    pylibmc = _module("pylibmc")
    if pylibmc is not None:
        specific = {"server_down": "ConnectionError", "timeout": "ConnectionError", "server_error": "ServerError"}
        for role in ROLES:
            found = getattr(pylibmc, specific.get(role, ""), None) or getattr(pylibmc, "Error", None)
            if isinstance(found, type) and issubclass(found, BaseException):
                bases[role].append(found)
    return bases


def _init(self: BaseException, *args: Any) -> None:
    # Only the message: the predecessors' __init__ take other arguments (ConnectionInterrupted's
    # connection, redis-py's status_code), whose attributes are class defaults below.
    BaseException.__init__(self, *args)


def _reducer(ours: type) -> Any:
    def __reduce__(self: BaseException) -> tuple[Any, ...]:
        return (ours, self.args)

    return __reduce__


def _namespace(role: str) -> dict[str, Any]:
    """Our message and repr, and the attributes the predecessors' handlers (and reprs) read."""
    namespace: dict[str, Any] = {
        "__module__": "django_rustcache",
        "__init__": _init,
        "__str__": BaseException.__str__,
        "__repr__": BaseException.__repr__,
        # django-redis's ConnectionInterrupted
        "connection": None,
        "parent": None,
        # redis-py's RedisError
        "status_code": None,
    }
    redis_errors = _module("redis.exceptions")
    kinds = getattr(redis_errors, "ExceptionType", None)
    if kinds is not None:
        network = role not in ("server_error", "protocol_error")
        namespace["error_type"] = kinds.NETWORK if network else kinds.SERVER
    return namespace


def install() -> None:
    """Have the cores raise the catchable subclasses (once per process)."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        bases = predecessor_bases()
        if any(bases.values()):
            made = {}
            for role in ROLES:
                ours = OURS[role]
                theirs = tuple(dict.fromkeys(b for b in bases[role] if not issubclass(ours, b)))
                namespace = _namespace(role)
                # Pickled (a parallel test runner's failures, multiprocessing), it is ours again:
                # the made class cannot be found by its name.
                namespace["__reduce__"] = _reducer(ours)
                made[role] = type(ours.__name__, (ours, *theirs), namespace) if theirs else ours
            _core.set_exception_classes(*(made[role] for role in ROLES))
        _done = True
