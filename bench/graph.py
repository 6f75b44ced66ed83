"""Graph (issue item 5): the cost of dependencies, per task.

A broker with a durable store (``--sync full``) and the same 2 workers × 4 slots as the
throughput benchmark. Two shapes of 10,000 ``echo`` tasks, each submitted with the
same three ``submit_many`` calls (1 task, then 9,998, then 1) and collected with one
``wait_many`` on all 10,000 ids:

- flat: no dependencies;
- graph: fan-out then fan-in: 1 root, 9,998 middle tasks each depending on the root,
  and 1 sink depending on all 9,998 middle tasks (one dependency list of 9,998 ids;
  the broker accepts up to 10,000).

Each is timed from the first submit to the answer of the ``wait_many`` (which comes
once all are final; every result must equal its args). After one unmeasured warm-up
run, the two shapes alternate, 5 runs each, on the same broker and workers; the figure
is (median graph − median flat) / 10,000, in microseconds per task. The machine's noise
shows in the spread of the runs, given in the notes: on a shared 2-core machine it can
be as large as the target.
"""

from __future__ import annotations

import statistics
import time

from bench.harness import Procs, Report, Target, standalone, start_broker, start_workers
from common.client import Client

#: Tasks per run.
TASKS = 10_000
#: Runs of each shape.
RUNS = 5
WORKERS = 2
CONCURRENCY = 4


def task_args(run: int, i: int) -> bytes:
    return b"%d-%d" % (run, i)


def one_run(client: Client, run: int, tasks: int, graph: bool) -> float:
    """Seconds from the first submit to the answer showing all ``tasks`` final."""
    began = time.perf_counter()
    root = client.submit_many([{"handler": "echo", "args": task_args(run, 0)}])
    deps = {"dependencies": root} if graph else {}
    middle = client.submit_many(
        [{"handler": "echo", "args": task_args(run, i), **deps} for i in range(1, tasks - 1)]
    )
    deps = {"dependencies": middle} if graph else {}
    sink = client.submit_many([{"handler": "echo", "args": task_args(run, tasks - 1), **deps}])
    ids = root + middle + sink
    briefs = client.wait_many(ids, timeout=120)
    elapsed = time.perf_counter() - began
    if len(briefs) != tasks:
        raise TimeoutError(f"{tasks - len(briefs)} tasks unfinished after 120 s")
    index = {task_id: i for i, task_id in enumerate(ids)}
    for brief in briefs:
        if brief["status"] != "completed" or brief["result"] != task_args(run, index[brief["id"]]):
            raise RuntimeError(f"task ended wrong: {brief!r}")
    return elapsed


def run(quick: bool = False, floor: object = None) -> Report:
    tasks = TASKS // 10 if quick else TASKS
    runs = 1 if quick else RUNS
    report = Report("graph: fan-out then fan-in")
    flat: list[float] = []
    graph: list[float] = []
    with Procs() as procs:
        broker = start_broker(procs, "--sync", "full")
        start_workers(procs, broker.endpoint, WORKERS, CONCURRENCY)
        with Client(broker.endpoint, timeout=60) as client:
            one_run(client, -1, min(tasks, 1000), graph=True)  # warm-up, not measured
            for n in range(runs):
                flat.append(one_run(client, 2 * n, tasks, graph=False))
                graph.append(one_run(client, 2 * n + 1, tasks, graph=True))
    flat_s, graph_s = statistics.median(flat), statistics.median(graph)
    setup = f"{tasks:,} tasks, {WORKERS}x{CONCURRENCY} slots, median of {runs}"
    report.add(f"flat: first submit to all results ({setup})", flat_s, "s",
               note=f"runs {[round(x, 3) for x in flat]}")  # fmt: skip
    report.add(f"graph: first submit to all results (1 -> {tasks - 2:,} -> 1)", graph_s, "s",
               base=flat_s, base_name="flat",
               note=f"runs {[round(x, 3) for x in graph]}")  # fmt: skip
    report.add("dependency overhead per task: (graph - flat) / tasks",
               (graph_s - flat_s) / tasks * 1e6, "us", target=Target("<=", 100))  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, argv)


if __name__ == "__main__":
    main()
