"""Durable submits: the submit rate with ``synchronous=FULL`` against ``synchronous=OFF``.

The broker commits every task a loop turn changed in one transaction before it answers,
so concurrent submits share one fsync (group commit). This benchmark measures how much
that durability costs: C client processes each send submits one at a time (a round
trip each) to a broker with no workers, once with ``--sync full`` and once with
``--sync off``; the figure to watch is the ratio of the two rates (target: at least 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench.harness import (
    Procs,
    Report,
    Target,
    barrier_release,
    barrier_wait,
    start_broker,
    write_json,
)
from common.client import Client

#: Client processes submitting at once.
CLIENTS = 16
#: Submits per client process.
SUBMITS = 400
#: Longest a client process may take, in seconds.
TIME_LIMIT = 600.0


def _submitter(endpoint: str, count: int, barrier: str, out: str) -> None:
    with Client(endpoint, timeout=30) as client:
        client.health()
        barrier_wait(barrier, str(os.getpid()))
        for i in range(count):
            client.submit("echo", b"x" * 64, name=f"bench-{i}")
    write_json(out, {"end": time.time()})


def submit_rate(sync: str, clients: int, submits: int) -> float:
    """Submits per second through ``clients`` concurrent direct clients (one process each)."""
    with Procs() as procs:
        endpoint = start_broker(procs, "--sync", sync).endpoint
        barrier = procs.dir / "barrier"
        barrier.mkdir()
        argv = ["submitter", "--endpoint", endpoint, "--count", str(submits),
                "--barrier", str(barrier)]  # fmt: skip
        children = [
            procs.python("submitter", "bench.durable_submit", *argv, "--out",
                         str(procs.dir / f"submitter-{i}.json"))
            for i in range(clients)
        ]  # fmt: skip
        # The clock starts once every process is connected.
        start = barrier_release(str(barrier), children)
        ends = []
        for i, child in enumerate(children):
            if child.wait(TIME_LIMIT) != 0:
                raise RuntimeError(f"a submitter failed: {child.tail()}")
            ends.append(float(json.loads((procs.dir / f"submitter-{i}.json").read_text())["end"]))
        return clients * submits / (max(ends) - start)


def run(quick: bool = False, floor: object = None, clients: int = CLIENTS,
        submits: int = SUBMITS) -> Report:  # fmt: skip
    if quick:
        submits //= 10
    report = Report("durable submits (group commit)")
    full = submit_rate("full", clients, submits)
    off = submit_rate("off", clients, submits)
    report.add(f"submits/s, sync=off, {clients} clients", off, "tasks/s")
    report.add(f"submits/s, sync=full, {clients} clients", full, "tasks/s",
               target=Target(">=", 0.5, on_ratio=True), base=off, base_name="sync=off")  # fmt: skip
    # One client, one submit at a time: every submit pays a whole fsync (no group to share).
    lone_full = submit_rate("full", 1, submits)
    lone_off = submit_rate("off", 1, submits)
    report.add("submits/s, sync=off, 1 client", lone_off, "tasks/s")
    report.add("submits/s, sync=full, 1 client (no group to share)", lone_full, "tasks/s",
               base=lone_off, base_name="sync=off")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role")
    p_sub = sub.add_parser("submitter")
    p_sub.add_argument("--endpoint", required=True)
    p_sub.add_argument("--count", type=int, required=True)
    p_sub.add_argument("--barrier", required=True)
    p_sub.add_argument("--out", required=True)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--submits", type=int, default=SUBMITS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "submitter":
        _submitter(args.endpoint, args.count, args.barrier, args.out)
    else:
        print(run(args.quick, clients=args.clients, submits=args.submits).table())


if __name__ == "__main__":
    main()
