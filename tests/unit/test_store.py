"""The SQLite store: what the broker saved is what it loads, field for field."""

from __future__ import annotations

from pathlib import Path

from broker.core import Scheduler
from broker.store import SqliteStore
from common.models import TaskStatus


def test_tasks_round_trip_through_sqlite(tmp_path: Path) -> None:
    core = Scheduler()
    core.submit(
        [
            {"handler": "echo", "args": b"\x00bin", "priority": -3, "requires": ["b", "a"]},
            {"handler": "fib", "name": "n", "timeout": 2.5, "resources": {"cpu": 1.5}},
        ],
        100.0,
    )
    first = next(iter(core.tasks))
    core.submit([{"handler": "echo", "dependencies": [first], "max_retries": 4}], 101.0)
    core.cancel(first, 102.0)
    store = SqliteStore(str(tmp_path / "sub" / "s.db"))
    store.save(core.take_dirty())
    store.close()

    reopened = SqliteStore(str(tmp_path / "sub" / "s.db"))
    loaded = {t.id: t for t in reopened.load()}
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
