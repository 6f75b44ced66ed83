"""What a client may submit: the task spec, checked once where it enters.

``TaskSpec.parse`` turns a submission (a map, as msgpack or JSON gives it, with ``args``
as bytes) into a ``TaskSpec`` whose every field is in its one accepted form, or raises
``InvalidInput`` naming the field. The REST API and the client library parse what they
are given before they send it, the broker what it receives: whatever the door, the same
checks and the same messages. ``TaskSpec.to_wire`` is the map that travels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common import fields
from common.errors import InvalidInput
from common.limits import (
    MAX_DEPENDENCIES,
    MAX_NAME_LENGTH,
    MAX_PRIORITY,
    MAX_REQUIRES,
    MAX_RETRIES,
    MAX_TIMEOUT,
)

#: The fields of a task spec; any other is refused.
FIELDS = frozenset(
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
    """A checked submission."""

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
        """Check a submission (a map with ``args`` as bytes) or raise ``InvalidInput``.

        ``where`` prefixes field names in messages, e.g. ``tasks[3].``.
        """
        if not isinstance(raw, dict):
            raise InvalidInput(f"{where.rstrip('.') or 'task'} must be an object")
        if not FIELDS.issuperset(raw):
            fields.known_keys(raw, FIELDS, where)
        get = raw.get
        handler = get("handler")
        if type(handler) is not str or not handler.isascii() or not 0 < len(handler) <= 256:
            handler = fields.text(handler, f"{where}handler")
        args = get("args")
        if args is None:
            args = b""
        elif type(args) is not bytes:
            args = fields.binary(args, f"{where}args") or b""
        spec = cls(handler=handler, name=handler, args=args)
        # Most submissions set few of the optional fields: check only those present.
        if (name := get("name")) is not None:
            spec.name = fields.text(name, f"{where}name", empty=True) or handler
        if (dependencies := get("dependencies")) is not None:
            spec.dependencies = fields.identifiers(
                dependencies, f"{where}dependencies", MAX_DEPENDENCIES
            )
        if (priority := get("priority")) is not None:
            spec.priority = fields.integer(
                priority, f"{where}priority", -MAX_PRIORITY, MAX_PRIORITY
            )
        if (max_retries := get("max_retries")) is not None:
            spec.max_retries = fields.integer(max_retries, f"{where}max_retries", 0, MAX_RETRIES)
        if (timeout := get("timeout")) is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise InvalidInput(f"{where}timeout must be a number of seconds")
            spec.timeout = fields.number(timeout, f"{where}timeout", 0.0, MAX_TIMEOUT, above=True)
        if (requires := get("requires")) is not None:
            spec.requires = fields.names(requires, f"{where}requires", MAX_REQUIRES)
        if (resources := get("resources")) is not None:
            spec.resources = fields.resources(resources, f"{where}resources")
        if (key := get("idempotency_key")) is not None:
            key = fields.text(key, f"{where}idempotency_key", MAX_NAME_LENGTH, empty=True)
            spec.idempotency_key = key or None
        return spec

    def to_wire(self) -> dict[str, Any]:
        """The spec as a submit carries it: only what differs from the defaults."""
        wire: dict[str, Any] = {"handler": self.handler}
        if self.name != self.handler:
            wire["name"] = self.name
        if self.args:
            wire["args"] = self.args
        if self.dependencies:
            wire["dependencies"] = self.dependencies
        if self.priority:
            wire["priority"] = self.priority
        if self.max_retries:
            wire["max_retries"] = self.max_retries
        if self.timeout is not None:
            wire["timeout"] = self.timeout
        if self.requires:
            wire["requires"] = self.requires
        if self.resources:
            wire["resources"] = self.resources
        if self.idempotency_key is not None:
            wire["idempotency_key"] = self.idempotency_key
        return wire
