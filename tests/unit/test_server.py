"""The broker's socket loop around the core, in a thread, with an in-memory store.

Peers are raw ZeroMQ sockets on loopback, so each test sees exactly which frames leave
the broker, and when: commands before the commit, promises after it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

from broker.server import COMMIT_DELAY, BrokerServer
from broker.store import Batch, MemoryStore
from common import protocol
from common.protocol import Command
from common.settings import Settings
from tests.conftest import wait_for

#: Generous bound of every wait for a frame, in milliseconds.
PATIENCE_MS = 10_000


class GatedStore(MemoryStore):
    """A store whose commits wait for ``gate`` (or fail with ``failure``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.failure: Exception | None = None
        self.writing = threading.Event()

    def write(self, batch: Batch) -> None:
        self.writing.set()
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        if self.failure is not None:
            raise self.failure
        super().write(batch)


@dataclass
class Loop:
    server: BrokerServer
    store: GatedStore
    context: zmq.Context[zmq.Socket[bytes]]
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)
    sockets: list[zmq.Socket[bytes]] = field(default_factory=list)

    def socket(self) -> zmq.Socket[bytes]:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.server.endpoint)
        self.sockets.append(sock)
        return sock


@pytest.fixture
def loop() -> Iterator[Loop]:
    store = GatedStore()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    # Pings a minute apart: no PING frame can slip in between the frames a test expects.
    settings = Settings(broker="tcp://127.0.0.1:0", ping_interval=60.0)
    server = BrokerServer(settings, store, context)
    server.bind()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="broker-loop", daemon=True)
    result = Loop(server, store, context, thread, errors)
    thread.start()
    try:
        yield result
    finally:
        store.gate.set()
        server.stop()
        thread.join(10)
        for sock in result.sockets:
            sock.close(linger=0)
        context.destroy(linger=0)


def receive(sock: zmq.Socket[bytes], timeout_ms: int = PATIENCE_MS) -> protocol.Message | None:
    if not sock.poll(timeout_ms):
        return None
    return protocol.unpack(sock.recv_multipart())


def register_worker(loop: Loop, worker_id: str = "w") -> zmq.Socket[bytes]:
    worker = loop.socket()
    ready = {"id": worker_id, "slots": 1, "capabilities": ["echo"], "resources": {}, "running": []}
    worker.send_multipart(protocol.pack(Command.READY, ready))
    welcome = receive(worker)
    assert welcome is not None and welcome.command is Command.WELCOME
    return worker


def test_a_dispatch_leaves_before_its_commit_and_the_reply_after(loop: Loop) -> None:
    worker = register_worker(loop)
    client = loop.socket()
    loop.store.gate.clear()
    loop.store.writing.clear()
    client.send_multipart(protocol.request(1, "submit", {"tasks": [{"handler": "echo"}]}))
    # The worker gets its task while the submit's commit is still waiting at the gate...
    dispatch = receive(worker)
    assert dispatch is not None and dispatch.command is Command.DISPATCH
    assert loop.store.writing.wait(10)
    assert loop.store.rows == {}
    # ...and the client hears nothing until that commit is done.
    assert receive(client, 300) is None
    loop.store.gate.set()
    reply = receive(client)
    assert reply is not None and reply.body["ok"]
    assert [row[1] for row in loop.store.rows.values()] == [reply.body["value"]["tasks"][0]["id"]]


def test_an_outcome_is_acknowledged_only_after_its_commit(loop: Loop) -> None:
    worker = register_worker(loop)
    client = loop.socket()
    client.send_multipart(protocol.request(1, "submit", {"tasks": [{"handler": "echo"}]}))
    dispatch = receive(worker)
    assert dispatch is not None
    [entry] = dispatch.body["tasks"]
    assert receive(client) is not None
    loop.store.gate.clear()
    outcome = {"task_id": entry["task_id"], "attempt": entry["attempt"], "status": "completed",
               "result": b"done", "error": None}  # fmt: skip
    worker.send_multipart(protocol.pack(Command.DONE, {"results": [outcome]}))
    assert loop.store.writing.wait(10)
    assert receive(worker, 300) is None  # no ACK while the commit waits
    loop.store.gate.set()
    ack = receive(worker)
    assert ack is not None and ack.command is Command.ACK
    assert ack.body["results"] == [[entry["task_id"], entry["attempt"]]]


def test_a_change_no_answer_waits_for_is_committed_within_the_delay(loop: Loop) -> None:
    client = loop.socket()
    # Nobody serves "nobody" and the submit waits for the task: no answer is owed yet.
    spec: dict[str, Any] = {"tasks": [{"handler": "nobody"}], "wait": 60}
    client.send_multipart(protocol.request(1, "submit", spec))
    wait_for(lambda: len(loop.store.rows) == 1, timeout=10 + 100 * COMMIT_DELAY,
             what="the waiting submit committed")  # fmt: skip
    assert receive(client, 200) is None


def test_a_failed_commit_stops_the_loop_before_anything_is_acknowledged(loop: Loop) -> None:
    client = loop.socket()
    loop.store.failure = OSError("disk full")
    client.send_multipart(protocol.request(1, "submit", {"tasks": [{"handler": "echo"}]}))
    loop.thread.join(10)
    assert not loop.thread.is_alive()
    assert [type(e) for e in loop.errors] == [OSError]
    assert receive(client, 300) is None
    assert loop.store.rows == {}
