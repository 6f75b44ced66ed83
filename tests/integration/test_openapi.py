"""Real answers of a running API, a few for every operation and every kind of answer,
checked against the OpenAPI document that API serves at ``/openapi.json``."""

from __future__ import annotations

import base64
import urllib.request
from typing import Any

import jsonschema_rs
import pytest

from tests.conftest import Stack, wait_for

#: A body limit small enough to reach in a test (the document says it).
MAX_BODY = 4096


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Described:
    """The API at ``stack``, each of whose answers is checked against its document: the
    status is one the operation lists, the body (or its absence) and its content type are
    what the document says for that status, and every required header is there."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        status, self.document, _ = stack.http("GET", "/openapi.json")
        assert status == 200
        self.checked: set[tuple[str, str, int]] = set()

    def validator(self, schema: dict[str, Any]) -> jsonschema_rs.Validator:
        root = {**schema, "components": self.document["components"]}
        return jsonschema_rs.validator_for(root, validate_formats=True)

    def __call__(
        self, method: str, template: str, path: str, body: Any = None, **kwargs: Any
    ) -> tuple[int, Any, dict[str, str]]:
        status, got, headers = self.stack.http(method, path, body, **kwargs)
        operation = self.document["paths"][template][method.lower()]
        response = operation["responses"].get(str(status))
        where = f"{method} {path} answered {status} {got!r:.300}"
        assert response is not None, f"{where}: the document lists {list(operation['responses'])}"
        content = response.get("content")
        if content is None:
            assert got is None, f"{where}: the document says no body"
        else:
            assert headers["content-type"] == "application/json", where
            errors = [
                e.message
                for e in self.validator(content[headers["content-type"]]["schema"]).iter_errors(got)
            ]
            assert not errors, f"{where}: {errors[:5]}"
        for name, header in response.get("headers", {}).items():
            assert not header["required"] or name.lower() in headers, f"{where}: no {name}"
        self.checked.add((method.lower(), template, status))
        return status, got, headers

    def text(self, method: str, path: str) -> bytes:
        """A dashboard path, whose answer is not JSON: its status and content type are
        those the document lists; the first bytes of its body (a stream never ends)."""
        request = urllib.request.Request(self.stack.api_url + path, method=method)
        with urllib.request.urlopen(request, timeout=20) as response:
            status, media_type = response.status, response.headers["content-type"]
            start: bytes = response.read(10)
        documented = self.document["paths"][path][method.lower()]["responses"][str(status)]
        if method == "GET":
            assert media_type.partition(";")[0] in documented["content"], (path, media_type)
        self.checked.add((method.lower(), path, status))
        return start


@pytest.fixture
def api(stack: Stack) -> Described:
    stack.start_broker()
    stack.start_worker(worker_id="zw")
    stack.start_api("--max-body", str(MAX_BODY))
    stack.wait_workers("zw")
    return Described(stack)


def test_answers_of_every_operation_match_the_document(api: Described) -> None:
    # Health and the document itself.
    api("GET", "/health", "/health")
    api("HEAD", "/health", "/health")
    assert api("GET", "/openapi.json", "/openapi.json")[1] == api.document
    api("HEAD", "/openapi.json", "/openapi.json")
    # The metrics, in Prometheus' text format rather than JSON.
    with urllib.request.urlopen(api.stack.api_url + "/metrics", timeout=30) as response:
        content = api.document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert response.status == 200 and response.headers["Content-Type"] in content
        assert b"zmqs_broker_up 1.0" in response.read()
    api.checked.add(("get", "/metrics", 200))
    api("HEAD", "/metrics", "/metrics")
    assert "4096 bytes" in str(api.document["paths"]["/tasks"]["post"]["responses"]["413"])

    # Submits: made, made and waited for, made before (an idempotency key), refused.
    _, made, _ = api("POST", "/tasks", "/tasks", {"handler": "echo", "args": b64(b"hi")})
    _, done, _ = api(
        "POST",
        "/tasks",
        "/tasks?wait=20",
        {"handler": "echo", "args": b64(b"x"), "idempotency_key": "k1"},
    )
    assert done["status"] == "completed"
    assert (
        api(
            "POST",
            "/tasks",
            "/tasks",
            {"handler": "echo", "args": b64(b"x"), "idempotency_key": "k1"},
        )[0]
        == 200
    )
    assert api("POST", "/tasks", "/tasks", {"handler": "echo", "idempotency_key": "k1"})[0] == 409
    api("POST", "/tasks", "/tasks?refuse_unservable=true", {"handler": "nobody"})
    api("POST", "/tasks", "/tasks", {"handler": "echo", "args": "not base64!"})
    api("POST", "/tasks", "/tasks", {"handler": "echo"}, headers={"Content-Type": "text/plain"})
    api("POST", "/tasks", "/tasks", raw=b"[" * (MAX_BODY + 1))
    api("POST", "/tasks", "/tasks?wait=31", {"handler": "echo"})
    # A task that fails (bad args: a lease with an error and a traceback), a pending one,
    # and one that waits for it.
    _, failed, _ = api(
        "POST", "/tasks", "/tasks?wait=20", {"handler": "fibonacci", "args": b64(b"{}")}
    )
    assert failed["status"] == "failed" and failed["leases"], failed
    _, stuck, _ = api(
        "POST",
        "/tasks",
        "/tasks",
        {"handler": "nobody", "priority": -5, "resources": {"cpu": 1.5}, "timeout": 2},
    )
    _, after, _ = api(
        "POST", "/tasks", "/tasks", {"handler": "echo", "dependencies": [stuck["id"]]}
    )
    _, batch, _ = api(
        "POST",
        "/tasks/batch",
        "/tasks/batch?wait=20",
        {"tasks": [{"handler": "echo"}, {"handler": "fibonacci", "args": b64(b'{"n": 10}')}]},
    )
    assert len(batch["tasks"]) == 2
    api("POST", "/tasks/batch", "/tasks/batch", {"tasks": [{"handler": "echo"}]})
    api("POST", "/tasks/batch", "/tasks/batch", {"tasks": []})
    api("POST", "/tasks/batch", "/tasks/batch?refuse_unservable=1", {"tasks": [{"handler": "no"}]})

    # Reading tasks: a page with a next one, filters, bad queries, one task, waits.
    _, page, headers = api("GET", "/tasks", "/tasks?limit=2")
    assert len(page) == 2 and 'rel="next"' in headers["link"]
    api("GET", "/tasks", "/tasks?status=failed&handler=fibonacci")
    api("HEAD", "/tasks", "/tasks")
    api("GET", "/tasks", "/tasks?limit=0")
    api("GET", "/tasks", "/tasks?" + "handler=x&" * 2000)  # past the request line's limit
    for task in (made, stuck, after, failed):
        api("GET", "/tasks/{task_id}", f"/tasks/{task['id']}")
    # Without ?wait, the task with its dependents: what TaskDetail says, not only Task.
    _, shown, _ = api("GET", "/tasks/{task_id}", f"/tasks/{stuck['id']}")
    detail = api.validator({"$ref": "#/components/schemas/TaskDetail"})
    assert not list(detail.iter_errors(shown)), shown
    assert shown["dependents"] == [after["id"]] and shown["more_dependents"] is False
    # With ?wait, the task as the wait ends, without them (the other answer it lists).
    _, waited, _ = api("GET", "/tasks/{task_id}", f"/tasks/{made['id']}?wait=20")
    assert "dependents" not in waited and not detail.is_valid(waited)
    api("GET", "/tasks/{task_id}", f"/tasks/{stuck['id']}?wait=0.1")
    api("GET", "/tasks/{task_id}", "/tasks/no-such-task")
    api("GET", "/tasks/{task_id}", "/tasks/not%20an%20id")
    api("GET", "/tasks/{task_id}", "/tasks/batch")
    api("HEAD", "/tasks/{task_id}", f"/tasks/{made['id']}")
    api("HEAD", "/tasks/{task_id}", "/tasks/no-such-task")
    api("DELETE", "/tasks/{task_id}", f"/tasks/{after['id']}")
    api("DELETE", "/tasks/{task_id}", f"/tasks/{after['id']}")
    api("DELETE", "/tasks/{task_id}", "/tasks/no-such-task")
    # Retries (of a failed task; of one not failed; of none), counts, purges.
    retry = "/tasks/{task_id}/retry"
    assert api("POST", retry, f"/tasks/{failed['id']}/retry")[1]["status"] == "pending"
    assert api("POST", retry, f"/tasks/{made['id']}/retry")[0] == 409
    assert api("POST", retry, "/tasks/no-such-task/retry")[0] == 404
    assert api("GET", "/stats", "/stats")[1]["tasks"]["cancelled"] >= 1
    api("HEAD", "/stats", "/stats")
    assert api("DELETE", "/tasks", "/tasks?status=cancelled")[1]["purged"] >= 1
    assert api("DELETE", "/tasks", "/tasks?status=pending")[0] == 400

    # An HTTP worker: register (new, again), read, heartbeat, lease, complete.
    worker = {"id": "hw", "capabilities": ["web"], "tags": ["eu"], "resources": {"cpu": 2}}
    api("POST", "/workers", "/workers", worker)
    api("POST", "/workers", "/workers", worker)
    api("POST", "/workers", "/workers", {"id": "zw"})
    api("POST", "/workers", "/workers", {"id": "hw", "slots": 3})
    api("GET", "/workers", "/workers")
    api("HEAD", "/workers", "/workers")
    for worker_id in ("hw", "zw", "no-such-worker"):
        api("GET", "/workers/{worker_id}", f"/workers/{worker_id}")
        api("HEAD", "/workers/{worker_id}", f"/workers/{worker_id}")
        api("PUT", "/workers/{worker_id}/heartbeat", f"/workers/{worker_id}/heartbeat")
    next_path = "/workers/{worker_id}/tasks/next"
    assert api("POST", next_path, "/workers/hw/tasks/next")[0] == 204
    api("POST", next_path, "/workers/no-such-worker/tasks/next")
    api("POST", next_path, "/workers/zw/tasks/next")
    api("POST", next_path, "/workers/hw/tasks/next?wait=-1")
    _, web, _ = api("POST", "/tasks", "/tasks", {"handler": "web", "requires": ["eu"]})

    def leased() -> Any:
        status, task, _ = api("POST", next_path, "/workers/hw/tasks/next?wait=5")
        return task if status == 200 else None

    task = wait_for(leased, what="a task for the HTTP worker")
    assert task["id"] == web["id"] and task["status"] == "running"
    complete = "/workers/{worker_id}/tasks/{task_id}/complete"
    outcome = {"status": "completed", "result": b64(b"ok")}
    api("POST", complete, f"/workers/hw/tasks/{web['id']}/complete", {"status": "running"})
    api("POST", complete, f"/workers/hw/tasks/{web['id']}/complete", outcome)
    api("POST", complete, f"/workers/hw/tasks/{web['id']}/complete", outcome)
    api("POST", complete, "/workers/nobody/tasks/nothing/complete", outcome)
    # Draining a worker, and resuming it.
    drain = "/workers/{worker_id}/drain"
    assert api("POST", drain, "/workers/zw/drain")[1]["draining"] is True
    assert api("DELETE", drain, "/workers/zw/drain")[1]["draining"] is False
    assert api("POST", drain, "/workers/no-such-worker/drain")[0] == 404

    # The dashboard: its files, and the start of its stream.
    for path in ("/", "/dashboard.js", "/dashboard.css"):
        assert api.text("GET", path) and not api.text("HEAD", path)
    assert api.text("GET", "/events").startswith(b"retry: ")
    assert api.text("HEAD", "/events") == b""

    # Every operation of the document was answered at least once, most in several ways.
    operations = {(method, path) for path, item in api.document["paths"].items() for method in item}
    assert {(method, path) for method, path, _ in api.checked} == operations
    statuses = {status for _, _, status in api.checked}
    assert {200, 201, 204, 400, 404, 409, 413, 414, 415} <= statuses, statuses
