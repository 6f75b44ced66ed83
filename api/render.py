"""JSON rendering of the records the broker returns: bytes as base64, times as RFC 3339.

The broker's records are msgpack maps with binary ``args``/``result`` and float epoch
times; JSON has neither, so the REST API shows bytes as standard base64 and times as
RFC 3339 UTC strings with microseconds. Keys the broker adds later pass through,
converted by the same rules, so a new record field needs no change here.

This module only converts values: it must never drop, rename or validate fields, and
never call the broker.
"""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from typing import Any

#: Keys whose numeric values are epoch seconds; any key ending in ``_at`` is one too.
TIME_KEYS = frozenset({"last_seen"})


def b64(data: bytes) -> str:
    """Standard base64 with padding, the form ``base64.b64decode(validate=True)`` reads back."""
    return base64.b64encode(data).decode("ascii")


def rfc3339(seconds: float | None) -> str | None:
    """Epoch seconds as ``2026-11-27T02:20:38.123456Z``; None stays None."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def is_time_key(key: object) -> bool:
    return isinstance(key, str) and (key in TIME_KEYS or key.endswith("_at"))


def render(value: Any) -> Any:
    """A JSON-ready copy of a record, a list of records or any value nested in one."""
    if isinstance(value, dict):
        return {key: _render_item(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item) for item in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return b64(bytes(value))
    return value


def _render_item(key: object, value: Any) -> Any:
    # Only a finite number is a time; anything else under a time key (None, or a value a
    # newer broker already formats) is rendered as it is rather than guessed at.
    if (
        is_time_key(key)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ):
        return rfc3339(value)
    return render(value)
