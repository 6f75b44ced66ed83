"""Request parsing for the REST API: JSON bodies, base64 fields and query parameters.

Only what JSON cannot express or HTTP carries is checked here: the body's size, that it
parses and is an object, that its Content-Type (if any) is JSON, that binary fields are
base64 and that query parameters have the right form. Every failure raises
``InvalidInput`` (400) naming the field, ``HTTPUnsupportedMediaType`` (415),
``HTTPContentTooLarge`` (413) or, for a body the server stopped waiting for, a 408.

This module must never validate what the broker validates (task spec fields,
capabilities, resources, whether an id exists): ``common.spec`` and the broker are the
single place for those rules, so a REST client and a ZeroMQ client get the same checks
and the same messages.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from collections.abc import Collection
from typing import Any, NoReturn, overload

import falcon

from common.errors import InvalidInput

#: Bytes read at a time from a body without a Content-Length (chunked).
READ_CHUNK = 64 * 1024
#: The one media type of a request body (a charset parameter, if any, must be UTF-8).
JSON_TYPE = "application/json"


def read_object(req: falcon.Request, max_body: int) -> dict[str, Any]:
    """The request body as a JSON object; at most ``max_body`` bytes are read."""
    _require_json(req)
    data = _read_body(req, max_body)
    if not data.strip():
        raise InvalidInput("request body is empty: expected a JSON object")
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput("request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"request body must be a JSON object, not {_json_type(value)}")
    return value


def _require_json(req: falcon.Request) -> None:
    """Refuse a body that says it is something else than JSON (415), before reading it.

    ``application/json`` with any parameters but a charset other than UTF-8 (the only
    one JSON has) is JSON. A request without a Content-Type is read as JSON too: it
    claims no other type, some HTTP libraries send none, and a body that is not JSON
    is then a 400 saying so. ``curl -d`` without ``-H`` sends a form type, and is
    refused here with the type to send instead.
    """
    header = req.content_type
    if not header or not header.strip():
        return
    media_type, params = falcon.parse_header(header)
    charset = params.get("charset", "utf-8").lower()
    if media_type.lower() != JSON_TYPE or charset != "utf-8":
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported media type",
            description=f"request body must be {JSON_TYPE}, not {header.strip()[:100]!r}",
        )


def _read_body(req: falcon.Request, max_body: int) -> bytes:
    try:
        return _read_body_in_time(req, max_body)
    except TimeoutError:  # the server's body deadline (api.jsonworker)
        raise falcon.HTTPError(
            falcon.HTTP_408,
            title="Request timeout",
            description="the request body was not received in time",
            headers={"Connection": "close"},
        ) from None


def _read_body_in_time(req: falcon.Request, max_body: int) -> bytes:
    length = req.content_length
    if length is not None:
        # Refuse before reading: an oversized body is not worth receiving.
        if length > max_body:
            _too_large(max_body)
        return req.bounded_stream.read()
    if not req.env.get("wsgi.input_terminated"):
        # Without a length, only a server that guarantees EOF (gunicorn does, for chunked
        # bodies) can be read from without blocking forever; otherwise there is no body.
        return b""
    chunks: list[bytes] = []
    size = 0
    while size <= max_body:
        chunk = req.stream.read(min(READ_CHUNK, max_body + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > max_body:
        _too_large(max_body)
    return b"".join(chunks)


def _too_large(max_body: int) -> NoReturn:
    raise falcon.HTTPContentTooLarge(
        title="Request body too large",
        description=f"the request body is larger than {max_body} bytes",
    )


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON and no field can hold.
    raise ValueError(f"{name} is not a JSON value")


def decode_b64(value: Any, field: str) -> bytes | None:
    """A base64 string field as bytes; None (JSON null or absent) stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a base64 string, not {_json_type(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII characters
        raise InvalidInput(f"{field} is not valid base64") from None


def reject_unknown(body: dict[str, Any], known: Collection[str]) -> None:
    """Refuse fields the broker never sees, so a misspelt one is not silently ignored."""
    unknown = sorted(key for key in body if key not in known)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}")


def query(req: falcon.Request, name: str) -> str | None:
    """A query parameter given at most once; None when absent."""
    value = req.params.get(name)
    if isinstance(value, list):
        raise InvalidInput(f"query parameter {name} is given more than once")
    return value


def query_choice(req: falcon.Request, name: str, choices: Collection[str]) -> str | None:
    value = query(req, name)
    if value is not None and value not in choices:
        raise InvalidInput(f"query parameter {name} must be one of {', '.join(choices)}")
    return value


@overload
def query_int(req: falcon.Request, name: str, default: int, low: int, high: int) -> int: ...
@overload
def query_int(req: falcon.Request, name: str, default: None, low: int, high: int) -> int | None: ...
def query_int(
    req: falcon.Request, name: str, default: int | None, low: int, high: int
) -> int | None:
    """An integer query parameter in ``low..high``, or ``default`` when absent."""
    text = query(req, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        _out_of_range(name, "an integer", low, high)
    if not low <= value <= high:
        _out_of_range(name, "an integer", low, high)
    return value


def query_bool(req: falcon.Request, name: str) -> bool:
    """A yes/no query parameter (``true``/``false``, ``1``/``0``); false when absent."""
    text = query(req, name)
    if text is None:
        return False
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise InvalidInput(f"query parameter {name} must be true or false")


def query_float(req: falcon.Request, name: str, default: float, low: float, high: float) -> float:
    """A number query parameter in ``low..high``, or ``default`` when absent."""
    text = query(req, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        _out_of_range(name, "a number", low, high)
    if not (math.isfinite(value) and low <= value <= high):
        _out_of_range(name, "a number", low, high)
    return value


def query_time(req: falcon.Request, name: str, high: float) -> float | None:
    """A time query parameter: seconds since the epoch (``1767225600``) or an ISO 8601 /
    RFC 3339 date and time (``2026-01-01T00:00:00Z``; without an offset, UTC); None when
    absent."""
    text = query(req, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise InvalidInput(
                f"query parameter {name} must be seconds since the epoch or an ISO 8601 time"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        value = when.timestamp()
    if not 0 <= value <= high:  # NaN too
        _out_of_range(name, "a time", 0.0, high)
    return value


def _out_of_range(name: str, kind: str, low: float, high: float) -> NoReturn:
    # repr, not :g, so a 64-bit bound is shown exactly and 0.0 does not read as 0.
    raise InvalidInput(f"query parameter {name} must be {kind} from {low!r} to {high!r}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
