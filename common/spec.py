"""What a client may submit: the task spec and its validation.

The broker validates every submission with ``TaskSpec.parse`` whatever the
transport, so a direct ZeroMQ client and the REST API get the same checks and
the same messages. Errors name the offending field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from common.errors import InvalidInput
from common.models import RESOURCE_KINDS

#: Longest task name, handler name or tag accepted.
MAX_NAME_LENGTH = 256
#: Most dependencies one task may have.
MAX_DEPENDENCIES = 10_000
#: Largest priority magnitude (fits a signed 64-bit integer with room to spare).
MAX_PRIORITY = 2**62
#: Most retries one task may ask for.
MAX_RETRIES = 1000

_FIELDS = frozenset(
    {
        "name",
        "handler",
        "args",
        "dependencies",
        "priority",
        "max_retries",
        "timeout",
        "requires",
        "resources",
        "idempotency_key",
    }
)


@dataclass(slots=True)
class TaskSpec:
    """A validated submission."""

    handler: str
    name: str
    args: bytes = b""
    dependencies: list[str] = field(default_factory=list)
    priority: int = 0
    max_retries: int = 0
    timeout: float | None = None
    requires: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    idempotency_key: str | None = None

    @classmethod
    def parse(cls, raw: Any, where: str = "") -> TaskSpec:
        """Validate a submission (a map with ``args`` as bytes) or raise ``InvalidInput``.

        ``where`` prefixes field names in messages, e.g. ``tasks[3].``.
        """
        if not isinstance(raw, dict):
            raise InvalidInput(f"{where or 'task'} must be an object")
        if not _FIELDS.issuperset(raw):
            unknown = sorted(str(k) for k in raw if k not in _FIELDS)
            raise InvalidInput(f"unknown field {where}{unknown[0]!r}")
        get = raw.get
        handler = get("handler")
        if type(handler) is not str or not 0 < len(handler) <= MAX_NAME_LENGTH:
            handler = _name(handler, f"{where}handler", required=True)
        args = get("args")
        if args is None:
            args = b""
        elif not isinstance(args, bytes):
            raise InvalidInput(f"{where}args must be bytes")
        spec = cls(handler=handler, name=handler, args=args)
        # Most submissions set few of the optional fields: validate only those present.
        if (name := get("name")) is not None:
            spec.name = _name(name, f"{where}name", required=False) or handler
        if (dependencies := get("dependencies")) is not None:
            spec.dependencies = _str_list(dependencies, f"{where}dependencies", MAX_DEPENDENCIES)
        if (priority := get("priority")) is not None:
            spec.priority = _int(priority, f"{where}priority", 0, -MAX_PRIORITY, MAX_PRIORITY)
        if (max_retries := get("max_retries")) is not None:
            spec.max_retries = _int(max_retries, f"{where}max_retries", 0, 0, MAX_RETRIES)
        if (timeout := get("timeout")) is not None:
            spec.timeout = _timeout(timeout, f"{where}timeout")
        if (requires := get("requires")) is not None:
            spec.requires = _str_list(requires, f"{where}requires", 256)
        if (resources := get("resources")) is not None:
            spec.resources = parse_resources(resources, f"{where}resources")
        if (key := get("idempotency_key")) is not None:
            spec.idempotency_key = _name(key, f"{where}idempotency_key", required=False) or None
        return spec


def parse_resources(raw: Any, where: str) -> dict[str, float]:
    """Validate a ``{cpu, memory, disk}`` map of non-negative numbers."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object with cpu, memory and disk")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if key not in RESOURCE_KINDS:
            raise InvalidInput(f"{where} has unknown resource {key!r} (known: cpu, memory, disk)")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{where}.{key} must be a number")
        if not math.isfinite(value) or value < 0:
            raise InvalidInput(f"{where}.{key} must be a finite number >= 0")
        out[key] = float(value)
    return out


def parse_capabilities(raw: Any, where: str = "capabilities") -> list[str]:
    """Validate a list of capability names (handler names and tags)."""
    return _str_list(raw, where, 10_000)


def _name(value: Any, where: str, *, required: bool) -> str:
    if value is None:
        if required:
            raise InvalidInput(f"{where} is required")
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string")
    if required and not value:
        raise InvalidInput(f"{where} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{where} is longer than {MAX_NAME_LENGTH} characters")
    return value


def _str_list(value: Any, where: str, limit: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a list of strings")
    if len(value) > limit:
        raise InvalidInput(f"{where} has more than {limit} entries")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise InvalidInput(f"{where}[{i}] must be a non-empty string")
        if len(item) > MAX_NAME_LENGTH:
            raise InvalidInput(f"{where}[{i}] is longer than {MAX_NAME_LENGTH} characters")
    return list(dict.fromkeys(value))


def _int(value: Any, where: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{where} must be an integer")
    if not low <= value <= high:
        raise InvalidInput(f"{where} must be between {low} and {high}")
    return value


def _timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{where} must be a finite number of seconds > 0")
    return float(value)
