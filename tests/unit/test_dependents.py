"""A task's dependents, on every backend: the tasks that name it among their dependencies,
found whether they are pending, running or finished, in memory or only in the store,
after a restart, and no longer once they are pruned or purged."""

from __future__ import annotations

from typing import Any

from broker.core import Scheduler
from broker.invariants import CheckedScheduler
from broker.operations import perform
from broker.state import Task
from broker.store import Store
from broker.store.memory import MemoryStore
from broker.store.sqlite import SqliteStore
from common import ops
from common.limits import DEPENDENTS_SHOWN
from common.models import TaskStatus
from tests import edge
from tests.unit.test_store import Opened, opened  # noqa: F401 (a fixture)

WORKER = {"id": "w", "slots": 100, "capabilities": ["echo"]}


def started(store: Store, now: float = 10.0) -> Scheduler:
    """A core on this store (as a broker starts on it), with one worker online."""
    core = CheckedScheduler()
    core.load(store.load(), now, store.load_workers(), store)
    edge.register(core, b"w", WORKER, now)
    return core


def commit(core: Scheduler, store: Store) -> None:
    """What the socket loop does after each turn: save, then let finished tasks leave."""
    workers, forgotten = core.take_workers()
    store.save(core.take_dirty(), core.take_pruned(), workers=workers, forgotten=forgotten)
    core.evict()


def run_all(core: Scheduler, now: float) -> None:
    """Lease every ready task and complete it, until none is left to run: one after the
    other, in seq order, a millisecond apart."""
    worker = core.worker_at(b"w")
    assert worker is not None
    while core.schedule(now):
        runs = sorted(
            (entry.run for entries in core.take_outbox().dispatch.values() for entry in entries),
            key=lambda run: core.tasks[run.task_id].seq,
        )
        for run in runs:
            now += 0.001
            done = {"task_id": run.task_id, "attempt": run.attempt, "status": "completed"}
            edge.report(core, worker, [done], now)


def get(core: Scheduler, task_id: str) -> dict[str, Any]:
    """The ``get`` op's answer, as the broker gives it."""
    record: dict[str, Any] = perform(core, ops.Get.from_args({"id": task_id}), None, 0.0, 0.0)
    return record


def side_rows(store: Store) -> int:
    """Entries of the store's index of dependencies, whichever backend."""
    if isinstance(store, SqliteStore):
        (count,) = store._db.execute("SELECT COUNT(*) FROM dependencies").fetchone()
        return int(count)
    assert isinstance(store, MemoryStore)
    return sum(len(seqs) for seqs in store.by_dependency.values())


def test_dependents_are_found_pending_finished_evicted_and_after_a_restart(
    opened: Opened,  # noqa: F811
) -> None:
    # given a parent, three tasks that depend on it (one twice, one on another task too)
    # and one that depends on nothing
    store = opened.store
    core = started(store)
    core.finished_in_memory = 0  # every finished task leaves memory once committed
    parent, other = (e["id"] for e in edge.submit(core, [{"handler": "echo"}] * 2, 11.0))
    children = [
        e["id"]
        for e in edge.submit(
            core,
            [
                {"handler": "echo", "dependencies": [parent]},
                {"handler": "echo", "dependencies": [parent, parent]},
                {"handler": "echo"},
                {"handler": "echo", "dependencies": [other, parent]},
            ],
            11.0,
        )
    ]
    expected = [children[0], children[1], children[3]]
    # then before the commit (the children not stored yet) they are listed, in order
    assert core.dependents_of(parent) == (expected, False)
    assert core.dependents_of(other) == ([children[3]], False)
    commit(core, store)
    # and from the store once committed, pending
    assert core.dependents_of(parent) == (expected, False)
    record = get(core, parent)
    assert record["dependents"] == expected and record["more_dependents"] is False
    assert get(core, children[2])["dependents"] == []

    # when all of them run and finish, and leave memory
    run_all(core, 12.0)
    commit(core, store)
    assert all(core.tasks.get(t) is None for t in [parent, *children])
    # then the finished parent still lists them, read from the store only
    assert get(core, parent)["status"] == "completed"
    assert get(core, parent)["dependents"] == expected
    assert core.dependents_of(children[0]) == ([], False)

    # and after a restart (a durable store opened anew)
    if opened.backend != "memory":
        store = opened.again()
    restarted = started(store, 20.0)
    assert restarted.dependents_of(parent) == (expected, False)
    assert get(restarted, other)["dependents"] == [children[3]]


def test_at_most_a_page_of_dependents_is_listed_and_more_says_there_are_more(
    opened: Opened,  # noqa: F811
) -> None:
    store = opened.store
    core = started(store)
    (parent,) = (e["id"] for e in edge.submit(core, [{"handler": "echo"}], 11.0))
    specs = [{"handler": "echo", "dependencies": [parent]}] * (DEPENDENTS_SHOWN + 1)
    children = [e["id"] for e in edge.submit(core, specs[:60], 11.0)]
    commit(core, store)
    children += [e["id"] for e in edge.submit(core, specs[60:], 12.0)]  # not stored yet
    assert core.dependents_of(parent) == (children[:DEPENDENTS_SHOWN], True)
    assert core.dependents_of(parent, 60) == (children[:60], True)
    commit(core, store)
    record = get(core, parent)
    assert record["dependents"] == children[:DEPENDENTS_SHOWN] and record["more_dependents"]
    assert core.dependents_of(parent, DEPENDENTS_SHOWN + 1) == (children, False)


def test_pruned_and_purged_dependents_leave_the_index_with_them(
    opened: Opened,  # noqa: F811
) -> None:
    # given a parent with five dependents, all finished and evicted: two cancelled
    store = opened.store
    core = started(store)
    core.finished_in_memory = 0
    (parent,) = (e["id"] for e in edge.submit(core, [{"handler": "echo"}], 11.0))
    children = [
        e["id"]
        for e in edge.submit(core, [{"handler": "echo", "dependencies": [parent]}] * 5, 11.0)
    ]
    core.cancel(children[3], 11.5)
    core.cancel(children[4], 11.5)
    commit(core, store)
    run_all(core, 12.0)
    commit(core, store)
    assert side_rows(store) == 5

    # when the cancelled ones are purged
    assert core.purge(TaskStatus.CANCELLED, None, 10) == {"purged": 2, "more": False}
    # then they are no longer its dependents, and their entries are gone
    assert core.dependents_of(parent) == (children[:3], False)
    assert side_rows(store) == 3

    # when the oldest finished tasks are pruned (the parent finished first, then its
    # dependents in order): all but the newest
    core.max_finished = 1
    pruned = core.prune(100.0)
    assert pruned == 3
    # then the one left is listed, found as the parent is gone too
    assert core.dependents_of(parent) == ([children[2]], False)
    assert side_rows(store) == 1
    assert store.find(parent) is None


def test_a_deleted_task_takes_its_entries_with_it(opened: Opened) -> None:  # noqa: F811
    store = opened.store
    child = Task("child", 2, "echo", "echo", b"", ["parent", "other"], 0, 0, None, (), (), 1.0)
    lone = Task("lone", 3, "echo", "echo", b"", [], 0, 0, None, (), (), 1.0)
    store.save([child, lone])
    assert store.dependents("parent", 10) == ["child"] and store.dependents("other", 10) == [
        "child"
    ]
    assert side_rows(store) == 2
    store.save([], [child, lone])
    assert store.dependents("parent", 10) == [] and side_rows(store) == 0
    store.save([], [child])  # deleting it again changes nothing
    assert side_rows(store) == 0


def test_a_task_without_dependencies_writes_no_entry(opened: Opened) -> None:  # noqa: F811
    # The hot path: a task that names no dependency touches nothing of the index.
    store = opened.store
    core = started(store)
    edge.submit(core, [{"handler": "echo"}] * 50, 11.0)
    commit(core, store)
    run_all(core, 12.0)
    commit(core, store)
    assert side_rows(store) == 0


def test_the_sqlite_index_is_read_by_its_key(tmp_path: Any) -> None:
    # A task's dependents are a range of the index's key, not a scan of the tasks.
    store = SqliteStore(str(tmp_path / "s.db"))
    plan = store._db.execute(
        "EXPLAIN QUERY PLAN SELECT tasks.id FROM dependencies JOIN tasks "
        "ON tasks.seq = dependencies.task_seq WHERE dependencies.dep_id = ? "
        "ORDER BY dependencies.task_seq LIMIT ?",
        ("x", 10),
    ).fetchall()
    store.close()
    details = " | ".join(row[-1] for row in plan)
    assert "SEARCH dependencies USING PRIMARY KEY (dep_id=?)" in details, details
    assert "SCAN" not in details and "TEMP B-TREE" not in details, details
