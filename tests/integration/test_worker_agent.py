"""A real ``zmq-worker`` process against a fake broker: a ROUTER socket driven by the test.

Every wait polls for a message with a generous deadline; nothing sleeps a fixed
time. Worker processes are killed by pid at teardown, and sockets close with
linger 0, so a failing test cannot hang the suite or leak a process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import zmq

from common import protocol
from common.models import TaskStatus
from common.protocol import Command, Message
from tests.conftest import wait_for
from worker.agent import Agent
from worker.runner import Outcome, Runner

#: Seconds any wait for a message may take before it counts as a failure.
PATIENCE = 15.0
#: Repository root: the worker runs from here.
ROOT = Path(__file__).resolve().parents[2]
#: A WELCOME that makes the worker patient: 30 s × 3 of silence before it gives up.
PATIENT = {"worker_id": "w1", "ping_interval": 30.0, "liveness": 3}


@dataclass
class FakeBroker:
    """The broker's ROUTER socket, with helpers to receive and send ZS1 messages."""

    socket: zmq.Socket[bytes]
    endpoint: str
    #: Every message received, in order, as (identity, message).
    seen: list[tuple[bytes, Message]] = field(default_factory=list)

    def recv(self, timeout: float = PATIENCE) -> tuple[bytes, Message]:
        if not self.socket.poll(int(timeout * 1000), zmq.POLLIN):
            raise AssertionError(f"no message within {timeout} s; seen {self.commands()}")
        identity, *frames = self.socket.recv_multipart()
        message = protocol.unpack(frames)
        self.seen.append((identity, message))
        return identity, message

    def expect(self, command: Command, timeout: float = PATIENCE) -> tuple[bytes, Message]:
        """The next message with this command, skipping (but recording) others."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {command.name} within {timeout} s; seen {self.commands()}"
                )
            identity, message = self.recv(remaining)
            if message.command is command:
                return identity, message

    def send(self, identity: bytes, command: Command, body: dict[str, Any] | None = None) -> None:
        self.socket.send_multipart([identity, *protocol.pack(command, body)])

    def send_raw(self, identity: bytes, frames: list[bytes]) -> None:
        self.socket.send_multipart([identity, *frames])

    def commands(self) -> list[str]:
        return [message.command.name for _, message in self.seen]


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = ctx.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield FakeBroker(socket, f"tcp://127.0.0.1:{port}")
    finally:
        socket.close(linger=0)
        ctx.term()


def worker_command(script: bool) -> list[str]:
    """``zmq-worker`` (the console script next to this Python) or ``python -m worker``."""
    if script:
        path = Path(sys.executable).with_name("zmq-worker")
        assert path.exists(), f"{path} is missing: is the package installed in this venv?"
        return [str(path)]
    return [sys.executable, "-m", "worker"]


StartWorker = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def start_worker(broker: FakeBroker, tmp_path: Path) -> Iterator[StartWorker]:
    """Start worker processes connected to the fake broker; kill them all by pid afterwards."""
    started: list[tuple[subprocess.Popen[bytes], IO[bytes], Path]] = []

    def start(
        *flags: str, script: bool = False, pythonpath: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker-{len(started)}.log"
        log = log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQS_")}
        if pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
        command = [
            *worker_command(script),
            "--broker",
            broker.endpoint,
            "--id",
            "w1",
            "--concurrency",
            "2",
            "--log-level",
            "DEBUG",
            *flags,
        ]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        started.append((proc, log, log_path))
        return proc

    yield start
    for proc, log, log_path in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(PATIENCE)
        log.close()
        # Shown by pytest only when the test failed.
        print(f"--- {log_path.name} (exit {proc.returncode}) ---\n{log_path.read_text()}")


def register(
    broker: FakeBroker, start_worker: StartWorker, *flags: str, welcome: dict[str, Any] = PATIENT
) -> bytes:
    """Start a worker, take its READY, welcome it (patiently by default); returns its
    identity."""
    start_worker(*flags)
    identity, _ = broker.expect(Command.READY)
    broker.send(identity, Command.WELCOME, welcome)
    return identity


def task(task_id: str, handler: str, args: bytes, timeout: float | None = None) -> dict[str, Any]:
    return {"task_id": task_id, "attempt": 1, "handler": handler, "args": args, "timeout": timeout}


def done_results(message: Message) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = message.body["results"]
    return results


# -- tests -----------------------------------------------------------------------------


def test_worker_registers_with_its_handlers_and_resources(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # when a worker starts with extra tags and resources
    proc = start_worker("--capabilities", "gpu,ssd", "--cpu", "2", "--memory", "0")
    # then its READY describes it
    _, ready = broker.expect(Command.READY)
    body = ready.body
    assert body["id"] == "w1"
    assert body["slots"] == 2
    assert {"echo", "sleep", "fibonacci", "prime_factorization", "gpu", "ssd"} <= set(
        body["capabilities"]
    )
    assert body["tags"] == ["gpu", "ssd"]  # which of them are tags, not handlers
    assert body["resources"] == {"cpu": 2.0}  # zero amounts are not declared
    assert body["running"] == []
    assert body["pid"] == proc.pid
    assert isinstance(body["host"], str) and body["host"]


def test_dispatched_echo_comes_back_in_done(broker: FakeBroker, start_worker: StartWorker) -> None:
    # given a registered worker
    identity = register(broker, start_worker)
    payload = bytes(range(256)) * 4
    # when the broker dispatches echo
    broker.send(identity, Command.DISPATCH, {"tasks": [task("t1", "echo", payload)]})
    # then DONE reports it completed with the same bytes
    _, done = broker.expect(Command.DONE)
    assert done_results(done) == [
        {"task_id": "t1", "attempt": 1, "status": "completed", "result": payload, "error": None}
    ]


def test_a_result_over_the_brokers_payload_limit_is_reported_as_a_failed_run(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given a worker welcomed by a broker that takes results of 1,000 bytes at most
    identity = register(broker, start_worker, welcome={**PATIENT, "max_payload": 1000})
    # when one run's result is over the limit and another's is not
    tasks = [task("big", "echo", b"x" * 1001), task("fits", "echo", b"x" * 1000)]
    broker.send(identity, Command.DISPATCH, {"tasks": tasks})
    # then the first is reported failed, saying why, and the second as it ended
    results: dict[str, dict[str, Any]] = {}
    while len(results) < 2:
        _, done = broker.expect(Command.DONE)
        results.update((r["task_id"], r) for r in done_results(done))
    assert (results["big"]["status"], results["big"]["result"]) == ("failed", None)
    assert results["big"]["error"] == "its result is 1001 bytes, more than --max-payload (1000)"
    assert (results["fits"]["status"], results["fits"]["result"]) == ("completed", b"x" * 1000)


def test_ping_gets_pong_and_malformed_messages_are_dropped(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given a registered worker
    identity = register(broker, start_worker)
    # when the broker sends garbage of every kind
    broker.send_raw(identity, [b"hello"])
    broker.send_raw(identity, [b"ZS9", b"PING", b"\x80"])
    broker.send_raw(identity, [b"ZS1", b"NOPE", b"\x80"])
    broker.send_raw(identity, [b"ZS1", b"DISPATCH", b"\xc1"])
    broker.send(identity, Command.DISPATCH, {"tasks": "not a list"})
    broker.send(identity, Command.ACK, {"results": [["x"], 7]})
    # then the worker is still there and answers a ping
    broker.send(identity, Command.PING)
    broker.expect(Command.PONG)
    assert Command.DONE.name not in broker.commands()


def test_a_malformed_task_fails_instead_of_hanging(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    identity = register(broker, start_worker)
    broker.send(
        identity,
        Command.DISPATCH,
        {"tasks": [{"task_id": "m", "attempt": 1, "handler": 42}, task("u", "nope", b"")]},
    )
    results: dict[str, dict[str, Any]] = {}
    while len(results) < 2:
        _, done = broker.expect(Command.DONE)
        results.update({r["task_id"]: r for r in done_results(done)})
    assert results["m"]["status"] == "failed"
    assert "malformed DISPATCH: tasks[0].handler must be a string" in results["m"]["error"]
    assert results["u"]["error"] == "unknown handler 'nope'"


def test_unacked_outcomes_are_sent_again_after_registering_again(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given an outcome the broker received but did not acknowledge
    identity = register(broker, start_worker)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("t1", "echo", b"keep me")]})
    _, first = broker.expect(Command.DONE)
    # when the broker asks the worker to register again, and welcomes it
    broker.send(identity, Command.RESYNC)
    identity, ready = broker.expect(Command.READY)
    broker.send(identity, Command.WELCOME, PATIENT)
    # then it still claims the lease, so the broker keeps it for the outcome
    assert ready.body["running"] == [{"task_id": "t1", "attempt": 1}]
    # and the outcome comes again
    _, again = broker.expect(Command.DONE)
    assert done_results(again) == done_results(first)
    # and once acknowledged, it is not sent after the next registration
    broker.send(identity, Command.ACK, {"results": [["t1", 1]]})
    broker.send(identity, Command.RESYNC)
    identity, ready = broker.expect(Command.READY)
    assert ready.body["running"] == []
    broker.send(identity, Command.WELCOME, PATIENT)
    broker.send(identity, Command.PING)
    # (a resent DONE would come before the PONG: one connection keeps order)
    _, reply = broker.recv()
    assert reply.command is Command.PONG


def test_a_dispatch_may_carry_the_acks_of_earlier_outcomes(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given a worker that says it takes ACKs in a DISPATCH, and an outcome not acknowledged
    identity = register(broker, start_worker)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("t1", "echo", b"one")]})
    broker.expect(Command.DONE)
    broker.send(identity, Command.RESYNC)
    identity, ready = broker.expect(Command.READY)
    assert ready.body["acks_in_dispatch"] is True
    assert ready.body["running"] == [{"task_id": "t1", "attempt": 1}]
    broker.send(identity, Command.WELCOME, PATIENT)
    broker.expect(Command.DONE)  # sent again: still not acknowledged
    # when the next DISPATCH acknowledges it (and one with a malformed ack still runs)
    broker.send(identity, Command.DISPATCH,
                {"tasks": [task("t2", "echo", b"two")], "results": [["t1", 1]]})  # fmt: skip
    broker.expect(Command.DONE)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("t3", "echo", b"3")], "results": 7})
    _, third = broker.expect(Command.DONE)
    assert [r["task_id"] for r in third.body["results"]] == ["t3"]
    # then the next registration claims t2 and t3, not t1
    broker.send(identity, Command.RESYNC)
    identity, ready = broker.expect(Command.READY)
    claimed = sorted(r["task_id"] for r in ready.body["running"])
    assert claimed == ["t2", "t3"]


def test_a_dispatch_acknowledges_nothing_with_an_ack_that_is_not_a_run(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given two outcomes not acknowledged
    identity = register(broker, start_worker)
    for name in ("t1", "t2"):
        broker.send(identity, Command.DISPATCH, {"tasks": [task(name, "echo", b"x")]})
        broker.expect(Command.DONE)
    # when DISPATCHes acknowledge them with an attempt that is a boolean, not an integer,
    # and beside a malformed entry
    broker.send(identity, Command.DISPATCH,
                {"tasks": [task("t3", "echo", b"3")], "results": [["t1", True]]})  # fmt: skip
    broker.expect(Command.DONE)
    acks = [["t2", 1], ["t 1", 1]]
    broker.send(identity, Command.DISPATCH, {"tasks": [task("t4", "echo", b"4")], "results": acks})
    broker.expect(Command.DONE)
    # then neither counts: the next registration still claims both (a malformed list of
    # acknowledgements is dropped whole, as before one of its runs was looked up)
    broker.send(identity, Command.RESYNC)
    _, ready = broker.expect(Command.READY)
    assert sorted(r["task_id"] for r in ready.body["running"]) == ["t1", "t2", "t3", "t4"]


def test_a_dispatch_acknowledging_a_run_it_sends_again_runs_it_again(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given a run whose outcome is not acknowledged
    identity = register(broker, start_worker)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("t1", "echo", b"one")]})
    broker.expect(Command.DONE)
    # when the same run comes again: alone, then with its acknowledgement
    broker.send(identity, Command.DISPATCH, {"tasks": [task("t1", "echo", b"two")]})
    broker.send(identity, Command.DISPATCH,
                {"tasks": [task("t1", "echo", b"three")], "results": [["t1", 1]]})  # fmt: skip
    # then the first is not run (its outcome is still owed), and the second is: the
    # acknowledgements a DISPATCH carries count before the runs it starts
    _, done = broker.expect(Command.DONE)
    assert [(r["task_id"], r["result"]) for r in done_results(done)] == [("t1", b"three")]


def test_cancel_of_a_sleep_reports_cancelled(broker: FakeBroker, start_worker: StartWorker) -> None:
    # given a long sleep running on the worker
    identity = register(broker, start_worker)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("nap", "sleep", b'{"seconds": 600}')]})
    # when the broker cancels it
    broker.send(identity, Command.CANCEL, {"task_ids": ["nap"]})
    # then DONE reports it cancelled
    _, done = broker.expect(Command.DONE)
    assert done_results(done) == [
        {"task_id": "nap", "attempt": 1, "status": "cancelled", "result": None, "error": None}
    ]


def test_worker_reconnects_when_the_broker_goes_silent(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given a worker told to expect a ping every 0.2 s, running a long task
    start_worker()
    identity, _ = broker.expect(Command.READY)
    broker.send(identity, Command.WELCOME, {**PATIENT, "ping_interval": 0.2, "liveness": 2})
    broker.send(identity, Command.DISPATCH, {"tasks": [task("long", "sleep", b'{"seconds": 600}')]})
    # when the broker stops talking
    # then the worker comes back on a new connection, reporting the task as running
    new_identity, ready = broker.expect(Command.READY)
    assert new_identity != identity
    assert ready.body["running"] == [{"task_id": "long", "attempt": 1}]
    # and it works as before once welcomed
    broker.send(new_identity, Command.WELCOME, PATIENT)
    broker.send(new_identity, Command.CANCEL, {"task_ids": ["long"]})
    _, done = broker.expect(Command.DONE)
    assert done_results(done)[0]["status"] == "cancelled"


def test_a_broker_host_that_does_not_resolve_is_named_in_the_log(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    # given a worker pointed at a name that never resolves (.invalid is reserved for that)
    proc = start_worker("--broker", "tcp://no-such-host.invalid:5555")
    log = tmp_path / "worker-0.log"

    # when it has waited its liveness window for a broker, then its warning says why
    line = wait_for(
        lambda: next((ln for ln in log.read_text().splitlines() if "does not resolve" in ln), None),
        PATIENCE,
        what="the warning that the broker's host does not resolve",
    )
    assert "no message from the broker at tcp://no-such-host.invalid:5555" in line, line
    assert "host 'no-such-host.invalid' does not resolve" in line, line
    assert proc.poll() is None  # and it keeps trying


def test_sigterm_drains_then_gives_back_what_outlasts_the_grace(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given a registered worker with a run that will outlast its grace
    proc = start_worker("--drain-grace", "0.3")
    identity, _ = broker.expect(Command.READY)
    broker.send(identity, Command.WELCOME, PATIENT)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("nap", "sleep", b'{"seconds": 600}')]})
    broker.send(identity, Command.PING)
    broker.expect(Command.PONG)  # the dispatch has been handled
    # when it is asked to stop
    proc.send_signal(signal.SIGTERM)
    # then it says it is draining, and when the grace is over BYE, without reporting the run
    # (the broker requeues it)
    broker.expect(Command.DRAIN)
    broker.expect(Command.BYE)
    assert Command.DONE.name not in broker.commands()
    # and exits 0 (the patience is generous: this is not a speed test)
    assert proc.wait(PATIENCE) == 0


def test_a_draining_worker_finishes_its_runs_and_gives_back_new_ones(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given a worker running a task that finishes well within its grace
    proc = start_worker("--drain-grace", "60")
    identity, _ = broker.expect(Command.READY)
    broker.send(identity, Command.WELCOME, PATIENT)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("short", "sleep", b'{"seconds": 1}')]})
    broker.send(identity, Command.PING)
    broker.expect(Command.PONG)
    # when it is stopped, and a dispatch sent before the broker heard it arrives
    proc.send_signal(signal.SIGTERM)
    broker.expect(Command.DRAIN)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("late", "echo", b"x")]})

    # then the late one is given back at once, the running one finishes and is reported
    # (maybe before the DRAIN, on a loaded machine: every DONE seen counts)
    def reported_so_far() -> dict[str, dict[str, Any]]:
        dones = [m for _, m in broker.seen if m.command is Command.DONE]
        return {r["task_id"]: r for done in dones for r in done_results(done)}

    while len(reported_so_far()) < 2:
        broker.expect(Command.DONE)
    reported = reported_so_far()
    assert reported["late"]["status"] == "cancelled"
    assert reported["short"]["status"] == "completed"
    # and it says BYE only once its outcomes are acknowledged
    assert proc.poll() is None
    assert Command.BYE.name not in broker.commands()
    broker.send(identity, Command.ACK, {"results": [["short", 1], ["late", 1]]})
    broker.expect(Command.BYE)
    assert proc.wait(PATIENCE) == 0


def test_a_second_signal_stops_a_draining_worker_at_once(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    proc = start_worker("--drain-grace", "600")
    identity, _ = broker.expect(Command.READY)
    broker.send(identity, Command.WELCOME, PATIENT)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("nap", "sleep", b'{"seconds": 600}')]})
    broker.send(identity, Command.PING)
    broker.expect(Command.PONG)
    proc.send_signal(signal.SIGINT)
    broker.expect(Command.DRAIN)
    proc.send_signal(signal.SIGINT)
    broker.expect(Command.BYE)
    assert proc.wait(PATIENCE) == 0


def test_process_pool_from_the_console_script(
    broker: FakeBroker, start_worker: StartWorker
) -> None:
    # given the zmq-worker script running handlers in child processes
    start_worker("--pool", "process", script=True)
    identity, _ = broker.expect(Command.READY)
    broker.send(identity, Command.WELCOME, PATIENT)
    # when CPU-bound work is dispatched, one task never finishing in time
    broker.send(
        identity,
        Command.DISPATCH,
        {
            "tasks": [
                task("fib", "fibonacci", b'{"n": 10}'),
                task("slow", "sleep", b'{"seconds": 600}', timeout=0.5),
            ]
        },
    )
    results: dict[str, dict[str, Any]] = {}
    while len(results) < 2:
        _, done = broker.expect(Command.DONE)
        results.update({r["task_id"]: r for r in done_results(done)})
    # then the results come back, and the timeout is enforced
    assert results["fib"]["result"] == b'{"n":10,"result":55}'
    assert results["slow"]["error"] == "timed out after 0.5 s"


def test_handlers_flag_loads_a_module_in_the_worker_and_its_children(
    broker: FakeBroker, start_worker: StartWorker, tmp_path: Path
) -> None:
    # given a module of custom handlers
    (tmp_path / "custom_handlers_for_test.py").write_text(
        "import os\n"
        "from worker import handler\n"
        "@handler('custom.shout')\n"
        "def shout(args: bytes) -> dict:\n"
        "    return {'text': args.decode().upper(), 'pid': os.getpid()}\n"
    )
    # when a process-pool worker loads it
    proc = start_worker(
        "--handlers", "custom_handlers_for_test", "--pool", "process", pythonpath=tmp_path
    )
    identity, ready = broker.expect(Command.READY)
    # then it offers the handler, and runs it in a child process
    assert "custom.shout" in ready.body["capabilities"]
    broker.send(identity, Command.WELCOME, PATIENT)
    broker.send(identity, Command.DISPATCH, {"tasks": [task("c", "custom.shout", b"hey")]})
    _, done = broker.expect(Command.DONE)
    result = json.loads(done_results(done)[0]["result"])
    assert result["text"] == "HEY"
    assert result["pid"] != proc.pid


def test_a_handler_module_that_cannot_load_stops_the_worker(start_worker: StartWorker) -> None:
    proc = start_worker("--handlers", "no_such_module_for_worker_tests")
    assert proc.wait(PATIENCE) == 1


def test_bad_flags_are_refused(start_worker: StartWorker) -> None:
    assert start_worker("--pool", "fiber").wait(PATIENCE) == 2
    assert start_worker("--cpu", "-1").wait(PATIENCE) == 2


def test_agent_retries_on_fresh_sockets_until_welcomed(broker: FakeBroker) -> None:
    # given an agent in this process that gives up on a silent broker after 0.1 s
    agent = Agent(
        endpoint=broker.endpoint,
        worker_id="w-in-process",
        slots=1,
        make_runner=lambda on_done: Runner("thread", 1, on_done),
        ping_interval=0.1,
        liveness=1,
        backoff_initial=0.05,
        backoff_max=0.1,
    )
    thread = threading.Thread(target=agent.run, name="agent")
    thread.start()
    try:
        # when the broker ignores its first three READYs
        identities = {broker.expect(Command.READY)[0] for _ in range(3)}
        # then each came on a new connection
        assert len(identities) == 3
        # and once welcomed (on whichever connection is current), it serves
        while True:
            identity, message = broker.recv()
            if message.command is Command.READY:
                broker.send(identity, Command.WELCOME, PATIENT)
                broker.send(identity, Command.PING)
            elif message.command is Command.PONG:
                break
    finally:
        agent.request_stop()
        thread.join(PATIENCE)
    assert not thread.is_alive()
    broker.expect(Command.BYE)


# -- reconnect back-off (an agent in this process) ----------------------------------------

#: Back-off of the in-process agents below: 0.02 s doubling to 0.16 s.
BACKOFF_INITIAL = 0.02
BACKOFF_MAX = 0.16
#: The delays an agent that is never welcomed chooses, in order (then 0.16 s for ever).
NEVER_WELCOMED = [0.02, 0.04, 0.08, 0.16, 0.16, 0.16]
#: A WELCOME that makes the worker give up after 0.05 s of silence.
HASTY = {"worker_id": "w1", "ping_interval": 0.05, "liveness": 1}
#: The agent's log line for a lost broker, with the delay it chose.
RECONNECTING = re.compile(r"reconnecting in (\S+) s$")
#: What ``agent_events`` lists for a WELCOME.
WELCOMED = "welcomed"


@pytest.fixture
def start_agent(broker: FakeBroker) -> Iterator[Callable[[], Agent]]:
    """Start an agent in a thread that gives up on a silent broker after 0.1 s; stop it after."""
    threads: list[tuple[Agent, threading.Thread]] = []

    def start() -> Agent:
        agent = Agent(
            endpoint=broker.endpoint,
            worker_id="w-in-process",
            slots=1,
            make_runner=lambda on_done: Runner("thread", 1, on_done),
            ping_interval=0.05,
            liveness=2,
            backoff_initial=BACKOFF_INITIAL,
            backoff_max=BACKOFF_MAX,
        )
        thread = threading.Thread(target=agent.run, name="agent")
        thread.start()
        threads.append((agent, thread))
        return agent

    yield start
    for agent, thread in threads:
        agent.request_stop()
        thread.join(PATIENCE)
        assert not thread.is_alive()


def agent_events(caplog: pytest.LogCaptureFixture) -> list[float | str]:
    """The agent's log so far: the delay it chose at each lost broker, and each WELCOME."""
    events: list[float | str] = []
    for record in list(caplog.records):
        if record.name != "worker.agent":
            continue
        message = record.getMessage()
        reconnecting = RECONNECTING.search(message)
        if reconnecting is not None:
            events.append(float(reconnecting.group(1)))
        elif message.startswith("registered"):
            events.append(WELCOMED)
    return events


def test_agent_backs_off_doubling_up_to_the_cap_while_never_welcomed(
    broker: FakeBroker, start_agent: Callable[[], Agent], caplog: pytest.LogCaptureFixture
) -> None:
    # given an agent backing off 0.02 s doubling to 0.16 s
    caplog.set_level(logging.INFO, logger="worker.agent")
    start_agent()
    # when the broker never answers its READYs
    wait_for(lambda: len(agent_events(caplog)) >= len(NEVER_WELCOMED), PATIENCE)
    # then the delays double from the first back-off and stay at the cap
    assert agent_events(caplog)[: len(NEVER_WELCOMED)] == NEVER_WELCOMED
    # and every try sends its READY on a new connection
    identities = [broker.expect(Command.READY)[0] for _ in range(len(NEVER_WELCOMED) + 1)]
    assert len(set(identities)) == len(identities)


def test_agent_retries_at_once_after_losing_a_broker_that_welcomed_it(
    broker: FakeBroker, start_agent: Callable[[], Agent], caplog: pytest.LogCaptureFixture
) -> None:
    # given an agent whose back-off has grown past its first value on a silent broker
    caplog.set_level(logging.INFO, logger="worker.agent")
    start_agent()
    wait_for(lambda: len(agent_events(caplog)) >= 3, PATIENCE)
    # when the broker welcomes it, then falls silent
    # (a WELCOME to a connection the agent has given up on already is lost, and the
    # next READY is welcomed instead; the registration is logged before that READY)
    welcomed: bytes | None = None
    while True:
        identity, _ = broker.expect(Command.READY)
        if WELCOMED in agent_events(caplog):
            break
        broker.send(identity, Command.WELCOME, HASTY)
        welcomed = identity
    # then it comes back on a new connection without waiting (0 s), and from there backs
    # off from the first value again (0.02 s), not from where it had got before the WELCOME
    assert identity != welcomed
    wait_for(lambda: len(after_welcome(agent_events(caplog))) >= 3, PATIENCE)
    events = agent_events(caplog)
    assert after_welcome(events)[:3] == [0.0, 0.02, 0.04]
    # (where it had got: at least three tries, doubling as ever, so 0.16 s)
    before = events[: events.index(WELCOMED)]
    assert len(before) >= 3
    assert before == [*NEVER_WELCOMED, *[BACKOFF_MAX] * len(before)][: len(before)]


def after_welcome(events: list[float | str]) -> list[float | str]:
    """The events after the first WELCOME (none before it)."""
    return events[events.index(WELCOMED) + 1 :] if WELCOMED in events else []


def test_outcomes_go_in_dones_of_about_16_mib_of_results_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given an agent (not running: its DONEs are only recorded) and four 10 MiB results
    agent = Agent(
        endpoint="tcp://127.0.0.1:1",
        worker_id="w-in-process",
        slots=4,
        make_runner=lambda on_done: Runner("thread", 1, on_done),
    )
    sent: list[list[str]] = []
    monkeypatch.setattr(
        agent,
        "_send",
        lambda command, body=None: sent.append([r["task_id"] for r in body["results"]]),
    )
    big = b"r" * (10 * 1024 * 1024)
    outcomes = [Outcome(f"t{i}", 1, TaskStatus.COMPLETED, big) for i in range(4)]
    outcomes.insert(2, Outcome("small", 1, TaskStatus.COMPLETED, b"s"))
    # when it reports them
    agent._send_done(outcomes)
    # then no DONE carries more than one of them (the broker reads no frame over 64 MiB,
    # and two would pass 16 MiB), and the small one rides along
    assert sent == [["t0"], ["t1", "small"], ["t2"], ["t3"]]
