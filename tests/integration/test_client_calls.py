"""The client's calls as its users meet them: defaults from the settings, one timeout rule,
outcomes sent to the client, batches split for the caller, and pipelined submits."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from common.client import Client, TaskFailed, TaskTimeout
from common.errors import InvalidInput, NotFound, Unavailable
from common.limits import MAX_BATCH
from common.pipeline import SubmitsFailed
from tests.conftest import Stack, wait_for


def test_a_client_reaches_the_broker_its_settings_name(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.start_broker()
    stack.start_worker()
    monkeypatch.setenv("ZMQS_BROKER", stack.endpoint)
    monkeypatch.setenv("ZMQS_REQUEST_TIMEOUT", "7")
    with Client() as client:
        assert (client.endpoint, client.timeout) == (stack.endpoint, 7.0)
        task_id = client.submit("echo", b"from the settings")
        assert client.result(task_id) == b"from the settings"  # no timeout needed
        assert client.wait(task_id)["result"] == b"from the settings"
    monkeypatch.setenv("ZMQS_REQUEST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="REQUEST_TIMEOUT"):
        Client()


def test_a_finished_outcome_comes_unasked_and_a_lost_one_is_asked_for(stack: Stack) -> None:
    broker = stack.start_broker()
    stack.start_worker()
    client = stack.client()
    task_id = client.submit("echo", b"pushed")
    # The outcome is sent once committed; a later reply comes after it on the socket.
    wait_for(lambda: client.get(task_id)["status"] == "completed", what="the task done")
    broker.kill9()
    assert client.result(task_id, timeout=1) == b"pushed"  # no broker: no round trip
    # An outcome that never comes (the broker restarted in between) is asked for.
    stack.start_broker()
    waiting = client.submit("echo", b"lost", requires=["later"])
    assert stack.broker is not None
    stack.broker.kill9()
    stack.start_broker()
    stack.start_worker("--capabilities", "later")
    assert client.result(waiting, timeout=60) == b"lost"
    with pytest.raises(TaskFailed, match="failed"):
        client.result(client.submit("fibonacci", b'{"n": "ten"}'), timeout=60)


def test_every_call_that_waits_raises_when_time_runs_out(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker()
    client = stack.client()
    done = client.submit("echo", b"done")
    never = client.submit("echo", requires=["nobody"])
    assert client.result(done, timeout=30) == b"done"
    with pytest.raises(TaskTimeout) as waited:
        client.wait_many([done, never, done], timeout=0.2)
    assert [(b["id"], b["status"]) for b in waited.value.tasks] == [(done, "completed")]
    with pytest.raises(TaskTimeout) as one:
        client.wait(never, timeout=0.1)
    assert one.value.tasks[0]["status"] == "pending"
    with pytest.raises(TaskTimeout, match=never):
        client.result(never, timeout=0.1)
    with pytest.raises(TaskTimeout, match="still pending"):
        client.run("echo", requires=["nobody"], wait=0.1)
    assert isinstance(one.value, TimeoutError)
    with pytest.raises(NotFound):
        client.result("0" * 32, timeout=1)


def test_batches_larger_than_one_message_are_split(stack: Stack) -> None:
    stack.start_broker()
    client = stack.client(timeout=60)
    specs = [{"handler": "nobody", "args": str(i).encode()} for i in range(MAX_BATCH + 1)]
    ids = client.submit_many(specs)
    assert len(set(ids)) == MAX_BATCH + 1
    assert client.get(ids[-1])["args"] == str(MAX_BATCH).encode()
    with pytest.raises(TaskTimeout) as waited:
        client.wait_many(ids, timeout=0)
    assert waited.value.tasks == []
    # Each message all or none: what went before a refused one stays, and the error says so.
    bad: list[dict[str, Any]] = [*specs[:MAX_BATCH], {"handler": "echo", "dependencies": ["x"]}]
    with pytest.raises(InvalidInput) as refused:
        client.submit_many(bad)
    assert len(refused.value.submitted) == MAX_BATCH  # type: ignore[attr-defined]


def test_a_pipeline_keeps_submits_in_flight_and_checks_each_acknowledgement(
    stack: Stack,
) -> None:
    stack.start_broker()
    stack.start_worker(slots=4)
    client = stack.client()
    with pytest.raises(SubmitsFailed) as failed, client.pipeline(batch=100, window=300) as pipe:
        handles = [pipe.submit("echo", str(i).encode()) for i in range(1000)]
        refused = pipe.submit("echo", dependencies=["nope"])
        handles += [pipe.submit("echo", str(i).encode()) for i in range(1000, 1500)]
    assert failed.value.failed == [refused]
    with pytest.raises(InvalidInput, match="nope"):
        _ = refused.id
    assert [h.result(60) for h in handles] == [str(i).encode() for i in range(1500)]
    assert len({h.id for h in handles}) == 1500
    # A malformed spec is refused at the call, before anything leaves.
    with client.pipeline() as pipe:
        with pytest.raises(InvalidInput, match="priority"):
            pipe.submit("echo", priority="high")
        keyed = pipe.submit("echo", b"k", idempotency_key="once")
        again = pipe.submit("echo", b"k", idempotency_key="once")
    assert keyed.id == again.id and (keyed.created, again.created) == (True, False)
    # A failure the block raises goes on, with the pipeline's refusals noted on it.
    with pytest.raises(KeyError) as raised, client.pipeline() as pipe:
        pipe.submit("echo", dependencies=["gone"])
        raise KeyError("the caller's own")
    assert "gone" in " ".join(raised.value.__notes__)


def test_a_pipeline_whose_broker_does_not_answer_fails_its_submits(stack: Stack) -> None:
    broker = stack.start_broker()
    client = stack.client(timeout=0.5)
    with client.pipeline() as pipe:
        first = pipe.submit("echo", b"1")
    assert len(first.id) == 32
    # Stopped: the submits leave, and no acknowledgement comes.
    broker.signal(signal.SIGSTOP)
    try:
        with pytest.raises(SubmitsFailed) as failed, client.pipeline() as pipe:
            unanswered = [pipe.submit("echo", b"2"), pipe.submit("echo", b"3")]
        assert failed.value.failed == unanswered
        assert all(isinstance(h.error, Unavailable) and h.error.sent for h in unanswered)
    finally:
        broker.signal(signal.SIGCONT)
    # Gone: nothing can leave, and the call says so.
    broker.kill9()
    with pytest.raises(Unavailable) as gone, client.pipeline() as pipe:
        pipe.submit("echo", b"4")
    assert not gone.value.sent
