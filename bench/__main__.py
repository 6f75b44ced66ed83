"""``make bench`` / ``python -m bench [--quick] [NAME ...]``: run the benchmarks.

Every run first measures the issue's reference relay (``bench.reference``: how fast this
machine is against the one the absolute targets were set on) and the floor
(``bench.floor``: a minimal ZeroMQ relay with the same frames and no scheduling), and
hands both to the benchmarks that compare themselves with them. Figures are printed as JSON lines
as they come, then one summary table with every figure, its target, the floor or
baseline beside it and the ratio. A benchmark that fails is reported as failed in the
table and the others still run; the exit status is then 1.

``--quick`` runs everything at reduced sizes (10x to 100x smaller) for a fast check;
its figures are not comparable with a full run's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

from bench import (
    dashboard,
    durable_submit,
    flood,
    floor,
    graph,
    harness,
    history,
    http,
    latency,
    per_call,
    reference,
    scale,
    scale_workers,
    throughput,
    worker_cycle,
)
from bench.harness import Report

Runner = Callable[[bool, floor.Floor], Report]

#: In the order they run: the heaviest in memory (scale) last.
BENCHMARKS: dict[str, Runner] = {
    "durable_submit": durable_submit.run,
    "throughput": throughput.run,
    "http": http.run,
    "latency": latency.run,
    "flood": flood.run,
    "per_call": per_call.run,
    "worker_cycle": worker_cycle.run,
    "graph": graph.run,
    "history": history.run,
    "dashboard": dashboard.run,
    "scale_workers": scale_workers.run,
    "scale": scale.run,
}


def _context() -> dict[str, object]:
    """What the figures were measured on: commit, uncommitted files, machine, its load."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=harness.ROOT, capture_output=True,
                                  text=True, timeout=10)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--untracked-files=no").splitlines(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.arg_parser(__doc__)
    parser.prog = "python -m bench"
    known = ["floor", *BENCHMARKS]
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"any of {', '.join(known)} (default: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="reduced sizes, for a fast check")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(known)}")
    names = [n for n in BENCHMARKS if not args.names or n in args.names]
    began = time.perf_counter()
    print(json.dumps({"run": {**_context(), "quick": args.quick}}), flush=True)
    reports: list[Report] = []

    started = time.perf_counter()
    machine = reference.measure(args.quick)
    reports.append(reference.run(args.quick, machine))
    reports[-1].seconds = time.perf_counter() - started
    started = time.perf_counter()
    measured = floor.measure(args.quick, machine)
    reports.append(floor.run(args.quick, measured))
    reports[-1].seconds = time.perf_counter() - started
    for name in names:
        started = time.perf_counter()
        try:
            report = BENCHMARKS[name](args.quick, measured)
        except Exception as exc:
            traceback.print_exc()
            report = Report(name, error=f"{type(exc).__name__}: {exc}")
        report.seconds = time.perf_counter() - started
        reports.append(report)
    total = time.perf_counter() - began
    print(json.dumps({"run": {"seconds": round(total, 1), "loadavg": os.getloadavg()}}))
    print()
    print(harness.summary_table(reports))
    mode = "quick run" if args.quick else "full run"
    print(f"\n{mode}: {total / 60:.1f} min, load average at the end {os.getloadavg()[0]:.2f}")
    return 1 if any(r.error for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
