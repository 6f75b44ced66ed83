"""Every task the broker knows, and the indexes that find them: by id, by status, by
idempotency key, in submission order, in order of completion.

``TaskIndex`` is the one place a task's status changes (``set_status``), so the counts
and the sets by status can never disagree with the tasks. Invariants, which
``broker.invariants`` checks:

- ``counts[s]`` is the number of known tasks whose status is ``s``, in memory or in the
  store (finished ones evicted from memory stay counted);
- ``by_status[s]`` (every status but completed) holds exactly the known tasks of status
  ``s``;
- ``by_key`` maps each key to the task in memory that holds it, and every key of a task
  in memory to that task;
- ``order`` holds every task in memory once, in increasing ``seq`` (and pruned or evicted
  ones until the next compaction);
- ``finished`` holds every finished task in memory (and pruned or evicted ones), oldest
  completion first;
- ``pending_by_shape[shape]`` is the number of pending tasks of that shape;
- ``active[handler, s]`` (``s`` pending or running) is the number of tasks of that
  handler and status.

Tasks the broker holds in memory are the unfinished ones and the most recently finished
(``evict_finished``); the others are in the store only. ``counts`` counts them all: a task
evicted stays counted, and one the store prunes is taken out (``forget``).

Nothing here decides anything about scheduling; ``list_page`` only reads.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import Counter, deque
from operator import attrgetter

from broker.queue import Shape
from broker.state import Task
from common.models import FINAL_STATUSES, TaskStatus
from common.ops import ListTasks

#: The statuses whose tasks ``TaskIndex.active`` counts by handler.
ACTIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})


class TaskIndex:
    """The known tasks and their indexes."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.counts: Counter[TaskStatus] = Counter()
        #: Tasks by status, for every status but completed (what most tasks end as): a page
        #: of a status that is rare among many tasks (the running ones, the failures) is
        #: taken from here instead of a scan of every task.
        self.by_status: dict[TaskStatus, set[Task]] = {
            status: set() for status in TaskStatus if status is not TaskStatus.COMPLETED
        }
        self.by_key: dict[str, Task] = {}
        #: Every task by seq, for listing; pruned ones stay until more than half are.
        self.order: list[Task] = []
        #: Finished tasks in order of completion, for pruning.
        self.finished: deque[Task] = deque()
        #: ``Task.size`` of the finished tasks in memory, together.
        self.finished_bytes = 0
        #: Pending tasks by shape: what ``/health`` counts as waiting for no worker at all.
        self.pending_by_shape: Counter[Shape] = Counter()
        #: Pending and running tasks by (handler, status): what ``stats`` shows by handler,
        #: kept as statuses change so that no call counts them.
        self.active: Counter[tuple[str, TaskStatus]] = Counter()
        self._dead_in_order = 0

    def load(self, tasks: list[Task]) -> None:
        """Index stored tasks (after a restart), sorted by seq."""
        self.tasks.update((task.id, task) for task in tasks)
        self.order.extend(tasks)
        self.counts.update(task.status for task in tasks)
        self.active.update((t.handler, t.status) for t in tasks if t.status in ACTIVE_STATUSES)
        self.by_key.update((t.idempotency_key, t) for t in tasks if t.idempotency_key is not None)
        # A million tasks at a restart: one pass, with the statuses most tasks have first.
        completed, pending = TaskStatus.COMPLETED, TaskStatus.PENDING
        add_pending = self.by_status[pending].add
        pending_by_shape = self.pending_by_shape
        finished: list[Task] = []
        for task in tasks:
            status = task.status
            if status is pending:
                add_pending(task)
                pending_by_shape[task.handler, task.requires, task.resources] += 1
            elif status is completed:
                finished.append(task)
            else:
                self.by_status[status].add(task)
                if status in FINAL_STATUSES:
                    finished.append(task)
        finished.sort(key=lambda t: t.completed_at or 0.0)
        self.finished.extend(finished)
        self.finished_bytes += sum(task.size() for task in finished)

    def add(self, task: Task) -> None:
        """A new task (status pending), after every task known so far."""
        self.tasks[task.id] = task
        self.order.append(task)
        self.counts[task.status] += 1
        bucket = self.by_status.get(task.status)
        if bucket is not None:
            bucket.add(task)
        if task.status is TaskStatus.PENDING:
            self.pending_by_shape[task.handler, task.requires, task.resources] += 1
            self.active[task.handler, TaskStatus.PENDING] += 1
        if task.idempotency_key is not None:
            self.by_key[task.idempotency_key] = task

    def restore(self, task: Task) -> None:
        """Bring back into memory a finished task read from the store (counted already),
        to change it (a retry)."""
        self.tasks[task.id] = task
        bisect.insort(self.order, task, key=attrgetter("seq"))
        bucket = self.by_status.get(task.status)
        if bucket is not None:
            bucket.add(task)
        if task.idempotency_key is not None:
            self.by_key[task.idempotency_key] = task
        self.finished.append(task)
        self.finished_bytes += task.size()

    def set_status(self, task: Task, status: TaskStatus) -> None:
        """Move a task to ``status`` (finished tasks join the completion order)."""
        # Written out, names bound once: this runs at least twice for every task that runs.
        counts, by_status = self.counts, self.by_status
        counts[task.status] -= 1
        bucket = by_status.get(task.status)
        if bucket is not None:
            bucket.discard(task)
        old = task.status
        if old is TaskStatus.PENDING:
            self.pending_by_shape[task.handler, task.requires, task.resources] -= 1
        elif old in FINAL_STATUSES:  # a retry: out of the finished ones' bytes
            self.finished_bytes -= task.size()
        if old in ACTIVE_STATUSES:
            self.active[task.handler, old] -= 1
        if status in ACTIVE_STATUSES:
            self.active[task.handler, status] += 1
        if status is TaskStatus.PENDING:
            self.pending_by_shape[task.handler, task.requires, task.resources] += 1
        counts[status] += 1
        bucket = by_status.get(status)
        if bucket is not None:
            bucket.add(task)
        task.status = status
        if status in FINAL_STATUSES:
            self.finished.append(task)
            self.finished_bytes += task.size()

    def evict(self, task: Task) -> None:
        """Forget a finished task that the store holds: it stays counted."""
        del self.tasks[task.id]
        if task.status in FINAL_STATUSES:
            self.finished_bytes -= task.size()
        bucket = self.by_status.get(task.status)
        if bucket is not None:
            bucket.discard(task)
        if task.idempotency_key is not None and self.by_key.get(task.idempotency_key) is task:
            del self.by_key[task.idempotency_key]
        self._dead(1)

    def evict_finished(self, keep: int, max_bytes: int) -> int:
        """Evict the finished tasks in memory, oldest completion first, beyond the ``keep``
        most recent or ``max_bytes`` of them; returns how many."""
        finished, tasks = self.finished, self.tasks
        evicted = 0
        while finished and (len(finished) > keep or self.finished_bytes > max_bytes):
            task = finished.popleft()
            if tasks.get(task.id) is task and task.status in FINAL_STATUSES:
                self.evict(task)
                evicted += 1
        return evicted

    def forget(self, task_id: str, status: TaskStatus) -> None:
        """The store pruned this finished task: uncounted, and out of memory if it was in."""
        task = self.tasks.get(task_id)
        if task is not None:
            self.evict(task)
        self.counts[status] -= 1

    def _dead(self, count: int) -> None:
        """``count`` tasks left ``order``'s live ones: compact it once half of it is dead."""
        self._dead_in_order += count
        if self._dead_in_order > len(self.order) // 2:
            self.order = [t for t in self.order if self.tasks.get(t.id) is t]
            self._dead_in_order = 0

    def prune(self, cutoff: float, limit: int) -> list[Task]:
        """Forget up to ``limit`` finished tasks completed at or before ``cutoff``."""
        pruned: list[Task] = []
        finished = self.finished
        while finished and len(pruned) < limit:
            task = finished[0]
            if (task.completed_at or 0.0) > cutoff:
                break
            finished.popleft()
            if self.tasks.get(task.id) is not task or task.status not in FINAL_STATUSES:
                continue
            self.forget(task.id, task.status)
            pruned.append(task)
        return pruned

    def page(self, query: ListTasks) -> tuple[list[Task], bool]:
        """Up to ``query.limit`` tasks in submission order after the cursor, filtered by
        status and handler, and whether there are more."""
        status, handler, limit, after = query.status, query.handler, query.limit, query.after
        bucket = self.by_status.get(status) if status is not None else None
        if bucket is not None and len(bucket) ** 2 < limit * len(self.tasks):
            # Few tasks have this status: picking the page from them costs about len(bucket);
            # a scan would pass about limit * len(tasks) / len(bucket) tasks to fill it.
            matching = (
                t for t in bucket if t.seq > after and (handler is None or t.handler == handler)
            )
            page = heapq.nsmallest(limit + 1, matching, key=attrgetter("seq"))
            more = len(page) > limit
            del page[limit:]
            return page, more
        return self._scan(status, handler, limit, after)

    def _scan(
        self, status: TaskStatus | None, handler: str | None, limit: int, after: int
    ) -> tuple[list[Task], bool]:
        """Up to ``limit`` matching tasks in submission order after ``after``, and whether
        there are more, found by walking every task from there."""
        start = bisect.bisect_right(self.order, after, key=lambda t: t.seq)
        page: list[Task] = []
        for task in itertools.islice(self.order, start, None):
            if self.tasks.get(task.id) is not task:
                continue  # pruned
            if status is not None and task.status is not status:
                continue
            if handler is not None and task.handler != handler:
                continue
            if len(page) == limit:
                return page, True
            page.append(task)
        return page, False

    def by_handler(self) -> dict[str, dict[str, int]]:
        """Pending and running tasks by handler: ``{handler: {status: n}}``, handlers with
        none left out (costs the number of handlers with such tasks, not of tasks)."""
        shown: dict[str, dict[str, int]] = {}
        empty = []
        for (handler, status), count in self.active.items():
            if count:
                shown.setdefault(handler, {"pending": 0, "running": 0})[status.value] = count
            else:
                empty.append((handler, status))
        for key in empty:  # handlers seen once are not kept for ever
            del self.active[key]
        return shown
