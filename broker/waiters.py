"""Deferred answers: requests the broker answers later, when tasks finish or time runs out.

- A ``wait`` (one task, answered with its record), a ``wait_many`` (answered with brief
  records of the final ones) or a submit with ``wait`` (answered with each task's record
  and whether the submit made it) is a ``Waiter``: answered once every task it waits for
  is final, or at its deadline, whichever comes first, and exactly once.
- A submit with ``notify`` makes its client a watcher of each task it made: the task's
  brief record is sent to it, unasked, once the task is final (at most
  ``MAX_WATCHERS`` clients a task; a client not listed still has ``wait``).
- An HTTP worker's long-poll is a token in the worker's ``polls`` (oldest first):
  answered with a task leased to it, or empty at its deadline, or empty when the worker
  goes offline.

Invariants, which ``broker.invariants`` checks: a waiter that is not done is listed under
every one of its tasks that is not final, and ``pending`` counts those; a done waiter is
under none it was answered for. Answers go out through the core's outbox, so they leave
after the commit of the turn that made them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.state import Task, Worker
from broker.timers import TimerKind, Timers
from common.models import FINAL_STATUSES

#: Most clients a task's outcome is sent to unasked (``watch``): a task submitted again
#: and again under one idempotency key holds no more than this.
MAX_WATCHERS = 4


@dataclass(slots=True, eq=False)
class Waiter:
    """A deferred ``wait`` (one task, full record), ``wait_many`` (brief records) or
    ``submit`` with ``wait`` (a full record for each task, with ``created``)."""

    token: object
    deadline: float
    task_ids: list[str]
    many: bool
    #: For a submit: whether each task was created by it (false: its idempotency key's).
    created: list[bool] | None = None
    #: Tasks still unfinished.
    pending: int = 0
    done: bool = False
    #: Its tasks that finished, as they did: answered from these, which the broker may no
    #: longer hold in memory by then.
    held: dict[str, Task | None] = field(default_factory=dict)


class Deferred:
    """Waiters by the tasks they wait for, and the long-polls of HTTP workers: every
    deferred answer, given through ``reply`` (the core's outbox) exactly once."""

    def __init__(
        self,
        find: Callable[[str], Task | None],
        timers: Timers,
        reply: Callable[[object, Any], None],
        show: Callable[[Task], dict[str, Any]],
        notice: Callable[[object, dict[str, Any]], None] | None = None,
    ) -> None:
        """``find(task_id)`` gives a task, from memory or the store (None: none such);
        ``reply(token, value)`` answers a deferred request; ``notice(token, brief)`` sends
        a watcher the outcome of a task."""
        self.find = find
        self.timers = timers
        self.reply = reply
        self.notice = notice or (lambda token, value: None)
        self.show = show
        #: Task id -> the waiters listed under it (a dict as an ordered set: a waiter that
        #: expires leaves each of its tasks' entries in O(1), however many wait there).
        self.by_task: dict[str, dict[Waiter, None]] = {}
        #: Task id -> the clients its brief record goes to once it is final (``watch``).
        self.watchers: dict[str, list[object]] = {}
        #: Client -> how many outcomes it still waits for (``watch``), for ``watched_by``.
        self.watching: dict[object, int] = {}

    # -- waits -----------------------------------------------------------------------

    def value_or_wait(self, waiter: Waiter, limit: float) -> Any | None:
        """The waiter's answer now, if it may not wait or every task is final; else None,
        and it is answered later."""
        self._hold_final(waiter)
        if limit == 0 or len(waiter.held) == len(set(waiter.task_ids)):
            return self._answer_of(waiter)
        self._list(waiter)
        return None

    def _hold_final(self, waiter: Waiter) -> None:
        """Hold the waiter's tasks that are final already (a task gone counts as final)."""
        held, find = waiter.held, self.find
        for task_id in waiter.task_ids:
            if task_id not in held:
                task = find(task_id)
                if task is None or task.status in FINAL_STATUSES:
                    held[task_id] = task

    def add(self, waiter: Waiter) -> None:
        """Wait for those of its tasks that are not final yet, until its deadline (a task
        named twice is waited for once)."""
        self._hold_final(waiter)
        self._list(waiter)

    def _list(self, waiter: Waiter) -> None:
        """List the waiter under each of its tasks it does not hold, and time it."""
        for task_id in waiter.task_ids:
            if task_id not in waiter.held:
                waiters = self.by_task.setdefault(task_id, {})
                if waiter not in waiters:
                    waiters[waiter] = None
                    waiter.pending += 1
        self.timers.add(waiter.deadline, TimerKind.WAIT, waiter)

    def watch(self, task_id: str, token: object) -> None:
        """Send the task's brief record to ``token`` once it is final: at once if it is,
        not at all if ``MAX_WATCHERS`` watch it already."""
        task = self.find(task_id)
        if task is None:
            return  # pruned: nothing to send
        if task.status in FINAL_STATUSES:
            self.notice(token, brief(task))
            return
        tokens = self.watchers.setdefault(task_id, [])
        if len(tokens) < MAX_WATCHERS:
            tokens.append(token)
            client = client_of(token)
            self.watching[client] = self.watching.get(client, 0) + 1

    def watched_by(self, client: object) -> int:
        """How many outcomes the client (a token's, ``client_of``) still waits for."""
        return self.watching.get(client, 0)

    def finished(self, task_id: str) -> None:
        """The task is final: send its outcome to its watchers and answer the waiters that
        now have every task they waited for."""
        task = self.find(task_id)
        tokens = self.watchers.pop(task_id, None)
        if tokens is not None:
            watching = self.watching
            for token in tokens:
                client = client_of(token)
                left = watching[client] - 1
                if left:
                    watching[client] = left
                else:
                    del watching[client]
            if task is not None:
                outcome = brief(task)
                for token in tokens:
                    self.notice(token, outcome)
        for waiter in self.by_task.pop(task_id, ()):
            if task is not None:
                waiter.held[task_id] = task
            waiter.pending -= 1
            if not waiter.done and waiter.pending == 0:
                self._answer(waiter)

    def expire(self, waiter: Waiter) -> None:
        """Its deadline came: answer it with what there is, unless it was answered."""
        if waiter.done:
            return
        task_ids = waiter.task_ids
        self._answer(waiter)
        for task_id in task_ids:
            waiters = self.by_task.get(task_id)
            if waiters is not None and waiter in waiters:
                del waiters[waiter]
                if not waiters:
                    del self.by_task[task_id]

    def _answer(self, waiter: Waiter) -> None:
        waiter.done = True
        self.reply(waiter.token, self._answer_of(waiter))
        # Its timer stays in the heap until its deadline (minutes, maybe): what it held goes
        # now, so that memory follows the requests waiting, not those answered.
        waiter.held = {}
        waiter.task_ids = []
        waiter.created = None

    def _answer_of(self, waiter: Waiter) -> Any:
        """Its answer: from the tasks it holds, the others as they are now."""
        found: dict[str, Task] = {}
        held, find = waiter.held, self.find
        for task_id in waiter.task_ids:
            task = held[task_id] if task_id in held else find(task_id)
            if task is not None:
                found[task_id] = task
        return answer(waiter, found, self.show)

    # -- HTTP workers' long-polls ------------------------------------------------------

    def open_poll(self, worker: Worker, token: object, deadline: float) -> None:
        """An HTTP worker asks for a task, to be answered by ``deadline``."""
        worker.polls[token] = deadline
        self.timers.add(deadline, TimerKind.POLL, worker, token)

    def answer_poll(self, worker: Worker, task: Task, now: float) -> None:
        """Answer the worker's oldest open poll with a task just leased to it."""
        token = next(iter(worker.polls))
        del worker.polls[token]
        worker.last_seen = now  # it was waiting on its poll until now
        self.reply(token, task.record())

    def poll_due(self, worker: Worker, token: object, now: float) -> None:
        """A poll's deadline came: answer it empty, unless it was answered."""
        if worker.polls.pop(token, None) is not None:
            worker.last_seen = now  # it was waiting on its poll until now
            self.reply(token, None)

    def drop_polls(self, worker: Worker) -> None:
        """The worker is offline: its open polls are answered empty."""
        for token in worker.polls:
            self.reply(token, None)
        worker.polls.clear()


def brief(task: Task) -> dict[str, Any]:
    """A final task as ``wait_many`` shows it."""
    return {"id": task.id, "status": task.status.value, "result": task.result, "error": task.error}


def answer(waiter: Waiter, tasks: dict[str, Task], show: Callable[[Task], dict[str, Any]]) -> Any:
    """What the waiter's request is answered with, now."""
    if not waiter.many:
        return show(tasks[waiter.task_ids[0]])
    if waiter.created is not None:
        records = []
        for task_id, created in zip(waiter.task_ids, waiter.created, strict=True):
            task = tasks.get(task_id)
            if task is not None:
                records.append({**show(task), "created": created})
        return {"tasks": records}
    briefs = []
    for task_id in waiter.task_ids:
        task = tasks.get(task_id)
        if task is not None and task.status in FINAL_STATUSES:
            briefs.append(brief(task))
    return {"tasks": briefs}


def client_of(token: object) -> object:
    """The client a token answers: the socket loop's tokens are (address, request)."""
    return token[0] if isinstance(token, tuple) else token
