"""The handler registry: names the broker dispatches, mapped to the functions that run them.

A handler takes the task's ``args`` bytes and returns its result, sync or ``async def``:

    from worker import handler

    @handler("resize")
    def resize(args: bytes) -> dict[str, int]:
        ...

The result becomes bytes by ``to_bytes``: bytes as they are, str as UTF-8, None as
empty, anything else as compact JSON. A handler that raises fails its run with the
error ``"<ExceptionType>: <message>"`` (``describe_error``).

Importing a module of handlers registers them (``load_module`` backs ``--handlers``).
This module must never run handlers or touch sockets: it is imported by handler
code and by the process pool's children.
"""

from __future__ import annotations

import importlib
import json
import threading
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from common.limits import MAX_TRACEBACK_LENGTH

#: What a handler is: a function of the task's argument bytes (may be ``async def``).
Handler = Callable[[bytes], Any]

F = TypeVar("F", bound=Callable[[bytes], Any])

_registry: dict[str, Handler] = {}
# Registration happens at import time, which may be in any thread.
_lock = threading.Lock()


def register(name: str, fn: Handler, *, replace: bool = False) -> None:
    """Serve ``fn`` under ``name``.

    Registering the same function again is a no-op (a module imported twice);
    registering a different one under a taken name is an error unless ``replace``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"handler name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"handler {name!r} must be callable, got {type(fn).__name__}")
    with _lock:
        existing = _registry.get(name)
        if existing is not None and existing is not fn and not replace:
            raise ValueError(
                f"handler {name!r} is already registered by "
                f"{getattr(existing, '__module__', '?')}.{getattr(existing, '__qualname__', '?')}"
            )
        _registry[name] = fn


def unregister(name: str) -> None:
    """Stop serving ``name`` (no error if it was not registered)."""
    with _lock:
        _registry.pop(name, None)


def handler(name: str) -> Callable[[F], F]:
    """Decorator: register the function as the handler ``name`` and return it unchanged."""

    def decorate(fn: F) -> F:
        register(name, fn)
        return fn

    return decorate


def get(name: str) -> Handler | None:
    """The handler registered under ``name``, or None."""
    return _registry.get(name)


def unknown(name: str) -> str:
    """Why a run of a handler that is not registered fails."""
    return f"unknown handler {name!r}"


def names() -> list[str]:
    """Names of all registered handlers, sorted."""
    with _lock:
        return sorted(_registry)


def load_module(name: str) -> ModuleType:
    """Import a module of handlers (``--handlers``); importing registers them."""
    return importlib.import_module(name)


def to_bytes(value: Any) -> bytes:
    """A handler's return value as result bytes.

    Raises ``TypeError`` (or ``ValueError``) for a value JSON cannot represent, which
    fails the run like any handler error.
    """
    if isinstance(value, bytes):
        return value
    if type(value) is int:  # its JSON, without the encoder (a count, an id: common results)
        return b"%d" % value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        return b""
    # allow_nan=False: NaN and Infinity are not JSON, and other languages cannot parse them.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def describe_traceback(exc: BaseException) -> str:
    """The traceback of a failed run, its end if it is longer than the protocol carries."""
    text = "".join(traceback.format_exception(exc))
    if len(text) > MAX_TRACEBACK_LENGTH:
        text = "…" + text[len(text) - MAX_TRACEBACK_LENGTH + 1 :]
    return text


def describe_error(exc: BaseException) -> str:
    """The error a failed run reports: ``"<ExceptionType>: <message>"``."""
    try:
        message = str(exc)
    except Exception:  # its __str__ raised: the type alone (traceback's own way)
        message = "<exception str() failed>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
