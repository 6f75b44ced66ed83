"""Doing the bad thing: SIGKILL a worker mid-task, SIGKILL the broker with work in flight."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from common.errors import Unavailable
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.chaos


def test_worker_killed_mid_task_task_completes_elsewhere(stack: Stack) -> None:
    # A longer ping interval than the other tests, so that "offline within twice the
    # liveness window" leaves room for a busy machine: window 1.5 s, bound 3 s.
    stack.start_broker("--ping-interval", "0.5", "--liveness", "3")
    victim = stack.start_worker(worker_id="victim", slots=1)
    stack.wait_workers("victim")
    client = stack.client()
    task_id = client.submit("sleep", b'{"seconds": 1.5}')
    wait_for(lambda: client.get(task_id)["worker_id"] == "victim", what="task on victim")
    stack.start_worker(worker_id="survivor", slots=1)
    stack.wait_workers("survivor")

    victim.kill9()
    killed_at = time.monotonic()
    wait_for(lambda: client.worker("victim")["status"] == "offline", what="victim offline")
    assert time.monotonic() - killed_at <= 2 * 1.5

    task = client.wait(task_id, timeout=30)
    assert task["status"] == "completed"
    assert task["worker_id"] == "survivor"
    assert task["attempts"] == 2
    history = [(le["attempt"], le["worker_id"], le["outcome"]) for le in task["leases"]]
    assert history == [(1, "victim", "lost"), (2, "survivor", "completed")]
    assert client.worker("victim")["running"] == []


def test_broker_killed_keeps_results_and_pending_tasks_in_priority_order(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker(worker_id="first", slots=2)
    client = stack.client()
    done = {client.submit("echo", f"done {i}".encode()): f"done {i}".encode() for i in range(20)}
    for task_id, payload in done.items():
        assert client.result(task_id, timeout=30) == payload
    stack.procs[-1].stop()
    wait_for(lambda: client.worker("first")["status"] == "offline", what="worker gone")

    rng = random.Random(7)
    priorities = [rng.randint(-5, 5) for _ in range(30)]
    pending = [client.submit("echo", b"p", priority=p) for p in priorities]
    assert stack.broker is not None
    stack.broker.kill9()

    stack.start_broker()
    client = stack.client()
    for task_id, payload in done.items():
        task = client.get(task_id)
        assert (task["status"], task["result"]) == ("completed", payload)
    assert all(client.get(task_id)["status"] == "pending" for task_id in pending)

    # One slot: tasks start one after another, so start times give the lease order.
    stack.start_worker(worker_id="second", slots=1)
    for task_id in pending:
        assert client.result(task_id, timeout=30) == b"p"
    started = sorted(pending, key=lambda i: client.get(i)["started_at"])
    expected = sorted(pending, key=lambda i: (-priorities[pending.index(i)], pending.index(i)))
    assert started == expected


def test_broker_killed_while_workers_run_tasks_loses_nothing(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker(worker_id="a", slots=2)
    stack.start_worker(worker_id="b", slots=2)
    stack.wait_workers("a", "b")
    client = stack.client()
    ids = [client.submit("sleep", b'{"seconds": 0.4}') for _ in range(12)]
    wait_for(lambda: client.list_tasks(status="running")[0], what="some running")
    assert stack.broker is not None
    stack.broker.signal(signal.SIGKILL)
    stack.broker.popen.wait(timeout=10)
    stack.start_broker()
    client = stack.client()
    for task_id in ids:
        assert client.wait(task_id, timeout=60)["status"] == "completed"


def test_broker_restart_leaves_a_running_task_with_its_worker(stack: Stack, tmp_path: Path) -> None:
    stack.start_broker()
    stack.start_worker("--handlers", "chaos_handlers", worker_id="w", slots=1)
    stack.wait_workers("w")
    note = tmp_path / "runs"
    spec = json.dumps({"seconds": 3.0, "note": str(note)}).encode()
    task_id = stack.client().submit("noted_sleep", spec)
    wait_for(note.exists, what="the run began")
    assert stack.broker is not None
    stack.broker.kill9()
    stack.start_broker()
    task = stack.client().wait(task_id, timeout=60)
    assert task["status"] == "completed"
    assert [(le["attempt"], le["worker_id"], le["outcome"]) for le in task["leases"]] == [
        (1, "w", "completed")
    ]
    assert len(note.read_text().split()) == 1  # it ran once: the lease stayed with "w"


def test_an_admin_drain_outlasts_a_broker_killed_until_resumed(stack: Stack) -> None:
    # Given a worker an admin drained (the answer means the drain is stored), and a task
    # it may not take.
    stack.start_broker()
    worker = stack.start_worker(worker_id="w1", slots=2)
    stack.wait_workers("w1")
    client = stack.client()
    assert client.drain_worker("w1")["draining"] is True
    held = client.submit("echo", b"held")

    # When the broker is killed and started again on its store
    assert stack.broker is not None
    stack.broker.kill9()
    stack.start_broker()
    client = stack.client()

    # Then the same worker process reconnects on its own, drained still, and takes nothing:
    # its READY's turn ran a scheduling round before the reads below (asked afterwards).
    wait_for(lambda: client.worker("w1")["status"] == "online", what="w1 back online")
    record = client.worker("w1")
    assert (record["pid"], record["draining"]) == (worker.pid, True)
    later = client.submit("echo", b"later")
    assert [client.get(i)["status"] for i in (held, later)] == ["pending", "pending"]
    assert client.stats()["workers"]["draining"] == 1

    # Once resumed, it runs both.
    assert client.drain_worker("w1", on=False)["draining"] is False
    assert client.result(held, timeout=30) == b"held"
    assert client.result(later, timeout=30) == b"later"
    assert client.get(held)["worker_id"] == "w1"


def test_a_submit_that_timed_out_and_was_retried_makes_one_task(stack: Stack) -> None:
    stack.start_broker()
    client = stack.client(timeout=0.5)
    client.health()  # connected: the submit below leaves the client, then gets no answer
    spec = {"handler": "echo", "args": b"once", "idempotency_key": "order-7"}
    assert stack.broker is not None
    stack.broker.signal(signal.SIGSTOP)  # the request goes out, no answer comes back
    try:
        with pytest.raises(Unavailable):
            client.submit_entries([spec])
    finally:
        stack.broker.signal(signal.SIGCONT)
    entries = wait_for(lambda: client.submit_entries([spec]), what="the retry answered")
    assert entries[0]["created"] is False  # the first submit did arrive, and made the task
    tasks, _ = client.list_tasks()
    assert [t["id"] for t in tasks] == [entries[0]["id"]]


def test_results_answered_in_one_round_trip_survive_kill9(stack: Stack) -> None:
    # A submit that waits is written once, finished: its answer must still mean durable.
    stack.start_broker()
    stack.start_worker(slots=4)
    client = stack.client()
    answered = {}
    for i in range(40):
        [task] = client.submit_and_wait([{"handler": "echo", "args": b"r%d" % i}], wait=30)
        assert task["status"] == "completed"
        answered[task["id"]] = task["result"]
    assert stack.broker is not None
    stack.broker.kill9()
    stack.start_broker()
    client = stack.client()
    for task_id, result in answered.items():
        task = client.get(task_id)
        assert (task["status"], task["result"], task["attempts"]) == ("completed", result, 1)


def test_a_submit_is_durable_the_moment_it_is_answered(stack: Stack) -> None:
    # Batches big enough that writing one takes a while: had the answer left before the
    # commit, the kill sent the moment it arrives would land mid-write and lose the batch.
    stack.start_broker()
    client = stack.client(timeout=60)
    answered: list[str] = []
    for _ in range(3):
        specs = [{"handler": "nobody", "args": os.urandom(2048)} for _ in range(10_000)]
        answered += client.submit_many(specs, timeout=60)
        assert stack.broker is not None
        stack.broker.kill9()
        stack.start_broker()
        client = stack.client(timeout=60)
        assert client.health()["tasks"]["pending"] == len(answered)
    assert client.get(answered[0])["status"] == "pending"
    assert client.get(answered[-1])["status"] == "pending"


def test_worker_killed_in_a_cluster_whose_pings_lengthened(stack: Stack) -> None:
    # Given a broker that pings 4 times a second in all: with 3 workers online each is
    # pinged every 0.75 s (not the 0.2 s of --ping-interval), offline after 2.25 s silent.
    stack.start_broker("--ping-interval", "0.2", "--liveness", "3", "--ping-rate", "4")
    steady = stack.start_worker(worker_id="steady", slots=1)
    stack.wait_workers("steady")  # welcomed alone: told 0.25 s, then longer by each PING
    victim = stack.start_worker("--capabilities", "doomed", worker_id="victim", slots=1)
    stack.wait_workers("victim")
    stack.start_worker("--capabilities", "doomed", worker_id="survivor", slots=1)
    stack.wait_workers("survivor")
    client = stack.client()
    task_id = client.submit("sleep", b'{"seconds": 1.5}', requires=["doomed"])
    wait_for(lambda: client.get(task_id)["worker_id"] == "victim", what="task on victim")

    # When the victim is killed
    victim.kill9()
    killed_at = time.monotonic()

    # Then it is offline within twice its window, and its task runs on the survivor.
    wait_for(lambda: client.worker("victim")["status"] == "offline", what="victim offline")
    assert time.monotonic() - killed_at <= 2 * 2.25 + 1.0
    task = client.wait(task_id, timeout=30)
    history = [(le["attempt"], le["worker_id"], le["outcome"]) for le in task["leases"]]
    assert history == [(1, "victim", "lost"), (2, "survivor", "completed")]
    # and the worker that was welcomed with a short interval followed the longer one: it
    # never took the broker for gone.
    assert client.worker("steady")["status"] == "online"
    assert "reconnecting" not in steady.output()
