"""The REST API through real gunicorn, a real broker and real workers."""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Stack, wait_for


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def api(stack: Stack) -> Iterator[Stack]:
    stack.start_broker()
    stack.start_api()
    yield stack


def wait_status(stack: Stack, task_id: str, *statuses: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        _, task, _ = stack.http("GET", f"/tasks/{task_id}")
        return task if task["status"] in statuses else None

    return wait_for(check, what=f"task {task_id} {statuses}")


def test_submit_run_and_inspect_a_task(api: Stack) -> None:
    api.start_worker(worker_id="w1")
    status, body, headers = api.http(
        "POST", "/tasks", {"name": "fib", "handler": "fibonacci", "args": b64(b'{"n": 10}')}
    )
    assert status == 201
    assert body["status"] == "pending"
    assert headers["location"].endswith(f"/tasks/{body['id']}")
    task = wait_status(api, body["id"], "completed")
    assert json.loads(base64.b64decode(task["result"])) == {"n": 10, "result": 55}
    assert task["worker_id"] == "w1"
    assert task["attempts"] == 1
    for key in ("created_at", "started_at", "completed_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", task[key]), task[key]
    assert task["created_at"] <= task["started_at"] <= task["completed_at"]
    expected = {"id", "name", "handler", "args", "dependencies", "priority", "status",
                "worker_id", "attempts", "result", "error", "max_retries", "timeout",
                "created_at", "started_at", "completed_at"}  # fmt: skip
    assert expected <= set(task)


def test_post_with_wait_answers_with_the_finished_task(api: Stack) -> None:
    api.start_worker()
    spec = {"handler": "fibonacci", "args": b64(b'{"n": 12}'), "idempotency_key": "fib-12"}
    status, task, headers = api.http("POST", "/tasks?wait=30", spec)
    assert status == 201
    assert headers["location"].endswith(f"/tasks/{task['id']}")
    assert task["status"] == "completed" and task["attempts"] == 1
    assert json.loads(base64.b64decode(task["result"])) == {"n": 12, "result": 144}
    status, again, _ = api.http("POST", "/tasks?wait=30", spec)
    assert (status, again["id"], again["status"]) == (200, task["id"], "completed")
    status, error, _ = api.http("POST", "/tasks?wait=-2", spec)
    assert status == 400 and "wait" in error["description"]


def test_list_filters_and_paginates_with_link_header(api: Stack) -> None:
    ids = []
    for i in range(5):
        handler = "echo" if i % 2 == 0 else "sleep"
        _, body, _ = api.http("POST", "/tasks", {"handler": handler, "args": b64(b"{}")})
        ids.append(body["id"])
    status, page, headers = api.http("GET", "/tasks?handler=echo&limit=2")
    assert status == 200
    assert [t["id"] for t in page] == [ids[0], ids[2]]
    link = headers["link"]
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    _, page, headers = api.http("GET", match.group(1))
    assert [t["id"] for t in page] == [ids[4]]
    assert "link" not in headers
    _, pending, _ = api.http("GET", "/tasks?status=pending")
    assert len(pending) == 5


def test_cancel_over_http(api: Stack) -> None:
    api.start_worker(slots=1)
    _, running, _ = api.http(
        "POST", "/tasks", {"handler": "sleep", "args": b64(b'{"seconds": 60}')}
    )
    _, pending, _ = api.http("POST", "/tasks", {"handler": "echo"})
    wait_status(api, running["id"], "running")
    status, body, _ = api.http("DELETE", f"/tasks/{pending['id']}")
    assert (status, body["status"]) == (200, "cancelled")
    status, body, _ = api.http("DELETE", f"/tasks/{running['id']}")
    assert (status, body["status"]) == (200, "cancelled")
    assert api.http("DELETE", "/tasks/nope")[0] == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (json.dumps({"handler": "echo", "args": "***"}).encode(), "args"),
        (json.dumps({"handler": "echo", "args": 5}).encode(), "args"),
        (json.dumps({"handler": 5}).encode(), "handler"),
        (json.dumps({"args": "aGk="}).encode(), "handler"),
        (json.dumps({"handler": "echo", "priority": "high"}).encode(), "priority"),
        (json.dumps({"handler": "echo", "timeout": -1}).encode(), "timeout"),
        (json.dumps({"handler": "echo", "dependencies": ["missing"]}).encode(), "dependencies"),
        (json.dumps({"handler": "echo", "dependencies": "x"}).encode(), "dependencies"),
        (json.dumps({"handler": "echo", "resources": {"cpu": "lots"}}).encode(), "cpu"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(api: Stack, body: bytes, field: str) -> None:
    status, error, _ = api.http("POST", "/tasks", raw=body)
    assert status == 400
    assert set(error) >= {"title", "description"}
    assert field in error["description"], error


def test_unknown_ids_and_oversized_bodies(api: Stack) -> None:
    assert api.http("GET", "/tasks/does-not-exist")[0] == 404
    assert api.http("GET", "/workers/does-not-exist")[0] == 404
    # The API answers from Content-Length, before reading the body.
    host, port = api.api_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/tasks")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(9 * 1024 * 1024))
        connection.endheaders()
        connection.send(b'{"handler": "echo", "args": "' + b"A" * 65536)
        response = connection.getresponse()
        assert response.status == 413
        assert "title" in json.loads(response.read())
    finally:
        connection.close()
    assert api.http("GET", "/tasks?limit=0")[0] == 400
    assert api.http("GET", "/tasks?limit=1001")[0] == 400
    assert api.http("GET", "/tasks?status=sleeping")[0] == 400


def test_http_worker_pulls_runs_and_completes(api: Stack) -> None:
    status, worker, _ = api.http(
        "POST", "/workers", {"id": "py-http", "capabilities": ["resize"], "resources": {"cpu": 2}}
    )
    assert (status, worker["kind"], worker["status"]) == (201, "http", "online")
    assert api.http("POST", "/workers/py-http/tasks/next")[0] == 204

    # A long-poll is answered as soon as a task arrives.
    got: dict[str, Any] = {}

    def poll() -> None:
        got["response"] = api.http("POST", "/workers/py-http/tasks/next?wait=20")

    poller = threading.Thread(target=poll)
    poller.start()
    _, submitted, _ = api.http("POST", "/tasks", {"handler": "resize", "args": b64(b"img")})
    poller.join(timeout=30)
    status, task, _ = got["response"]
    assert status == 200
    assert (task["id"], task["status"], task["worker_id"]) == (
        submitted["id"],
        "running",
        "py-http",
    )
    assert base64.b64decode(task["args"]) == b"img"

    assert api.http("PUT", "/workers/py-http/heartbeat")[0] == 200
    done = {"status": "completed", "result": b64(b"small img")}
    path = f"/workers/py-http/tasks/{task['id']}/complete"
    status, final, _ = api.http("POST", path, done)
    assert (status, final["status"]) == (200, "completed")
    assert base64.b64decode(final["result"]) == b"small img"
    assert api.http("POST", path, done)[0] == 409
    assert api.http("POST", "/workers/ghost/tasks/x/complete", done)[0] == 404
    assert api.http("POST", "/workers/py-http/tasks/nope/complete", done)[0] == 404
    assert api.http("POST", path, {"status": "maybe"})[0] == 400
    assert api.http("POST", "/workers/py-http/tasks/next?wait=31")[0] == 400


def test_workers_listing_shows_zmq_and_http_workers(api: Stack) -> None:
    api.start_worker("--capabilities", "gpu", worker_id="zw", slots=3)
    api.http("POST", "/workers", {"id": "hw", "capabilities": ["x"]})
    api.wait_workers("zw", "hw")
    _, workers, _ = api.http("GET", "/workers")
    by_id = {w["id"]: w for w in workers}
    assert by_id["zw"]["kind"] == "zmq"
    assert by_id["zw"]["slots"] == 3
    assert {"echo", "sleep", "fibonacci", "prime_factorization", "gpu"} <= set(
        by_id["zw"]["capabilities"]
    )
    assert by_id["hw"]["kind"] == "http"
    _, one, _ = api.http("GET", "/workers/zw")
    assert set(one) >= {"id", "kind", "status", "capabilities", "resources", "slots",
                        "running", "last_seen"}  # fmt: skip


def test_health_is_503_when_the_broker_is_down(api: Stack) -> None:
    status, body, _ = api.http("GET", "/health")
    assert (status, body["status"]) == (200, "ok")
    assert api.broker is not None
    api.broker.kill9()
    status, body, _ = api.http("GET", "/health")
    assert status == 503
    assert "title" in body


def test_idempotency_key_makes_one_task_however_often_it_is_sent(api: Stack) -> None:
    spec = {"handler": "echo", "args": b64(b"once"), "idempotency_key": "invoice-42"}
    first = api.http("POST", "/tasks", spec)
    again = api.http("POST", "/tasks", spec)
    assert (first[0], again[0]) == (201, 200)
    assert first[1]["id"] == again[1]["id"]
    entries = api.client().submit_entries([{"handler": "echo", "idempotency_key": "invoice-42"}])
    assert entries == [{"id": first[1]["id"], "status": "pending", "created": False}]
    _, tasks, _ = api.http("GET", "/tasks")
    assert [t["id"] for t in tasks] == [first[1]["id"]]
    assert tasks[0]["idempotency_key"] == "invoice-42"
    assert tasks[0]["leases"] == []


def test_batch_submit_over_http(api: Stack) -> None:
    api.start_worker(slots=4)
    tasks = [{"handler": "echo", "args": b64(f"item {i}".encode())} for i in range(200)]
    status, body, _ = api.http("POST", "/tasks/batch", {"tasks": tasks})
    assert status == 201
    briefs = api.client().wait_many(body["ids"], timeout=60)
    assert [b["result"] for b in briefs] == [f"item {i}".encode() for i in range(200)]
    bad = [{"handler": "echo"}, {"handler": "echo", "priority": "urgent"}]
    status, error, _ = api.http("POST", "/tasks/batch", {"tasks": bad})
    assert status == 400
    assert "tasks[1].priority" in error["description"]
