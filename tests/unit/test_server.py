"""The broker's socket loop around the core, with an in-memory and an SQLite store.

Two ways in. The loop in a thread, with raw ZeroMQ peers on loopback, shows exactly which
frames leave the broker, and when: commands before the commit, promises after it. A turn
driven by hand (``Turn``), on a stand-in socket and a clock the test moves, shows what one
turn does: how many commits, which frames, in which order against the commits, and what
the store held (read through a connection of its own) when each answer left.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker.intake import SLICE
from broker.outflow import Outflow
from broker.server import URGENT_OUTCOMES, BrokerServer
from broker.state import Task, Worker
from broker.store import StoreSummary
from broker.store.memory import MemoryStore
from broker.store.sqlite import SqliteStore
from common import ops, protocol
from common.models import FINAL_STATUSES, TaskStatus
from common.protocol import Command
from common.settings import Settings
from tests import edge
from tests.conftest import raw_request, wait_for

#: Generous bound of every wait for a frame, in milliseconds.
PATIENCE_MS = 10_000
#: The README's promise: a change nobody waits for is written at most this much later.
PROMISED_COMMIT_DELAY = 0.010


class CheckedStore:
    """The in-memory or the SQLite store, with a hook on every commit and a way to read what
    is committed as another process would (for SQLite: through a connection of its own)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = str(tmp_path / "scheduler.db")
        self._inner: MemoryStore | SqliteStore | None = None
        #: Called before each commit; may block or raise.
        self.before_write: Callable[[], None] = lambda: None
        #: Called after each commit.
        self.after_write: Callable[[], None] = lambda: None
        self.commits = 0

    @property
    def inner(self) -> MemoryStore | SqliteStore:
        # Opened on first use, in the thread that uses it (SQLite connections stay in theirs).
        if self._inner is None:
            self._inner = MemoryStore() if self.kind == "memory" else SqliteStore(self.path)
        return self._inner

    def load(self) -> list[Task]:
        return self.inner.load()

    def load_workers(self) -> list[Worker]:
        return self.inner.load_workers()

    def summary(self) -> StoreSummary:
        return self.inner.summary()

    def find(self, task_id: str) -> Task | None:
        return self.inner.find(task_id)

    def find_many(self, task_ids: list[str]) -> dict[str, Task]:
        return self.inner.find_many(task_ids)

    def find_key(self, key: str) -> Task | None:
        return self.inner.find_key(key)

    def finished_page(
        self, status: TaskStatus | None, handler: str | None, after: int, limit: int,
        max_bytes: int,
    ) -> list[Task]:  # fmt: skip
        return self.inner.finished_page(status, handler, after, limit, max_bytes)

    def prune(
        self, before: float, excess: int, limit: int, keep: Collection[str] = ()
    ) -> list[tuple[str, TaskStatus]]:
        return self.inner.prune(before, excess, limit, keep)

    def failed_by(self, task_id: str) -> list[Task]:
        return self.inner.failed_by(task_id)

    def dependents(self, task_id: str, limit: int) -> list[str]:
        return self.inner.dependents(task_id, limit)

    def purge(
        self, status: TaskStatus, before: float | None, limit: int, keep: Collection[str] = ()
    ) -> tuple[list[tuple[str, TaskStatus]], bool]:
        return self.inner.purge(status, before, limit, keep)

    def save(
        self,
        changed: Iterable[Task],
        deleted: Sequence[Task] = (),
        *,
        workers: Iterable[Worker] = (),
        forgotten: Sequence[str] = (),
    ) -> None:
        self.before_write()
        self.inner.save(changed, deleted, workers=workers, forgotten=forgotten)
        self.commits += 1
        self.after_write()

    def close(self) -> None:
        self.inner.close()

    def committed(self) -> dict[str, str]:
        """Task id -> status of every committed task."""
        if self.kind == "memory":
            held = self.inner.tasks.values() if isinstance(self.inner, MemoryStore) else ()
            return {task.id: task.status.value for task in held}
        if not Path(self.path).exists():
            return {}
        with closing(sqlite3.connect(self.path)) as db:
            return {str(i): str(s) for i, s in db.execute("SELECT id, status FROM tasks")}


class GatedStore(CheckedStore):
    """A store whose commits wait for ``gate`` (or fail with ``failure``)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        super().__init__(kind, tmp_path)
        self.gate = threading.Event()
        self.gate.set()
        self.failure: Exception | None = None
        self.writing = threading.Event()
        self.before_write = self._wait_for_gate

    def _wait_for_gate(self) -> None:
        self.writing.set()
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        if self.failure is not None:
            raise self.failure


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


@pytest.fixture(params=["memory", "sqlite"])
def loop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Loop]:
    store = GatedStore(request.param, tmp_path)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    # Pings a minute apart: no PING frame can slip in between the frames a test expects.
    settings = Settings(broker="tcp://127.0.0.1:0", ping_interval=60.0)
    server = BrokerServer(settings, store, context)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="broker-loop", daemon=True)
    result = Loop(server, store, context, thread, errors)
    thread.start()  # it binds, and loads the store, in its own thread: the store stays there
    try:
        wait_for(lambda: server.endpoint or errors, timeout=10, what="the broker bound")
        assert not errors
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
    client.send_multipart(raw_request(1, "submit", {"tasks": [{"handler": "echo"}]}))
    # The worker gets its task while the submit's commit is still waiting at the gate...
    dispatch = receive(worker)
    assert dispatch is not None and dispatch.command is Command.DISPATCH
    assert loop.store.writing.wait(10)
    assert loop.store.committed() == {}
    # ...and the client hears nothing until that commit is done.
    assert receive(client, 300) is None
    loop.store.gate.set()
    reply = receive(client)
    assert reply is not None and reply.body["ok"]
    assert list(loop.store.committed()) == [reply.body["value"]["tasks"][0]["id"]]


def test_an_outcome_is_acknowledged_only_after_its_commit(loop: Loop) -> None:
    worker = register_worker(loop)
    client = loop.socket()
    client.send_multipart(raw_request(1, "submit", {"tasks": [{"handler": "echo"}]}))
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
    client.send_multipart(raw_request(1, "submit", spec))
    wait_for(lambda: len(loop.store.committed()) == 1, timeout=10,
             what="the waiting submit committed")  # fmt: skip
    assert receive(client, 200) is None


def test_a_failed_commit_stops_the_loop_before_anything_is_acknowledged(loop: Loop) -> None:
    client = loop.socket()
    loop.store.failure = OSError("disk full")
    client.send_multipart(raw_request(1, "submit", {"tasks": [{"handler": "echo"}]}))
    loop.thread.join(10)
    assert not loop.thread.is_alive()
    assert [type(e) for e in loop.errors] == [OSError]
    assert receive(client, 300) is None
    assert loop.store.committed() == {}


# -- one turn at a time, on a stand-in socket and a clock moved by hand ------------------------

T0 = 1_000_000.0
WORKER = b"worker"


class Wire:
    """Stands in for the ROUTER socket in ``BrokerServer._turn``: it hands over the messages a
    test queued, and notes every message sent, with what the store held as it left."""

    def __init__(self, store: CheckedStore, events: list[tuple[str, Any]]) -> None:
        self.store = store
        self.events = events
        self.inbox: deque[list[bytes]] = deque()
        #: The frames of the message being received.
        self._rest: deque[bytes] = deque()
        self._frames: list[bytes] = []
        #: One for every large message sent, in order.
        self.trackers: list[Tracker] = []

    def recv(self, flags: int = 0, copy: bool = True) -> Frame:
        """The next frame, as ``copy=False`` gives it."""
        if not self._rest:
            if not self.inbox:
                raise zmq.Again()
            self._rest = deque(self.inbox.popleft())
        frame = self._rest.popleft()
        return Frame(frame, bool(self._rest))

    def getsockopt(self, option: int) -> int:
        assert option == zmq.EVENTS
        return zmq.POLLIN if self.inbox or self._rest else 0

    def send(
        self, frame: bytes, flags: int = 0, copy: bool = True, track: bool = False
    ) -> Tracker | None:
        self._frames.append(bytes(frame))
        if not flags & zmq.SNDMORE:
            address, *payload = self._frames
            self._frames = []
            self.events.append(
                ("sent", (address, protocol.unpack(payload), self.store.committed()))
            )
        if not track:
            return None
        tracker = Tracker()
        self.trackers.append(tracker)
        return tracker


@dataclass
class Frame:
    """Stands in for ``zmq.Frame``: its bytes, and whether more of its message follow."""

    bytes: bytes
    more: bool


@dataclass
class Tracker:
    """Stands in for ``zmq.MessageTracker``: the test says when a message is written."""

    done: bool = False


@dataclass
class Turn:
    """A broker whose turns a test runs one by one, at times it chooses."""

    store: CheckedStore
    events: list[tuple[str, Any]]
    settings: Settings
    #: The broker's clock: what ``run`` sets.
    now: float = T0
    _req: int = 0

    def __post_init__(self) -> None:
        self.server = BrokerServer(self.settings, self.store, clock=lambda: self.now)
        self.wire = Wire(self.store, self.events)

    def queue(self, address: bytes, command: Command, body: dict[str, Any] | None = None) -> None:
        self.wire.inbox.append([address, *protocol.pack(command, body)])

    def request(self, address: bytes, op: str, **args: Any) -> int:
        self._req += 1
        self.wire.inbox.append([address, *raw_request(self._req, op, args)])
        return self._req

    def run(self, at: float | None = None) -> list[tuple[bytes, protocol.Message]]:
        """One turn at ``at`` (default: the current time); returns what it sent."""
        if at is not None:
            self.now = at
        start = len(self.events)
        self.server._turn(self.wire)  # type: ignore[arg-type]
        return [(ev[1][0], ev[1][1]) for ev in self.events[start:] if ev[0] == "sent"]

    def commits(self) -> int:
        return sum(1 for kind, _ in self.events if kind == "commit")

    def sent(self) -> list[tuple[bytes, protocol.Message]]:
        """Every message sent so far, with its address."""
        return [(a, m) for kind, (a, m, _) in ((k, e) for k, e in self.events if k == "sent")]

    def replies(self) -> dict[int, Any]:
        """Each REPLY sent so far, by request number: its value."""
        return {
            m.body["req"]: m.body.get("value")
            for kind, (_, m, _) in ((k, e) for k, e in self.events if k == "sent")
            if m.command is Command.REPLY
        }


@pytest.fixture(params=["memory", "sqlite"])
def turn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Turn]:
    events: list[tuple[str, Any]] = []
    store = CheckedStore(request.param, tmp_path)
    store.after_write = lambda: events.append(("commit", store.committed()))
    store.load()
    settings = Settings(broker="tcp://127.0.0.1:0", ping_interval=60.0, retention=100.0)
    try:
        yield Turn(store, events, settings)
    finally:
        store.close()


def register(
    turn: Turn, slots: int = 1, address: bytes = WORKER, acks_in_dispatch: bool = False
) -> None:
    ready = {"id": address.decode(), "slots": slots, "capabilities": ["echo"], "running": [],
             "acks_in_dispatch": acks_in_dispatch}  # fmt: skip
    turn.queue(address, Command.READY, ready)


def shown(value: Any) -> Iterator[tuple[str, str]]:
    """(id, status) of every task a reply's value shows."""
    if isinstance(value, dict):
        if isinstance(value.get("id"), str) and "status" in value and "kind" not in value:
            yield value["id"], value["status"]
        for item in value.values():
            yield from shown(item)
    elif isinstance(value, list):
        for item in value:
            yield from shown(item)


def assert_every_answer_was_durable(events: list[tuple[str, Any]]) -> int:
    """Every task a REPLY showed, and every outcome an ACK acknowledged, was committed when
    the message left, finished as shown when shown finished. Returns the messages checked."""
    checked = 0
    for kind, payload in events:
        if kind != "sent":
            continue
        _, message, committed = payload
        if message.command is Command.REPLY:
            for task_id, status in shown(message.body.get("value")):
                assert task_id in committed, f"reply showed {task_id} before it was committed"
                if status in FINAL_STATUSES:
                    assert committed[task_id] == status, f"reply showed {task_id} {status} first"
            checked += 1
        elif message.command is Command.ACK or "results" in message.body:  # or a DISPATCH
            for task_id, _attempt in message.body["results"]:
                assert committed.get(task_id) in FINAL_STATUSES, f"ACK of {task_id} before commit"
            checked += 1
        elif message.command is Command.OUTCOME:
            for outcome in message.body["tasks"]:
                task_id, status = outcome["id"], outcome["status"]
                assert committed.get(task_id) == status, f"outcome of {task_id} before commit"
            checked += 1
    return checked


def done(task_id: str, attempt: int = 1, result: bytes = b"ok") -> dict[str, Any]:
    entry = {"task_id": task_id, "attempt": attempt, "status": "completed", "result": result}
    return {"results": [entry]}


def test_every_answer_leaves_after_the_commit_of_what_it_shows(turn: Turn) -> None:
    client = b"client"
    register(turn, slots=1)
    submit = turn.request(client, "submit", tasks=[{"handler": "echo"}, {"handler": "echo"}])
    sent = turn.run()
    first, second = (entry["id"] for entry in turn.replies()[submit]["tasks"])
    dispatch = next(m for address, m in sent if m.command is Command.DISPATCH)
    assert [e["task_id"] for e in dispatch.body["tasks"]] == [first]
    # One turn: the first task's outcome, and every kind of read of it, and a wait for the
    # second, which the next turn's outcome answers.
    turn.queue(WORKER, Command.DONE, done(first))
    get = turn.request(client, "get", id=first)
    page = turn.request(client, "list", limit=10)
    brief = turn.request(client, "wait_many", ids=[first], timeout=0)
    waited = turn.request(client, "wait", id=first, timeout=5)
    later = turn.request(client, "wait", id=second, timeout=5)
    turn.run(T0 + 0.001)
    turn.queue(WORKER, Command.DONE, done(second, result=b"2"))
    turn.run(T0 + 0.002)
    turn.run(T0 + 0.011)  # the ACK of both outcomes: 10 ms after the first

    replies = turn.replies()
    assert replies[get]["status"] == "completed" and replies[waited]["status"] == "completed"
    assert [t["status"] for t in replies[page]["tasks"]] == ["completed", "pending"]
    assert replies[brief]["tasks"][0]["status"] == "completed"
    assert replies[later]["status"] == "completed" and replies[later]["result"] == b"2"
    assert assert_every_answer_was_durable(turn.events) == 7  # 6 replies and 1 ACK


def test_a_busy_worker_that_takes_acks_in_a_dispatch_gets_no_ack_of_its_own(turn: Turn) -> None:
    # Given a one-slot worker whose READY said acks_in_dispatch, and three tasks for it
    register(turn, acks_in_dispatch=True)
    turn.request(b"client", "submit", tasks=[{"handler": "echo"}] * 3)

    def dispatched(sent: list[tuple[bytes, protocol.Message]]) -> list[Any]:
        return [(m.body["tasks"][0]["task_id"], m.body.get("results")) for _, m in sent
                if m.command is Command.DISPATCH]  # fmt: skip

    [(first, acks)] = dispatched(turn.run(T0))
    assert acks is None
    # When it reports each, the next DISPATCH carries the ACK of the one before (committed
    # meanwhile), and no ACK goes alone while it is busy
    turn.queue(WORKER, Command.DONE, done(first))
    [(second, acks)] = dispatched(turn.run(T0 + 1))
    assert acks is None  # the first is not committed yet
    assert turn.run(T0 + 1 + PROMISED_COMMIT_DELAY) == []  # committed: held, not sent
    turn.queue(WORKER, Command.DONE, done(second))
    [(third, acks)] = dispatched(turn.run(T0 + 1.5))
    assert acks == [[first, 1]]
    assert turn.run(T0 + 1.5 + PROMISED_COMMIT_DELAY) == []
    # Then, idle after the last, it gets an ACK of what it held and of the last, at once
    turn.queue(WORKER, Command.DONE, done(third))
    assert turn.run(T0 + 1.6) == []
    assert turn.run(T0 + 1.6 + PROMISED_COMMIT_DELAY) == [
        (WORKER, protocol.Message(Command.ACK, {"results": [[second, 1], [third, 1]]}))
    ]
    assert assert_every_answer_was_durable(turn.events) >= 3


def test_held_acks_go_alone_after_a_second_and_an_older_worker_gets_each(turn: Turn) -> None:
    # A one-slot worker that takes acks in a dispatch, and one that does not, each given a
    # task while two more wait
    register(turn, acks_in_dispatch=True)
    register(turn, address=b"older")
    turn.request(b"client", "submit", tasks=[{"handler": "echo"}] * 4)
    sent = turn.run(T0)
    first = {a: m.body["tasks"][0]["task_id"] for a, m in sent if m.command is Command.DISPATCH}
    assert sorted(first) == [b"older", WORKER]
    # When both report theirs, each is given the next one (full again)
    for address, task_id in first.items():
        turn.queue(address, Command.DONE, done(task_id))
    turn.run(T0 + 1)
    sent = turn.run(T0 + 1 + PROMISED_COMMIT_DELAY)
    # Then the older one gets an ACK as before, and the full one's waits for a DISPATCH
    acked = {a: m.body["results"] for a, m in sent if m.command is Command.ACK}
    assert acked == {b"older": [[first[b"older"], 1]]}
    assert turn.run(T0 + 1.5) == []
    # a second at most: none comes, so it goes alone
    assert turn.server._poll_timeout_ms() <= 1000
    assert turn.run(T0 + 2.1) == [
        (WORKER, protocol.Message(Command.ACK, {"results": [[first[WORKER], 1]]}))
    ]
    assert_every_answer_was_durable(turn.events)


def test_a_burst_of_submits_shares_one_commit(turn: Turn, monkeypatch: pytest.MonkeyPatch) -> None:
    # However slow the machine: the turn's time budget is not what this tests.
    monkeypatch.setattr("broker.server.TURN_SECONDS", 60.0)
    requests = [turn.request(b"client-%d" % i, "submit", tasks=[{"handler": "echo"}])
                for i in range(50)]  # fmt: skip
    sent = turn.run()
    assert turn.commits() == 1
    assert sorted(m.body["req"] for _, m in sent if m.command is Command.REPLY) == requests
    assert len(turn.store.committed()) == 50
    assert_every_answer_was_durable(turn.events)


def test_a_change_nobody_waits_for_is_committed_at_most_10_ms_later(turn: Turn) -> None:
    # A submit that waits for its task, which nobody serves: no answer is owed yet.
    turn.request(b"client", "submit", tasks=[{"handler": "nobody"}], wait=60)
    assert turn.run(T0) == [] and turn.commits() == 0
    # The loop sleeps no longer than the delay left (in whole milliseconds, rounded up), and
    # commits once it has passed.
    assert turn.server._poll_timeout_ms() <= PROMISED_COMMIT_DELAY * 1000 + 1
    assert turn.run(T0 + PROMISED_COMMIT_DELAY - 0.001) == [] and turn.commits() == 0
    turn.now = T0 + PROMISED_COMMIT_DELAY - 0.005
    assert turn.server._poll_timeout_ms() <= 6
    turn.run(T0 + PROMISED_COMMIT_DELAY)
    assert turn.commits() == 1
    assert list(turn.store.committed().values()) == ["pending"]


def test_an_outcome_is_acknowledged_with_the_commit_at_most_10_ms_later(turn: Turn) -> None:
    register(turn)
    turn.request(b"client", "submit", tasks=[{"handler": "echo"}])
    sent = turn.run(T0)
    [task_id] = [e["task_id"] for _, m in sent if m.command is Command.DISPATCH
                 for e in m.body["tasks"]]  # fmt: skip
    commits = turn.commits()
    turn.queue(WORKER, Command.DONE, done(task_id))
    assert turn.run(T0 + 1) == []  # nobody but the worker waits: the ACK rides on the commit
    assert turn.run(T0 + 1 + PROMISED_COMMIT_DELAY) == [
        (WORKER, protocol.Message(Command.ACK, {"results": [[task_id, 1]]}))
    ]
    assert turn.commits() == commits + 1
    assert_every_answer_was_durable(turn.events)


def test_a_watched_outcome_leaves_unasked_with_the_commit_of_its_turn(turn: Turn) -> None:
    client = b"client"
    register(turn, slots=2)
    submit = turn.request(client, "submit", tasks=[{"handler": "echo"}] * 2, notify=True)
    sent = turn.run(T0)
    first, second = (entry["id"] for entry in turn.replies()[submit]["tasks"])
    commits = turn.commits()
    turn.queue(WORKER, Command.DONE, done(first, result=b"1"))
    sent = turn.run(T0 + 1)  # a client waits: committed at once, not 10 ms later
    assert turn.commits() == commits + 1
    outcomes = [(a, m.body["tasks"]) for a, m in sent if m.command is Command.OUTCOME]
    assert outcomes == [
        (client, [{"id": first, "status": "completed", "result": b"1", "error": None}])
    ]
    # Both outcomes in one turn: one message. A task submitted again under its key, once
    # final, is sent at once to the client that asks; one not watched, never.
    turn.queue(WORKER, Command.DONE, {"results": [done(second)["results"][0]]})
    turn.request(b"other", "submit", tasks=[{"handler": "echo"}])
    sent = turn.run(T0 + 2)
    assert [m.body["tasks"][0]["id"] for a, m in sent if m.command is Command.OUTCOME] == [second]
    keyed = {"handler": "echo", "idempotency_key": "k"}
    turn.request(b"third", "submit", tasks=[keyed])
    sent = turn.run(T0 + 3)
    [entry] = next(m.body["value"]["tasks"] for a, m in sent if m.command is Command.REPLY)
    dispatch = next(m for a, m in sent if m.command is Command.DISPATCH)
    turn.queue(WORKER, Command.DONE, done(dispatch.body["tasks"][0]["task_id"]))
    turn.run(T0 + 4)
    turn.request(b"fourth", "submit", tasks=[keyed], notify=True)
    sent = turn.run(T0 + 5)
    to_fourth = [m for a, m in sent if a == b"fourth"]
    # The outcome first: a reply showing a task final never overtakes its outcome.
    assert [m.command for m in to_fourth] == [Command.OUTCOME, Command.REPLY]
    assert to_fourth[0].body["tasks"][0]["id"] == entry["id"]
    assert_every_answer_was_durable(turn.events)


def test_outcomes_for_a_client_with_many_in_flight_share_the_delayed_commit(turn: Turn) -> None:
    # Given a client that watches more tasks than URGENT_OUTCOMES (a pipeline)
    client = b"pipeline"
    register(turn, slots=URGENT_OUTCOMES + 4)
    count = URGENT_OUTCOMES + 4
    submit = turn.request(client, "submit", tasks=[{"handler": "echo"}] * count, notify=True)
    turn.run(T0)
    ids = [entry["id"] for entry in turn.replies()[submit]["tasks"]]
    commits = turn.commits()

    def outcomes(sent: list[tuple[bytes, protocol.Message]]) -> list[str]:
        return [o["id"] for a, m in sent if m.command is Command.OUTCOME for o in m.body["tasks"]]

    # When its first tasks finish, one a turn, then their outcomes wait for the commit
    # that comes COMMIT_DELAY after the first, and leave together with it
    for i in range(3):
        turn.queue(WORKER, Command.DONE, done(ids[i]))
        assert outcomes(turn.run(T0 + 1 + i * 0.001)) == []
    assert turn.commits() == commits
    assert outcomes(turn.run(T0 + 1 + PROMISED_COMMIT_DELAY)) == ids[:3]
    assert turn.commits() == commits + 1
    # And once it waits for few enough, each outcome comes with a commit of its own, at once
    for i in range(3, count):
        turn.queue(WORKER, Command.DONE, done(ids[i]))
        turn.run(T0 + 2 + i * 0.001)
    assert outcomes(turn.sent()) == ids
    assert turn.commits() > commits + 1 + URGENT_OUTCOMES - 1
    assert assert_every_answer_was_durable(turn.events) >= 2


def test_a_separate_submit_refuses_each_bad_task_alone(turn: Turn) -> None:
    turn.server.core.max_payload = 10
    specs = [
        {"handler": "echo", "args": b"fine"},
        {"handler": "echo", "dependencies": ["nope"]},
        {"handler": "echo", "args": b"x" * 11},
        {"handler": "echo", "args": b"also fine"},
    ]
    submit = turn.request(b"client", "submit", tasks=specs, separate=True)
    turn.run(T0)
    entries = turn.replies()[submit]["tasks"]
    assert [sorted(entry) for entry in entries] == [
        ["created", "id", "status"],
        ["error"],
        ["error"],
        ["created", "id", "status"],
    ]
    assert entries[1]["error"]["status"] == 400 and "nope" in entries[1]["error"]["description"]
    assert entries[2]["error"] == {
        "status": 413,
        "title": "Too large",
        "description": "args is 11 bytes, more than 10",
    }
    assert set(turn.store.committed()) == {entries[0]["id"], entries[3]["id"]}
    # All or none, as before, without it.
    whole = turn.request(b"client", "submit", tasks=specs)
    sent = turn.run(T0 + 1)
    [error] = [m.body["error"] for _, m in sent if m.body.get("req") == whole]
    assert error["description"] == "tasks[1].dependencies: unknown task 'nope'"


def test_a_turn_of_one_submit_commits_it_before_its_reply(turn: Turn) -> None:
    submit = turn.request(b"client", "submit", tasks=[{"handler": "echo"}])
    sent = turn.run(T0)
    assert [m.command for _, m in sent] == [Command.REPLY] and turn.commits() == 1
    [entry] = turn.replies()[submit]["tasks"]
    assert turn.store.committed() == {entry["id"]: "pending"}
    assert assert_every_answer_was_durable(turn.events) == 1


def dispatched(sent: list[tuple[bytes, protocol.Message]]) -> list[str]:
    return [e["task_id"] for _, m in sent if m.command is Command.DISPATCH for e in m.body["tasks"]]


def test_outcomes_are_acknowledged_together_10_ms_after_the_first_once_committed(
    turn: Turn,
) -> None:
    register(turn, slots=3)
    turn.request(b"client", "submit", tasks=[{"handler": "echo"}] * 3)
    first, second, third = dispatched(turn.run(T0))
    # Each outcome comes with a submit whose reply commits it at once: no ACK goes with
    # those commits, and the loop sleeps until the first outcome's ACK is due.
    for i, task_id in enumerate((first, second)):
        turn.queue(WORKER, Command.DONE, done(task_id))
        turn.request(b"client", "submit", tasks=[{"handler": "nobody"}])
        sent = turn.run(T0 + 0.002 * (i + 1))
        assert [m.command for _, m in sent] == [Command.REPLY]
    assert turn.server._poll_timeout_ms() <= 9  # 8 ms, rounded up
    assert turn.run(T0 + 0.011) == []  # 9 ms after the first outcome
    [(address, ack)] = turn.run(T0 + 0.0125)
    assert address == WORKER and ack == protocol.Message(
        Command.ACK, {"results": [[first, 1], [second, 1]]}
    )
    assert turn.run(T0 + 0.1) == []  # acknowledged once
    # An outcome whose commit is not due yet waits for it, past its own 10 ms if need be,
    # without the loop waking for the ACK before the commit.
    turn.queue(WORKER, Command.DONE, done(third))
    commits = turn.commits()
    assert turn.run(T0 + 1) == [] and turn.commits() == commits
    assert turn.server._poll_timeout_ms() >= 9  # the commit's delay, not a due ACK
    assert turn.run(T0 + 1 + PROMISED_COMMIT_DELAY) == [
        (WORKER, protocol.Message(Command.ACK, {"results": [[third, 1]]}))
    ]
    assert turn.commits() == commits + 1
    assert_every_answer_was_durable(turn.events)


def test_a_clock_that_goes_back_holds_no_commit_and_no_ack(turn: Turn) -> None:
    register(turn)
    turn.request(b"client", "submit", tasks=[{"handler": "echo"}])
    [task_id] = dispatched(turn.run(T0))
    commits = turn.commits()
    turn.queue(WORKER, Command.DONE, done(task_id))
    assert turn.run(T0 + 1) == []
    # The clock is set an hour back: the commit and the ACK do not wait for it to catch up.
    assert turn.run(T0 + 1 - 3600) == [
        (WORKER, protocol.Message(Command.ACK, {"results": [[task_id, 1]]}))
    ]
    assert turn.commits() == commits + 1
    assert_every_answer_was_durable(turn.events)


def test_pruning_forgets_at_most_1000_finished_tasks_a_second(turn: Turn) -> None:
    core = turn.server.core
    ids = [e["id"] for e in edge.submit(core, [{"handler": "nobody"}] * 2500, T0)]
    for task_id in ids:
        core.cancel(task_id, T0)
    turn.run(T0)
    turn.run(T0 + PROMISED_COMMIT_DELAY)
    assert len(turn.store.committed()) == 2500
    retained = T0 + turn.server.settings.retention
    left = []
    for at in (retained + 1, retained + 1.5, retained + 1.98, retained + 2, retained + 3.5):
        turn.run(at)
        turn.run(at + PROMISED_COMMIT_DELAY)  # its deletions are committed with the delay
        left.append(len(core.tasks))
    assert left == [1500, 1500, 1500, 500, 0]
    assert turn.store.committed() == {}


# -- bounds: what one peer can make the broker hold ---------------------------------------


def errors(turn: Turn, sent: list[tuple[bytes, protocol.Message]]) -> list[int]:
    return [m.body["error"]["status"] for _, m in sent if m.command is Command.REPLY
            and not m.body["ok"]]  # fmt: skip


def test_args_or_a_result_over_the_payload_limit_are_refused_at_the_edge(
    tmp_path: Path,
) -> None:
    store = CheckedStore("sqlite", tmp_path)
    store.load()
    settings = Settings(broker="tcp://127.0.0.1:0", ping_interval=60.0, max_payload=100)
    turn = Turn(store, [], settings)
    register(turn)
    big = turn.request(b"client", "submit", tasks=[{"handler": "echo", "args": b"x" * 101}])
    batch = turn.request(b"client", "submit", tasks=[{"handler": "echo"}] * 2
                         + [{"handler": "echo", "args": b"x" * 101}])  # fmt: skip
    fits = turn.request(b"client", "submit", tasks=[{"handler": "echo", "args": b"x" * 100}])
    sent = turn.run()
    replies = {m.body["req"]: m.body for _, m in sent if m.command is Command.REPLY}
    assert replies[big]["error"]["status"] == 413
    assert replies[big]["error"]["description"] == "args is 101 bytes, more than 100"
    assert replies[batch]["error"]["description"] == "tasks[2].args is 101 bytes, more than 100"
    [task_id] = [t["id"] for t in replies[fits]["value"]["tasks"]]
    assert len(turn.store.committed()) == 1  # nothing of the refused submits was kept
    # A result over the limit fails its run, saying why; the broker stores none of it.
    turn.queue(WORKER, Command.DONE, done(task_id, result=b"r" * 101))
    turn.run(T0 + 1)
    task = turn.server.core.get(task_id)
    assert (task.status.value, task.result) == ("failed", None)
    assert task.error == "its result is 101 bytes, more than --max-payload (100)"
    store.close()


def test_a_peer_that_does_not_read_gets_errors_for_large_replies_until_it_does(
    turn: Turn,
) -> None:
    core = turn.server.core
    [record] = edge.submit(core, [{"handler": "nobody", "args": b"a" * 40_000}], T0)
    outflow = Outflow(turn.wire, peer_bytes=100_000)  # type: ignore[arg-type]
    turn.server._outflow = outflow
    reader, slow = b"reader", b"slow"
    # The slow peer's first three replies go out, and stay unwritten (its trackers are not
    # done): 120,000 bytes, over its bound; the next large reply is refused, a small one
    # still goes, and another peer's large reply too.
    asked = [turn.request(slow, "get", id=record["id"]) for _ in range(4)]
    small = turn.request(slow, "health")
    other = turn.request(reader, "get", id=record["id"])
    sent = turn.run()
    replies = {m.body["req"]: m.body for _, m in sent if m.command is Command.REPLY}
    assert [replies[req]["ok"] for req in asked] == [True, True, True, False]
    assert replies[asked[3]]["error"]["status"] == 413
    assert "bytes of replies you have not read" in replies[asked[3]]["error"]["description"]
    assert replies[small]["ok"] and replies[other]["ok"]
    assert outflow.queued(slow) == 3 * len(protocol.reply(ops_reply(replies[asked[0]]))[-1])
    assert core.refused_replies == 1
    # Once ZeroMQ has written them, the peer gets its replies again.
    for tracker in turn.wire.trackers:
        tracker.done = True
    again = turn.request(slow, "get", id=record["id"])
    sent = turn.run(T0 + 1)
    assert [m.body["ok"] for _, m in sent if m.body.get("req") == again] == [True]
    assert outflow.queued(slow) > 0 and outflow.queued(reader) == 0


def ops_reply(body: dict[str, Any]) -> ops.Reply:
    return ops.Reply(body["req"], body.get("value"))


def test_a_turn_packs_about_its_byte_budget_of_replies_and_the_next_turn_the_rest(
    turn: Turn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("broker.server.TURN_REPLY_BYTES", 100_000)
    core = turn.server.core
    [record] = edge.submit(core, [{"handler": "nobody", "args": b"a" * 30_000}], T0)
    for i in range(10):
        turn.request(b"peer-%d" % i, "get", id=record["id"])
    # Four replies fill the budget: the turn takes no more messages in.
    assert len(turn.run()) == 4 and len(turn.wire.inbox) == 6
    assert len(turn.run()) == 4 and len(turn.run()) == 2
    # Ten answers due at once (waiters of one task that ends): about the budget a turn, and
    # the loop does not sleep while some are left.
    waits = [turn.request(b"waiter-%d" % i, "wait", id=record["id"], timeout=60)
             for i in range(10)]  # fmt: skip
    assert turn.run() == []
    core.cancel(record["id"], T0)
    assert len(turn.run()) == 4 and turn.server._poll_timeout_ms() == 0
    assert len(turn.run()) == 4 and turn.server._poll_timeout_ms() == 0
    assert len(turn.run()) == 2 and turn.server._poll_timeout_ms() > 0
    assert sorted(req for req in turn.replies() if req in waits) == waits
    assert_every_answer_was_durable(turn.events)


def submit_entries(turn: Turn, req: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = turn.replies()[req]["tasks"]
    return entries


def test_a_large_separate_submit_comes_in_a_slice_a_turn_after_the_workers_runs_went_out(
    turn: Turn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However fast the machine: one slice a turn, so each turn's order can be read.
    monkeypatch.setattr("broker.server.INTAKE_SECONDS", 0.0)
    register(turn)
    first = turn.request(b"client", "submit", tasks=[{"handler": "echo"}])
    turn.run(T0)
    [running] = dispatched(turn.sent())
    assert [entry["id"] for entry in submit_entries(turn, first)] == [running]
    # 100 tasks, one of them refused (its entry an error, the others taken as they come).
    specs: list[dict[str, Any]] = [{"handler": "echo", "args": b"%d" % i} for i in range(100)]
    specs[70]["dependencies"] = ["nope"]
    batch = turn.request(b"client", "submit", tasks=specs, separate=True, notify=True)
    assert turn.run(T0 + 0.001) == [] and turn.server._poll_timeout_ms() == 0
    assert len(turn.server.core.index.tasks) == 1 + SLICE
    # The worker's outcome, read while the submit is still coming in: its next run goes out
    # before the next slice is taken in, and the ACK rides on it once committed.
    turn.queue(WORKER, Command.DONE, done(running))
    sent = turn.run(T0 + 0.002)
    assert [m.command for _, m in sent] == [Command.DISPATCH]
    assert len(turn.server.core.index.tasks) == 1 + 2 * SLICE
    turn.run(T0 + 0.003)
    assert batch not in turn.replies() and turn.server._poll_timeout_ms() == 0
    # The last slice: the reply, once every task of the submit is committed.
    turn.run(T0 + 0.004)
    entries = submit_entries(turn, batch)
    assert len(entries) == 100 and "nope" in entries[70]["error"]["description"]
    ids = [entry["id"] for entry in entries if "id" in entry]
    assert len(ids) == 99 and ids == sorted(ids)  # taken in the order sent
    assert set(ids) <= set(turn.store.committed())
    assert turn.run(T0 + 0.005) == [] and turn.server._poll_timeout_ms() > 0
    assert_every_answer_was_durable(turn.events)


def test_a_clients_submits_keep_their_order_behind_a_large_one_and_others_go_at_once(
    turn: Turn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("broker.server.INTAKE_SECONDS", 0.0)
    large = [{"handler": "echo"} for _ in range(3 * SLICE)]
    batch = turn.request(b"client", "submit", tasks=large, separate=True)
    small = turn.request(b"client", "submit", tasks=[{"handler": "echo"}])
    other = turn.request(b"other", "submit", tasks=[{"handler": "echo"}])
    health = turn.request(b"client", "health")
    turn.run(T0)
    # The other client's submit, and this client's request that is not a submit, are
    # answered at once; this client's small submit waits behind its large one.
    assert set(turn.replies()) == {other, health}
    while small not in turn.replies():
        turn.run()
    before = [entry["id"] for entry in submit_entries(turn, batch)]
    [after] = submit_entries(turn, small)
    assert max(before) < after["id"] and submit_entries(turn, other)[0]["id"] < min(before)
    assert_every_answer_was_durable(turn.events)


def test_a_turn_reads_no_more_messages_once_its_queued_submits_hold_the_most_tasks(
    turn: Turn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("broker.server.INTAKE_SECONDS", 0.0)
    monkeypatch.setattr("broker.server.MAX_INTAKE", 2 * SLICE)
    requests = [
        turn.request(b"client-%d" % i, "submit", tasks=[{"handler": "echo"}] * (SLICE + 8),
                     separate=True)
        for i in range(3)
    ]  # fmt: skip
    turn.run(T0)
    # Two read (80 tasks queued, the bound): the third waits on the socket. The turn took
    # in down below the bound, then stopped.
    assert len(turn.wire.inbox) == 1
    assert len(turn.server.core.index.tasks) == SLICE
    while len(turn.replies()) < 3:
        turn.run()
    assert sorted(turn.replies()) == requests
    assert len(turn.server.core.index.tasks) == 3 * (SLICE + 8)
    assert_every_answer_was_durable(turn.events)


def test_tasks_taken_in_from_a_queued_submit_are_committed_a_few_hundred_at_a_time(
    turn: Turn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However slow the machine: only the count of tasks stops a turn's intake here.
    monkeypatch.setattr("broker.server.INTAKE_SECONDS", 60.0)
    monkeypatch.setattr("broker.server.INTAKE_COMMIT_TASKS", 2 * SLICE)
    batch = turn.request(b"client", "submit", tasks=[{"handler": "echo"}] * (5 * SLICE),
                         separate=True)  # fmt: skip
    # Each turn stops taking in once two slices wait for a commit, and commits them though
    # no reply is due yet: another client's reply would share a commit of no more.
    assert turn.run(T0) == [] and turn.commits() == 1
    assert len(turn.store.committed()) == 2 * SLICE
    assert turn.run(T0 + 0.001) == [] and turn.commits() == 2
    assert len(turn.store.committed()) == 4 * SLICE
    turn.run(T0 + 0.002)
    assert turn.commits() == 3 and len(submit_entries(turn, batch)) == 5 * SLICE
    assert_every_answer_was_durable(turn.events)
