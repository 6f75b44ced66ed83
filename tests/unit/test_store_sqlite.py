"""The SQLite store's own ways: its file, its rows, and the encodings it was tuned with.

What every store must do alike is in ``test_store.py``; these tests read the store's
private encoding (``broker.store.sqlite``'s rows and SQL), which nothing else may.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sqlite3
from pathlib import Path

import pytest

from broker.core import Scheduler
from broker.state import Lease, Task, Worker
from broker.store import StoreInUse, open_store, sqlite
from broker.store.sqlite import (
    _COLUMNS,
    _FRESH_STATE,
    _INSERT,
    _LOAD,
    _READ_CHUNK,
    SCHEMA_VERSION,
    SqliteStore,
    _Batch,
    _leases_json,
    _literal,
    _prepare,
    _spec_row,
    _state_row,
)
from common.models import FINAL_STATUSES, LeaseOutcome, TaskStatus, WorkerKind
from tests import edge
from tests.unit.test_store import ODD_LEASES


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
    assert set(loaded) == {t.id for t in core.tasks.values() if t.status not in FINAL_STATUSES}
    finished = reopened.finished_page(None, None, 0, 100, 10**9)
    loaded.update((t.id, t) for t in finished)
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
    assert names[len(_LOAD.split(", ")) :] == ["waiting_on", "queued", "stored"]
    # _fresh_task puts the fresh state where these fields are, and Task's defaults agree.
    start = names.index("status")
    assert list(_FRESH_STATE) == names[start : start + len(_FRESH_STATE)]
    defaults = {f.name: f.default for f in dataclasses.fields(Task)}
    assert {name: defaults[name] for name in _FRESH_STATE} == _FRESH_STATE


@pytest.mark.parametrize("leases", ODD_LEASES)
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


def test_a_page_of_finished_tasks_reads_them_in_chunks_and_by_index(tmp_path: Path) -> None:
    # More tasks than one read by seq takes, so that the chunks are exercised.
    originals = _finished_tasks(1200)
    assert len(originals) > 2 * _READ_CHUNK
    originals[700].status = TaskStatus.FAILED
    store = SqliteStore(str(tmp_path / "s.db"))
    store.save(originals)
    assert store.load() == []
    page = store.finished_page(None, None, 0, 1200, 10**9)
    assert [t.record() for t in page] == [t.record() for t in originals]
    # A rare status by its partial index, a key by its own, an id by its own: no scan.
    plans = {
        "failed": ("SELECT seq FROM tasks WHERE status = 'failed' AND seq > 0 ORDER BY seq", ()),
        "key": ("SELECT seq FROM tasks WHERE idempotency_key = ?", ("key-5",)),
        "id": ("SELECT seq FROM tasks WHERE id = ?", ("t00005",)),
        "pruning": ("SELECT seq FROM tasks WHERE completed_at IS NOT NULL AND completed_at <= ? "
                    "ORDER BY completed_at LIMIT 10", (5.0,)),
    }  # fmt: skip
    for name, (query, values) in plans.items():
        plan = " ".join(row[-1] for row in store._db.execute(f"EXPLAIN QUERY PLAN {query}", values))
        assert "USING" in plan and "SCAN tasks" not in plan.replace("USING", ""), (name, plan)
    assert [t.seq for t in store.finished_page(TaskStatus.FAILED, None, 0, 10, 10**9)] == [701]
    store.close()


def test_a_fresh_task_is_stored_as_its_whole_row_would_be(tmp_path: Path) -> None:
    # Most inserts write the fresh state as SQL literals: the stored row, value and type of
    # every column, must be what binding the whole row gives.
    core = Scheduler()
    edge.submit(core, [{"handler": "echo", "args": b"a", "priority": 2, "timeout": 3.0,
                  "requires": ["x"], "resources": {"cpu": 1.0}, "idempotency_key": "k"},
                 {"handler": "echo"}], 10.0)  # fmt: skip
    tasks = list(core.tasks.values())
    batch = _prepare(tasks)
    assert len(batch.fresh) == 2 and not batch.inserts
    literal = SqliteStore(str(tmp_path / "literal.db"))
    literal._write(batch)
    bound = SqliteStore(str(tmp_path / "bound.db"))
    bound._db.executemany(_INSERT, [_spec_row(t) + _state_row(t) for t in tasks])

    def stored(store: SqliteStore) -> list[tuple[object, ...]]:
        columns = ", ".join(f"{c}, typeof({c})" for c in _COLUMNS.split(", "))
        return store._db.execute(f"SELECT {columns} FROM tasks ORDER BY seq").fetchall()

    assert stored(literal) == stored(bound)
    # Anything else is written whole.
    core.cancel(tasks[1].id, 11.0)
    tasks[1].stored = False
    assert len(_prepare([tasks[1]]).inserts) == 1
    literal.close()
    bound.close()


def test_a_known_task_is_written_by_its_state_only(tmp_path: Path) -> None:
    # Its spec never changes: a later save updates the state columns, and nothing else.
    core = Scheduler()
    (entry,) = edge.submit(core, [{"handler": "echo", "name": "first name"}], 10.0)
    store = SqliteStore(str(tmp_path / "s.db"))
    store.save(core.take_dirty())
    task = core.tasks[entry["id"]]
    task.name = "renamed"
    core.cancel(task.id, 11.0)
    batch = _prepare(core.take_dirty())
    assert (batch.fresh, batch.inserts, batch.new) == ([], [], [])
    assert batch.updates == [(*_state_row(task), task.seq)]
    store._write(batch)
    assert store.load() == []
    found = store.find(task.id)
    assert found is not None and (found.name, found.status) == ("first name", TaskStatus.CANCELLED)
    store.close()


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


def test_a_failed_write_keeps_nothing_of_its_batch_and_the_store_goes_on(tmp_path: Path) -> None:
    core = Scheduler()
    edge.submit(core, [{"handler": "echo"}], 10.0)
    (task,) = core.tasks.values()
    store = SqliteStore(str(tmp_path / "s.db"))
    broken = _Batch(fresh=[_spec_row(task)], inserts=[(None,) * len(_COLUMNS.split(", "))])
    with pytest.raises(sqlite3.IntegrityError):  # the cause itself, after the rollback
        store._write(broken)
    assert store.load() == []  # the row written before the failure was rolled back
    store._write(_Batch(fresh=[_spec_row(task)]))
    assert [t.id for t in store.load()] == [task.id]
    store.close()


def _store_of_schema(path: str, version: str) -> None:
    """An empty store at ``path`` that says it is of this schema version."""
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
    db.commit()
    db.close()


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    _store_of_schema(path, "1")
    with pytest.raises(RuntimeError, match=f"store schema 1, this broker needs {SCHEMA_VERSION}"):
        SqliteStore(path)


def test_a_store_open_in_one_place_is_refused_in_another_until_it_is_closed(
    tmp_path: Path,
) -> None:
    # Given a store open (as by a running broker).
    path = str(tmp_path / "s.db")
    first = SqliteStore(path)
    core = Scheduler()
    [held] = edge.submit(core, [{"handler": "echo"}], 100.0)
    first.save(core.take_dirty())

    # When it is opened a second time, then that is refused, naming who holds it.
    with pytest.raises(StoreInUse, match=re.escape(f"{path} is in use by pid {os.getpid()}")):
        SqliteStore(path)
    with pytest.raises(StoreInUse, match=re.escape(f"its lock {path}.lock")):
        open_store(path, "full")

    # Once the first is closed, the store opens again, with what the first saved.
    first.close()
    second = SqliteStore(path)
    assert [task.id for task in second.load()] == [held["id"]]
    second.close()


def test_a_store_that_fails_to_open_leaves_it_unlocked(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    _store_of_schema(path, "1")
    with pytest.raises(RuntimeError, match="store schema 1"):
        SqliteStore(path)
    with pytest.raises(RuntimeError, match="store schema 1"):  # not StoreInUse
        SqliteStore(path)


def test_a_sync_mode_is_one_of_the_known_ones_in_any_case(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync must be one of full, normal, off, not 'sometimes'"):
        SqliteStore(str(tmp_path / "bad" / "s.db"), sync="sometimes")
    assert not (tmp_path / "bad").exists()  # refused before anything was made
    store = SqliteStore(str(tmp_path / "s.db"), sync="NORMAL")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()


def test_a_store_is_opened_by_its_path_or_its_sqlite_url_with_its_sync_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("./var/scheduler.db", "normal")  # the default --data, and a mode
    assert isinstance(relative, SqliteStore)
    assert relative._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    relative.close()
    assert (tmp_path / "var" / "scheduler.db").is_file()
    url = open_store(f"sqlite://{tmp_path}/url/s.db", "off")
    assert isinstance(url, SqliteStore) and url.path == f"{tmp_path}/url/s.db"
    assert url._db.execute("PRAGMA synchronous").fetchone()[0] == 0
    url.close()
    assert (tmp_path / "url" / "s.db").is_file()
    with pytest.raises(ValueError, match="sync must be one of"):
        open_store(str(tmp_path / "s.db"), "sometimes")


#: The tasks table as every schema from 2 on made it.
_OLD_TASKS = """
    CREATE TABLE tasks (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL,
        handler TEXT NOT NULL, args BLOB NOT NULL, dependencies TEXT NOT NULL,
        priority INTEGER NOT NULL, max_retries INTEGER NOT NULL, timeout REAL,
        requires TEXT NOT NULL, resources TEXT NOT NULL, created_at REAL NOT NULL,
        idempotency_key TEXT, status TEXT NOT NULL, worker_id TEXT,
        attempts INTEGER NOT NULL, failures INTEGER NOT NULL, lost INTEGER NOT NULL,
        result BLOB, error TEXT, started_at REAL, completed_at REAL,
        not_before REAL NOT NULL, leases TEXT NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
#: The workers table as schemas 3 to 5 made it: without ``drained`` (6).
_OLD_WORKERS = """
    CREATE TABLE workers (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, capabilities TEXT NOT NULL,
        resources TEXT NOT NULL, slots INTEGER NOT NULL, host TEXT NOT NULL,
        pid INTEGER NOT NULL, last_seen REAL NOT NULL, tags TEXT NOT NULL
    );
"""
#: The indexes schemas 4 and 5 added.
_OLD_INDEXES = {
    "4": """
        CREATE UNIQUE INDEX tasks_by_id ON tasks (id);
        CREATE INDEX tasks_by_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
        CREATE INDEX tasks_failed ON tasks (seq) WHERE status = 'failed';
        CREATE INDEX tasks_cancelled ON tasks (seq) WHERE status = 'cancelled';
        CREATE INDEX tasks_by_completion ON tasks (completed_at) WHERE completed_at IS NOT NULL;
    """,
    "5": "CREATE INDEX tasks_failed_by_error ON tasks (error) WHERE status = 'failed';",
}


def test_a_store_of_schema_2_loads_and_is_brought_to_the_current_schema(tmp_path: Path) -> None:
    # A file laid out by hand as schema 2 (no workers table, leases of seven fields, no
    # indexes) loads, and gains what schemas 3 to 6 added: the dependents of its tasks too.
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        _OLD_TASKS
        + """
        INSERT INTO meta VALUES ('schema', '2');
        INSERT INTO tasks VALUES (1, 'a', 'echo', 'echo', x'00', '[]', 0, 0, NULL, '[]', '[]',
            10.0, NULL, 'pending', NULL, 0, 0, 0, NULL, NULL, NULL, NULL, 0.0, '[]');
        INSERT INTO tasks VALUES (2, 'b', 'named', 'fib', x'01', '["a"]', 5, 2, 1.5, '["gpu"]',
            '[["cpu", 2.0]]', 11.0, 'key', 'completed', 'w', 1, 0, 0, x'02', NULL, 12.0,
            13.0, 0.0, '[[1,"w",12.0,13.0,"completed",null,null]]');
        """
    )
    db.commit()
    db.close()
    store = SqliteStore(str(path))
    loaded = [*store.load(), *store.finished_page(None, None, 0, 10, 10**9)]
    found = store.find_key("key")
    assert found is not None and found.id == "b"
    assert store.load_workers() == []
    worker = Worker("w", WorkerKind.HTTP, frozenset({"fib"}), {"cpu": 2.0}, 0, 14.0, drained=True)
    store.save([], workers=[worker])
    store.close()
    reopened = SqliteStore(str(path))
    assert [w.record() for w in reopened.load_workers()] == [
        {**worker.record(), "status": "offline"}
    ]
    assert [w.drained for w in reopened.load_workers()] == [True]
    assert reopened._db.execute("SELECT value FROM meta").fetchone() == (SCHEMA_VERSION,)
    query = "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'tasks_%'"
    assert {row[0] for row in reopened._db.execute(query)} == {
        "tasks_by_id",
        "tasks_by_key",
        "tasks_failed",
        "tasks_cancelled",
        "tasks_by_completion",
        "tasks_failed_by_error",
    }
    assert reopened.dependents("a", 10) == ["b"] and reopened.dependents("b", 10) == []
    reopened.close()
    assert SCHEMA_VERSION == "6"
    assert [t.record() for t in loaded] == [
        {"id": "a", "name": "echo", "handler": "echo", "args": b"\x00", "dependencies": [],
         "priority": 0, "status": "pending", "worker_id": None, "attempts": 0, "result": None,
         "error": None, "max_retries": 0, "timeout": None, "requires": [], "resources": {},
         "created_at": 10.0, "started_at": None, "completed_at": None, "idempotency_key": None,
         "leases": [], "traceback": None, "waiting_for": None},
        {"id": "b", "name": "named", "handler": "fib", "args": b"\x01", "dependencies": ["a"],
         "priority": 5, "status": "completed", "worker_id": "w", "attempts": 1,
         "result": b"\x02", "error": None, "max_retries": 2, "timeout": 1.5,
         "requires": ["gpu"], "resources": {"cpu": 2.0}, "created_at": 11.0,
         "started_at": 12.0, "completed_at": 13.0, "idempotency_key": "key",
         "leases": [{"attempt": 1, "worker_id": "w", "started_at": 12.0, "ended_at": 13.0,
                     "outcome": "completed", "error": None, "refused": None,
                     "traceback": None}], "traceback": None,
         "waiting_for": None},
    ]  # fmt: skip


def _store_laid_out_as(path: Path, version: str) -> None:
    """A store at ``path`` made by hand as a broker of this version (3 to 5) made it, with
    a worker and a pending task."""
    indexes = "".join(_OLD_INDEXES[v] for v in sorted(_OLD_INDEXES) if v <= version)
    db = sqlite3.connect(path)
    db.executescript(_OLD_TASKS + _OLD_WORKERS + indexes)
    db.execute("INSERT INTO meta VALUES ('schema', ?)", (version,))
    db.execute(
        """INSERT INTO workers VALUES ('w', 'zmq', '["echo", "gpu"]', '{"cpu": 2.0}', 2,
        'node-1', 7, 14.0, '["gpu"]')"""
    )
    db.execute(
        """INSERT INTO tasks VALUES (1, 'a', 'echo', 'echo', x'00', '[]', 0, 0, NULL, '[]',
        '[]', 10.0, NULL, 'pending', NULL, 0, 0, 0, NULL, NULL, NULL, NULL, 0.0, '[]')"""
    )
    db.commit()
    db.close()


def _columns(store: SqliteStore, table: str) -> list[str]:
    return [info[1] for info in store._db.execute(f"PRAGMA table_info({table})")]


@pytest.mark.parametrize("version", ["3", "4", "5"])
def test_a_store_of_schema_3_to_5_gains_the_drain_of_its_workers_once(
    tmp_path: Path, version: str
) -> None:
    # Given a store as an older broker left it, whose workers table has no drain.
    path = tmp_path / "old.db"
    _store_laid_out_as(path, version)

    # When this broker opens it, then its rows read as they were, every worker not drained.
    store = SqliteStore(str(path))
    [worker] = store.load_workers()
    assert (worker.id, worker.slots, worker.capabilities, worker.tags, worker.drained) == (
        "w", 2, frozenset({"echo", "gpu"}), frozenset({"gpu"}), False
    )  # fmt: skip
    assert [task.id for task in store.load()] == ["a"]
    assert _columns(store, "workers")[-1] == "drained"

    # A drain saved is kept; opened again (at the new version), nothing is added again.
    worker.drained = True
    store.save([], workers=[worker])
    store.close()
    reopened = SqliteStore(str(path))
    assert [w.drained for w in reopened.load_workers()] == [True]
    assert _columns(reopened, "workers").count("drained") == 1
    assert reopened._db.execute("SELECT value FROM meta").fetchone() == (SCHEMA_VERSION,)
    reopened.close()


def test_an_upgrade_cut_short_leaves_the_store_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a store of schema 5, and an upgrade whose second step fails (SQLite cannot add
    # a NOT NULL column without a default).
    path = tmp_path / "old.db"
    _store_laid_out_as(path, "5")
    broken = (*sqlite._ADDED_COLUMNS, ("workers", "broken", "INTEGER NOT NULL"))
    monkeypatch.setattr(sqlite, "_ADDED_COLUMNS", broken)

    # When it is opened, then that fails, and nothing of the upgrade is kept.
    with pytest.raises(sqlite3.OperationalError, match="NOT NULL"):
        SqliteStore(str(path))
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta").fetchall() == [("5",)]
    assert "drained" not in [info[1] for info in db.execute("PRAGMA table_info(workers)")]
    db.close()

    # The upgrade as it is succeeds afterwards (the store was left unlocked too).
    monkeypatch.undo()
    store = SqliteStore(str(path))
    assert [w.drained for w in store.load_workers()] == [False]
    store.close()
