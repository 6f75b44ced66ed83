"""The floor: the fastest our message path could be, with no scheduling at all.

A minimal ZeroMQ relay with the broker's shape and the same frames: a relay process
binds a ROUTER for clients and a ROUTER for workers; two echo-worker processes
connect DEALERs and say ``READY``. A client sends a ZS1 ``REQUEST`` (op ``submit``,
one task with 8 bytes of args); the relay decodes it, assigns an id, sends a
``DISPATCH`` to the next worker (round robin); the worker decodes it and answers a
``DONE`` carrying the args as the result; the relay decodes that and sends the
client a ``REPLY`` with the result. Every hop packs and unpacks with
``common.protocol``, so the msgpack and framing costs are ours; there is no store,
no queue, no batching (one message per task), no acknowledgement and no liveness.

Measured, each piece in its own process (relay, 2 workers, client):

- pipelined round trips/s: the client keeps a window of 1,000 requests outstanding
  until 100,000 replies (or 60 s) have come back;
- one-at-a-time round trips: 2,000 requests, each sent when the previous reply
  arrived: p50, p99 and max in milliseconds (after 100 unmeasured warm-up ones).

Results are checked: each reply must carry its own request's args.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import zmq

from bench import reference as reference_mod
from bench.harness import (
    Latency,
    Procs,
    Report,
    StopFlag,
    relay_parser,
    run_child,
    start_relay,
    write_json,
)
from common import protocol
from common.ops import ErrorInfo, Reply
from common.protocol import Command
from common.transport import send_frames

#: Pipelined round trips measured (the same count as the throughput benchmark's tasks).
PIPELINED = 100_000
#: Requests outstanding at once in the pipelined run.
WINDOW = 1000
#: One-at-a-time round trips measured.
SERIAL = 2000
#: Unmeasured one-at-a-time round trips first (connections, caches).
WARMUP = 100
#: Echo workers behind the relay.
WORKERS = 2
#: Upper bound of each measurement, in seconds.
TIME_LIMIT = 60.0
#: Messages drained from one socket before looking at the other.
BATCH = 1000


@dataclass(frozen=True)
class Floor:
    """The floor's figures, which other benchmarks compare themselves with."""

    #: Pipelined round trips per second.
    rate: float
    #: One-at-a-time round trips.
    serial: Latency
    #: The issue's reference relay on this machine: scales the targets set in absolute terms.
    reference: reference_mod.Reference


# -- the relay and the echo worker (run as ``python -m bench.floor relay|worker``) -------------


def relay(front_endpoint: str, back_endpoint: str) -> None:
    stop = StopFlag()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    back = ctx.socket(zmq.ROUTER)
    for sock, endpoint in ((front, front_endpoint), (back, back_endpoint)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.bind(endpoint)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    workers: list[bytes] = []
    pending: dict[str, tuple[bytes, int]] = {}
    turn = 0
    seq = 0
    while not stop.flag:
        events = dict(poller.poll(100))
        if front in events:
            for _ in range(BATCH):
                try:
                    address, *frames = front.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                body = protocol.unpack(frames).body
                req = body["req"]
                if body["op"] == "health":
                    answer = Reply(req, {"workers": len(workers)})
                    send_frames(front, [address, *protocol.reply(answer)])
                    continue
                if not workers:
                    answer = Reply(req, error=ErrorInfo(503, "no", ""))
                    send_frames(front, [address, *protocol.reply(answer)])
                    continue
                spec = body["args"]["tasks"][0]
                seq += 1
                task_id = f"{seq:032x}"
                pending[task_id] = (address, req)
                worker = workers[turn % len(workers)]
                turn += 1
                entry = {"task_id": task_id, "attempt": 1, "handler": spec["handler"],
                         "args": spec["args"], "timeout": None}  # fmt: skip
                send_frames(back, [worker, *protocol.pack(Command.DISPATCH, {"tasks": [entry]})])
        if back in events:
            for _ in range(BATCH):
                try:
                    address, *frames = back.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                message = protocol.unpack(frames)
                if message.command is Command.READY:
                    workers.append(address)
                    continue
                for result in message.body["results"]:
                    client, req = pending.pop(result["task_id"])
                    value = {"id": result["task_id"], "status": result["status"],
                             "result": result["result"]}  # fmt: skip
                    send_frames(front, [client, *protocol.reply(Reply(req, value))])
    ctx.destroy(linger=0)


def echo_worker(back_endpoint: str) -> None:
    stop = StopFlag()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(back_endpoint)
    send_frames(sock, protocol.pack(Command.READY, {"id": "echo", "slots": 1}))
    while not stop.flag:
        if not sock.poll(100):
            continue
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            for task in protocol.unpack(frames).body["tasks"]:
                outcome = {"task_id": task["task_id"], "attempt": task["attempt"],
                           "status": "completed", "result": task["args"]}  # fmt: skip
                outcome["error"] = None
                send_frames(sock, protocol.pack(Command.DONE, {"results": [outcome]}))
    ctx.destroy(linger=0)


# -- the client (``python -m bench.floor client``) ------------------------------------------


class RelayClient:
    """A client of the relay (one per thread)."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(endpoint)
        self.req = 0

    def send(self, op: str, args: dict[str, Any]) -> int:
        self.req += 1
        body = {"req": self.req, "op": op, "args": args}
        send_frames(self.sock, protocol.pack(Command.REQUEST, body))
        return self.req

    def recv(self, timeout: float) -> dict[str, Any]:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("the relay did not answer")
        body: dict[str, Any] = protocol.unpack(self.sock.recv_multipart()).body
        return body

    def submit(self, i: int) -> int:
        return self.send("submit", {"tasks": [{"handler": "echo", "args": _args(i)}]})

    def wait_workers(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            req = self.send("health", {})
            while (body := self.recv(5))["req"] != req:
                pass
            if body["value"]["workers"] >= count:
                return
            time.sleep(0.05)
        raise TimeoutError("the echo workers never registered with the relay")

    def round_trip(self, i: int) -> None:
        """One task through the relay and back, its result checked."""
        req = self.submit(i)
        _check(self.recv(10), {req: i})

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def _args(i: int) -> bytes:
    return i.to_bytes(8, "big")


def _check(body: dict[str, Any], expected: dict[int, int]) -> None:
    i = expected.pop(body["req"])
    if not body["ok"] or body["value"]["result"] != _args(i):
        raise RuntimeError(f"wrong reply to request {body['req']}: {body!r}")


def pipelined(client: RelayClient, count: int, window: int, limit: float) -> dict[str, float]:
    expected: dict[int, int] = {}
    sent = done = 0
    start = time.perf_counter()
    deadline = start + limit
    while done < sent or sent < count:
        while sent < count and sent - done < window and time.perf_counter() < deadline:
            expected[client.submit(sent)] = sent
            sent += 1
        _check(client.recv(10), expected)
        done += 1
        if sent == done and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    return {"count": done, "seconds": elapsed, "rate": done / elapsed}


def serial(client: RelayClient, count: int, warmup: int, limit: float) -> list[float]:
    samples: list[float] = []
    deadline = time.perf_counter() + limit
    for i in range(warmup + count):
        began = time.perf_counter()
        client.round_trip(i)
        if i >= warmup:
            samples.append(time.perf_counter() - began)
        if began > deadline:
            break
    return samples


def client_main(args: argparse.Namespace) -> None:
    client = RelayClient(args.front)
    try:
        client.wait_workers(args.workers)
        serial(client, 0, args.warmup, TIME_LIMIT)  # connections up, code paths warm
        out: dict[str, Any] = {}
        out["pipelined"] = pipelined(client, args.count, args.window, TIME_LIMIT)
        out["serial"] = serial(client, args.serial, args.warmup, TIME_LIMIT)
        write_json(args.out, out)
    finally:
        client.close()


# -- the benchmark -------------------------------------------------------------------------


def start(procs: Procs) -> str:
    """Start the relay and its echo workers in ``procs``; returns the relay's client endpoint
    (the workers may not have said READY yet: ``RelayClient.wait_workers``)."""
    return start_relay(procs, "bench.floor", WORKERS)


def measure(quick: bool = False, reference: reference_mod.Reference | None = None) -> Floor:
    """Start the relay and its workers, run the client, and return the floor's figures
    (with ``reference``, or the reference relay's measured after them)."""
    count, serial_count = (PIPELINED // 10, SERIAL // 10) if quick else (PIPELINED, SERIAL)
    with Procs() as procs:
        front = start(procs)
        argv = ["client", "--front", front, "--workers", str(WORKERS), "--count", str(count),
                "--window", str(WINDOW), "--serial", str(serial_count),
                "--warmup", str(WARMUP)]  # fmt: skip
        out = run_child(procs, "floor-client", "bench.floor", argv, timeout=3 * TIME_LIMIT + 30)
    serial_latency = Latency.of(out["serial"])
    return Floor(
        out["pipelined"]["rate"], serial_latency, reference or reference_mod.measure(quick)
    )


def run(quick: bool = False, floor: Floor | None = None) -> Report:
    report = Report("floor (minimal ZeroMQ relay, same frames)")
    floor = floor or measure(quick)
    report.add(f"pipelined round trips/s (window {WINDOW}, {WORKERS} workers)", floor.rate,
               "round trips/s")  # fmt: skip
    report.add("one-at-a-time round trip p50", floor.serial.p50, "ms")
    report.add("one-at-a-time round trip p99", floor.serial.p99, "ms")
    report.add("one-at-a-time round trip max", floor.serial.max, "ms")
    return report


def main(argv: list[str] | None = None) -> None:
    parser, p_client = relay_parser(__doc__, count=PIPELINED, window=WINDOW, serial=SERIAL,
                                    warmup=WARMUP)  # fmt: skip
    p_client.add_argument("--workers", type=int, default=WORKERS)
    args = parser.parse_args(argv)
    if args.role == "relay":
        relay(args.front, args.back)
    elif args.role == "worker":
        echo_worker(args.back)
    elif args.role == "client":
        client_main(args)
    else:
        print(run(args.quick).table())


if __name__ == "__main__":
    main()
