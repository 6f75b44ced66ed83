"""Durable task state behind one small interface, and the choice of its backend.

The broker hands its store the tasks that changed since the last commit, and those it
pruned, with the workers that registered or went offline and those it forgot, once per
loop turn (``Store.save``), and acknowledges nothing before that call returns; at a start
it reads back the unfinished tasks and every worker (``Store.load``, ``Store.load_workers``).
Finished tasks live in the store, not in the broker's memory: it reads one when asked for
it (``find``, ``find_key``, ``finished_page``) and prunes them there (``prune``).

The store speaks in ``broker.state.Task``, ``Lease`` and ``Worker`` only: how a backend
encodes them (SQLite's rows, say) stays private to its module, and no other module may
depend on it.

A backend is a module of this package exposing ``open(location, sync) -> Store``;
``open_store`` finds it by the location's scheme, so adding one (``postgresql.py`` for
``postgresql://...``) is that module and nothing else. ``memory`` keeps tasks in the
process (tests); ``sqlite`` keeps them in a file, addressed by its path.

A store serves one broker at a time: a backend whose state outlives the process refuses
to open a store another process has open (``StoreInUse``), so a second broker started by
mistake stops before it reads a task instead of scheduling them twice.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from broker.state import Task, Worker
from common.models import TaskStatus

__all__ = ["MEMORY", "Store", "StoreInUse", "StoreSummary", "open_store"]

#: The location of a store that keeps nothing beyond its process (tests).
MEMORY = "memory:"
#: A location that starts with a scheme (RFC 3986), which names the backend's module.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True, slots=True)
class StoreSummary:
    """What a store holds beyond its unfinished tasks: ``Store.summary``."""

    #: Finished tasks by status.
    finished: dict[TaskStatus, int]
    #: The seq after the highest stored task's.
    next_seq: int


class StoreInUse(RuntimeError):
    """The store is open in another process (another broker): raised by a backend's
    ``open``, naming who holds it."""


class Store(Protocol):
    """What the broker needs of its durable state.

    One flag of ``Task`` belongs to the store, ``stored``: the store holds the task
    already; its spec (id to created_at, and idempotency_key) never changes after it is
    submitted, so a backend may write it only while the flag is False, and the state alone
    after. ``save`` sets it. A store is used from one thread, the broker loop's.
    """

    def load(self) -> list[Task]:
        """Every unfinished task saved (pending or running: not in
        ``common.models.FINAL_STATUSES``), whole, as new objects, in no particular order,
        each marked ``stored``. What the core derives (``waiting_on``, ``queued``) is left
        at its default. Finished tasks stay in the store: the core asks for them by id
        (``find``), key (``find_key``) or page (``finished_page``)."""

    def summary(self) -> StoreSummary:
        """How many finished tasks of each status the store holds, and the seq after the
        highest stored (1 for an empty store)."""

    def find(self, task_id: str) -> Task | None:
        """The stored task with this id, whole, as a new object (None if there is none)."""

    def find_many(self, task_ids: list[str]) -> dict[str, Task]:
        """The stored tasks with these ids, whole, as new objects, by id (an id not stored
        is missing): what ``find`` gives for each, in one read."""

    def find_key(self, key: str) -> Task | None:
        """The stored task that holds this idempotency key, whole (None if none does)."""

    def finished_page(
        self,
        status: TaskStatus | None,
        handler: str | None,
        after: int,
        limit: int,
        max_bytes: int,
    ) -> list[Task]:
        """Up to ``limit`` finished tasks, whole, of this status (any final one when None)
        and handler (any when None), with seq above ``after``, in increasing seq, cut
        before the one that brings their ``Task.size`` past ``max_bytes`` (the first one
        always in): a page of a status that is rare among millions of tasks is found
        without reading them all, and large tasks beyond the cut are not read."""

    def prune(
        self, before: float, excess: int, limit: int, keep: Collection[str] = ()
    ) -> list[tuple[str, TaskStatus]]:
        """Delete, in one transaction, up to ``limit`` finished tasks, oldest completion
        first: those completed at or before ``before``, and beyond them as many more as
        ``excess`` says (the finished tasks held beyond ``--max-finished``). Returns the id
        and status of each one deleted."""

    def dependents(self, task_id: str, limit: int) -> list[str]:
        """The ids of up to ``limit`` stored tasks that name ``task_id`` among their
        dependencies, finished or not, in seq order: found by an index of (dependency,
        dependent) that a backend writes with a task that has dependencies (and only then,
        so that a task without any costs nothing more), and deletes with that task."""

    def failed_by(self, task_id: str) -> list[Task]:
        """The stored tasks that failed because their dependency ``task_id`` ended badly
        (status failed, their error ``dependency <task_id> ...``), whole, in seq order: the
        dependents a retry of ``task_id`` runs again."""

    def purge(
        self, status: TaskStatus, before: float | None, limit: int, keep: Collection[str] = ()
    ) -> tuple[list[tuple[str, TaskStatus]], bool]:
        """Delete, in one transaction, up to ``limit`` finished tasks of ``status`` (a final
        one) that completed before ``before`` (any time when None), in seq order, but none
        whose id is in ``keep`` (tasks the broker changed and has not saved yet). Returns
        the id and status of each one deleted, and whether there may be more to delete
        (the limit was reached)."""

    def load_workers(self) -> list[Worker]:
        """Every worker saved and not forgotten, as new objects: its id, kind,
        capabilities, resources, slots, host, pid, when it was last seen and whether an
        admin drained it (``Worker.STORED``). Whether it is online is not stored: after a
        restart every worker is offline until it speaks."""

    def save(
        self,
        changed: Iterable[Task],
        deleted: Sequence[Task] = (),
        *,
        workers: Iterable[Worker] = (),
        forgotten: Sequence[str] = (),
    ) -> None:
        """Make these changes durable, all or none, before returning: every stored field
        of each changed task as it is now, the deleted tasks gone, every stored field of
        each of ``workers`` as it is now, and the workers of the ``forgotten`` ids gone.
        A worker saved with the ``registration`` it was last saved (or loaded) with has
        changed only its ``last_seen`` and ``drained``: a backend may write only those.

        Once it returns, a crash of the process (or, as the backend's ``sync`` allows, of
        the machine) loses none of it; what is saved is a copy, which later changes to the
        tasks do not touch until they are saved again. If it raises, nothing of this call
        is kept and the tasks' ``stored`` flags are as they were; the broker stops then.
        Deleting a task the store no longer holds does nothing.
        """

    def close(self) -> None:
        """Release what the store holds open, its lock included; it is not used again."""


def open_store(location: str, sync: str) -> Store:
    """The store at ``location``: ``memory:`` (nothing durable), ``scheme://...`` (the
    backend module of that name), or else the path of an SQLite file.

    ``sync`` is how durable a commit is (``full``: fsynced before ``save`` returns), as
    the backend understands it. Raises ValueError for a scheme no module serves, and
    ``StoreInUse`` when another process has the store open.
    """
    if location == MEMORY:
        backend = "memory"
    elif match := _SCHEME.match(location):
        backend = match.group(1).lower()
    else:
        backend = "sqlite"
    name = f"{__name__}.{backend}"
    if not backend.isidentifier() or importlib.util.find_spec(name) is None:
        raise ValueError(f"unknown store scheme {backend!r} in {location!r}: no module {name}")
    opener: Callable[[str, str], Store] = importlib.import_module(name).open
    return opener(location, sync)
