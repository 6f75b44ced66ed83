"""The REST API against an in-memory broker: every route, every bad input, every error shape.

``FakeBroker`` implements ``api.app.ClientLike`` with dicts and validates submissions with
the broker's own ``TaskSpec.parse``, so the API's pass-through of spec fields is tested
against the real rules. Nothing here opens a socket except the per-thread client test.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import falcon
import falcon.testing
import pytest

import api.app
from api.app import HEALTH_TIMEOUT, ClientLike, create_app, thread_local_clients
from api.render import render, rfc3339
from common.client import Client
from common.errors import Conflict, InvalidInput, NotFound, Unavailable
from common.settings import Settings
from common.spec import TaskSpec, parse_capabilities, parse_resources

#: The fake broker's clock: every time it records is this instant.
NOW = datetime(2026, 11, 27, 2, 20, 38, 123456, tzinfo=UTC).timestamp()
NOW_TEXT = "2026-11-27T02:20:38.123456Z"
MAX_BODY = 4096


class FakeBroker:
    """A dict-based broker behind the client interface, with the broker's error semantics."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.seqs: dict[str, int] = {}
        self.workers_by_id: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.submitted: list[dict[str, Any]] = []
        self.waits: list[float] = []
        self.task_waits: list[tuple[str, float]] = []
        self.keys: dict[str, str] = {}
        self.pages: list[tuple[str | None, str | None, int, int | None]] = []
        self.health_timeouts: list[float | None] = []
        self.down = False

    def submit_entries(
        self, specs: list[dict[str, Any]], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        parsed = [TaskSpec.parse(spec, f"tasks[{i}].") for i, spec in enumerate(specs)]
        for spec in parsed:
            for dep in spec.dependencies:
                if dep not in self.tasks:
                    raise InvalidInput(f"unknown dependency {dep!r}")
        self.submitted.extend(specs)
        entries = []
        for spec in parsed:
            if spec.idempotency_key in self.keys:
                known = self.keys[spec.idempotency_key]
                entries.append({"id": known, "status": "pending", "created": False})
                continue
            seq = next(self.ids)
            task_id = f"t{seq}"
            self.seqs[task_id] = seq
            self.tasks[task_id] = {
                "id": task_id,
                "name": spec.name,
                "handler": spec.handler,
                "args": spec.args,
                "dependencies": spec.dependencies,
                "priority": spec.priority,
                "status": "pending",
                "worker_id": None,
                "attempts": 0,
                "result": None,
                "error": None,
                "max_retries": spec.max_retries,
                "timeout": spec.timeout,
                "requires": spec.requires,
                "resources": spec.resources,
                "created_at": NOW,
                "started_at": None,
                "completed_at": None,
            }
            if spec.idempotency_key:
                self.keys[spec.idempotency_key] = task_id
            entries.append({"id": task_id, "status": "pending", "created": True})
        return entries

    def submit_and_wait(self, specs: list[dict[str, Any]], wait: float) -> list[dict[str, Any]]:
        entries = self.submit_entries(specs)
        for entry in entries:
            self.task_waits.append((entry["id"], wait))
        return [{**self.get(e["id"]), "created": e["created"]} for e in entries]

    def get(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        if task_id not in self.tasks:
            raise NotFound(f"no task {task_id!r}")
        return dict(self.tasks[task_id])

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        self.task_waits.append((task_id, timeout))
        return self.get(task_id)

    def list_tasks(
        self,
        status: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: int | None = None,
        timeout: float | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        self.pages.append((status, handler, limit, after))
        matching = [
            task
            for task_id, task in self.tasks.items()
            if self.seqs[task_id] > (after or 0)
            and (status is None or task["status"] == status)
            and (handler is None or task["handler"] == handler)
        ]
        page = matching[:limit]
        cursor = self.seqs[page[-1]["id"]] if len(matching) > limit else None
        return [dict(task) for task in page], cursor

    def cancel(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        if task["status"] in ("completed", "failed", "cancelled"):
            raise Conflict(f"task {task_id} is already {task['status']}")
        task.update(status="cancelled", completed_at=NOW)
        return dict(task)

    def workers(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return [dict(worker) for worker in self.workers_by_id.values()]

    def worker(self, worker_id: str, timeout: float | None = None) -> dict[str, Any]:
        if worker_id not in self.workers_by_id:
            raise NotFound(f"no worker {worker_id!r}")
        return dict(self.workers_by_id[worker_id])

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        self.health_timeouts.append(timeout)
        if self.down:
            raise Unavailable(f"broker did not answer within {timeout:g} s")
        counts = {"pending": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
        for task in self.tasks.values():
            counts[task["status"]] += 1
        return {"status": "ok", "tasks": counts, "workers": len(self.workers_by_id), "uptime": 2.5}

    def register_http_worker(
        self,
        worker_id: str,
        capabilities: list[str],
        resources: dict[str, float],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        created = worker_id not in self.workers_by_id
        self.workers_by_id[worker_id] = {
            "id": worker_id,
            "kind": "http",
            "status": "online",
            "capabilities": sorted(parse_capabilities(capabilities)),
            "resources": parse_resources(resources, "resources"),
            "slots": None,
            "running": [],
            "last_seen": NOW,
            "host": "",
            "pid": 0,
        }
        return {**self.workers_by_id[worker_id], "created": created}

    def next_task(self, worker_id: str, wait: float = 0.0) -> dict[str, Any] | None:
        worker = self.workers_by_id.get(worker_id)
        if worker is None:
            raise NotFound(f"no worker {worker_id!r}")
        self.waits.append(wait)
        for task in self.tasks.values():
            if task["status"] == "pending" and task["handler"] in worker["capabilities"]:
                task.update(
                    status="running",
                    worker_id=worker_id,
                    attempts=task["attempts"] + 1,
                    started_at=NOW,
                )
                worker["running"].append(task["id"])
                return dict(task)
        return None

    def heartbeat(self, worker_id: str, timeout: float | None = None) -> dict[str, Any]:
        worker = self.workers_by_id.get(worker_id)
        if worker is None:
            raise NotFound(f"no worker {worker_id!r}")
        worker["last_seen"] = NOW + 1
        return dict(worker)

    def complete(
        self,
        worker_id: str,
        task_id: str,
        status: str,
        result: bytes | None = None,
        error: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        if worker_id not in self.workers_by_id:
            raise NotFound(f"no worker {worker_id!r}")
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        if task["status"] != "running" or task["worker_id"] != worker_id:
            raise Conflict(f"task {task_id} is not running on worker {worker_id}")
        self.workers_by_id[worker_id]["running"].remove(task_id)
        task.update(status=status, result=result, error=error, completed_at=NOW + 2)
        return dict(task)


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def http(broker: FakeBroker) -> falcon.testing.TestClient:
    fake: ClientLike = broker  # checked by mypy: the fake must match the protocol
    return falcon.testing.TestClient(
        create_app(client=lambda: fake, settings=Settings(max_body=MAX_BODY))
    )


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


def submit(http: falcon.testing.TestClient, **spec: Any) -> str:
    result = http.simulate_post("/tasks", json=spec)
    assert result.status_code == 201, result.text
    task_id: str = result.json["id"]
    return task_id


def register(http: falcon.testing.TestClient, worker_id: str, *capabilities: str) -> None:
    body = {"id": worker_id, "capabilities": list(capabilities), "resources": {"cpu": 2}}
    result = http.simulate_post("/workers", json=body)
    assert result.status_code in (200, 201), result.text


# -- tasks -----------------------------------------------------------------------------


def test_submit_returns_201_with_location_and_passes_fields_through(
    http: falcon.testing.TestClient, broker: FakeBroker
) -> None:
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
    }

    result = http.simulate_post("/tasks", json=spec)

    assert result.status_code == 201
    assert result.json == {"id": "t1", "status": "pending"}
    assert result.headers["location"] == "/tasks/t1"
    assert broker.submitted == [{**spec, "args": b'{"n": 10}'}]


def test_submit_without_args_sends_no_args(
    http: falcon.testing.TestClient, broker: FakeBroker
) -> None:
    submit(http, handler="noop")

    assert broker.submitted == [{"handler": "noop"}]
    assert http.simulate_get("/tasks/t1").json["args"] == ""


def test_args_and_result_round_trip_as_base64(http: falcon.testing.TestClient) -> None:
    payload = bytes(range(256))
    task_id = submit(http, handler="echo", args=b64(payload))
    register(http, "w1", "echo")

    leased = http.simulate_post("/workers/w1/tasks/next").json
    done = http.simulate_post(
        f"/workers/w1/tasks/{task_id}/complete",
        json={"status": "completed", "result": leased["args"]},
    )

    assert base64.b64decode(leased["args"], validate=True) == payload
    assert base64.b64decode(done.json["result"], validate=True) == payload
    assert http.simulate_get(f"/tasks/{task_id}").json["result"] == b64(payload)


def test_get_task_renders_the_full_record(http: falcon.testing.TestClient) -> None:
    task_id = submit(http, handler="fibonacci", args=b64(b"10"), priority=3)

    record = http.simulate_get(f"/tasks/{task_id}").json

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
    }


def test_unknown_task_is_404(http: falcon.testing.TestClient) -> None:
    assert_error(http.simulate_get("/tasks/nope"), 404, "nope")
    assert_error(http.simulate_delete("/tasks/nope"), 404, "nope")


def test_delete_cancels_and_returns_the_record(http: falcon.testing.TestClient) -> None:
    task_id = submit(http, handler="noop")

    result = http.simulate_delete(f"/tasks/{task_id}")

    assert result.status_code == 200
    assert result.json["status"] == "cancelled"
    assert result.json["completed_at"] == NOW_TEXT
    assert_error(http.simulate_delete(f"/tasks/{task_id}"), 409, "cancelled")


def test_broker_validation_errors_are_400_naming_the_field(
    http: falcon.testing.TestClient,
) -> None:
    assert_error(http.simulate_post("/tasks", json={"name": "x"}), 400, "handler")
    assert_error(
        http.simulate_post("/tasks", json={"handler": "x", "priority": "high"}), 400, "priority"
    )
    assert_error(http.simulate_post("/tasks", json={"handler": "x", "colour": 1}), 400, "colour")
    assert_error(
        http.simulate_post("/tasks", json={"handler": "x", "dependencies": ["t404"]}),
        400,
        "t404",
    )


def test_submit_with_a_known_dependency(http: falcon.testing.TestClient) -> None:
    first = submit(http, handler="a")

    second = submit(http, handler="b", dependencies=[first])

    assert http.simulate_get(f"/tasks/{second}").json["dependencies"] == [first]


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
    http: falcon.testing.TestClient, broker: FakeBroker, body: dict[str, Any], field: str
) -> None:
    assert_error(http.simulate_post("/tasks", json=body), 400, field)
    assert broker.submitted == []


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
def test_malformed_bodies_are_400(broker: FakeBroker, body: bytes, words: list[str]) -> None:
    http = falcon.testing.TestClient(
        create_app(client=lambda: broker, settings=Settings(max_body=1 << 20))
    )
    for path in ("/tasks", "/workers", "/workers/w1/tasks/t1/complete"):
        assert_error(http.simulate_post(path, body=body), 400, *words)


def test_body_over_max_body_is_413(http: falcon.testing.TestClient, broker: FakeBroker) -> None:
    body = {"handler": "x", "args": b64(b"x" * MAX_BODY)}

    assert_error(http.simulate_post("/tasks", json=body), 413, str(MAX_BODY))
    assert broker.submitted == []


def simulate_chunked(app: falcon.App[Any, Any], path: str, body: bytes) -> tuple[str, Any]:
    """POST a body without Content-Length, as gunicorn passes a chunked one."""
    env = falcon.testing.create_environ(path=path, method="POST", body=body)
    env["wsgi.input_terminated"] = True
    del env["CONTENT_LENGTH"]
    start_response = falcon.testing.StartResponseMock()
    data = b"".join(app(env, start_response))
    return str(start_response.status), json.loads(data)


def test_chunked_body_is_read_and_bounded(broker: FakeBroker) -> None:
    app = create_app(client=lambda: broker, settings=Settings(max_body=MAX_BODY))

    status, body = simulate_chunked(app, "/tasks", json.dumps({"handler": "x"}).encode())
    assert status.startswith("201"), body

    over = json.dumps({"handler": "x", "args": b64(b"x" * MAX_BODY)}).encode()
    status, body = simulate_chunked(app, "/tasks", over)
    assert status.startswith("413")
    assert str(MAX_BODY) in body["description"]


def test_list_tasks_filters_and_links_the_next_page(http: falcon.testing.TestClient) -> None:
    ids = [submit(http, handler="a" if i % 2 else "b") for i in range(7)]

    first = http.simulate_get("/tasks", params={"limit": 2, "handler": "a"})

    assert [t["id"] for t in first.json] == [ids[1], ids[3]]
    assert first.headers["link"] == '</tasks?limit=2&after=4&handler=a>; rel="next"'
    second = http.simulate_get("/tasks?limit=2&after=4&handler=a")
    assert [t["id"] for t in second.json] == [ids[5]]
    assert "link" not in second.headers


def test_list_tasks_defaults_and_status_filter(
    http: falcon.testing.TestClient, broker: FakeBroker
) -> None:
    ids = [submit(http, handler="h") for _ in range(3)]
    http.simulate_delete(f"/tasks/{ids[1]}")

    everything = http.simulate_get("/tasks")
    cancelled = http.simulate_get("/tasks", params={"status": "cancelled", "limit": 1})

    assert [t["id"] for t in everything.json] == ids
    assert "link" not in everything.headers
    assert [t["id"] for t in cancelled.json] == [ids[1]]
    assert all(t["created_at"] == NOW_TEXT for t in everything.json)
    assert broker.pages == [(None, None, 100, None), ("cancelled", None, 1, None)]


def test_link_header_escapes_the_handler(http: falcon.testing.TestClient) -> None:
    for _ in range(2):
        submit(http, handler="a b&c")

    result = http.simulate_get(
        "/tasks", params={"limit": 1, "handler": "a b&c", "status": "pending"}
    )

    assert result.headers["link"] == (
        '</tasks?limit=1&after=1&status=pending&handler=a+b%26c>; rel="next"'
    )


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
    ],
)
def test_list_tasks_rejects_bad_queries(
    http: falcon.testing.TestClient, query: str, field: str
) -> None:
    assert_error(http.simulate_get("/tasks", query_string=query), 400, field)


# -- workers ---------------------------------------------------------------------------


def test_register_is_201_then_200(http: falcon.testing.TestClient) -> None:
    body = {"id": "w1", "capabilities": ["echo"], "resources": {"cpu": 2, "memory": 512}}

    first = http.simulate_post("/workers", json=body)
    again = http.simulate_post("/workers", json=body)

    assert first.status_code == 201
    assert again.status_code == 200
    assert first.headers["location"] == "/workers/w1"
    assert "location" not in again.headers
    assert first.json == {
        "id": "w1",
        "kind": "http",
        "status": "online",
        "capabilities": ["echo"],
        "resources": {"cpu": 2.0, "memory": 512.0},
        "slots": None,
        "running": [],
        "last_seen": NOW_TEXT,
        "host": "",
        "pid": 0,
    }


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"capabilities": []}, 400, "id"),
        ({"id": ""}, 400, "id"),
        ({"id": 7}, 400, "id"),
        ({"id": None}, 400, "id"),
        ({"id": "w", "capability": ["x"]}, 400, "capability"),
        ({"id": "w", "capabilities": "echo"}, 400, "capabilities"),
        ({"id": "w", "resources": {"gpu": 1}}, 400, "gpu"),
    ],
)
def test_register_rejects_bad_bodies(
    http: falcon.testing.TestClient, body: dict[str, Any], status: int, field: str
) -> None:
    assert_error(http.simulate_post("/workers", json=body), status, field)


def test_list_and_get_workers(http: falcon.testing.TestClient) -> None:
    register(http, "w1", "echo")
    register(http, "w2", "sleep")

    listed = http.simulate_get("/workers")
    one = http.simulate_get("/workers/w2")

    assert [w["id"] for w in listed.json] == ["w1", "w2"]
    assert one.json["capabilities"] == ["sleep"]
    assert one.json["last_seen"] == NOW_TEXT
    assert_error(http.simulate_get("/workers/w9"), 404, "w9")


def test_heartbeat_returns_the_worker(http: falcon.testing.TestClient) -> None:
    register(http, "w1", "echo")

    result = http.simulate_put("/workers/w1/heartbeat")

    assert result.status_code == 200
    assert result.json["last_seen"] == rfc3339(NOW + 1)
    assert_error(http.simulate_put("/workers/w9/heartbeat"), 404, "w9")


def test_next_leases_a_task_or_answers_204(
    http: falcon.testing.TestClient, broker: FakeBroker
) -> None:
    register(http, "w1", "echo")
    task_id = submit(http, handler="echo")

    leased = http.simulate_post("/workers/w1/tasks/next", params={"wait": "2.5"})
    empty = http.simulate_post("/workers/w1/tasks/next")

    assert leased.status_code == 200
    assert leased.json["id"] == task_id
    assert leased.json["status"] == "running"
    assert leased.json["worker_id"] == "w1"
    assert leased.json["started_at"] == NOW_TEXT
    assert empty.status_code == 204
    assert empty.content == b""
    assert broker.waits == [2.5, 0.0]
    assert_error(http.simulate_post("/workers/w9/tasks/next"), 404, "w9")


@pytest.mark.parametrize("wait", ["-1", "30.5", "soon", "nan", "inf", ""])
def test_next_rejects_bad_wait(http: falcon.testing.TestClient, wait: str) -> None:
    register(http, "w1", "echo")

    assert_error(http.simulate_post(f"/workers/w1/tasks/next?wait={wait}"), 400, "wait")


def test_complete_failed_with_an_error(http: falcon.testing.TestClient) -> None:
    register(http, "w1", "echo")
    task_id = submit(http, handler="echo")
    http.simulate_post("/workers/w1/tasks/next")

    result = http.simulate_post(
        f"/workers/w1/tasks/{task_id}/complete",
        json={"status": "failed", "error": "boom", "result": None},
    )

    assert result.status_code == 200
    assert result.json["status"] == "failed"
    assert result.json["error"] == "boom"
    assert result.json["result"] is None
    assert result.json["completed_at"] == rfc3339(NOW + 2)


def test_complete_passes_broker_404_and_409_through(http: falcon.testing.TestClient) -> None:
    register(http, "w1", "echo")
    register(http, "w2", "echo")
    task_id = submit(http, handler="echo")
    http.simulate_post("/workers/w1/tasks/next")
    done = {"status": "completed"}

    assert_error(http.simulate_post("/workers/w9/tasks/t1/complete", json=done), 404, "w9")
    assert_error(http.simulate_post("/workers/w1/tasks/t9/complete", json=done), 404, "t9")
    wrong_worker = http.simulate_post(f"/workers/w2/tasks/{task_id}/complete", json=done)
    assert_error(wrong_worker, 409, "w2")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "status"),
        ({"status": "cancelled"}, "status"),
        ({"status": 1}, "status"),
        ({"status": "completed", "result": "%%%"}, "result"),
        ({"status": "completed", "result": 5}, "result"),
        ({"status": "failed", "error": 5}, "error"),
        ({"status": "failed", "error": ["x"]}, "error"),
        ({"status": "failed", "reason": "x"}, "reason"),
    ],
)
def test_complete_rejects_bad_bodies(
    http: falcon.testing.TestClient, body: dict[str, Any], field: str
) -> None:
    register(http, "w1", "echo")
    task_id = submit(http, handler="echo")
    http.simulate_post("/workers/w1/tasks/next")

    assert_error(http.simulate_post(f"/workers/w1/tasks/{task_id}/complete", json=body), 400, field)
    assert http.simulate_get(f"/tasks/{task_id}").json["status"] == "running"


# -- health and errors -----------------------------------------------------------------


def test_health_ok_includes_broker_fields(
    http: falcon.testing.TestClient, broker: FakeBroker
) -> None:
    submit(http, handler="x")

    result = http.simulate_get("/health")

    assert result.status_code == 200
    assert result.json["status"] == "ok"
    assert result.json["tasks"]["pending"] == 1
    assert result.json["uptime"] == 2.5
    assert broker.health_timeouts == [HEALTH_TIMEOUT]


def test_health_is_503_when_the_broker_is_unavailable(
    http: falcon.testing.TestClient, broker: FakeBroker
) -> None:
    broker.down = True

    result = http.simulate_get("/health")

    assert result.status_code == 503
    assert result.json["status"] == "unavailable"
    assert result.json["title"] == "Broker unavailable"
    assert "1.5" in result.json["description"]


def test_unavailable_broker_is_503_on_any_route(
    http: falcon.testing.TestClient, monkeypatch: pytest.MonkeyPatch, broker: FakeBroker
) -> None:
    def silent(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("broker at tcp://x did not answer within 5 s")

    monkeypatch.setattr(broker, "get", silent)

    assert_error(http.simulate_get("/tasks/t1"), 503, "did not answer")


def test_unexpected_errors_are_json_500_and_logged(
    http: falcon.testing.TestClient,
    monkeypatch: pytest.MonkeyPatch,
    broker: FakeBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(broker, "workers", broken)

    with caplog.at_level(logging.ERROR, logger="api.app"):
        result = http.simulate_get("/workers", headers={"Accept": "text/html"})

    assert_error(result, 500, "log")
    assert "kaboom" not in result.text
    assert "kaboom" in caplog.text


def test_framework_errors_are_json_whatever_the_accept_header(
    http: falcon.testing.TestClient,
) -> None:
    html = {"Accept": "text/html"}
    assert_error(http.simulate_get("/nowhere", headers=html), 404, "/nowhere")
    assert_error(http.simulate_patch("/tasks", headers=html), 405, "PATCH")
    assert_error(http.simulate_post("/tasks", body=b"[", headers=html), 400, "JSON")


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


def test_default_client_is_made_per_thread_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, float, int]] = []
    broker = FakeBroker()

    def recording_client(endpoint: str, timeout: float) -> FakeBroker:
        made.append((endpoint, timeout, threading.get_ident()))
        return broker

    monkeypatch.setattr(api.app, "Client", recording_client)
    settings = Settings(broker="tcp://10.0.0.1:5555", request_timeout=2.0)

    http = falcon.testing.TestClient(create_app(settings=settings))
    assert made == []  # nothing at creation: gunicorn may fork after it
    http.simulate_get("/health")
    http.simulate_get("/workers")
    other = threading.Thread(target=http.simulate_get, args=("/health",))
    other.start()
    other.join()

    assert [(endpoint, timeout) for endpoint, timeout, _ in made] == [
        ("tcp://10.0.0.1:5555", 2.0),
        ("tcp://10.0.0.1:5555", 2.0),
    ]
    assert made[0][2] != made[1][2]


def test_thread_local_clients_are_real_clients_one_per_thread() -> None:
    get = thread_local_clients(Settings(broker="tcp://127.0.0.1:1", request_timeout=0.5))
    seen: list[ClientLike] = []

    mine = get()
    other = threading.Thread(target=lambda: seen.append(get()))
    other.start()
    other.join()

    try:
        assert get() is mine
        assert isinstance(mine, Client) and mine.timeout == 0.5
        assert seen[0] is not mine
    finally:
        for client in (mine, *seen):
            assert isinstance(client, Client)
            client.close()


def test_get_task_with_wait_long_polls_through_the_client(
    broker: FakeBroker, http: falcon.testing.TestClient
) -> None:
    task_id = http.simulate_post("/tasks", json={"handler": "echo"}).json["id"]
    result = http.simulate_get(f"/tasks/{task_id}", params={"wait": "2.5"})
    assert result.status_code == 200
    assert broker.task_waits == [(task_id, 2.5)]
    assert_error(http.simulate_get(f"/tasks/{task_id}", params={"wait": "31"}), 400, "wait")
    assert_error(http.simulate_get(f"/tasks/{task_id}", params={"wait": "soon"}), 400, "wait")


def test_post_task_with_wait_answers_with_the_whole_record(
    broker: FakeBroker, http: falcon.testing.TestClient
) -> None:
    spec = {"handler": "echo", "args": b64(b"hi"), "idempotency_key": "k-1"}
    first = http.simulate_post("/tasks", json=spec, params={"wait": "2.5"})
    assert first.status_code == 201
    task_id = first.json["id"]
    assert first.headers["location"] == f"/tasks/{task_id}"
    assert first.json["args"] == b64(b"hi") and first.json["status"] == "pending"
    assert "created" not in first.json
    assert broker.task_waits == [(task_id, 2.5)]
    again = http.simulate_post("/tasks", json=spec, params={"wait": "1"})
    assert (again.status_code, again.json["id"]) == (200, task_id)
    for bad in ("31", "-1", "soon", "nan"):
        assert_error(http.simulate_post("/tasks", json=spec, params={"wait": bad}), 400, "wait")
    assert len(broker.tasks) == 1


def test_a_repeated_idempotency_key_returns_the_first_task_with_200(
    http: falcon.testing.TestClient,
) -> None:
    spec = {"handler": "echo", "idempotency_key": "order-17"}
    first = http.simulate_post("/tasks", json=spec)
    again = http.simulate_post("/tasks", json=spec)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json["id"] == again.json["id"]
    assert again.headers["location"] == f"/tasks/{first.json['id']}"


def test_batch_submit_is_all_or_none_and_names_the_bad_entry(
    broker: FakeBroker, http: falcon.testing.TestClient
) -> None:
    tasks = [{"handler": "echo", "args": b64(str(i).encode())} for i in range(3)]
    result = http.simulate_post("/tasks/batch", json={"tasks": tasks})
    assert result.status_code == 201
    assert len(result.json["ids"]) == 3
    assert [broker.tasks[i]["args"] for i in result.json["ids"]] == [b"0", b"1", b"2"]
    bad = [*tasks, {"handler": "echo", "args": "!!"}]
    assert_error(http.simulate_post("/tasks/batch", json={"tasks": bad}), 400, "tasks[3].args")
    assert_error(http.simulate_post("/tasks/batch", json={"tasks": []}), 400, "tasks")
    roomy = falcon.testing.TestClient(
        create_app(client=lambda: broker, settings=Settings(max_body=1 << 20))
    )
    too_many = [{"handler": "echo"}] * 1001
    assert_error(roomy.simulate_post("/tasks/batch", json={"tasks": too_many}), 400, "tasks")
    assert_error(http.simulate_post("/tasks/batch", json={"tasks": [5]}), 400, "tasks[0]")
    assert len(broker.tasks) == 3
