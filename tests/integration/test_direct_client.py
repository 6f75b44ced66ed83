"""The direct ZeroMQ client against a real broker and real zmq-worker processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from common import protocol
from common.client import Client, TaskFailed, TaskTimeout
from common.errors import Conflict, InvalidInput, NotFound, Unavailable
from tests.conftest import Stack, free_port, raw_request, wait_for


def test_submit_many_and_wait_for_results(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker(worker_id="w1")
    stack.start_worker(worker_id="w2")
    stack.wait_workers("w1", "w2")  # both registered, or the first may run everything
    client = stack.client()
    payloads = [f"payload {i}".encode() for i in range(200)]
    ids = client.submit_many([{"handler": "echo", "args": p} for p in payloads])
    assert len(set(ids)) == 200
    for task_id, payload in zip(ids, payloads, strict=True):
        assert client.result(task_id, timeout=30) == payload
    workers_used = {client.get(i)["worker_id"] for i in ids}
    assert workers_used == {"w1", "w2"}


def test_builtin_handlers_through_the_broker(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker()
    client = stack.client()
    fib = client.submit("fibonacci", b'{"n": 10}')
    primes = client.submit("prime_factorization", b'{"n": 360}')
    bad = client.submit("fibonacci", b'{"n": "ten"}')
    assert json.loads(client.result(fib, timeout=30)) == {"n": 10, "result": 55}
    assert json.loads(client.result(primes, timeout=30)) == {
        "n": 360,
        "factors": [2, 2, 2, 3, 3, 5],
    }
    with pytest.raises(TaskFailed) as failed:
        client.result(bad, timeout=30)
    assert failed.value.task["status"] == "failed"
    assert "n" in failed.value.task["error"]


def test_retries_then_success_and_exhausted_retries(stack: Stack, tmp_path: Path) -> None:
    stack.start_broker()
    stack.start_worker("--handlers", "flaky_handlers")
    client = stack.client()
    counter = tmp_path / "runs"
    flaky = client.submit(
        "fail_times", json.dumps({"path": str(counter), "fail": 2}).encode(), max_retries=2
    )
    doomed = client.submit("always_fail", max_retries=1)
    assert json.loads(client.result(flaky, timeout=30)) == {"runs": 3}
    assert client.get(flaky)["attempts"] == 3
    task = client.wait(doomed, timeout=30)
    assert task["status"] == "failed"
    assert task["attempts"] == 2
    assert "boom" in task["error"]


def test_a_failed_run_keeps_where_its_handler_raised(stack: Stack) -> None:
    # Given a thread-pool and a process-pool worker that load a handler that raises.
    stack.start_broker()
    for pool in ("thread", "process"):
        stack.start_worker("--handlers", "flaky_handlers", "--pool", pool,
                           "--capabilities", pool)  # fmt: skip
    client = stack.client()
    for pool in ("thread", "process"):
        task_id = client.submit("always_fail", requires=[pool], max_retries=1)
        task = client.wait(task_id, timeout=30)
        # Then the task and each of its failed leases show the handler's traceback.
        assert (task["status"], task["error"]) == ("failed", "RuntimeError: boom"), pool
        traceback = task["traceback"]
        assert traceback.startswith("Traceback (most recent call last):"), traceback
        assert 'flaky_handlers.py", line' in traceback and "in always_fail" in traceback
        assert traceback.rstrip().endswith("RuntimeError: boom")
        assert [lease["traceback"] for lease in task["leases"]] == [traceback] * 2
        # A task that failed another way (a dependency) has none.
        [child] = client.submit_and_wait([{"handler": "echo", "dependencies": [task_id]}], 5)
        assert (child["status"], child["traceback"]) == ("failed", None)


def test_timeout_stops_the_run_and_fails_the_task(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker(slots=1)
    client = stack.client()
    slow = client.submit("sleep", b'{"seconds": 30}', timeout=0.5)
    task = client.wait(slow, timeout=30)
    assert task["status"] == "failed"
    assert "timed out" in task["error"]
    # The slot is free again: another task runs on the one-slot worker.
    quick = client.submit("echo", b"after")
    assert client.result(quick, timeout=30) == b"after"


def test_cancel_pending_and_running(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker(slots=1)
    client = stack.client()
    running = client.submit("sleep", b'{"seconds": 60}')
    pending = client.submit("echo", b"never")
    wait_for(lambda: client.get(running)["status"] == "running", what="sleep running")
    assert client.cancel(pending)["status"] == "cancelled"
    assert client.cancel(running)["status"] == "cancelled"
    # The sleep stops early and frees the only slot.
    after = client.submit("echo", b"next")
    assert client.result(after, timeout=30) == b"next"
    assert client.get(pending)["status"] == "cancelled"
    assert client.get(pending)["started_at"] is None


def test_dependencies_run_in_order_and_failures_propagate(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker("--handlers", "flaky_handlers", slots=4)
    client = stack.client()
    first = client.submit("sleep", b'{"seconds": 0.3}')
    second = client.submit("echo", b"2", dependencies=[first])
    broken = client.submit("always_fail")
    orphan = client.submit("echo", b"x", dependencies=[second, broken])
    grandchild = client.submit("echo", b"y", dependencies=[orphan])
    assert client.result(second, timeout=30) == b"2"
    assert client.get(second)["started_at"] >= client.get(first)["completed_at"]
    assert client.wait(grandchild, timeout=30)["status"] == "failed"
    assert client.get(orphan)["error"] == f"dependency {broken} failed"
    assert client.get(orphan)["started_at"] is None
    # Further down the chain, the error names the task whose failure started it.
    assert client.get(grandchild)["error"] == (
        f"dependency {orphan} failed (the first to end: task {broken} failed)"
    )
    with pytest.raises(InvalidInput, match="unknown task"):
        client.submit("echo", dependencies=["no-such-task"])


def test_requires_tags_route_tasks_to_matching_workers(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker(worker_id="plain")
    stack.start_worker("--capabilities", "gpu", worker_id="gpu-box")
    stack.wait_workers("plain", "gpu-box")
    client = stack.client()
    ids = [client.submit("echo", b"g", requires=["gpu"]) for _ in range(10)]
    for task_id in ids:
        client.result(task_id, timeout=30)
        assert client.get(task_id)["worker_id"] == "gpu-box"
    unmatched = client.submit("echo", requires=["tpu"])
    with pytest.raises(TaskTimeout) as waited:
        client.wait(unmatched, timeout=0.5)
    assert waited.value.tasks[0]["status"] == "pending"


def test_errors_unknown_ids_and_unreachable_broker(stack: Stack) -> None:
    stack.start_broker()
    client = stack.client()
    with pytest.raises(NotFound):
        client.get("missing")
    with pytest.raises(InvalidInput, match="handler is required"):
        client.submit_many([{"args": b""}])
    nowhere = Client(f"tcp://127.0.0.1:{free_port()}", timeout=0.5)
    try:
        began = time.monotonic()
        with pytest.raises(Unavailable):
            nowhere.health()
        assert time.monotonic() - began < 10
    finally:
        nowhere.close()


def test_unavailable_says_whether_the_request_left() -> None:
    # given a "broker" that takes requests and never answers, and an address nothing is at
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    silent = context.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    heard = Client(f"tcp://127.0.0.1:{port}", timeout=0.5)
    unheard = Client(f"tcp://127.0.0.1:{free_port()}", timeout=0.5)
    try:
        # when a submit is sent to each
        with pytest.raises(Unavailable, match="did not answer") as no_answer:
            heard.submit("echo")
        with pytest.raises(Unavailable, match="not reachable") as not_reached:
            unheard.submit("echo")

        # then the first left (the broker has it, and may still carry it out); the second did not
        assert no_answer.value.sent is True
        assert silent.poll(10_000), "the request that left never arrived"
        assert protocol.unpack(silent.recv_multipart()[1:]).body["op"] == "submit"
        assert not_reached.value.sent is False
    finally:
        heard.close()
        unheard.close()
        silent.close(linger=0)
        context.term()


def test_a_broker_host_that_does_not_resolve_is_named_in_the_error() -> None:
    # given a client of a broker whose name never resolves (.invalid is reserved for that)
    client = Client("tcp://no-such-host.invalid:5555", timeout=0.5)
    try:
        # when it calls the broker, then the error says the name does not resolve
        with pytest.raises(Unavailable) as error:
            client.submit("echo")
        assert "host 'no-such-host.invalid' does not resolve" in error.value.description
        assert error.value.sent is False
    finally:
        client.close()


def test_broker_survives_malformed_frames(stack: Stack) -> None:
    stack.start_broker()
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(stack.endpoint)
    try:
        garbage = [
            [b"hello"],
            [b"ZS1", b"REQUEST"],
            [b"ZS9", b"REQUEST", b"\x80"],
            [b"ZS1", b"NOPE", b"\x80"],
            [b"ZS1", b"REQUEST", b"\xc1\xc1"],
            [b"ZS1", b"REQUEST", b"\x93\x01\x02\x03"],
            [b"ZS1", b"DONE", b"\x80"],
            [b"ZS1", b"READY", b"\x81\xa2id\x05"],
        ]
        for frames in garbage:
            raw.send_multipart(frames)
        raw.send_multipart(raw_request(7, "submit", {"tasks": "not a list"}))
        raw.send_multipart(raw_request(8, "explode", {}))
        replies: list[dict[str, Any]] = []
        while len(replies) < 2:
            assert raw.poll(10_000)
            message = protocol.unpack(raw.recv_multipart())
            if message.command is protocol.Command.REPLY:  # the DONE above earns a RESYNC
                replies.append(message.body)
        assert [(r["req"], r["error"]["status"]) for r in replies] == [(7, 400), (8, 400)]
        assert stack.client().health()["status"] == "ok"
    finally:
        raw.close(linger=0)


def test_process_pool_kills_a_run_past_its_timeout(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker("--pool", "process", "--handlers", "flaky_handlers", slots=1)
    client = stack.client()
    stuck = client.submit("spin", timeout=0.5)
    task = client.wait(stuck, timeout=30)
    assert task["status"] == "failed"
    assert "timed out" in task["error"]
    big = client.submit("fibonacci", b'{"n": 10000}')
    a, b = 0, 1
    for _ in range(10000):
        a, b = b, a + b
    assert json.loads(client.result(big, timeout=30)) == {"n": 10000, "result": a}
    assert client.result(client.submit("async_echo", b"hi"), timeout=30) == b"hi"


def test_finished_tasks_are_pruned_after_retention_and_stay_gone(stack: Stack) -> None:
    stack.start_broker("--retention", "1")
    stack.start_worker()
    client = stack.client()
    done = client.submit("echo", b"short-lived", idempotency_key="k")
    assert client.result(done, timeout=30) == b"short-lived"
    waiting = client.submit("echo", requires=["nobody-has-this"])

    def pruned() -> bool:
        try:
            client.get(done)
        except NotFound:
            return True
        return False

    wait_for(pruned, what="task pruned")
    assert client.get(waiting)["status"] == "pending"  # only finished tasks are pruned
    assert stack.broker is not None
    stack.broker.kill9()
    stack.start_broker("--retention", "1")
    client = stack.client()
    with pytest.raises(NotFound):
        client.get(done)
    assert client.get(waiting)["status"] == "pending"
    assert client.submit_entries([{"handler": "echo", "idempotency_key": "k"}])[0]["created"]


def test_wait_many_collects_a_batch_of_results(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker(slots=4)
    client = stack.client()
    ids = client.submit_many([{"handler": "echo", "args": str(i).encode()} for i in range(500)])
    briefs = client.wait_many(ids, timeout=60)
    assert [(b["id"], b["status"], b["result"]) for b in briefs] == [
        (task_id, "completed", str(i).encode()) for i, task_id in enumerate(ids)
    ]


def test_run_and_submit_and_wait_answer_in_one_round_trip(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker(slots=2)
    client = stack.client()
    assert client.run("echo", b"at once", wait=30) == b"at once"
    specs: list[dict[str, Any]] = [
        {"handler": "fibonacci", "args": b'{"n": 20}', "idempotency_key": "fib-20"},
        {"handler": "echo", "args": b"second", "priority": 3},
    ]
    records = client.submit_and_wait(specs, wait=30)
    assert [(r["status"], r["created"], r["attempts"]) for r in records] == [
        ("completed", True, 1),
        ("completed", True, 1),
    ]
    assert json.loads(records[0]["result"]) == {"n": 20, "result": 6765}
    assert records[1]["result"] == b"second" and records[1]["priority"] == 3
    again = client.submit_and_wait(specs[:1], wait=30)
    assert (again[0]["id"], again[0]["created"]) == (records[0]["id"], False)
    # Time runs out: the answer is the record as it stands, and the task goes on.
    [slow] = client.submit_and_wait([{"handler": "sleep", "args": b'{"seconds": 1}'}], wait=0.1)
    assert slow["status"] in ("pending", "running")
    assert client.wait(slow["id"], timeout=30)["status"] == "completed"
    with pytest.raises(TimeoutError, match="still"):
        client.run("sleep", b'{"seconds": 1}', wait=0.1)
    with pytest.raises(TaskFailed):
        client.run("fibonacci", b'{"n": "ten"}', wait=30)
    with pytest.raises(InvalidInput, match="wait"):
        client.submit_and_wait([{"handler": "echo"}], wait=-1)


def test_finished_tasks_read_back_whole_after_a_restart(stack: Stack) -> None:
    # A restart reads finished tasks by their index columns only and the rest when shown.
    stack.start_broker()
    stack.start_worker(slots=2)
    client = stack.client()
    done = client.submit("echo", b"kept", idempotency_key="kept")
    failed = client.submit("fibonacci", b'{"n": "ten"}')
    cancelled = client.submit("echo", requires=["nobody-has-this"])
    client.cancel(cancelled)
    briefs = client.wait_many([done, failed, cancelled], timeout=30)
    assert [b["status"] for b in briefs] == ["completed", "failed", "cancelled"]
    before = {task_id: client.get(task_id) for task_id in (done, failed, cancelled)}
    page, _ = client.list_tasks(limit=10)
    assert stack.broker is not None
    for _ in range(2):  # the second time on what the first restart wrote (nothing, here)
        stack.broker.kill9()
        stack.start_broker()
        client = stack.client()
        assert client.list_tasks(limit=10) == (page, None)
        assert {task_id: client.get(task_id) for task_id in before} == before
        assert client.wait_many([done, failed, cancelled], timeout=1) == briefs
        same = {"handler": "echo", "args": b"kept", "idempotency_key": "kept"}
        [again] = client.submit_and_wait([same], 1)
        detail = ("dependents", "more_dependents")  # get's own: a wait's record lacks them
        shown = {k: v for k, v in before[done].items() if k not in detail}
        assert again == {**shown, "created": False}
        with pytest.raises(Conflict):
            client.cancel(done)
        assert client.health()["tasks"]["completed"] == 1
