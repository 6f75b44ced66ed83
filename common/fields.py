"""Checks of single values from a peer: each returns the value in its one accepted form, or
raises ``InvalidInput`` naming the field.

``where`` is the field's name as the peer knows it (``tasks[3].priority``). The bounds
come from ``common.limits``. Every string must be valid UTF-8 (no lone surrogates, which
JSON and Python allow and msgpack cannot carry), every number finite and every integer
within what a signed 64-bit integer holds, so that what passes here can be stored, sent
and shown by every layer. Nothing here knows which message a field belongs to
(``common.messages``, ``common.ops`` and ``common.spec`` do).
"""

from __future__ import annotations

import math
from typing import Any

from common.errors import InvalidInput
from common.limits import (
    ID_CHARACTERS,
    ID_PATTERN,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_RESOURCE,
)
from common.models import RESOURCE_KINDS

#: The range of a signed 64-bit integer: what the store and msgpack hold.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def is_utf8(value: str) -> bool:
    """Whether the string can be encoded as UTF-8 (it has no lone surrogate)."""
    if value.isascii():  # constant time for CPython's compact strings: the usual case
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(value: Any, where: str, max_length: int = MAX_NAME_LENGTH, *, empty: bool = False) -> str:
    """A string of at most ``max_length`` characters (non-empty unless ``empty``)."""
    if type(value) is not str:
        if value is None:
            raise InvalidInput(f"{where} is required")
        raise InvalidInput(f"{where} must be a string")
    if not value and not empty:
        raise InvalidInput(f"{where} must not be empty")
    if len(value) > max_length:
        raise InvalidInput(f"{where} is longer than {max_length} characters")
    if not is_utf8(value):
        raise InvalidInput(f"{where} is not valid UTF-8 (it holds a lone surrogate)")
    return value


def optional_text(value: Any, where: str, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """``text`` that may be None (absent); an empty string is kept as it is."""
    if value is None:
        return None
    return text(value, where, max_length, empty=True)


def identifier(value: Any, where: str) -> str:
    """An id: 1 to 128 characters of ``[A-Za-z0-9._:-]``."""
    if type(value) is not str:
        if value is None:
            raise InvalidInput(f"{where} is required")
        raise InvalidInput(f"{where} must be a string")
    if ID_PATTERN.fullmatch(value) is None:
        raise InvalidInput(
            f"{where} must be 1 to {MAX_ID_LENGTH} characters of {ID_CHARACTERS}, "
            f"not {value[: MAX_ID_LENGTH + 8]!r}"
        )
    return value


def integer(value: Any, where: str, low: int, high: int) -> int:
    """An integer (not a boolean) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{where} must be an integer")
    if not low <= value <= high:
        raise InvalidInput(f"{where} must be between {low} and {high}")
    return int(value)  # an int subclass (an IntEnum) becomes its plain value


def number(value: Any, where: str, low: float, high: float, *, above: bool = False) -> float:
    """A finite number in ``low..high`` (strictly above ``low`` if ``above``), as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise InvalidInput(f"{where} must be between {low:g} and {high:g}")
    result = float(value)
    if not math.isfinite(result):
        raise InvalidInput(f"{where} must be a finite number")
    if result < low or (above and result == low) or result > high:
        bound = f"> {low:g}" if above else f">= {low:g}"
        raise InvalidInput(f"{where} must be a number {bound} and <= {high:g}")
    return result


def seconds(value: Any, where: str, high: float) -> float:
    """A duration from 0 to ``high`` seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number of seconds")
    return number(value, where, 0.0, high)


def names(value: Any, where: str, limit: int) -> list[str]:
    """A list of at most ``limit`` non-empty names, each once, in their first order."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"{where} must be a list of strings")
    if len(value) > limit:
        raise InvalidInput(f"{where} has more than {limit} entries")
    for i, item in enumerate(value):
        if type(item) is not str or not item or len(item) > MAX_NAME_LENGTH or not is_utf8(item):
            text(item, f"{where}[{i}]")  # raises, naming what is wrong
    return list(dict.fromkeys(value))


def identifiers(value: Any, where: str, limit: int) -> list[str]:
    """A list of at most ``limit`` ids, each once, in their first order."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"{where} must be a list of ids")
    if len(value) > limit:
        raise InvalidInput(f"{where} has more than {limit} entries")
    for i, item in enumerate(value):
        identifier(item, f"{where}[{i}]")
    return list(dict.fromkeys(value))


def resources(value: Any, where: str) -> dict[str, float]:
    """A ``{cpu, memory, disk}`` map of amounts from 0 to ``MAX_RESOURCE``; None entries
    and a None map mean none."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object with cpu, memory and disk")
    out: dict[str, float] = {}
    for key, amount in value.items():
        if key not in RESOURCE_KINDS:
            shown = key[:MAX_NAME_LENGTH] if isinstance(key, str) else key
            raise InvalidInput(f"{where} has unknown resource {shown!r} (known: cpu, memory, disk)")
        if amount is None:
            continue
        out[key] = number(amount, f"{where}.{key}", 0.0, MAX_RESOURCE)
    return out


def binary(value: Any, where: str) -> bytes | None:
    """Bytes, or None."""
    if value is None or type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidInput(f"{where} must be bytes")


def mapping(value: Any, where: str) -> dict[str, Any]:
    """A map (a msgpack map, a JSON object)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a map")
    return value


def known_keys(value: dict[str, Any], allowed: frozenset[str], where: str = "") -> None:
    """Refuse a key outside ``allowed``, so a misspelt field is not silently ignored."""
    if not allowed.issuperset(value):
        unknown = sorted(str(k)[:MAX_NAME_LENGTH] for k in value if k not in allowed)
        raise InvalidInput(f"unknown field {where}{unknown[0]!r}")
