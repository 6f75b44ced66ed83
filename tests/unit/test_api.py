"""The REST API against the real scheduler, in this process: every route, every bad input,
every error shape.

Each request the app makes goes through ``broker.local.LocalClient`` to a real
``broker.core.Scheduler`` (by way of ``broker.operations``, as the broker runs it), so
these tests see the broker's own rules, messages and records. The client's clock,
``local.now``, starts at ``NOW`` and moves only when a wait or a long-poll runs out (to
its deadline): how far it moved shows how long the API asked the broker to wait. Only
the 503 and 500 tests use stand-ins (a broker that never answers, one that breaks), and
only the per-thread client test makes real ``Client`` objects.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any

import falcon
import falcon.inspect
import falcon.testing
import pytest

import api.clients
from api.app import HEALTH_TIMEOUT, ClientLike, create_app
from api.clients import ClientPool, pooled_clients
from api.render import render, rfc3339
from broker.local import LocalClient
from common import messages, ops
from common.client import Client
from common.errors import Unavailable
from common.limits import (
    DEFAULT_PAGE,
    ID_PATTERN,
    MAX_BATCH,
    MAX_HTTP_WAIT,
    MAX_ID_LENGTH,
    MAX_PAGE,
)
from common.ops import Op
from common.settings import Settings
from tests.conftest import wait_for

#: The scheduler's clock at the start of every test, and how the API shows it.
NOW = datetime(2026, 11, 27, 2, 20, 38, 123456, tzinfo=UTC).timestamp()
NOW_TEXT = "2026-11-27T02:20:38.123456Z"
MAX_BODY = 4096
#: Large enough for a batch of ``MAX_BATCH + 1`` small tasks.
ROOMY_BODY = 1 << 20

Http = falcon.testing.TestClient


# -- stand-ins for a broker that is not there --------------------------------------------


class DeadBroker:
    """A broker that never answers: every call raises ``Unavailable``, as ``Client.request``
    does when its time runs out. It notes each request and the timeout it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[ops.Request, float | None]] = []

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        self.calls.append((ops.decode_args(op.value, args), timeout))
        limit = "5" if timeout is None else f"{timeout:g}"
        raise Unavailable(f"broker at tcp://x did not answer within {limit} s")


class UnreachableBroker:
    """A broker never connected: every request stays here, as ``Client.request`` raises
    ``Unavailable`` with ``sent`` false when it cannot even queue one."""

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        raise Unavailable("broker at tcp://x is not reachable", sent=False)


class BrokenClient:
    """A client with a bug: every call raises something no layer expects."""

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        raise RuntimeError("kaboom")


# -- fixtures and helpers ----------------------------------------------------------------


def make_http(client: ClientLike, max_body: int = MAX_BODY) -> Http:
    return Http(create_app(client=lambda: client, settings=Settings(max_body=max_body)))


@pytest.fixture
def local() -> LocalClient:
    return LocalClient(now=NOW)


@pytest.fixture
def http(local: LocalClient) -> Http:
    client: ClientLike = local  # checked by mypy: LocalClient must match the protocol
    return make_http(client)


@pytest.fixture
def roomy(local: LocalClient) -> Http:
    """The same scheduler behind an app that accepts bodies up to ``ROOMY_BODY``."""
    return make_http(local, ROOMY_BODY)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_error(result: falcon.testing.Result, status: int, *words: str) -> None:
    """A JSON error with this status whose description names each of ``words``."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"].startswith("application/json")
    body = result.json
    assert isinstance(body["title"], str) and body["title"]
    for word in words:
        assert word in body["description"], body


def post_raw(http: Http, path: str, raw: bytes) -> falcon.testing.Result:
    """POST these exact bytes as a JSON body."""
    return http.simulate_post(path, body=raw, headers={"Content-Type": "application/json"})


def submit(http: Http, **spec: Any) -> str:
    result = http.simulate_post("/tasks", json=spec)
    assert result.status_code == 201, result.text
    task_id: str = result.json["id"]
    return task_id


def register(http: Http, worker_id: str, *capabilities: str) -> None:
    body = {"id": worker_id, "capabilities": list(capabilities), "resources": {"cpu": 2}}
    result = http.simulate_post("/workers", json=body)
    assert result.status_code in (200, 201), result.text


def lease(http: Http, worker_id: str) -> dict[str, Any]:
    """The next task for this HTTP worker, which must get one."""
    result = http.simulate_post(f"/workers/{worker_id}/tasks/next")
    assert result.status_code == 200, result.text
    record: dict[str, Any] = result.json
    return record


def task(http: Http, task_id: str) -> dict[str, Any]:
    result = http.simulate_get(f"/tasks/{task_id}")
    assert result.status_code == 200, result.text
    record: dict[str, Any] = result.json
    return record


def without_dependents(record: dict[str, Any]) -> dict[str, Any]:
    """A record as ``GET /tasks/{id}`` shows it, less what only that answer adds."""
    return {k: v for k, v in record.items() if k not in ("dependents", "more_dependents")}


def worker(http: Http, worker_id: str) -> dict[str, Any]:
    result = http.simulate_get(f"/workers/{worker_id}")
    assert result.status_code == 200, result.text
    record: dict[str, Any] = result.json
    return record


def assert_untouched(local: LocalClient) -> None:
    """The scheduler holds no task and no worker, has made none, and its clock never moved."""
    assert local.core.tasks == {}
    assert local.core.workers == {}
    assert local.core.next_seq == 1
    assert local.now == NOW


def open_lease(attempt: int, worker_id: str, started_at: str) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "worker_id": worker_id,
        "started_at": started_at,
        "ended_at": None,
        "outcome": None,
        "error": None,
        "refused": None,
        "traceback": None,
    }


# -- tasks -----------------------------------------------------------------------------


def test_submit_returns_201_with_location_and_the_broker_keeps_every_field(
    http: Http, local: LocalClient
) -> None:
    # given a spec that sets every field
    spec = {
        "name": "fib-10",
        "handler": "fibonacci",
        "args": b64(b'{"n": 10}'),
        "dependencies": [],
        "priority": 5,
        "max_retries": 2,
        "timeout": 30,
        "requires": ["gpu"],
        "resources": {"cpu": 1},
        "idempotency_key": "fib-10-once",
    }

    # when it is submitted
    result = http.simulate_post("/tasks", json=spec)

    # then the answer is the new id, and the scheduler's record holds every field
    assert result.status_code == 201
    task_id = result.json["id"]
    assert ID_PATTERN.fullmatch(task_id)
    assert result.json == {"id": task_id, "status": "pending"}
    assert result.headers["location"] == f"/tasks/{task_id}"
    record = task(http, task_id)
    assert {key: record[key] for key in spec} == {
        **spec,
        "timeout": 30.0,
        "resources": {"cpu": 1.0},
    }
    assert local.core.tasks[task_id].args == b'{"n": 10}'


def test_submit_without_args_gives_a_task_with_empty_args_and_defaults(http: Http) -> None:
    # when a task is submitted with its handler only
    task_id = submit(http, handler="noop")

    # then it has no args and every default
    record = task(http, task_id)
    assert record["args"] == ""
    assert record["name"] == "noop"
    assert (record["priority"], record["max_retries"], record["timeout"]) == (0, 0, None)
    assert (record["requires"], record["resources"], record["dependencies"]) == ([], {}, [])
    assert record["idempotency_key"] is None


def test_args_and_result_round_trip_as_base64(http: Http) -> None:
    # given a task whose args are every byte value, leased to an HTTP worker
    payload = bytes(range(256))
    task_id = submit(http, handler="echo", args=b64(payload))
    register(http, "w1", "echo")
    leased = lease(http, "w1")

    # when the worker reports them back as its result
    done = http.simulate_post(
        f"/workers/w1/tasks/{task_id}/complete",
        json={"status": "completed", "result": leased["args"]},
    )

    # then both directions are exact
    assert base64.b64decode(leased["args"], validate=True) == payload
    assert done.status_code == 200
    assert done.json["status"] == "completed"
    assert base64.b64decode(done.json["result"], validate=True) == payload
    assert task(http, task_id)["result"] == b64(payload)


def test_get_task_renders_the_full_record(http: Http) -> None:
    # given a pending task
    task_id = submit(http, handler="fibonacci", args=b64(b"10"), priority=3)

    # when it is read
    record = task(http, task_id)

    # then every field of the scheduler's record is there, times as RFC 3339
    assert record == {
        "id": task_id,
        "name": "fibonacci",
        "handler": "fibonacci",
        "args": b64(b"10"),
        "dependencies": [],
        "priority": 3,
        "status": "pending",
        "worker_id": None,
        "attempts": 0,
        "result": None,
        "error": None,
        "max_retries": 0,
        "timeout": None,
        "requires": [],
        "resources": {},
        "created_at": NOW_TEXT,
        "started_at": None,
        "completed_at": None,
        "idempotency_key": None,
        "leases": [],
        "traceback": None,
        "waiting_for": {
            "reason": "no worker",
            "detail": "no online worker serves handler 'fibonacci'",
        },
        "dependents": [],
        "more_dependents": False,
    }


def test_unknown_task_is_404(http: Http, local: LocalClient) -> None:
    assert_error(http.simulate_get("/tasks/nope"), 404, "nope")
    assert_error(http.simulate_delete("/tasks/nope"), 404, "nope")
    assert_error(http.simulate_get("/tasks/nope", params={"wait": "2.5"}), 404, "nope")
    assert local.now == NOW


def test_delete_cancels_and_returns_the_record(http: Http) -> None:
    # given a pending task
    task_id = submit(http, handler="noop")

    # when it is cancelled
    result = http.simulate_delete(f"/tasks/{task_id}")

    # then it is final at once, and cancelling it again is a conflict
    assert result.status_code == 200
    assert result.json["status"] == "cancelled"
    assert result.json["completed_at"] == NOW_TEXT
    assert task(http, task_id)["status"] == "cancelled"
    assert_error(http.simulate_delete(f"/tasks/{task_id}"), 409, "cancelled")


def test_delete_of_a_running_task_frees_its_http_worker(http: Http) -> None:
    # given a task leased to an HTTP worker
    register(http, "w1", "echo")
    task_id = submit(http, handler="echo")
    lease(http, "w1")

    # when it is cancelled
    result = http.simulate_delete(f"/tasks/{task_id}")

    # then its lease ends as cancelled, the worker no longer holds it, and its report is refused
    assert result.status_code == 200
    assert result.json["status"] == "cancelled"
    assert result.json["leases"][0]["outcome"] == "cancelled"
    assert worker(http, "w1")["running"] == []
    done = http.simulate_post(f"/workers/w1/tasks/{task_id}/complete", json={"status": "completed"})
    assert_error(done, 409, task_id)


def test_broker_validation_errors_are_400_naming_the_field(http: Http, local: LocalClient) -> None:
    assert_error(http.simulate_post("/tasks", json={"name": "x"}), 400, "handler")
    assert_error(
        http.simulate_post("/tasks", json={"handler": "x", "priority": "high"}), 400, "priority"
    )
    assert_error(http.simulate_post("/tasks", json={"handler": "x", "colour": 1}), 400, "colour")
    assert_error(
        http.simulate_post("/tasks", json={"handler": "x", "dependencies": ["t404"]}),
        400,
        "dependencies",
        "t404",
    )
    assert_untouched(local)


def test_submit_with_a_known_dependency_waits_for_it(http: Http) -> None:
    # given a task that depends on another, and a worker for both
    first = submit(http, handler="a")
    second = submit(http, handler="b", dependencies=[first])
    register(http, "w1", "a", "b")

    # when the worker asks for work twice
    leased = lease(http, "w1")
    nothing = http.simulate_post("/workers/w1/tasks/next")

    # then only the first is leased until it completes, and then the second
    assert task(http, second)["dependencies"] == [first]
    assert leased["id"] == first
    assert nothing.status_code == 204
    http.simulate_post(f"/workers/w1/tasks/{first}/complete", json={"status": "completed"})
    assert lease(http, "w1")["id"] == second


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"handler": "x", "args": "not base64!"}, "args"),
        ({"handler": "x", "args": "abc"}, "args"),  # bad padding
        ({"handler": "x", "args": "é"}, "args"),
        ({"handler": "x", "args": 12}, "args"),
        ({"handler": "x", "args": [1, 2]}, "args"),
    ],
)
def test_submit_rejects_bad_args(
    http: Http, local: LocalClient, body: dict[str, Any], field: str
) -> None:
    assert_error(http.simulate_post("/tasks", json=body), 400, field)
    assert_untouched(local)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", ["JSON"]),
        (b'{"handler": "x",}', ["JSON"]),
        (b"", ["empty"]),
        (b"   ", ["empty"]),
        (b"[1, 2]", ["object", "array"]),
        (b'"text"', ["object", "string"]),
        (b"null", ["object", "null"]),
        (b'{"handler": "x", "timeout": NaN}', ["NaN"]),
        (b"\xff\xfe\x00", ["JSON"]),
        (b"[" * 100_000 + b"]" * 100_000, ["JSON"]),
    ],
)
def test_malformed_bodies_are_400(
    roomy: Http, local: LocalClient, body: bytes, words: list[str]
) -> None:
    for path in ("/tasks", "/tasks/batch", "/workers", "/workers/w1/tasks/t1/complete"):
        assert_error(roomy.simulate_post(path, body=body), 400, *words)
    assert_untouched(local)


#: Every route that reads a body, with a body it accepts.
BODIES = [
    ("/tasks", {"handler": "echo"}),
    ("/tasks/batch", {"tasks": [{"handler": "echo"}]}),
    ("/workers", {"id": "w2"}),
    ("/workers/w1/tasks/t1/complete", {"status": "failed"}),
]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",  # what curl -d sends without -H
        "application/xml",
        "application/merge-patch+json",
        "application/json; charset=latin-1",
        "multipart/form-data; boundary=x",
    ],
)
def test_a_body_of_another_type_is_415_naming_json(
    http: Http, local: LocalClient, content_type: str
) -> None:
    for path, body in BODIES:
        result = http.simulate_post(
            path, body=json.dumps(body), headers={"Content-Type": content_type}
        )
        assert_error(result, 415, "application/json", repr(content_type))
    assert_untouched(local)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON", "application/json; charset=UTF-8",
     'application/json;charset="utf-8"', None],
)  # fmt: skip
def test_a_json_body_is_read_with_or_without_parameters_or_a_type(
    http: Http, local: LocalClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    result = http.simulate_post("/tasks", body=json.dumps({"handler": "echo"}), headers=headers)
    assert result.status_code == 201, result.text
    assert [t.handler for t in local.core.tasks.values()] == ["echo"]


def test_body_over_max_body_is_413(http: Http, local: LocalClient) -> None:
    body = {"handler": "x", "args": b64(b"x" * MAX_BODY)}

    assert_error(http.simulate_post("/tasks", json=body), 413, str(MAX_BODY))
    assert_error(http.simulate_post("/tasks/batch", json={"tasks": [body]}), 413, str(MAX_BODY))
    assert_untouched(local)


def simulate_chunked(app: falcon.App[Any, Any], path: str, body: bytes) -> tuple[str, Any]:
    """POST a body without Content-Length, as gunicorn passes a chunked one."""
    env = falcon.testing.create_environ(path=path, method="POST", body=body)
    env["wsgi.input_terminated"] = True
    del env["CONTENT_LENGTH"]
    start_response = falcon.testing.StartResponseMock()
    data = b"".join(app(env, start_response))
    return str(start_response.status), json.loads(data)


def test_chunked_body_is_read_and_bounded(local: LocalClient) -> None:
    # given an app that reads at most MAX_BODY bytes
    app = create_app(client=lambda: local, settings=Settings(max_body=MAX_BODY))

    # when a chunked body fits, it is read whole
    status, body = simulate_chunked(app, "/tasks", json.dumps({"handler": "x"}).encode())
    assert status.startswith("201"), body
    assert local.core.tasks[body["id"]].handler == "x"

    # when one is larger, it is refused, and nothing of it reaches the scheduler
    over = json.dumps({"handler": "y", "args": b64(b"x" * MAX_BODY)}).encode()
    status, body = simulate_chunked(app, "/tasks", over)
    assert status.startswith("413")
    assert str(MAX_BODY) in body["description"]
    assert [t.handler for t in local.core.tasks.values()] == ["x"]


def test_list_tasks_filters_and_links_the_next_page(http: Http) -> None:
    # given seven tasks, of handlers b, a, b, a, b, a, b
    ids = [submit(http, handler="a" if i % 2 else "b") for i in range(7)]

    # when the a's are listed two at a time
    first = http.simulate_get("/tasks", params={"limit": 2, "handler": "a"})

    # then the Link header leads to the rest, with the same filter
    assert [t["id"] for t in first.json] == [ids[1], ids[3]]
    assert first.headers["link"] == '</tasks?limit=2&after=4&handler=a>; rel="next"'
    second = http.simulate_get("/tasks?limit=2&after=4&handler=a")
    assert [t["id"] for t in second.json] == [ids[5]]
    assert "link" not in second.headers


def test_list_tasks_defaults_to_a_page_of_default_page_tasks(roomy: Http) -> None:
    # given one task more than a default page
    tasks = [{"handler": "h"} for _ in range(DEFAULT_PAGE + 1)]
    ids = roomy.simulate_post("/tasks/batch", json={"tasks": tasks}).json["ids"]

    # when they are listed with no query
    first = roomy.simulate_get("/tasks")

    # then the page is DEFAULT_PAGE long, in submission order, and links to the last one
    assert [t["id"] for t in first.json] == ids[:DEFAULT_PAGE]
    assert all(t["created_at"] == NOW_TEXT for t in first.json)
    assert first.headers["link"] == (
        f'</tasks?limit={DEFAULT_PAGE}&after={DEFAULT_PAGE}>; rel="next"'
    )
    second = roomy.simulate_get(f"/tasks?limit={DEFAULT_PAGE}&after={DEFAULT_PAGE}")
    assert [t["id"] for t in second.json] == ids[DEFAULT_PAGE:]
    assert "link" not in second.headers


def test_list_tasks_status_filter(http: Http) -> None:
    # given three tasks, the second cancelled
    ids = [submit(http, handler="h") for _ in range(3)]
    http.simulate_delete(f"/tasks/{ids[1]}")

    # when all are listed, and the cancelled ones one at a time
    everything = http.simulate_get("/tasks")
    cancelled = http.simulate_get("/tasks", params={"status": "cancelled", "limit": 1})
    pending = http.simulate_get("/tasks", params={"status": "pending"})

    # then each list holds what it should, with no next page
    assert [t["id"] for t in everything.json] == ids
    assert "link" not in everything.headers
    assert [t["id"] for t in cancelled.json] == [ids[1]]
    assert "link" not in cancelled.headers
    assert [t["id"] for t in pending.json] == [ids[0], ids[2]]


def test_link_header_escapes_the_handler(http: Http) -> None:
    for _ in range(2):
        submit(http, handler="a b&c")

    result = http.simulate_get(
        "/tasks", params={"limit": 1, "handler": "a b&c", "status": "pending"}
    )

    assert result.headers["link"] == (
        '</tasks?limit=1&after=1&status=pending&handler=a+b%26c>; rel="next"'
    )


def test_a_trailing_slash_names_the_same_resource(http: Http, local: LocalClient) -> None:
    # when a task is submitted to /tasks/, it is made as by /tasks
    made = http.simulate_post("/tasks/", json={"handler": "echo"})
    assert made.status_code == 201, made.text
    task_id = made.json["id"]

    # and every path answers with or without a trailing slash alike
    for path in ("/tasks", f"/tasks/{task_id}", "/workers", "/health"):
        assert http.simulate_get(path + "/").json == http.simulate_get(path).json, path
    assert [t["id"] for t in http.simulate_get("/tasks/").json] == [task_id]
    assert http.simulate_get("/tasks/?status=pending").json[0]["id"] == task_id
    assert_error(http.simulate_get("/tasks/nope/"), 404, "nope")
    assert list(local.core.tasks) == [task_id]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("limit=1&limit=2", "limit"),
        ("after=x", "after"),
        ("after=-1", "after"),
        ("after=1.5", "after"),
        ("after=99999999999999999999", "after"),
        ("handler=", "handler"),
        ("handler=" + "h" * 257, "handler"),
        ("status=pending&status=failed", "status"),
    ],
)
def test_list_tasks_rejects_bad_queries(http: Http, query: str, field: str) -> None:
    assert_error(http.simulate_get("/tasks", query_string=query), 400, field)


def test_list_tasks_accepts_the_largest_page(http: Http) -> None:
    assert MAX_PAGE == 1000  # the bound test_list_tasks_rejects_bad_queries writes out
    result = http.simulate_get("/tasks", params={"limit": MAX_PAGE})
    assert (result.status_code, result.json) == (200, [])
    assert_error(http.simulate_get("/tasks", params={"limit": MAX_PAGE + 1}), 400, "limit")


# -- workers ---------------------------------------------------------------------------


def test_register_is_201_then_200(http: Http, local: LocalClient) -> None:
    # given a worker's registration
    body = {"id": "w1", "capabilities": ["echo"], "resources": {"cpu": 2, "memory": 512},
            "tags": ["gpu"]}  # fmt: skip

    # when it is sent twice
    first = http.simulate_post("/workers", json=body)
    again = http.simulate_post("/workers", json=body)

    # then the first creates the worker (201, Location), the second finds it (200)
    assert first.status_code == 201
    assert again.status_code == 200
    assert first.headers["location"] == "/workers/w1"
    assert "location" not in again.headers
    assert first.json == {
        "id": "w1",
        "kind": "http",
        "status": "online",
        "capabilities": ["echo", "gpu"],
        "handlers": ["echo"],
        "tags": ["gpu"],
        "resources": {"cpu": 2.0, "memory": 512.0},
        "slots": None,
        "running": [],
        "last_seen": NOW_TEXT,
        "host": "",
        "pid": 0,
        "draining": False,
    }
    assert again.json == first.json
    assert list(local.core.workers) == ["w1"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"capabilities": []}, 400, "id"),
        ({"id": ""}, 400, "id"),
        ({"id": 7}, 400, "id"),
        ({"id": None}, 400, "id"),
        ({"id": "a/b"}, 400, "id"),
        ({"id": "w" * (MAX_ID_LENGTH + 1)}, 400, "id"),
        ({"id": "w", "capability": ["x"]}, 400, "capability"),
        ({"id": "w", "capabilities": "echo"}, 400, "capabilities"),
        ({"id": "w", "resources": {"gpu": 1}}, 400, "gpu"),
        ({"id": "w", "resources": {"cpu": -1}}, 400, "resources.cpu"),
    ],
)
def test_register_rejects_bad_bodies(
    http: Http, local: LocalClient, body: dict[str, Any], status: int, field: str
) -> None:
    assert_error(http.simulate_post("/workers", json=body), status, field)
    assert_untouched(local)
    assert http.simulate_get("/workers").json == []


def test_register_accepts_an_id_of_the_longest_length(http: Http) -> None:
    longest = "w" * MAX_ID_LENGTH

    result = http.simulate_post("/workers", json={"id": longest})

    assert result.status_code == 201, result.text
    assert worker(http, longest)["id"] == longest


def test_an_id_taken_by_a_zeromq_worker_is_a_conflict(http: Http, local: LocalClient) -> None:
    # given a ZeroMQ worker registered with the broker
    local.core.register(b"addr", messages.Ready(id="z1", slots=1, capabilities=["echo"]), NOW)

    # then no HTTP worker may take its id, or act in its name
    assert_error(http.simulate_post("/workers", json={"id": "z1"}), 409, "z1")
    assert_error(http.simulate_put("/workers/z1/heartbeat"), 409, "z1")
    assert_error(http.simulate_post("/workers/z1/tasks/next"), 409, "z1")
    assert worker(http, "z1")["kind"] == "zmq"


def test_list_and_get_workers(http: Http) -> None:
    register(http, "w1", "echo")
    register(http, "w2", "sleep")

    listed = http.simulate_get("/workers")
    one = http.simulate_get("/workers/w2")

    assert [w["id"] for w in listed.json] == ["w1", "w2"]
    assert one.json["capabilities"] == ["sleep"]
    assert one.json["last_seen"] == NOW_TEXT
    assert_error(http.simulate_get("/workers/w9"), 404, "w9")


def test_heartbeat_returns_the_worker(http: Http, local: LocalClient) -> None:
    # given a worker registered at NOW
    register(http, "w1", "echo")

    # when it sends a heartbeat a second later
    local.now = NOW + 1
    result = http.simulate_put("/workers/w1/heartbeat")

    # then it was seen then
    assert result.status_code == 200
    assert result.json["last_seen"] == rfc3339(NOW + 1)
    assert worker(http, "w1")["last_seen"] == rfc3339(NOW + 1)
    assert_error(http.simulate_put("/workers/w9/heartbeat"), 404, "w9")


def test_a_silent_http_worker_goes_offline_and_a_heartbeat_brings_it_back(
    http: Http, local: LocalClient
) -> None:
    # given a worker, and a wait on a pending task that runs 20 s past its last request
    register(http, "w1", "echo")
    task_id = submit(http, handler="other")
    http.simulate_get(f"/tasks/{task_id}", params={"wait": "20"})
    assert local.now == NOW + 20
    assert worker(http, "w1")["status"] == "offline"

    # when it sends a heartbeat
    result = http.simulate_put("/workers/w1/heartbeat")

    # then it is online again
    assert result.json["status"] == "online"
    assert result.json["last_seen"] == rfc3339(NOW + 20)


def test_next_leases_a_task_or_answers_204(http: Http, local: LocalClient) -> None:
    # given a worker and a task it serves
    register(http, "w1", "echo")
    task_id = submit(http, handler="echo")

    # when it asks for work, with a wait, while there is some
    leased = http.simulate_post("/workers/w1/tasks/next", params={"wait": "2.5"})

    # then it gets the task at once, leased to it
    assert leased.status_code == 200
    assert leased.json["id"] == task_id
    assert leased.json["status"] == "running"
    assert leased.json["worker_id"] == "w1"
    assert leased.json["attempts"] == 1
    assert leased.json["started_at"] == NOW_TEXT
    assert leased.json["leases"] == [open_lease(1, "w1", NOW_TEXT)]
    assert local.now == NOW
    assert worker(http, "w1")["running"] == [task_id]
    assert task(http, task_id)["leases"] == [open_lease(1, "w1", NOW_TEXT)]

    # when it asks again without a wait, then with one, while there is none
    empty = http.simulate_post("/workers/w1/tasks/next")
    assert (empty.status_code, empty.content, local.now) == (204, b"", NOW)
    waited = http.simulate_post("/workers/w1/tasks/next", params={"wait": "2.5"})

    # then both are 204, the second after its whole wait
    assert (waited.status_code, waited.content) == (204, b"")
    assert local.now == NOW + 2.5
    assert_error(http.simulate_post("/workers/w9/tasks/next"), 404, "w9")


def test_next_matches_capabilities_and_priority(http: Http) -> None:
    # given tasks of two handlers and priorities, and a worker serving one handler
    register(http, "w1", "echo")
    low = submit(http, handler="echo", priority=1)
    submit(http, handler="sleep", priority=9)
    high = submit(http, handler="echo", priority=5)

    # when it asks for work three times
    first, second = lease(http, "w1"), lease(http, "w1")
    third = http.simulate_post("/workers/w1/tasks/next")

    # then it gets its own handler's tasks, best priority first, and no other
    assert [first["id"], second["id"]] == [high, low]
    assert third.status_code == 204


@pytest.mark.parametrize("wait", ["-1", "30.5", "31", "soon", "nan", "inf", ""])
def test_next_rejects_bad_wait(http: Http, local: LocalClient, wait: str) -> None:
    # given a worker and a task it could take
    register(http, "w1", "echo")
    task_id = submit(http, handler="echo")

    # when it asks for work with a bad wait, then it is refused and nothing is leased
    assert_error(http.simulate_post(f"/workers/w1/tasks/next?wait={wait}"), 400, "wait")
    assert local.now == NOW
    assert task(http, task_id)["status"] == "pending"
    assert worker(http, "w1")["running"] == []


def test_complete_failed_with_an_error(http: Http, local: LocalClient) -> None:
    # given a task leased to a worker at NOW
    register(http, "w1", "echo")
    task_id = submit(http, handler="echo")
    lease(http, "w1")

    # when the worker reports it failed, two seconds later
    local.now = NOW + 2
    result = http.simulate_post(
        f"/workers/w1/tasks/{task_id}/complete",
        json={"status": "failed", "error": "boom", "result": None},
    )

    # then the task (with no retries left) failed then, its lease closed, the worker freed
    assert result.status_code == 200
    assert result.json["status"] == "failed"
    assert result.json["error"] == "boom"
    assert result.json["result"] is None
    assert result.json["completed_at"] == rfc3339(NOW + 2)
    assert result.json["leases"] == [
        {
            **open_lease(1, "w1", NOW_TEXT),
            "ended_at": rfc3339(NOW + 2),
            "outcome": "failed",
            "error": "boom",
        }
    ]
    assert worker(http, "w1")["running"] == []


def test_complete_passes_broker_404_and_409_through(http: Http) -> None:
    register(http, "w1", "echo")
    register(http, "w2", "echo")
    task_id = submit(http, handler="echo")
    lease(http, "w1")
    done = {"status": "completed"}

    assert_error(http.simulate_post(f"/workers/w9/tasks/{task_id}/complete", json=done), 404, "w9")
    assert_error(http.simulate_post("/workers/w1/tasks/t9/complete", json=done), 404, "t9")
    wrong_worker = http.simulate_post(f"/workers/w2/tasks/{task_id}/complete", json=done)
    assert_error(wrong_worker, 409, "w2")
    assert task(http, task_id)["status"] == "running"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "status"),
        ({"result": b64(b"x")}, "status"),
        ({"status": None}, "status"),
        ({"status": "cancelled"}, "status"),
        ({"status": "released"}, "status"),
        ({"status": "running"}, "status"),
        ({"status": 1}, "status"),
        ({"status": "completed", "result": "%%%"}, "result"),
        ({"status": "completed", "result": 5}, "result"),
        ({"status": "failed", "error": 5}, "error"),
        ({"status": "failed", "error": ["x"]}, "error"),
        (rb'{"status": "failed", "error": "boom \ud800"}', "error"),
        ({"status": "failed", "reason": "x"}, "reason"),
    ],
)
def test_complete_rejects_bad_bodies(http: Http, body: dict[str, Any] | bytes, field: str) -> None:
    # given a task leased to a worker
    register(http, "w1", "echo")
    task_id = submit(http, handler="echo")
    lease(http, "w1")

    # when the worker reports it with a bad body
    path = f"/workers/w1/tasks/{task_id}/complete"
    if isinstance(body, bytes):
        result = post_raw(http, path, body)
    else:
        result = http.simulate_post(path, json=body)

    # then it is refused, and the run goes on as it was
    assert_error(result, 400, field)
    record = task(http, task_id)
    assert (record["status"], record["attempts"]) == ("running", 1)
    assert record["leases"] == [open_lease(1, "w1", NOW_TEXT)]
    assert worker(http, "w1")["running"] == [task_id]


# -- values no layer can hold, refused where they enter ----------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"handler": "echo", "timeout": 1e10}', "timeout"),
        (b'{"handler": "echo", "priority": ' + str(2**64).encode() + b"}", "priority"),
        (b'{"handler": "echo", "priority": ' + str(-(2**64)).encode() + b"}", "priority"),
        (
            b'{"handler": "echo", "resources": {"cpu": ' + str(2**64).encode() + b"}}",
            "resources.cpu",
        ),
        (b'{"handler": "echo", "resources": {"cpu": 1e308}}', "resources.cpu"),
        (rb'{"handler": "echo", "name": "\ud800"}', "name"),
        (rb'{"handler": "\ud800"}', "handler"),
        (rb'{"handler": "echo", "requires": ["gpu", "\ud800"]}', "requires[1]"),
        (rb'{"handler": "echo", "idempotency_key": "\ud800"}', "idempotency_key"),
        (b'{"handler": "echo", "dependencies": ["a/b"]}', "dependencies[0]"),
    ],
)
def test_submit_refuses_values_no_layer_can_hold(
    roomy: Http, local: LocalClient, raw: bytes, field: str
) -> None:
    # when the spec is submitted alone, with a wait, and second in a batch
    alone = post_raw(roomy, "/tasks", raw)
    waiting = post_raw(roomy, "/tasks?wait=5", raw)
    batch = post_raw(roomy, "/tasks/batch", b'{"tasks": [{"handler": "echo"}, ' + raw + b"]}")

    # then each is a 400 naming the field, and the scheduler made nothing and waited for nothing
    assert_error(alone, 400, field)
    assert_error(waiting, 400, field)
    assert_error(batch, 400, f"tasks[1].{field}")
    assert_untouched(local)


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"id": "w\ud800"}',
        rb'{"id": "w", "capabilities": ["echo", "\udfff"]}',
        rb'{"id": "w", "resources": {"\ud800": 1}}',
        rb'{"id": "w", "\ud800": 1}',
    ],
)
def test_register_refuses_lone_surrogates(http: Http, local: LocalClient, raw: bytes) -> None:
    result = post_raw(http, "/workers", raw)

    assert result.status_code == 400, result.text
    assert result.json["description"]
    assert_untouched(local)


def test_a_batch_of_more_than_max_batch_tasks_is_refused_whole(
    roomy: Http, local: LocalClient
) -> None:
    # given one task more than common.limits.MAX_BATCH
    tasks = [{"handler": "echo"}] * (MAX_BATCH + 1)

    # when they are submitted in one batch, then none is made
    result = roomy.simulate_post("/tasks/batch", json={"tasks": tasks})
    assert_error(result, 400, "tasks", str(MAX_BATCH))
    assert_untouched(local)

    # and when exactly MAX_BATCH are, all are
    accepted = roomy.simulate_post("/tasks/batch", json={"tasks": tasks[:MAX_BATCH]})
    assert accepted.status_code == 201, accepted.text
    assert len(set(accepted.json["ids"])) == MAX_BATCH
    assert len(local.core.tasks) == MAX_BATCH


def test_a_batch_with_a_non_object_entry_is_refused_whole(http: Http, local: LocalClient) -> None:
    result = http.simulate_post("/tasks/batch", json={"tasks": [{"handler": "echo"}, 5]})

    assert_error(result, 400, "tasks[1] must be an object")
    assert_untouched(local)


def test_a_batch_of_one_names_its_bad_entry(http: Http, local: LocalClient) -> None:
    # A batch names a bad entry by its index, whatever the batch's length (as it does the
    # args of a batch of one), so a client can tell which of its tasks was refused.
    not_object = http.simulate_post("/tasks/batch", json={"tasks": [5]})
    bad_priority = http.simulate_post(
        "/tasks/batch", json={"tasks": [{"handler": "echo", "priority": "high"}]}
    )
    bad_args = http.simulate_post("/tasks/batch", json={"tasks": [{"handler": "x", "args": "!"}]})

    assert_error(bad_args, 400, "tasks[0].args")
    assert_error(bad_priority, 400, "tasks[0].priority")
    assert_error(not_object, 400, "tasks[0]")
    assert_untouched(local)


def test_wait_longer_than_max_http_wait_is_refused(http: Http, local: LocalClient) -> None:
    # given a pending task and an idle worker
    task_id = submit(http, handler="other")
    register(http, "w1", "echo")
    too_long = f"{MAX_HTTP_WAIT + 1:g}"

    # when either asks to wait longer than MAX_HTTP_WAIT, then it is refused without waiting
    assert_error(http.simulate_get(f"/tasks/{task_id}?wait={too_long}"), 400, "wait")
    assert_error(http.simulate_post(f"/workers/w1/tasks/next?wait={too_long}"), 400, "wait")
    assert_error(http.simulate_post(f"/tasks?wait={too_long}", json={"handler": "x"}), 400, "wait")
    assert local.now == NOW
    assert len(local.core.tasks) == 1

    # and a wait of exactly MAX_HTTP_WAIT is held for all of it
    assert http.simulate_get(f"/tasks/{task_id}?wait={MAX_HTTP_WAIT:g}").status_code == 200
    assert local.now == NOW + MAX_HTTP_WAIT
    assert http.simulate_post(f"/workers/w1/tasks/next?wait={MAX_HTTP_WAIT:g}").status_code == 204
    assert local.now == NOW + 2 * MAX_HTTP_WAIT


def test_a_long_poll_keeps_the_http_worker_online(http: Http, local: LocalClient) -> None:
    # An HTTP worker loops on next?wait=20 (README), and may ask for up to MAX_HTTP_WAIT s;
    # while its long-poll is open it is asking for work, so it is not silent.
    register(http, "w1", "echo")

    # when it long-polls an empty queue for 20 s
    result = http.simulate_post("/workers/w1/tasks/next", params={"wait": "20"})

    # then the poll ran its whole wait and the worker is still online
    assert result.status_code == 204
    assert local.now == NOW + 20
    assert worker(http, "w1")["status"] == "online"


# -- health and errors -----------------------------------------------------------------


def test_health_ok_includes_broker_fields(http: Http, local: LocalClient) -> None:
    # given a pending task, an HTTP worker, and a broker up for 2.5 s
    submit(http, handler="x")
    register(http, "w1", "echo")
    local.now = NOW + 2.5

    # when health is asked for
    result = http.simulate_get("/health")

    # then it is the scheduler's own
    assert result.status_code == 200
    assert result.json["status"] == "ok"
    assert result.json["tasks"] == {
        "pending": 1,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert result.json["workers"] == 1
    assert result.json["uptime"] == 2.5
    assert result.json["pid"] == os.getpid()


def test_health_is_503_when_the_broker_is_unavailable() -> None:
    # given a broker that never answers
    dead = DeadBroker()
    http = make_http(dead)

    # when health is asked for
    result = http.simulate_get("/health")

    # then it is 503, after waiting HEALTH_TIMEOUT rather than the client's own timeout
    assert result.status_code == 503
    assert result.json["status"] == "unavailable"
    assert result.json["title"] == "Broker unavailable"
    assert "1.5" in result.json["description"]
    assert dead.calls == [(ops.Health(), HEALTH_TIMEOUT)]


def test_health_says_when_the_brokers_host_does_not_resolve() -> None:
    # given an app whose real client points at a name that never resolves
    settings = Settings(broker="tcp://no-such-host.invalid:5555", request_timeout=0.5)
    get = pooled_clients(settings)
    http = Http(create_app(client=get, settings=settings))
    try:
        # when health is asked for, then the 503 says why
        result = http.simulate_get("/health")
        assert result.status_code == 503
        assert result.json["status"] == "unavailable"
        assert "host 'no-such-host.invalid' does not resolve" in result.json["description"]
    finally:
        get().close()


def test_unavailable_broker_is_503_on_any_route() -> None:
    # given a broker that never answers
    dead = DeadBroker()
    http = make_http(dead)

    # when a task is read, then the answer is a 503 saying so
    assert_error(http.simulate_get("/tasks/t1"), 503, "did not answer")
    assert_error(http.simulate_post("/tasks", json={"handler": "x"}), 503, "did not answer")
    # and each call had the client's own timeout
    assert dead.calls == [
        (ops.Get(id="t1"), None),
        (ops.Submit.from_args({"tasks": [{"handler": "x"}]}), None),
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "advice"),
    [
        ("POST", "/tasks", {"handler": "x", "idempotency_key": "k"}, "same idempotency_key"),
        ("POST", "/tasks/batch", {"tasks": [{"handler": "x"}]}, "same idempotency_key"),
        ("DELETE", "/tasks/t1", None, "cancelling again is safe"),
        ("POST", "/workers", {"id": "w1"}, "registering again is safe"),
        ("POST", "/workers/w1/tasks/next", None, "GET /workers/{id}"),
        ("POST", "/workers/w1/tasks/t1/complete", {"status": "failed"}, "again is safe"),
    ],
)
def test_a_503_to_a_request_that_changes_state_says_it_may_still_take_effect(
    method: str, path: str, body: dict[str, Any] | None, advice: str
) -> None:
    # given a broker that does not answer (it may have received the request all the same)
    http = make_http(DeadBroker())

    # when a request that changes state is sent, then the 503 says it may take effect later
    result = http.simulate_request(method, path, json=body)
    assert_error(result, 503, "did not answer", "the request may still take effect", advice)

    # but not when the request never left
    result = make_http(UnreachableBroker()).simulate_request(method, path, json=body)
    assert_error(result, 503, "not reachable")
    assert "effect" not in result.json["description"]


@pytest.mark.parametrize(
    "path", ["/tasks", "/tasks/t1", "/tasks/t1?wait=1", "/workers", "/workers/w1"]
)
def test_a_503_to_a_read_says_nothing_of_effects(path: str) -> None:
    http = make_http(DeadBroker())
    result = http.simulate_get(path)
    assert_error(result, 503, "did not answer")
    assert "effect" not in result.json["description"]


def test_unexpected_errors_are_json_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    # given a client that breaks
    http = make_http(BrokenClient())

    # when a route calls it, with a client that accepts only HTML
    with caplog.at_level(logging.ERROR, logger="api.app"):
        result = http.simulate_get("/workers", headers={"Accept": "text/html"})

    # then the answer is a JSON 500 that keeps the detail for the log
    assert_error(result, 500, "log")
    assert "kaboom" not in result.text
    assert "kaboom" in caplog.text


def test_framework_errors_are_json_whatever_the_accept_header(http: Http) -> None:
    html = {"Accept": "text/html"}
    assert_error(http.simulate_get("/nowhere", headers=html), 404, "/nowhere")
    assert_error(http.simulate_patch("/tasks", headers=html), 405, "PATCH")
    assert_error(http.simulate_post("/tasks", body=b"[", headers=html), 400, "JSON")
    assert_error(http.simulate_get("/tasks/nope", headers=html), 404, "nope")


def test_every_route_that_answers_get_answers_head() -> None:
    app = create_app(client=DeadBroker, settings=Settings())
    for route in falcon.inspect.inspect_routes(app):
        methods = {m.method for m in route.methods if not m.internal}
        assert "HEAD" in methods or "GET" not in methods, route.path


def test_head_answers_as_get_without_a_body(http: Http) -> None:
    # given a task and a worker
    task_id = submit(http, handler="echo")
    register(http, "w1", "echo")

    # when each path that answers GET is asked for with HEAD (a known thing, then an unknown)
    for path in (
        "/health", "/tasks", f"/tasks/{task_id}", f"/tasks/{task_id}?wait=1", "/workers",
        "/workers/w1", "/tasks/nope", "/workers/nope",
    ):  # fmt: skip
        got, head = http.simulate_get(path), http.simulate_head(path)

        # then the answer is GET's, status and headers, with no body
        assert head.status_code == got.status_code, path
        assert head.headers == got.headers, path
        assert head.content == b"", path
    assert http.simulate_head("/health").status_code == 200


# -- rendering -------------------------------------------------------------------------


def test_rfc3339_is_utc_with_microseconds() -> None:
    assert rfc3339(NOW) == NOW_TEXT
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(1.5) == "1970-01-01T00:00:01.500000Z"
    assert rfc3339(None) is None


def test_render_keeps_unknown_keys_and_converts_nested_values() -> None:
    record = {
        "id": "t1",
        "args": b"\x00\x01",
        "result": None,
        "created_at": NOW,
        "started_at": None,
        "leases": [{"worker_id": "w1", "expires_at": 0.25, "token": b"\xff"}],
        "attempts": 3,
        "flag": True,
    }

    assert render(record) == {
        "id": "t1",
        "args": "AAE=",
        "result": None,
        "created_at": NOW_TEXT,
        "started_at": None,
        "leases": [
            {"worker_id": "w1", "expires_at": "1970-01-01T00:00:00.250000Z", "token": "/w=="}
        ],
        "attempts": 3,
        "flag": True,
    }


# -- the default client factory -----------------------------------------------------------


def test_default_clients_are_made_on_first_use_and_reused(
    monkeypatch: pytest.MonkeyPatch, local: LocalClient
) -> None:
    # given an app whose clients are made by a recording stand-in for Client
    made: list[tuple[str, float]] = []

    def recording_client(
        endpoint: str, timeout: float, context: object, curve: object = None
    ) -> LocalClient:
        made.append((endpoint, timeout))
        return local

    monkeypatch.setattr(api.clients, "Client", recording_client)
    settings = Settings(broker="tcp://10.0.0.1:5555", request_timeout=2.0)
    http = Http(create_app(settings=settings))
    assert made == []  # nothing at creation: gunicorn may fork after it

    # when requests come one after the other, on this thread and another
    assert http.simulate_get("/health").status_code == 200
    assert http.simulate_get("/workers").status_code == 200
    other = threading.Thread(target=http.simulate_get, args=("/health",))
    other.start()
    other.join()

    # then one client, made from the settings, served them all
    assert made == [("tcp://10.0.0.1:5555", 2.0)]


class HeldClient:
    """A client whose calls return when ``release`` is set, and that records its closing."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.closed = False

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        self.release.wait(10)
        return {}

    def close(self) -> None:
        self.closed = True


def test_a_client_busy_with_one_call_is_not_lent_to_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a pool that keeps one idle client, and two calls at once that both wait
    release = threading.Event()
    made: list[HeldClient] = []

    def held_client(
        endpoint: str, timeout: float, context: object, curve: object = None
    ) -> HeldClient:
        made.append(HeldClient(release))
        return made[-1]

    monkeypatch.setattr(api.clients, "Client", held_client)
    pool = ClientPool(Settings(broker="tcp://127.0.0.1:1"), max_idle=1)
    calls = [threading.Thread(target=pool.request, args=(Op.HEALTH, {})) for _ in range(2)]
    for call in calls:
        call.start()
    wait_for(lambda: len(made) == 2, what="both calls under way")

    # when both end
    release.set()
    for call in calls:
        call.join()

    # then each had its own client, and the pool kept one and closed the other
    assert sorted(client.closed for client in made) == [False, True]
    pool.request(Op.HEALTH, {})
    assert len(made) == 2  # the kept one served the next call


def test_pooled_clients_are_real_clients_made_from_the_settings() -> None:
    pool = pooled_clients(Settings(broker="tcp://127.0.0.1:1", request_timeout=0.5))()
    try:
        with pytest.raises(Unavailable):
            pool.request(Op.HEALTH, {}, timeout=0.05)
        [client] = pool._idle
        assert isinstance(client, Client) and client.timeout == 0.5
    finally:
        pool.close()


# -- ?wait= ---------------------------------------------------------------------------------


def test_get_task_with_wait_long_polls_through_the_client(http: Http, local: LocalClient) -> None:
    # given a pending task that nothing will run
    task_id = submit(http, handler="echo")

    # when it is read with ?wait=2.5
    result = http.simulate_get(f"/tasks/{task_id}", params={"wait": "2.5"})

    # then the broker held the answer its whole wait, and the task is still pending
    assert result.status_code == 200
    assert result.json["status"] == "pending"
    assert local.now == NOW + 2.5

    # and once the task is final, a wait is answered at once
    http.simulate_delete(f"/tasks/{task_id}")
    final = http.simulate_get(f"/tasks/{task_id}", params={"wait": "2.5"})
    assert final.json["status"] == "cancelled"
    assert local.now == NOW + 2.5

    assert_error(http.simulate_get(f"/tasks/{task_id}", params={"wait": "31"}), 400, "wait")
    assert_error(http.simulate_get(f"/tasks/{task_id}", params={"wait": "soon"}), 400, "wait")
    assert local.now == NOW + 2.5


def test_post_task_with_wait_answers_with_the_whole_record(http: Http, local: LocalClient) -> None:
    # given a spec with an idempotency key
    spec = {"handler": "echo", "args": b64(b"hi"), "idempotency_key": "k-1"}

    # when it is submitted with ?wait=2.5
    first = http.simulate_post("/tasks", json=spec, params={"wait": "2.5"})

    # then the answer is the whole record, as GET shows it, after the whole wait
    assert first.status_code == 201
    task_id = first.json["id"]
    assert first.headers["location"] == f"/tasks/{task_id}"
    assert first.json["args"] == b64(b"hi") and first.json["status"] == "pending"
    assert "created" not in first.json
    assert first.json == without_dependents(task(http, task_id))
    assert local.now == NOW + 2.5

    # when it is submitted again with a wait, it is the same task, with 200
    again = http.simulate_post("/tasks", json=spec, params={"wait": "1"})
    assert (again.status_code, again.json["id"]) == (200, task_id)
    assert again.headers["location"] == f"/tasks/{task_id}"
    assert local.now == NOW + 3.5

    for bad in ("31", "-1", "soon", "nan"):
        assert_error(http.simulate_post("/tasks", json=spec, params={"wait": bad}), 400, "wait")
    assert list(local.core.tasks) == [task_id]
    assert local.now == NOW + 3.5


def test_post_task_with_wait_answers_at_once_when_the_task_is_final(
    http: Http, local: LocalClient
) -> None:
    # given a cancelled task
    dead = submit(http, handler="echo")
    http.simulate_delete(f"/tasks/{dead}")

    # when a task depending on it is submitted with a wait
    result = http.simulate_post(
        "/tasks", json={"handler": "echo", "dependencies": [dead]}, params={"wait": "10"}
    )

    # then it failed at once, and the answer did not wait
    assert result.status_code == 201
    assert result.json["status"] == "failed"
    assert dead in result.json["error"]
    assert local.now == NOW


def test_a_repeated_idempotency_key_returns_the_first_task_with_200(
    http: Http, local: LocalClient
) -> None:
    spec = {"handler": "echo", "idempotency_key": "order-17"}

    first = http.simulate_post("/tasks", json=spec)
    again = http.simulate_post("/tasks", json=spec)

    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json["id"] == again.json["id"]
    assert again.headers["location"] == f"/tasks/{first.json['id']}"
    assert list(local.core.tasks) == [first.json["id"]]
    assert task(http, first.json["id"])["idempotency_key"] == "order-17"


def test_batch_submit_is_all_or_none_and_names_the_bad_entry(
    http: Http, local: LocalClient
) -> None:
    # when three tasks are submitted in one batch, all are made, in order
    tasks = [{"handler": "echo", "args": b64(str(i).encode())} for i in range(3)]
    result = http.simulate_post("/tasks/batch", json={"tasks": tasks})
    assert result.status_code == 201
    ids = result.json["ids"]
    assert len(ids) == 3
    assert [task(http, i)["args"] for i in ids] == [b64(b"0"), b64(b"1"), b64(b"2")]
    assert [t["id"] for t in http.simulate_get("/tasks").json] == ids

    # when a batch has a bad entry, or none, or an unknown field, none of it is made
    bad = [*tasks, {"handler": "echo", "args": "!!"}]
    assert_error(http.simulate_post("/tasks/batch", json={"tasks": bad}), 400, "tasks[3].args")
    bad_dependency = [*tasks, {"handler": "echo", "dependencies": ["t404"]}]
    result = http.simulate_post("/tasks/batch", json={"tasks": bad_dependency})
    assert_error(result, 400, "tasks[3].dependencies", "t404")
    assert_error(http.simulate_post("/tasks/batch", json={"tasks": []}), 400, "tasks")
    assert_error(http.simulate_post("/tasks/batch", json={"tasks": "x"}), 400, "tasks")
    assert_error(http.simulate_post("/tasks/batch", json={"task": tasks}), 400, "task")
    assert sorted(local.core.tasks) == sorted(ids)


def test_batch_submit_with_wait_answers_with_the_records(http: Http, local: LocalClient) -> None:
    # given a cancelled task
    dead = submit(http, handler="echo")
    http.simulate_delete(f"/tasks/{dead}")

    # when a batch is submitted with ?wait, one of whose tasks depends on it
    tasks = [{"handler": "echo", "args": b64(b"a")}, {"handler": "echo", "dependencies": [dead]}]
    result = http.simulate_post("/tasks/batch", json={"tasks": tasks}, params={"wait": "2.5"})

    # then the answer holds the ids and each task's whole record, as GET shows it, given once
    # the time was up (the first is still pending; the second failed at once)
    assert result.status_code == 201, result.text
    ids = result.json["ids"]
    assert [t["id"] for t in result.json["tasks"]] == ids
    assert result.json["tasks"] == [without_dependents(task(http, i)) for i in ids]
    assert [t["status"] for t in result.json["tasks"]] == ["pending", "failed"]
    assert result.json["tasks"][0]["args"] == b64(b"a")
    assert local.now == NOW + 2.5

    # and a batch whose tasks are all final is answered at once
    failing = [{"handler": "echo", "dependencies": [dead]}]
    result = http.simulate_post("/tasks/batch", json={"tasks": failing}, params={"wait": "9"})
    assert [t["status"] for t in result.json["tasks"]] == ["failed"]
    assert local.now == NOW + 2.5

    # and a wait out of range is refused, with nothing made
    made = len(local.core.tasks)
    for bad in ("31", "-1", "soon", "nan"):
        result = http.simulate_post("/tasks/batch", json={"tasks": tasks}, params={"wait": bad})
        assert_error(result, 400, "wait")
    assert len(local.core.tasks) == made
    assert local.now == NOW + 2.5
