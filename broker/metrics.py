"""The broker's own figures: monotonic counters and histograms, and the gauges read off
its state when asked (the ``metrics`` op, which ``GET /metrics`` on the API renders).

The core and the socket loop feed ``Metrics`` at the events it counts; counting is on the
hot path, so each event is a dict increment or a histogram's bucket found by bisection,
and allocates nothing once a handler has been seen. Gauges (tasks by status, the queue by
handler, workers online by kind) are not kept up to date here: ``report`` works them out
from the core's indexes at each call, which is cheap (the counts by status are kept by
``broker.index``; the rest walks the shapes of pending tasks, the running tasks and the
online workers, never the stored ones).

Handler names come from clients: a label per name would let one client grow the broker's
memory and every scrape without bound. The first ``MAX_HANDLERS`` names seen get a label
of their own; events of any other are counted under ``OTHER``. Nothing here reads a
clock, does I/O or decides anything.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from broker.index import TaskIndex
from broker.state import Worker
from common.models import TaskStatus
from common.protocol import Command

#: Distinct handler names counted under their own label; the others under ``OTHER``.
MAX_HANDLERS = 1000
#: The label of the handlers beyond ``MAX_HANDLERS``.
OTHER = "_other"

#: Upper bounds in seconds of the buckets of the waits for a start (submit to first lease)
#: and of run times: a millisecond to an hour.
TASK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)  # fmt: skip
#: Upper bounds in seconds of the buckets of store commits, loop turns and loop lag.
LOOP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5)  # fmt: skip

#: Counters of task events by handler, by the name ``report`` gives them.
TASK_EVENTS = ("submitted", "completed", "failed", "retried", "cancelled", "lost")


class Histogram:
    """Observations in fixed buckets (each counted once, in the first bucket whose bound
    holds it), their sum and their count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: One count per bucket, and a last one for what is above every bound.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def report(self) -> dict[str, Any]:
        """Prometheus' form: the count at or under each bound (cumulative), the last one
        being every observation (``+Inf``), and the sum."""
        cumulative, total = [], 0
        for count in self.counts:
            total += count
            cumulative.append(total)
        return {"bounds": list(self.bounds), "counts": cumulative, "sum": self.sum}


class Metrics:
    """The counters and histograms of one broker process, from its start."""

    def __init__(self) -> None:
        #: Task events by handler (``TASK_EVENTS``); each maps a handler to a count.
        self.submitted: dict[str, int] = {}
        self.completed: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        #: Runs retried: a lease that failed (or expired) or was lost, its task queued again.
        self.retried: dict[str, int] = {}
        self.cancelled: dict[str, int] = {}
        #: Leases lost: expired (no report within timeout + grace) or their worker lost.
        self.lost: dict[str, int] = {}
        #: Handlers with a label of their own.
        self._handlers: set[str] = set()
        #: Messages received and sent, by command (every one counted from the start at 0).
        self.received: dict[bytes, int] = {command.value: 0 for command in Command}
        self.sent: dict[bytes, int] = {command.value: 0 for command in Command}
        #: Seconds from a task's submit to the start of its first run.
        self.wait = Histogram(TASK_BUCKETS)
        #: Seconds a run took, of those a worker reported completed or failed.
        self.run = Histogram(TASK_BUCKETS)
        #: Seconds the store took to make a turn's changes durable.
        self.commit = Histogram(LOOP_BUCKETS)
        #: Seconds a loop turn took from waking to its last send: how long a message that
        #: arrives during a turn waits for the loop.
        self.turn = Histogram(LOOP_BUCKETS)
        #: Seconds a timer (a ping, a lease's expiry, a back-off) fired after its time.
        self.lag = Histogram(LOOP_BUCKETS)

    def label(self, handler: str) -> str:
        """The label of ``handler``: itself, or ``OTHER`` once ``MAX_HANDLERS`` are taken."""
        handlers = self._handlers
        if handler in handlers:
            return handler
        if len(handlers) < MAX_HANDLERS:
            handlers.add(handler)
            return handler
        return OTHER

    def count(self, counter: dict[str, int], handler: str) -> None:
        """One event of ``handler`` on ``counter`` (one of the task counters)."""
        label = handler if handler in self._handlers else self.label(handler)
        counter[label] = counter.get(label, 0) + 1

    def count_many(self, counter: dict[str, int], handlers: Iterable[str]) -> None:
        for handler in handlers:
            self.count(counter, handler)

    def counters(self) -> dict[str, Any]:
        return {
            **{event: dict(getattr(self, event)) for event in TASK_EVENTS},
            "messages_in": _by_command(self.received),
            "messages_out": _by_command(self.sent),
        }

    def histograms(self) -> dict[str, Any]:
        return {
            "wait_seconds": self.wait.report(),
            "run_seconds": self.run.report(),
            "commit_seconds": self.commit.report(),
            "turn_seconds": self.turn.report(),
            "loop_lag_seconds": self.lag.report(),
        }


def _by_command(counts: dict[bytes, int]) -> dict[str, int]:
    return {command.decode(): count for command, count in counts.items()}


def queue(index: TaskIndex, label: Any) -> dict[str, dict[str, int]]:
    """Pending and running tasks by handler (labelled by ``label``): ``{handler: {status:
    n}}``. Walks the shapes of pending tasks and the running tasks only."""
    out: dict[str, dict[str, int]] = {}
    pending, running = TaskStatus.PENDING.value, TaskStatus.RUNNING.value
    for (handler, _, _), count in index.pending_by_shape.items():
        if count:
            entry = out.setdefault(label(handler), {pending: 0, running: 0})
            entry[pending] += count
    for task in index.by_status[TaskStatus.RUNNING]:
        entry = out.setdefault(label(task.handler), {pending: 0, running: 0})
        entry[running] += 1
    return out


def workers_by_kind(online: Iterable[Worker]) -> dict[str, int]:
    """Online workers by kind (``zmq``, ``http``), draining ones included."""
    out: dict[str, int] = {}
    for worker in online:
        out[worker.kind.value] = out.get(worker.kind.value, 0) + 1
    return out


def report(
    metrics: Metrics,
    index: TaskIndex,
    online: Iterable[Worker],
    extra: dict[str, int],
    uptime: float,
) -> dict[str, Any]:
    """The value of the ``metrics`` op (``docs/protocol.md``): ``counters`` (monotonic;
    ``extra`` adds the core's own, such as ``stale_outcomes``), ``gauges`` and
    ``histograms``."""
    counts = index.counts
    return {
        "counters": {**metrics.counters(), **extra},
        "gauges": {
            "tasks": {status.value: counts.get(status, 0) for status in TaskStatus},
            "queue": queue(index, metrics.label),
            "workers_online": workers_by_kind(online),
            "uptime": uptime,
        },
        "histograms": metrics.histograms(),
    }
