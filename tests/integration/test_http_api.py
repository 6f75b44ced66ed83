"""The REST API through real gunicorn, a real broker and real workers."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from common import protocol
from common.protocol import Command
from tests.conftest import Proc, Stack, wait_for

#: A task's keys, as the README's "REST API" section lists them.
TASK_KEYS = frozenset({"id", "name", "handler", "args", "dependencies", "priority", "status",
                       "worker_id", "attempts", "result", "error", "max_retries", "timeout",
                       "requires", "resources", "created_at", "started_at", "completed_at",
                       "idempotency_key", "leases", "traceback", "waiting_for"})  # fmt: skip
#: What ``GET /tasks/{id}`` (without ``?wait``) adds to a task, as the README lists it.
DETAIL_KEYS = frozenset({"dependents", "more_dependents"})
#: A lease's keys (one run of a task), as the README lists them.
LEASE_KEYS = frozenset({"attempt", "worker_id", "started_at", "ended_at", "outcome", "error",
                        "refused", "traceback"})  # fmt: skip
#: A worker's keys, as the README lists them (host and pid are for display).
WORKER_KEYS = frozenset({"id", "kind", "status", "capabilities", "handlers", "tags", "resources",
                         "slots", "running", "last_seen", "host", "pid", "draining"})  # fmt: skip

Response = tuple[int, Any, dict[str, str]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_error(response: Response, status: int, *named: str) -> dict[str, Any]:
    """The README's promise for every error: a JSON object with a ``title`` and a
    ``description``, the description naming what was wrong."""
    code, body, headers = response
    assert code == status, response
    assert headers["content-type"].startswith("application/json"), headers
    assert isinstance(body, dict), body
    assert isinstance(body.get("title"), str) and body["title"], body
    assert isinstance(body.get("description"), str) and body["description"], body
    for word in named:
        assert word in body["description"], body
    return body


def assert_task_shape(task: dict[str, Any]) -> None:
    """Every key the README lists for a task (and, as ``GET /tasks/{id}`` shows it, its
    dependents), and for each of its leases; no others."""
    keys = TASK_KEYS | DETAIL_KEYS if "dependents" in task else TASK_KEYS
    assert set(task) == keys, set(task) ^ keys
    for lease in task["leases"]:
        assert set(lease) == LEASE_KEYS, set(lease) ^ LEASE_KEYS


@pytest.fixture
def api(stack: Stack) -> Iterator[Stack]:
    stack.start_broker()
    stack.start_api()
    yield stack


@pytest.fixture(scope="module")
def refusing_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One broker and API for the tests that only send what is refused, and so change
    nothing that another of them could see."""
    stack = Stack(tmp_path_factory.mktemp("refusing"))
    try:
        stack.start_broker()
        stack.start_api()
        yield stack
    finally:
        stack.close()


class RawWorker:
    """A ZeroMQ worker spoken by hand (docs/protocol.md), so that the test decides when it
    answers pings and which outcomes it sends."""

    def __init__(self, endpoint: str, worker_id: str, handler: str) -> None:
        self.id = worker_id
        self.handler = handler
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, command: Command, body: dict[str, Any] | None = None) -> None:
        self.socket.send_multipart(protocol.pack(command, body))

    def ready(self) -> None:
        """Register (again), claiming no run."""
        self.send(Command.READY, {"id": self.id, "slots": 1, "capabilities": [self.handler],
                                  "resources": {}, "running": [], "host": "raw",
                                  "pid": os.getpid()})  # fmt: skip

    def expect(self, command: Command, timeout: float = 30.0) -> dict[str, Any]:
        """The body of the next ``command``, answering pings (and a RESYNC) meanwhile."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(int(left * 1000) + 1):
                break
            message = protocol.unpack(self.socket.recv_multipart())
            if message.command is command:
                return message.body
            if message.command is Command.PING:
                self.send(Command.PONG)
            elif message.command is Command.RESYNC:  # declared offline while the test waited
                self.ready()
        raise AssertionError(f"worker {self.id}: no {command.name} within {timeout:g} s")

    def done(self, task_id: str, attempt: int, result: bytes) -> None:
        entry = {"task_id": task_id, "attempt": attempt, "status": "completed",
                 "result": result, "error": None}  # fmt: skip
        self.send(Command.DONE, {"results": [entry]})

    def close(self) -> None:
        self.socket.close(linger=0)


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
    assert_task_shape(task)
    [lease] = task["leases"]
    assert (lease["attempt"], lease["worker_id"], lease["outcome"]) == (1, "w1", "completed")
    assert (lease["error"], lease["refused"]) == (None, None)
    assert task["started_at"] == lease["started_at"]
    assert task["completed_at"] == lease["ended_at"]


def test_post_with_wait_answers_with_the_finished_task(api: Stack) -> None:
    api.start_worker()
    spec = {"handler": "fibonacci", "args": b64(b'{"n": 12}'), "idempotency_key": "fib-12"}
    status, task, headers = api.http("POST", "/tasks?wait=30", spec)
    assert status == 201
    assert headers["location"].endswith(f"/tasks/{task['id']}")
    assert task["status"] == "completed" and task["attempts"] == 1
    assert_task_shape(task)
    assert json.loads(base64.b64decode(task["result"])) == {"n": 12, "result": 144}
    status, again, _ = api.http("POST", "/tasks?wait=30", spec)
    assert (status, again["id"], again["status"]) == (200, task["id"], "completed")
    assert_error(api.http("POST", "/tasks?wait=-2", spec), 400, "wait")
    assert_error(api.http("POST", "/tasks?wait=31", spec), 400, "wait")


def test_list_filters_and_paginates_with_link_header(api: Stack) -> None:
    ids = []
    for i in range(5):
        handler = "echo" if i % 2 == 0 else "sleep"
        _, body, _ = api.http("POST", "/tasks", {"handler": handler, "args": b64(b"{}")})
        ids.append(body["id"])
    status, page, headers = api.http("GET", "/tasks?handler=echo&limit=2")
    assert status == 200
    assert [t["id"] for t in page] == [ids[0], ids[2]]
    for task in page:
        assert_task_shape(task)
    link = headers["link"]
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    _, page, headers = api.http("GET", match.group(1))
    assert [t["id"] for t in page] == [ids[4]]
    assert "link" not in headers
    _, pending, _ = api.http("GET", "/tasks?status=pending")
    assert len(pending) == 5


def test_workers_are_listed_in_pages_by_id_with_a_link_header(api: Stack) -> None:
    # Three HTTP workers, the last two with about 2.5 MB of capabilities each: a page holds
    # about 4 MiB, so they cannot share one.
    fat = [f"{i:05d}{'t' * 240}" for i in range(10_000)]
    for worker_id, capabilities in (("a", ["x"]), ("b", fat), ("c", fat)):
        status, _, _ = api.http("POST", "/workers", {"id": worker_id, "capabilities": capabilities})
        assert status == 201
    status, page, headers = api.http("GET", "/workers?limit=1")
    assert (status, [w["id"] for w in page]) == (200, ["a"])
    match = re.fullmatch(r'<([^>]+)>; rel="next"', headers["link"])
    assert match, headers["link"]
    _, page, headers = api.http("GET", match.group(1))
    assert [w["id"] for w in page] == ["b"]
    _, page, headers = api.http("GET", "/workers")  # the default limit, cut by bytes
    assert [w["id"] for w in page] == ["a", "b"] and "link" in headers
    _, page, headers = api.http("GET", "/workers?after=b")
    assert [w["id"] for w in page] == ["c"] and "link" not in headers
    # The client library pages for its caller.
    assert [w["id"] for w in api.client().workers()] == ["a", "b", "c"]


def test_a_trailing_slash_is_the_path_without_it(api: Stack) -> None:
    status, made, headers = api.http("POST", "/tasks/", {"handler": "echo"})
    assert status == 201
    assert headers["location"] == f"/tasks/{made['id']}"
    status, tasks, _ = api.http("GET", "/tasks/")
    assert (status, [t["id"] for t in tasks]) == (200, [made["id"]])
    status, task, _ = api.http("GET", f"/tasks/{made['id']}/")
    assert (status, task["id"]) == (200, made["id"])
    assert api.http("GET", "/workers/")[:2] == (200, [])


def test_cancel_over_http_stops_the_run_and_frees_its_slot(api: Stack) -> None:
    # Given a one-slot worker running a long sleep, and a task waiting behind it.
    api.start_worker(worker_id="w1", slots=1)
    _, running, _ = api.http(
        "POST", "/tasks", {"handler": "sleep", "args": b64(b'{"seconds": 600}')}
    )
    _, pending, _ = api.http("POST", "/tasks", {"handler": "echo"})
    wait_status(api, running["id"], "running")

    # When both are cancelled.
    status, body, _ = api.http("DELETE", f"/tasks/{pending['id']}")
    assert (status, body["status"], body["leases"]) == (200, "cancelled", [])
    status, body, _ = api.http("DELETE", f"/tasks/{running['id']}")
    assert (status, body["status"]) == (200, "cancelled")
    assert_task_shape(body)

    # Then the run stops: the only slot is free again, so a new task runs on it...
    _, after, _ = api.http("POST", "/tasks", {"handler": "echo", "args": b64(b"next")})
    done = wait_status(api, after["id"], "completed", "failed", "cancelled")
    assert (done["status"], done["worker_id"]) == ("completed", "w1")
    assert base64.b64decode(done["result"]) == b"next"
    _, worker, _ = api.http("GET", "/workers/w1")
    assert worker["running"] == []
    # ...and the run's lease says it was cancelled; the worker's own report of the stopped
    # run confirms the cancel and is not counted as a refused outcome.
    _, task, _ = api.http("GET", f"/tasks/{running['id']}")
    assert task["status"] == "cancelled"
    history = [
        (le["attempt"], le["worker_id"], le["outcome"], le["refused"]) for le in task["leases"]
    ]
    assert history == [(1, "w1", "cancelled", None)]
    assert api.http("GET", "/health")[1]["stale_outcomes"] == 0
    # A finished task cannot be cancelled again, nor an unknown one at all.
    assert_error(api.http("DELETE", f"/tasks/{running['id']}"), 409, running["id"], "cancelled")
    assert_error(api.http("DELETE", f"/tasks/{pending['id']}"), 409, pending["id"], "cancelled")
    assert_error(api.http("DELETE", f"/tasks/{done['id']}"), 409, done["id"], "completed")
    assert_error(api.http("DELETE", "/tasks/nope"), 404, "nope")


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
def test_bad_input_is_a_400_naming_the_field(refusing_api: Stack, body: bytes, field: str) -> None:
    assert_error(refusing_api.http("POST", "/tasks", raw=body), 400, field)
    assert refusing_api.http("GET", "/tasks")[1] == []


def test_a_body_that_is_not_json_by_its_type_is_a_415(api: Stack) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # curl -d without -H
    error = assert_error(api.http("POST", "/tasks", {"handler": "echo"}, headers=form), 415)
    assert "application/json" in error["description"], error
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert api.http("POST", "/tasks", {"handler": "echo"}, headers=charset)[0] == 201
    assert len(api.http("GET", "/tasks")[1]) == 1


def test_unknown_ids_and_oversized_bodies(api: Stack) -> None:
    assert_error(api.http("GET", "/tasks/does-not-exist"), 404, "does-not-exist")
    assert_error(api.http("GET", "/tasks/does-not-exist?wait=1"), 404, "does-not-exist")
    assert_error(api.http("GET", "/workers/does-not-exist"), 404, "does-not-exist")
    assert_error(api.http("PUT", "/workers/does-not-exist/heartbeat"), 404, "does-not-exist")
    assert_error(api.http("GET", "/no/such/path"), 404)
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
        headers = {k.lower(): v for k, v in response.getheaders()}
        assert_error((response.status, json.loads(response.read()), headers), 413)
    finally:
        connection.close()
    assert_error(api.http("GET", "/tasks?limit=0"), 400, "limit")
    assert_error(api.http("GET", "/tasks?limit=1001"), 400, "limit")
    assert_error(api.http("GET", "/tasks?after=x"), 400, "after")
    assert_error(api.http("GET", "/tasks?status=sleeping"), 400, "status")
    assert_error(api.http("POST", "/workers", {"id": ""}), 400, "id")
    assert_error(api.http("POST", "/tasks/batch", {"tasks": []}), 400, "tasks")


def test_http_worker_pulls_runs_and_completes(api: Stack) -> None:
    status, worker, _ = api.http(
        "POST", "/workers", {"id": "py-http", "capabilities": ["resize"], "resources": {"cpu": 2}}
    )
    assert (status, worker["kind"], worker["status"]) == (201, "http", "online")
    assert set(worker) == WORKER_KEYS, set(worker) ^ WORKER_KEYS
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
    assert_task_shape(task)
    assert base64.b64decode(task["args"]) == b"img"

    status, worker, _ = api.http("PUT", "/workers/py-http/heartbeat")
    assert (status, set(worker)) == (200, WORKER_KEYS)
    done = {"status": "completed", "result": b64(b"small img")}
    path = f"/workers/py-http/tasks/{task['id']}/complete"
    status, final, _ = api.http("POST", path, done)
    assert (status, final["status"]) == (200, "completed")
    assert base64.b64decode(final["result"]) == b"small img"
    assert_task_shape(final)
    assert_error(api.http("POST", path, done), 409, task["id"])
    assert_error(api.http("POST", "/workers/ghost/tasks/x/complete", done), 404, "ghost")
    assert_error(api.http("POST", "/workers/py-http/tasks/nope/complete", done), 404, "nope")
    assert_error(api.http("POST", path, {"status": "maybe"}), 400, "status")
    assert_error(api.http("POST", path, {"status": "completed", "result": 7}), 400, "result")
    assert_error(api.http("POST", "/workers/py-http/tasks/next?wait=31"), 400, "wait")


def test_an_http_worker_reports_where_its_run_failed(api: Stack) -> None:
    api.http("POST", "/workers", {"id": "hw", "capabilities": ["resize"]})
    _, submitted, _ = api.http("POST", "/tasks", {"handler": "resize"})
    status, task, _ = api.http("POST", "/workers/hw/tasks/next")
    assert (status, task["id"]) == (200, submitted["id"])
    path = f"/workers/hw/tasks/{task['id']}/complete"
    failed = {"status": "failed", "error": "OSError: disk full"}
    too_long = {**failed, "traceback": "x" * 32769}
    assert_error(api.http("POST", path, too_long), 400, "traceback")
    assert_error(api.http("POST", path, {**failed, "traceback": 7}), 400, "traceback")
    trace = 'Traceback (most recent call last):\n  File "resize.js", line 3\nOSError: disk full'
    status, final, _ = api.http("POST", path, {**failed, "traceback": trace})
    assert (status, final["status"], final["traceback"]) == (200, "failed", trace)
    assert final["leases"][0]["traceback"] == trace
    assert api.http("GET", f"/tasks/{task['id']}")[1]["traceback"] == trace


def test_workers_listing_shows_zmq_and_http_workers(api: Stack) -> None:
    api.start_worker("--capabilities", "gpu", worker_id="zw", slots=3)
    api.http("POST", "/workers", {"id": "hw", "capabilities": ["x"], "tags": ["fast"]})
    api.wait_workers("zw", "hw")
    _, workers, _ = api.http("GET", "/workers")
    by_id = {w["id"]: w for w in workers}
    assert by_id["zw"]["kind"] == "zmq"
    assert by_id["zw"]["slots"] == 3
    assert {"echo", "sleep", "fibonacci", "prime_factorization", "gpu"} <= set(
        by_id["zw"]["capabilities"]
    )
    # Handlers and tags are listed apart; a task is matched against both (capabilities).
    assert by_id["zw"]["handlers"] == ["echo", "fibonacci", "prime_factorization", "sleep"]
    assert by_id["zw"]["tags"] == ["gpu"]
    assert by_id["hw"]["kind"] == "http"
    assert (by_id["hw"]["handlers"], by_id["hw"]["tags"]) == (["x"], ["fast"])
    _, submitted, _ = api.http("POST", "/tasks", {"handler": "x", "requires": ["fast"]})
    assert api.http("POST", "/workers/hw/tasks/next")[1]["id"] == submitted["id"]
    assert by_id["hw"]["slots"] is None  # an HTTP worker takes one task per poll
    for worker in workers:
        assert set(worker) == WORKER_KEYS, set(worker) ^ WORKER_KEYS
    _, one, _ = api.http("GET", "/workers/zw")
    assert set(one) == WORKER_KEYS, set(one) ^ WORKER_KEYS
    assert (one["status"], one["running"], one["resources"]) == ("online", [], {})
    assert one["host"] and isinstance(one["pid"], int) and one["pid"] > 0


def test_workers_outlive_a_broker_restart_and_an_http_worker_carries_on(api: Stack) -> None:
    # Given a ZeroMQ worker and an HTTP worker that holds a lease.
    zmq_worker = api.start_worker("--capabilities", "gpu", worker_id="zw", slots=3)
    hw = {"id": "hw", "capabilities": ["resize"], "resources": {"cpu": 2}, "tags": ["big"]}
    status, _, _ = api.http("POST", "/workers", hw)
    assert status == 201
    api.wait_workers("zw", "hw")
    _, submitted, _ = api.http("POST", "/tasks", {"handler": "resize", "resources": {"cpu": 2}})
    status, task, _ = api.http("POST", "/workers/hw/tasks/next?wait=10")
    assert (status, task["id"]) == (200, submitted["id"])
    _, before, _ = api.http("GET", "/workers")

    # When the broker is killed and started again, with the ZeroMQ worker gone meanwhile.
    zmq_worker.kill9()
    assert api.broker is not None
    api.broker.kill9()
    api.start_broker()

    # Then both are listed as they registered, offline until they speak.
    status, after, _ = api.http("GET", "/workers")
    assert status == 200
    assert {w["id"]: w["status"] for w in after} == {"zw": "offline", "hw": "offline"}
    kept = ("kind", "capabilities", "handlers", "tags", "resources", "slots", "host", "pid")
    assert [{k: w[k] for k in kept} for w in after] == [{k: w[k] for k in kept} for w in before]
    for worker in after:
        assert set(worker) == WORKER_KEYS, set(worker) ^ WORKER_KEYS
    # And the HTTP worker carries on without registering again: its heartbeat brings it
    # back online holding its lease, which it completes.
    status, worker, _ = api.http("PUT", "/workers/hw/heartbeat")
    assert (status, worker["status"], worker["running"]) == (200, "online", [task["id"]])
    _, second, _ = api.http("POST", "/tasks", {"handler": "resize", "resources": {"cpu": 2}})
    assert api.http("POST", "/workers/hw/tasks/next")[0] == 204  # its lease holds the cpu
    done = {"status": "completed", "result": b64(b"after the restart")}
    status, final, _ = api.http("POST", f"/workers/hw/tasks/{task['id']}/complete", done)
    assert (status, final["status"], final["attempts"]) == (200, "completed", 1)
    assert [lease["outcome"] for lease in final["leases"]] == ["completed"]
    status, task, _ = api.http("POST", "/workers/hw/tasks/next")
    assert (status, task["id"]) == (200, second["id"])


def test_head_answers_wherever_get_does(api: Stack) -> None:
    _, task, _ = api.http("POST", "/tasks", {"handler": "echo"})
    api.http("POST", "/workers", {"id": "hw"})
    for path in ("/health", "/tasks", f"/tasks/{task['id']}", "/workers", "/workers/hw"):
        status, body, headers = api.http("HEAD", path)
        assert (status, body) == (200, None), path
        assert headers["content-type"] == "application/json", path
        assert int(headers["content-length"]) > 0, path  # the length GET's body would have
    status, body, _ = api.http("HEAD", "/tasks/nope")
    assert (status, body) == (404, None)


def resource_amounts(records: list[dict[str, Any]]) -> list[Any]:
    return [amount for record in records for amount in record["resources"].values()]


def test_every_resource_amount_is_shown_the_same_way(api: Stack) -> None:
    # Given a ZeroMQ worker and an HTTP worker whose resources were given as integers,
    api.start_worker("--cpu", "8", "--memory", "512", worker_id="zw")
    body = {"id": "hw", "capabilities": ["x"], "resources": {"cpu": 2}}
    _, registered, _ = api.http("POST", "/workers", body)
    api.wait_workers("zw", "hw")
    # and a task asking for an integer amount, leased to the HTTP worker.
    api.http("POST", "/tasks", {"handler": "x", "resources": {"cpu": 1}})
    _, leased, _ = api.http("POST", "/workers/hw/tasks/next")

    # Then every amount, wherever it shows, is a number with a fraction (8.0, not 8).
    _, workers, _ = api.http("GET", "/workers")
    _, tasks, _ = api.http("GET", "/tasks")
    shown = [registered, leased, *workers, *tasks, api.http("GET", "/workers/zw")[1]]
    amounts = resource_amounts(shown)
    assert sorted(amounts) == [1.0, 1.0, 2.0, 2.0, 8.0, 8.0, 512.0, 512.0], shown
    assert {type(amount) for amount in amounts} == {float}, shown

    # And so after a restart, the tasks read back from the store.
    assert api.broker is not None
    api.broker.stop()
    api.start_broker()
    _, tasks, _ = api.http("GET", "/tasks")
    assert [type(a) for a in resource_amounts(tasks)] == [float], tasks


def test_a_broker_that_does_not_answer_is_a_503(stack: Stack) -> None:
    # Given the API in front of a broker, with a short broker timeout.
    stack.start_broker()
    stack.start_api("--request-timeout", "1")
    status, body, _ = stack.http("GET", "/health")
    assert (status, body["status"], body["stale_outcomes"]) == (200, "ok", 0)

    # When the broker dies.
    assert stack.broker is not None
    stack.broker.kill9()

    # Then health and every call that needs the broker answer 503 with a JSON error.
    assert assert_error(stack.http("GET", "/health"), 503)["status"] == "unavailable"
    assert_error(stack.http("GET", "/tasks/some-id"), 503)
    assert_error(stack.http("POST", "/tasks", {"handler": "echo"}), 503)
    assert_error(stack.http("GET", "/workers"), 503)


@pytest.fixture
def freeze() -> Iterator[list[Proc]]:
    """Processes a test froze with SIGSTOP (by pid); each is sent SIGCONT at teardown, always,
    so that a failing test leaves nothing stopped."""
    frozen: list[Proc] = []
    yield frozen
    for proc in frozen:
        with contextlib.suppress(ProcessLookupError):  # it died meanwhile
            os.kill(proc.pid, signal.SIGCONT)


def test_a_503_may_hide_a_submit_that_a_retry_with_its_key_finds(
    stack: Stack, freeze: list[Proc]
) -> None:
    # Given the API in front of a broker, with a short broker timeout and one process, whose
    # pooled client the health check connected (requests one at a time reuse it): a client
    # connecting to a frozen broker would wait for its handshake, send nothing, and answer
    # a 503 that says so.
    broker = stack.start_broker()
    stack.start_api("--request-timeout", "1")
    one = {"handler": "echo", "idempotency_key": "frozen-one"}
    batch = {"tasks": [{"handler": "echo", "idempotency_key": f"frozen-{i}"} for i in range(3)]}

    # When the broker is frozen while a submit and a batch are sent.
    freeze.append(broker)
    os.kill(broker.pid, signal.SIGSTOP)
    for path, body in (("/tasks", one), ("/tasks/batch", batch)):
        # Then each is a 503 saying it may still take effect, and how to retry.
        error = assert_error(stack.http("POST", path, body), 503, "did not answer")
        assert "the request may still take effect" in error["description"], error
        assert "same idempotency_key" in error["description"], error

    # When the broker resumes.
    os.kill(broker.pid, signal.SIGCONT)

    # Then it carries both out: the tasks exist, though the API answered 503...
    def made() -> dict[str, str] | None:
        _, tasks, _ = stack.http("GET", "/tasks")
        keys = {t["idempotency_key"]: t["id"] for t in tasks}
        return keys if len(keys) == 4 else None

    ids = wait_for(made, what="the submits the broker received while frozen")
    assert set(ids) == {"frozen-one", "frozen-0", "frozen-1", "frozen-2"}
    # ...and a retry with the same keys returns them rather than making others.
    status, again, _ = stack.http("POST", "/tasks", one)
    assert (status, again["id"]) == (200, ids["frozen-one"])
    status, again, _ = stack.http("POST", "/tasks/batch", batch)
    assert (status, again["ids"]) == (201, [ids[f"frozen-{i}"] for i in range(3)])
    assert len(stack.http("GET", "/tasks")[1]) == 4


def test_idempotency_key_makes_one_task_however_often_it_is_sent(api: Stack) -> None:
    spec = {"handler": "echo", "args": b64(b"once"), "idempotency_key": "invoice-42"}
    first = api.http("POST", "/tasks", spec)
    again = api.http("POST", "/tasks", spec)
    assert (first[0], again[0]) == (201, 200)
    assert first[1]["id"] == again[1]["id"]
    same = {"handler": "echo", "args": b"once", "idempotency_key": "invoice-42"}
    entries = api.client().submit_entries([same])
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
    assert_error(api.http("POST", "/tasks/batch", {"tasks": bad}), 400, "tasks[1].priority")


def test_batch_submit_with_wait_answers_with_the_results(api: Stack) -> None:
    api.start_worker(slots=4)
    tasks = [{"handler": "echo", "args": b64(f"item {i}".encode())} for i in range(20)]
    status, body, _ = api.http("POST", "/tasks/batch?wait=30", {"tasks": tasks})
    assert status == 201
    assert [t["id"] for t in body["tasks"]] == body["ids"]
    assert [t["status"] for t in body["tasks"]] == ["completed"] * 20
    assert [base64.b64decode(t["result"]) for t in body["tasks"]] == [
        f"item {i}".encode() for i in range(20)
    ]
    for task in body["tasks"]:
        assert_task_shape(task)
    assert_error(api.http("POST", "/tasks/batch?wait=31", {"tasks": tasks}), 400, "wait")


def test_a_late_outcome_is_refused_and_counted_in_health(api: Stack) -> None:
    # Given a worker that registered and was handed a task.
    raw = RawWorker(api.endpoint, "raw", "resize")
    try:
        raw.ready()
        raw.expect(Command.WELCOME)
        api.wait_workers("raw")
        _, submitted, _ = api.http("POST", "/tasks", {"handler": "resize", "args": b64(b"img")})
        [first] = raw.expect(Command.DISPATCH)["tasks"]
        assert (first["task_id"], first["attempt"]) == (submitted["id"], 1)

        # When it goes silent until the broker declares it offline and takes the run back,
        wait_for(
            lambda: api.http("GET", "/workers/raw")[1]["status"] == "offline", what="raw offline"
        )
        lost = wait_status(api, submitted["id"], "pending")
        assert [(le["attempt"], le["outcome"]) for le in lost["leases"]] == [(1, "lost")]
        # then registers again and is handed the task's next run,
        raw.ready()
        raw.expect(Command.WELCOME)
        [second] = raw.expect(Command.DISPATCH)["tasks"]
        assert (second["task_id"], second["attempt"]) == (submitted["id"], 2)
        # and reports the first run after all, then the second.
        raw.done(submitted["id"], 1, b"late")
        assert raw.expect(Command.ACK)["results"] == [[submitted["id"], 1]]
        raw.done(submitted["id"], 2, b"on time")
        assert raw.expect(Command.ACK)["results"] == [[submitted["id"], 2]]
    finally:
        raw.close()

    # Then the late outcome was acknowledged but refused: /health counts it, the first lease
    # notes it, and the task's outcome is the second run's.
    status, health, _ = api.http("GET", "/health")
    assert (status, health["status"], health["stale_outcomes"]) == (200, "ok", 1)
    task = wait_status(api, submitted["id"], "completed")
    history = [
        (le["attempt"], le["worker_id"], le["outcome"], le["refused"]) for le in task["leases"]
    ]
    assert history == [(1, "raw", "lost", "completed"), (2, "raw", "completed", None)]
    assert (task["attempts"], base64.b64decode(task["result"])) == (2, b"on time")
