"""HTTP attacks: can slow, idle or long-waiting clients starve the REST API's other callers?

Each attack runs against a real stack (a broker, one ``zmq-worker`` and the API under
gunicorn, on 127.0.0.1) from its own process (``python -m bench.attack_http attack``,
so its work does not slow this process's clocks), and keeps its connections up: one the
server cuts off is opened again at once. Meanwhile this process measures what everyone
else gets:

- a prober sends ``GET /health`` every 50 ms, each on a new connection (as a load
  balancer does), and records its latency (a probe that fails or gets no answer within
  ``PROBE_TIMEOUT`` counts with the time it took);
- an honest client submits an ``echo`` task with ``POST /tasks?wait=`` a few times and
  records whether each completed.

The attacks (their full sizes are the defaults of ``Sizes``):

- ``none``: no attack, for comparison;
- ``slow-headers``: 40 connections each sending one header line every 3 s;
- ``slow-bodies``: 40 connections each announcing a 1,000-byte body and sending one byte
  of it every 3 s;
- ``idle``: 4,400 connections that send nothing;
- ``long-waits``: 200 ``GET /tasks/{id}?wait=30`` on a task that never finishes (its
  handler has no worker), and 20 HTTP workers' long-polls
  ``POST /workers/{id}/tasks/next?wait=30``, each answered when its wait is over.

``python -m bench.attack_http [--quick] [ATTACK ...]`` (``make attack-http``) runs them
at full size (``--quick``: the sizes of the tests) and prints one table row per attack.
Tests import ``measure``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import http.client
import json
import os
import resource
import selectors
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    Latency,
    Procs,
    StopFlag,
    arg_parser,
    start_api,
    start_broker,
    start_worker,
    wait_workers,
    write_json,
)

ATTACKS = ("none", "slow-headers", "slow-bodies", "idle", "long-waits")
#: Seconds between two probes of ``GET /health``.
PROBE_INTERVAL = 0.05
#: Seconds a probe waits for its answer (connecting included).
PROBE_TIMEOUT = 2.0
#: Seconds the honest client waits for its task (the ``?wait=`` it asks for).
HONEST_WAIT = 10.0
#: Seconds to wait for the attack to have all its connections open.
RAMP_TIMEOUT = 60.0
#: The handler of the task the long waits wait on: no worker has it, so it never runs.
NEVER = "no-such-handler"


@dataclass(frozen=True)
class Sizes:
    """How big an attack is; the defaults are the full sizes."""

    #: Connections of ``slow-headers`` and ``slow-bodies``.
    slow: int = 40
    #: Seconds between two pieces a slow connection sends.
    interval: float = 3.0
    #: Connections of ``idle``.
    idle: int = 4400
    #: ``GET /tasks/{id}?wait=`` requests of ``long-waits``, and their wait.
    waiters: int = 200
    pollers: int = 20
    wait: float = 30.0
    #: Seconds the prober and the honest client run once the attack is in place.
    duration: float = 40.0
    #: Tasks the honest client submits, one after the other.
    honest: int = 3


#: The sizes of ``--quick`` and of the tests: a few seconds each.
QUICK = Sizes(slow=40, interval=1.0, idle=1000, waiters=200, pollers=10, duration=4.0, honest=2)


@dataclass
class Outcome:
    """What the other callers got during one attack."""

    attack: str
    health: Latency
    #: Probes that failed or timed out, and how many of each kind of failure.
    health_failed: int
    health_problems: dict[str, int]
    #: Honest tasks that completed, of those submitted.
    honest_done: int
    honest_tasks: int
    #: What the attacking process counted (open connections, cut-offs, answers).
    attacker: dict[str, Any] = field(default_factory=dict)

    def row(self) -> str:
        h = self.health
        return (
            f"{self.attack:<13} health p50 {h.p50:7.1f} ms  p99 {h.p99:7.1f} ms  "
            f"max {h.max:7.1f} ms  failed {self.health_failed:3d}/{h.count:<4d} "
            f"{json.dumps(self.health_problems) if self.health_problems else ''} "
            f"honest {self.honest_done}/{self.honest_tasks}  attacker {json.dumps(self.attacker)}"
        )


# -- the measuring side -------------------------------------------------------------------


def http_call(
    port: int, method: str, path: str, body: Any = None, timeout: float = PROBE_TIMEOUT
) -> tuple[int, Any]:
    """One request on a new connection: (status, parsed JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if payload else None
    finally:
        conn.close()


def probe(port: int, stop: threading.Event, samples: list[tuple[float, str]]) -> None:
    """``GET /health`` every ``PROBE_INTERVAL`` until ``stop``: (seconds, "" if answered
    200, else what went wrong)."""
    next_at = time.monotonic()
    while not stop.is_set():
        start = time.perf_counter()
        try:
            status = http_call(port, "GET", "/health")[0]
            problem = "" if status == 200 else str(status)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problem = type(exc).__name__
        samples.append((time.perf_counter() - start, problem))
        next_at = max(next_at + PROBE_INTERVAL, time.monotonic())
        stop.wait(next_at - time.monotonic())


def honest(port: int, tasks: int, stop: threading.Event, done: list[bool]) -> None:
    """Submit ``tasks`` echo tasks one after the other and wait for each (or ``stop``)."""
    args = base64.b64encode(b"honest").decode()
    for _ in range(tasks):
        if stop.is_set():
            return
        try:
            status, record = http_call(
                port,
                "POST",
                f"/tasks?wait={HONEST_WAIT:g}",
                {"handler": "echo", "args": args},
                timeout=HONEST_WAIT + 5,
            )
            done.append(status == 201 and record["status"] == "completed")
        except (OSError, http.client.HTTPException, ValueError):
            done.append(False)


def measure(procs: Procs, port: int, attack: str, sizes: Sizes) -> Outcome:
    """Run ``attack`` against the API on ``port``; measure health and an honest client while
    it lasts (``sizes.duration`` seconds once its connections are open)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}: one of {', '.join(ATTACKS)}")
    status_path = procs.dir / f"attack-{attack}-{len(procs.procs)}.json"
    argv = ["--child", attack, "--port", str(port), "--out", str(status_path),
            "--sizes", json.dumps(asdict(sizes))]  # fmt: skip
    if attack == "long-waits":
        status, entry = http_call(port, "POST", "/tasks", {"handler": NEVER, "args": ""})
        if status != 201:
            raise RuntimeError(f"could not submit the task to wait on: {status} {entry}")
        argv += ["--task", entry["id"]]
    attacker = procs.python(f"attack-{attack}", "bench.attack_http", *argv)
    deadline = time.monotonic() + RAMP_TIMEOUT
    while not _read_status(status_path).get("ready"):
        if not attacker.alive():
            raise RuntimeError(f"the attack exited: {attacker.tail()}")
        if time.monotonic() > deadline:
            break  # measure anyway: that the attack cannot even get in is a result too
        time.sleep(0.1)

    stop = threading.Event()
    samples: list[tuple[float, str]] = []
    done: list[bool] = []
    threads = [
        threading.Thread(target=probe, args=(port, stop, samples), daemon=True),
        threading.Thread(target=honest, args=(port, sizes.honest, stop, done), daemon=True),
    ]
    for thread in threads:
        thread.start()
    stop.wait(sizes.duration)
    stop.set()
    for thread in threads:
        thread.join(HONEST_WAIT + 10)
    if attack == "long-waits" and sizes.duration >= sizes.wait:
        # Full size: let every wait end, to count those that never got an answer.
        with contextlib.suppress(RuntimeError):
            attacker.wait(sizes.wait * 4)
    attacker.stop()
    return Outcome(
        attack=attack,
        health=Latency.of([seconds for seconds, _ in samples]),
        health_failed=sum(bool(problem) for _, problem in samples),
        health_problems=dict(Counter(problem for _, problem in samples if problem)),
        honest_done=sum(done),
        honest_tasks=sizes.honest,
        attacker=_read_status(status_path),
    )


def _read_status(path: Path) -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads(path.read_text())
        return status
    except (OSError, ValueError):
        return {}


# -- the attacking side ---------------------------------------------------------------------


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _slow_pieces(attack: str) -> tuple[bytes, bytes]:
    """What a slow connection sends first, and then once every interval."""
    if attack == "slow-headers":
        return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n"
    if attack == "slow-bodies":
        head = (
            b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        return head, b" "
    return b"", b""  # idle


def attack_connections(port: int, attack: str, count: int, interval: float, out: str) -> None:
    """Keep ``count`` connections open, each sending its pieces; reopen any that the server
    cuts off, until SIGTERM. Counts the cut-offs and how long each connection lasted."""
    stop = StopFlag()
    first, piece = _slow_pieces(attack)
    sel = selectors.DefaultSelector()
    opened_at: dict[socket.socket, float] = {}
    stats: dict[str, Any] = {"open": 0, "opened": 0, "cut": 0, "refused": 0, "ready": False}
    lifetimes: list[float] = []

    def open_one() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            stats["refused"] += 1
            return
        opened_at[sock] = time.monotonic()
        sel.register(sock, selectors.EVENT_WRITE, "connecting")
        stats["opened"] += 1

    def drop(sock: socket.socket, cut: bool) -> None:
        sel.unregister(sock)
        started = opened_at.pop(sock)
        sock.close()
        if cut:
            stats["cut"] += 1
            lifetimes.append(time.monotonic() - started)

    for _ in range(count):
        open_one()
    next_piece = time.monotonic() + interval
    next_report = 0.0
    while not stop.flag:
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "connecting":
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    drop(sock, cut=False)
                    stats["refused"] += 1
                    continue
                with contextlib.suppress(OSError):
                    sock.send(first)
                sel.modify(sock, selectors.EVENT_READ, "open")
            else:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:  # closed (or answered: a 408) by the server
                    drop(sock, cut=True)
        now = time.monotonic()
        if piece and now >= next_piece:
            next_piece = now + interval
            for key in list(sel.get_map().values()):
                if key.data == "open":
                    with contextlib.suppress(OSError):
                        key.fileobj.send(piece)  # type: ignore[union-attr]
        while len(opened_at) < count:
            before = len(opened_at)
            open_one()
            if len(opened_at) == before:
                break
        if now >= next_report:
            next_report = now + 0.5
            stats["open"] = sum(1 for k in sel.get_map().values() if k.data == "open")
            stats["ready"] = stats["ready"] or stats["open"] >= count
            stats["longest_s"] = round(max(lifetimes, default=0.0), 2)
            write_json(out, stats)
    stats["open"] = sum(1 for k in sel.get_map().values() if k.data == "open")
    stats["longest_s"] = round(max(lifetimes, default=0.0), 2)
    write_json(out, stats)


def attack_waits(port: int, task_id: str, sizes: Sizes, out: str) -> None:
    """``sizes.waiters`` waits on ``task_id`` and ``sizes.pollers`` long-polls at once, each
    on its own connection; returns once all are answered (or four times their wait)."""
    stop = StopFlag()
    give_up = sizes.wait * 4
    answers: list[float] = []
    lock = threading.Lock()
    sent = threading.Semaphore(0)

    def one(method: str, path: str, body: Any) -> None:
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=give_up)
        try:
            conn.connect()
            sent.release()
            conn.request(method, path, body=None if body is None else json.dumps(body).encode())
            conn.getresponse().read()
            with lock:
                answers.append(time.monotonic() - start)
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()

    calls: list[tuple[str, str, Any]] = [
        ("GET", f"/tasks/{task_id}?wait={sizes.wait:g}", None)
    ] * sizes.waiters
    for i in range(sizes.pollers):
        worker_id = f"attack-poller-{i}"
        http_call(port, "POST", "/workers", {"id": worker_id, "capabilities": ["nothing"]})
        calls.append(("POST", f"/workers/{worker_id}/tasks/next?wait={sizes.wait:g}", None))
    threads = [threading.Thread(target=one, args=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for _ in calls:  # connected: the requests follow at once
        sent.acquire(timeout=RAMP_TIMEOUT)
    time.sleep(0.5)  # the requests themselves reach the server
    stats: dict[str, Any] = {"requests": len(calls), "ready": True}
    deadline = time.monotonic() + give_up
    while not stop.flag and time.monotonic() < deadline and any(t.is_alive() for t in threads):
        with lock:
            stats["answered"] = len(answers)
            stats["slowest_answer_s"] = round(max(answers, default=0.0), 1)
        write_json(out, stats)
        time.sleep(0.5)
    with lock:
        stats["answered"] = len(answers)
        stats["slowest_answer_s"] = round(max(answers, default=0.0), 1)
    write_json(out, stats)
    os._exit(0)  # the threads still waiting are abandoned with their connections


# -- the command line -------------------------------------------------------------------------


def run_all(attacks: Sequence[str], sizes: Sizes, processes: int) -> list[Outcome]:
    """Each attack against a fresh stack; prints each outcome as it comes."""
    outcomes = []
    for attack in attacks:
        with Procs() as procs:
            broker = start_broker(procs)
            start_worker(procs, broker.endpoint, "attack-honest", 4)
            wait_workers(broker.endpoint, ["attack-honest"])
            api = start_api(procs, broker.endpoint, processes)
            outcome = measure(procs, api.port, attack, sizes)
            print(outcome.row(), flush=True)
            outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("attacks", nargs="*", metavar="ATTACK", help=", ".join(ATTACKS))
    parser.add_argument("--quick", action="store_true", help="the sizes of the tests")
    parser.add_argument("--processes", type=int, default=2, help="API processes")
    # One attack, until SIGTERM: how ``measure`` starts the attacking process.
    parser.add_argument("--child", choices=ATTACKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_open_files_limit()
    if args.child:
        sizes = Sizes(**json.loads(args.sizes))
        if args.child == "long-waits":
            attack_waits(args.port, args.task, sizes, args.out)
        else:
            counts = {"none": 0, "idle": sizes.idle}
            count = counts.get(args.child, sizes.slow)
            attack_connections(args.port, args.child, count, sizes.interval, args.out)
        return 0
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attack {sorted(unknown)}: one of {', '.join(ATTACKS)}")
    outcomes = run_all(args.attacks or ATTACKS, QUICK if args.quick else Sizes(), args.processes)
    return 0 if outcomes else 1


if __name__ == "__main__":
    sys.exit(main())
