"""Durable submits: the submit rate with ``synchronous=FULL`` against ``synchronous=OFF``.

The broker commits every task a loop turn changed in one transaction before it answers,
so concurrent submits share one fsync (group commit). This benchmark measures how much
that durability costs: C client processes each send submits one at a time (a round
trip each) to a broker with no workers, once with ``--sync full`` and once with
``--sync off``; the figure to watch is the ratio of the two rates (target: at least 0.5).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from bench.harness import Report, broker
from common.client import Client

#: Client processes submitting at once.
CLIENTS = 16
#: Submits per client process.
SUBMITS = 400


def _submitter(endpoint: str, count: int, start: float) -> None:
    with Client(endpoint, timeout=30) as client:
        client.health()
        while time.time() < start:
            time.sleep(0.001)
        for i in range(count):
            client.submit("echo", b"x" * 64, name=f"bench-{i}")


def submit_rate(sync: str, clients: int, submits: int) -> float:
    """Submits per second through ``clients`` concurrent direct clients."""
    with broker("--sync", sync) as endpoint:
        ctx = multiprocessing.get_context("spawn")
        start = time.time() + 2.0  # every process connected before the clock starts
        procs = [
            ctx.Process(target=_submitter, args=(endpoint, submits, start)) for _ in range(clients)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=600)
            if proc.exitcode != 0:
                raise RuntimeError(f"a submitter failed with exit code {proc.exitcode}")
        return clients * submits / (time.time() - start)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--submits", type=int, default=SUBMITS)
    args = parser.parse_args(argv)
    report = Report("durable submits (group commit)")
    full = submit_rate("full", args.clients, args.submits)
    off = submit_rate("off", args.clients, args.submits)
    report.add(f"submits/s, sync=full, {args.clients} clients", full, "tasks/s")
    report.add(f"submits/s, sync=off, {args.clients} clients", off, "tasks/s")
    report.add("full / off", full / off, "ratio (target >= 0.5)")
    # One client, one submit at a time: every submit pays a whole fsync (no group to share).
    lone_full = submit_rate("full", 1, args.submits)
    lone_off = submit_rate("off", 1, args.submits)
    report.add("submits/s, sync=full, 1 client", lone_full, "tasks/s")
    report.add("submits/s, sync=off, 1 client", lone_off, "tasks/s")
    report.add("full / off, 1 client", lone_full / lone_off, "ratio (no group to share)")
    return report


if __name__ == "__main__":
    print(main().table())
