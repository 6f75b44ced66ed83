"""A worker's own cycle: DISPATCH in, the run, DONE out, with no broker work in between.

This process stands in for the broker: a ROUTER that welcomes a worker and sends it its next
task (a no-op ``echo`` of 8 bytes) the moment the last one's DONE comes, the outcome's
acknowledgement riding on that DISPATCH as a real broker's does. One task is in flight at
a time, so a cycle is the worker's latency plus this loop's. Measured, one after the other:

- ``zmq-worker --concurrency 1``: a one-slot worker, which runs a short handler on its
  loop's own thread (``worker.relay``);
- ``zmq-worker --concurrency 2``: the same run handed to a pool thread and its outcome
  back, as every worker of more slots does;
- the floor's echo worker (``bench.floor``): decodes the DISPATCH and answers a DONE, with no
  runner, no registration and no acknowledgements: the least a worker in Python costs.

Cycles per second and the worker process's CPU (user + system, every thread) a cycle;
20,000 cycles after 500 unmeasured ones, the three measured in turns of 2,000 so that each
sees the same moments of a noisy machine. Each DONE must carry its own task's args.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import zmq

from bench.harness import Proc, Procs, Report, Target, cpu_seconds, standalone
from common import messages, protocol
from common.messages import RunKey
from common.protocol import Command

#: Cycles measured for each worker, and unmeasured ones first.
CYCLES = 20_000
WARMUP = 500
#: Cycles of one worker in a row before the next worker's turn.
TURN = 2_000
#: Seconds a DONE (or a READY) may take before the run counts as failed.
PATIENCE = 30.0


@dataclass
class Subject:
    """One worker process under measurement and what it has used so far."""

    name: str
    proc: Proc
    address: bytes = b""
    cycles: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    acks: list[RunKey] = field(default_factory=list)


def _receive(sock: zmq.Socket[bytes], command: Command) -> tuple[bytes, protocol.Message]:
    """The next message with this command (pings and anything else are skipped)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            raise RuntimeError(f"no {command.name} within {PATIENCE:g} s")
        address, *frames = sock.recv_multipart()
        message = protocol.unpack(frames)
        if message.command is command:
            return address, message


def _register(sock: zmq.Socket[bytes], subject: Subject) -> None:
    address, ready = _receive(sock, Command.READY)
    subject.address = address
    if "session" in ready.body:  # a zmq-worker waits for its WELCOME; the floor's does not
        welcome = messages.Welcome(ready.body["id"], 3600.0, 3, 1 << 20)
        sock.send_multipart([address, *protocol.pack(Command.WELCOME, welcome.to_body())])


def _cycles(sock: zmq.Socket[bytes], subject: Subject, count: int, measured: bool) -> None:
    began_cpu = cpu_seconds(subject.proc.pid)
    began = time.perf_counter()
    for _ in range(count):
        n = subject.cycles if measured else 10**8 - 1 - subject.cycles
        args = b"%08d" % n
        task_id = f"{subject.name.replace(' ', '-')}-{'m' if measured else 'w'}{n}"
        task = messages.Assignment(task_id, 1, "echo", args, None)
        body = messages.Dispatch([task], subject.acks).to_body()
        sock.send_multipart([subject.address, *protocol.pack(Command.DISPATCH, body)])
        _, done = _receive(sock, Command.DONE)
        (outcome,) = done.body["results"]
        if outcome["task_id"] != task.task_id or outcome["result"] != args:
            raise RuntimeError(f"{subject.name}: DONE {outcome} for {task.task_id}")
        subject.acks = [RunKey(task.task_id, 1)]
        if measured:
            subject.cycles += 1
    if measured:
        subject.seconds += time.perf_counter() - began
        subject.cpu += cpu_seconds(subject.proc.pid) - began_cpu


def run(quick: bool = False, floor: object = None) -> Report:
    cycles, warmup, turn = (CYCLES // 10, WARMUP // 5, TURN // 10) if quick else (
        CYCLES, WARMUP, TURN)  # fmt: skip
    report = Report("worker cycle: DISPATCH in, run, DONE out")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        with Procs() as procs:
            subjects: list[Subject] = []
            for name, module, args in (
                ("one slot", "worker", ["--concurrency", "1"]),
                ("two slots", "worker", ["--concurrency", "2"]),
                ("floor", "bench.floor", []),
            ):
                if module == "worker":
                    argv = ["--broker", endpoint, "--id", f"cycle-{name.replace(' ', '-')}",
                            *args, "--log-level", "WARNING"]  # fmt: skip
                else:
                    argv = ["worker", "--back", endpoint]
                subject = Subject(name, procs.python(name.replace(" ", "-"), module, *argv))
                _register(sock, subject)
                _cycles(sock, subject, warmup, measured=False)
                subjects.append(subject)
            while any(s.cycles < cycles for s in subjects):
                for subject in subjects:
                    _cycles(sock, subject, min(turn, cycles - subject.cycles), measured=True)
    finally:
        ctx.destroy(linger=0)
    us = {s.name: s.seconds / s.cycles * 1e6 for s in subjects}
    cpu = {s.name: s.cpu / s.cycles * 1e6 for s in subjects}
    setup = f"{cycles:,} echo runs one at a time, in turns of {turn:,}"
    report.add(f"cycle, floor's echo worker ({setup})", us["floor"], "us")
    report.add("cycle, zmq-worker of two slots (run on a pool thread)", us["two slots"], "us",
               base=us["floor"])  # fmt: skip
    report.add("cycle, zmq-worker of one slot (run on the loop's thread)", us["one slot"], "us",
               base=us["two slots"], base_name="two slots", target=Target("<=", 0.9, True),
               note="the relay must save a tenth of the cycle at least")  # fmt: skip
    report.add("worker CPU a cycle, floor's echo worker", cpu["floor"], "us")
    report.add("worker CPU a cycle, two slots", cpu["two slots"], "us", base=cpu["floor"])
    report.add("worker CPU a cycle, one slot", cpu["one slot"], "us",
               base=cpu["two slots"], base_name="two slots")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, argv)


if __name__ == "__main__":
    main()
