"""The scheduling core alone: no sockets, time passed in by hand."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core import MAX_LOST, WORKER_PRUNE_BATCH, Scheduler, Timing
from broker.invariants import CheckedScheduler
from broker.operations import perform
from broker.store.memory import MemoryStore
from common import ops
from common.errors import Conflict, InvalidInput, NotFound, SchedulerError
from common.limits import MAX_PAGE_BYTES
from common.models import LeaseOutcome, TaskStatus, WorkerStatus
from common.ops import ListWorkers, Submit
from tests import edge

T0 = 1_000_000.0


@pytest.fixture
def core() -> Scheduler:
    return CheckedScheduler(
        Timing(ping_interval=1.0, liveness=3, retry_backoff=1.0, timeout_grace=5.0)
    )


def add_worker(
    core: Scheduler,
    worker_id: str,
    capabilities: list[str] | None = None,
    slots: int = 1,
    now: float = T0,
    resources: dict[str, float] | None = None,
    running: list[dict[str, Any]] | None = None,
) -> bytes:
    address = worker_id.encode()
    body = {
        "id": worker_id,
        "slots": slots,
        "capabilities": capabilities or ["echo"],
        "resources": resources or {},
        "running": running or [],
    }
    edge.register(core, address, body, now)
    return address


def submit(core: Scheduler, now: float = T0, **spec: Any) -> str:
    spec.setdefault("handler", "echo")
    return str(edge.submit(core, [spec], now)[0]["id"])


def dispatched(core: Scheduler, now: float = T0) -> dict[bytes, list[str]]:
    """Run a scheduling round and return task ids dispatched per worker address."""
    core.schedule(now)
    outbox = core.take_outbox()
    return {addr: [e.run.task_id for e in entries] for addr, entries in outbox.dispatch.items()}


def finish(core: Scheduler, address: bytes, task_id: str, status: str = "completed",
           now: float = T0, result: bytes = b"ok", error: str | None = None) -> None:  # fmt: skip
    worker = core.worker_at(address)
    assert worker is not None
    attempt = core.tasks[task_id].attempts
    entry = {"task_id": task_id, "attempt": attempt, "status": status, "result": result,
             "error": error}  # fmt: skip
    edge.report(core, worker, [entry], now)


def report(
    core: Scheduler,
    address: bytes,
    task_id: str,
    attempt: int,
    status: str = "completed",
    now: float = T0,
    result: bytes = b"ok",
    error: str | None = None,
) -> list[list[Any]]:
    """A worker's outcome for one run, naming the attempt itself (``finish`` names the current)."""
    worker = core.worker_at(address)
    assert worker is not None
    entry = {"task_id": task_id, "attempt": attempt, "status": status, "result": result,
             "error": error}  # fmt: skip
    return edge.report(core, worker, [entry], now)


# -- priority and order -------------------------------------------------------------


def test_higher_priority_first_and_fifo_among_equals(core: Scheduler) -> None:
    low = submit(core, priority=1)
    high_a = submit(core, priority=5)
    high_b = submit(core, priority=5)
    mid = submit(core, priority=3)
    address = add_worker(core, "w1", slots=1)
    order = []
    for _ in range(4):
        (task_id,) = dispatched(core)[address]
        order.append(task_id)
        finish(core, address, task_id)
    assert order == [high_a, high_b, mid, low]


def test_fifo_among_equal_priorities_holds_across_handlers(core: Scheduler) -> None:
    # Each handler has its own ready queue: the oldest head among them goes first.
    ids = [submit(core, handler=handler) for handler in ("a", "b", "a", "b", "b", "a")]
    address = add_worker(core, "w1", capabilities=["a", "b"], slots=2)
    assert dispatched(core) == {address: ids[:2]}
    order = list(ids[:2])
    for running in ids[:4]:
        finish(core, address, running)
        order += dispatched(core)[address]
    assert order == ids


def test_never_more_tasks_than_slots(core: Scheduler) -> None:
    ids = [submit(core) for _ in range(10)]
    address = add_worker(core, "w1", slots=3)
    assert len(dispatched(core)[address]) == 3
    assert dispatched(core) == {}
    finish(core, address, ids[0])
    assert dispatched(core) == {address: [ids[3]]}


def test_priority_holds_across_handlers_cluster_wide(core: Scheduler) -> None:
    submit(core, handler="a", priority=1)
    urgent = submit(core, handler="b", priority=9)
    address = add_worker(core, "w1", capabilities=["a", "b"], slots=1)
    assert dispatched(core) == {address: [urgent]}


# -- matching ---------------------------------------------------------------------------


def test_task_waits_for_a_worker_with_its_handler(core: Scheduler) -> None:
    task_id = submit(core, handler="fibonacci")
    add_worker(core, "w1", capabilities=["echo"])
    assert dispatched(core) == {}
    assert core.tasks[task_id].status is TaskStatus.PENDING
    address = add_worker(core, "w2", capabilities=["fibonacci"])
    assert dispatched(core) == {address: [task_id]}


def test_requires_tags_must_all_be_present(core: Scheduler) -> None:
    task_id = submit(core, requires=["gpu", "linux"])
    add_worker(core, "w1", capabilities=["echo", "gpu"])
    assert dispatched(core) == {}
    address = add_worker(core, "w2", capabilities=["echo", "gpu", "linux"])
    assert dispatched(core) == {address: [task_id]}


def test_resources_limit_concurrent_tasks(core: Scheduler) -> None:
    first = submit(core, resources={"memory": 600})
    second = submit(core, resources={"memory": 600})
    small = add_worker(core, "small", slots=4, resources={"memory": 500})
    big = add_worker(core, "big", slots=4, resources={"memory": 1000, "cpu": 4})
    assert dispatched(core) == {big: [first]}
    finish(core, big, first)
    assert dispatched(core) == {big: [second]}
    assert small not in dispatched(core)


def test_blocked_shape_does_not_stop_lower_priority_tasks(core: Scheduler) -> None:
    submit(core, handler="rare", priority=10)
    common_task = submit(core, handler="echo", priority=1)
    address = add_worker(core, "w1", capabilities=["echo"])
    assert dispatched(core) == {address: [common_task]}


# -- dependencies ----------------------------------------------------------------------


def test_dependent_starts_only_after_dependencies_complete(core: Scheduler) -> None:
    a = submit(core)
    b = submit(core)
    child = submit(core, dependencies=[a, b], priority=100)
    address = add_worker(core, "w1", slots=3)
    assert sorted(dispatched(core)[address]) == sorted([a, b])
    finish(core, address, a)
    assert dispatched(core) == {}
    finish(core, address, b)
    assert dispatched(core) == {address: [child]}


def test_failed_dependency_fails_dependents_transitively(core: Scheduler) -> None:
    root = submit(core)
    child = submit(core, dependencies=[root])
    grandchild = submit(core, dependencies=[child])
    address = add_worker(core, "w1")
    dispatched(core)
    finish(core, address, root, status="failed", error="boom")
    assert core.tasks[child].status is TaskStatus.FAILED
    assert core.tasks[child].error == f"dependency {root} failed"
    assert core.tasks[grandchild].status is TaskStatus.FAILED
    # it names its own dependency, and the task whose failure started the chain
    assert core.tasks[grandchild].error == (
        f"dependency {child} failed (the first to end: task {root} failed)"
    )
    # as does a task submitted later on the failed chain
    late = submit(core, dependencies=[grandchild])
    assert core.tasks[late].error == (
        f"dependency {grandchild} failed (the first to end: task {root} failed)"
    )


def test_cancelled_dependency_fails_dependents(core: Scheduler) -> None:
    root = submit(core, handler="nobody")
    child = submit(core, dependencies=[root])
    core.cancel(root, T0)
    assert core.tasks[child].status is TaskStatus.FAILED
    assert core.tasks[child].error == f"dependency {root} cancelled"


def test_unknown_dependency_is_rejected_and_nothing_is_added(core: Scheduler) -> None:
    ok = {"handler": "echo"}
    bad = {"handler": "echo", "dependencies": ["nope"]}
    with pytest.raises(InvalidInput, match=r"tasks\[1\].dependencies: unknown task 'nope'"):
        edge.submit(core, [ok, bad], T0)
    assert core.tasks == {}


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_dependency_on_a_task_that_already_ended_badly_fails_at_once(
    core: Scheduler, ending: str
) -> None:
    root = submit(core)
    address = add_worker(core, "w1")
    if ending == "failed":
        dispatched(core)
        finish(core, address, root, status="failed", error="boom")
    else:
        core.cancel(root, T0)
    assert core.tasks[root].status == ending
    child = submit(core, dependencies=[root], now=T0 + 1)
    assert core.tasks[child].status is TaskStatus.FAILED
    assert core.tasks[child].error == f"dependency {root} {ending}"
    assert dispatched(core, T0 + 1) == {}


def test_dependency_on_a_completed_task_is_met_at_once(core: Scheduler) -> None:
    root = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    finish(core, address, root)
    child = submit(core, dependencies=[root], now=T0 + 1)
    assert dispatched(core, T0 + 1) == {address: [child]}


# -- retries, timeouts ---------------------------------------------------------------------


def test_retry_with_exponential_backoff_then_fail(core: Scheduler) -> None:
    task_id = submit(core, max_retries=2)
    address = add_worker(core, "w1")
    assert dispatched(core) == {address: [task_id]}
    finish(core, address, task_id, status="failed", error="first")
    task = core.tasks[task_id]
    assert task.status is TaskStatus.PENDING
    core.tick(T0 + 0.5)
    assert dispatched(core, T0 + 0.5) == {}  # back-off of 1 s
    core.tick(T0 + 1.0)
    assert dispatched(core, T0 + 1.0) == {address: [task_id]}
    finish(core, address, task_id, status="failed", error="second", now=T0 + 1.0)
    core.tick(T0 + 2.5)
    assert dispatched(core, T0 + 2.5) == {}  # back-off of 2 s
    core.tick(T0 + 3.0)
    assert dispatched(core, T0 + 3.0) == {address: [task_id]}
    finish(core, address, task_id, status="failed", error="third", now=T0 + 3.0)
    assert task.status is TaskStatus.FAILED
    assert task.error == "third"
    assert task.attempts == 3


def test_retry_back_off_doubles_up_to_its_cap_of_60_seconds(core: Scheduler) -> None:
    task_id = submit(core, max_retries=9)
    address = add_worker(core, "w1")
    now = T0
    waits = []
    for _ in range(9):
        assert dispatched(core, now) == {address: [task_id]}
        finish(core, address, task_id, status="failed", error="again", now=now)
        not_before = core.tasks[task_id].not_before
        waits.append(not_before - now)
        for moment in (not_before - 0.01, not_before):
            core.seen(core.workers["w1"], moment)
            core.tick(moment)
            if moment < not_before:
                assert dispatched(core, moment) == {}  # not a moment early
        now = not_before
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_broker_expires_a_lease_past_timeout_plus_grace(core: Scheduler) -> None:
    task_id = submit(core, timeout=2)
    address = add_worker(core, "w1")
    dispatched(core)
    core.seen(core.workers["w1"], T0 + 6.9)
    core.tick(T0 + 6.9)
    assert core.tasks[task_id].status is TaskStatus.RUNNING
    core.seen(core.workers["w1"], T0 + 7.0)
    core.tick(T0 + 7.0)
    assert core.tasks[task_id].status is TaskStatus.FAILED
    assert "timed out" in (core.tasks[task_id].error or "")
    assert core.take_outbox().cancel == {address: [task_id]}


# -- liveness ------------------------------------------------------------------------------------


def test_silent_worker_goes_offline_and_its_tasks_are_requeued(core: Scheduler) -> None:
    task_id = submit(core)
    lost = add_worker(core, "lost")
    assert dispatched(core) == {lost: [task_id]}
    assert core.tick(T0 + 1.0) == [lost]  # a ping is due
    core.tick(T0 + 3.0)
    assert core.workers["lost"].status is WorkerStatus.ONLINE
    core.tick(T0 + 3.01)
    assert core.workers["lost"].status is WorkerStatus.OFFLINE
    assert core.tasks[task_id].status is TaskStatus.PENDING
    other = add_worker(core, "other", now=T0 + 3.5)
    assert dispatched(core, T0 + 3.5) == {other: [task_id]}


def test_any_message_keeps_a_worker_alive(core: Scheduler) -> None:
    add_worker(core, "w1")
    for step in range(1, 20):
        core.seen(core.workers["w1"], T0 + step)
        core.tick(T0 + step)
    assert core.workers["w1"].status is WorkerStatus.ONLINE


def test_task_lost_more_than_three_times_fails(core: Scheduler) -> None:
    task_id = submit(core)
    now = T0
    for i in range(MAX_LOST + 1):
        address = add_worker(core, f"w{i}", now=now)
        assert dispatched(core, now) == {address: [task_id]}
        now += 10
        core.tick(now)
    task = core.tasks[task_id]
    assert task.status is TaskStatus.FAILED
    assert task.error == "worker lost"
    assert task.failures == 0


def test_late_outcome_from_offline_worker_is_refused(core: Scheduler) -> None:
    task_id = submit(core)
    frozen = add_worker(core, "frozen")
    dispatched(core)
    attempt = core.tasks[task_id].attempts
    core.tick(T0 + 10)
    other = add_worker(core, "other", now=T0 + 10)
    assert dispatched(core, T0 + 10) == {other: [task_id]}
    assert core.worker_at(frozen) is None  # the server answers RESYNC
    add_worker(core, "frozen", now=T0 + 11, running=[{"task_id": task_id, "attempt": attempt}])
    assert core.take_outbox().cancel == {frozen: [task_id]}
    worker = core.worker_at(frozen)
    assert worker is not None
    stale = {"task_id": task_id, "attempt": attempt, "status": "completed", "result": b"old"}
    edge.report(core, worker, [stale], T0 + 11)
    assert core.stale_outcomes == 1
    finish(core, other, task_id, result=b"new", now=T0 + 12)
    assert core.tasks[task_id].result == b"new"


# -- completions recorded after the next runs are leased (``report(early=True)``) ------------


def early(core: Scheduler, address: bytes, *entries: tuple[str, str]) -> list[list[Any]]:
    """Report (task id, status) outcomes as the socket loop does, leaving them to settle."""
    worker = core.worker_at(address)
    assert worker is not None
    results = [
        {"task_id": task_id, "attempt": core.tasks[task_id].attempts, "status": status,
         "result": b"r-" + task_id.encode(), "error": "e" if status == "failed" else None}
        for task_id, status in entries
    ]  # fmt: skip
    return edge.report(core, worker, results, T0 + 1, early=True)


def test_a_completed_run_frees_its_slot_for_the_next_before_it_is_recorded(
    core: Scheduler,
) -> None:
    first, second = submit(core), submit(core)
    address = add_worker(core, "w1")
    assert dispatched(core) == {address: [first]}
    assert early(core, address, (first, "completed")) == [[first, 1]]
    # the slot takes the next task while the first is still running, to be recorded
    assert core.tasks[first].status is TaskStatus.RUNNING
    assert dispatched(core, T0 + 1) == {address: [second]}
    core.settle()
    task = core.tasks[first]
    assert (task.status, task.result, task.completed_at) == (
        TaskStatus.COMPLETED, b"r-" + first.encode(), T0 + 1
    )  # fmt: skip
    assert task.leases[-1].outcome is LeaseOutcome.COMPLETED
    assert core.tasks[second].status is TaskStatus.RUNNING
    assert core.completing == []


def test_a_completion_a_task_depends_on_is_recorded_at_once(core: Scheduler) -> None:
    # given a dependency running, its dependent first in line, and another task after it
    dep = submit(core)
    child = submit(core, dependencies=[dep], priority=100)
    other = submit(core)
    address = add_worker(core, "w1")
    assert dispatched(core) == {address: [dep]}
    # when it completes: its dependent is ready at once, and takes the slot before the other
    early(core, address, (dep, "completed"))
    assert core.completing == []
    assert core.tasks[dep].status is TaskStatus.COMPLETED
    assert dispatched(core, T0 + 1) == {address: [child]}
    assert core.tasks[other].status is TaskStatus.PENDING


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_only_completions_wait_to_be_recorded(core: Scheduler, status: str) -> None:
    # given two tasks running, the first reported completed (left to settle)
    a, b = submit(core), submit(core)
    address = add_worker(core, "w1", slots=2)
    dispatched(core)
    # when the same report ends the second otherwise
    early(core, address, (a, "completed"), (b, status))
    # then both are recorded, in their order: the one after the completion needed it first
    assert core.completing == []
    assert core.tasks[a].status is TaskStatus.COMPLETED
    assert core.tasks[b].status is not TaskStatus.RUNNING


def test_a_completion_of_a_cancelled_run_frees_its_slot_and_stays_refused(
    core: Scheduler,
) -> None:
    task_id = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    core.cancel(task_id, T0)
    # its worker holds the slot until it reports; it reports the run completed after all
    early(core, address, (task_id, "completed"))
    assert core.completing == []
    assert core.tasks[task_id].status is TaskStatus.CANCELLED
    assert core.workers["w1"].capacity() == 1
    assert core.stale_outcomes == 0


def test_a_completion_reported_twice_before_it_is_recorded_is_no_stale_outcome(
    core: Scheduler,
) -> None:
    task_id = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    early(core, address, (task_id, "completed"), (task_id, "completed"))
    assert core.completing == []
    assert core.tasks[task_id].status is TaskStatus.COMPLETED
    assert core.stale_outcomes == 0


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_pending_and_running(core: Scheduler) -> None:
    running = submit(core)
    pending = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    assert core.cancel(pending, T0).status is TaskStatus.CANCELLED
    assert core.cancel(running, T0).status is TaskStatus.CANCELLED
    assert core.take_outbox().cancel == {address: [running]}
    assert core.workers["w1"].capacity() == 0  # until the worker reports the run stopped
    finish(core, address, running, status="cancelled")
    assert core.workers["w1"].capacity() == 1
    assert core.tasks[running].status is TaskStatus.CANCELLED
    assert core.stale_outcomes == 0
    with pytest.raises(Conflict):
        core.cancel(running, T0)
    with pytest.raises(NotFound):
        core.cancel("nope", T0)


# -- HTTP workers ----------------------------------------------------------------------------


def test_http_worker_long_poll_gets_a_task_when_one_arrives(core: Scheduler) -> None:
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"]}, T0)
    edge.http_next(core, {"id": "h1", "wait": 10}, "poll-1", T0)
    core.schedule(T0)
    core.tick(T0)
    assert core.take_outbox().replies == []
    task_id = submit(core, now=T0 + 1)
    core.schedule(T0 + 1)
    (reply,) = core.take_outbox().replies
    assert reply[0] == "poll-1"
    assert reply[1]["id"] == task_id
    assert reply[1]["status"] == "running"
    task = edge.http_complete(
        core, {"worker_id": "h1", "task_id": task_id, "status": "completed", "result": b"x"}, T0 + 2
    )
    assert task.status is TaskStatus.COMPLETED
    with pytest.raises(Conflict):
        edge.http_complete(core, {"worker_id": "h1", "task_id": task_id, "status": "completed"}, T0)


def test_http_poll_times_out_empty(core: Scheduler) -> None:
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"]}, T0)
    edge.http_next(core, {"id": "h1", "wait": 2}, "poll", T0)
    core.tick(T0 + 1.9)
    assert core.take_outbox().replies == []
    core.tick(T0 + 2.0)
    assert core.take_outbox().replies == [("poll", None)]


def test_http_worker_without_heartbeat_goes_offline(core: Scheduler) -> None:
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"]}, T0)
    task_id = submit(core)
    edge.http_next(core, {"id": "h1", "wait": 0}, "poll", T0)
    core.schedule(T0)
    core.tick(T0 + 14)
    assert core.workers["h1"].status is WorkerStatus.ONLINE
    core.tick(T0 + 15.5)
    assert core.workers["h1"].status is WorkerStatus.OFFLINE
    assert core.tasks[task_id].status is TaskStatus.PENDING


def test_workers_that_come_and_go_leave_only_the_online_ones_to_watch(core: Scheduler) -> None:
    def watched() -> set[str]:
        # Liveness and dispatch walk the online workers only, however many went offline.
        return set(core.roster.online)

    def online() -> set[str]:
        return {w.id for w in core.workers.values() if w.status is WorkerStatus.ONLINE}

    now = T0
    for i in range(50):  # workers that came, and went silent
        add_worker(core, f"gone-{i}", now=now)
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"]}, now)
    now += 20
    add_worker(core, "w1", now=now)
    core.tick(now)
    assert watched() == online() == {"w1"}
    assert len(core.workers) == 52  # still listed
    assert core.health(now, T0)["workers"] == 1
    core.http_worker("h1", now)  # a request from it brings it back
    add_worker(core, "gone-3", now=now)  # so does registering again
    assert watched() == online() == {"w1", "h1", "gone-3"}
    core.goodbye(core.workers["w1"], now)
    assert watched() == online() == {"h1", "gone-3"}
    assert core.tick(now + 1) == [b"gone-3"]  # pings go to online ZeroMQ workers only


# -- restart ---------------------------------------------------------------------------------


def test_restart_keeps_priority_order_and_reattaches_claimed_leases(core: Scheduler) -> None:
    store = MemoryStore()
    low = submit(core, priority=1)
    high = submit(core, priority=7)
    running = submit(core, priority=9)
    address = add_worker(core, "w1")
    assert dispatched(core) == {address: [running]}
    attempt = core.tasks[running].attempts
    store.save(core.take_dirty())

    restarted = CheckedScheduler(core.timing)
    restarted.load(store.load(), T0 + 100)
    assert restarted.take_dirty() == []  # loading changes nothing that needs writing back
    assert restarted.tasks[running].status is TaskStatus.RUNNING
    add_worker(
        restarted, "w1", slots=2, now=T0 + 101,
        running=[{"task_id": running, "attempt": attempt}],
    )  # fmt: skip
    assert dispatched(restarted, T0 + 101) == {address: [high]}
    assert restarted.tasks[running].attempts == attempt  # not run again
    finish(restarted, address, running, now=T0 + 102)
    assert restarted.tasks[running].status is TaskStatus.COMPLETED
    assert dispatched(restarted, T0 + 102) == {address: [low]}


def test_restart_requeues_unclaimed_leases_after_the_window(core: Scheduler) -> None:
    store = MemoryStore()
    task_id = submit(core)
    add_worker(core, "gone")
    dispatched(core)
    store.save(core.take_dirty())
    restarted = CheckedScheduler(core.timing)
    restarted.load(store.load(), T0 + 100)
    restarted.tick(T0 + 102)
    assert restarted.tasks[task_id].status is TaskStatus.RUNNING
    restarted.tick(T0 + 104.5)
    assert restarted.tasks[task_id].status is TaskStatus.PENDING


def restart(core: Scheduler, store: MemoryStore, now: float) -> Scheduler:
    """A broker killed now: a new one loads what was committed to ``store``, nothing else."""
    restarted = CheckedScheduler(core.timing)
    restarted.load(store.load(), now, store.load_workers(), store)
    return restarted


def commit(core: Scheduler, store: MemoryStore) -> None:
    """What the broker's loop does at the end of a turn that changed something."""
    workers, forgotten = core.take_workers()
    store.save(core.take_dirty(), core.take_pruned(), workers=workers, forgotten=forgotten)


def test_a_restart_lists_every_worker_offline_and_an_http_worker_carries_on(
    core: Scheduler,
) -> None:
    store = MemoryStore()
    zmq_task, http_task, other = (
        submit(core, handler=h, resources={"cpu": 1}) for h in ("echo", "resize", "resize")
    )
    address = add_worker(core, "z", ["echo"], slots=2, resources={"cpu": 4})
    edge.http_register(core, {"id": "h", "capabilities": ["resize"], "resources": {"cpu": 1}}, T0)
    edge.http_next(core, {"id": "h", "wait": 0}, "poll", T0)
    assert dispatched(core) == {address: [zmq_task]}
    assert core.tasks[http_task].worker_id == "h"
    commit(core, store)

    restarted = restart(core, store, T0 + 1)
    assert {w.id: (w.kind.value, w.status) for w in restarted.workers.values()} == {
        "z": ("zmq", WorkerStatus.OFFLINE), "h": ("http", WorkerStatus.OFFLINE)
    }  # fmt: skip
    assert [w.record() for w in restarted.workers.values()] == [
        {**w.record(), "status": "offline", "running": [], "last_seen": T0}
        for w in core.workers.values()
    ]
    assert restarted.health(T0 + 1, T0)["workers"] == 0
    assert dispatched(restarted, T0 + 1) == {}  # offline: nothing goes to them
    # The HTTP worker speaks (a heartbeat, say) within the claim window: its lease is its
    # again, holding its resources, and outlives the window.
    worker = restarted.http_worker("h", T0 + 2)
    assert (worker.status, worker.running, worker.free) == (
        WorkerStatus.ONLINE, {http_task: 1}, {"cpu": 0.0}
    )  # fmt: skip
    assert restarted.take_workers() == ([worker], [])  # online again: stored as last seen
    restarted.tick(T0 + 1 + 4.5)  # past the window: the ZeroMQ worker claimed nothing
    assert restarted.tasks[zmq_task].status is TaskStatus.PENDING
    assert restarted.tasks[http_task].status is TaskStatus.RUNNING
    done = {"worker_id": "h", "task_id": http_task, "status": "completed", "result": b"r"}
    assert edge.http_complete(restarted, done, T0 + 6).status is TaskStatus.COMPLETED
    edge.http_next(restarted, {"id": "h", "wait": 0}, "poll-2", T0 + 6)
    restarted.schedule(T0 + 6)
    assert restarted.tasks[other].worker_id == "h"
    # The ZeroMQ worker registers again, as it does on any new broker.
    add_worker(restarted, "z", ["echo"], now=T0 + 7, resources={"cpu": 4})
    restarted.tick(T0 + 7)  # its back-off (the lease was lost) is over
    assert dispatched(restarted, T0 + 7) == {address: [zmq_task]}


def test_a_registration_is_stored_and_a_sign_of_life_is_not(core: Scheduler) -> None:
    assert core.take_workers() == ([], [])
    add_worker(core, "z")
    edge.http_register(core, {"id": "h", "capabilities": ["x"]}, T0)
    assert [w.id for w in core.take_workers()[0]] == ["z", "h"]
    worker = core.worker_at(b"z")
    assert worker is not None
    core.seen(worker, T0 + 1)
    core.tick(T0 + 1)
    assert (core.take_workers(), core.has_changes()) == (([], []), False)
    core.tick(T0 + 20)  # both silent past their windows: offline is stored
    assert sorted(w.id for w in core.take_workers()[0]) == ["h", "z"]


def test_offline_workers_are_forgotten_after_the_worker_retention(core: Scheduler) -> None:
    # Finished tasks are kept ten times as long: the workers' own retention counts.
    timing = Timing(ping_interval=1.0, liveness=3, retention=1000.0, worker_retention=100.0)
    core = CheckedScheduler(timing)
    store = MemoryStore()
    add_worker(core, "gone")
    add_worker(core, "stays", now=T0 + 50)
    edge.http_register(core, {"id": "h", "capabilities": ["x"]}, T0)
    edge.http_next(core, {"id": "h", "wait": 30}, "poll", T0 + 90)  # present while it polls
    core.tick(T0 + 10)  # "gone" and, later, "stays" fall silent
    core.tick(T0 + 60)
    commit(core, store)
    assert {w.id for w in store.load_workers()} == {"gone", "stays", "h"}
    core.prune(T0 + 100)
    assert not core.has_changes()  # none was seen last more than the retention ago
    core.prune(T0 + 100.5)
    assert core.take_workers() == ([], ["gone"])
    assert set(core.workers) == {"stays", "h"}
    store.save([], forgotten=["gone"])
    core.prune(T0 + 1000)  # "h" is online (its poll), however long ago it registered
    assert set(core.workers) == {"h"}
    commit(core, store)
    assert [w.id for w in store.load_workers()] == ["h"]
    assert restart(core, store, T0 + 1000).workers.keys() == {"h"}


def test_offline_workers_are_forgotten_a_bounded_batch_a_round() -> None:
    core = CheckedScheduler(Timing(ping_interval=1.0, liveness=3, worker_retention=10.0))
    for i in range(WORKER_PRUNE_BATCH + 50):
        add_worker(core, f"w{i}")
    core.tick(T0 + 5)  # every one silent past its window: offline
    core.take_workers()
    core.prune(T0 + 20)
    assert len(core.take_workers()[1]) == WORKER_PRUNE_BATCH
    core.prune(T0 + 21)
    assert len(core.take_workers()[1]) == 50 and core.workers == {}


def test_restart_after_a_dispatch_that_was_never_committed_runs_the_task_again(
    core: Scheduler,
) -> None:
    store = MemoryStore()
    task_id = submit(core)
    store.save(core.take_dirty())  # the submit was acknowledged, so committed
    early = add_worker(core, "early")
    assert dispatched(core) == {early: [task_id]}  # DISPATCH leaves; the broker dies before
    # the lease is committed.
    restarted = restart(core, store, T0 + 1)
    task = restarted.tasks[task_id]
    assert (task.status, task.attempts, task.leases) == (TaskStatus.PENDING, 0, [])
    other = add_worker(restarted, "other", now=T0 + 1)
    assert dispatched(restarted, T0 + 1) == {other: [task_id]}  # attempt 1, a second time
    # The first worker comes back claiming its run of attempt 1: refused, told to stop it.
    add_worker(restarted, "early", now=T0 + 2, running=[{"task_id": task_id, "attempt": 1}])
    assert restarted.take_outbox().cancel == {early: [task_id]}
    assert restarted.workers["early"].running == {}
    # Its outcome, same attempt number but not its lease, is never recorded.
    report(restarted, early, task_id, 1, result=b"early", now=T0 + 3)
    assert (task.status, task.result) == (TaskStatus.RUNNING, None)
    assert restarted.stale_outcomes == 1
    report(restarted, other, task_id, 1, result=b"other", now=T0 + 4)
    assert (task.status, task.result, task.worker_id) == (TaskStatus.COMPLETED, b"other", "other")


def test_restart_after_a_dependent_started_before_its_dependency_was_committed(
    core: Scheduler,
) -> None:
    store = MemoryStore()
    parent = submit(core)
    child = submit(core, dependencies=[parent])
    address = add_worker(core, "w1", slots=2)
    assert dispatched(core) == {address: [parent]}
    store.save(core.take_dirty())  # parent running, child waiting: committed
    finish(core, address, parent, result=b"P", now=T0 + 1)
    assert dispatched(core, T0 + 1) == {address: [child]}  # the broker dies before the commit

    restarted = restart(core, store, T0 + 2)
    assert restarted.tasks[parent].status is TaskStatus.RUNNING
    assert restarted.tasks[child].status is TaskStatus.PENDING
    # The worker registers again holding the parent's outcome (not acknowledged) and the
    # child's run: the child's lease is unknown, so it is refused and stopped...
    claims = [{"task_id": parent, "attempt": 1}, {"task_id": child, "attempt": 1}]
    add_worker(restarted, "w1", slots=2, now=T0 + 2, running=claims)
    assert restarted.take_outbox().cancel == {address: [child]}
    # ...and the child waits for the parent's completion before it runs again.
    assert dispatched(restarted, T0 + 2) == {}
    report(restarted, address, child, 1, status="cancelled", now=T0 + 3)
    assert dispatched(restarted, T0 + 3) == {}
    report(restarted, address, parent, 1, result=b"P", now=T0 + 4)  # sent again
    assert restarted.tasks[parent].status is TaskStatus.COMPLETED
    assert dispatched(restarted, T0 + 4) == {address: [child]}
    finish(restarted, address, child, result=b"C", now=T0 + 5)
    assert restarted.tasks[child].status is TaskStatus.COMPLETED
    assert restarted.stale_outcomes == 1  # the stopped run's report, of a lease never stored


def test_restart_accepts_an_outcome_finished_while_the_broker_was_down(core: Scheduler) -> None:
    store = MemoryStore()
    task_id = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    store.save(core.take_dirty())
    # The broker is down; the run finishes meanwhile and the worker keeps its outcome.
    restarted = restart(core, store, T0 + 5)
    add_worker(restarted, "w1", now=T0 + 6, running=[{"task_id": task_id, "attempt": 1}])
    assert restarted.take_outbox().cancel == {}
    assert report(restarted, address, task_id, 1, result=b"done", now=T0 + 6) == [[task_id, 1]]
    task = restarted.tasks[task_id]
    assert (task.status, task.result, task.attempts) == (TaskStatus.COMPLETED, b"done", 1)
    assert restarted.stale_outcomes == 0
    restarted.tick(T0 + 60)  # long past the window for claims: nothing is run again
    assert dispatched(restarted, T0 + 60) == {}
    assert [t.id for t in restarted.take_dirty()] == [task_id]


def test_finished_tasks_leave_memory_for_the_store_and_are_read_from_it(
    core: Scheduler,
) -> None:
    store = MemoryStore()
    address = add_worker(core, "w1", slots=3)
    done = submit(core, args=b"in", idempotency_key="k")
    failed = submit(core)
    cancelled = submit(core)
    core.cancel(cancelled, T0)
    assert set(dispatched(core)[address]) == {done, failed}
    finish(core, address, done, result=b"out", now=T0 + 1)
    finish(core, address, failed, status="failed", error="boom", now=T0 + 1)
    waiting = submit(core, handler="other")
    store.save(core.take_dirty())
    before = {task_id: task.record() for task_id, task in core.tasks.items()}

    restarted = restart(core, store, T0 + 100)
    assert set(restarted.tasks) == {waiting}  # the finished ones stay in the store
    # Counted, depended on, refused and shown all the same, read from the store.
    assert restarted.health(T0 + 100, T0)["tasks"] == {
        "pending": 1,
        "running": 0,
        "completed": 1,
        "failed": 1,
        "cancelled": 1,
    }
    child = submit(restarted, now=T0 + 100, dependencies=[failed])
    assert restarted.tasks[child].status is TaskStatus.FAILED
    assert restarted.tasks[child].error == f"dependency {failed} failed"
    after_done = submit(restarted, now=T0 + 100, handler="other", dependencies=[done])
    assert restarted.tasks[after_done].waiting_on == 0
    with pytest.raises(Conflict):
        restarted.cancel(cancelled, T0 + 100)
    assert restarted.get(done).record() == before[done]
    page = edge.list_tasks(restarted, {"limit": 3})["tasks"]
    assert page == [before[done], before[failed], before[cancelled]]
    assert set(restarted.tasks) == {waiting, child, after_done}  # reading brought none back

    again = restart(core, store, T0 + 200)
    brief = again.wait_many([done, failed, waiting], 0, "token", T0 + 200)
    assert brief == {"tasks": [
        {"id": done, "status": "completed", "result": b"out", "error": None},
        {"id": failed, "status": "failed", "result": None, "error": "boom"},
    ]}  # fmt: skip
    again = restart(core, store, T0 + 300)
    value = edge.submit_and_wait(
        again, [{"handler": "echo", "args": b"in", "idempotency_key": "k"}], 5, "t", T0 + 300
    )
    assert value == {"tasks": [{**before[done], "created": False}]}


def test_finished_tasks_leave_memory_once_committed_but_the_most_recent(core: Scheduler) -> None:
    store = MemoryStore()
    core = restart(core, store, T0)  # a core with a store, as the broker's
    core.finished_in_memory = 2
    address = add_worker(core, "w1", slots=10)
    ids = [submit(core, args=b"%d" % i, idempotency_key=f"k{i}") for i in range(6)]
    for n, task_id in enumerate(dispatched(core)[address]):
        finish(core, address, task_id, result=b"r", now=T0 + 1 + n)
    assert core.evict() == 0  # not committed yet
    commit(core, store)
    assert core.evict() == 4
    assert set(core.tasks) == set(ids[4:])  # the two that finished last stay
    assert core.health(T0 + 10, T0)["tasks"]["completed"] == 6
    # Waiters, watchers and idempotent submits find the others in the store.
    assert core.wait(ids[0], 5, "w", T0 + 10) is not None
    entries = edge.submit(core, [{"handler": "echo", "args": b"0", "idempotency_key": "k0"}],
                          T0 + 10)  # fmt: skip
    assert entries == [{"id": ids[0], "status": "completed", "created": False}]
    page = edge.list_tasks(core, {"status": "completed", "limit": 4})
    assert [t["id"] for t in page["tasks"]] == ids[:4] and page["next"] is not None
    page = edge.list_tasks(core, {"status": "completed", "after": page["next"]})
    assert [t["id"] for t in page["tasks"]] == ids[4:] and page["next"] is None
    # Pruned from the store by age, the oldest first, and by count (--max-finished).
    core.max_finished = 3
    assert core.prune(T0 + 10, limit=100) == 3
    assert core.health(T0 + 10, T0)["tasks"]["completed"] == 3
    with pytest.raises(NotFound):
        core.get(ids[2])
    core.timing = Timing(retention=5.0)
    assert core.prune(T0 + 10.5, limit=100) == 2  # completed at T0 + 4 and T0 + 5
    assert [t["id"] for t in edge.list_tasks(core, {})["tasks"]] == [ids[5]]
    assert core.health(T0 + 10, T0)["tasks"]["completed"] == 1


def test_a_late_report_of_a_task_in_the_store_is_judged_on_its_stored_leases(
    core: Scheduler,
) -> None:
    store = MemoryStore()
    address = add_worker(core, "w1")
    task_id = submit(core)
    dispatched(core)
    finish(core, address, task_id, result=b"first", now=T0 + 1)
    store.save(core.take_dirty())

    restarted = restart(core, store, T0 + 100)
    address = add_worker(restarted, "w1", now=T0 + 100)
    worker = restarted.worker_at(address)
    assert worker is not None and task_id not in restarted.tasks
    # The same outcome again (its ACK was lost): acknowledged, and not news.
    report = {"task_id": task_id, "attempt": 1, "status": "completed", "result": b"first"}
    assert edge.report(restarted, worker, [report], T0 + 101) == [[task_id, 1]]
    assert restarted.stale_outcomes == 0 and restarted.take_dirty() == []
    # A different outcome for that lease is refused and noted on it, which is written.
    edge.report(restarted, worker, [{**report, "status": "failed", "error": "x"}], T0 + 102)
    assert restarted.stale_outcomes == 1
    commit(restarted, store)
    assert restarted.get(task_id).record()["leases"][0]["refused"] == "failed"
    assert restarted.get(task_id).result == b"first"


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "handler is required"),
        ({"handler": 3}, "handler must be a string"),
        ({"handler": "echo", "priority": "high"}, "priority must be an integer"),
        ({"handler": "echo", "priority": True}, "priority must be an integer"),
        ({"handler": "echo", "max_retries": -1}, "max_retries must be between"),
        ({"handler": "echo", "timeout": 0}, "timeout must be a number > 0"),
        ({"handler": "echo", "args": "text"}, "args must be bytes"),
        ({"handler": "echo", "requires": "gpu"}, "requires must be a list"),
        ({"handler": "echo", "resources": {"gpu": 1}}, "unknown resource 'gpu'"),
        ({"handler": "echo", "colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_bad_specs_are_rejected_naming_the_field(
    core: Scheduler, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        edge.submit(core, [spec], T0)


def test_workers_are_listed_in_pages_by_id_and_about_the_byte_bound(core: Scheduler) -> None:
    for worker_id in ("w3", "w1", "w2"):
        add_worker(core, worker_id)
    fat = [f"{i:05d}{'t' * 240}" for i in range(10_000)]  # about 2.5 MB of capabilities each
    for worker_id in ("f1", "f2", "f3"):
        edge.http_register(core, {"id": worker_id, "capabilities": fat}, T0)

    def pages(limit: int) -> list[list[str]]:
        out, after = [], ""
        while True:
            page = core.list_workers(ListWorkers(limit, after))
            out.append([w["id"] for w in page["workers"]])
            if page["next"] is None:
                return out
            assert page["next"] == out[-1][-1]
            after = page["next"]

    # In id order, at most the limit a page; two fat workers pass the byte bound, so each
    # page holds one of them (and at least one whatever its size).
    assert pages(1000) == [["f1"], ["f2"], ["f3", "w1", "w2", "w3"]]
    assert pages(2) == [["f1"], ["f2"], ["f3", "w1"], ["w2", "w3"]]
    assert core.list_workers(ListWorkers(10, "w3")) == {"workers": [], "next": None}


def test_list_pages_in_submission_order_with_filters(core: Scheduler) -> None:
    ids = [submit(core, handler="echo" if i % 2 else "other") for i in range(7)]
    page = edge.list_tasks(core, {"limit": 2, "handler": "echo"})
    assert [t["id"] for t in page["tasks"]] == [ids[1], ids[3]]
    page = edge.list_tasks(core, {"limit": 2, "handler": "echo", "after": page["next"]})
    assert [t["id"] for t in page["tasks"]] == [ids[5]]
    assert page["next"] is None
    with pytest.raises(InvalidInput):
        edge.list_tasks(core, {"status": "bogus"})


def test_list_by_a_rare_status_pages_like_the_scan(core: Scheduler) -> None:
    # 600 completed tasks around a few running, pending, failed and cancelled ones: the rare
    # statuses are paged from their own set, and must come out exactly as a scan gives them.
    address = add_worker(core, "w1", capabilities=["echo", "slow"], slots=1000)
    for round_ in range(3):
        for _ in range(200):
            submit(core)
        for n, task_id in enumerate(dispatched(core)[address]):
            finish(core, address, task_id, status="failed" if n in (7, 8) else "completed")
        core.cancel(submit(core, handler="nobody"), T0)
        submit(core, handler="slow")
        submit(core, handler="slow" if round_ % 2 else "echo")
        dispatched(core)  # the two new ones run
        submit(core, handler="nobody")
        submit(core, handler="nobody", requires=["gpu"])

    def pages(status: str, handler: str | None = None) -> list[list[str]]:
        out, after = [], 0
        while True:
            args: dict[str, Any] = {"status": status, "limit": 2, "after": after}
            if handler is not None:
                args["handler"] = handler
            page = edge.list_tasks(core, args)
            out.append([t["id"] for t in page["tasks"]])
            if page["next"] is None:
                return out
            after = page["next"]

    def expected(status: str, handler: str | None = None) -> list[list[str]]:
        ids = [t.id for t in sorted(core.tasks.values(), key=lambda t: t.seq)
               if t.status.value == status and handler in (None, t.handler)]  # fmt: skip
        return [ids[i : i + 2] for i in range(0, len(ids), 2)] or [[]]

    for status, handler in [("running", None), ("running", "slow"), ("pending", None),
                            ("pending", "nobody"), ("completed", "slow"), ("failed", None),
                            ("cancelled", "nobody"), ("cancelled", "echo")]:  # fmt: skip
        assert pages(status, handler) == expected(status, handler), (status, handler)
    assert sum(len(p) for p in pages("running")) == 6
    assert sum(len(p) for p in pages("pending")) == 6
    assert sum(len(p) for p in pages("failed")) == 6
    assert sum(len(p) for p in pages("cancelled")) == 3
    # The sets follow every change of status, and are rebuilt on load.
    running = [i for page in pages("running") for i in page]
    finish(core, address, running[0])
    assert running[0] not in [i for page in pages("running") for i in page]
    store = MemoryStore()
    store.save(core.tasks.values())
    reloaded = CheckedScheduler(core.timing)
    reloaded.load(store.load(), T0, store=store)
    for status in ("running", "failed", "cancelled"):
        args = {"status": status, "limit": 10}
        assert edge.list_tasks(reloaded, args)["tasks"] == edge.list_tasks(core, args)["tasks"]
    # Pruned tasks leave their status's set too.
    reloaded.prune(T0 + reloaded.timing.retention + 1, limit=10_000)
    assert edge.list_tasks(reloaded, {"status": "failed"})["tasks"] == []
    assert edge.list_tasks(reloaded, {"status": "cancelled"})["tasks"] == []
    assert len(edge.list_tasks(reloaded, {"status": "running"})["tasks"]) == 5


# -- delivery guarantees --------------------------------------------------------------------


def test_idempotency_key_returns_the_first_task(core: Scheduler) -> None:
    first = edge.submit(core, [{"handler": "echo", "idempotency_key": "k1"}], T0)
    again = edge.submit(
        core,
        [
            {"handler": "echo", "idempotency_key": "k1"},
            {"handler": "echo", "idempotency_key": "k1"},
        ],
        T0 + 1,
    )
    assert first[0]["created"] is True
    assert [e["id"] for e in again] == [first[0]["id"]] * 2
    assert [e["created"] for e in again] == [False, False]
    assert len(core.tasks) == 1


def test_lease_history_records_every_run(core: Scheduler) -> None:
    task_id = submit(core, max_retries=1)
    first = add_worker(core, "first")
    dispatched(core)
    core.tick(T0 + 10)  # "first" goes silent: lost
    second = add_worker(core, "second", now=T0 + 10)
    dispatched(core, T0 + 10)
    finish(core, second, task_id, status="failed", error="bad", now=T0 + 11)
    core.tick(T0 + 12)
    dispatched(core, T0 + 12)
    finish(core, second, task_id, now=T0 + 13)
    leases = core.tasks[task_id].record()["leases"]
    assert [(le["attempt"], le["worker_id"], le["outcome"]) for le in leases] == [
        (1, "first", "lost"),
        (2, "second", "failed"),
        (3, "second", "completed"),
    ]
    assert leases[1]["error"] == "bad"
    assert [le["ended_at"] for le in leases] == [T0 + 10, T0 + 11, T0 + 13]
    assert first not in dispatched(core, T0 + 13)


def test_a_resent_outcome_is_acknowledged_without_counting_as_stale(core: Scheduler) -> None:
    task_id = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    finish(core, address, task_id, result=b"once")
    finish(core, address, task_id, result=b"twice")  # its ACK was lost: sent again
    assert core.tasks[task_id].result == b"once"
    assert core.stale_outcomes == 0


def test_a_late_report_of_an_earlier_attempt_is_refused_while_a_later_one_runs(
    core: Scheduler,
) -> None:
    # The run of attempt 1 outlives its lease (the worker froze past timeout + grace); the
    # retry, attempt 2, goes to the same worker. Attempt 1's report must not end attempt 2.
    task_id = submit(core, timeout=2, max_retries=1)
    address = add_worker(core, "w1", slots=2)
    assert dispatched(core) == {address: [task_id]}
    for now in (T0 + 7, T0 + 8):  # expired at T0 + 7, back-off of 1 s: ready again at T0 + 8
        core.seen(core.workers["w1"], now)
        core.tick(now)
    assert dispatched(core, T0 + 8) == {address: [task_id]}
    task = core.tasks[task_id]
    assert (task.status, task.attempts) == (TaskStatus.RUNNING, 2)

    assert report(core, address, task_id, 1, result=b"late", now=T0 + 9) == [[task_id, 1]]
    assert (task.status, task.result, task.attempts) == (TaskStatus.RUNNING, None, 2)
    assert core.stale_outcomes == 1
    assert [(le.attempt, le.outcome, le.refused) for le in task.leases] == [
        (1, "expired", "completed"),
        (2, None, None),
    ]
    report(core, address, task_id, 2, result=b"fresh", now=T0 + 10)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, b"fresh")


def test_a_report_of_the_run_before_a_reconnect_is_refused_on_the_same_worker(
    core: Scheduler,
) -> None:
    # The worker went silent, came back under the same id, and got the task again.
    task_id = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    core.tick(T0 + 10)
    assert core.tasks[task_id].status is TaskStatus.PENDING  # lost
    add_worker(core, "w1", now=T0 + 10)
    assert dispatched(core, T0 + 10) == {address: [task_id]}
    report(core, address, task_id, 1, status="failed", error="old run", now=T0 + 11)
    task = core.tasks[task_id]
    assert (task.status, task.attempts, task.error) == (TaskStatus.RUNNING, 2, None)
    assert core.stale_outcomes == 1
    report(core, address, task_id, 2, result=b"new", now=T0 + 12)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, b"new")


def test_a_report_from_a_worker_that_does_not_hold_the_lease_is_refused(core: Scheduler) -> None:
    task_id = submit(core)
    holder = add_worker(core, "holder", slots=1)
    assert dispatched(core) == {holder: [task_id]}
    intruder = add_worker(core, "intruder", slots=1)
    # Same task, same attempt, but another worker's lease: acknowledged, never recorded.
    assert report(core, intruder, task_id, 1, result=b"forged") == [[task_id, 1]]
    task = core.tasks[task_id]
    assert (task.status, task.result, task.worker_id) == (TaskStatus.RUNNING, None, "holder")
    assert task.leases[0].outcome is None and task.leases[0].refused is None
    assert core.stale_outcomes == 1
    assert core.workers["intruder"].capacity() == 1
    report(core, holder, task_id, 1, result=b"real")
    assert (task.status, task.result) == (TaskStatus.COMPLETED, b"real")


@pytest.mark.parametrize("late", ["completed", "failed"])
def test_a_cancellation_stands_against_a_late_outcome(core: Scheduler, late: str) -> None:
    # The run finished before the worker heard of the cancel: its outcome changes nothing.
    task_id = submit(core, max_retries=3)
    address = add_worker(core, "w1")
    dispatched(core)
    core.cancel(task_id, T0 + 1)
    report(core, address, task_id, 1, status=late, result=b"too late", error="x", now=T0 + 2)
    task = core.tasks[task_id]
    assert (task.status, task.result, task.error) == (TaskStatus.CANCELLED, None, "cancelled")
    assert task.leases[0].outcome == "cancelled"
    assert core.workers["w1"].capacity() == 1  # the run is over: its slot is free
    assert dispatched(core, T0 + 2) == {}  # and nothing runs it again


def test_refused_outcome_is_shown_on_its_lease(core: Scheduler) -> None:
    task_id = submit(core)
    frozen = add_worker(core, "frozen")
    dispatched(core)
    core.tick(T0 + 10)
    other = add_worker(core, "other", now=T0 + 10)
    dispatched(core, T0 + 10)
    finish(core, other, task_id, result=b"theirs", now=T0 + 11)
    add_worker(core, "frozen", now=T0 + 12, running=[{"task_id": task_id, "attempt": 1}])
    worker = core.worker_at(frozen)
    assert worker is not None
    late = {"task_id": task_id, "attempt": 1, "status": "completed", "result": b"mine"}
    edge.report(core, worker, [late], T0 + 12)
    task = core.tasks[task_id]
    assert (task.status, task.result, task.worker_id) == (TaskStatus.COMPLETED, b"theirs", "other")
    assert task.leases[0].refused == "completed"
    assert core.stale_outcomes == 1
    edge.report(core, worker, [late], T0 + 13)  # sent again after registering again: not news
    assert core.stale_outcomes == 1


def test_prune_forgets_finished_tasks_past_retention_in_batches(core: Scheduler) -> None:
    core = CheckedScheduler(Timing(retention=100.0))
    old = [submit(core, handler="nobody") for _ in range(5)]
    for task_id in old:
        core.cancel(task_id, T0)
    keep = submit(core, handler="nobody")
    recent = submit(core, handler="nobody")
    core.cancel(recent, T0 + 50)
    core.take_dirty()
    assert core.prune(T0 + 99) == 0
    assert core.prune(T0 + 100, limit=3) == 3
    assert core.prune(T0 + 100, limit=3) == 2
    assert sorted(t.id for t in core.take_pruned()) == sorted(old)
    assert set(core.tasks) == {keep, recent}
    assert [t["id"] for t in edge.list_tasks(core, {})["tasks"]] == [keep, recent]
    assert core.index.counts[TaskStatus.CANCELLED] == 1
    with pytest.raises(InvalidInput, match="unknown task"):
        edge.submit(core, [{"handler": "echo", "dependencies": [old[0]]}], T0 + 101)


def test_wait_many_answers_once_every_task_is_final(core: Scheduler) -> None:
    a, b = submit(core), submit(core)
    address = add_worker(core, "w1", slots=2)
    dispatched(core)
    assert core.wait_many([a, b], 10, "token", T0) is None
    finish(core, address, a, result=b"A")
    assert core.take_outbox().replies == []
    finish(core, address, b, result=b"B")
    ((token, value),) = core.take_outbox().replies
    assert token == "token"
    assert [(t["id"], t["result"]) for t in value["tasks"]] == [(a, b"A"), (b, b"B")]


def test_wait_many_times_out_with_what_is_final(core: Scheduler) -> None:
    a, b = submit(core), submit(core, handler="nobody")
    address = add_worker(core, "w1")
    dispatched(core)
    finish(core, address, a)
    assert core.wait_many([a, b], 0, "now", T0) == {
        "tasks": [{"id": a, "status": "completed", "result": b"ok", "error": None}]
    }
    assert core.wait_many([a, b], 5, "later", T0) is None
    core.tick(T0 + 5)
    ((_, value),) = core.take_outbox().replies
    assert [t["id"] for t in value["tasks"]] == [a]
    with pytest.raises(NotFound):
        core.wait_many([a, "nope"], 1, "x", T0)


def test_a_task_named_many_times_in_one_wait_is_waited_for_once(core: Scheduler) -> None:
    a, b = submit(core, handler="nobody"), submit(core, handler="nobody")
    assert core.wait_many([a] * 10_000 + [b], 5, "many", T0) is None
    assert core.wait(a, 5, "one", T0) is None
    # One entry a waiter under each task, however often it named it.
    assert [len(core.deferred.by_task[i]) for i in (a, b)] == [2, 1]
    core.cancel(b, T0)
    core.tick(T0 + 5)  # both expire: each leaves its tasks' entries
    assert core.deferred.by_task == {}
    replies = dict(core.take_outbox().replies)
    assert [t["id"] for t in replies["many"]["tasks"]] == [b]
    assert replies["one"]["status"] == "pending"


def test_a_list_page_holds_about_its_byte_bound_of_tasks_and_at_least_one(
    core: Scheduler,
) -> None:
    big = b"x" * (MAX_PAGE_BYTES // 3)
    ids = [submit(core, handler="nobody", args=big) for _ in range(5)]
    ids += [submit(core, handler="nobody") for _ in range(5)]
    pages = []
    after = 0
    while after is not None:
        page = edge.list_tasks(core, {"limit": 1000, "after": after})
        pages.append([t["id"] for t in page["tasks"]])
        after = page["next"]
    # Three large tasks pass the bound: two a page, then the last with the small ones.
    assert pages == [ids[:2], ids[2:4], ids[4:]]
    huge = submit(core, handler="nobody", args=b"y" * (MAX_PAGE_BYTES + 1))
    page = edge.list_tasks(core, {"limit": 1000, "after": core.get(ids[-1]).seq})
    assert [t["id"] for t in page["tasks"]] == [huge] and page["next"] is None


def test_submit_and_wait_answers_with_whole_records_once_all_are_final(core: Scheduler) -> None:
    address = add_worker(core, "w1", slots=2)
    specs = [{"handler": "echo", "args": b"a", "idempotency_key": "k"}, {"handler": "echo"}]
    assert edge.submit_and_wait(core, specs, 10, "token", T0) is None
    a, b = dispatched(core)[address]
    finish(core, address, a, result=b"A")
    assert core.take_outbox().replies == []
    finish(core, address, b, result=b"B")
    ((token, value),) = core.take_outbox().replies
    assert token == "token"
    records = value["tasks"]
    assert [(t["id"], t["status"], t["result"], t["created"]) for t in records] == [
        (a, "completed", b"A", True),
        (b, "completed", b"B", True),
    ]
    assert records[0]["args"] == b"a" and records[0]["attempts"] == 1
    # The same key again: the first task, final already, answered at once.
    again = edge.submit_and_wait(core, [specs[0]], 10, "again", T0)
    assert again is not None
    assert [(t["id"], t["created"]) for t in again["tasks"]] == [(a, False)]


def test_submit_and_wait_times_out_with_unfinished_records(core: Scheduler) -> None:
    assert edge.submit_and_wait(core, [{"handler": "nobody"}], 0, "now", T0) is not None
    assert edge.submit_and_wait(core, [{"handler": "nobody"}], 2, "later", T0) is None
    core.tick(T0 + 2)
    ((token, value),) = core.take_outbox().replies
    assert token == "later" and value["tasks"][0]["status"] == "pending"


@pytest.mark.parametrize("wait", [-1, "soon", True, float("nan"), float("inf")])
def test_submit_and_wait_refuses_a_bad_wait_and_creates_nothing(core: Scheduler, wait: Any) -> None:
    with pytest.raises(InvalidInput, match="wait"):
        edge.submit_and_wait(core, [{"handler": "echo"}], wait, "token", T0)
    assert core.tasks == {}


# -- what health, records and the less travelled paths show -----------------------------------


def test_health_counts_tasks_workers_and_every_refused_or_dropped_message(core: Scheduler) -> None:
    address = add_worker(core, "w1", slots=2)
    done, running = submit(core), submit(core)
    submit(core, handler="nobody")
    dispatched(core)
    finish(core, address, done)
    # Two reports for runs the worker never held, and one for a lease that ended: three.
    report(core, address, running, 7)
    report(core, address, "0" * 32, 1)  # a task it never knew: nothing to count against
    report(core, address, running, 5)
    report(core, address, done, 1, status="failed")
    core.dropped_messages += 1  # the socket loop counts what it drops
    assert core.health(T0 + 30, T0) == {
        "status": "ok",
        "tasks": {"pending": 1, "running": 1, "completed": 1, "failed": 0, "cancelled": 0},
        "workers": 1,
        "unservable": 1,  # the task for nobody
        "stale_outcomes": 3,
        "dropped_messages": 1,
        "refused_replies": 0,
        "uptime": 30.0,
    }


def test_worker_records_show_slots_for_zmq_workers_only(core: Scheduler) -> None:
    add_worker(core, "z", slots=3, resources={"cpu": 2})
    edge.http_register(core, {"id": "h", "capabilities": ["echo"]}, T0)
    assert core.worker("z").record()["slots"] == 3
    assert core.worker("h").record()["slots"] is None
    assert core.worker("z").record()["resources"] == {"cpu": 2.0}
    with pytest.raises(NotFound):
        core.worker("nobody")


def test_a_goodbye_gives_runs_back_without_counting_them_lost(core: Scheduler) -> None:
    task_id = submit(core, max_retries=0)
    address = add_worker(core, "w1")
    dispatched(core)
    core.goodbye(core.workers["w1"], T0 + 1)
    task = core.tasks[task_id]
    assert (task.status, task.worker_id, task.lost, task.failures) == (
        TaskStatus.PENDING, None, 0, 0,
    )  # fmt: skip
    assert (task.leases[0].outcome, task.leases[0].ended_at) == ("released", T0 + 1)
    assert core.worker_at(address) is None
    other = add_worker(core, "w2", now=T0 + 2)
    assert dispatched(core, T0 + 2) == {other: [task_id]}


def test_an_expired_lease_records_when_and_why(core: Scheduler) -> None:
    task_id = submit(core, timeout=2, max_retries=1)
    add_worker(core, "w1", slots=2)
    dispatched(core)
    core.seen(core.workers["w1"], T0 + 7)
    core.tick(T0 + 7)
    task = core.tasks[task_id]
    lease = task.leases[0]
    assert (lease.outcome, lease.ended_at) == ("expired", T0 + 7)
    assert lease.error == task.error == "timed out after 2 s (lease expired)"
    assert (task.status, task.worker_id, task.not_before) == (TaskStatus.PENDING, None, T0 + 8)


def test_an_http_worker_that_completes_is_seen_and_its_result_kept(core: Scheduler) -> None:
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"]}, T0)
    task_id = submit(core)
    edge.http_next(core, {"id": "h1", "wait": 0}, "poll", T0)
    core.schedule(T0)
    args = {"worker_id": "h1", "task_id": task_id, "status": "failed", "error": "bad input",
            "traceback": "Traceback (most recent call last):\nValueError: bad input"}  # fmt: skip
    edge.http_complete(core, args, T0 + 9)
    assert core.workers["h1"].last_seen == T0 + 9
    task = core.tasks[task_id]
    assert (task.status, task.error, task.completed_at) == (TaskStatus.FAILED, "bad input", T0 + 9)
    assert task.leases[-1].traceback == args["traceback"]  # on its lease, as a worker's DONE


def test_cancelling_an_http_workers_run_frees_its_resources_at_once(core: Scheduler) -> None:
    # An HTTP worker cannot be told to stop: its lease ends now, and what it held is free.
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"], "resources": {"cpu": 1}}, T0)
    first = submit(core, resources={"cpu": 1})
    second = submit(core, resources={"cpu": 1})
    edge.http_next(core, {"id": "h1", "wait": 10}, "poll-1", T0)
    edge.http_next(core, {"id": "h1", "wait": 10}, "poll-2", T0)
    core.schedule(T0)
    assert [(token, value["id"]) for token, value in core.take_outbox().replies] == [
        ("poll-1", first)
    ]
    core.cancel(first, T0 + 1)
    assert core.workers["h1"].running == {}
    core.schedule(T0 + 1)
    assert [(token, value["id"]) for token, value in core.take_outbox().replies] == [
        ("poll-2", second)
    ]


def test_a_wait_that_times_out_leaves_the_other_waits_on_its_task(core: Scheduler) -> None:
    task_id = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    assert core.wait(task_id, 1, "short", T0) is None
    assert core.wait(task_id, 60, "long", T0) is None
    core.seen(core.workers["w1"], T0 + 1)
    core.tick(T0 + 1)
    ((token, record),) = core.take_outbox().replies
    assert (token, record["status"]) == ("short", "running")
    finish(core, address, task_id, result=b"at last", now=T0 + 2)
    ((token, record),) = core.take_outbox().replies
    assert (token, record["status"], record["result"]) == ("long", "completed", b"at last")


# -- a restart brings back every kind of waiting ------------------------------------------------


def test_a_restart_keeps_counting_tasks_after_the_last_one_stored(core: Scheduler) -> None:
    store = MemoryStore()
    first, second = submit(core), submit(core)
    store.save(core.take_dirty())
    restarted = restart(core, store, T0 + 1)
    assert restarted.next_seq == core.tasks[second].seq + 1
    third = submit(restarted, now=T0 + 1)
    store.save(restarted.take_dirty())
    again = restart(restarted, store, T0 + 2)
    page = edge.list_tasks(again, {})["tasks"]
    assert [t["id"] for t in page] == [first, second, third]


def test_a_restart_queues_a_pending_task_whose_dependencies_completed(core: Scheduler) -> None:
    store = MemoryStore()
    parent = submit(core)
    address = add_worker(core, "w1")
    dispatched(core)
    child = submit(core, dependencies=[parent])
    finish(core, address, parent, now=T0 + 1)
    store.save(core.take_dirty())  # the parent completed, the child not yet dispatched
    restarted = restart(core, store, T0 + 2)
    worker = add_worker(restarted, "w1", now=T0 + 2)
    assert dispatched(restarted, T0 + 2) == {worker: [child]}


def test_a_restart_keeps_a_retry_waiting_for_its_back_off(core: Scheduler) -> None:
    store = MemoryStore()
    task_id = submit(core, max_retries=1)
    address = add_worker(core, "w1")
    dispatched(core)
    finish(core, address, task_id, status="failed", now=T0 + 1)  # retry at T0 + 2
    store.save(core.take_dirty())
    restarted = restart(core, store, T0 + 1.5)
    add_worker(restarted, "w1", now=T0 + 1.5)
    assert dispatched(restarted, T0 + 1.5) == {}
    restarted.tick(T0 + 1.9)
    assert dispatched(restarted, T0 + 1.9) == {}
    restarted.tick(T0 + 2)
    assert dispatched(restarted, T0 + 2) == {address: [task_id]}


def test_a_restart_keeps_the_time_limit_of_a_running_lease(core: Scheduler) -> None:
    store = MemoryStore()
    task_id = submit(core, timeout=3, max_retries=0)
    add_worker(core, "w1")
    dispatched(core)
    store.save(core.take_dirty())
    restarted = restart(core, store, T0 + 10)
    add_worker(restarted, "w1", now=T0 + 10, running=[{"task_id": task_id, "attempt": 1}])
    # timeout + grace from the restart: the worker's own clock is not known to the broker.
    for now in (T0 + 17.9, T0 + 18):
        restarted.seen(restarted.workers["w1"], now)
        restarted.tick(now)
    task = restarted.tasks[task_id]
    assert (task.status, task.leases[0].outcome) == (TaskStatus.FAILED, "expired")
    assert task.completed_at == T0 + 18


def test_pruning_after_a_restart_goes_by_completion_not_submission(core: Scheduler) -> None:
    core = CheckedScheduler(Timing(retention=100.0))
    store = MemoryStore()
    early, late = submit(core, handler="nobody"), submit(core, handler="nobody")
    core.cancel(late, T0)
    core.cancel(early, T0 + 50)
    store.save(core.take_dirty())
    restarted = restart(core, store, T0 + 120)
    assert restarted.prune(T0 + 120) == 1
    assert restarted.find(early) is not None and restarted.find(late) is None


# -- HTTP workers, and workers holding stopped runs ----------------------------------------------


def test_a_long_poll_is_answered_at_once_when_a_task_waits(core: Scheduler) -> None:
    task_id = submit(core)
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"]}, T0)
    core.schedule(T0)
    edge.http_next(core, {"id": "h1", "wait": 20}, "poll", T0 + 3)
    core.schedule(T0 + 3)
    ((token, record),) = core.take_outbox().replies
    assert (token, record["id"], record["started_at"]) == ("poll", task_id, T0 + 3)
    assert core.workers["h1"].last_seen == T0 + 3


def test_an_http_worker_registering_again_keeps_what_its_runs_hold(core: Scheduler) -> None:
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"], "resources": {"cpu": 2}}, T0)
    held = submit(core, resources={"cpu": 1})
    edge.http_next(core, {"id": "h1", "wait": 0}, "poll", T0)
    core.schedule(T0)
    worker, created = edge.http_register(
        core, {"id": "h1", "capabilities": ["echo", "x"], "resources": {"cpu": 3}}, T0 + 1
    )
    assert created is False and worker.running == {held: 1}
    assert (worker.free, worker.capabilities) == ({"cpu": 2.0}, frozenset({"echo", "x"}))


def test_a_silent_worker_with_a_stopped_run_loses_only_its_running_ones(core: Scheduler) -> None:
    cancelled, running = submit(core), submit(core)
    add_worker(core, "w1", slots=2)
    dispatched(core)
    core.cancel(cancelled, T0)  # the worker is told to stop it; it never says it did
    core.tick(T0 + 10)
    assert core.tasks[cancelled].status is TaskStatus.CANCELLED
    task = core.tasks[running]
    assert (task.status, task.lost, task.leases[0].outcome) == (TaskStatus.PENDING, 1, "lost")


def test_an_open_long_poll_shows_when_its_worker_asked(core: Scheduler) -> None:
    edge.http_register(core, {"id": "h1", "capabilities": ["echo"]}, T0)
    edge.http_next(core, {"id": "h1", "wait": 20}, "poll", T0 + 5)
    core.schedule(T0 + 5)
    assert core.take_outbox().replies == []
    assert core.worker("h1").record()["last_seen"] == T0 + 5


# -- why a task waits, and what no worker could ever run --------------------------------------


def test_a_pending_task_says_what_it_waits_for(core: Scheduler) -> None:
    parent = submit(core)
    child = submit(core, dependencies=[parent])
    address = add_worker(core, "w1", capabilities=["echo"], resources={"cpu": 2})
    dispatched(core)
    gpu = submit(core, requires=["gpu"])
    big = submit(core, resources={"cpu": 8})
    other = submit(core, handler="other")
    busy = submit(core)

    def why(task_id: str) -> Any:
        return core.show(core.get(task_id))["waiting_for"]

    assert why(parent) is None  # running
    assert why(child) == {"reason": "dependencies", "tasks": [parent]}
    assert why(gpu) == {"reason": "no worker",
                        "detail": "no online worker serving 'echo' has tag 'gpu'"}  # fmt: skip
    assert why(big) == {"reason": "no worker",
                        "detail": "no online worker serving 'echo' offers 8 cpu"}  # fmt: skip
    assert why(other) == {"reason": "no worker",
                          "detail": "no online worker serves handler 'other'"}  # fmt: skip
    assert why(busy) == {"reason": "slot",
                         "detail": "every online worker that can run it is busy"}  # fmt: skip
    finish(core, address, parent, status="failed", now=T0 + 1)
    assert why(child) is None  # it failed with its parent
    retried = submit(core, max_retries=1, now=T0 + 1)
    assert dispatched(core, T0 + 1) == {address: [busy]}
    finish(core, address, busy, now=T0 + 2)
    assert dispatched(core, T0 + 2) == {address: [retried]}
    finish(core, address, retried, status="failed", now=T0 + 3)
    assert why(retried) == {"reason": "back-off", "ready_at": T0 + 4}


def test_health_counts_the_tasks_no_online_worker_could_run(core: Scheduler) -> None:
    submit(core, handler="a")
    submit(core, handler="a")
    submit(core, handler="b", requires=["gpu"])
    assert core.health(T0, T0)["unservable"] == 3
    add_worker(core, "wa", capabilities=["a"], slots=1)
    assert core.health(T0, T0)["unservable"] == 1  # both a's can run, one waits for a slot
    add_worker(core, "wb", capabilities=["b", "gpu"])
    assert core.health(T0, T0)["unservable"] == 0
    assert dispatched(core) == {b"wa": [core.index.order[0].id], b"wb": [core.index.order[2].id]}
    assert core.health(T0, T0)["unservable"] == 0
    core.tick(T0 + 10)  # both go silent: their runs are lost, and nobody is left
    assert core.health(T0 + 10, T0)["unservable"] == 3
    assert core.index.counts[TaskStatus.PENDING] == 3


def test_a_submit_can_ask_to_be_refused_when_no_worker_could_run_it(core: Scheduler) -> None:
    add_worker(core, "w1", capabilities=["echo"])
    fine, lonely = {"handler": "echo"}, {"handler": "echo", "requires": ["gpu"]}
    with pytest.raises(Conflict, match=r"tasks\[1\]\.refused: no online worker serving 'echo' "
                                       r"has tag 'gpu'"):  # fmt: skip
        core.submit(Submit.from_args({"tasks": [fine, lonely]}).tasks, T0,
                    refuse_unservable=True)  # fmt: skip
    assert core.tasks == {}  # all or none
    entries = core.submit(Submit.from_args({"tasks": [fine]}).tasks, T0, refuse_unservable=True)
    assert [e["created"] for e in entries] == [True]
    core.submit(Submit.from_args({"tasks": [lonely]}).tasks, T0)  # without asking: it waits
    assert core.index.counts[TaskStatus.PENDING] == 2


def test_a_task_no_worker_could_run_is_logged_once_until_the_workers_change(
    core: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="broker.core")
    for _ in range(3):
        submit(core, handler="rare")
    add_worker(core, "w1", capabilities=["echo"])
    submit(core, handler="rare")
    records = [r for r in caplog.records if "will wait" in r.getMessage()]
    assert [r.getMessage() for r in records] == [
        "tasks of handler 'rare' will wait: no online worker serves handler 'rare'"
    ] * 2
    assert [getattr(r, "handler", None) for r in records] == ["rare"] * 2  # a field of JSON logs


def test_an_idempotency_key_sent_again_with_another_spec_is_a_conflict(core: Scheduler) -> None:
    first = submit(core, handler="echo", args=b"a", idempotency_key="k", priority=2)
    again = submit(core, handler="echo", args=b"a", idempotency_key="k", priority=2)
    assert again == first
    with pytest.raises(Conflict, match=f"idempotency_key 'k' names task {first}, submitted "
                                       "with another args"):  # fmt: skip
        submit(core, handler="echo", args=b"b", idempotency_key="k", priority=2)
    with pytest.raises(Conflict, match="another priority"):
        submit(core, handler="echo", args=b"a", idempotency_key="k")
    twice = [{"handler": "x", "idempotency_key": "j"}, {"handler": "y", "idempotency_key": "j"}]
    with pytest.raises(Conflict, match=r"tasks\[1\]\.idempotency_key 'j' names an earlier entry"):
        edge.submit(core, twice, T0)
    batch = [{"handler": "echo"}, {"handler": "echo", "args": b"b", "idempotency_key": "k"}]
    with pytest.raises(Conflict, match=rf"tasks\[1\]\.idempotency_key 'k' names task {first}"):
        edge.submit(core, batch, T0)  # the entry's place, as for any error of a batch
    assert len(core.tasks) == 1


def test_a_separate_submit_makes_each_task_as_submitting_it_alone_would() -> None:
    specs = ops.Submit.from_args({"tasks": [
        {"handler": "echo", "args": b"fine"},
        {"handler": "echo", "args": b"x" * 11},  # too large
        {"handler": "echo", "dependencies": ["nope"]},
        {"handler": "echo", "idempotency_key": "k", "args": b"a"},
        {"handler": "echo", "idempotency_key": "k", "args": b"a"},  # the same task again
        {"handler": "echo", "idempotency_key": "k", "args": b"b"},  # another spec: refused
        {"handler": "echo", "idempotency_key": "j", "args": b"x" * 11},  # refused: j is free
        {"handler": "echo", "idempotency_key": "j", "args": b"ok"},
        {"handler": "nobody"},  # no worker serves it, and the submit refuses those
        {"handler": "echo", "args": b"last"},
    ]}).tasks  # fmt: skip
    each, alone = CheckedScheduler(), CheckedScheduler()
    for core in (each, alone):
        core.max_payload = 10
        add_worker(core, "w")
    # One at a time, as a client would send them: the reference.
    expected: list[Any] = []
    for spec in specs:
        try:
            expected += alone.submit([spec], T0, refuse_unservable=True)
        except SchedulerError as exc:
            expected.append(exc)
    entries = each.submit_each(specs, T0, refuse_unservable=True)

    def seen(entry: Any) -> Any:
        if isinstance(entry, SchedulerError):
            return type(entry), entry.status
        return entry["id"][:12], entry["status"], entry["created"]  # the seq: ids are random

    assert [seen(e) for e in entries] == [seen(e) for e in expected]
    assert [type(e).__name__ for e in entries if isinstance(e, SchedulerError)] == [
        "TooLarge", "InvalidInput", "Conflict", "TooLarge", "Conflict"
    ]  # fmt: skip
    assert [str(e) for e in entries if isinstance(e, SchedulerError)][::3] == [
        str(e) for e in expected if isinstance(e, SchedulerError)
    ][::3]  # messages as alone (the key's conflict names an earlier entry, not its task)
    assert len(each.tasks) == len(alone.tasks) == 4


def test_a_separate_submit_keeps_a_task_no_worker_serves_unless_asked_to_refuse_it() -> None:
    core = CheckedScheduler()
    add_worker(core, "w", capabilities=["echo"])
    lonely = Submit.from_args({"tasks": [{"handler": "nobody"}, {"handler": "echo"}]}).tasks
    kept = core.submit_each(lonely, T0)  # as submit: it waits for a worker
    assert [e["status"] for e in kept if isinstance(e, dict)] == ["pending", "pending"]
    # Through the wire's op: a separate submit that asks for those to be refused
    request = Submit.from_args({"tasks": [{"handler": "nobody"}, {"handler": "echo"}],
                                "separate": True, "refuse_unservable": True})  # fmt: skip
    refused, made = perform(core, request, None, T0, T0)["tasks"]
    assert refused["error"]["status"] == 409 and "nobody" in refused["error"]["description"]
    assert made["status"] == "pending" and made["created"] is True
    assert len(core.tasks) == 3


def test_task_ids_are_the_seq_then_80_random_bits_drawn_once_for_each_task() -> None:
    drawn: list[bytes] = []

    def random_bytes(n: int) -> bytes:
        chunk = bytes((len(drawn) * 7 + i) % 256 for i in range(n))
        drawn.append(chunk)
        return chunk

    core = CheckedScheduler(random_bytes=random_bytes)
    first = core.submit(Submit.from_args({"tasks": [{"handler": "echo"}] * 3}).tasks, T0)
    second = core.submit_each(Submit.from_args({"tasks": [{"handler": "echo"}] * 2}).tasks, T0)
    ids = [e["id"] for e in first] + [e["id"] for e in second if isinstance(e, dict)]
    assert [len(chunk) for chunk in drawn] == [30, 20]  # 10 bytes a task, one draw a submit
    random = b"".join(drawn).hex()
    assert ids == [f"{i + 1:012x}{random[20 * i : 20 * i + 20]}" for i in range(5)]  # seq from 1


def test_a_draining_worker_is_sent_nothing_new_and_keeps_its_runs(core: Scheduler) -> None:
    first, second = submit(core), submit(core)
    stopping = add_worker(core, "stopping", slots=2)
    assert dispatched(core) == {stopping: [first, second]}
    core.drain(core.workers["stopping"], T0 + 1)
    assert core.worker("stopping").record()["draining"] is True
    finish(core, stopping, first, now=T0 + 2)  # its runs still count
    third = submit(core, now=T0 + 2)
    assert dispatched(core, T0 + 2) == {}  # a free slot, but it is stopping
    assert core.show(core.get(third))["waiting_for"] == {
        "reason": "no worker",
        "detail": "no online worker serves handler 'echo', but for 1 draining",
    }  # fmt: skip
    fresh = add_worker(core, "fresh", now=T0 + 3)
    assert dispatched(core, T0 + 3) == {fresh: [third]}
    core.goodbye(core.workers["stopping"], T0 + 4)  # its grace is over: the rest goes back
    task = core.tasks[second]
    assert (task.status, task.lost, task.leases[-1].outcome) == (TaskStatus.PENDING, 0, "released")
    add_worker(core, "stopping", now=T0 + 5)  # back, as a new process: it takes work again
    assert core.worker("stopping").record()["draining"] is False
    assert dispatched(core, T0 + 5) == {stopping: [second]}


def test_a_failed_run_keeps_its_traceback_on_its_lease_and_its_task(core: Scheduler) -> None:
    task_id = submit(core, max_retries=1)
    address = add_worker(core, "w1")
    dispatched(core)
    entry = {"task_id": task_id, "attempt": 1, "status": "failed", "error": "KeyError: 'x'",
             "traceback": "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n"}  # fmt: skip
    edge.report(core, core.workers["w1"], [entry], T0 + 1)
    record = core.show(core.get(task_id))
    assert record["leases"][0]["traceback"] == entry["traceback"]
    assert (record["status"], record["traceback"]) == ("pending", entry["traceback"])
    core.tick(T0 + 2)
    assert dispatched(core, T0 + 2) == {address: [task_id]}
    finish(core, address, task_id, now=T0 + 3)  # the retry succeeds: the task has no traceback
    record = core.show(core.get(task_id))
    assert (record["status"], record["error"], record["traceback"]) == ("completed", None, None)
    assert record["leases"][0]["traceback"] == entry["traceback"]  # its lease keeps it
    expired = submit(core, timeout=1, now=T0 + 3)
    dispatched(core, T0 + 3)
    core.seen(core.workers["w1"], T0 + 9)
    core.tick(T0 + 9)
    assert core.show(core.get(expired))["traceback"] is None  # no handler raised
