"""Scale in workers (issue 16): what thousands of connected workers cost every call.

Simulated workers: N ZeroMQ workers in one process (``fakes``), each a connection of
its own that registers with ``READY`` (1 slot, ``adaptive_ping`` as ``zmq-worker`` says
it), answers ``PING`` with ``PONG`` and, serving ``echo``, reports every run it is
dispatched completed at once with its args as result. For
N = 10, 1,000 and 10,000 (100 and 1,000 with ``--quick``), on a broker with ``--sync
off`` and its default liveness settings:

(a) Idle: the N simulated workers register for another handler (``idle``), and one real
    ``zmq-worker`` (4 slots) serves ``echo``. Figures: the broker's resident memory per
    simulated worker (``VmRSS`` after they registered, less before, over N); the broker's
    CPU (user + system, from ``/proc``) per second of wall-clock time over an idle window
    (``IDLE`` s) after they registered, and the pings a second they received meanwhile;
    then 400 sequential ``Client.run("echo", ...)`` calls after 50 unmeasured ones, p50
    and p99 in milliseconds.
(b) Kill -9: two more real workers, tagged ``kill``, and a ``sleep`` task that requires
    the tag. Once it runs, its worker is killed with SIGKILL; a client polls the task
    every 20 ms. The figure is the time from the kill to the first answer showing the
    task requeued (its first lease ``lost``), compared with the detection time
    ``docs/operations.md`` states for N workers.
(c) Batch path: a fresh broker and the N simulated workers serving ``echo``, no real
    worker. A client submits ``TASKS`` tasks with ``submit_many`` in batches of 1,000,
    then collects them with ``wait_many``; the figure is tasks/s from the first submit
    to the last result (every result must equal its args).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import zmq

from bench.harness import (
    Procs,
    Report,
    StopFlag,
    Target,
    cpu_seconds,
    free_endpoint,
    percentile,
    rss_bytes,
    standalone,
    start_broker,
    write_json,
)
from broker.server import listen
from common import protocol
from common.client import Client
from common.errors import NotFound
from common.messages import Assignment, Dispatch, Done, Ready, RunOutcome, Welcome
from common.models import TaskStatus
from common.protocol import Command

#: Simulated workers of each case.
SIZES = (10, 1000, 10_000)
QUICK_SIZES = (10, 100, 1000)
#: Measured sequential calls, after unmeasured ones.
CALLS = 400
WARMUP = 50
#: Seconds of the idle window in which the broker's CPU is measured.
IDLE = 20.0
QUICK_IDLE = 5.0
#: Tasks of the batch path, and per submit.
TASKS = 20_000
QUICK_TASKS = 4000
BATCH = 1000
#: Longest wait for the simulated workers to be welcomed, in seconds.
START_TIMEOUT = 180.0
#: Seconds after a kill when waiting for the requeue stops.
GIVE_UP = 120.0


# -- the simulated workers (``python -m bench.scale_workers fakes``) ---------------------


def fakes(endpoint: str, count: int, handler: str, status_path: str) -> None:
    """Run ``count`` simulated workers until SIGTERM; write how many were welcomed and how
    many pings they got to ``status_path`` about once a second.

    One ROUTER socket connects ``count`` times, each connection announcing a routing id
    of its own, so the broker sees ``count`` peers (as many DEALERs would be) while this
    process holds one descriptor a connection (10,000 DEALERs would take two each, more
    than the machine's 20,000 a process)."""
    stop = StopFlag()
    context = zmq.Context()
    sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.RCVHWM, 0)
    readies: dict[bytes, list[bytes]] = {}
    for i in range(count):
        name = f"sim-{i:05d}"
        ident = name.encode()
        sock.setsockopt(zmq.ROUTING_ID, ident)
        sock.setsockopt(zmq.CONNECT_ROUTING_ID, ident)
        sock.connect(endpoint)
        body = Ready(name, 1, [handler], host="bench", pid=os.getpid()).to_body()
        body["adaptive_ping"] = True  # it watches no broker: any interval suits it
        body["acks_in_dispatch"] = True  # as zmq-worker says (it keeps no outcomes anyway)
        readies[ident] = protocol.pack(Command.READY, body)
    unsent = list(readies)
    welcomed: set[bytes] = set()
    pings = runs = 0
    next_status = 0.0

    def send(ident: bytes, frames: list[bytes]) -> bool:
        try:
            sock.send_multipart([ident, *frames])
            return True
        except zmq.ZMQError:  # not connected (yet, or any more)
            return False

    try:
        while not stop.flag:
            if unsent:
                unsent = [ident for ident in unsent if not send(ident, readies[ident])]
            if sock.poll(10 if unsent else 100):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    ident = frames[0]
                    message = protocol.unpack(frames[1:])
                    if message.command is Command.PING:
                        pings += 1
                        send(ident, protocol.pack(Command.PONG))
                    elif message.command is Command.DISPATCH:
                        outcomes = [
                            RunOutcome(entry.run, TaskStatus.COMPLETED, entry.args)
                            for entry in Dispatch.decode(message.body)
                            if isinstance(entry, Assignment)
                        ]
                        runs += len(outcomes)
                        send(ident, protocol.pack(Command.DONE, Done(outcomes).to_body()))
                    elif message.command is Command.WELCOME:
                        welcomed.add(ident)
                    elif message.command is Command.RESYNC:
                        send(ident, readies[ident])
            now = time.monotonic()
            if now >= next_status:
                next_status = now + 1.0
                status = {"welcomed": len(welcomed), "pings": pings, "runs": runs,
                          "time": time.time()}  # fmt: skip
                write_json(status_path, status)
    finally:
        sock.close(linger=0)
        context.term()


def _status(path: Path) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
        return value
    except (OSError, ValueError):
        return {"welcomed": 0, "pings": 0, "runs": 0, "time": 0.0}


def start_fakes(
    procs: Procs, endpoint: str, count: int, handler: str, *, broker: bool = True
) -> Path:
    """Start ``count`` simulated workers; returns their status file once all are welcomed
    (and, from a ``broker``, listed online)."""
    path = procs.dir / f"fakes-{len(procs.procs)}.json"
    proc = procs.python("fakes", "bench.scale_workers", "fakes", "--broker", endpoint,
                        "--count", str(count), "--handler", handler,
                        "--status", str(path))  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while _status(path)["welcomed"] < count:
        if not proc.alive():
            raise RuntimeError(f"simulated workers exited: {proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_status(path)['welcomed']} of {count} welcomed")
        time.sleep(0.1)
    if broker:
        with Client(endpoint, timeout=30) as client:
            while client.health()["workers"] < count:
                time.sleep(0.1)
    return path


def router(endpoint: str, status_path: str) -> None:
    """A bare ROUTER with the broker's socket options that welcomes every READY and does
    nothing else, until SIGTERM: what a connection costs below the broker's own state."""
    stop = StopFlag()
    context = zmq.Context()
    sock = listen(context, endpoint)
    write_json(status_path, {"pid": os.getpid()})
    try:
        while not stop.flag:
            if not sock.poll(100):
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                message = protocol.unpack(frames[1:])
                if message.command is Command.READY:
                    welcome = Welcome(str(message.body["id"]), 3600.0, 3).to_body()
                    sock.send_multipart([frames[0], *protocol.pack(Command.WELCOME, welcome)])
    finally:
        sock.close(linger=0)
        context.term()


def router_floor(count: int) -> float:
    """Resident bytes per connected simulated worker of a bare ROUTER (``router``)."""
    with Procs() as procs:
        endpoint = free_endpoint()
        path = procs.dir / "router.json"
        proc = procs.python("router", "bench.scale_workers", "router", "--bind", endpoint,
                            "--status", str(path))  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not path.exists():
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the bare ROUTER did not start: {proc.tail()}")
            time.sleep(0.05)
        time.sleep(0.5)
        before = rss_bytes(proc.pid)
        start_fakes(procs, endpoint, count, "idle", broker=False)
        time.sleep(1.0)
        return (rss_bytes(proc.pid) - before) / count


# -- the measurements -----------------------------------------------------------------------


def idle_case(count: int, idle: float) -> dict[str, float]:
    """(a) and (b) with ``count`` idle simulated workers."""
    with Procs() as procs:
        broker = start_broker(procs, "--sync", "off", "--log-level", "ERROR")
        pid = broker.proc.pid
        procs.python("worker", "worker", "--broker", broker.endpoint, "--id", "echo-1",
                     "--concurrency", "4", "--log-level", "WARNING")  # fmt: skip
        with Client(broker.endpoint, timeout=30) as client:
            while client.health()["workers"] < 1:
                time.sleep(0.05)
            client.run("echo", b"x", wait=30)
        time.sleep(0.5)
        before = rss_bytes(pid)
        status_path = start_fakes(procs, broker.endpoint, count, "idle")
        time.sleep(1.0)
        after = rss_bytes(pid)
        began_status = _status(status_path)
        began_cpu, began = cpu_seconds(pid), time.perf_counter()
        time.sleep(idle)
        cpu = (cpu_seconds(pid) - began_cpu) / (time.perf_counter() - began)
        ended_status = _status(status_path)
        pings = (ended_status["pings"] - began_status["pings"]) / max(
            1e-9, ended_status["time"] - began_status["time"]
        )
        samples: list[float] = []
        with Client(broker.endpoint, timeout=30) as client:
            for i in range(WARMUP + CALLS):
                args = i.to_bytes(4, "big")
                start = time.perf_counter()
                result = client.run("echo", args, wait=30)
                if i >= WARMUP:
                    samples.append(time.perf_counter() - start)
                if result != args:
                    raise RuntimeError(f"echo gave {result!r} for {args!r}")
        requeue = kill_case(procs, broker.endpoint)
        return {
            "rss_per_worker": (after - before) / count,
            "cpu": cpu,
            "pings": pings,
            "p50": percentile(samples, 50) * 1e3,
            "p99": percentile(samples, 99) * 1e3,
            "requeue": requeue,
        }


def kill_case(procs: Procs, endpoint: str) -> float:
    """(b): seconds from killing a running task's worker to the task shown requeued."""
    victims = {}
    for name in ("kill-1", "kill-2"):
        argv = ["--broker", endpoint, "--id", name, "--capabilities", "kill", "--concurrency", "1"]
        victims[name] = procs.python("worker", "worker", *argv, "--log-level", "WARNING")
    with Client(endpoint, timeout=30) as client:
        while not all(_online(client, name) for name in victims):
            time.sleep(0.05)
        task_id = client.submit("sleep", json.dumps({"seconds": 600}).encode(),
                                requires=["kill"])  # fmt: skip
        while (task := client.get(task_id))["status"] != "running":
            time.sleep(0.02)
        victims[task["worker_id"]].signal(signal.SIGKILL)
        killed = time.perf_counter()
        while True:
            leases = client.get(task_id)["leases"]
            if leases and leases[0]["outcome"] == "lost":
                return time.perf_counter() - killed
            if time.perf_counter() - killed > GIVE_UP:
                raise RuntimeError(f"task not requeued {GIVE_UP:g} s after its worker was killed")
            time.sleep(0.02)


def _online(client: Client, worker_id: str) -> bool:
    try:
        return bool(client.worker(worker_id)["status"] == "online")
    except NotFound:
        return False


def batch_case(count: int, tasks: int) -> float:
    """(c): tasks/s through ``count`` one-slot simulated workers serving echo."""
    with Procs() as procs:
        broker = start_broker(procs, "--sync", "off", "--log-level", "ERROR")
        start_fakes(procs, broker.endpoint, count, "echo")
        with Client(broker.endpoint, timeout=120) as client:
            began = time.perf_counter()
            batches = []
            for first in range(0, tasks, BATCH):
                specs = [{"handler": "echo", "args": i.to_bytes(4, "big")}
                         for i in range(first, min(tasks, first + BATCH))]  # fmt: skip
                batches.append((first, client.submit_many(specs)))
            for first, ids in batches:
                for i, record in enumerate(client.wait_many(ids, 120)):
                    if record["status"] != "completed" or record["result"] != (
                        (first + i).to_bytes(4, "big")
                    ):
                        raise RuntimeError(f"task {first + i} ended {record!r}")
            return tasks / (time.perf_counter() - began)


def detection_time(count: int) -> float:
    """The detection time ``docs/operations.md`` states for ``count`` workers, with the
    default settings (``broker.roster.detection_time`` where it exists)."""
    try:
        from broker.roster import detection_time as stated
    except ImportError:
        return 3.0  # ping every second, offline after 3 silent intervals
    value: float = stated(count)
    return value


def run(quick: bool = False, floor: object = None) -> Report:
    sizes = QUICK_SIZES if quick else SIZES
    idle = QUICK_IDLE if quick else IDLE
    tasks = QUICK_TASKS if quick else TASKS
    report = Report("scale in workers: N simulated workers")
    idles = {n: idle_case(n, idle) for n in sizes}
    batches = {n: batch_case(n, tasks) for n in sizes[:2]}
    small, *_ = sizes
    base = idles[small]
    for n in sizes:
        figures = idles[n]
        print(json.dumps({"workers": n, **figures}), flush=True)
        if n == small:
            report.add(f"echo call p50, {n:,} idle workers", figures["p50"], "ms",
                       note=f"p99 {figures['p99']:.2f} ms")  # fmt: skip
        else:
            report.add(f"echo call p50, {n:,} idle workers", figures["p50"], "ms",
                       target=Target("<=", 1.2, on_ratio=True), base=base["p50"],
                       base_name=f"{small:,} workers",
                       note=f"p99 {figures['p99']:.2f} ms")  # fmt: skip
        cpu_target = Target("<=", 0.25) if n == max(sizes) else None
        report.add(f"broker CPU, {n:,} idle workers", figures["cpu"], "CPU-s/s",
                   target=cpu_target, note=f"{figures['pings']:.0f} pings/s")  # fmt: skip
        if n > small:
            floor_bytes = router_floor(n)
            report.add(f"broker RSS per connected worker, {n:,}", figures["rss_per_worker"],
                       "bytes", note=f"a bare ROUTER: {floor_bytes:,.0f} bytes")  # fmt: skip
            report.add(f"broker RSS per worker beyond a bare ROUTER's, {n:,}",
                       figures["rss_per_worker"] - floor_bytes, "bytes",
                       target=Target("<=", 4096))  # fmt: skip
        stated = detection_time(n + 3)
        report.add(f"kill -9 to task requeued, {n:,} idle workers", figures["requeue"], "s",
                   target=Target("<=", stated + 1.0),
                   note=f"stated detection {stated:g} s")  # fmt: skip
    few, many = sizes[0], sizes[1]
    report.add(f"batch path, {few:,} one-slot workers", batches[few], "tasks/s")
    report.add(f"batch path, {many:,} one-slot workers", batches[many], "tasks/s",
               target=Target(">=", 1.0, on_ratio=True), base=batches[few],
               base_name=f"{few:,} workers")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    from bench.harness import arg_parser

    parser = arg_parser(__doc__)
    sub = parser.add_subparsers(dest="role")
    p_fakes = sub.add_parser("fakes")
    p_fakes.add_argument("--broker", required=True)
    p_fakes.add_argument("--count", type=int, required=True)
    p_fakes.add_argument("--handler", default="idle")
    p_fakes.add_argument("--status", required=True)
    p_router = sub.add_parser("router")
    p_router.add_argument("--bind", required=True)
    p_router.add_argument("--status", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "fakes":
        fakes(args.broker, args.count, args.handler, args.status)
    elif args.role == "router":
        router(args.bind, args.status)
    else:
        standalone(__doc__, run, ["--quick"] if args.quick else [])


if __name__ == "__main__":
    main()
