"""Values that once passed one layer and broke another, sent through every door.

Each is refused with ``InvalidInput`` (HTTP 400) naming the field, whichever door it
comes in by: the Python client (a value it cannot even encode it checks itself with the
broker's checks, and sends nothing), a peer that sends it raw, the REST API under
gunicorn. A one-way message that carries one (READY, DONE) is dropped whole and counted.
Nothing is created by a refused request, the broker keeps answering, and a worker that
was sent one still enforces its timeouts afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import zmq

from common import protocol
from common.client import Client
from common.errors import InvalidInput
from common.protocol import Command
from tests.conftest import Stack, raw_request, wait_for

#: Submissions that must be refused, and the field each error names.
BAD_SPECS: list[tuple[dict[str, Any], str]] = [
    ({"handler": "echo", "timeout": 1e10}, "timeout"),
    ({"handler": "echo", "timeout": float("inf")}, "timeout"),
    ({"handler": "echo", "priority": 2**64}, "priority"),
    ({"handler": "echo", "priority": -(2**64)}, "priority"),
    ({"handler": "echo", "resources": {"cpu": 2**64}}, "resources.cpu"),
    ({"handler": "echo", "resources": {"cpu": 1e308}}, "resources.cpu"),
    ({"handler": "echo", "max_retries": 2**70}, "max_retries"),
    ({"handler": "echo", "name": "\ud800"}, "name"),
    ({"handler": "\udcff"}, "handler"),
    ({"handler": "echo", "requires": ["gpu", "\ud800"]}, "requires[1]"),
    ({"handler": "echo", "idempotency_key": "k\ud800"}, "idempotency_key"),
    ({"handler": "echo", "dependencies": ["a/b"]}, "dependencies[0]"),
]


def expect_refused(call: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        call()
    assert refused.value.description.startswith(field), refused.value.description


def test_the_client_raises_invalid_input_naming_the_field(stack: Stack) -> None:
    stack.start_broker()
    client = stack.client()
    for spec, field in BAD_SPECS:
        handler = spec.pop("handler")
        expect_refused(lambda: client.submit(handler, **spec), field)  # noqa: B023
        spec["handler"] = handler
    expect_refused(lambda: client.run("echo", wait=1e400), "wait")
    expect_refused(lambda: client.get("a/b"), "id")
    expect_refused(lambda: client.cancel("x" * 129), "id")
    expect_refused(lambda: client.wait_many(["ok", "no way"], 1), "ids[1]")
    expect_refused(lambda: client.register_http_worker("a/b", [], {}), "id")
    expect_refused(lambda: client.register_http_worker("h", ["\ud800"], {}), "capabilities[0]")
    expect_refused(lambda: client.submit_many([]), "tasks")
    expect_refused(lambda: client.list_tasks(limit=10**30), "limit")
    expect_refused(lambda: client.complete("h", "t", "released"), "status")
    tasks, _ = client.list_tasks()
    assert tasks == [] and client.workers() == []


def test_the_broker_refuses_bad_values_a_raw_peer_sends(stack: Stack) -> None:
    # What the client would refuse, sent by a peer that does not check: the broker's own
    # edge refuses it, in a reply that names the field.
    stack.start_broker()
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(stack.endpoint)
    try:
        # msgpack carries at most 64-bit integers and valid UTF-8: these are the
        # largest and strangest values a peer can put on the wire.
        specs = [
            {"handler": "echo", "timeout": 1e10},
            {"handler": "echo", "priority": 2**64 - 1},
            {"handler": "echo", "resources": {"cpu": 2**64 - 1}},
            {"handler": "echo", "resources": {"cpu": float("nan")}},
            {"handler": "echo", "dependencies": ["a/b"]},
            {"handler": "echo", "max_retries": -(2**63)},
        ]
        for req, spec in enumerate(specs, 1):
            raw.send_multipart(raw_request(req, "submit", {"tasks": [spec]}))
        raw.send_multipart(raw_request(90, "http_register", {"id": "a/b"}))
        raw.send_multipart(raw_request(91, "get", {"id": 2**64 - 1}))
        raw.send_multipart(raw_request(92, "list", {"limit": 2**63}))
        raw.send_multipart(raw_request(93, "wait", {"id": "x", "timeout": float("nan")}))
        replies: dict[int, dict[str, Any]] = {}
        while len(replies) < len(specs) + 4:
            assert raw.poll(10_000), f"only {sorted(replies)} answered"
            body = protocol.unpack(raw.recv_multipart()).body
            replies[body["req"]] = body["error"]
        assert {error["status"] for error in replies.values()} == {400}
        named = {req: error["description"].split(" ")[0] for req, error in replies.items()}
        assert named == {
            1: "timeout",
            2: "priority",
            3: "resources.cpu",
            4: "resources.cpu",
            5: "dependencies[0]",
            6: "max_retries",
            90: "id",
            91: "id",
            92: "limit",
            93: "timeout",
        }
        client = stack.client()
        health = client.health()
        assert health["tasks"]["pending"] == 0 and health["workers"] == 0
    finally:
        raw.close(linger=0)


def test_a_bad_ready_or_done_is_dropped_whole_and_counted(stack: Stack) -> None:
    stack.start_broker()
    client = stack.client()
    peer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(stack.endpoint)

    def send(command: Command, body: dict[str, Any]) -> None:
        peer.send_multipart(protocol.pack(command, body))

    def expect(command: Command) -> dict[str, Any]:
        while True:
            assert peer.poll(10_000), f"no {command.name}"
            message = protocol.unpack(peer.recv_multipart())
            if message.command is command:
                return message.body

    try:
        ready = {"id": "w", "slots": 1, "capabilities": ["echo"], "running": []}
        for bad in ({**ready, "id": "a/b"}, {**ready, "slots": 2**62}, {**ready, "id": ""},
                    {**ready, "tags": "gpu"}):  # fmt: skip
            send(Command.READY, bad)
        wait_for(lambda: client.health()["dropped_messages"] == 4, what="4 READYs dropped")
        assert client.workers() == []

        send(Command.READY, ready)
        assert expect(Command.WELCOME)["worker_id"] == "w"
        task_id = client.submit("echo", b"x")
        [entry] = expect(Command.DISPATCH)["tasks"]
        run = {"task_id": task_id, "attempt": entry["attempt"], "result": b"forged"}
        # Without a status, or with one a worker never reports: dropped, not "released".
        send(Command.DONE, {"results": [run]})
        send(Command.DONE, {"results": [{**run, "status": "released"}]})
        wait_for(lambda: client.health()["dropped_messages"] == 6, what="2 DONEs dropped")
        task = client.get(task_id)
        assert (task["status"], task["attempts"], task["result"]) == ("running", 1, None)
        send(Command.DONE, {"results": [{**run, "status": "completed", "result": b"real"}]})
        assert expect(Command.ACK)["results"] == [[task_id, 1]]
        assert client.result(task_id, timeout=10) == b"real"
    finally:
        peer.close(linger=0)


def test_the_api_refuses_bad_values_with_400_naming_the_field(stack: Stack) -> None:
    stack.start_broker()
    stack.start_api()
    for spec, field in BAD_SPECS:
        # JSON has no infinity and no integers beyond what Python reads: sent as text.
        body = json.dumps(spec, allow_nan=True).replace("Infinity", "1e400").encode()
        status, error, _ = stack.http("POST", "/tasks", raw=body)
        assert status == 400, (spec, status, error)
        assert error["description"].startswith(field), error
    status, error, _ = stack.http("POST", "/workers", {"id": "a/b"})
    assert (status, error["description"].split(" ")[0]) == (400, "id")
    status, error, _ = stack.http("POST", "/tasks/batch", {"tasks": [{"handler": "echo", "x": 1}]})
    assert (status, error["description"]) == (400, "unknown field tasks[0].'x'")
    assert stack.http("GET", "/tasks")[1] == []
    assert stack.http("GET", "/health")[0] == 200


def test_a_worker_sent_an_absurd_timeout_still_enforces_the_next_one(stack: Stack) -> None:
    # A broker never sends a timeout beyond the limit; a worker sent one anyway reports that
    # run failed, and its watchdog lives on to stop the next run on time.
    stack.start_broker()
    client = stack.client()
    peer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    peer.setsockopt(zmq.LINGER, 0)
    port = peer.bind_to_random_port("tcp://127.0.0.1")
    stack.endpoint, real = f"tcp://127.0.0.1:{port}", stack.endpoint
    worker = stack.start_worker(worker_id="victim", slots=2)
    stack.endpoint = real
    try:
        assert peer.poll(10_000)
        identity, *frames = peer.recv_multipart()
        assert protocol.unpack(frames).command is Command.READY
        welcome = {"worker_id": "victim", "ping_interval": 30.0, "liveness": 3}
        peer.send_multipart([identity, *protocol.pack(Command.WELCOME, welcome)])
        runs = [
            {"task_id": "far", "attempt": 1, "handler": "sleep", "args": b'{"seconds": 60}',
             "timeout": 1e10},
            {"task_id": "near", "attempt": 1, "handler": "sleep", "args": b'{"seconds": 60}',
             "timeout": 0.3},
        ]  # fmt: skip
        peer.send_multipart([identity, *protocol.pack(Command.DISPATCH, {"tasks": runs})])
        outcomes: dict[str, dict[str, Any]] = {}
        while len(outcomes) < 2:
            assert peer.poll(30_000), f"only {sorted(outcomes)} reported"
            _, *frames = peer.recv_multipart()
            message = protocol.unpack(frames)
            if message.command is Command.DONE:
                outcomes.update({r["task_id"]: r for r in message.body["results"]})
        assert outcomes["far"]["status"] == "failed"
        assert "tasks[0].timeout" in outcomes["far"]["error"]
        assert outcomes["near"]["status"] == "failed"
        assert "timed out after 0.3 s" in outcomes["near"]["error"]
        assert worker.popen.poll() is None
    finally:
        peer.close(linger=0)
        assert client.health()["status"] == "ok"


def test_the_client_raises_no_bare_exception_for_what_it_cannot_encode(stack: Stack) -> None:
    stack.start_broker()
    with Client(stack.endpoint, timeout=5) as client:
        for value in (2**64, -(2**64), 10**100):
            with pytest.raises(InvalidInput):
                client.submit("echo", priority=value)
        with pytest.raises(InvalidInput):
            client.submit("echo", args="text")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            client.submit("echo", resources={"cpu": object()})
        assert client.health()["status"] == "ok"
