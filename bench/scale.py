"""Scale (issue item 4): a million pending tasks, and a million finished ones.

(a) Memory: a real broker (``--sync full``) with no workers; 1,000,000 ``echo`` tasks
    with 8 bytes of args each are submitted with ``submit_many`` in batches of 10,000,
    and the broker's resident memory (``VmRSS``) is read before and after: the figure is
    the difference divided by the number of tasks. The 8-byte args are not subtracted
    (they cost ~41 bytes each as Python ``bytes``), so this is slightly stricter than
    "arguments aside". While the tasks go in, a second client asks for ``health`` every
    10 ms: the longest answer is the longest the loop stalled (behind a 10,000-task
    submit, or a garbage collection).
(b) Dispatch: the scheduling core alone (``broker.core.Scheduler``, no sockets, no store,
    time passed in), in one fresh process holding two cores: one with N = 1,000 tasks
    waiting and one with N = 1,000,000. Each has one worker of 1 slot; each round
    submits one task (untimed, so N stay waiting) and times: report the running task's
    outcome (``core.report``) + ``core.schedule`` + ``core.take_outbox`` +
    ``core.take_dirty`` (what a loop turn does besides I/O), which dispatches exactly one
    task. Blocks of 1,000 rounds alternate between the two cores (20 blocks each), so
    both see the same machine load, and are timed in CPU time of the thread
    (``time.thread_time``), so time the process spends descheduled by other work does
    not count. The figure is the median of the blocks' mean time per dispatch for each
    N, and their ratio. Objects built before the rounds are frozen out of garbage
    collection (``gc.freeze``) so that neither core pays for scanning the other's tasks;
    the cost of one full collection over them is reported separately, since a broker
    holding a million tasks pays it now and then.
(c) Restart: the broker of (a) is killed with SIGKILL, and a new one started on the same
    store; the figure is the time from starting the process to the first answered
    ``health`` request (polled every ~50 ms), while it loads 1,000,000 pending tasks.
    Then, that broker stopped, the same store is loaded again in a fresh process with
    the broker's own classes to break the time down: reading the store
    (``SqliteStore.load``), rebuilding the core (``Scheduler.load``), and how many tasks
    the rebuild marks as changed, which the broker's first loop turn writes back before
    it answers anything.
(d) Restart on finished tasks: a store holding 1,000,000 ``echo`` tasks that completed
    (8 bytes of args and of result, one completed lease each), as a broker keeps them
    for ``retention`` (7 days by default), written by a child process with the broker's
    own store code (``SqliteStore.save``, the rows a broker writes; the store's tests pin
    that they load back field for field) since running a million tasks through workers
    would take minutes. A broker is started on it: the time from starting the process to
    the first ``health`` answer, its resident memory per task, and the mean of 100 ``get``
    requests for tasks picked at random (each one read whole from the store at its first
    ``get``), whose records must carry their results.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    Procs,
    Report,
    Target,
    arg_parser,
    rss_bytes,
    run_child,
    start_broker,
    write_json,
)
from broker.core import Scheduler, Timing
from broker.state import Lease, Task, Worker
from broker.store import open_store
from common.client import Client
from common.limits import MAX_BATCH
from common.messages import Assignment, Ready, RunOutcome
from common.models import LeaseOutcome, TaskStatus
from common.spec import TaskSpec

#: Pending tasks of the big case.
PENDING = 1_000_000
#: Pending tasks of the small dispatch case.
SMALL = 1000
#: Tasks per submit.
BATCH = 10_000
#: Dispatch rounds: blocks and rounds per block.
BLOCKS = 20
BLOCK = 1000
ARGS = b"12345678"
T0 = 1_000_000.0
#: Longest a restart may take before the benchmark gives up, in seconds.
RESTART_TIMEOUT = 600.0
#: Finished tasks in the store of (d), and the ones read back from it one by one.
FINISHED = 1_000_000
SAMPLED = 100


# -- (a) memory and (c) restart ---------------------------------------------------------------


@dataclass
class Memory:
    bytes_per_task: float
    submit_rate: float
    restart_seconds: float
    #: Resident memory per task of the restarted broker (after loading them from the store).
    restart_bytes_per_task: float
    #: Resident memory of a broker with no tasks.
    empty_bytes: int
    #: In-process breakdown of a restart on the same store (``reload``).
    reload: dict[str, float]
    #: Longest ``health`` round trip while the tasks were submitted, in seconds.
    longest_probe: float


def memory_and_restart(pending: int) -> Memory:
    with Procs() as procs:
        broker = start_broker(procs, "--sync", "full")
        before = rss_bytes(broker.proc.pid)
        spec = {"handler": "echo", "args": ARGS}
        probe = _Probe(broker.endpoint)
        start = time.perf_counter()
        try:
            with Client(broker.endpoint, timeout=120) as client:
                for first in range(0, pending, BATCH):
                    client.submit_many([spec] * min(BATCH, pending - first))
                counts = client.health()["tasks"]
        finally:
            longest_probe = probe.stop()
        submitted = time.perf_counter() - start
        if counts["pending"] != pending:
            raise RuntimeError(f"the broker holds {counts}, not {pending:,} pending tasks")
        after = rss_bytes(broker.proc.pid)
        broker.proc.kill()
        restarted = start_broker(procs, "--sync", "full", store=broker.store,
                                 timeout=RESTART_TIMEOUT)  # fmt: skip
        reloaded = rss_bytes(restarted.proc.pid)
        with Client(restarted.endpoint, timeout=60) as client:
            counts = client.health()["tasks"]
        if counts["pending"] != pending:
            raise RuntimeError(f"the restarted broker holds {counts}")
        restarted.proc.stop()
        argv = ["reload", "--store", broker.store]
        breakdown = run_child(procs, "scale-reload", "bench.scale", argv, RESTART_TIMEOUT)
    return Memory(
        bytes_per_task=(after - before) / pending,
        submit_rate=pending / submitted,
        restart_seconds=restarted.serving - restarted.proc.started,
        restart_bytes_per_task=(reloaded - before) / pending,
        empty_bytes=before,
        reload=breakdown,
        longest_probe=longest_probe,
    )


class _Probe:
    """A thread asking for ``health`` every 10 ms; remembers the longest answer."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.longest = 0.0
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with Client(self.endpoint, timeout=60) as client:
                while not self._done.wait(0.01):
                    began = time.perf_counter()
                    client.health()
                    self.longest = max(self.longest, time.perf_counter() - began)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> float:
        self._done.set()
        self._thread.join(120)
        if self.error is not None:
            raise self.error
        return self.longest


def reload(path: str) -> dict[str, float]:
    """What a restart does before serving, timed in-process: read the store, rebuild the core;
    and how many tasks the rebuild marks as changed (the first loop turn writes them). The
    collector is off meanwhile, as in ``BrokerServer.bind``."""
    gc.disable()
    began = time.perf_counter()
    store = open_store(path, "full")
    tasks = store.load()
    loaded = time.perf_counter()
    core = Scheduler(Timing())
    core.load(tasks, time.time(), store=store)
    rebuilt = time.perf_counter()
    gc.enable()
    dirty = len(core.take_dirty())
    store.close()
    return {"store_load": loaded - began, "core_load": rebuilt - loaded, "dirty": dirty}


# -- (d) restart on finished tasks -----------------------------------------------------------


@dataclass
class FinishedRestart:
    restart_seconds: float
    bytes_per_task: float
    #: Mean time of a ``get`` of a task not read yet since the restart, in seconds.
    first_get: float


def write_finished(path: str, count: int, sampled: int) -> dict[str, Any]:
    """Fill a new store with ``count`` completed echo tasks (in a child process); returns
    the seconds it took and the ids of ``sampled`` of them picked at random."""
    began = time.perf_counter()
    picked = set(random.Random(7).sample(range(1, count + 1), min(sampled, count)))
    sample = []
    store = open_store(path, "off")
    now = time.time()
    for first in range(1, count + 1, BATCH):
        tasks = []
        for seq in range(first, min(first + BATCH, count + 1)):
            args = seq.to_bytes(8, "big")
            task = Task(os.urandom(16).hex(), seq, "echo", "echo", args, [], 0, 0, None, (), (),
                        now, TaskStatus.COMPLETED, "w-1", 1, 0, 0, args, None, now, now, 0.0,
                        None, [Lease(1, "w-1", now, now, LeaseOutcome.COMPLETED)])  # fmt: skip
            tasks.append(task)
            if seq in picked:
                sample.append(task.id)
        store.save(tasks)
    store.close()
    return {"seconds": time.perf_counter() - began, "sample": sample}


def finished_restart(count: int, sampled: int, empty_bytes: int) -> FinishedRestart:
    """(d); ``empty_bytes``: the resident memory of a broker with no tasks, from (a)."""
    with Procs() as procs:
        path = str(procs.dir / "finished.db")
        written = run_child(procs, "scale-finished", "bench.scale",
                            ["write-finished", "--store", path, "--count", str(count),
                             "--sampled", str(sampled)], RESTART_TIMEOUT)  # fmt: skip
        broker = start_broker(procs, "--sync", "full", store=path, timeout=RESTART_TIMEOUT)
        loaded = rss_bytes(broker.proc.pid)
        with Client(broker.endpoint, timeout=60) as client:
            counts = client.health()["tasks"]
            if counts["completed"] != count:
                raise RuntimeError(f"the restarted broker holds {counts}")
            ids = written["sample"]
            began = time.perf_counter()
            for task_id in ids:
                record = client.get(task_id)
                if record["result"] != record["args"] or len(record["leases"]) != 1:
                    raise RuntimeError(f"task {task_id} read back wrong: {record!r}")
            first_get = (time.perf_counter() - began) / len(ids)
    return FinishedRestart(
        restart_seconds=broker.serving - broker.proc.started,
        bytes_per_task=(loaded - empty_bytes) / count,
        first_get=first_get,
    )


# -- (b) dispatch in the core alone (``python -m bench.scale core``) ------------------------


@dataclass
class _Core:
    """A core with one worker of 1 slot running one task, and ``pending`` tasks waiting."""

    core: Scheduler
    worker: Worker
    address: bytes
    running: Assignment
    now: float = T0

    @classmethod
    def build(cls, pending: int) -> _Core:
        core = Scheduler(Timing())
        address = b"bench-worker"
        core.register(address, Ready("w", 1, ["echo"]), T0)
        worker = core.worker_at(address)
        assert worker is not None
        spec = {"handler": "echo", "args": ARGS}
        for first in range(0, pending + 1, MAX_BATCH):
            count = min(MAX_BATCH, pending + 1 - first)
            core.submit([TaskSpec.parse(spec) for _ in range(count)], T0)
        core.take_dirty()
        core.schedule(T0)
        (running,) = core.take_outbox().dispatch[address]
        return cls(core, worker, address, running)

    def rounds(self, count: int) -> float:
        """Mean CPU seconds of ``count`` dispatches (one submit each, untimed, before)."""
        core, spec, spent = self.core, {"handler": "echo", "args": ARGS}, 0.0
        for _ in range(count):
            self.now += 0.0001
            core.submit([TaskSpec.parse(spec)], self.now)
            outcome = RunOutcome(self.running.run, TaskStatus.COMPLETED, ARGS)
            began = time.thread_time()
            core.report(self.worker, [outcome], self.now)
            core.schedule(self.now)
            outbox = core.take_outbox()
            core.take_dirty()
            spent += time.thread_time() - began
            (self.running,) = outbox.dispatch[self.address]
        return spent / count


def core_dispatch(small: int, big: int, blocks: int, block: int) -> dict[str, Any]:
    """Per-block mean CPU seconds per dispatch with ``small`` and with ``big`` tasks waiting,
    the blocks of the two alternating; and one full garbage collection with both held."""
    cores = {"small": _Core.build(small), "big": _Core.build(big)}
    # Objects built so far are left out of collections, so neither case pays for scanning
    # the other's tasks; what each round allocates is collected as usual.
    gc.collect()
    gc.freeze()
    means: dict[str, list[float]] = {"small": [], "big": []}
    for i in range(blocks):
        for name in ("small", "big") if i % 2 == 0 else ("big", "small"):
            means[name].append(cores[name].rounds(block))
    gc.unfreeze()
    began = time.perf_counter()
    gc.collect()
    full_gc = time.perf_counter() - began
    waiting = {name: c.core.index.counts[TaskStatus.PENDING] for name, c in cores.items()}
    return {"means": means, "waiting": waiting, "full_gc": full_gc}


@dataclass
class Dispatch:
    small: float
    big: float
    small_mean: float
    big_mean: float
    #: Seconds of one full garbage collection with both cores held.
    full_gc: float


def dispatch(procs: Procs, small: int, big: int, blocks: int, block: int) -> Dispatch:
    argv = ["core", "--small", str(small), "--big", str(big), "--blocks", str(blocks),
            "--block", str(block)]  # fmt: skip
    out = run_child(procs, "scale-core", "bench.scale", argv, timeout=600)
    means = out["means"]
    return Dispatch(
        small=statistics.median(means["small"]),
        big=statistics.median(means["big"]),
        small_mean=statistics.fmean(means["small"]),
        big_mean=statistics.fmean(means["big"]),
        full_gc=out["full_gc"],
    )


def run(quick: bool = False, floor: object = None) -> Report:
    pending = PENDING // 100 if quick else PENDING
    blocks = BLOCKS // 4 if quick else BLOCKS
    report = Report("scale: a million tasks")
    mem = memory_and_restart(pending)
    report.add(f"broker RSS per pending task ({pending:,} tasks, 8-byte args)",
               mem.bytes_per_task, "bytes", target=Target("<=", 1024),
               note=f"RSS with no tasks {mem.empty_bytes / 2**20:.0f} MiB")  # fmt: skip
    report.add(f"submit_many rate filling it (batches of {BATCH:,})", mem.submit_rate, "tasks/s")
    report.add("longest health answer while filling it (probe every 10 ms)",
               mem.longest_probe * 1e3, "ms")  # fmt: skip
    report.add(f"restart on {pending:,} pending tasks: process start to first health answer",
               mem.restart_seconds, "s", target=Target("<=", 10))  # fmt: skip
    report.add("restart: of which reading the store (SqliteStore.load, in-process)",
               mem.reload["store_load"], "s")  # fmt: skip
    report.add("restart: of which rebuilding the core (Scheduler.load, in-process)",
               mem.reload["core_load"], "s")  # fmt: skip
    report.add("restart: tasks the rebuild marks changed (rewritten by the first commit)",
               int(mem.reload["dirty"]), "tasks")  # fmt: skip
    report.add("RSS per pending task after the restart", mem.restart_bytes_per_task, "bytes")
    finished = FINISHED // 100 if quick else FINISHED
    fin = finished_restart(finished, SAMPLED, mem.empty_bytes)
    report.add(f"restart on {finished:,} finished tasks: process start to first health answer",
               fin.restart_seconds, "s", target=Target("<=", 10))  # fmt: skip
    report.add("RSS per finished task after that restart", fin.bytes_per_task, "bytes")
    report.add("get of a finished task, first since the restart (mean of 100)",
               fin.first_get * 1e3, "ms")  # fmt: skip
    with Procs() as procs:
        disp = dispatch(procs, SMALL, pending, blocks, BLOCK)
    report.add(f"core: time per dispatch, {SMALL:,} waiting", disp.small * 1e6, "us",
               note=f"mean of blocks {disp.small_mean * 1e6:.1f} us")  # fmt: skip
    report.add(f"core: time per dispatch, {pending:,} waiting", disp.big * 1e6, "us",
               target=Target("<=", 1.5, on_ratio=True), base=disp.small * 1e6,
               base_name=f"{SMALL:,} waiting",
               note=f"mean of blocks {disp.big_mean * 1e6:.1f} us")  # fmt: skip
    report.add(f"core: one full garbage collection with {pending:,} tasks held", disp.full_gc * 1e3,
               "ms")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    parser = arg_parser(__doc__)
    sub = parser.add_subparsers(dest="role")
    p_core = sub.add_parser("core")
    p_core.add_argument("--small", type=int, default=SMALL)
    p_core.add_argument("--big", type=int, default=PENDING)
    p_core.add_argument("--blocks", type=int, default=BLOCKS)
    p_core.add_argument("--block", type=int, default=BLOCK)
    p_core.add_argument("--out", required=True)
    p_finished = sub.add_parser("write-finished")
    p_finished.add_argument("--store", required=True)
    p_finished.add_argument("--count", type=int, default=FINISHED)
    p_finished.add_argument("--sampled", type=int, default=SAMPLED)
    p_finished.add_argument("--out", required=True)
    p_reload = sub.add_parser("reload")
    p_reload.add_argument("--store", required=True)
    p_reload.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "core":
        write_json(args.out, core_dispatch(args.small, args.big, args.blocks, args.block))
    elif args.role == "write-finished":
        write_json(args.out, write_finished(args.store, args.count, args.sampled))
    elif args.role == "reload":
        write_json(args.out, reload(args.store))
    else:
        print(run(args.quick).table())


if __name__ == "__main__":
    main()
