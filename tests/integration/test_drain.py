"""Stopping workers one after another while a task runs: nothing is passed from one
stopping worker to the next, and what outlasts a worker's grace runs once elsewhere."""

from __future__ import annotations

import signal

from tests.conftest import Stack, wait_for


def test_a_stopping_worker_finishes_its_task_and_is_sent_nothing_new(stack: Stack) -> None:
    stack.start_broker()
    first = stack.start_worker("--drain-grace", "60", worker_id="first", slots=2)
    stack.wait_workers("first")
    client = stack.client()
    running = client.submit("sleep", b'{"seconds": 2}')
    wait_for(lambda: client.get(running)["status"] == "running", what="the task running")
    # when the worker running it is stopped, and a second worker stopped after it
    first.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: client.worker("first")["draining"], what="first draining")
    second = stack.start_worker("--drain-grace", "60", worker_id="second", slots=1)
    stack.wait_workers("second")
    waiting = client.submit("echo", b"after")
    assert client.result(waiting, timeout=30) == b"after"
    # nothing new went to the stopping one, though it had a free slot
    leases = client.get(waiting)["leases"]
    assert [(le["worker_id"], le["outcome"]) for le in leases] == [("second", "completed")]
    second.popen.send_signal(signal.SIGTERM)
    # then the first one's task completes where it started, once
    task = client.wait(running, timeout=30)
    assert (task["status"], task["attempts"], task["worker_id"]) == ("completed", 1, "first")
    assert [lease["outcome"] for lease in task["leases"]] == ["completed"]
    assert first.popen.wait(30) == 0 and second.popen.wait(30) == 0
    wait_for(lambda: client.worker("first")["status"] == "offline", what="first gone")


def test_what_outlasts_the_grace_runs_once_on_a_worker_that_stays(stack: Stack) -> None:
    stack.start_broker()
    brief = stack.start_worker("--drain-grace", "0.5", worker_id="brief", slots=1)
    stack.wait_workers("brief")
    client = stack.client()
    task_id = client.submit("sleep", b'{"seconds": 3}')
    wait_for(lambda: client.get(task_id)["status"] == "running", what="the task running")
    brief.popen.send_signal(signal.SIGTERM)
    assert brief.popen.wait(30) == 0
    stack.start_worker(worker_id="stays", slots=1)
    task = client.wait(task_id, timeout=30)
    assert (task["status"], task["worker_id"]) == ("completed", "stays")
    assert [(le["worker_id"], le["outcome"]) for le in task["leases"]] == [
        ("brief", "released"),
        ("stays", "completed"),
    ]
