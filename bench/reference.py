"""The reference relay: how fast this machine is against the one the targets were set on.

The performance issue sets its absolute targets (20,000 tasks/s, p99 under 2 ms, HTTP
p50 under 2 ms) from a bare ZeroMQ relay measured on another 2-core machine: client ->
ROUTER -> worker and back, msgpack, no scheduling, about 76,000 round trips/s pipelined
and 5,400 one at a time. This module runs that relay here, as the issue describes it,
so that every run says how this machine compares with that one:

- the relay binds a ROUTER for clients and a ROUTER for workers; two worker processes
  connect DEALERs and say ``ready``; a client DEALER sends ``[req, args]``, the relay
  forwards ``[client, req, args]`` to the next worker (round robin), the worker answers
  the same list, the relay sends ``[req, args]`` back to the client. One msgpack frame
  per message, packed and unpacked at every hop; nothing else (this is the issue's
  relay, not ours: ``bench.floor`` is the floor with our frames). Sends go through
  ``common.transport`` (plain int flags), the cheapest way pyzmq has, so that the
  relay's own overhead does not make this machine look slower than it is;
- pipelined: the client keeps 1,000 requests outstanding until a third of 100,000
  replies came back, three times; one at a time: 2,000 requests, each sent when the
  previous reply arrived, three times after 100 unmeasured ones (round trips/s, p50 and
  p99). The best round of each counts: the machine's speed, not its worst moment, so
  that a noisy minute does not lower the scaled targets.

``speed`` (pipelined, for rates) and ``serial_speed`` (one at a time, for latencies)
are this machine's figures over the published ones: an absolute target scaled by them
is the same demand made of this machine. The benchmarks report both the target as
written and the scaled one.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

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
from common.transport import send_frames

#: The issue's figures for this relay on the machine its targets were set on.
PUBLISHED_PIPELINED = 76_000.0
PUBLISHED_SERIAL = 5_400.0
#: How the benchmarks say what a scaled target is.
SCALED_NOTE = (
    "scaled target: the issue's figure for its machine times this machine's speed, the "
    "reference relay's rate here over the published one (pipelined for rates; one at a "
    "time for latencies, which divide by it)"
)
#: Round trips measured pipelined, requests outstanding meanwhile, and one at a time.
PIPELINED = 100_000
WINDOW = 1000
SERIAL = 2000
#: Rounds of each measurement; the best one counts.
ROUNDS = 3
#: Unmeasured one-at-a-time round trips first.
WARMUP = 100
#: Worker processes behind the relay.
WORKERS = 2
#: Upper bound of each measurement, in seconds.
TIME_LIMIT = 60.0
#: The args each request carries.
ARGS = b"12345678"


@dataclass(frozen=True)
class Reference:
    """The reference relay's figures on this machine."""

    #: Pipelined round trips per second.
    rate: float
    #: One-at-a-time round trips per second (count over the time they took together).
    serial_rate: float
    #: One-at-a-time round trips.
    serial: Latency

    @property
    def speed(self) -> float:
        """This machine's pipelined rate over the published one."""
        return self.rate / PUBLISHED_PIPELINED

    @property
    def serial_speed(self) -> float:
        """This machine's one-at-a-time rate over the published one."""
        return self.serial_rate / PUBLISHED_SERIAL


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # no limit: the window bounds what is queued
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def relay(front_endpoint: str, back_endpoint: str) -> None:
    stop = StopFlag()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    front, back = _socket(ctx, zmq.ROUTER), _socket(ctx, zmq.ROUTER)
    front.bind(front_endpoint)
    back.bind(back_endpoint)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    workers: list[bytes] = []
    turn = 0
    while not stop.flag:
        events = dict(poller.poll(100))
        while back in events:
            try:
                worker, payload = back.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            message = msgpack.unpackb(payload)
            if message == "ready":
                workers.append(worker)
                continue
            client, req, result = message
            send_frames(front, [client, msgpack.packb([req, result])])
        while front in events:
            try:
                client, payload = front.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            req, args = msgpack.unpackb(payload)
            if args is None:  # how many workers said ready (the client waits for them all)
                send_frames(front, [client, msgpack.packb([req, len(workers)])])
                continue
            worker = workers[turn % len(workers)]
            turn += 1
            send_frames(back, [worker, msgpack.packb([client, req, args])])
    ctx.destroy(linger=0)


def worker(back_endpoint: str) -> None:
    stop = StopFlag()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(ctx, zmq.DEALER)
    sock.connect(back_endpoint)
    sock.setsockopt(zmq.RCVTIMEO, 100)  # a blocking recv, waking to see a stop
    sock.send(msgpack.packb("ready"))
    while not stop.flag:
        try:
            client, req, args = msgpack.unpackb(sock.recv())
        except zmq.Again:
            continue
        sock.send(msgpack.packb([client, req, args]))
    ctx.destroy(linger=0)


def _receive(sock: zmq.Socket[bytes]) -> tuple[int, Any]:
    try:
        req, value = msgpack.unpackb(sock.recv())  # RCVTIMEO: raises zmq.Again when silent
    except zmq.Again:
        raise TimeoutError("the reference relay did not answer") from None
    return req, value


def _check(sock: zmq.Socket[bytes], expected: set[int]) -> None:
    req, args = _receive(sock)
    if req not in expected or args != ARGS:
        raise RuntimeError(f"wrong reply from the reference relay: {req!r} {args!r}")
    expected.discard(req)


def client_main(args: argparse.Namespace) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(ctx, zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(args.front)
    try:
        req = 0

        def send(expected: set[int], args: bytes | None = ARGS) -> None:
            nonlocal req
            req += 1
            sock.send(msgpack.packb([req, args]))
            expected.add(req)

        def one() -> float:
            expected: set[int] = set()
            began = time.perf_counter()
            send(expected)
            _check(sock, expected)
            return time.perf_counter() - began

        deadline = time.monotonic() + 30
        while True:  # until every worker said ready, or round robin would skip some
            send(set(), None)
            if _receive(sock)[1] >= WORKERS:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the reference relay's workers never said ready")
            time.sleep(0.05)
        for _ in range(args.warmup):
            one()

        def pipelined(count: int) -> float:
            expected: set[int] = set()
            began = time.perf_counter()
            deadline = began + TIME_LIMIT / ROUNDS
            done = 0
            while done < count and time.perf_counter() < deadline:
                while len(expected) < args.window and done + len(expected) < count:
                    send(expected)
                _check(sock, expected)
                done += 1
            while expected:
                _check(sock, expected)
                done += 1
            return done / (time.perf_counter() - began)

        # The best of a few rounds each way: what the machine can do, not its worst moment.
        rate = max(pipelined(args.count // ROUNDS) for _ in range(ROUNDS))
        rounds = [[one() for _ in range(args.serial)] for _ in range(ROUNDS)]
        write_json(args.out, {"rate": rate, "serial": min(rounds, key=sum)})
    finally:
        ctx.destroy(linger=0)


def measure(quick: bool = False) -> Reference:
    """Start the relay, its workers and the client; returns the relay's figures here."""
    count, serial_count = (PIPELINED // 10, SERIAL // 10) if quick else (PIPELINED, SERIAL)
    with Procs() as procs:
        front = start_relay(procs, "bench.reference", WORKERS)
        argv = ["client", "--front", front, "--count", str(count), "--window", str(WINDOW),
                "--serial", str(serial_count), "--warmup", str(WARMUP)]  # fmt: skip
        out = run_child(procs, "reference-client", "bench.reference", argv,
                        timeout=2 * TIME_LIMIT + 30)  # fmt: skip
    samples: list[float] = out["serial"]
    return Reference(out["rate"], len(samples) / sum(samples), Latency.of(samples))


def run(quick: bool = False, reference: Reference | None = None) -> Report:
    report = Report("reference relay (the issue's bare ZeroMQ relay, on this machine)")
    reference = reference or measure(quick)
    report.add(f"pipelined round trips/s (window {WINDOW}, {WORKERS} workers)", reference.rate,
               "round trips/s", base=PUBLISHED_PIPELINED,
               base_name="published")  # fmt: skip
    report.add("one-at-a-time round trips/s", reference.serial_rate, "round trips/s",
               base=PUBLISHED_SERIAL, base_name="published")  # fmt: skip
    report.add("one-at-a-time round trip p50", reference.serial.p50, "ms")
    report.add("one-at-a-time round trip p99", reference.serial.p99, "ms")
    return report


def main(argv: list[str] | None = None) -> None:
    parser, _client = relay_parser(__doc__, count=PIPELINED, window=WINDOW, serial=SERIAL,
                                    warmup=WARMUP)  # fmt: skip
    args = parser.parse_args(argv)
    if args.role == "relay":
        relay(args.front, args.back)
    elif args.role == "worker":
        worker(args.back)
    elif args.role == "client":
        client_main(args)
    else:
        print(run(args.quick).table())


if __name__ == "__main__":
    main()
