"""Generated frames from many peers at once against a real broker and a real worker.

Each example is a batch: eight DEALER peers, each with its own socket and identity and
its own thread, send the messages ``tests.frames`` draws for them (valid messages of
every command and op, mutated field by field near and beyond every bound, and messages
the protocol does not allow), all at once, while reading what the broker sends back.
After every batch:

- every request with a readable number got exactly one reply, none a 500;
- the broker and the worker still run, ``health`` answers, and an honest client's
  ``echo`` task returns its argument;
- the broker's log holds no traceback (an exception the loop caught is a bug even
  though the broker survives it).

``make test`` runs a few batches, the same ones every time; ``make fuzz-frames`` runs
``ZMQS_FUZZ_FRAMES`` batches drawn afresh, and prints how many messages it sent.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings

from common import protocol
from common.client import Client
from common.limits import MAX_PRIORITY
from tests import frames
from tests.conftest import Stack, alive

#: Peers sending at once, each from its own thread and socket.
PEERS = 8
#: Most messages one peer sends in a batch.
MESSAGES = 10
#: Batches (hypothesis examples); ``make fuzz-frames`` raises it.
BATCHES = int(os.environ.get("ZMQS_FUZZ_FRAMES", "40"))
#: Seconds a batch's answers and the health checks may take, however loaded the machine.
PATIENCE = 30.0
#: What the broker logs when something it did not expect raised.
BUGS = ("Traceback", "error handling a message", "the broker hit a bug")
#: Ids the fuzzed submits created, shared by the peers (the most recent ones).
KEEP_TASKS = 500


@dataclass
class Outcome:
    """What one peer saw in one batch."""

    sent: int = 0
    #: The frames sent, in order: the batch's reproducer.
    frames: list[list[bytes]] = field(default_factory=list)
    expected: Counter[int] = field(default_factory=Counter)
    answered: Counter[int] = field(default_factory=Counter)
    #: Replies by status (200 for a value).
    statuses: Counter[int] = field(default_factory=Counter)
    #: Requests (as sent) answered with a 500.
    failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Peer:
    """One DEALER socket with its identity, and the runs the broker dispatched to it."""

    def __init__(self, index: int, endpoint: str, tasks: list[str], lock: threading.Lock) -> None:
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, f"fuzz-peer-{index}".encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDTIMEO, int(PATIENCE * 1000))
        self.socket.connect(endpoint)
        self.runs: list[tuple[str, int]] = []
        self.tasks = tasks
        self.lock = lock
        self.numbers = itertools.count(1_000_000)

    def close(self) -> None:
        self.socket.close(linger=0)

    def batch(self, drafts: list[frames.Draft]) -> Outcome:
        """Send ``drafts`` and read until every request is answered or patience runs out."""
        out = Outcome()
        with self.lock:
            known = frames.Known(list(self.tasks), self.runs)
        ops: dict[int, str] = {}
        for draft in frames.flatten(drafts):
            sent = frames.frames_of(draft, known, lambda: next(self.numbers))
            req = frames.expects_reply(sent)
            if req is not None:
                out.expected[req] += 1
                ops[req] = repr(sent[2][:300])
            try:
                self.socket.send_multipart(sent)
            except zmq.Again:
                out.problems.append("the broker took no more messages")
                return out
            out.sent += 1
            out.frames.append(sent)
            self._read(out, ops, known, 0)
        deadline = time.monotonic() + frames.SHORT_HOLD + PATIENCE
        while out.answered != out.expected and time.monotonic() < deadline:
            self._read(out, ops, known, 100)
        for req, count in (out.expected - out.answered).items():
            out.problems.append(f"request {req} got {out.answered[req]} of {count} replies")
        return out

    def _read(self, out: Outcome, ops: dict[int, str], known: frames.Known, wait_ms: int) -> None:
        while self.socket.poll(wait_ms):
            wait_ms = 0
            message = protocol.unpack(self.socket.recv_multipart())
            body = message.body
            if message.command is protocol.Command.DISPATCH:
                self.runs.extend((t["task_id"], t["attempt"]) for t in body["tasks"])
                del self.runs[:-50]
            if message.command is not protocol.Command.REPLY:
                continue
            req = body["req"]
            out.answered[req] += 1
            out.statuses[200 if body["ok"] else body["error"]["status"]] += 1
            if out.answered[req] > out.expected[req]:
                out.problems.append(f"request {req} was answered unasked or twice: {body}")
            if not body["ok"] and body["error"]["status"] >= 500:
                out.failures.append(f"{ops.get(req)} -> {body['error']}")
            value = body.get("value")
            if (
                body["ok"]
                and isinstance(value, dict)
                and b"submit" in ops.get(req, "").encode()
                and isinstance(value.get("tasks"), list)
            ):
                ids = [t["id"] for t in value["tasks"]]
                known.tasks.extend(ids)
                with self.lock:
                    self.tasks.extend(ids)
                    del self.tasks[:-KEEP_TASKS]


class LogReader:
    """The lines a process logged since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new(self) -> str:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        return data.decode(errors="replace")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# A failing batch is large; its frames go to a file instead.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_no_frames_from_many_peers_break_the_broker(stack: Stack, tmp_path: Path) -> None:
    broker = stack.start_broker()
    worker = stack.start_worker(worker_id="real-worker", slots=2)
    stack.wait_workers("real-worker")
    honest = Client(stack.endpoint, timeout=PATIENCE)
    log = LogReader(broker.log_path)
    tasks: list[str] = []
    lock = threading.Lock()
    peers = [Peer(i, stack.endpoint, tasks, lock) for i in range(PEERS)]
    pool = ThreadPoolExecutor(PEERS)
    totals = Counter[str]()
    statuses = Counter[int]()
    began, rss_before = time.monotonic(), rss_kib(broker.pid)

    def check_broker(context: str) -> None:
        assert alive(broker.pid), f"the broker died {context}:\n{log.new()[-3000:]}"
        assert alive(worker.pid), f"the worker died {context}"
        assert honest.health(timeout=PATIENCE)["status"] == "ok"
        payload = f"honest {totals['batches']}".encode()
        result = honest.run(frames.HONEST_HANDLER, payload, wait=PATIENCE, priority=MAX_PRIORITY)
        assert result == payload, f"an honest echo answered {result!r} {context}"
        logged = log.new()
        bugs = [line for line in logged.splitlines() if any(bug in line for bug in BUGS)]
        assert not bugs, f"the broker logged a bug {context}:\n{logged[-6000:]}"

    @settings(
        max_examples=BATCHES,
        deadline=None,
        # make test sends the same batches every time; make fuzz-frames draws new ones.
        derandomize="ZMQS_FUZZ_FRAMES" not in os.environ,
        database=None,
        # No shrinking: the broker keeps what earlier batches did, so a smaller batch need
        # not fail again. The failing batch's frames are saved to a file instead.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(st.lists(frames.drafts(), max_size=MESSAGES), min_size=PEERS, max_size=PEERS))
    def batch(drafts: list[list[frames.Draft]]) -> None:
        outcomes = list(pool.map(Peer.batch, peers, drafts))
        totals["batches"] += 1
        totals["messages"] += sum(o.sent for o in outcomes)
        totals["requests"] += sum(sum(o.expected.values()) for o in outcomes)
        for o in outcomes:
            statuses.update(o.statuses)
        try:
            check_broker(f"after batch {totals['batches']}")
            failures = [f for o in outcomes for f in o.failures]
            assert not failures, f"the broker answered 500: {failures[:5]}"
            problems = [p for o in outcomes for p in o.problems]
            assert not problems, problems[:5]
        except AssertionError as exc:
            saved = tmp_path / f"batch-{totals['batches']}.txt"
            saved.write_text(
                "".join(f"peer {i}: {f!r}\n" for i, o in enumerate(outcomes) for f in o.frames)
            )
            raise AssertionError(f"{exc}\n(the frames each peer sent: {saved})") from None

    try:
        batch()
        check_broker("at the end")
    finally:
        elapsed = time.monotonic() - began
        print(
            f"\nframe fuzz: {totals['batches']} batches, {totals['messages']} messages "
            f"({totals['requests']} requests owed a reply) from {PEERS} peers in {elapsed:.0f} s; "
            f"replies by status {dict(sorted(statuses.items()))}; "
            f"broker RSS {rss_before // 1024} -> {rss_kib(broker.pid) // 1024} MiB"
            if alive(broker.pid)
            else ""
        )
        pool.shutdown(wait=True)
        for peer in peers:
            peer.close()
        honest.close()
