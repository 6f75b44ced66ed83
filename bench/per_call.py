"""Workload A of the peers' comparison, beside the least that workload could cost.

Workload A (``bench/peers``): tasks submitted one call each (``Client.pipeline().submit``,
which keeps submits in flight), each result read with its own ``Client.result``, two
``zmq-worker --concurrency 1`` processes and a broker with ``--sync off`` (and, beside it, one
with ``--sync full``, an fsync a commit, with two workers of its own). The caller batches
nothing, and a worker gets a task only once its one slot is free, so each task costs a round
trip between the broker and a worker.

Its floor is the same workload with nothing but that message path: a relay process (one
ROUTER, as the broker's) that answers a submit of many tasks with their ids at once, hands each
task to a worker whose one task is done, and sends the outcomes a turn collects to their
client in one ``OUTCOME``, as the broker sends them; the workers are the floor's echo workers
(``bench.floor``: a DONE for each DISPATCH, with no runner), and its client submits in batches
of ``BATCH`` as the pipeline does. The frames are ours (``common.protocol``); there is no
store, no index, no lease, no acknowledgement of outcomes and no liveness.

They run side by side, the rounds alternated (ours, ours with fsync, the floor, ours...) so
that each sees the same moments of a noisy machine: tasks/s for each (medians of the rounds),
and the CPU a task of each kind of process (client, broker or relay, the two workers, with
``--sync off``). The ratio says how much of the message path's speed the scheduler keeps;
the CPU split says where the rest goes: on a machine of two cores the processes share, the
whole system's CPU a task sets the pace as much as any one process's does. The share of the
time the broker's loop spent committing (its ``commit_seconds``) is the part of its time in
which no report is read: both workers wait for it once their runs are done.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from bench.floor import RelayClient
from bench.harness import (
    Procs,
    Report,
    StopFlag,
    arg_parser,
    cpu_seconds,
    free_endpoint,
    start_broker,
    start_workers,
)
from common import protocol
from common.client import Client
from common.ops import Outcomes, Reply
from common.protocol import Command
from common.transport import message_waits, receive_frames, send_frames

#: Tasks a round, rounds of each system, and unmeasured tasks first.
TASKS = 10_000
ROUNDS = 5
WARMUP = 500
#: One-slot worker processes, as in the peers' rows.
WORKERS = 2
#: Tasks a submit carries, as ``Client.pipeline()`` batches them.
BATCH = 1000
#: Seconds a round may take before the benchmark fails.
ROUND_LIMIT = 120.0


# -- the floor: a relay that leases one task at a time to each worker ----------------------


def relay(endpoint: str) -> None:
    """Serve the floor's relay on ``endpoint`` until SIGTERM (``python -m bench.per_call
    relay --bind ENDPOINT``).

    The wire is ours: a ``submit`` of many tasks is answered at once with their ids, each
    task goes in a ``DISPATCH`` to a worker whose one task is done, and the outcomes a turn
    collects go to their client in one ``OUTCOME``; only the scheduler's work is missing.
    """
    stop = StopFlag()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(endpoint)
    waiting = [(sock, zmq.POLLIN)]
    queued: deque[dict[str, object]] = deque()
    free: deque[bytes] = deque()
    workers = 0
    #: The client of each task, by id.
    client_of: dict[str, bytes] = {}
    seq = 0
    while not stop.flag:
        if not zmq.zmq_poll(waiting, 100):
            continue
        outcomes: dict[bytes, list[dict[str, object]]] = {}
        while message_waits(sock):
            address, *frames = receive_frames(sock)
            message = protocol.unpack(frames)
            body = message.body
            if message.command is Command.REQUEST:
                value: object = {"workers": workers}
                if body["op"] == "submit":
                    ids = []
                    for spec in body["args"]["tasks"]:
                        seq += 1
                        task_id = f"{seq:032x}"
                        client_of[task_id] = address
                        entry = {
                            "task_id": task_id,
                            "attempt": 1,
                            "handler": spec["handler"],
                            "args": spec["args"],
                            "timeout": None,
                        }
                        queued.append(entry)
                        ids.append(task_id)
                    value = {"ids": ids}
                send_frames(sock, [address, *protocol.reply(Reply(body["req"], value))])
            elif message.command is Command.READY:
                workers += 1
                free.append(address)
            elif message.command is Command.DONE:
                for result in body["results"]:
                    task_id = result["task_id"]
                    outcome = {
                        "id": task_id,
                        "status": result["status"],
                        "result": result["result"],
                        "error": result["error"],
                    }
                    outcomes.setdefault(client_of.pop(task_id), []).append(outcome)
                free.append(address)
        while queued and free:
            body = {"tasks": [queued.popleft()]}
            send_frames(sock, [free.popleft(), *protocol.pack(Command.DISPATCH, body)])
        for client, tasks in outcomes.items():
            send_frames(sock, [client, *protocol.outcomes(Outcomes(tasks))])
    ctx.destroy(linger=0)


class FloorClient(RelayClient):
    """Workload A against the floor's relay: the submits sent in batches of ``BATCH`` as our
    pipeline sends them, each batch's ids awaited, then every outcome read. The socket,
    requests, ``wait_workers`` and ``close`` are ``bench.floor``'s client's."""

    def _receive(self, deadline: float) -> protocol.Message:
        left = deadline - time.monotonic()
        if left <= 0 or not self.sock.poll(int(left * 1000)):
            raise RuntimeError("the floor's relay did not answer in time")
        return protocol.unpack(receive_frames(self.sock))

    def workload(self, first: int, count: int) -> None:
        deadline = time.monotonic() + ROUND_LIMIT
        batches: dict[int, list[bytes]] = {}
        for lo in range(first, first + count, BATCH):
            args = [b"%d" % i for i in range(lo, min(lo + BATCH, first + count))]
            tasks = [{"handler": "echo", "args": a} for a in args]
            batches[self.send("submit", {"tasks": tasks})] = args
        expected: dict[str, bytes] = {}
        while batches or expected:
            message = self._receive(deadline)
            if message.command is Command.REPLY:
                ids = message.body["value"]["ids"]
                expected.update(zip(ids, batches.pop(message.body["req"]), strict=True))
                continue
            for outcome in message.body["tasks"]:
                if outcome["result"] != expected.pop(outcome["id"]):
                    raise RuntimeError(f"wrong result from the floor: {outcome!r}")


def commits(client: Client) -> tuple[float, int]:
    """The broker's commits since it started: seconds its loop spent in them, and how many."""
    histogram = client.metrics()["histograms"]["commit_seconds"]
    return histogram["sum"], histogram["counts"][-1]


def ours(client: Client, first: int, count: int) -> None:
    """Workload A against the scheduler: a pipelined submit and a ``result`` per task."""
    pipeline = client.pipeline()
    handles = [pipeline.submit("echo", b"%d" % i) for i in range(first, first + count)]
    pipeline.flush()
    for i, handle in zip(range(first, first + count), handles, strict=True):
        if client.result(handle, ROUND_LIMIT) != b"%d" % i:
            raise RuntimeError(f"wrong result for task {i}")


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class Side:
    """One system under measurement: its process groups and what each round measured."""

    name: str
    #: Process groups of the server (broker or relay) and of each worker.
    server: int
    workers: list[int]
    rates: list[float] = field(default_factory=list)
    #: CPU seconds of each kind of process, summed over the rounds.
    cpu: dict[str, float] = field(default_factory=lambda: {"client": 0.0, "server": 0.0,
                                                           "workers": 0.0})  # fmt: skip
    tasks: int = 0
    #: The server's commits so far, as (seconds spent committing, commits); None: it has none.
    commits: Callable[[], tuple[float, int]] | None = None
    #: Over the rounds: their seconds, and the server's seconds committing and commits.
    seconds: float = 0.0
    committing: float = 0.0
    committed: int = 0

    def measure(self, count: int, workload: Callable[[], None]) -> None:
        before = self.commits() if self.commits is not None else (0.0, 0)
        began_cpu = self._cpu()
        began = time.perf_counter()
        workload()
        seconds = time.perf_counter() - began
        for kind, used in self._cpu().items():
            self.cpu[kind] += used - began_cpu[kind]
        if self.commits is not None:
            after = self.commits()
            self.committing += after[0] - before[0]
            self.committed += after[1] - before[1]
        self.rates.append(count / seconds)
        self.tasks += count
        self.seconds += seconds

    def _cpu(self) -> dict[str, float]:
        return {
            "client": time.process_time(),
            "server": cpu_seconds(self.server),
            "workers": sum(cpu_seconds(pgid) for pgid in self.workers),
        }

    def us_per_task(self, kind: str) -> float:
        return self.cpu[kind] / self.tasks * 1e6


def run(quick: bool = False, floor: object = None) -> Report:
    tasks, rounds, warmup = (TASKS // 5, 2, WARMUP // 5) if quick else (TASKS, ROUNDS, WARMUP)
    report = Report("one call per task: workload A of bench/peers beside its floor")
    with Procs() as procs:
        brokers = {sync: start_broker(procs, "--sync", sync) for sync in ("off", "full")}
        sides: dict[str, Side] = {}
        for sync, broker in brokers.items():
            workers = start_workers(procs, broker.endpoint, WORKERS, concurrency=1)
            sides[sync] = Side(sync, broker.proc.pid, [p.pid for p in workers.values()])
        relay_endpoint = free_endpoint()
        relay_proc = procs.python("per-call-relay", "bench.per_call", "relay", "--bind",
                                  relay_endpoint)  # fmt: skip
        echoes = [procs.python("per-call-echo", "bench.floor", "worker", "--back",
                               relay_endpoint) for _ in range(WORKERS)]  # fmt: skip
        floor_side = Side("floor", relay_proc.pid, [p.pid for p in echoes])
        floor_client = FloorClient(relay_endpoint)
        try:
            with contextlib.ExitStack() as stack:
                clients = {
                    sync: stack.enter_context(Client(broker.endpoint, timeout=30.0))
                    for sync, broker in brokers.items()
                }
                floor_client.wait_workers(WORKERS)
                for sync, client in clients.items():
                    sides[sync].commits = functools.partial(commits, client)
                for client in clients.values():
                    ours(client, 0, warmup)
                floor_client.workload(0, warmup)
                for r in range(rounds):
                    first = warmup + r * tasks
                    for sync, client in clients.items():
                        sides[sync].measure(tasks, functools.partial(ours, client, first, tasks))
                    floor_round = functools.partial(floor_client.workload, first, tasks)
                    floor_side.measure(tasks, floor_round)
        finally:
            floor_client.close()
    setup = f"{tasks:,} tasks, 2 one-slot workers, {rounds} rounds alternated"
    floor_rate = statistics.median(floor_side.rates)
    report.add(f"floor: tasks/s ({setup})", floor_rate, "tasks/s")
    report.add("ours: tasks/s, broker --sync off", statistics.median(sides["off"].rates),
               "tasks/s", base=floor_rate)  # fmt: skip
    report.add("ours: tasks/s, broker --sync full (an fsync a commit)",
               statistics.median(sides["full"].rates), "tasks/s", base=floor_rate)  # fmt: skip
    for sync, side in sides.items():
        each = side.committing / side.committed * 1e6 if side.committed else 0.0
        report.add(f"ours: the broker's loop committing, --sync {sync}",
                   side.committing / side.seconds * 100, "% of the time",
                   note=f"{side.committed / side.seconds:,.0f} commits a second, {each:,.0f} us "
                        "each: both workers' next reports wait meanwhile")  # fmt: skip
    ours_side = sides["off"]
    for kind, label in (("server", "broker (floor: relay)"), ("workers", "2 workers"),
                        ("client", "client")):  # fmt: skip
        floor_us = floor_side.us_per_task(kind)
        report.add(f"floor: CPU a task, {label}", floor_us, "us")
        report.add(f"ours: CPU a task, {label}, --sync off", ours_side.us_per_task(kind), "us",
                   base=floor_us)  # fmt: skip
    floor_total = sum(floor_side.us_per_task(k) for k in floor_side.cpu)
    report.add("floor: CPU a task, whole system", floor_total, "us")
    ours_total = sum(ours_side.us_per_task(k) for k in ours_side.cpu)
    report.add("ours: CPU a task, whole system, --sync off", ours_total, "us", base=floor_total)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--quick", action="store_true")
    sub = parser.add_subparsers(dest="role")
    sub.add_parser("relay").add_argument("--bind", required=True)
    args = parser.parse_args(argv)
    if args.role == "relay":
        relay(args.bind)
    else:
        print(run(args.quick).table())


if __name__ == "__main__":
    main()
