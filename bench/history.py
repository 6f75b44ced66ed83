"""History: the broker's memory and its reads of old tasks, after a million finished tasks.

Finished tasks live in the store, not in the broker's memory (the 1,000 that finished last
aside), so its memory should follow the work in flight, not the history. A broker
(``--sync off``) and one worker of 32 slots run ``echo`` tasks with 1 KB args (and so 1 KB
results), submitted with ``submit_many`` in batches of 1,000 and collected with
``wait_many``; one task in every 1,000 fails (``fibonacci`` with bad args). After 10,000
finished tasks and again after 1,000,000:

- the broker's resident memory (``VmRSS``): the second within 1.3x of the first;
- ``get`` of the first task submitted (finished a million tasks before) against ``get`` of
  one just finished (in memory), p50 of 200 calls each: within 2x;
- a page of ``list(status="failed", limit=10)`` (the store's index of failed tasks: 10 of
  them among 10,000, 1,000 among 1,000,000), p50 of 50 calls: within 2x of the same page
  among 10,000.

``--quick`` stops at 100,000 tasks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench.harness import (
    Procs,
    Report,
    Target,
    rss_bytes,
    standalone,
    start_broker,
    start_workers,
)
from common.client import Client

#: Finished tasks at the first and the last measurement.
FIRST, LAST = 10_000, 1_000_000
#: Tasks a submit (and a wait) carries.
BATCH = 1000
#: Size of each task's args (and result).
ARGS = 1024
#: One task in this many fails.
FAILING_EVERY = 1000
#: Slots of the one worker.
SLOTS = 32
#: Calls timed per read, for each p50.
GETS, PAGES = 200, 50
#: Tasks a page of failed ones holds: as many as fail among the first ``FIRST``.
PAGE = FIRST // FAILING_EVERY
#: Longest the run may take, in seconds.
TIME_LIMIT = 1800.0


def _batch(start: int) -> list[dict[str, object]]:
    specs: list[dict[str, object]] = []
    for i in range(start, start + BATCH):
        if i % FAILING_EVERY == FAILING_EVERY - 1:
            specs.append({"handler": "fibonacci", "args": b'{"n": "not a number"}'})
        else:
            specs.append({"handler": "echo", "args": (b"%08d" % i) * (ARGS // 8)})
    return specs


def _run_until(client: Client, done: int, total: int, deadline: float) -> list[str]:
    """Submit and collect batches until ``total`` tasks finished; returns the ids made."""
    ids: list[str] = []
    while done < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done:,} of {total:,} tasks finished in the time allowed")
        batch = client.submit_many(_batch(done))
        client.wait_many(batch, timeout=120)
        ids += batch
        done += BATCH
    return ids


def _p50_ms(call: Callable[[], object], count: int) -> float:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def run(quick: bool = False, floor: object = None) -> Report:
    last = LAST // 10 if quick else LAST
    report = Report("history: memory and reads after many finished tasks")
    deadline = time.monotonic() + TIME_LIMIT
    with Procs() as procs:
        broker = start_broker(procs, "--sync", "off")
        start_workers(procs, broker.endpoint, 1, SLOTS)
        with Client(broker.endpoint, timeout=60) as client:

            def figures(newest: str) -> tuple[int, float, float, float]:
                return (
                    rss_bytes(broker.proc.pid),
                    _p50_ms(lambda: client.get(oldest), GETS),
                    _p50_ms(lambda: client.get(newest), GETS),
                    _p50_ms(lambda: client.list_tasks(status="failed", limit=PAGE), PAGES),
                )

            first_ids = _run_until(client, 0, FIRST, deadline)
            oldest = first_ids[0]
            rss_first, old_first, new_first, page_first = figures(first_ids[-2])
            last_ids = _run_until(client, FIRST, last, deadline)
            rss_last, old_last, new_last, page_last = figures(last_ids[-2])
            failed = client.health()["tasks"]["failed"]
    setup = f"{last:,} tasks of 1 KB args, 1 in {FAILING_EVERY:,} failing; {failed:,} failed"
    report.add(f"broker RSS after {FIRST:,} finished tasks", rss_first / 2**20, "MiB")
    report.add(f"broker RSS after {last:,} finished tasks", rss_last / 2**20, "MiB",
               base=rss_first / 2**20, base_name=f"after {FIRST:,}", target=Target("<=", 1.3, True),
               note=setup)  # fmt: skip
    report.add(f"get of the first task, {last:,} tasks later, p50", old_last, "ms",
               base=new_last, base_name="get of a task just finished",
               target=Target("<=", 2.0, True),
               note=f"after {FIRST:,}: {old_first:.3f} ms against {new_first:.3f} ms")  # fmt: skip
    report.add(
        f"a page of {PAGE} failed tasks among {last:,}, p50",
        page_last,
        "ms",
        base=page_first,
        base_name=f"among {FIRST:,}",
        target=Target("<=", 2.0, True),
    )
    return report


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, argv)


if __name__ == "__main__":
    main()
