"""schemathesis against a real stack (broker, a worker, the API under gunicorn), from the
document the API serves: every operation, requests valid and invalid by that document,
and every answer checked: never a 5xx, and a status, content type, headers and body that
the document lists for that operation.

``make test`` draws a few examples an operation, the same ones each run; ``make fuzz-api``
many more, new each time (``ZMQS_SCHEMATHESIS_EXAMPLES``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import openapi
from common.limits import MAX_HTTP_WAIT
from common.settings import Settings
from tests.conftest import Stack

EXAMPLES = int(os.environ.get("ZMQS_SCHEMATHESIS_EXAMPLES", "12"))
#: The longest ``?wait=`` sent: a valid wait holds a request up to 30 s, which would make a
#: run of minutes. Longer ones are cut to this (an invalid one is sent as drawn).
FUZZ_WAIT = 0.1
#: Seconds a request may take before the test fails: a wait is cut, so none is held long.
REQUEST_TIMEOUT = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(Path(tmp_path_factory.mktemp("fuzz")))
    try:
        stack.start_broker()
        stack.start_worker(worker_id="zw")
        stack.start_api()
        assert stack.http("GET", openapi.PATH)[1] == DOCUMENT
        yield stack
    finally:
        stack.close()


def _cut_wait(query: dict[str, Any] | None) -> None:
    """Cut a valid ``wait`` longer than ``FUZZ_WAIT`` in this query to it."""
    wait = (query or {}).get("wait")
    if query is None or not isinstance(wait, str | int | float) or isinstance(wait, bool):
        return
    try:
        seconds = float(wait)
    except ValueError:
        return
    if math.isfinite(seconds) and FUZZ_WAIT < seconds <= MAX_HTTP_WAIT:
        query["wait"] = FUZZ_WAIT


# The document as the API under test serves it (a fixture checks that it does): loaded
# here, not from the running API, so that pytest knows every operation when it collects.
DOCUMENT = openapi.document(Settings().max_body)
# Not /events: a stream that lasts minutes by design (tests/unit/test_dashboard_feed.py).
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/events")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    # make test sends the same requests every time; make fuzz-api draws new ones.
    derandomize="ZMQS_SCHEMATHESIS_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_as_its_document_says(case: schemathesis.Case[Any], fuzzed: Stack) -> None:
    _cut_wait(case.query)
    case.call_and_validate(base_url=fuzzed.api_url, checks=CHECKS, timeout=REQUEST_TIMEOUT)
