"""The in-memory store: SQLite's semantics with nothing durable, for tests (``memory:``).

It keeps a copy of each task as last saved, by seq, sharing nothing mutable with the
task: a change the core makes afterwards is not stored until the task is saved again, as
with a row. ``load`` gives new objects, unfinished tasks only, as SQLite gives them, so
that a test of the core restarts it as the broker restarts; finished ones are read as
new objects too. It must never hand out, or keep, an object the core also holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import fields, replace
from operator import attrgetter
from typing import Any

from broker.state import Lease, Task, Worker
from broker.store import Store, StoreSummary
from common.models import FINAL_STATUSES, TaskStatus, WorkerStatus

#: Fields of a task that the core derives from the others (at a load), or that belong
#: to the store: never stored.
_DERIVED = ("waiting_on", "queued", "stored")
#: Every stored field of a task.
_STORED = tuple(f.name for f in fields(Task) if f.name not in _DERIVED)
#: The fields that change after a task is submitted: the only ones saved again once it is
#: stored (the others are its spec, which never changes).
_STATE = (
    "status", "worker_id", "attempts", "failures", "lost", "result", "error", "started_at",
    "completed_at", "not_before", "leases",
)  # fmt: skip


def _leases(leases: list[Lease]) -> list[Lease]:
    return [replace(lease) for lease in leases]


#: How the fields holding mutable values are copied (the others are immutable).
_COPY: dict[str, Callable[[Any], Any]] = {"dependencies": list, "leases": _leases}


def _copy(source: Task, target: Task, names: Iterable[str]) -> None:
    """Set these fields of ``target`` to copies of ``source``'s."""
    for name in names:
        value = getattr(source, name)
        copy = _COPY.get(name)
        setattr(target, name, value if copy is None else copy(value))


def _worker_copy(worker: Worker) -> Worker:
    """A new, offline worker holding a copy of what a store keeps of this one."""
    return Worker(
        worker.id, worker.kind, frozenset(worker.capabilities), dict(worker.resources),
        worker.slots, worker.last_seen, host=worker.host, pid=worker.pid,
        status=WorkerStatus.OFFLINE, free=dict(worker.resources), tags=frozenset(worker.tags),
        drained=worker.drained,
    )  # fmt: skip


def _whole(task: Task) -> Task:
    """A new task holding a copy of every stored field of this one."""
    copy = Task(
        task.id, task.seq, task.name, task.handler, task.args, [], 0, 0, None, (), (), 0.0,
        stored=True,
    )  # fmt: skip
    _copy(task, copy, _STORED)
    return copy


class MemoryStore:
    """Tasks in a dict. Not thread-safe, as the other stores."""

    def __init__(self) -> None:
        #: A copy of each task saved and not deleted, by seq, as it was last saved.
        self.tasks: dict[int, Task] = {}
        #: A copy of each worker saved and not forgotten, by id, as it was last saved.
        self.workers: dict[str, Worker] = {}
        #: Task id -> the seqs of the saved tasks that name it among their dependencies.
        self.by_dependency: dict[str, set[int]] = {}

    def load(self) -> list[Task]:
        """As ``SqliteStore.load``: unfinished tasks (here in seq order)."""
        return [
            _whole(held)
            for held in (self.tasks[seq] for seq in sorted(self.tasks))
            if held.status not in FINAL_STATUSES
        ]

    def summary(self) -> StoreSummary:
        finished = Counter(t.status for t in self.tasks.values() if t.status in FINAL_STATUSES)
        return StoreSummary(dict(finished), max(self.tasks, default=0) + 1)

    def find(self, task_id: str) -> Task | None:
        held = next((t for t in self.tasks.values() if t.id == task_id), None)
        return None if held is None else _whole(held)

    def find_many(self, task_ids: list[str]) -> dict[str, Task]:
        wanted = set(task_ids)
        return {t.id: _whole(t) for t in self.tasks.values() if t.id in wanted}

    def find_key(self, key: str) -> Task | None:
        held = next((t for t in self.tasks.values() if t.idempotency_key == key), None)
        return None if held is None else _whole(held)

    def finished_page(
        self,
        status: TaskStatus | None,
        handler: str | None,
        after: int,
        limit: int,
        max_bytes: int,
    ) -> list[Task]:
        page: list[Task] = []
        size = 0
        for seq in sorted(self.tasks):
            held = self.tasks[seq]
            if seq <= after or held.status not in FINAL_STATUSES:
                continue
            if (status is None or held.status is status) and handler in (None, held.handler):
                size += held.size()
                if len(page) == limit or (size > max_bytes and page):
                    break
                page.append(_whole(held))
        return page

    def prune(
        self, before: float, excess: int, limit: int, keep: Collection[str] = ()
    ) -> list[tuple[str, TaskStatus]]:
        finished = sorted(
            (t for t in self.tasks.values() if t.status in FINAL_STATUSES and t.completed_at),
            key=lambda t: t.completed_at or 0.0,
        )[:limit]
        doomed = [
            t
            for i, t in enumerate(finished)
            if ((t.completed_at or 0.0) <= before or i < excess) and t.id not in keep
        ]
        for task in doomed:
            self._delete(task.seq)
        return [(task.id, task.status) for task in doomed]

    def dependents(self, task_id: str, limit: int) -> list[str]:
        seqs = sorted(self.by_dependency.get(task_id, ()))[:limit]
        return [self.tasks[seq].id for seq in seqs]

    def _delete(self, seq: int) -> None:
        """Delete the task ``seq``, if held, and its entries in ``by_dependency``."""
        held = self.tasks.pop(seq, None)
        if held is None or not held.dependencies:
            return
        for dep_id in held.dependencies:
            seqs = self.by_dependency.get(dep_id)
            if seqs is not None:
                seqs.discard(seq)
                if not seqs:
                    del self.by_dependency[dep_id]

    def failed_by(self, task_id: str) -> list[Task]:
        prefix = f"dependency {task_id} "
        return [
            _whole(held)
            for held in (self.tasks[seq] for seq in sorted(self.tasks))
            if held.status is TaskStatus.FAILED and (held.error or "").startswith(prefix)
        ]

    def purge(
        self, status: TaskStatus, before: float | None, limit: int, keep: Collection[str] = ()
    ) -> tuple[list[tuple[str, TaskStatus]], bool]:
        candidates = sorted(
            (
                t
                for t in self.tasks.values()
                if t.status is status
                and t.completed_at is not None
                and (before is None or t.completed_at < before)
            ),
            key=attrgetter("seq"),
        )[:limit]
        doomed = [t for t in candidates if t.id not in keep]
        for task in doomed:
            self._delete(task.seq)
        return [(task.id, task.status) for task in doomed], len(candidates) == limit

    def load_workers(self) -> list[Worker]:
        """As ``SqliteStore.load_workers``: new objects, offline."""
        return [_worker_copy(held) for held in self.workers.values()]

    def save(
        self,
        changed: Iterable[Task],
        deleted: Sequence[Task] = (),
        *,
        workers: Iterable[Worker] = (),
        forgotten: Sequence[str] = (),
    ) -> None:
        tasks = list(changed)
        new = []
        for task in tasks:
            if not task.stored:
                self.tasks[task.seq] = _whole(task)
                new.append(task)
                for dep_id in task.dependencies:
                    self.by_dependency.setdefault(dep_id, set()).add(task.seq)
            elif (held := self.tasks.get(task.seq)) is not None:  # else deleted: as SQLite's
                _copy(task, held, _STATE)  # UPDATE of a row no longer there, nothing
        for task in deleted:
            self._delete(task.seq)
        for worker in workers:
            self.workers[worker.id] = _worker_copy(worker)
        for worker_id in forgotten:
            self.workers.pop(worker_id, None)
        for task in new:
            task.stored = True

    def close(self) -> None:
        pass


def open(location: str, sync: str) -> Store:
    """A new, empty store, whatever the location (``memory:``) and sync mode: the backend's
    opener, which ``broker.store.open_store`` calls."""
    return MemoryStore()
