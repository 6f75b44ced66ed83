"""The broker's figures as Prometheus metric families: a collector over one ``metrics`` reply.

``GET /metrics`` asks the broker once per scrape (``Op.METRICS``) and registers a
``BrokerCollector`` over the answer in a registry of that scrape alone, so nothing here
holds state between scrapes and the broker stays the one source of truth. Every name,
label and meaning is listed in ``docs/operations.md``.

Importing this module imports ``prometheus_client``, which chooses how its values are
stored (in memory, or in files shared by gunicorn's processes) once, when it is first
imported, from ``PROMETHEUS_MULTIPROC_DIR``: only import it in a process whose
environment is set up (a gunicorn worker, after the fork; ``api.serve.prepare_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

#: Prefix of every metric name.
PREFIX = "zmqs_"

#: Task counters by handler: (the broker's name, help).
TASK_COUNTERS = (
    ("submitted", "Tasks submitted."),
    ("completed", "Tasks completed."),
    ("failed", "Tasks failed for good (retries used up, a dependency failed, lost too often)."),
    ("retried", "Runs that failed, expired or were lost and whose task was queued again."),
    ("cancelled", "Tasks cancelled."),
    ("lost", "Leases lost: expired (no report within timeout + grace) or their worker lost."),
)
#: Broker counters without labels: (the broker's name, help).
PLAIN_COUNTERS = (
    ("stale_outcomes", "Outcomes refused because their lease had ended."),
    ("dropped_messages", "One-way messages dropped for breaking the protocol."),
    ("refused_replies", "Large replies refused because their peer left too many unread."),
)
#: Histograms: (the broker's name, the metric's name, help).
HISTOGRAMS = (
    ("wait_seconds", "task_wait_seconds", "Seconds from a task's submit to its first run."),
    ("run_seconds", "task_run_seconds", "Seconds a run took (reported completed or failed)."),
    ("commit_seconds", "store_commit_seconds", "Seconds a commit of the store took."),
    ("turn_seconds", "broker_turn_seconds", "Seconds a turn of the broker's loop took."),
    ("loop_lag_seconds", "broker_loop_lag_seconds",
     "Seconds after its time that a timer of the broker's loop fired."),
)  # fmt: skip


class BrokerCollector(Collector):
    """The families of one ``metrics`` reply, or only ``zmqs_broker_up 0`` without one."""

    def __init__(self, value: dict[str, Any] | None) -> None:
        self.value = value

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}broker_up", "Whether the broker answered this scrape's request (1) or not."
        )
        up.add_metric([], 0 if self.value is None else 1)
        yield up
        if self.value is None:
            return
        yield from _counters(self.value["counters"])
        yield from _gauges(self.value["gauges"])
        yield from _histograms(self.value["histograms"])


def _counters(counters: dict[str, Any]) -> Iterator[Metric]:
    for name, text in TASK_COUNTERS:
        family = CounterMetricFamily(f"{PREFIX}tasks_{name}", text, labels=["handler"])
        for handler, count in sorted(counters.get(name, {}).items()):
            family.add_metric([handler], count)
        yield family
    for name, text in PLAIN_COUNTERS:
        yield CounterMetricFamily(f"{PREFIX}broker_{name}", text, value=counters.get(name, 0))
    for key, name, text in (
        ("messages_in", "messages_received", "Messages the broker received, by command."),
        ("messages_out", "messages_sent", "Messages the broker sent, by command."),
    ):
        family = CounterMetricFamily(f"{PREFIX}broker_{name}", text, labels=["command"])
        for command, count in sorted(counters.get(key, {}).items()):
            family.add_metric([command], count)
        yield family


def _gauges(gauges: dict[str, Any]) -> Iterator[Metric]:
    tasks = GaugeMetricFamily(
        f"{PREFIX}tasks", "Tasks the broker knows, by status (finished ones in the store too).",
        labels=["status"],
    )  # fmt: skip
    for status, count in gauges["tasks"].items():
        tasks.add_metric([status], count)
    yield tasks
    queue = GaugeMetricFamily(
        f"{PREFIX}queue_tasks", "Pending and running tasks, by handler and status.",
        labels=["handler", "status"],
    )  # fmt: skip
    for handler, by_status in sorted(gauges["queue"].items()):
        for status, count in by_status.items():
            queue.add_metric([handler, status], count)
    yield queue
    workers = GaugeMetricFamily(
        f"{PREFIX}workers_online", "Workers online, by kind (zmq, http).", labels=["kind"]
    )
    for kind in ("zmq", "http"):
        workers.add_metric([kind], gauges["workers_online"].get(kind, 0))
    yield workers
    yield GaugeMetricFamily(
        f"{PREFIX}broker_uptime_seconds", "Seconds since the broker started.",
        value=gauges["uptime"],
    )  # fmt: skip


def _histograms(histograms: dict[str, Any]) -> Iterator[Metric]:
    for key, name, text in HISTOGRAMS:
        shown = histograms[key]
        counts = shown["counts"]
        buckets = [(_bound(b), c) for b, c in zip(shown["bounds"], counts, strict=False)]
        buckets.append(("+Inf", counts[-1]))
        yield HistogramMetricFamily(
            f"{PREFIX}{name}", text, buckets=buckets, sum_value=shown["sum"]
        )


def _bound(bound: float) -> str:
    """A bucket's ``le`` as Prometheus' own client writes it (``0.5``, ``10.0``)."""
    return repr(float(bound))
