"""The OpenAPI 3.1 document of the REST API, which ``GET /openapi.json`` serves.

The document is built here as Python data from the constants the checks themselves read:
the bounds of ``common.limits``, the fields of ``common.spec`` and ``api.app``, the states
of ``common.models``, the body limit of the settings. A bound changed there changes here
with it, and ``tests/unit/test_openapi.py`` holds the document's paths and methods to the
routes of the app, so neither can drift from what the API does.

It describes the API as it answers: every error is a JSON object with ``title`` and
``description``; HEAD answers as GET does, without a body. Bearer authentication is
declared for every path but ``/health`` and ``/openapi.json``; an API started without
tokens answers without asking for one.

This module must never describe a rule that no check enforces, and never call the broker.
"""

from __future__ import annotations

from typing import Any

from api import dashboard
from common.limits import (
    DEFAULT_PAGE,
    DEPENDENTS_SHOWN,
    ID_CHARACTERS,
    MAX_BATCH,
    MAX_CAPABILITIES,
    MAX_CURSOR,
    MAX_DEPENDENCIES,
    MAX_ERROR_LENGTH,
    MAX_HTTP_WAIT,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAGE,
    MAX_PRIORITY,
    MAX_REQUIRES,
    MAX_RESOURCE,
    MAX_RETRIES,
    MAX_TIME,
    MAX_TIMEOUT,
    MAX_TRACEBACK_LENGTH,
)
from common.models import RESOURCE_KINDS, LeaseOutcome, TaskStatus, WorkerKind, WorkerStatus
from common.ops import PURGEABLE
from common.settings import version

#: The media type of ``GET /metrics`` (``prometheus_client.CONTENT_TYPE_LATEST``).
METRICS_TYPE = "text/plain; version=1.0.0; charset=utf-8"

#: The document's own path, open like ``/health``.
PATH = "/openapi.json"
#: What the API answers with, and reads: JSON, and only JSON.
JSON = "application/json"
#: Standard base64 with padding: what ``base64.b64decode(validate=True)`` reads.
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
#: The methods a path item may name, in the order the document lists them.
METHODS = ("get", "head", "post", "put", "delete")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, or null: JSON Schema 2020-12 spells it as a list of types."""
    if "type" in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], *, closed: bool = False, **more: Any) -> dict[str, Any]:
    """A record: every property always there; ``closed`` refuses others (a request body).
    A record the API shows is left open: the broker may add fields, and they pass through."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, **more}
    if closed:
        schema["additionalProperties"] = False
    else:
        schema["required"] = list(properties)
    return schema


def _names(limit: int, description: str) -> dict[str, Any]:
    return _nullable(
        {"type": "array", "maxItems": limit, "items": _ref("Name"), "description": description}
    )


def _bounded_resources() -> dict[str, Any]:
    amount = {"type": ["number", "null"], "minimum": 0, "maximum": MAX_RESOURCE}
    return _nullable(_object({kind: amount for kind in RESOURCE_KINDS}, closed=True))


def _time(nullable: bool = False) -> dict[str, Any]:
    schema = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
    return _nullable(schema) if nullable else schema


def schemas() -> dict[str, Any]:
    """The named schemas: what is sent and what is answered."""
    identifier = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_LENGTH,
        "pattern": f"^[{ID_CHARACTERS}]+$",
    }
    base64 = {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN}
    waiting_for = [
        _object(
            {"reason": {"const": "dependencies"}, "tasks": {"type": "array", "items": _ref("Id")}}
        ),
        _object({"reason": {"enum": ["back-off", "delay"]}, "ready_at": _time()}),
        _object({"reason": {"enum": ["no worker", "slot"]}, "detail": {"type": "string"}}),
    ]
    task_spec: dict[str, Any] = {
        "handler": {**_ref("Name"), "description": "the handler that runs the task"},
        "name": _nullable(
            {
                "type": "string",
                "maxLength": MAX_NAME_LENGTH,
                "description": "for display; the handler when empty or absent",
            }
        ),
        "args": _nullable({**base64, "description": "the handler's input, base64"}),
        "dependencies": _nullable(
            {
                "type": "array",
                "maxItems": MAX_DEPENDENCIES,
                "items": _ref("Id"),
                "description": "ids of existing tasks that must complete first (an unknown one is "
                "a 400)",
            }
        ),
        "priority": _nullable(
            {
                "type": "integer",
                "minimum": -MAX_PRIORITY,
                "maximum": MAX_PRIORITY,
                "description": "higher runs first",
            }
        ),
        "max_retries": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_RETRIES}),
        "timeout": _nullable(
            {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_TIMEOUT,
                "description": "seconds a run may take",
            }
        ),
        "requires": _names(MAX_REQUIRES, "tags a worker must have"),
        "resources": _bounded_resources(),
        "idempotency_key": _nullable(
            {
                "type": "string",
                "maxLength": MAX_NAME_LENGTH,
                "description": "a second submit with this key answers the task the first made",
            }
        ),
    }
    amounts = _object({kind: {"type": "number"} for kind in RESOURCE_KINDS})
    amounts.pop("required")  # only the kinds a task asks for, or a worker offers
    return {
        "Error": _object(
            {"title": {"type": "string"}, "description": {"type": "string"}},
            description="every error the API answers",
        ),
        "Id": identifier,
        "Name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH},
        "Base64": base64,
        "Resources": amounts,
        "TaskSpec": _object(task_spec, closed=True, required=["handler"]),
        "Batch": _object(
            {
                "tasks": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": _ref("TaskSpec"),
                }
            },
            closed=True,
            required=["tasks"],
        ),
        "Created": _object(
            {"id": _ref("Id"), "status": {"enum": [s.value for s in TaskStatus]}},
            additionalProperties=False,
        ),
        "BatchCreated": {
            "type": "object",
            "required": ["ids"],
            "properties": {
                "ids": {"type": "array", "items": _ref("Id")},
                "tasks": {
                    "type": "array",
                    "items": _ref("Task"),
                    "description": "with ?wait: each task, in the order given",
                },
            },
        },
        "Task": _object(
            {
                "id": _ref("Id"),
                "name": {"type": "string"},
                "handler": {"type": "string"},
                "args": base64,
                "dependencies": {"type": "array", "items": _ref("Id")},
                "priority": {"type": "integer"},
                "status": {"enum": [s.value for s in TaskStatus]},
                "worker_id": _nullable(_ref("Id")),
                "attempts": {"type": "integer", "minimum": 0},
                "result": _nullable(base64),
                "error": {"type": ["string", "null"]},
                "max_retries": {"type": "integer", "minimum": 0},
                "timeout": {"type": ["number", "null"]},
                "requires": {"type": "array", "items": {"type": "string"}},
                "resources": _ref("Resources"),
                "created_at": _time(),
                "started_at": _time(nullable=True),
                "completed_at": _time(nullable=True),
                "idempotency_key": {"type": ["string", "null"]},
                "leases": {"type": "array", "items": _ref("Lease")},
                "traceback": {"type": ["string", "null"]},
                "waiting_for": {
                    "anyOf": [*waiting_for, {"type": "null"}],
                    "description": "why a pending task is not running; null otherwise",
                },
            }
        ),
        "TaskDetail": {
            "allOf": [
                _ref("Task"),
                _object(
                    {
                        "dependents": {
                            "type": "array",
                            "maxItems": DEPENDENTS_SHOWN,
                            "items": _ref("Id"),
                            "description": f"the first {DEPENDENTS_SHOWN} tasks, in submission "
                            "order, whose dependencies name this one, finished or not",
                        },
                        "more_dependents": {
                            "type": "boolean",
                            "description": "whether more tasks than those listed depend on it",
                        },
                    }
                ),
            ],
            "description": "a task, as GET /tasks/{task_id} shows it: with its dependents",
        },
        "Lease": _object(
            {
                "attempt": {"type": "integer", "minimum": 1},
                "worker_id": _ref("Id"),
                "started_at": _time(),
                "ended_at": _time(nullable=True),
                "outcome": {"enum": [*(o.value for o in LeaseOutcome), None]},
                "error": {"type": ["string", "null"]},
                "refused": {"enum": [*(s.value for s in TaskStatus), None]},
                "traceback": {"type": ["string", "null"]},
            },
            description="one run of a task",
        ),
        "WorkerRegistration": _object(
            {
                "id": _ref("Id"),
                "capabilities": _names(MAX_CAPABILITIES, "handler names (and tags)"),
                "tags": _names(MAX_CAPABILITIES, "capabilities that are tags, shown apart"),
                "resources": _bounded_resources(),
            },
            closed=True,
            required=["id"],
        ),
        "Worker": _object(
            {
                "id": _ref("Id"),
                "kind": {"enum": [k.value for k in WorkerKind]},
                "status": {"enum": [s.value for s in WorkerStatus]},
                "capabilities": {"type": "array", "items": {"type": "string"}},
                "handlers": {"type": "array", "items": {"type": "string"}},
                "tags": {"type": "array", "items": {"type": "string"}},
                "resources": _ref("Resources"),
                "slots": {"type": ["integer", "null"], "description": "null for an HTTP worker"},
                "running": {"type": "array", "items": _ref("Id")},
                "last_seen": _time(),
                "host": {"type": "string"},
                "pid": {"type": "integer"},
                "draining": {"type": "boolean"},
            }
        ),
        "Outcome": _object(
            {
                "status": {"enum": [TaskStatus.COMPLETED.value, TaskStatus.FAILED.value]},
                "result": _nullable(base64),
                "error": {"type": ["string", "null"], "maxLength": MAX_ERROR_LENGTH},
                "traceback": {"type": ["string", "null"], "maxLength": MAX_TRACEBACK_LENGTH},
            },
            closed=True,
            required=["status"],
        ),
        "Health": _object(
            {
                "status": {"const": "ok"},
                "tasks": _object({s.value: {"type": "integer"} for s in TaskStatus}),
                "workers": {"type": "integer", "description": "online workers"},
                "unservable": {
                    "type": "integer",
                    "description": "pending tasks no online worker could run",
                },
                "stale_outcomes": {"type": "integer"},
                "dropped_messages": {"type": "integer"},
                "uptime": {"type": "number"},
                "pid": {"type": "integer"},
            }
        ),
        "Stats": _object(
            {
                "tasks": _object({s.value: {"type": "integer"} for s in TaskStatus}),
                "handlers": {
                    "type": "object",
                    "description": "pending and running tasks of each handler that has some",
                    "additionalProperties": _object(
                        {
                            TaskStatus.PENDING.value: {"type": "integer"},
                            TaskStatus.RUNNING.value: {"type": "integer"},
                        }
                    ),
                },
                "workers": _object(
                    {
                        "online": {"type": "integer"},
                        "draining": {"type": "integer", "description": "online and draining"},
                        "slots": _object(
                            {"used": {"type": "integer"}, "total": {"type": "integer"}},
                            description="of the online ZeroMQ workers",
                        ),
                        "by_kind": {
                            "type": "object",
                            "additionalProperties": {"type": "integer"},
                            "description": "online workers by kind (zmq, http)",
                        },
                    }
                ),
                "throughput": _object(
                    {
                        "bucket": {"type": "integer", "description": "seconds a bucket covers"},
                        "completed": {"type": "array", "items": {"type": "integer"}},
                        "failed": {"type": "array", "items": {"type": "integer"}},
                    },
                    description="tasks finished in each bucket of the last 15 minutes, "
                    "oldest first",
                ),
                "uptime": {"type": "number"},
            }
        ),
        "Purged": _object({"purged": {"type": "integer", "description": "tasks deleted"}}),
        "HealthUnavailable": _object(
            {
                "status": {"const": "unavailable"},
                "title": {"type": "string"},
                "description": {"type": "string"},
            },
        ),
    }


# -- operations --------------------------------------------------------------------------


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _text(media_type: str) -> dict[str, Any]:
    """A static file's answer: its text, of this media type."""
    bare = media_type.partition(";")[0]
    return {"description": f"the file ({bare})", "content": {bare: {"schema": {"type": "string"}}}}


def _answer(
    description: str, schema: dict[str, Any] | None = None, **headers: Any
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = _json(schema)
    if headers:
        response["headers"] = headers
    return response


def _header(description: str, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def _error(description: str) -> dict[str, Any]:
    return _answer(description, _ref("Error"))


def _path(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": _ref("Id"),
        "description": f"the {what}'s id (another form is a 400)",
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _wait(what: str) -> dict[str, Any]:
    schema = {"type": "number", "minimum": 0, "maximum": MAX_HTTP_WAIT, "default": 0}
    return _query("wait", schema, f"seconds to hold the request {what}; 0 answers at once")


REFUSE_UNSERVABLE = _query(
    "refuse_unservable",
    {"type": "boolean", "default": False},
    "refuse (409, saying why) rather than wait when no online worker could run a task "
    "(1/0 and yes/no are read too)",
)


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    max_body: int = 0,
    changes: bool = False,
    secured: bool = True,
    broker: bool = True,
) -> dict[str, Any]:
    """An operation with the errors every one of its kind may answer: ``changes`` when it
    changes state (a 503 may then still take effect), ``secured`` when it needs a token,
    ``broker`` when it asks the broker (which may not answer)."""
    op: dict[str, Any] = {"summary": summary}
    if parameters:
        op["parameters"] = parameters
        responses = {
            "400": _error("a parameter is out of range or of the wrong form"),
            "414": _error("the request line is longer than the server reads"),
            **responses,
        }
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(_ref(body))}
        responses = {
            "400": _error(
                "the body is not a JSON object of this form, or a field is refused "
                "(the description names it)"
            ),
            "413": _error(f"the body is larger than {max_body} bytes"),
            "415": _error(f"the body's Content-Type is not {JSON} (a charset only UTF-8)"),
            **responses,
        }
    if secured:
        responses = {
            "401": {
                **_error("no token, or an unknown one (when the API has tokens)"),
                "headers": {"WWW-Authenticate": _header("Bearer")},
            },
            "403": _error("the token's role may not do this"),
            **responses,
        }
    else:
        op["security"] = []
    if broker:
        note = "; the request may still take effect, and the description says what to do"
        responses.setdefault("503", _error(f"the broker did not answer in time{note * changes}"))
    op["responses"] = dict(sorted(responses.items()))
    return op


def _listing(
    summary: str,
    item: str,
    noun: str,
    default_limit: int,
    cursor: dict[str, Any],
    filters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A GET of a paged listing: ``filters``, then ``limit`` and ``after`` (the cursor), a
    page of ``item`` with a ``Link`` to the next page when there is one."""
    return _operation(
        summary,
        {
            "200": _answer(
                f"a page of {noun}",
                {"type": "array", "items": _ref(item)},
                Link=_header('<...>; rel="next": the next page, when there is one', required=False),
            )
        },
        parameters=[
            *(filters or []),
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": default_limit},
                f"most {noun} in the page",
            ),
            _query("after", cursor, "the cursor of the page, from a Link"),
        ],
    )


def _head(get: dict[str, Any]) -> dict[str, Any]:
    """HEAD: GET's status and headers, without a body."""
    head = {**get, "summary": f"{get['summary']}: status and headers only"}
    head["responses"] = {
        status: {k: v for k, v in response.items() if k != "content"}
        for status, response in get["responses"].items()
    }
    return head


def paths(max_body: int) -> dict[str, Any]:
    """Every path and method the app routes, with what it reads and answers."""
    task_id = _path("task_id", "task")
    worker_id = _path("worker_id", "worker")
    location = _header("the task's path, /tasks/{id}")
    unknown_task = {
        "404": _error("no task has this id"),
        # The broker's task ids are 32 hex digits; this path is another route's.
        "405": _error("the id is 'batch': /tasks/batch answers only POST"),
    }
    unknown_worker = {"404": _error("no worker has this id")}
    submit = _operation(
        "submit a task",
        {
            "201": _answer(
                "the task was made: its id and status (with ?wait, the whole task)",
                {"anyOf": [_ref("Created"), _ref("Task")]},
                Location=location,
            ),
            "200": _answer(
                "the idempotency key was used before, for the same task: that task",
                {"anyOf": [_ref("Created"), _ref("Task")]},
                Location=location,
            ),
            "409": _error(
                "the idempotency key was used for another task, or refuse_unservable "
                "and no online worker could run it"
            ),
        },
        parameters=[_wait("until the task is final, then answer it whole"), REFUSE_UNSERVABLE],
        body="TaskSpec",
        changes=True,
        max_body=max_body,
    )
    batch = _operation(
        "submit many tasks, all or none",
        {
            "201": _answer(
                "the tasks were made: their ids (with ?wait, the tasks too)", _ref("BatchCreated")
            ),
            "409": _error(
                "an idempotency key was used for another task, or refuse_unservable "
                "and no online worker could run a task"
            ),
        },
        parameters=[_wait("until every task is final"), REFUSE_UNSERVABLE],
        body="Batch",
        changes=True,
        max_body=max_body,
    )
    list_tasks = _listing(
        "list tasks in submission order",
        "Task",
        "tasks",
        DEFAULT_PAGE,
        {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR, "default": 0},
        filters=[
            _query("status", {"enum": [s.value for s in TaskStatus]}, "only tasks in this state"),
            _query(
                "handler",
                {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH},
                "only tasks of this handler",
            ),
        ],
    )
    get_task = _operation(
        "one task",
        {
            "200": _answer(
                "the task with its dependents; with ?wait, the task as the wait ends (without)",
                {"anyOf": [_ref("TaskDetail"), _ref("Task")]},
            ),
            **unknown_task,
        },
        parameters=[task_id, _wait("until the task is final")],
    )
    list_workers = _listing(
        "workers in the order of their ids",
        "Worker",
        "workers",
        MAX_PAGE,
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": f"^[{ID_CHARACTERS}]+$",
            "description": "the last worker id of the page before",
        },
    )
    get_worker = _operation(
        "one worker",
        {"200": _answer("the worker", _ref("Worker")), **unknown_worker},
        parameters=[worker_id],
    )
    health = _operation(
        "whether the broker answers, and its counts",
        {
            "200": _answer("the broker answered", _ref("Health")),
            "503": _answer(
                "the broker did not answer within about 1.5 s", _ref("HealthUnavailable")
            ),
        },
        secured=False,
    )
    metrics = _operation(
        "the broker's and the API's metrics, in Prometheus' text format",
        {
            "200": {
                "description": (
                    "every metric docs/operations.md lists; zmqs_broker_up is 0 when the "
                    "broker did not answer, and only the API's own figures follow"
                ),
                "content": {METRICS_TYPE: {"schema": {"type": "string"}}},
            }
        },
        broker=False,
    )
    stats = _operation(
        "tasks by status and handler, workers, and throughput over the last 15 minutes",
        {"200": _answer("the counts", _ref("Stats"))},
    )
    document = _operation(
        "this document",
        {"200": _answer("the OpenAPI document", {"type": "object"})},
        secured=False,
        broker=False,
    )
    events = _operation(
        "the dashboard's live figures, as server-sent events",
        {
            "200": {
                "description": (
                    "a stream of events: `snapshot` (data: the figures as JSON), comment "
                    "lines as heartbeats, and `end` before it closes (reconnect then)"
                ),
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "503": _error("this API process serves as many listeners as it may"),
        },
        broker=False,
    )
    pages = {
        path: _operation(f"the dashboard's {name}", {"200": _text(media_type)}, secured=False,
                         broker=False)
        for path, (name, media_type) in dashboard.FILES.items()
    }  # fmt: skip
    return {
        **{path: {"get": page, "head": _head(page)} for path, page in pages.items()},
        "/events": {"get": events, "head": _head(events)},
        "/tasks": {
            "get": list_tasks,
            "head": _head(list_tasks),
            "post": submit,
            "delete": _operation(
                "purge: delete the finished tasks of a status (admin)",
                {"200": _answer("how many tasks were deleted", _ref("Purged"))},
                parameters=[
                    {
                        **_query(
                            "status",
                            {"enum": [s.value for s in PURGEABLE]},
                            "the status of the tasks to delete",
                        ),
                        "required": True,
                    },
                    _query(
                        "before",
                        {"type": "string"},
                        "only tasks that completed before this time: seconds since the epoch "
                        f"(0 to {MAX_TIME:g}) or ISO 8601 (UTC when it names no offset)",
                    ),
                ],
                changes=True,
            ),
        },
        "/tasks/batch": {"post": batch},
        "/tasks/{task_id}": {
            "get": get_task,
            "head": _head(get_task),
            "delete": _operation(
                "cancel a task",
                {
                    "200": _answer("the task, cancelled", _ref("Task")),
                    **unknown_task,
                    "409": _error("the task is already final"),
                },
                parameters=[task_id],
                changes=True,
            ),
        },
        "/tasks/{task_id}/retry": {
            "post": _operation(
                "run a failed or cancelled task again, with its dependents that failed "
                "because of it",
                {
                    "200": _answer("the task, pending again", _ref("Task")),
                    "404": _error("no task has this id"),
                    "409": _error(
                        "the task is not failed or cancelled, or a dependency of its own "
                        "failed or was cancelled (retry that one)"
                    ),
                },
                parameters=[task_id],
                changes=True,
            ),
        },
        "/workers": {
            "get": list_workers,
            "head": _head(list_workers),
            "post": _operation(
                "register an HTTP worker, or register it again",
                {
                    "201": _answer(
                        "the worker, new",
                        _ref("Worker"),
                        Location=_header("the worker's path, /workers/{id}"),
                    ),
                    "200": _answer("the worker, registered before", _ref("Worker")),
                    "409": _error("the id is taken by a ZeroMQ worker"),
                },
                body="WorkerRegistration",
                changes=True,
                max_body=max_body,
            ),
        },
        "/workers/{worker_id}": {"get": get_worker, "head": _head(get_worker)},
        "/workers/{worker_id}/drain": {
            "post": _operation(
                "drain a worker: no new task goes to it, its runs finish (admin)",
                {"200": _answer("the worker, draining", _ref("Worker")), **unknown_worker},
                parameters=[worker_id],
                changes=True,
            ),
            "delete": _operation(
                "resume a drained worker (admin)",
                {"200": _answer("the worker", _ref("Worker")), **unknown_worker},
                parameters=[worker_id],
                changes=True,
            ),
        },
        "/workers/{worker_id}/heartbeat": {
            "put": _operation(
                "an HTTP worker is alive",
                {
                    "200": _answer("the worker", _ref("Worker")),
                    **unknown_worker,
                    "409": _error("the worker is a ZeroMQ worker"),
                },
                parameters=[worker_id],
            ),
        },
        "/workers/{worker_id}/tasks/next": {
            "post": _operation(
                "lease the next task to an HTTP worker",
                {
                    "200": _answer("the task, now running on this worker", _ref("Task")),
                    "204": _answer("no task came within the wait"),
                    **unknown_worker,
                    "409": _error("the worker is a ZeroMQ worker"),
                },
                parameters=[worker_id, _wait("until a task comes")],
                changes=True,
            ),
        },
        "/workers/{worker_id}/tasks/{task_id}/complete": {
            "post": _operation(
                "an HTTP worker reports how its run of a task ended",
                {
                    "200": _answer("the task", _ref("Task")),
                    "404": _error("no worker or no task has this id"),
                    "409": _error("the task is not running on this worker"),
                },
                parameters=[worker_id, task_id],
                body="Outcome",
                changes=True,
                max_body=max_body,
            ),
        },
        "/stats": {"get": stats, "head": _head(stats)},
        "/health": {"get": health, "head": _head(health)},
        "/metrics": {"get": metrics, "head": _head(metrics)},
        PATH: {"get": document, "head": _head(document)},
    }


def document(max_body: int) -> dict[str, Any]:
    """The whole document, for an API that reads bodies of at most ``max_body`` bytes."""
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "zmq-scheduler REST API",
            "version": version(),
            "description": (
                "Submit tasks, follow them, and run them from any program that speaks HTTP. "
                "Bodies are JSON; binary args and results are base64; times are RFC 3339 "
                "UTC. Every error is a JSON object with title and description. Every path "
                "that answers GET answers HEAD too, and a trailing slash makes no difference."
            ),
        },
        "paths": paths(max_body),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }
