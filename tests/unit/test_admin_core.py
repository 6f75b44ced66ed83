"""The core's admin operations: retry, purge, an admin's drain of a worker, and stats."""

from __future__ import annotations

import pytest

from broker.core import STATS_HANDLERS, Scheduler
from broker.invariants import CheckedScheduler
from broker.metrics import OTHER
from broker.store import Store
from broker.store.memory import MemoryStore
from broker.store.sqlite import SqliteStore
from broker.throughput import BUCKET, BUCKETS
from common.errors import Conflict, NotFound
from common.models import TaskStatus
from tests import edge
from tests.unit.test_core import T0, add_worker, dispatched, finish, report, submit


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: object) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return SqliteStore(f"{tmp_path}/scheduler.db", "off")


@pytest.fixture
def stored(store: Store) -> Scheduler:
    """A core on a store, as the broker's: finished tasks leave memory once committed."""
    core = CheckedScheduler()
    core.load(store.load(), T0, store.load_workers(), store)
    core.finished_in_memory = 0
    return core


def commit(core: Scheduler) -> None:
    """What the socket loop does at the end of a turn: save, then let finished tasks go."""
    assert core.store is not None
    workers, forgotten = core.take_workers()
    core.store.save(core.take_dirty(), core.take_pruned(), workers=workers, forgotten=forgotten)
    core.evict()


def alive(core: Scheduler, address: bytes, now: float) -> None:
    """Time passes with the worker answering its pings: a retry's back-off is over."""
    worker = core.worker_at(address)
    assert worker is not None
    core.seen(worker, now)
    core.tick(now)


def fail(core: Scheduler, address: bytes, task_id: str, now: float = T0) -> None:
    alive(core, address, now)
    assert dispatched(core, now) == {address: [task_id]}
    finish(core, address, task_id, "failed", now, error="boom")


# -- retry ---------------------------------------------------------------------------


def test_retry_runs_a_failed_task_again_with_its_attempts_continued(stored: Scheduler) -> None:
    address = add_worker(stored, "w1")
    task_id = submit(stored, max_retries=1)
    fail(stored, address, task_id)
    fail(stored, address, task_id, T0 + 5)  # its one retry, after the back-off
    commit(stored)
    assert task_id not in stored.tasks  # finished: in the store only

    alive(stored, address, T0 + 10)
    record = stored.show(stored.retry(task_id, T0 + 10))
    assert record["status"] == "pending" and record["error"] is None
    assert record["result"] is None and record["completed_at"] is None
    assert stored.tasks[task_id].lost == 0 and stored.tasks[task_id].not_before == 0.0
    assert [lease["outcome"] for lease in record["leases"]] == ["failed", "failed"]
    commit(stored)
    assert dispatched(stored, T0 + 10) == {address: [task_id]}
    assert stored.tasks[task_id].attempts == 3
    # Its failures count from zero: max_retries holds again.
    finish(stored, address, task_id, "failed", T0 + 11, error="again")
    assert stored.tasks[task_id].status is TaskStatus.PENDING
    alive(stored, address, T0 + 20)
    assert dispatched(stored, T0 + 20) == {address: [task_id]}
    finish(stored, address, task_id, "completed", T0 + 21)
    commit(stored)
    assert stored.get(task_id).status is TaskStatus.COMPLETED
    assert stored.index.counts[TaskStatus.FAILED] == 0
    assert stored.index.counts[TaskStatus.COMPLETED] == 1


def test_retry_brings_back_the_dependents_that_failed_because_of_it(stored: Scheduler) -> None:
    address = add_worker(stored, "w1")
    root = submit(stored)
    child = submit(stored, dependencies=[root])
    grandchild = submit(stored, dependencies=[child])
    unrelated = submit(stored, handler="other")
    stored.cancel(unrelated, T0)
    fail(stored, address, root)
    commit(stored)
    assert stored.get(grandchild).error == (
        f"dependency {child} failed (the first to end: task {root} failed)"
    )

    stored.retry(root, T0 + 1)
    for task_id in (root, child, grandchild):
        assert stored.get(task_id).status is TaskStatus.PENDING
    assert stored.show(stored.get(grandchild))["waiting_for"] == {
        "reason": "dependencies",
        "tasks": [child],
    }
    assert stored.get(unrelated).status is TaskStatus.CANCELLED
    commit(stored)
    for expected in (root, child, grandchild):
        assert dispatched(stored, T0 + 1) == {address: [expected]}
        finish(stored, address, expected, now=T0 + 1)
    commit(stored)
    assert stored.index.counts[TaskStatus.COMPLETED] == 3


def test_retry_of_a_cancelled_task_and_the_refusals(stored: Scheduler) -> None:
    address = add_worker(stored, "w1")
    running = submit(stored)
    assert dispatched(stored) == {address: [running]}
    with pytest.raises(Conflict, match="is running"):
        stored.retry(running, T0)
    stored.cancel(running, T0)
    commit(stored)
    # The worker still holds the cancelled run: a retry waits for it to stop.
    with pytest.raises(Conflict, match="has not stopped its last run"):
        stored.retry(running, T0 + 1)
    report(stored, address, running, 1, "cancelled", T0 + 1)  # the old run's report
    assert stored.retry(running, T0 + 1).status is TaskStatus.PENDING
    assert dispatched(stored, T0 + 1) == {address: [running]}
    with pytest.raises(NotFound):
        stored.retry("0" * 32, T0)
    # A task failed by its dependency is retried through that dependency.
    dep = submit(stored, handler="none")
    child = submit(stored, dependencies=[dep])
    stored.cancel(dep, T0 + 2)
    with pytest.raises(Conflict, match=f"retry task {dep}"):
        stored.retry(child, T0 + 2)


@pytest.mark.parametrize("committed", [False, True])
def test_a_task_cancelled_while_it_waited_runs_once_when_retried(
    stored: Scheduler, committed: bool
) -> None:
    # Given tasks waiting for a worker, one cancelled there (its queue entry is left behind,
    # and once committed the task itself leaves memory for the store)
    first, cancelled, last = (submit(stored) for _ in range(3))
    stored.cancel(cancelled, T0)
    if committed:
        commit(stored)
    # When it is retried and a worker comes, then it runs in its turn, once
    assert stored.retry(cancelled, T0 + 1).status is TaskStatus.PENDING
    address = add_worker(stored, "w1", now=T0 + 1)
    ran = []
    for step in range(4):
        now = T0 + 2 + step
        for task_id in dispatched(stored, now).get(address, []):
            ran.append(task_id)
            finish(stored, address, task_id, now=now)
    assert ran == [first, cancelled, last]


# -- purge ---------------------------------------------------------------------------


def test_purge_deletes_in_bounded_chunks_and_keeps_the_counts(stored: Scheduler) -> None:
    ids = [submit(stored, handler="none") for _ in range(7)]
    for i, task_id in enumerate(ids):
        stored.cancel(task_id, T0 + i)
    kept = submit(stored, handler="none")
    commit(stored)
    assert stored.purge(TaskStatus.FAILED, None, 10) == {"purged": 0, "more": False}
    assert stored.purge(TaskStatus.CANCELLED, T0 + 2, 10) == {"purged": 2, "more": False}
    assert stored.purge(TaskStatus.CANCELLED, None, 3) == {"purged": 3, "more": True}
    # One changed and not committed yet is left for a later round.
    stored.cancel(kept, T0 + 9)
    assert stored.purge(TaskStatus.CANCELLED, None, 3) == {"purged": 2, "more": False}
    commit(stored)
    assert stored.purge(TaskStatus.CANCELLED, None, 3) == {"purged": 1, "more": False}
    assert stored.index.counts[TaskStatus.CANCELLED] == 0
    for task_id in [*ids, kept]:
        with pytest.raises(NotFound):
            stored.get(task_id)


def test_purge_without_a_store_forgets_from_memory() -> None:
    core = CheckedScheduler()
    ids = [submit(core, handler="none") for _ in range(3)]
    for task_id in ids:
        core.cancel(task_id, T0)
    assert core.purge(TaskStatus.CANCELLED, None, 2) == {"purged": 2, "more": True}
    assert [t.id for t in core.take_pruned()] == ids[:2]
    assert core.purge(TaskStatus.CANCELLED, None, 2) == {"purged": 1, "more": False}
    assert core.index.counts[TaskStatus.CANCELLED] == 0


def test_purge_without_a_store_takes_only_its_status_before_the_time_and_no_held_run() -> None:
    core = CheckedScheduler()
    address = add_worker(core, "w1", slots=2)
    held, done = submit(core), submit(core)
    assert dispatched(core) == {address: [held, done]}
    finish(core, address, done, now=T0 + 1)  # completed: another status
    core.cancel(held, T0)  # its worker has not stopped the run yet
    late, early, at_cutoff = (submit(core, handler="none") for _ in range(3))
    core.cancel(late, T0 + 5)
    core.cancel(early, T0 + 1)
    core.cancel(at_cutoff, T0 + 3)
    # Cancelled strictly before the time, with no run held: one, though two may go
    assert core.purge(TaskStatus.CANCELLED, T0 + 3, 2) == {"purged": 1, "more": False}
    assert [t.id for t in core.take_pruned()] == [early]
    # Any time: the two left, exactly the limit, and nothing more to come
    assert core.purge(TaskStatus.CANCELLED, None, 2) == {"purged": 2, "more": False}
    assert [t.id for t in core.take_pruned()] == [late, at_cutoff]
    assert set(core.tasks) == {held, done}


# -- drain ---------------------------------------------------------------------------


def test_an_admin_drain_holds_across_a_reconnect_until_resumed(stored: Scheduler) -> None:
    address = add_worker(stored, "w1", slots=2)
    first = submit(stored)
    assert dispatched(stored) == {address: [first]}
    assert stored.drain_worker("w1", True, T0).record()["draining"] is True
    second = submit(stored)
    assert dispatched(stored) == {}
    assert stored.show(stored.get(second))["waiting_for"]["reason"] == "no worker"
    finish(stored, address, first)  # its run finishes
    # The worker registers again (a new connection): still drained.
    add_worker(stored, "w1", slots=2)
    assert stored.workers["w1"].draining
    assert dispatched(stored) == {}
    assert stored.drain_worker("w1", False, T0).draining is False
    assert dispatched(stored) == {address: [second]}
    with pytest.raises(NotFound):
        stored.drain_worker("nobody", True, T0)


def restarted(core: Scheduler, now: float = T0) -> Scheduler:
    """A broker started again on what ``core`` committed (its SQLite store opened anew)."""
    store = core.store
    assert store is not None
    if isinstance(store, SqliteStore):
        store.close()
        store = SqliteStore(store.path, "off")
    again = CheckedScheduler()
    again.load(store.load(), now, store.load_workers(), store)
    again.finished_in_memory = 0
    return again


def test_an_admin_drain_is_a_change_to_commit_before_its_reply(stored: Scheduler) -> None:
    add_worker(stored, "w1")
    commit(stored)
    stored.drain_worker("w1", True, T0)
    assert stored.has_changes()  # the socket loop commits before it replies
    assert [w.id for w in stored.take_workers()[0]] == ["w1"]
    stored.drain_worker("w1", True, T0)  # asked again: nothing changes
    assert not stored.has_changes()


def test_an_admin_drain_outlasts_a_restart_of_the_broker_until_resumed(stored: Scheduler) -> None:
    # Given a worker an admin drained, and a task submitted; the broker is killed after
    # the turn's commit.
    add_worker(stored, "w1", slots=2)
    stored.drain_worker("w1", True, T0)
    task = submit(stored)
    commit(stored)

    # When the broker starts again on its store, then the worker is listed drained.
    core = restarted(stored, T0 + 1)
    assert core.workers["w1"].draining and core.workers["w1"].drained
    assert core.worker("w1").record()["status"] == "offline"
    # It registers again (it reconnects on its own): still draining, and it gets no task.
    address = add_worker(core, "w1", slots=2, now=T0 + 2)
    assert core.workers["w1"].record()["draining"] is True
    assert dispatched(core, T0 + 2) == {}
    assert core.show(core.get(task))["waiting_for"]["reason"] == "no worker"
    commit(core)

    # The drain survives a second restart too, until an admin resumes it, which is stored.
    core = restarted(core, T0 + 3)
    address = add_worker(core, "w1", slots=2, now=T0 + 4)
    assert dispatched(core, T0 + 4) == {}
    assert core.drain_worker("w1", False, T0 + 4).draining is False
    assert dispatched(core, T0 + 4) == {address: [task]}
    commit(core)
    core = restarted(core, T0 + 5)
    assert not core.workers["w1"].drained and not core.workers["w1"].draining


def test_a_resume_after_a_restart_gives_the_worker_tasks(stored: Scheduler) -> None:
    add_worker(stored, "w1")
    stored.drain_worker("w1", True, T0)
    commit(stored)
    core = restarted(stored)
    # Resumed while it is offline, then it registers: it takes the task.
    core.drain_worker("w1", False, T0 + 1)
    task = submit(core, T0 + 1)
    commit(core)
    core = restarted(core, T0 + 2)
    address = add_worker(core, "w1", now=T0 + 2)
    assert dispatched(core, T0 + 2) == {address: [task]}


def test_a_drained_http_worker_stays_drained_after_a_restart(stored: Scheduler) -> None:
    edge.http_register(stored, {"id": "h1", "capabilities": ["echo"]}, T0)
    stored.drain_worker("h1", True, T0)
    commit(stored)
    core = restarted(stored, T0 + 1)
    worker = core.http_worker("h1", T0 + 1)  # it carries on: online again, still drained
    assert worker.record()["status"] == "online" and worker.draining
    worker, created = edge.http_register(core, {"id": "h1", "capabilities": ["echo"]}, T0 + 2)
    assert not created and worker.draining


def test_a_drained_worker_is_kept_offline_until_resumed(stored: Scheduler) -> None:
    # Offline far longer than workers are kept: the drained one is not forgotten (its
    # drain would be), the other is; once resumed, it is forgotten in turn.
    add_worker(stored, "w1")
    add_worker(stored, "w2")
    stored.drain_worker("w1", True, T0)
    later = T0 + stored.timing.worker_retention + 60
    stored.tick(later)  # both silent: offline
    stored.prune(later)
    assert set(stored.workers) == {"w1"}
    commit(stored)
    core = restarted(stored, later)
    assert set(core.workers) == {"w1"} and core.workers["w1"].drained
    core.drain_worker("w1", False, later)
    core.prune(later)
    assert core.workers == {}
    commit(core)
    assert restarted(core, later).workers == {}


def test_resuming_does_not_undo_a_worker_stopping_of_its_own(stored: Scheduler) -> None:
    add_worker(stored, "w1")
    worker = stored.workers["w1"]
    stored.drain(worker, T0)
    assert stored.drain_worker("w1", False, T0).draining is True


# -- stats ---------------------------------------------------------------------------


def test_stats_counts_by_status_handler_worker_and_time(stored: Scheduler) -> None:
    address = add_worker(stored, "w1", ["echo"], slots=3)
    add_worker(stored, "w2", ["echo"], slots=2)
    stored.drain_worker("w2", True, T0)
    add_worker(stored, "w3", ["echo"], slots=1)  # after the drained one: counted past it
    done, failed, waiting = submit(stored), submit(stored), submit(stored, handler="resize")
    running = submit(stored)
    assert dispatched(stored) == {address: [done, failed, running]}
    finish(stored, address, done, now=T0 + 1)
    finish(stored, address, failed, "failed", T0 + BUCKET + 1, error="x")
    commit(stored)
    stats = stored.stats(T0 + BUCKET + 2, T0 - 5)
    assert stats["tasks"] == {"pending": 1, "running": 1, "completed": 1, "failed": 1,
                              "cancelled": 0}  # fmt: skip
    assert stats["handlers"] == {
        "echo": {"pending": 0, "running": 1},
        "resize": {"pending": 1, "running": 0},
    }
    assert stats["workers"] == {"online": 3, "draining": 1, "slots": {"used": 1, "total": 6},
                                "by_kind": {"zmq": 3}}  # fmt: skip
    throughput = stats["throughput"]
    assert throughput["bucket"] == BUCKET and len(throughput["completed"]) == BUCKETS
    assert sum(throughput["completed"]) == 1 and throughput["failed"][-1] == 1
    assert stats["uptime"] == BUCKET + 7
    assert waiting in stored.tasks
    # Fifteen minutes on, the buckets have passed.
    later = stored.stats(T0 + BUCKET * BUCKETS + 20, T0)["throughput"]
    assert sum(later["completed"]) + sum(later["failed"]) == 0
    # Up to then, the bucket of the first finish is the window's oldest, and still shown
    last = (int((T0 + 1) // BUCKET) + BUCKETS - 1) * BUCKET
    assert stored.stats(last, T0)["throughput"]["completed"][0] == 1


def test_a_retry_never_runs_a_task_whose_dependency_ended_badly_and_was_purged(
    stored: Scheduler,
) -> None:
    # Given a dependent failed by its cancelled dependency, which a purge then deletes
    address = add_worker(stored, "w1")
    dep = submit(stored, handler="none")
    child = submit(stored, dependencies=[dep])
    stored.cancel(dep, T0)
    commit(stored)
    assert stored.purge(TaskStatus.CANCELLED, None, 10) == {"purged": 1, "more": False}
    # When the dependent is retried, then it is refused: nothing says its dependency completed
    with pytest.raises(Conflict, match=f"depends on task {dep}"):
        stored.retry(child, T0 + 1)
    assert stored.get(child).status is TaskStatus.FAILED
    assert dispatched(stored, T0 + 1) == {}

    # Nor does the retry of a dependency bring back a dependent whose other one is gone
    root, other = submit(stored), submit(stored, handler="none")
    both = submit(stored, dependencies=[root, other])
    fail(stored, address, root, T0 + 2)
    stored.cancel(other, T0 + 2)
    commit(stored)
    stored.purge(TaskStatus.CANCELLED, None, 10)
    stored.retry(root, T0 + 3)
    assert stored.get(both).status is TaskStatus.FAILED

    # A task that ran had its dependencies completed: one purged since is no obstacle
    first = submit(stored)
    assert dispatched(stored, T0 + 3) == {address: [root]}
    finish(stored, address, root, now=T0 + 3)
    assert dispatched(stored, T0 + 3) == {address: [first]}
    finish(stored, address, first, now=T0 + 3)
    second = submit(stored, dependencies=[first])
    fail(stored, address, second, T0 + 4)
    commit(stored)
    stored.purge(TaskStatus.COMPLETED, None, 10)
    assert stored.retry(second, T0 + 5).status is TaskStatus.PENDING


def test_stats_shows_a_bounded_number_of_handlers_however_many_are_queued() -> None:
    # Given more distinct handlers queued than stats shows (handler names come from clients)
    core = CheckedScheduler()
    busy = [submit(core, handler="busy") for _ in range(3)]
    assert busy
    for i in range(STATS_HANDLERS + 50):
        submit(core, handler=f"h{i}")
    # When stats is asked, then the busiest handlers have a line each, the rest one together
    handlers = core.stats(T0, T0)["handlers"]
    assert len(handlers) == STATS_HANDLERS + 1
    assert handlers["busy"] == {"pending": 3, "running": 0}
    assert handlers[OTHER] == {"pending": 51, "running": 0}
    assert sum(h["pending"] for h in handlers.values()) == STATS_HANDLERS + 53
    # As many handlers as there are lines: each its own, and no line for the rest
    few = CheckedScheduler()
    for i in range(STATS_HANDLERS):
        submit(few, handler=f"h{i}")
    assert sorted(few.stats(T0, T0)["handlers"]) == sorted(f"h{i}" for i in range(STATS_HANDLERS))


def test_a_purge_leaves_a_stopped_run_its_worker_holds_so_its_resources_come_back(
    stored: Scheduler,
) -> None:
    # Given a running task cancelled, whose worker has not stopped the run yet
    address = add_worker(stored, "w1", slots=2, resources={"cpu": 2})
    task_id = submit(stored, resources={"cpu": 2})
    assert dispatched(stored) == {address: [task_id]}
    stored.cancel(task_id, T0)
    commit(stored)
    # When it is purged, then it is left for later: its record names what the run holds
    assert stored.purge(TaskStatus.CANCELLED, None, 10) == {"purged": 0, "more": False}
    report(stored, address, task_id, 1, "cancelled", T0 + 1)
    assert stored.purge(TaskStatus.CANCELLED, None, 10) == {"purged": 1, "more": False}
    # And the worker has its cpus back, and runs the next task that needs them
    assert stored.workers["w1"].free == {"cpu": 2}
    following = submit(stored, resources={"cpu": 2})
    assert dispatched(stored, T0 + 1) == {address: [following]}


def test_pruning_leaves_a_retry_not_committed_and_a_stopped_run_its_worker_holds(
    stored: Scheduler,
) -> None:
    # Given at most one finished task kept, a failed task, and a running one cancelled
    # whose worker has not stopped the run yet
    stored.max_finished = 1
    address = add_worker(stored, "w1", slots=2, resources={"cpu": 2})
    failed = submit(stored)
    fail(stored, address, failed)
    held = submit(stored, resources={"cpu": 2})
    assert dispatched(stored, T0 + 1) == {address: [held]}
    stored.cancel(held, T0 + 1)
    done = submit(stored, now=T0 + 1)
    assert dispatched(stored, T0 + 1) == {address: [done]}  # the second slot
    finish(stored, address, done, "completed", T0 + 1.5)
    commit(stored)
    # When the failed one is retried and a prune comes before the retry is committed (two
    # finished beyond the one kept: the oldest two by completion are the failed and the
    # held one)
    alive(stored, address, T0 + 2)
    stored.retry(failed, T0 + 2)
    assert stored.prune(T0 + 2) == 0
    # Then neither is pruned: the retry holds, and the held run keeps its record
    commit(stored)
    assert stored.get(failed).status is TaskStatus.PENDING
    assert stored.get(held).status is TaskStatus.CANCELLED
    # And once the worker reports the stopped run, it has its cpus back and the task goes
    report(stored, address, held, 1, "cancelled", T0 + 3)
    commit(stored)
    assert stored.workers["w1"].free == {"cpu": 2}
    assert dispatched(stored, T0 + 3) == {address: [failed]}
    finish(stored, address, failed, "completed", T0 + 4)
    commit(stored)
    assert stored.prune(T0 + 4) == 2  # three finished, one kept: the two older go
    commit(stored)
    with pytest.raises(NotFound):
        stored.get(held)
