"""The OpenAPI document against the app it describes: the same paths and methods as the
router, the same fields as the parser, and a document that is valid OpenAPI 3.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import falcon
import falcon.testing
import jsonschema_rs
import schemathesis
from schemathesis.core.result import Ok

from api import openapi
from api.app import COMPLETE_FIELDS, WORKER_FIELDS, create_app
from api.auth import OPEN
from common.limits import MAX_BATCH, MAX_HTTP_WAIT, MAX_ID_LENGTH, MAX_NAME_LENGTH
from common.settings import Settings
from common.spec import FIELDS as TASK_FIELDS


class NoBroker:
    def request(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the document is served without the broker")


def app(max_body: int = 1234) -> falcon.App[Any, Any]:
    return create_app(client=NoBroker, settings=Settings(max_body=max_body))


def routes(app: falcon.App[Any, Any]) -> dict[str, set[str]]:
    """Every path template the app's router holds, with the methods its resource answers
    (Falcon's own answers to the others, a 405 or an OPTIONS, are not the resource's)."""
    found: dict[str, set[str]] = {}

    def walk(nodes: list[Any]) -> Iterator[Any]:
        for node in nodes:
            yield node
            yield from walk(node.children)

    for node in walk(app._router._roots):
        if node.resource is not None:
            found[node.uri_template] = {
                method.lower()
                for method, responder in node.method_map.items()
                if getattr(responder, "__self__", None) is node.resource
            }
    return found


def documented(document: dict[str, Any]) -> dict[str, set[str]]:
    return {
        path: {m for m in item if m in openapi.METHODS} for path, item in document["paths"].items()
    }


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_route_of_the_app_is_documented_with_its_methods_and_no_other() -> None:
    # given the app, as gunicorn serves it, and its document
    served = routes(app())
    # then each has the same paths, each with the same methods
    assert served == documented(openapi.document(1234))
    assert "/tasks/{task_id}" in served and served["/tasks/{task_id}"] == {"get", "head", "delete"}


def test_the_app_serves_the_document_it_builds_and_head_without_a_body() -> None:
    http = falcon.testing.TestClient(app(max_body=4321))
    got = http.simulate_get(openapi.PATH)
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/json"
    assert got.json == openapi.document(4321)
    assert "4321 bytes" in got.json["paths"]["/tasks"]["post"]["responses"]["413"]["description"]
    head = http.simulate_head(openapi.PATH)
    assert head.status_code == 200 and head.content == b""
    assert http.simulate_get(openapi.PATH + "/").json == got.json


def test_request_bodies_name_the_fields_the_api_reads_and_refuse_others() -> None:
    schemas = openapi.document(1234)["components"]["schemas"]
    for name, fields in (
        ("TaskSpec", TASK_FIELDS),
        ("WorkerRegistration", WORKER_FIELDS),
        ("Outcome", COMPLETE_FIELDS),
        ("Batch", {"tasks"}),
    ):
        assert set(schemas[name]["properties"]) == set(fields), name
        assert schemas[name]["additionalProperties"] is False, name


def test_bounds_are_those_of_the_limits_table() -> None:
    document = openapi.document(1234)
    schemas = document["components"]["schemas"]
    assert schemas["Id"]["maxLength"] == MAX_ID_LENGTH
    assert schemas["Name"]["maxLength"] == MAX_NAME_LENGTH
    assert schemas["Batch"]["properties"]["tasks"]["maxItems"] == MAX_BATCH
    waits = [
        p["schema"]["maximum"]
        for _, _, operation in operations(document)
        for p in operation.get("parameters", [])
        if p["name"] == "wait"
    ]
    assert waits == [MAX_HTTP_WAIT] * 5  # two submits, GET and HEAD of a task, next


def test_every_path_but_health_and_the_document_asks_for_a_bearer_token() -> None:
    document = openapi.document(1234)
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert document["security"] == [{"bearerAuth": []}]
    for path, method, operation in operations(document):
        responses = operation["responses"]
        if path in OPEN:  # the paths the middleware lets in without a token
            assert operation["security"] == [], (path, method)
            assert "401" not in responses and "403" not in responses
        else:
            assert "security" not in operation, (path, method)
            assert {"401", "403"} <= set(responses), (path, method)
            assert "WWW-Authenticate" in responses["401"]["headers"]


def test_every_error_answer_is_the_json_error_object() -> None:
    document = openapi.document(1234)
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400 and method != "head" and path != "/health":
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }, (path, method, status)
            if method == "head":
                assert "content" not in response, (path, status)


def test_the_document_is_valid_openapi_with_valid_json_schemas() -> None:
    document = openapi.document(1234)
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    # Loading every operation resolves every reference and parameter.
    schema = schemathesis.openapi.from_dict(document)
    loaded = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in loaded), loaded
    assert len(loaded) == sum(1 for _ in operations(document))
