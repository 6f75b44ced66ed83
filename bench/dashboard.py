"""Dashboard: one poll of the live feed, with 10,000 and with 1,000,000 finished tasks.

The dashboard must stay responsive whatever the store holds: a poll of its feed
(``api.feed.Feed.poll``: counts, workers, running tasks, the newest failures) asks the
broker for a handful of one-page requests and never walks the store. The store is filled
directly (``SqliteStore.save``, in batches of ``BATCH``, ``sync=off``) with finished tasks
of 1 KB args and results, one in ``FAILING_EVERY`` failed, then a broker (``--sync off``)
is started on it and a ``Feed`` polls it through a real client: one poll to warm up (the
newest failures' cursor is found then), then ``POLLS`` polls timed. The same again after
the store is filled up to 1,000,000 and the broker restarted on it:

- the p50 of a poll among 1,000,000 finished tasks: within 2x of the p50 among 10,000.

``--quick`` stops at 100,000 tasks.
"""

from __future__ import annotations

import statistics
import time

from api.feed import Feed
from bench.harness import Procs, Report, Target, standalone, start_broker
from broker.state import Task
from broker.store.sqlite import SqliteStore
from common.client import Client
from common.models import TaskStatus

#: Finished tasks at the first and the last measurement.
FIRST, LAST = 10_000, 1_000_000
#: Tasks one save of the store writes.
BATCH = 10_000
#: Size of each task's args (and result).
ARGS = 1024
#: One task in this many failed.
FAILING_EVERY = 1000
#: Polls timed for each p50, after one to warm up.
POLLS = 50


def _fill(path: str, start: int, stop: int) -> None:
    """Store tasks ``start`` to ``stop`` (seqs from 1), finished a moment ago (well within
    the retention: nothing is pruned while the benchmark runs)."""
    store = SqliteStore(path, "off")
    try:
        now = time.time()
        payload = b"x" * ARGS
        for low in range(start, stop, BATCH):
            tasks = []
            for seq in range(low + 1, min(stop, low + BATCH) + 1):
                failed = seq % FAILING_EVERY == 0
                task = Task(
                    f"{seq:016x}dashboardbench", seq, "echo", "echo", payload, [], 0, 0,
                    None, (), (), now - 60.0,
                    status=TaskStatus.FAILED if failed else TaskStatus.COMPLETED,
                    worker_id="bench-worker", attempts=1,
                    result=None if failed else payload,
                    error="ValueError: a failure of the benchmark" if failed else None,
                    started_at=now - 59.0, completed_at=now - 58.0 + seq * 1e-6,
                )  # fmt: skip
                tasks.append(task)
            store.save(tasks)
    finally:
        store.close()


def _polls(endpoint: str) -> tuple[float, float]:
    """Milliseconds of the first poll, and the p50 of the next ``POLLS``."""
    with Client(endpoint, timeout=60) as client:
        feed = Feed(lambda: client)
        began = time.perf_counter()
        first = feed.poll()
        first_ms = (time.perf_counter() - began) * 1000
        if "error" in first:
            raise RuntimeError(f"the feed's poll failed: {first['error']}")
        times = []
        for _ in range(POLLS):
            began = time.perf_counter()
            content = feed.poll()
            times.append(time.perf_counter() - began)
        if "error" in content:
            raise RuntimeError(f"the feed's poll failed: {content['error']}")
        return first_ms, statistics.median(times) * 1000


def run(quick: bool = False, floor: object = None) -> Report:
    last = LAST // 10 if quick else LAST
    report = Report("dashboard: a feed poll among many finished tasks")
    with Procs() as procs:
        path = str(procs.dir / "dashboard.db")
        _fill(path, 0, FIRST)
        broker = start_broker(procs, "--sync", "off", store=path)
        first_small, small = _polls(broker.endpoint)
        broker.proc.stop()
        began = time.perf_counter()
        _fill(path, FIRST, last)
        filled = time.perf_counter() - began
        broker = start_broker(procs, "--sync", "off", store=path, timeout=300.0)
        first_large, large = _polls(broker.endpoint)
    report.add(f"feed poll among {FIRST:,} finished tasks, p50", small, "ms",
               note=f"the first poll (warm-up): {first_small:.2f} ms")  # fmt: skip
    report.add(
        f"feed poll among {last:,} finished tasks, p50",
        large,
        "ms",
        base=small,
        base_name=f"among {FIRST:,}",
        target=Target("<=", 2.0, True),
        note=f"the first poll (warm-up): {first_large:.2f} ms; "
        f"{last - FIRST:,} tasks stored in {filled:.1f} s; 1 in {FAILING_EVERY:,} failed",
    )
    return report


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, argv)


if __name__ == "__main__":
    main()
