"""Why a task waits, over HTTP: what it waits for, what no worker could ever run, and the
submits that would only wait (refused on request) or that reuse a key for another task."""

from __future__ import annotations

import base64

from tests.conftest import Stack, wait_for


def test_a_task_no_worker_serves_says_so_and_health_counts_it(stack: Stack) -> None:
    stack.start_broker()
    stack.start_api()
    status, created, _ = stack.http("POST", "/tasks", {"handler": "echo", "args": "aGk="})
    assert status == 201
    task = stack.http("GET", f"/tasks/{created['id']}")[1]
    assert task["waiting_for"] == {
        "reason": "no worker", "detail": "no online worker serves handler 'echo'",
    }  # fmt: skip
    assert stack.http("GET", "/health")[1]["unservable"] == 1

    stack.start_worker(worker_id="w1")
    stack.wait_workers("w1")
    done = stack.http("GET", f"/tasks/{created['id']}?wait=30")[1]
    assert (done["status"], done["waiting_for"]) == ("completed", None)
    assert stack.http("GET", "/health")[1]["unservable"] == 0


def test_a_submit_asking_to_be_refused_when_nothing_could_run_it(stack: Stack) -> None:
    stack.start_broker()
    stack.start_api()
    stack.start_worker(worker_id="w1")
    stack.wait_workers("w1")
    status, error, _ = stack.http(
        "POST", "/tasks?refuse_unservable=true", {"handler": "echo", "requires": ["gpu"]}
    )
    assert status == 409
    assert error["description"] == "refused: no online worker serving 'echo' has tag 'gpu'"
    status, created, _ = stack.http("POST", "/tasks?refuse_unservable=true", {"handler": "echo"})
    assert status == 201
    body = {"tasks": [{"handler": "echo"}, {"handler": "nobody"}]}
    status, error, _ = stack.http("POST", "/tasks/batch?refuse_unservable=1", body)
    assert (status, error["description"]) == (
        409, "tasks[1].refused: no online worker serves handler 'nobody'",
    )  # fmt: skip
    tasks = stack.http("GET", "/tasks")[1]
    assert [t["id"] for t in tasks] == [created["id"]]


def test_an_idempotency_key_reused_for_another_task_is_a_409(stack: Stack) -> None:
    stack.start_broker()
    stack.start_api()
    body = {"handler": "echo", "args": base64.b64encode(b"one").decode(), "idempotency_key": "k"}
    status, first, _ = stack.http("POST", "/tasks", body)
    assert status == 201
    status, again, _ = stack.http("POST", "/tasks", body)
    assert (status, again["id"]) == (200, first["id"])
    other = {**body, "args": base64.b64encode(b"two").decode()}
    status, error, _ = stack.http("POST", "/tasks", other)
    assert status == 409
    assert error["description"] == (
        f"idempotency_key 'k' names task {first['id']}, submitted with another args"
    )
    client = stack.client()
    wait_for(lambda: len(client.list_tasks()[0]) == 1, what="one task")
