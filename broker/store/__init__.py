"""Durable task state behind one small interface, and the choice of its backend.

The broker hands its store the tasks that changed since the last commit, and those it
pruned, with the workers that registered or went offline and those it forgot, once per
loop turn (``Store.save``), and acknowledges nothing before that call returns; at a start
it reads them all back (``Store.load``, ``Store.load_workers``). The store speaks in
``broker.state.Task``, ``Lease`` and ``Worker`` only: how a backend encodes them (SQLite's
rows, say) stays private to its module, and no other module may depend on it.

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
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from broker.state import Task, Worker

__all__ = ["MEMORY", "Store", "StoreInUse", "open_store"]

#: The location of a store that keeps nothing beyond its process (tests).
MEMORY = "memory:"
#: A location that starts with a scheme (RFC 3986), which names the backend's module.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class StoreInUse(RuntimeError):
    """The store is open in another process (another broker): raised by a backend's
    ``open``, naming who holds it."""


class Store(Protocol):
    """What the broker needs of its durable state.

    Two flags of ``Task`` belong to the store. ``stored``: the store holds the task
    already; its spec (id to created_at, and idempotency_key) never changes after it is
    submitted, so a backend may write it only while the flag is False, and the state alone
    after. ``save`` sets it. ``cold``: only the fields the core indexes a finished task by
    are in memory (id, seq, handler, status, completed_at, idempotency_key), the others
    hold placeholders until ``warm`` reads them. A store is used from one thread, the
    broker loop's.
    """

    def load(self) -> list[Task]:
        """Every task saved and not deleted, as new objects, in no particular order, each
        marked ``stored``: a finished one (``common.models.FINAL_STATUSES``) cold or whole
        (the backend's choice), any other whole. What the core derives (``waiting_on``,
        ``queued``) is left at its default."""

    def load_workers(self) -> list[Worker]:
        """Every worker saved and not forgotten, as new objects: its id, kind,
        capabilities, resources, slots, host, pid and when it was last seen. Whether it is
        online is not stored: after a restart every worker is offline until it speaks."""

    def warm(self, tasks: Sequence[Task]) -> None:
        """Read the rest of the cold ones among these tasks into them, and mark them warm.

        Raises RuntimeError, naming them, if some are not in the store; the others are
        warmed all the same.
        """

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
        changed only its ``last_seen``: a backend may write only that.

        Once it returns, a crash of the process (or, as the backend's ``sync`` allows, of
        the machine) loses none of it; what is saved is a copy, which later changes to the
        tasks do not touch until they are saved again. If it raises, nothing of this call
        is kept and the tasks' ``stored`` flags are as they were; the broker stops then. A
        cold task among ``changed`` is a bug of its caller: refused (RuntimeError) before
        anything is written. Deleting a task the store no longer holds does nothing.
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
