"""The SQLite store: one file (WAL, ``synchronous=FULL``) written through per loop turn.

The broker calls ``save`` with every task that changed since its last commit, in
one transaction: a burst of submits shares one fsync (group commit). Only after
``save`` returns does the broker acknowledge anything. How a task is laid out in rows
(the schema and its indexes, the spec and state columns, the JSON of leases, the reads)
is this module's own: nothing outside it may read or write the file but through
``SqliteStore``, and one ``SqliteStore`` at a time: it locks the file (``<path>.lock``,
``broker.store._lock``) before it opens it, until it is closed or its process ends.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from json.encoder import encode_basestring_ascii
from typing import Any, cast

from broker.state import RECORD_BYTES, Lease, ResourceKey, Task, Worker
from broker.store import Store, StoreSummary, _lock
from common.models import FINAL_STATUSES, TaskStatus, WorkerKind, WorkerStatus
from common.settings import SYNC_MODES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL,
    name         TEXT NOT NULL,
    handler      TEXT NOT NULL,
    args         BLOB NOT NULL,
    dependencies TEXT NOT NULL,
    priority     INTEGER NOT NULL,
    max_retries  INTEGER NOT NULL,
    timeout      REAL,
    requires     TEXT NOT NULL,
    resources    TEXT NOT NULL,
    created_at   REAL NOT NULL,
    idempotency_key TEXT,
    status       TEXT NOT NULL,
    worker_id    TEXT,
    attempts     INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    lost         INTEGER NOT NULL,
    result       BLOB,
    error        TEXT,
    started_at   REAL,
    completed_at REAL,
    not_before   REAL NOT NULL,
    leases       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    resources    TEXT NOT NULL,
    slots        INTEGER NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    last_seen    REAL NOT NULL,
    tags         TEXT NOT NULL,
    drained      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dependencies (
    dep_id       TEXT NOT NULL,
    task_seq     INTEGER NOT NULL,
    PRIMARY KEY (dep_id, task_seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_by_id ON tasks (id);
CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_failed ON tasks (seq) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS tasks_cancelled ON tasks (seq) WHERE status = 'cancelled';
CREATE INDEX IF NOT EXISTS tasks_by_completion ON tasks (completed_at)
    WHERE completed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_failed_by_error ON tasks (error) WHERE status = 'failed';
"""

#: Version of the table layout above, kept in ``meta``. 3 added the workers table and a
#: lease's traceback (an eighth field of its JSON when it has one); 4 the indexes that
#: find finished tasks, which stay in the store and out of the broker's memory: by id, by
#: idempotency key, the rare final statuses in seq order (a page of failures among
#: millions of completed tasks), and by completion (pruning); 5 the failed tasks by error,
#: which finds the dependents a retry runs again; 6 a worker's ``drained`` (an admin's
#: drain, kept until resumed) and the table ``dependencies``, one row per (dependency,
#: dependent), which finds a task's dependents (``dependents``).
SCHEMA_VERSION = "6"
#: Versions this broker opens and brings up to ``SCHEMA_VERSION``, in one transaction:
#: the tables and indexes each lacks are made by ``_SCHEMA`` (``CREATE ... IF NOT
#: EXISTS``), the columns by ``_ADDED_COLUMNS``, the rows of ``dependencies`` from the
#: tasks' own lists (``_FILL_DEPENDENCIES``), and its rows read as they are.
_UPGRADES_FROM = ("2", "3", "4", "5")
#: Columns added to a table after it was first made, each with what a row written before
#: holds: (table, column, its declaration). A store whose table lacks one gains it when
#: it is upgraded (a table made by ``_SCHEMA`` at the upgrade has it already).
_ADDED_COLUMNS = (("workers", "drained", "INTEGER NOT NULL DEFAULT 0"),)
#: Most ids in one ``find_many`` query (SQLite binds at most 32,766 values; a smaller list
#: keeps each statement's plan a short run of index lookups).
_IDS_A_QUERY = 500

# A task's spec never changes after it is submitted: it is written once, with an INSERT.
# Later writes UPDATE only the state columns, by rowid (seq), which is the cheapest write
# SQLite has; of the indexes, a status change touches the partial ones only when the task
# becomes failed or cancelled, and its completion the completion index, once.
_SPEC = (
    "seq, id, name, handler, args, dependencies, priority, max_retries, timeout, requires, "
    "resources, created_at, idempotency_key"
)
_STATE = (
    "status", "worker_id", "attempts", "failures", "lost", "result", "error", "started_at",
    "completed_at", "not_before", "leases",
)  # fmt: skip
_COLUMNS = f"{_SPEC}, {', '.join(_STATE)}"
_INSERT = f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 24)})"
_UPDATE = f"UPDATE tasks SET {', '.join(c + ' = ?' for c in _STATE)} WHERE seq = ?"

#: The state of a task not leased since it was submitted (``leases`` aside, still '[]'),
#: in ``_LOAD``'s order (in which ``idempotency_key``, a spec column, then ``leases``
#: follow it). Most inserts are of such tasks: their state is written as literals, which
#: spares binding eleven values a row (inserts took about a third less time).
_FRESH_STATE = {
    "status": "pending", "worker_id": None, "attempts": 0, "failures": 0, "lost": 0,
    "result": None, "error": None, "started_at": None, "completed_at": None, "not_before": 0.0,
}  # fmt: skip
#: ``_state_row`` of such a task.
_FRESH_ROW = tuple({**_FRESH_STATE, "leases": "[]"}[column] for column in _STATE)


def _literal(value: object) -> str:
    """An SQL literal for a value the fresh state holds."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return repr(value)
    raise TypeError(f"no SQL literal for {value!r}")


_SPEC_MARKS = ", ".join("?" * len(_SPEC.split(", ")))
#: The values of one such row: its spec bound, its state as literals.
_FRESH_VALUES_ROW = f"({_SPEC_MARKS}, {', '.join(_literal(v) for v in _FRESH_ROW)})"
_INSERT_FRESH = f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES {_FRESH_VALUES_ROW}"


#: Sizes of the statements that write many rows of one kind at once, largest first: a
#: commit's rows go in as few of them as these sizes add up to, and the last few (fewer
#: than the smallest) one by one. One statement of many rows is one call into SQLite, one
#: binding of its values and one step, where ``executemany`` binds, steps and resets for
#: each row: 50 completion updates took a sixth less time (252 -> 211 us, alone). One
#: statement is made for each size, and kept in the connection's cache. The largest binds
#: fewer than 999 values, the most an SQLite older than 3.32 allows; one older than 3.33
#: has no ``UPDATE ... FROM``, and writes every row one by one.
_MANY_SIZES = (64, 16, 4) if sqlite3.sqlite_version_info >= (3, 33) else ()


@cache
def _insert_fresh_many(count: int) -> str:
    """``_INSERT_FRESH`` of ``count`` rows."""
    rows = ", ".join([_FRESH_VALUES_ROW] * count)
    return f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES {rows}"


@cache
def _update_many(count: int) -> str:
    """``_UPDATE`` of ``count`` rows, each ``_UPDATE``'s values: the state, then the seq,
    by which each finds its row (the rowid), as ``_UPDATE`` does."""
    row = f"({', '.join('?' * (len(_STATE) + 1))})"
    sets = ", ".join(f"{column} = v.column{i}" for i, column in enumerate(_STATE, 1))
    return (
        f"UPDATE tasks SET {sets} FROM (VALUES {', '.join([row] * count)}) AS v "
        f"WHERE tasks.seq = v.column{len(_STATE) + 1}"
    )


def _write_many(
    db: sqlite3.Connection,
    one: str,
    many: Callable[[int], str],
    rows: list[tuple[object, ...]],
) -> None:
    """Write ``rows`` with statements of ``_MANY_SIZES`` rows (``many(size)``), and the
    rest with ``one``, a row at a time."""
    start = 0
    for size in _MANY_SIZES:
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            db.execute(many(size), [value for row in chunk for value in row])
            start += size
    if start < len(rows):
        db.executemany(one, rows[start:])


@dataclass(slots=True)
class _Batch:
    """One commit's writes as plain rows."""

    #: Spec rows of new tasks whose state is ``_FRESH_ROW``.
    fresh: list[tuple[object, ...]] = field(default_factory=list)
    #: Whole rows of the other new tasks.
    inserts: list[tuple[object, ...]] = field(default_factory=list)
    updates: list[tuple[object, ...]] = field(default_factory=list)
    deletes: list[tuple[int]] = field(default_factory=list)
    #: Rows of ``dependencies`` to insert (new tasks that have some) and to delete.
    dependencies: list[tuple[str, int]] = field(default_factory=list)
    #: (Rows of the first come with ``fresh`` or ``inserts``, of the second with ``deletes``.)
    undepend: list[tuple[str, int]] = field(default_factory=list)
    #: The tasks inserted: marked ``stored`` once the rows are committed.
    new: list[Task] = field(default_factory=list)
    #: Rows of the workers to write whole, when the others were last seen, and ids of those
    #: to delete.
    workers: list[tuple[object, ...]] = field(default_factory=list)
    seen: list[tuple[float, int, str]] = field(default_factory=list)
    forgotten: list[tuple[str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.fresh or self.inserts or self.updates or self.deletes or self.workers
            or self.seen or self.forgotten
        )  # fmt: skip


def _prepare(tasks: Iterable[Task], deleted: Sequence[Task] = ()) -> _Batch:
    """The rows that store these changes: new tasks whole, known ones by their state only.

    Marks nothing: the new tasks are marked stored once their rows are committed
    (``_write``), so that a failed commit leaves them as they were.
    """
    batch = _Batch(deletes=[(task.seq,) for task in deleted])
    for task in deleted:
        if task.dependencies:
            batch.undepend += _dependency_rows(task.dependencies, task.seq)
    for task in tasks:
        state = _state_row(task)
        if task.stored:
            batch.updates.append((*state, task.seq))
        else:
            if state == _FRESH_ROW:
                batch.fresh.append(_spec_row(task))
            else:
                batch.inserts.append(_spec_row(task) + state)
            batch.new.append(task)
            if task.dependencies:
                batch.dependencies += _dependency_rows(task.dependencies, task.seq)
    return batch


def _dependency_rows(dependencies: Iterable[str], seq: int) -> list[tuple[str, int]]:
    """The rows of ``dependencies`` of the task ``seq`` (a task may name one twice)."""
    return [(dep_id, seq) for dep_id in dict.fromkeys(dependencies)]


def _json(value: Any) -> str:
    # Most tasks have no dependencies, tags, resources or leases: skip the encoder for those.
    return json.dumps(value) if value else "[]"


def _leases_json(leases: list[Lease]) -> str:
    """``json.dumps([lease.to_row() for lease in leases])``, written out by hand.

    Every state write of a task that ran stores its leases, and the generic encoder was
    a tenth of the broker's time under load; this one takes about half as long.
    """
    if not leases:
        return "[]"
    return "[" + ",".join([_lease_json(lease) for lease in leases]) + "]"


def _lease_json(lease: Lease) -> str:
    tail = "]" if lease.traceback is None else f",{_text(lease.traceback)}]"
    return (
        f"[{lease.attempt:d},{_text(lease.worker_id)},{_number(lease.started_at)},"
        f"{_number(lease.ended_at)},{_text(lease.outcome)},{_text(lease.error)},"
        f"{_text(lease.refused)}{tail}"
    )


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _number(value: float | None) -> str:
    if value is None:
        return "null"
    return repr(value) if math.isfinite(value) else json.dumps(value)


def _spec_row(task: Task) -> tuple[object, ...]:
    return (
        task.seq,
        task.id,
        task.name,
        task.handler,
        task.args,
        _json(task.dependencies),
        task.priority,
        task.max_retries,
        task.timeout,
        _json(task.requires),
        _json(task.resources),
        task.created_at,
        task.idempotency_key,
    )


def _state_row(task: Task) -> tuple[object, ...]:
    return (
        task.status.value,
        task.worker_id,
        task.attempts,
        task.failures,
        task.lost,
        task.result,
        task.error,
        task.started_at,
        task.completed_at,
        task.not_before,
        _leases_json(task.leases),
    )


_STATUSES = {status.value: status for status in TaskStatus}


# The columns in the order of ``Task``'s fields, so that ``_task`` builds it positionally.
_LOAD = (
    "id, seq, name, handler, args, dependencies, priority, max_retries, timeout, requires, "
    "resources, created_at, status, worker_id, attempts, failures, lost, result, error, "
    "started_at, completed_at, not_before, idempotency_key, leases"
)


# A task not leased since it was submitted has every state column at its default
# (``_FRESH_STATE``), so only its spec is read: the columns a restart converts are about
# halved for a backlog.
_FRESH_VALUES = tuple(_FRESH_STATE.values())
#: Whether a row is such a task; bound to ``_FRESH_VALUES`` (``IS`` also matches NULL).
_FRESH = " AND ".join(f"{column} IS ?" for column in _FRESH_STATE) + " AND leases = '[]'"
_LOAD_FRESH = ", ".join(
    column for column in _LOAD.split(", ") if column not in _FRESH_STATE and column != "leases"
)
#: Columns read back as NULL when they hold their usual value: SQLite compares for free,
#: and every task is spared a string object per column (reading a million pending tasks
#: took a fifth less time), and shares its name with its handler as it did when submitted.
_READ_AS = {
    "name": "NULLIF(name, handler)",
    "dependencies": "NULLIF(dependencies, '[]')",
    "requires": "NULLIF(requires, '[]')",
    "resources": "NULLIF(resources, '[]')",
    "leases": "NULLIF(leases, '[]')",
}


_FINISHED = f"status IN ({', '.join(_literal(s.value) for s in sorted(FINAL_STATUSES))})"
#: A row's ``Task.size``, about, from the lengths of its values (which SQLite knows without
#: reading them): the allowance for the record, args, name, error, result and the JSON of
#: dependencies and leases.
_SIZE = (
    f"{RECORD_BYTES} + length(args) + length(name) + IFNULL(length(error), 0) "
    "+ IFNULL(length(result), 0) + length(dependencies) + length(leases)"
)


def _select(columns: str) -> str:
    return ", ".join(_READ_AS.get(column, column) for column in columns.split(", "))


#: Every stored column of a task, as ``_task`` reads them.
_SELECT_LOAD = _select(_LOAD)


#: ``_FRESH_STATE`` as a task holds it, in ``Task``'s field order.
_FRESH_FIELDS = cast(
    tuple[TaskStatus, None, int, int, int, None, None, None, None, float],
    tuple({**_FRESH_STATE, "status": _STATUSES[str(_FRESH_STATE["status"])]}.values()),
)


def _fresh_task(row: Any) -> Task:
    """``_task`` for a row of ``_LOAD_FRESH``: its state columns hold ``_FRESH_STATE``, so
    it is built from its spec alone, without going through ``_task``."""
    (
        id_, seq, name, handler, args, deps, priority, max_retries, timeout, requires,
        resources, created_at, idempotency_key,
    ) = row  # fmt: skip
    handler = sys.intern(handler)
    return Task(
        id_, seq, handler if name is None else name, handler, args,
        [] if deps is None else json.loads(deps), priority, max_retries, timeout,
        () if requires is None else _tags(requires),
        () if resources is None else _resource_key(resources),
        created_at, *_FRESH_FIELDS, idempotency_key, [], 0, False, True,
    )  # fmt: skip


def _task(row: Any) -> Task:
    # This runs once per task at every restart, a million times for a million tasks:
    # SQLite gives back the types it was given (the columns' affinities match them), so
    # values are used as they come, and the task is built positionally (``_LOAD``). A
    # column of ``_READ_AS`` is NULL (None) for its usual value, or holds it as stored.
    (
        id_, seq, name, handler, args, deps, priority, max_retries, timeout, requires,
        resources, created_at, status, worker_id, attempts, failures, lost, result, error,
        started_at, completed_at, not_before, idempotency_key, leases,
    ) = row  # fmt: skip
    handler = sys.intern(handler)  # a million tasks, a handful of handlers
    return Task(
        id_, seq, handler if name is None else name, handler, args,
        [] if deps is None or deps == "[]" else json.loads(deps),
        priority, max_retries, timeout,
        () if requires is None or requires == "[]" else _tags(requires),
        () if resources is None or resources == "[]" else _resource_key(resources),
        created_at, _STATUSES[status], worker_id, attempts, failures, lost, result, error,
        started_at, completed_at, not_before, idempotency_key,
        [] if leases is None or leases == "[]"
        else [Lease.from_row(lease) for lease in json.loads(leases)],
        0, False, True,
    )  # fmt: skip


def _tags(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _resource_key(text: str) -> ResourceKey:
    return tuple((kind, amount) for kind, amount in json.loads(text))


_WORKER_COLUMNS = "id, kind, capabilities, resources, slots, host, pid, last_seen, tags, drained"
_WORKER_UPSERT = (
    f"INSERT OR REPLACE INTO workers ({_WORKER_COLUMNS}) VALUES ({', '.join('?' * 10)})"
)


def _worker_row(worker: Worker) -> tuple[object, ...]:
    return (
        worker.id,
        worker.kind.value,
        json.dumps(sorted(worker.capabilities)),
        json.dumps(worker.resources),
        worker.slots,
        worker.host,
        worker.pid,
        worker.last_seen,
        json.dumps(sorted(worker.tags)),
        int(worker.drained),
    )


def _worker(row: Any) -> Worker:
    worker_id, kind, capabilities, resources_json, slots, host, pid, last_seen, tags, drained = row
    resources = {str(k): float(v) for k, v in json.loads(resources_json).items()}
    return Worker(
        worker_id, WorkerKind(kind), frozenset(json.loads(capabilities)), resources, slots,
        last_seen, host=host, pid=pid, status=WorkerStatus.OFFLINE, free=dict(resources),
        tags=frozenset(json.loads(tags)), drained=bool(drained),
    )  # fmt: skip


_DELETE = "DELETE FROM tasks WHERE seq = ?"
# A task's dependencies are its spec: their rows are written with its INSERT and deleted
# with it, by primary key (the task's list names them), and only for a task that has some:
# a task without dependencies writes and deletes exactly what it did before they existed.
_DEPENDENCY_INSERT = "INSERT OR IGNORE INTO dependencies (dep_id, task_seq) VALUES (?, ?)"
_DEPENDENCY_DELETE = "DELETE FROM dependencies WHERE dep_id = ? AND task_seq = ?"
#: The rows of ``dependencies`` of the tasks a store made before the table (schema 5 and
#: older), from their own lists: once, when it is upgraded.
_FILL_DEPENDENCIES = (
    "INSERT OR IGNORE INTO dependencies (dep_id, task_seq) "
    "SELECT each.value, tasks.seq FROM tasks, json_each(tasks.dependencies) AS each "
    "WHERE tasks.dependencies != '[]'"
)
_WORKER_SEEN = "UPDATE workers SET last_seen = ?, drained = ? WHERE id = ?"
_WORKER_DELETE = "DELETE FROM workers WHERE id = ?"

#: Tasks read by one query by seq (SQLite allows 999 bound parameters in older builds).
_READ_CHUNK = 500


def _undepend(db: sqlite3.Connection, deleted: list[tuple[int, str | None]]) -> None:
    """Delete the rows of ``dependencies`` of these tasks, deleted: (seq, the JSON of their
    dependencies, None for none)."""
    rows = [
        row
        for seq, deps in deleted
        if deps is not None
        for row in _dependency_rows(json.loads(deps), seq)
    ]
    if rows:
        db.executemany(_DEPENDENCY_DELETE, rows)


class SqliteStore:
    """Tasks in one SQLite file. Not thread-safe: the broker loop owns it."""

    def __init__(self, path: str, sync: str = "full") -> None:
        if sync.lower() not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        #: Worker id -> the registration whose row was written whole (``Worker.registration``).
        self._registrations: dict[str, int] = {}
        # Before SQLite opens the file: a second broker must not read, let alone write, it.
        self._lock = _lock.acquire(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
        except BaseException:
            self._lock.release()
            raise
        try:
            self._open(sync)
        except BaseException:
            self.close()
            raise

    def _open(self, sync: str) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={sync.upper()}")
        # One transaction, the tables' making included (``executescript`` commits nothing
        # with ``isolation_level=None``): an upgrade cut short leaves the store as it was,
        # and a store of a version refused is left untouched.
        db.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] in _UPGRADES_FROM:
                self._add_columns()
                db.execute(_FILL_DEPENDENCIES)
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: store schema {row[0]}, this broker needs {SCHEMA_VERSION}"
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _add_columns(self) -> None:
        """Add the columns of ``_ADDED_COLUMNS`` that a store being upgraded lacks."""
        for table, column, declaration in _ADDED_COLUMNS:
            present = {info[1] for info in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def load(self) -> list[Task]:
        """Every unfinished task, in no particular order (the two reads see one snapshot)."""
        db = self._db
        db.execute("BEGIN")
        try:
            tasks = [
                _fresh_task(row)
                for row in db.execute(
                    f"SELECT {_select(_LOAD_FRESH)} FROM tasks WHERE {_FRESH}", _FRESH_VALUES
                )
            ]
            tasks += [
                _task(row)
                for row in db.execute(
                    f"SELECT {_SELECT_LOAD} FROM tasks WHERE NOT ({_FRESH}) AND NOT {_FINISHED}",
                    _FRESH_VALUES,
                )
            ]
        finally:
            db.execute("COMMIT")
        return tasks

    def summary(self) -> StoreSummary:
        db = self._db
        counts = db.execute(
            f"SELECT status, COUNT(*) FROM tasks WHERE {_FINISHED} GROUP BY status"
        ).fetchall()
        (highest,) = db.execute("SELECT MAX(seq) FROM tasks").fetchone()
        return StoreSummary(
            {_STATUSES[status]: count for status, count in counts}, (highest or 0) + 1
        )

    def find(self, task_id: str) -> Task | None:
        row = self._db.execute(f"SELECT {_SELECT_LOAD} FROM tasks WHERE id = ?", (task_id,))
        found = row.fetchone()
        return None if found is None else _task(found)

    def find_many(self, task_ids: list[str]) -> dict[str, Task]:
        found: dict[str, Task] = {}
        for start in range(0, len(task_ids), _IDS_A_QUERY):
            chunk = task_ids[start : start + _IDS_A_QUERY]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT {_SELECT_LOAD} FROM tasks WHERE id IN ({marks})", chunk
            )
            for row in rows:
                task = _task(row)
                found[task.id] = task
        return found

    def find_key(self, key: str) -> Task | None:
        row = self._db.execute(
            f"SELECT {_SELECT_LOAD} FROM tasks WHERE idempotency_key = ?", (key,)
        ).fetchone()
        return None if row is None else _task(row)

    def finished_page(
        self,
        status: TaskStatus | None,
        handler: str | None,
        after: int,
        limit: int,
        max_bytes: int,
    ) -> list[Task]:
        # The status as a literal: SQLite uses a partial index (failed, cancelled) only when
        # the query's terms prove its condition, which a bound value does not.
        if status is not None and status not in FINAL_STATUSES:
            return []
        where = _FINISHED if status is None else f"status = {_literal(status.value)}"
        params: list[object] = []
        if handler is not None:
            where += " AND handler = ?"
            params.append(handler)
        # Sizes first (SQLite's length() of a value does not read it), then the rows that fit.
        sizes = self._db.execute(
            f"SELECT seq, {_SIZE} FROM tasks WHERE {where} AND seq > ? ORDER BY seq LIMIT ?",
            (*params, after, limit),
        )
        seqs: list[int] = []
        total = 0
        for seq, size in sizes:
            total += size
            if total > max_bytes and seqs:
                break
            seqs.append(seq)
        tasks: list[Task] = []
        for start in range(0, len(seqs), _READ_CHUNK):
            chunk = seqs[start : start + _READ_CHUNK]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT {_SELECT_LOAD} FROM tasks WHERE seq IN ({marks}) ORDER BY seq"
            tasks += [_task(row) for row in self._db.execute(query, chunk)]
        return tasks

    def prune(
        self, before: float, excess: int, limit: int, keep: Collection[str] = ()
    ) -> list[tuple[str, TaskStatus]]:
        db = self._db
        db.execute("BEGIN")
        try:
            # Oldest completion first, by the completion index: those past ``before``, and
            # as many more as ``excess`` asks for.
            # Without an excess, only the rows past ``before`` are read.
            horizon = "" if excess else "AND completed_at <= ? "
            rows = db.execute(
                f"SELECT seq, id, status, completed_at, NULLIF(dependencies, '[]') FROM tasks "
                f"WHERE completed_at IS NOT NULL {horizon}AND {_FINISHED} "
                f"ORDER BY completed_at LIMIT ?",
                (limit,) if excess else (before, limit),
            ).fetchall()
            doomed = [
                (seq, task_id, status, deps)
                for i, (seq, task_id, status, completed_at, deps) in enumerate(rows)
                if (completed_at <= before or i < excess) and task_id not in keep
            ]
            db.executemany("DELETE FROM tasks WHERE seq = ?", [(row[0],) for row in doomed])
            _undepend(db, [(seq, deps) for seq, _, _, deps in doomed])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return [(task_id, _STATUSES[status]) for _, task_id, status, _ in doomed]

    def dependents(self, task_id: str, limit: int) -> list[str]:
        # A range of the primary key of ``dependencies``, which is in seq order already.
        rows = self._db.execute(
            "SELECT tasks.id FROM dependencies JOIN tasks ON tasks.seq = dependencies.task_seq "
            "WHERE dependencies.dep_id = ? ORDER BY dependencies.task_seq LIMIT ?",
            (task_id, limit),
        )
        return [task_id for (task_id,) in rows]

    def failed_by(self, task_id: str) -> list[Task]:
        # A range of the error index: those that start with the prefix (' ' + 1 is '!').
        prefix = f"dependency {task_id} "
        rows = self._db.execute(
            f"SELECT {_SELECT_LOAD} FROM tasks WHERE status = 'failed' "
            "AND error >= ? AND error < ? ORDER BY seq",
            (prefix, prefix[:-1] + "!"),
        )
        return [_task(row) for row in rows]

    def purge(
        self, status: TaskStatus, before: float | None, limit: int, keep: Collection[str] = ()
    ) -> tuple[list[tuple[str, TaskStatus]], bool]:
        if status not in FINAL_STATUSES:
            return [], False
        # The status as a literal, so that the partial index of failed or cancelled tasks
        # serves (``finished_page``); in seq order, which the primary key gives completed.
        where = f"status = {_literal(status.value)} AND completed_at IS NOT NULL"
        params: list[object] = []
        if before is not None:
            where += " AND completed_at < ?"
            params.append(before)
        db = self._db
        db.execute("BEGIN")
        try:
            rows = db.execute(
                f"SELECT seq, id, NULLIF(dependencies, '[]') FROM tasks WHERE {where} "
                "ORDER BY seq LIMIT ?",
                (*params, limit),
            ).fetchall()
            doomed = [row for row in rows if row[1] not in keep]
            db.executemany("DELETE FROM tasks WHERE seq = ?", [(row[0],) for row in doomed])
            _undepend(db, [(seq, deps) for seq, _, deps in doomed])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return [(task_id, status) for _, task_id, _ in doomed], len(rows) == limit

    def load_workers(self) -> list[Worker]:
        """Every stored worker, offline."""
        workers = [
            _worker(row) for row in self._db.execute(f"SELECT {_WORKER_COLUMNS} FROM workers")
        ]
        self._registrations = {worker.id: worker.registration for worker in workers}
        return workers

    def save(
        self,
        changed: Iterable[Task],
        deleted: Sequence[Task] = (),
        *,
        workers: Iterable[Worker] = (),
        forgotten: Sequence[str] = (),
    ) -> None:
        """Commit these changes in one transaction (one fsync)."""
        batch = _prepare(changed, deleted)
        written = self._registrations
        whole: dict[str, int] = {}
        for worker in workers:
            if written.get(worker.id) == worker.registration:
                # Only when it was last seen and its drain changed: its capabilities,
                # possibly thousands of names, are not written again.
                batch.seen.append((worker.last_seen, int(worker.drained), worker.id))
            else:
                batch.workers.append(_worker_row(worker))
                whole[worker.id] = worker.registration
        batch.forgotten = [(worker_id,) for worker_id in forgotten]
        self._write(batch)
        written.update(whole)
        for worker_id in forgotten:
            written.pop(worker_id, None)

    def _write(self, batch: _Batch) -> None:
        """Commit these rows in one transaction (one fsync)."""
        if not batch:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            # Only the statements that have rows: a turn of one task writes one or two
            # kinds, and each statement run, even with no rows, costs a call into SQLite.
            if batch.fresh:
                _write_many(db, _INSERT_FRESH, _insert_fresh_many, batch.fresh)
            if batch.inserts:
                db.executemany(_INSERT, batch.inserts)
            if batch.updates:
                _write_many(db, _UPDATE, _update_many, batch.updates)
            for statement, rows in (
                (_DELETE, batch.deletes),
                (_DEPENDENCY_INSERT, batch.dependencies),
                (_DEPENDENCY_DELETE, batch.undepend),
                (_WORKER_UPSERT, batch.workers),
                (_WORKER_SEEN, batch.seen),
                (_WORKER_DELETE, batch.forgotten),
            ):
                if rows:
                    db.executemany(statement, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        for task in batch.new:
            task.stored = True

    def close(self) -> None:
        self._db.close()
        self._lock.release()


#: The scheme of an SQLite store's location as a URL: ``sqlite:///var/x.db`` is /var/x.db.
_URL = "sqlite://"


def open(location: str, sync: str) -> Store:
    """The SQLite store at this path (or ``sqlite://`` and the path): the backend's opener,
    which ``broker.store.open_store`` calls."""
    return SqliteStore(location.removeprefix(_URL), sync)
