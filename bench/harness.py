"""What every benchmark shares: starting processes on free ports, measuring, and reporting.

Processes: a broker, workers, the REST API and the benchmarks' own helper processes
(the floor's relay, HTTP load generators) are subprocesses, each in its own session
with its output in a log file, and are killed by process group when their ``Procs``
group closes (SIGTERM, then SIGKILL after a grace period). When a benchmark fails,
the tail of every log is printed to stderr. Traffic stays on 127.0.0.1.

Reporting: a benchmark adds figures to a ``Report``; each figure is printed at once as
one JSON line (``{"bench", "metric", "value", "unit", "target", "base", "ratio", "ok"}``)
and ``summary_table`` prints every figure at the end with its target, the floor (or
baseline) beside it and the ratio of the two.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import operator
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from common.client import Client
from common.errors import Unavailable

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a process gets to stop after SIGTERM before its group is killed.
STOP_GRACE = 10.0
#: Seconds to wait for a broker, worker or API to come up.
START_TIMEOUT = 60.0
#: Lines of each log printed when a benchmark fails.
LOG_TAIL = 20


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose help shows a module docstring as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def standalone(doc: str | None, run: Callable[[bool], Report], argv: list[str] | None) -> None:
    """``python -m bench.NAME [--quick]`` for a benchmark without subcommands."""
    parser = arg_parser(doc)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args(argv).quick).table())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- processes ----------------------------------------------------------------------------


class Proc:
    """A subprocess in its own session (so its whole group can be killed), logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            #: Process start, ``time.perf_counter`` clock.
            self.started = time.perf_counter()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=child_env(),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole group and reap the process."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=STOP_GRACE)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL the group if it is still there after ``grace`` seconds."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=STOP_GRACE)
        # Anything left in its group (a gunicorn worker, a pool child) goes too.
        self.signal(signal.SIGKILL)
        return self.popen.returncode

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; kill its group if it takes too long."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name} did not finish within {timeout:g} s") from None

    def tail(self, lines: int = LOG_TAIL) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Procs:
    """A group of subprocesses stopped together, last started first.

    Use as a context manager; on an exception the tail of every log goes to stderr.
    Logs live in a temporary directory removed on exit.
    """

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="zmqs-bench-")
        self.dir = Path(self._tmp.name)
        self.procs: list[Proc] = []
        self._names: dict[str, int] = {}

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
            if exc is not None:
                for proc in self.procs:
                    print(f"--- {proc.name} (exit {proc.popen.returncode}), last lines:",
                          file=sys.stderr)  # fmt: skip
                    print(proc.tail(), file=sys.stderr)
        finally:
            self._tmp.cleanup()

    def start(self, name: str, argv: Sequence[str]) -> Proc:
        count = self._names[name] = self._names.get(name, 0) + 1
        unique = name if count == 1 else f"{name}-{count}"
        proc = Proc(unique, argv, self.dir / f"{unique}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def python(self, name: str, module: str, *args: str) -> Proc:
        """``python -m module args...`` with this interpreter."""
        return self.start(name, [sys.executable, "-m", module, *args])


# -- the scheduler's processes ------------------------------------------------------------


@dataclass
class Broker:
    endpoint: str
    store: str
    proc: Proc
    #: When it first answered ``health`` (``time.perf_counter``; compare with ``proc.started``).
    serving: float


def start_broker(
    procs: Procs,
    *extra: str,
    store: str | None = None,
    endpoint: str | None = None,
    timeout: float = START_TIMEOUT,
) -> Broker:
    """A broker on a free port (or ``endpoint``) with its store in ``store`` (default: a new
    file in the group's temporary directory); returns once it answers ``health``."""
    endpoint = endpoint or free_endpoint()
    store = store or str(procs.dir / f"store-{len(procs.procs)}.db")
    proc = procs.python("broker", "broker", "--bind", endpoint, "--data", store,
                        "--log-level", "WARNING", *extra)  # fmt: skip
    serving = wait_health(endpoint, proc, timeout)
    return Broker(endpoint, store, proc, serving)


def wait_health(endpoint: str, proc: Proc | None = None, timeout: float = START_TIMEOUT) -> float:
    """Poll ``health`` every few tens of milliseconds until the broker answers; returns the
    ``time.perf_counter`` of the answer."""
    deadline = time.monotonic() + timeout
    with Client(endpoint, timeout=0.05) as client:
        while True:
            try:
                client.health()
                return time.perf_counter()
            except Unavailable:
                if proc is not None and not proc.alive():
                    raise RuntimeError(f"{proc.name} exited: {proc.tail()}") from None
                if time.monotonic() > deadline:
                    raise


def start_worker(procs: Procs, endpoint: str, worker_id: str, concurrency: int) -> Proc:
    """A ``zmq-worker`` (thread pool) with this id and slot count; not waited for."""
    return procs.python("worker", "worker", "--broker", endpoint, "--id", worker_id,
                        "--concurrency", str(concurrency), "--log-level", "WARNING")  # fmt: skip


def wait_workers(endpoint: str, worker_ids: Sequence[str], timeout: float = START_TIMEOUT) -> None:
    """Wait until every one of these workers is online."""
    deadline = time.monotonic() + timeout
    with Client(endpoint, timeout=2.0) as client:
        while True:
            online = {w["id"] for w in client.workers() if w["status"] == "online"}
            if set(worker_ids) <= online:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(set(worker_ids) - online)} never came online")
            time.sleep(0.05)


def start_workers(procs: Procs, endpoint: str, count: int, concurrency: int) -> dict[str, Proc]:
    """``count`` workers, waited for until online; returns their processes by id."""
    workers: dict[str, Proc] = {}
    for i in range(count):
        worker_id = f"bench-w{i + 1}"
        workers[worker_id] = start_worker(procs, endpoint, worker_id, concurrency)
    wait_workers(endpoint, list(workers))
    return workers


@dataclass
class Api:
    port: int
    proc: Proc


def start_api(procs: Procs, endpoint: str, processes: int, *extra: str) -> Api:
    """The REST API under gunicorn (``zmq-api``, with ``extra`` flags) on a free port;
    returns once ``GET /health`` answers 200."""
    port = free_port()
    proc = procs.python("api", "api", "--listen", f"127.0.0.1:{port}", "--broker", endpoint,
                        "--processes", str(processes), "--log-level", "WARNING",
                        *extra)  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return Api(port, proc)
            finally:
                conn.close()
        if not proc.alive():
            raise RuntimeError(f"the API exited: {proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError("the API never answered GET /health")
        time.sleep(0.1)


def start_relay(procs: Procs, module: str, workers: int) -> str:
    """Start ``python -m module relay`` and ``workers`` of ``python -m module worker`` (the
    floor's and the reference's relays); returns the relay's client endpoint."""
    front, back = free_endpoint(), free_endpoint()
    name = module.rpartition(".")[2]
    procs.python(f"{name}-relay", module, "relay", "--front", front, "--back", back)
    for _ in range(workers):
        procs.python(f"{name}-worker", module, "worker", "--back", back)
    return front


def relay_parser(
    doc: str | None, *, count: int, window: int, serial: int, warmup: int
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line of a relay module: ``relay``, ``worker`` and ``client`` roles, or
    none for a standalone run (``--quick``); returns the parser and the client's one."""
    parser = arg_parser(doc)
    parser.add_argument("--quick", action="store_true")
    sub = parser.add_subparsers(dest="role")
    p_relay = sub.add_parser("relay")
    p_relay.add_argument("--front", required=True)
    p_relay.add_argument("--back", required=True)
    sub.add_parser("worker").add_argument("--back", required=True)
    p_client = sub.add_parser("client")
    p_client.add_argument("--front", required=True)
    p_client.add_argument("--count", type=int, default=count)
    p_client.add_argument("--window", type=int, default=window)
    p_client.add_argument("--serial", type=int, default=serial)
    p_client.add_argument("--warmup", type=int, default=warmup)
    p_client.add_argument("--out", required=True)
    return parser, p_client


class StopFlag:
    """Set by SIGTERM or SIGINT, for a helper process's loop to notice (a handler that only
    sets a flag is safe)."""

    def __init__(self) -> None:
        self.flag = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        self.flag = True


def run_child(procs: Procs, name: str, module: str, args: Sequence[str], timeout: float) -> Any:
    """Run ``python -m module args... --out FILE`` to completion; returns the JSON it wrote."""
    out = procs.dir / f"{name}-{len(procs.procs)}.json"
    proc = procs.python(name, module, *args, "--out", str(out))
    if proc.wait(timeout) != 0:
        raise RuntimeError(f"{proc.name} failed (exit {proc.popen.returncode}): {proc.tail()}")
    return json.loads(out.read_text())


def write_json(path: str, value: Any) -> None:
    """How a child process hands its figures back to ``run_child``."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def barrier_wait(directory: str, name: str, timeout: float = START_TIMEOUT) -> float:
    """In a child: say it is ready, then wait for ``barrier_release`` to name the common start
    (``time.time``); returns once that moment has come."""
    Path(directory, f"ready-{name}").touch()
    go = Path(directory, "go")
    deadline = time.monotonic() + timeout
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released from the start barrier")
        time.sleep(0.002)
    start = float(go.read_text())
    while time.time() < start:
        time.sleep(0.0005)
    return start


def barrier_release(
    directory: str, children: Sequence[Proc], delay: float = 0.2, timeout: float = START_TIMEOUT
) -> float:
    """In the parent: wait until every child is ready, then set the common start a little
    later; returns it (``time.time``)."""
    deadline = time.monotonic() + timeout
    while len(list(Path(directory).glob("ready-*"))) < len(children):
        for child in children:
            if not child.alive() and child.popen.returncode != 0:
                raise RuntimeError(f"{child.name} failed before the start: {child.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError("children never got ready")
        time.sleep(0.01)
    start = time.time() + delay
    write_json(os.path.join(directory, "go"), start)
    return start


def cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) used so far by the live processes of a process group."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used by process groups (and this process) between ``start`` and ``stop``, as a
    percentage of one core over the wall-clock time between the two."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups
        self._began: dict[str, float] = {}
        self._wall = 0.0
        self.percent: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_seconds(pgid) for name, pgid in self.groups.items()}
        sample["this process"] = time.process_time()
        return sample

    def start(self) -> None:
        self._began = self._sample()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, float]:
        ended = self._sample()
        wall = time.perf_counter() - self._wall
        self.percent = {k: 100 * (ended[k] - self._began[k]) / wall for k in ended}
        return self.percent


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (``VmRSS`` in ``/proc/PID/status``), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- statistics ------------------------------------------------------------------------------


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of unsorted samples."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Latency:
    """p50, p99 and max of round trips, in milliseconds."""

    p50: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = [s * 1000 for s in seconds]
        return cls(percentile(ms, 50), percentile(ms, 99), max(ms), len(ms))


# -- reporting -------------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Target:
    """A goal for a figure: ``value OP bound``, or ``ratio OP bound`` (ratio to the base)."""

    op: str
    bound: float
    on_ratio: bool = False

    def met(self, value: float, ratio: float | None) -> bool | None:
        x = ratio if self.on_ratio else value
        return None if x is None else _OPS[self.op](x, self.bound)

    def __str__(self) -> str:
        return f"{'ratio ' if self.on_ratio else ''}{self.op} {self.bound:,g}"


@dataclass(frozen=True)
class Figure:
    bench: str
    metric: str
    value: float
    unit: str
    target: Target | None = None
    #: What the value is compared with (the floor, or a baseline), in the same unit.
    base: float | None = None
    base_name: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.base is None or self.base == 0:
            return None
        return self.value / self.base

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.ratio)

    def line(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        line: dict[str, Any] = {"bench": self.bench, "metric": self.metric,
                                "value": r(self.value), "unit": self.unit}  # fmt: skip
        if self.target is not None:
            line["target"] = str(self.target)
        if self.base is not None:
            line.update(base=r(self.base), base_name=self.base_name, ratio=r(self.ratio))
        if self.ok is not None:
            line["ok"] = self.ok
        if self.note:
            line["note"] = self.note
        return line


@dataclass
class Report:
    """Figures of one benchmark run, printed as JSON lines as they are added."""

    bench: str
    figures: list[Figure] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def add(
        self,
        metric: str,
        value: float,
        unit: str,
        *,
        target: Target | None = None,
        base: float | None = None,
        base_name: str = "floor",
        note: str = "",
    ) -> Figure:
        figure = Figure(self.bench, metric, value, unit, target, base, base_name, note)
        self.figures.append(figure)
        print(json.dumps(figure.line()), flush=True)
        return figure

    def table(self) -> str:
        return summary_table([self])


def fmt(x: float) -> str:
    """A figure with as many digits as it deserves."""
    if isinstance(x, int):
        return f"{x:,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1 or ax == 0:
        return f"{x:.2f}"
    return f"{x:#.3g}"


def summary_table(reports: Sequence[Report]) -> str:
    """Every figure of every report: value, target, floor or baseline, ratio, and whether the
    target is met."""
    header = ("figure", "value", "unit", "target", "floor / baseline", "ratio", "ok")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for report in reports:
        took = f"  {report.seconds:.0f} s" if report.seconds else ""
        rows.append((f"[{report.bench}]{took}", "", "", "", "", "", ""))
        if report.error:
            rows.append(("  FAILED: " + report.error, "", "", "", "", "", ""))
        for f in report.figures:
            base = "" if f.base is None else f"{fmt(f.base)} ({f.base_name})"
            ratio = "" if f.ratio is None else fmt(f.ratio)
            ok = {None: "", True: "yes", False: "NO"}[f.ok]
            target = "" if f.target is None else str(f.target)
            metric = "  " + f.metric
            if f.note:
                if f.note not in notes:  # a note shared by several figures is printed once
                    notes.append(f.note)
                metric += f" [{notes.index(f.note) + 1}]"
            rows.append((metric, fmt(f.value), f.unit, target, base, ratio, ok))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 5}

    def line(row: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                 enumerate(zip(row, widths, strict=True))]  # fmt: skip
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    numbered = [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join([line(header), rule, *(line(row) for row in rows), rule, *numbered])
