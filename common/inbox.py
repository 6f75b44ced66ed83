"""The outcomes a client was sent unasked, kept until it asks for them.

The broker sends the outcome of each task a client submitted with ``notify`` once it is
final (``OUTCOME``); the client keeps it here, so that ``result`` of a finished task costs
no round trip. An ``Inbox`` keeps at most ``MAX_OUTCOMES`` outcomes and about
``MAX_OUTCOME_BYTES`` of their results and errors, oldest dropped first, and remembers
which tasks it was promised an outcome for: one dropped, or never sent (a restarted
broker), is asked for. It does no I/O: a client files here what its socket received.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

#: Outcomes sent to the client and not asked for yet that it keeps, at most.
MAX_OUTCOMES = 100_000
#: Bytes of results and errors of those outcomes it keeps, about, at most.
MAX_OUTCOME_BYTES = 64 * 1024 * 1024


class Inbox:
    """Outcomes sent unasked, by task id, and the tasks whose outcome is still to come."""

    __slots__ = ("_bytes", "_outcomes", "_watched", "max_bytes", "max_outcomes")

    def __init__(
        self, max_outcomes: int = MAX_OUTCOMES, max_bytes: int = MAX_OUTCOME_BYTES
    ) -> None:
        self.max_outcomes = max_outcomes
        self.max_bytes = max_bytes
        #: Outcomes not asked for yet, by task id (oldest first), and their bytes.
        self._outcomes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._bytes = 0
        #: Tasks whose outcome the broker was asked to send here, not come yet (oldest first).
        self._watched: OrderedDict[str, None] = OrderedDict()

    def watching(self, task_id: str) -> None:
        """The broker was asked to send this task's outcome here (it may have come before
        the reply that says so: a task submitted again under its key, final already)."""
        if task_id in self._outcomes:
            return
        self._watched[task_id] = None
        if len(self._watched) > self.max_outcomes:
            self._watched.popitem(last=False)  # asked for if it is wanted

    def watches(self, task_id: str) -> bool:
        """Whether this task's outcome is still to come."""
        return task_id in self._watched

    def answered(self, task_id: str) -> None:
        """This task's outcome came as the answer to a request: none is awaited any more."""
        self._watched.pop(task_id, None)

    def keep(self, outcome: dict[str, Any]) -> None:
        """File an outcome the broker sent (a brief record: ``{id, status, result, error}``)."""
        task_id = outcome["id"]
        self._watched.pop(task_id, None)
        if task_id in self._outcomes:
            return
        self._outcomes[task_id] = outcome
        self._bytes += _size(outcome)
        while len(self._outcomes) > self.max_outcomes or self._bytes > self.max_bytes:
            _, dropped = self._outcomes.popitem(last=False)
            self._bytes -= _size(dropped)

    def drop_unsuccessful(self) -> None:
        """Forget the outcomes kept of tasks that failed or were cancelled: a retry may have
        made them pending again (the broker sent every one of them before its reply)."""
        for task_id in [i for i, o in self._outcomes.items() if o["status"] != "completed"]:
            self.take(task_id)

    def take(self, task_id: str) -> dict[str, Any] | None:
        """The outcome of this task if it came (taken: given once)."""
        outcome = self._outcomes.pop(task_id, None)
        if outcome is not None:
            self._bytes -= _size(outcome)
        return outcome


def _size(outcome: dict[str, Any]) -> int:
    return len(outcome["result"] or b"") + len(outcome["error"] or "") + 200
