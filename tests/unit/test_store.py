"""The stores, SQLite and in memory: what the broker saved is what it loads, field for field."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.core import Scheduler
from broker.state import Lease, Task
from broker.store import (
    _COLUMNS,
    _FRESH_STATE,
    _INSERT,
    _LOAD,
    SCHEMA_VERSION,
    Batch,
    MemoryStore,
    SqliteStore,
    Store,
    _leases_json,
    _literal,
    _spec_row,
    _state_row,
    prepare,
)
from common.models import FINAL_STATUSES, LeaseOutcome, TaskStatus
from tests import edge


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store in turn: what both must do alike."""
    target: Store = (
        MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "s.db"))
    )
    yield target
    target.close()


def test_tasks_round_trip_through_sqlite(tmp_path: Path) -> None:
    core = Scheduler()
    edge.submit(
        core,
        [
            {"handler": "echo", "args": b"\x00bin", "priority": -3, "requires": ["b", "a"]},
            {"handler": "fib", "name": "n", "timeout": 2.5, "resources": {"cpu": 1.5}},
        ],
        100.0,
    )
    first = next(iter(core.tasks))
    edge.submit(core, [{"handler": "echo", "dependencies": [first], "max_retries": 4}], 101.0)
    core.cancel(first, 102.0)
    store = SqliteStore(str(tmp_path / "sub" / "s.db"))
    store.save(core.take_dirty())
    store.close()

    reopened = SqliteStore(str(tmp_path / "sub" / "s.db"))
    loaded = {t.id: t for t in reopened.load()}
    assert {t.id for t in loaded.values() if t.cold} == {
        t.id for t in core.tasks.values() if t.status in FINAL_STATUSES
    }
    reopened.warm(list(loaded.values()))
    reopened.close()
    assert set(loaded) == set(core.tasks)
    for task_id, task in core.tasks.items():
        assert loaded[task_id].record() == task.record()
        assert loaded[task_id].seq == task.seq
    child = next(t for t in loaded.values() if t.dependencies)
    assert child.status is TaskStatus.FAILED
    assert child.error == f"dependency {first} cancelled"


def test_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        db = store._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_load_columns_follow_the_task_fields() -> None:
    # _task builds a Task positionally from _LOAD's columns: the two orders must agree.
    names = [f.name for f in dataclasses.fields(Task)]
    assert names[: len(_LOAD.split(", "))] == _LOAD.split(", ")
    assert names[len(_LOAD.split(", ")) :] == ["waiting_on", "queued", "stored", "cold"]
    # _fresh_task puts the fresh state where these fields are, and Task's defaults agree.
    start = names.index("status")
    assert list(_FRESH_STATE) == names[start : start + len(_FRESH_STATE)]
    defaults = {f.name: f.default for f in dataclasses.fields(Task)}
    assert {name: defaults[name] for name in _FRESH_STATE} == _FRESH_STATE


def test_every_stored_field_round_trips(tmp_path: Path) -> None:
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
    store = MemoryStore()
    sqlite = SqliteStore(str(tmp_path / "s.db"))
    batch = prepare(core.tasks.values())  # one set of rows for both stores
    for target in (store, sqlite):
        target.write(batch)
    stored = [f.name for f in dataclasses.fields(Task) if f.name not in ("waiting_on", "queued")]
    for target, loaded in ((store, store.load()), (sqlite, sqlite.load())):
        assert len(loaded) == 4
        assert [t.id for t in loaded if t.cold] == [second]  # finished: index fields only
        cold = next(t for t in loaded if t.cold)
        assert (cold.seq, cold.handler, cold.status, cold.completed_at) == (2, "echo",
                TaskStatus.COMPLETED, 14.0)  # fmt: skip
        target.warm(loaded)
        for task in loaded:
            original = core.tasks[task.id]
            for name in stored:
                value, expected = getattr(task, name), getattr(original, name)
                if name == "leases":  # Lease compares by identity
                    value = [lease.to_row() for lease in value]
                    expected = [lease.to_row() for lease in expected]
                assert value == expected, name
    first_loaded = next(t for t in sqlite.load() if t.id == first)
    assert not first_loaded.cold  # pending again (retry back-off): loaded whole
    assert first_loaded.failures == 1 and first_loaded.not_before > 13.0
    assert [(le.attempt, le.outcome, le.error) for le in first_loaded.leases] == [
        (1, "failed", "x")
    ]
    sqlite.close()


@pytest.mark.parametrize(
    "leases",
    [
        [],
        [Lease(1, "w-1", 1795754805.1748843)],
        [
            Lease(
                1, 'w "quoted" \\ back', 10.0, 11.5, LeaseOutcome.FAILED, "boom\nline two\t", None
            ),
            Lease(2, "wörker-☃-🚀", 12, 13, LeaseOutcome.COMPLETED, None, TaskStatus.FAILED),
            Lease(
                3, "", 1e-05, float("inf"), LeaseOutcome.LOST, "\x00\x1f\x7f", TaskStatus.CANCELLED
            ),
        ],
    ],
)
def test_leases_are_stored_as_the_json_encoder_would(leases: list[Lease]) -> None:
    text = _leases_json(leases)
    expected = [lease.to_row() for lease in leases]
    assert json.loads(text) == expected
    assert text == json.dumps(expected, separators=(",", ":"))


def _finished_tasks(count: int) -> list[Task]:
    tasks = []
    for seq in range(1, count + 1):
        task = Task(f"t{seq:05d}", seq, f"name-{seq}", "echo", b"a%d" % seq, [], seq % 3, 1,
                    None, (), (), 1.0, TaskStatus.COMPLETED, "w", 1, 0, 0, b"r%d" % seq,
                    None, 2.0, 3.0 + seq, 0.0, f"key-{seq}" if seq % 2 else None,
                    [Lease(1, "w", 2.0, 3.0 + seq, LeaseOutcome.COMPLETED)])  # fmt: skip
        tasks.append(task)
    return tasks


def test_finished_tasks_load_cold_and_warm_whole_in_chunks(tmp_path: Path) -> None:
    # More tasks than one warming query takes, so that the chunks are exercised.
    originals = _finished_tasks(1200)
    store = SqliteStore(str(tmp_path / "s.db"))
    store.save(originals)
    loaded = sorted(store.load(), key=lambda t: t.seq)
    assert all(t.cold and t.args == b"" and t.leases == [] for t in loaded)
    index = [(t.id, t.seq, t.handler, t.status, t.completed_at, t.idempotency_key) for t in loaded]
    assert index == [(t.id, t.seq, t.handler, t.status, t.completed_at, t.idempotency_key)
                     for t in originals]  # fmt: skip
    with pytest.raises(RuntimeError, match="cold"):
        loaded[0].record()
    store.warm(loaded[::-1])
    assert [t.record() for t in loaded] == [t.record() for t in originals]
    assert not any(t.cold for t in loaded)
    store.close()


def test_a_cold_task_is_never_written_and_a_missing_one_never_warmed(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    store.save(_finished_tasks(2))
    first, second = sorted(store.load(), key=lambda t: t.seq)
    with pytest.raises(RuntimeError, match="changed while cold"):
        prepare([first])
    store.save([], deleted=[second])
    with pytest.raises(RuntimeError, match="missing from the store"):
        store.warm([first, second])
    assert not first.cold and second.cold
    store.close()


def test_a_fresh_task_is_stored_as_its_whole_row_would_be(tmp_path: Path) -> None:
    # Most inserts write the fresh state as SQL literals: the stored row, value and type of
    # every column, must be what binding the whole row gives.
    core = Scheduler()
    edge.submit(core, [{"handler": "echo", "args": b"a", "priority": 2, "timeout": 3.0,
                  "requires": ["x"], "resources": {"cpu": 1.0}, "idempotency_key": "k"},
                 {"handler": "echo"}], 10.0)  # fmt: skip
    tasks = list(core.tasks.values())
    batch = prepare(tasks)
    assert len(batch.fresh) == 2 and not batch.inserts
    literal = SqliteStore(str(tmp_path / "literal.db"))
    literal.write(batch)
    bound = SqliteStore(str(tmp_path / "bound.db"))
    bound._db.executemany(_INSERT, [_spec_row(t) + _state_row(t) for t in tasks])

    def stored(store: SqliteStore) -> list[tuple[object, ...]]:
        columns = ", ".join(f"{c}, typeof({c})" for c in _COLUMNS.split(", "))
        return store._db.execute(f"SELECT {columns} FROM tasks ORDER BY seq").fetchall()

    assert stored(literal) == stored(bound)
    # Anything else is written whole.
    core.cancel(tasks[1].id, 11.0)
    tasks[1].stored = False
    assert len(prepare([tasks[1]]).inserts) == 1
    literal.close()
    bound.close()


@pytest.mark.parametrize(
    "value", [None, "", "it's", "a''b 'quoted'", 0, -7, 2**62, 0.0, -2.5, 1e300, 5e-324]
)
def test_a_literal_means_in_sql_what_the_bound_value_means(value: object) -> None:
    # The fresh state is written as literals (_INSERT_FRESH): each must read back as the
    # same value of the same type as binding the value would store.
    db = sqlite3.connect(":memory:")
    try:
        text = _literal(value)
        assert (
            db.execute(f"SELECT {text}, typeof({text})").fetchone()
            == db.execute("SELECT ?, typeof(?)", (value, value)).fetchone()
        )
    finally:
        db.close()


@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, -math.inf, b"x", [], 1j])
def test_a_value_with_no_exact_literal_is_refused(value: object) -> None:
    with pytest.raises(TypeError, match="no SQL literal for"):
        _literal(value)


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
        done: TaskStatus.COMPLETED,
        parent: TaskStatus.RUNNING,
        child: TaskStatus.PENDING,
    }
    for task in loaded:
        assert (task.waiting_on, task.queued, task.stored) == (0, False, True), task.status
        assert task.cold is (task.status in FINAL_STATUSES)
    restarted = Scheduler(core.timing)
    restarted.load(loaded, 20.0, store.warm)
    worker = edge.register(restarted, b"w", {"id": "w", "slots": 2, "capabilities": ["echo"],
               "running": [{"task_id": parent, "attempt": 1}]}, 20.0,
    )  # fmt: skip
    edge.report(restarted, worker, [{"task_id": parent, "attempt": 1, "status": "completed"}], 21.0)
    restarted.schedule(21.0)
    dispatch = restarted.take_outbox().dispatch
    assert [e.run.task_id for e in dispatch[b"w"]] == [child]


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


def test_deleted_tasks_are_gone_and_deleting_one_again_changes_nothing(store: Store) -> None:
    core = Scheduler()
    edge.submit(core, [{"handler": "echo"}] * 2, 10.0)
    first, second = core.tasks.values()
    store.save([first, second])
    store.save([], deleted=[first])
    assert [t.id for t in store.load()] == [second.id]
    store.save([], deleted=[first])  # as SQLite's DELETE of a missing row: nothing happens
    assert [t.id for t in store.load()] == [second.id]


def test_a_failed_write_keeps_nothing_of_its_batch_and_the_store_goes_on(tmp_path: Path) -> None:
    core = Scheduler()
    edge.submit(core, [{"handler": "echo"}], 10.0)
    (task,) = core.tasks.values()
    store = SqliteStore(str(tmp_path / "s.db"))
    broken = Batch(fresh=[_spec_row(task)], inserts=[(None,) * len(_COLUMNS.split(", "))])
    with pytest.raises(sqlite3.IntegrityError):  # the cause itself, after the rollback
        store.write(broken)
    assert store.load() == []  # the row written before the failure was rolled back
    store.write(Batch(fresh=[_spec_row(task)]))
    assert [t.id for t in store.load()] == [task.id]
    store.close()


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match=f"store schema 1, this broker needs {SCHEMA_VERSION}"):
        SqliteStore(path)


def test_a_sync_mode_is_one_of_the_known_ones_in_any_case(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync must be one of full, normal, off, not 'sometimes'"):
        SqliteStore(str(tmp_path / "bad" / "s.db"), sync="sometimes")
    assert not (tmp_path / "bad").exists()  # refused before anything was made
    store = SqliteStore(str(tmp_path / "s.db"), sync="NORMAL")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()
