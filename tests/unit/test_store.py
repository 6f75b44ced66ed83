"""Every store, each backend of ``broker/store`` in turn: what the broker saved is what it
loads, field for field, and what ``broker.store.Store`` promises besides.

The backends are found as ``open_store`` finds them, by module: a new one is run through
this suite with nothing added here but, if it cannot be opened in a test's directory, the
line of ``location`` that says where to open it. SQLite's own ways are in
``test_store_sqlite.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest

import broker.store
from broker import cli
from broker.core import Scheduler
from broker.invariants import CheckedScheduler
from broker.state import Lease, Task, Worker
from broker.store import Store, open_store
from broker.store import sqlite as sqlite_store
from common.models import FINAL_STATUSES, LeaseOutcome, TaskStatus, WorkerKind, WorkerStatus
from tests import edge

#: Every backend: the modules of the package, each named as the scheme that opens it.
BACKENDS = sorted(
    module.name
    for module in pkgutil.iter_modules(broker.store.__path__)
    if not module.name.startswith("_")
)
#: Every field of a task that is stored (the others the core derives, or are the store's).
STORED = [f.name for f in dataclasses.fields(Task) if f.name not in ("waiting_on", "queued")]


def location(backend: str, directory: Path) -> str:
    """Where a test opens an empty store of this backend, in the test's own directory."""
    if backend == "memory":
        return "memory:"
    if backend == "sqlite":
        return str(directory / "store.db")
    return f"{backend}://{directory}/store"


@dataclass
class Opened:
    backend: str
    location: str
    store: Store

    def again(self) -> Store:
        """The store at the same location, opened anew (as by a restarted broker)."""
        self.store.close()
        self.store = open_store(self.location, "full")
        return self.store


@pytest.fixture(params=BACKENDS)
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opened]:
    where = location(request.param, tmp_path)
    target = Opened(request.param, where, open_store(where, "full"))
    yield target
    target.store.close()


@pytest.fixture
def store(opened: Opened) -> Store:
    """Each store in turn: what all must do alike."""
    return opened.store


def fields_of(task: Task) -> dict[str, Any]:
    """Every stored field of a task as it is now, leases as rows (a Lease compares by
    identity)."""
    values = {name: getattr(task, name) for name in STORED}
    values["dependencies"] = list(task.dependencies)
    values["leases"] = [lease.to_row() for lease in task.leases]
    return values


def whole(store: Store) -> dict[str, Task]:
    """Every task of the store, by id: the unfinished ones as loaded, the finished ones as
    a page of them all."""
    finished = store.finished_page(None, None, 0, 10**9, 10**18)
    return {task.id: task for task in [*store.load(), *finished]}


def test_the_backends_are_the_modules_of_the_package() -> None:
    assert {"memory", "sqlite"} <= set(BACKENDS)
    for backend in BACKENDS:
        opener = importlib.import_module(f"broker.store.{backend}").open
        assert list(inspect.signature(opener).parameters) == ["location", "sync"], backend


def test_every_stored_field_round_trips(store: Store) -> None:
    core = Scheduler()
    edge.register(core, b"w", {"id": "w", "slots": 2, "capabilities": ["echo", "x"]}, 10.0)
    specs = [
        {"handler": "echo", "args": b"a", "idempotency_key": "k", "max_retries": 2,
         "timeout": 9.5, "priority": 7},
        {"handler": "echo", "name": "second", "resources": {"memory": 0.0}, "requires": ["x"]},
        {"handler": "nobody", "args": b"never leased", "idempotency_key": "n", "priority": -1},
    ]  # fmt: skip
    first, second, never = (e["id"] for e in edge.submit(core, specs, 11.0))
    # Never leased, with every optional spec field set: read back by its spec alone.
    specs = [{"handler": "nobody", "name": "fresh", "dependencies": [never], "timeout": 1.5,
              "requires": ["z", "y"], "resources": {"cpu": 2.0, "disk": 0.5},
              "max_retries": 3}]  # fmt: skip
    edge.submit(core, specs, 11.5)
    core.schedule(12.0)
    worker = core.worker_at(b"w")
    assert worker is not None
    edge.report(
        core, worker, [{"task_id": first, "attempt": 1, "status": "failed", "error": "x"}], 13.0
    )
    edge.report(core, worker, [{"task_id": second, "attempt": 1, "status": "completed",
                          "result": b"r"}], 14.0)  # fmt: skip
    store.save(core.tasks.values())
    assert second not in {t.id for t in store.load()}  # finished: in the store only
    loaded = list(whole(store).values())
    assert len(loaded) == 4
    for task in loaded:
        original = core.tasks[task.id]
        for name in STORED:
            value, expected = getattr(task, name), getattr(original, name)
            if name == "leases":  # Lease compares by identity
                value = [lease.to_row() for lease in value]
                expected = [lease.to_row() for lease in expected]
            assert value == expected, name
    first_loaded = next(t for t in store.load() if t.id == first)  # pending again (back-off)
    assert first_loaded.failures == 1 and first_loaded.not_before > 13.0
    assert [(le.attempt, le.outcome, le.error) for le in first_loaded.leases] == [
        (1, "failed", "x")
    ]


def _task(seq: int, status: TaskStatus, **state: Any) -> Task:
    """A task in this status with every stored field set to something of its own."""
    return Task(
        f"task-{seq}", seq, f"name-{seq}", f"handler-{seq % 2}", b"\x00args%d" % seq,
        [f"dep-{seq}"], seq - 3, seq % 4, None if seq % 2 else seq / 8, (f"tag-{seq}", "z"),
        (("cpu", seq / 2), ("memory", 64.0)), 100.0 + seq, status, **state,
    )  # fmt: skip


#: A task of each status with every state field set (pending: waiting for its back-off).
STATES: dict[TaskStatus, dict[str, Any]] = {
    TaskStatus.PENDING: dict(attempts=1, failures=1, error="first try", not_before=9.5,
                             leases=[Lease(1, "w1", 7.0, 8.0, LeaseOutcome.FAILED, "boom",
                                           None, "Traceback …\nKeyError: 'boom'\n")]),
    TaskStatus.RUNNING: dict(worker_id="w2", attempts=2, lost=1, started_at=8.25,
                             leases=[Lease(1, "w1", 7.0, 7.5, LeaseOutcome.LOST),
                                     Lease(2, "w2", 8.25)]),
    TaskStatus.COMPLETED: dict(worker_id="w3", attempts=1, result=b"\xffresult",
                               started_at=1.0, completed_at=2.0,
                               leases=[Lease(1, "w3", 1.0, 2.0, LeaseOutcome.COMPLETED, None,
                                             TaskStatus.FAILED)]),
    TaskStatus.FAILED: dict(worker_id="w4", attempts=3, failures=3, error="gave up",
                            started_at=3.0, completed_at=4.0, not_before=3.5,
                            idempotency_key="once"),
    TaskStatus.CANCELLED: dict(error="cancelled", completed_at=5.0, idempotency_key="k2"),
}  # fmt: skip


def test_a_task_of_every_status_comes_back_whole(store: Store) -> None:
    tasks = [_task(seq, status, **STATES[status]) for seq, status in enumerate(STATES, 1)]
    store.save(tasks)
    assert all(task.stored for task in tasks)
    # Unfinished tasks come back with a load, finished ones when asked for.
    assert {t.id for t in store.load()} == {t.id for t in tasks if t.status not in FINAL_STATUSES}
    loaded = whole(store)
    for task in tasks:
        back = loaded[task.id]
        assert back is not task and back.stored
        assert (back.waiting_on, back.queued) == (0, False)
        found = store.find(task.id)
        assert found is not None and found is not back and fields_of(found) == fields_of(task)
    assert {i: fields_of(t) for i, t in loaded.items()} == {t.id: fields_of(t) for t in tasks}


#: Lease histories whose strings and floats a store must keep exactly (``test_store_sqlite``
#: checks its JSON of them too).
ODD_LEASES = [
    [],
    [Lease(1, "w-1", 1795754805.1748843)],
    [
        Lease(1, 'w "quoted" \\ back', 10.0, 11.5, LeaseOutcome.FAILED, "boom\nline two\t", None),
        Lease(2, "wörker-☃-🚀", 12, 13, LeaseOutcome.COMPLETED, None, TaskStatus.FAILED),
        Lease(3, "", 1e-05, float("inf"), LeaseOutcome.LOST, "\x00\x1f\x7f", TaskStatus.CANCELLED),
        Lease(4, "'; DROP TABLE tasks; --", -0.0, 5e-324, LeaseOutcome.RELEASED, "", None),
        Lease(5, "\u2028\ud7ff\U0010ffff", 1e300, None, LeaseOutcome.CANCELLED),
        Lease(6, "w", 0.1 + 0.2, 2**53 + 1.0, LeaseOutcome.EXPIRED, "x" * 10_000),
        Lease(7, "w", 1.0, 2.0, LeaseOutcome.FAILED, "E", None, 'File "\x00", line 1\n'),
        Lease(8, "w", 1.0, 2.0, LeaseOutcome.FAILED, "E", None, 'Traceback\n  "x"\n☃'),
    ],
]


@pytest.mark.parametrize("leases", ODD_LEASES)
@pytest.mark.parametrize("status", [TaskStatus.RUNNING, TaskStatus.FAILED])
def test_leases_with_odd_strings_and_floats_come_back_as_they_were(
    store: Store, leases: list[Lease], status: TaskStatus
) -> None:
    task = _task(1, status, attempts=len(leases), leases=leases)
    store.save([task])
    assert [lease.to_row() for lease in whole(store)[task.id].leases] == [
        lease.to_row() for lease in leases
    ]


def test_a_task_saved_again_loads_with_its_latest_state(store: Store) -> None:
    core = Scheduler()
    edge.register(core, b"w", {"id": "w", "slots": 1, "capabilities": ["echo"]}, 10.0)
    first, second = (e["id"] for e in edge.submit(core, [{"handler": "echo"}] * 2, 11.0))
    store.save(core.take_dirty())  # both new: inserted whole
    core.schedule(12.0)
    store.save(core.take_dirty())  # the leased one known: its state updated
    loaded = {t.id: t for t in store.load()}
    leased = loaded[first]
    assert (leased.status, leased.worker_id, leased.attempts, leased.started_at) == (
        TaskStatus.RUNNING,
        "w",
        1,
        12.0,
    )
    assert [le.to_row() for le in leased.leases] == [[1, "w", 12.0, None, None, None, None]]
    assert (leased.name, leased.handler, leased.created_at) == ("echo", "echo", 11.0)
    assert loaded[second].status is TaskStatus.PENDING and loaded[second].leases == []


def test_every_state_field_saved_again_comes_back(store: Store) -> None:
    task = _task(7, TaskStatus.PENDING)
    store.save([task])
    for status, state in STATES.items():
        for name, value in state.items():
            if name != "idempotency_key":  # part of the spec, which never changes
                setattr(task, name, value)
        task.status = status
        store.save([task])
        assert fields_of(whole(store)[task.id]) == fields_of(task), status


@pytest.mark.parametrize("count", [1, 3, 4, 7, 16, 21, 64, 85, 150])
def test_a_commit_of_many_tasks_writes_each_row_whole(store: Store, count: int) -> None:
    # SQLite writes a commit's new tasks, and their states, many rows to a statement and
    # the rest one by one: every row keeps its own values, whatever the count.
    _commit_many_and_read_back(store, count)


def test_an_sqlite_without_update_from_writes_every_row_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_MANY_SIZES", ())
    store = sqlite_store.SqliteStore(str(tmp_path / "old.db"))
    try:
        _commit_many_and_read_back(store, 21)
    finally:
        store.close()


def _commit_many_and_read_back(store: Store, count: int) -> None:
    """Commit ``count`` new tasks, then a state of its own for each: every field of every
    row reads back as it was."""
    tasks = [_task(seq, TaskStatus.PENDING) for seq in range(10, 10 + count)]
    store.save(tasks)
    assert {t.id: fields_of(t) for t in whole(store).values()} == {
        t.id: fields_of(t) for t in tasks
    }
    statuses = list(STATES)
    for i, task in enumerate(tasks):
        status = statuses[i % len(statuses)]
        for name, value in STATES[status].items():
            if name != "idempotency_key":  # part of the spec, which never changes
                setattr(task, name, value)
        task.status = status
        task.attempts, task.error = i + 1, f"error of {task.id}"
        task.result = None if i % 3 == 0 else b"result %d" % i
        task.completed_at = None if status.value in ("pending", "running") else 50.0 + i / 7
    store.save(tasks)
    assert {t.id: fields_of(t) for t in whole(store).values()} == {
        t.id: fields_of(t) for t in tasks
    }


def test_what_is_saved_is_a_copy_until_the_next_save(store: Store) -> None:
    task = _task(1, TaskStatus.RUNNING, **STATES[TaskStatus.RUNNING])
    store.save([task])
    saved = fields_of(task)
    # The core changes the task in place: nothing reaches the store before it saves again.
    task.status, task.attempts, task.worker_id = TaskStatus.PENDING, 9, None
    task.leases[-1].ended_at, task.leases[-1].outcome = 9.0, LeaseOutcome.LOST
    task.leases.append(Lease(3, "w9", 9.5))
    task.dependencies.append("another")
    assert fields_of(whole(store)[task.id]) == saved
    # Nor does a change to what was loaded.
    loaded = whole(store)[task.id]
    loaded.leases[0].refused = TaskStatus.COMPLETED
    loaded.leases.clear()
    loaded.dependencies.clear()
    loaded.status = TaskStatus.CANCELLED
    assert fields_of(whole(store)[task.id]) == saved
    task.dependencies.remove("another")  # a spec never changes: it may be written only once
    store.save([task])
    assert fields_of(whole(store)[task.id]) == fields_of(task)


def test_finished_tasks_are_found_by_id_key_and_page_and_pruned_oldest_first(
    store: Store,
) -> None:
    statuses = [TaskStatus.COMPLETED] * 6 + [TaskStatus.FAILED, TaskStatus.CANCELLED] * 2
    tasks = []
    for seq, status in enumerate(statuses, 1):
        state = {**STATES[status], "completed_at": 1000.0 - seq}  # the later, the older
        state.pop("idempotency_key", None)
        tasks.append(_task(seq, status, **state, idempotency_key=f"key-{seq}"))
    tasks.append(_task(11, TaskStatus.PENDING))
    store.save(tasks)
    summary = store.summary()
    assert summary.finished == {TaskStatus.COMPLETED: 6, TaskStatus.FAILED: 2,
                                TaskStatus.CANCELLED: 2}  # fmt: skip
    assert summary.next_seq == 12
    assert [t.id for t in store.load()] == ["task-11"]
    found, keyed = store.find("task-7"), store.find_key("key-7")
    assert found is not None and keyed is not None and fields_of(found) == fields_of(tasks[6])
    assert keyed is not found and fields_of(keyed) == fields_of(tasks[6])
    assert store.find("task-99") is None and store.find_key("key-99") is None
    # Many at once: what find gives for each (an id named twice once, one not stored
    # missing), whatever the number of ids.
    many = store.find_many(["task-7", "task-99", "task-1", "task-11", "task-7"])
    assert sorted(many) == ["task-1", "task-11", "task-7"]
    assert all(fields_of(many[t.id]) == fields_of(t) for t in (tasks[0], tasks[6], tasks[10]))
    assert many["task-7"] is not found
    wide = store.find_many([f"task-{n % 12}" for n in range(1200)])
    assert sorted(wide) == sorted(t.id for t in tasks)

    def page(status: TaskStatus | None, handler: str | None = None, after: int = 0,
             limit: int = 100, max_bytes: int = 10**9) -> list[int]:  # fmt: skip
        return [t.seq for t in store.finished_page(status, handler, after, limit, max_bytes)]

    assert page(None) == list(range(1, 11))
    assert page(TaskStatus.FAILED) == [7, 9] and page(TaskStatus.CANCELLED, after=8) == [10]
    assert page(TaskStatus.PENDING) == []  # finished ones only
    assert page(None, "handler-1") == [1, 3, 5, 7, 9]
    assert page(TaskStatus.COMPLETED, after=2, limit=3) == [3, 4, 5]
    # Cut by size: never more than max_bytes, but always the first.
    assert page(None, max_bytes=1) == [1]
    one = tasks[0].size()
    assert page(None, limit=4, max_bytes=2 * one + one // 2) in ([1, 2], [1, 2, 3])
    # Pruned oldest completion first: past ``before``, then the excess.
    assert store.prune(before=990.5, excess=0, limit=100, keep={"task-10"}) == []
    assert store.prune(before=990.5, excess=0, limit=100) == [("task-10", TaskStatus.CANCELLED)]
    assert store.prune(before=0.0, excess=2, limit=100) == [
        ("task-9", TaskStatus.FAILED), ("task-8", TaskStatus.CANCELLED),
    ]  # fmt: skip
    assert store.prune(before=995.0, excess=0, limit=2) == [
        ("task-7", TaskStatus.FAILED), ("task-6", TaskStatus.COMPLETED),
    ]  # fmt: skip
    # Completed at the cutoff itself: pruned ("at or before"), the next one not
    assert store.prune(before=995.0, excess=0, limit=100) == [("task-5", TaskStatus.COMPLETED)]
    assert store.prune(before=0.0, excess=0, limit=100) == []
    assert page(None) == [1, 2, 3, 4]
    assert store.summary().finished == {TaskStatus.COMPLETED: 4}
    assert [t.id for t in store.load()] == ["task-11"]


def test_a_finished_task_is_the_same_whatever_the_backend(tmp_path: Path) -> None:
    # The core's tests run on the memory store and the broker on another: a task read from
    # the store must look the same to the core whichever read it.
    read: dict[str, list[dict[str, Any]]] = {}
    for backend in BACKENDS:
        tasks = [_task(seq, status, **STATES[status]) for seq, status in enumerate(STATES, 1)]
        (tmp_path / backend).mkdir()
        store = open_store(location(backend, tmp_path / backend), "full")
        store.save(tasks)
        back = [*store.load(), *store.finished_page(None, None, 0, 100, 10**9)]
        back += [t for t in (store.find(task.id) for task in tasks) if t is not None]
        store.close()
        read[backend] = [fields_of(t) | {"derived": (t.waiting_on, t.queued)} for t in back]
        assert len(back) == 2 * len(tasks), backend
    reference = read.pop("sqlite")
    for backend, seen in read.items():
        assert seen == reference, backend


def test_a_save_that_fails_midway_keeps_nothing_and_the_store_goes_on(opened: Opened) -> None:
    if opened.backend == "memory":
        pytest.skip("a store in memory holds any value: its saves do not fail midway")
    store = opened.store
    known = _task(1, TaskStatus.PENDING)
    store.save([known])
    good, broken = _task(2, TaskStatus.PENDING), _task(3, TaskStatus.RUNNING)
    broken.name = None  # type: ignore[assignment]  # a value a store with a schema refuses
    known.status = TaskStatus.CANCELLED
    worker = Worker("w", WorkerKind.HTTP, frozenset({"echo"}), {}, 0, 10.0)
    try:
        store.save([good, known, broken], deleted=[known], workers=[worker])
    except Exception:  # the backend's own error, whatever it is
        pass
    else:
        pytest.fail("a task with no name was saved")
    assert not good.stored and not broken.stored  # as they were
    assert {t.id: t.status for t in whole(store).values()} == {"task-1": TaskStatus.PENDING}
    assert store.load_workers() == []
    store.save([good, known])
    assert {t.id: fields_of(t) for t in whole(store).values()} == {
        "task-1": fields_of(known),
        "task-2": fields_of(good),
    }


def test_nothing_to_save_changes_nothing(store: Store) -> None:
    task = _task(1, TaskStatus.PENDING)
    store.save([task])
    store.save([])
    store.save([], deleted=[])
    assert {t.id: fields_of(t) for t in whole(store).values()} == {task.id: fields_of(task)}


def test_loaded_tasks_leave_what_the_core_derives_to_the_core(store: Store) -> None:
    # waiting_on and queued are derived at load: a task that came back marked as queued
    # would never be queued once its dependency completed.
    core = Scheduler()
    edge.register(core, b"w", {"id": "w", "slots": 2, "capabilities": ["echo"]}, 10.0)
    done, parent = (e["id"] for e in edge.submit(core, [{"handler": "echo"}] * 2, 11.0))
    child = edge.submit(core, [{"handler": "echo", "dependencies": [parent]}], 11.0)[0]["id"]
    core.schedule(12.0)
    worker = core.worker_at(b"w")
    assert worker is not None
    edge.report(core, worker, [{"task_id": done, "attempt": 1, "status": "completed"}], 13.0)
    store.save(core.take_dirty())

    loaded = store.load()
    assert {t.id: t.status for t in loaded} == {
        parent: TaskStatus.RUNNING,
        child: TaskStatus.PENDING,
    }
    for task in loaded:
        assert (task.waiting_on, task.queued, task.stored) == (0, False, True), task.status
    restarted = Scheduler(core.timing)
    restarted.load(loaded, 20.0, store=store)
    worker = edge.register(restarted, b"w", {"id": "w", "slots": 2, "capabilities": ["echo"],
               "running": [{"task_id": parent, "attempt": 1}]}, 20.0,
    )  # fmt: skip
    edge.report(restarted, worker, [{"task_id": parent, "attempt": 1, "status": "completed"}], 21.0)
    restarted.schedule(21.0)
    dispatch = restarted.take_outbox().dispatch
    assert [e.run.task_id for e in dispatch[b"w"]] == [child]


def test_a_core_restarted_from_the_store_shows_and_runs_what_it_committed(
    opened: Opened,
) -> None:
    core = CheckedScheduler()
    edge.register(core, b"w", {"id": "w", "slots": 3, "capabilities": ["echo"]}, 10.0)
    specs = [{"handler": "echo", "args": b"%d" % i, "idempotency_key": f"k{i}"} for i in range(4)]
    done, failed, running, waiting = (e["id"] for e in edge.submit(core, specs, 11.0))
    core.schedule(12.0)
    worker = core.worker_at(b"w")
    assert worker is not None
    edge.report(core, worker, [
        {"task_id": done, "attempt": 1, "status": "completed", "result": b"out"},
        {"task_id": failed, "attempt": 1, "status": "failed", "error": "boom"},
    ], 13.0)  # fmt: skip
    store = opened.store
    store.save(core.take_dirty(), core.take_pruned())
    before = {task_id: task.record() for task_id, task in core.tasks.items()}
    if opened.backend != "memory":  # a durable store: opened anew, as a restarted broker does
        store = opened.again()

    restarted = CheckedScheduler(core.timing)
    restarted.load(store.load(), 20.0, store=store)
    assert restarted.take_dirty() == []  # loading changes nothing that needs writing back
    # What the store holds comes back (why a task waits is not stored: there are no workers
    # after the restart, and it says so).
    shown = edge.list_tasks(restarted, {"limit": 10})["tasks"]
    assert [{**record, "waiting_for": None} for record in shown] == list(before.values())
    again = edge.submit(restarted, [{**specs[0]}], 21.0)  # the same submit again
    assert again == [{"id": done, "status": "completed", "created": False}]
    worker = edge.register(restarted, b"w", {"id": "w", "slots": 3, "capabilities": ["echo"],
                           "running": [{"task_id": running, "attempt": 1}]}, 21.0)  # fmt: skip
    restarted.schedule(21.0)
    assert [e.run.task_id for e in restarted.take_outbox().dispatch[b"w"]] == [waiting]
    edge.report(restarted, worker, [{"task_id": running, "attempt": 1, "status": "completed"}],
                22.0)  # fmt: skip
    store.save(restarted.take_dirty(), restarted.take_pruned())
    assert whole(store)[running].status is TaskStatus.COMPLETED


def test_deleted_tasks_are_gone_and_deleting_one_again_changes_nothing(store: Store) -> None:
    core = Scheduler()
    edge.submit(core, [{"handler": "echo"}] * 2, 10.0)
    first, second = core.tasks.values()
    store.save([first, second])
    store.save([], deleted=[first])
    assert [t.id for t in store.load()] == [second.id]
    store.save([], deleted=[first])  # as SQLite's DELETE of a missing row: nothing happens
    assert [t.id for t in store.load()] == [second.id]


def test_a_task_changed_and_deleted_in_one_save_is_gone(store: Store) -> None:
    kept, pruned = _task(1, TaskStatus.PENDING), _task(2, TaskStatus.PENDING)
    store.save([kept, pruned])
    pruned.status = TaskStatus.CANCELLED
    store.save([pruned, kept], deleted=[pruned])
    assert [t.id for t in store.load()] == [kept.id]


def _stored_of(worker: Worker) -> dict[str, Any]:
    return {name: getattr(worker, name) for name in Worker.STORED}


def test_workers_come_back_offline_with_what_they_registered(opened: Opened) -> None:
    busy = Worker(
        "zmq-1", WorkerKind.ZMQ, frozenset({"echo", "gpu", "é \"x\""}), {"cpu": 8.0, "mem": 0.5},
        4, 1234.5, address=b"\x00k", host="node-7", pid=4242, running={"t": 2},
        free={"cpu": 7.0, "mem": 0.5}, last_ping=1234.0, draining=True,
        tags=frozenset({"gpu", "é \"x\""}),
    )  # fmt: skip
    http = Worker("http-1", WorkerKind.HTTP, frozenset(), {}, 0, 99.0)
    kept = [_stored_of(busy), _stored_of(http)]
    opened.store.save([], workers=[busy, http])
    busy.capabilities, busy.slots, busy.last_seen = frozenset({"other"}), 1, 2000.0  # a copy
    store = opened.again() if opened.backend != "memory" else opened.store
    loaded = sorted(store.load_workers(), key=lambda w: w.id)
    assert [w.kind for w in loaded] == [WorkerKind.HTTP, WorkerKind.ZMQ]
    assert [_stored_of(w) for w in loaded] == sorted(kept, key=lambda w: w["id"])
    for worker in loaded:
        # Only what it registered: whether it is online, and what it holds, is not stored.
        assert (worker.status, worker.address, worker.running, worker.draining, worker.polls) == (
            WorkerStatus.OFFLINE, None, {}, False, {}
        )  # fmt: skip
        assert worker.free == worker.resources and worker.free is not worker.resources
    assert store.load_workers()[0] is not loaded[0]  # new objects at each load


def test_a_worker_saved_again_is_replaced_and_a_forgotten_one_is_gone(store: Store) -> None:
    first = Worker("w1", WorkerKind.ZMQ, frozenset({"echo"}), {}, 2, 10.0, host="a", pid=1)
    second = Worker("w2", WorkerKind.HTTP, frozenset({"x"}), {"cpu": 1.0}, 0, 11.0)
    store.save([], workers=[first, second])
    again = Worker("w1", WorkerKind.ZMQ, frozenset({"sleep"}), {"gpu": 1.0}, 8, 20.0, host="b",
                   pid=2, registration=7)  # fmt: skip
    store.save([], workers=[again], forgotten=["w2", "never-saved"])
    assert [_stored_of(w) for w in store.load_workers()] == [_stored_of(again)]
    # The same registration saved again: it was last seen later, and nothing else changed.
    again.last_seen = 30.0
    store.save([], workers=[again])
    assert [_stored_of(w) for w in store.load_workers()] == [_stored_of(again)]
    store.save([], forgotten=["w1"])
    assert store.load_workers() == []


def test_an_admin_drain_is_stored_with_its_worker_and_so_is_its_resume(opened: Opened) -> None:
    # Given a worker saved whole, then drained (the same registration: only what changes
    # after a registration is written again).
    worker = Worker("w1", WorkerKind.ZMQ, frozenset({"echo"}), {}, 2, 10.0, registration=3)
    other = Worker("w2", WorkerKind.HTTP, frozenset({"x"}), {}, 0, 11.0, drained=True)
    opened.store.save([], workers=[worker, other])
    worker.drained, worker.last_seen = True, 12.0
    opened.store.save([], workers=[worker])

    # When the store is opened again, then both come back drained, and offline.
    store = opened.again() if opened.backend != "memory" else opened.store
    loaded = {w.id: w for w in store.load_workers()}
    assert {i: (w.drained, w.last_seen) for i, w in loaded.items()} == {
        "w1": (True, 12.0), "w2": (True, 11.0)
    }  # fmt: skip
    assert [_stored_of(loaded[w.id]) for w in (worker, other)] == [
        _stored_of(worker), _stored_of(other)
    ]  # fmt: skip

    # A resume is stored the same way, whether with the registration loaded or a new one.
    again = loaded["w1"]
    again.drained = False
    other.drained, other.registration = False, 9
    store.save([], workers=[again, other])
    store = opened.again() if opened.backend != "memory" else store
    assert {w.id: w.drained for w in store.load_workers()} == {"w1": False, "w2": False}


def test_a_store_opened_again_at_its_location_holds_what_was_saved(opened: Opened) -> None:
    task = _task(1, TaskStatus.RUNNING, **STATES[TaskStatus.RUNNING])
    opened.store.save([task])
    store = opened.again()
    if opened.backend == "memory":  # nothing durable: a new store is empty
        assert store.load() == []
    else:
        assert {t.id: fields_of(t) for t in whole(store).values()} == {task.id: fields_of(task)}


# -- open_store ---------------------------------------------------------------------------


def test_memory_opens_a_new_empty_store_each_time() -> None:
    first = open_store("memory:", "full")
    first.save([_task(1, TaskStatus.PENDING)])
    second = open_store("memory:", "off")
    assert second is not first and second.load() == []
    assert [t.id for t in first.load()] == ["task-1"]
    assert type(open_store("memory://anything", "full")) is type(first)


def test_a_scheme_opens_the_module_of_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    module = types.ModuleType("broker.store.fake")
    module.__spec__ = ModuleSpec("broker.store.fake", None)
    sentinel = open_store("memory:", "full")

    def open_fake(location: str, sync: str) -> Store:
        calls.append((location, sync))
        return sentinel

    module.open = open_fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "broker.store.fake", module)
    assert open_store("fake://host:5/db?x=1", "normal") is sentinel
    assert open_store("FAKE://h", "full") is sentinel  # schemes ignore case
    assert calls == [("fake://host:5/db?x=1", "normal"), ("FAKE://h", "full")]


@pytest.mark.parametrize(
    ("location", "scheme"),
    [
        ("postgresql://db.example.internal/scheduler", "postgresql"),
        ("Redis://localhost:6379/0", "redis"),
        ("postgresql+psycopg://db/scheduler", "postgresql+psycopg"),
        ("a.b://x", "a.b"),
    ],
)
def test_a_scheme_no_module_serves_is_refused_by_name(location: str, scheme: str) -> None:
    message = f"unknown store scheme '{scheme}' in '{location}'"
    with pytest.raises(ValueError, match=re.escape(message)):
        open_store(location, "full")


@pytest.mark.parametrize(
    "path", ["./var/scheduler.db", "var/s.db", "memory", "memory:x", "c:/s.db", "a:b//c.db"]
)
def test_anything_else_is_the_path_of_an_sqlite_file(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(path, "full")
    try:
        assert type(store).__name__ == "SqliteStore"
        store.save([_task(1, TaskStatus.PENDING)])
    finally:
        store.close()
    assert (tmp_path / path).is_file()


def test_the_broker_refuses_to_start_on_a_scheme_no_module_serves(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["--bind", "tcp://127.0.0.1:0", "--data", "nosuch://host/db"]) == 1
    assert "cannot open the store: unknown store scheme 'nosuch'" in capsys.readouterr().err
