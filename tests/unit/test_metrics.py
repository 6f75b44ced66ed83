"""The broker's counters, gauges and histograms (``broker.metrics``), fed by the core and
the socket loop, and what the ``metrics`` op answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import metrics
from broker.core import MAX_LOST, Scheduler, Timing
from broker.invariants import CheckedScheduler
from broker.metrics import MAX_HANDLERS, OTHER, Histogram, Metrics
from common.protocol import Command
from common.settings import Settings
from tests.unit.test_core import T0, add_worker, dispatched, finish, submit
from tests.unit.test_server import CheckedStore, Turn, done, register


@pytest.fixture
def core() -> Scheduler:
    return CheckedScheduler(Timing(ping_interval=1.0, liveness=3, retry_backoff=1.0))


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[Turn]:
    events: list[tuple[str, Any]] = []
    store = CheckedStore("sqlite", tmp_path)
    store.after_write = lambda: events.append(("commit", store.committed()))
    store.load()
    try:
        yield Turn(store, events, Settings(broker="tcp://127.0.0.1:0", ping_interval=60.0))
    finally:
        store.close()


def report(core: Scheduler, now: float = T0) -> dict[str, Any]:
    return core.metrics_report(now, T0 - 10)


def test_a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    histogram = Histogram((0.1, 1.0))

    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)

    shown = histogram.report()
    assert shown["bounds"] == [0.1, 1.0]
    # Cumulative, as Prometheus has it: <= 0.1, <= 1.0, and every one (+Inf).
    assert shown["counts"] == [2, 4, 5]
    assert shown["sum"] == pytest.approx(8.65)


def test_task_events_are_counted_by_handler(core: Scheduler) -> None:
    done_ok = submit(core, handler="echo")
    fails = submit(core, handler="echo", max_retries=1)
    submit(core, handler="fail")
    cancelled = submit(core, handler="sleep")
    address = add_worker(core, "w1", capabilities=["echo"], slots=2)
    assert sorted(dispatched(core)[address]) == sorted([done_ok, fails])

    finish(core, address, done_ok, now=T0 + 0.5)
    finish(core, address, fails, "failed", now=T0 + 2, error="boom")  # retried once
    core.cancel(cancelled, T0 + 2)
    core.tick(T0 + 3)  # the back-off is over
    dispatched(core, T0 + 3)
    finish(core, address, fails, "failed", now=T0 + 4, error="boom")  # for good

    counters = report(core)["counters"]
    assert counters["submitted"] == {"echo": 2, "fail": 1, "sleep": 1}
    assert counters["completed"] == {"echo": 1}
    assert counters["failed"] == {"echo": 1}
    assert counters["retried"] == {"echo": 1}
    assert counters["cancelled"] == {"sleep": 1}
    assert counters["lost"] == {}
    waits = report(core)["histograms"]["wait_seconds"]
    assert waits["counts"][-1] == 2  # first runs only: the retry is not a start
    runs = report(core)["histograms"]["run_seconds"]
    assert runs["counts"][-1] == 3
    assert runs["sum"] == pytest.approx(0.5 + 2 + 1)


def test_a_lost_worker_counts_lost_and_retried_leases_then_a_failure(core: Scheduler) -> None:
    task_id = submit(core)
    now = T0
    for _ in range(MAX_LOST + 1):
        address = add_worker(core, "w1", now=now)
        assert dispatched(core, now) == {address: [task_id]}
        now += 10  # silent for longer than the liveness window
        core.tick(now)

    counters = report(core, now)["counters"]
    assert counters["lost"] == {"echo": MAX_LOST + 1}
    assert counters["retried"] == {"echo": MAX_LOST}
    assert counters["failed"] == {"echo": 1}


def test_dependents_failed_by_a_failure_count_as_failed(core: Scheduler) -> None:
    first = submit(core, handler="echo")
    submit(core, handler="after", dependencies=[first])
    address = add_worker(core, "w1")
    dispatched(core)

    finish(core, address, first, "failed", error="boom")

    assert report(core)["counters"]["failed"] == {"echo": 1, "after": 1}


def test_gauges_show_the_queue_by_handler_and_the_workers_by_kind(core: Scheduler) -> None:
    submit(core, handler="echo")
    submit(core, handler="echo")
    submit(core, handler="echo", requires=["gpu"])
    submit(core, handler="other")
    address = add_worker(core, "w1", capabilities=["echo"])
    dispatched(core)

    gauges = report(core, T0 + 3)["gauges"]
    assert gauges["queue"] == {
        "echo": {"pending": 2, "running": 1},
        "other": {"pending": 1, "running": 0},
    }
    assert gauges["tasks"]["pending"] == 3 and gauges["tasks"]["running"] == 1
    assert gauges["workers_online"] == {"zmq": 1}
    assert gauges["uptime"] == pytest.approx(13)
    assert address


def test_handlers_beyond_the_bound_share_one_label() -> None:
    counted = Metrics()

    for i in range(MAX_HANDLERS + 5):
        counted.count(counted.submitted, f"h{i}")
    counted.count(counted.submitted, "h0")

    assert len(counted.submitted) == MAX_HANDLERS + 1
    assert counted.submitted[OTHER] == 5
    assert counted.submitted["h0"] == 2


def test_every_command_is_reported_from_zero() -> None:
    counters = Metrics().counters()

    assert set(counters["messages_in"]) == {c.value.decode() for c in Command}
    assert set(counters["messages_out"]) == {c.value.decode() for c in Command}
    assert not any(counters["messages_in"].values())


def test_the_loop_counts_messages_by_command_and_times_its_commits(turn: Turn) -> None:
    register(turn)
    turn.request(b"client", "submit", tasks=[{"handler": "echo"}])
    sent = turn.run()
    task_id = next(m.body["value"]["tasks"][0]["id"] for _, m in sent if m.command is Command.REPLY)
    turn.queue(b"worker", Command.DONE, done(task_id))
    turn.run(turn.now + 1)
    ask = turn.request(b"client", "metrics")
    turn.run(turn.now + 1)

    value = turn.replies()[ask]
    counters = value["counters"]
    assert counters["messages_in"]["READY"] == 1
    assert counters["messages_in"]["DONE"] == 1
    assert counters["messages_in"]["REQUEST"] == 2
    assert counters["messages_out"]["WELCOME"] == 1
    assert counters["messages_out"]["DISPATCH"] == 1
    assert counters["messages_out"]["REPLY"] >= 1
    assert counters["submitted"] == {"echo": 1} and counters["completed"] == {"echo": 1}
    assert counters["stale_outcomes"] == 0
    assert value["histograms"]["commit_seconds"]["counts"][-1] >= 1
    assert value["gauges"]["workers_online"] == {"zmq": 1}


def test_the_report_is_what_the_op_answers_and_only_plain_values() -> None:
    shown = metrics.report(Metrics(), Scheduler().index, [], {"stale_outcomes": 0}, 1.0)

    assert set(shown) == {"counters", "gauges", "histograms"}
    assert set(shown["histograms"]) == {
        "wait_seconds", "run_seconds", "commit_seconds", "turn_seconds", "loop_lag_seconds",
    }  # fmt: skip
