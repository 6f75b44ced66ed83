"""The scheduling core: all of the broker's decisions, with no sockets and no clock.

Every method takes ``now`` (seconds since the epoch) from its caller, so tests
drive time by hand. Inputs are the protocol's requests and worker reports;
outputs are collected in an ``Outbox`` (what to send to whom) and in the set of
tasks whose stored state changed. The socket loop in ``broker.server`` commits
those changes before it sends any reply, so nothing is acknowledged before it
is durable. Nothing here may block or do I/O.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from broker.queue import ReadyQueues, Shape
from broker.state import Lease, Task, Worker
from common.errors import Conflict, InvalidInput, NotFound
from common.messages import (
    Assignment,
    HttpComplete,
    HttpRegister,
    ListTasks,
    Ready,
    RunKey,
    RunOutcome,
)
from common.models import FINAL_STATUSES, TaskStatus, WorkerKind, WorkerStatus
from common.spec import TaskSpec

log = logging.getLogger(__name__)

#: Times a task may go back to the queue because its worker was lost before it fails.
MAX_LOST = 3
#: Most finished tasks pruned in one call of ``prune``, so pruning never stalls the loop.
PRUNE_BATCH = 1000


@dataclass(frozen=True)
class Timing:
    """The core's time constants (from ``common.settings.Settings``)."""

    ping_interval: float = 1.0
    liveness: int = 3
    http_liveness: float = 15.0
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0
    timeout_grace: float = 5.0
    retention: float = 7 * 24 * 3600.0

    @property
    def worker_window(self) -> float:
        return self.ping_interval * self.liveness


@dataclass
class Outbox:
    """What the core wants sent: commands to workers at once, replies after the commit."""

    #: Worker address -> runs to start.
    dispatch: dict[bytes, list[Assignment]] = field(default_factory=dict)
    #: Worker address -> task ids whose runs should stop.
    cancel: dict[bytes, list[str]] = field(default_factory=dict)
    #: Answers to deferred requests (wait, long-poll): (token, value).
    replies: list[tuple[object, Any]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Waiter:
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


def _no_cold_tasks(tasks: Sequence[Task]) -> None:
    raise RuntimeError(f"{len(tasks)} cold tasks and no store to warm them from")


class Scheduler:
    """Tasks, workers and leases; priority, matching, dependencies, retries and liveness."""

    def __init__(self, timing: Timing | None = None) -> None:
        self.timing = timing or Timing()
        self.tasks: dict[str, Task] = {}
        self.workers: dict[str, Worker] = {}
        #: The online ones: every loop turn walks these, and offline workers stay listed
        #: (for ``GET /workers``) however many come and go.
        self._online: dict[str, Worker] = {}
        self.counts: Counter[TaskStatus] = Counter()
        #: Outcomes refused because their lease was no longer current.
        self.stale_outcomes = 0
        #: One-way messages (READY, DONE) dropped because they broke the protocol.
        self.dropped_messages = 0
        self.outbox = Outbox()
        self._dirty: dict[str, Task] = {}
        self._order: list[Task] = []  # by seq, for listing
        #: Tasks by status, for every status but completed (what most tasks end as): a page
        #: of a status that is rare among many tasks (the running ones, the failures) is
        #: taken from here instead of a scan of every task.
        self._by_status: dict[TaskStatus, set[Task]] = {
            status: set() for status in TaskStatus if status is not TaskStatus.COMPLETED
        }
        self._next_seq = 1
        self._ready = ReadyQueues()
        self._ready_changed = False
        self._delayed: list[tuple[float, int, Task]] = []  # (not_before, timer seq, task)
        self._dependents: dict[str, list[Task]] = {}
        self._by_address: dict[bytes, Worker] = {}
        #: (deadline, timer seq, task, attempt) for leases with a timeout.
        self._lease_deadlines: list[tuple[float, int, Task, int]] = []
        #: Leases recovered from the store after a restart, waiting for their worker to claim them.
        self._orphans: set[str] = set()
        self._orphan_deadline = 0.0
        self._waiters: dict[str, list[_Waiter]] = {}
        self._waiter_deadlines: list[tuple[float, int, _Waiter]] = []
        self._poll_deadlines: list[tuple[float, int, Worker, object]] = []
        self._timer_seq = 0
        self._by_key: dict[str, Task] = {}
        #: Finished tasks in order of completion, for pruning.
        self._finished: deque[Task] = deque()
        self._pruned: list[Task] = []
        self._dead_in_order = 0
        #: Reads the rest of cold tasks (``Task.cold``) into them: the store's ``warm``.
        self._warm: Callable[[Sequence[Task]], None] = _no_cold_tasks

    # -- persistence -------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number the next submitted task gets: counts every task ever made."""
        return self._next_seq

    def has_changes(self) -> bool:
        """Whether anything changed (or was pruned) since the last ``take_dirty``."""
        return bool(self._dirty or self._pruned)

    def take_dirty(self) -> list[Task]:
        """Tasks changed since the last call: the store writes these in one transaction."""
        dirty = list(self._dirty.values())
        self._dirty.clear()
        return dirty

    def take_pruned(self) -> list[Task]:
        """Tasks pruned since the last call: the store deletes these."""
        pruned, self._pruned = self._pruned, []
        return pruned

    def take_outbox(self) -> Outbox:
        outbox, self.outbox = self.outbox, Outbox()
        return outbox

    def load(
        self,
        tasks: list[Task],
        now: float,
        warm: Callable[[Sequence[Task]], None] = _no_cold_tasks,
    ) -> None:
        """Rebuild state from stored tasks (after a restart), before any request.

        Finished tasks may come cold (``Task.cold``): ``warm`` reads the rest of them, and
        is called before one is shown or changed. Runs once per task a million times for a
        million tasks, so the loops are kept plain and the ready queues are built in bulk.
        """
        self._warm = warm
        tasks.sort(key=attrgetter("seq"))
        self.tasks.update((task.id, task) for task in tasks)
        self._order.extend(tasks)
        self.counts.update(task.status for task in tasks)
        self._by_key.update((t.idempotency_key, t) for t in tasks if t.idempotency_key is not None)
        finished = [t for t in tasks if t.status in FINAL_STATUSES]
        finished.sort(key=lambda t: t.completed_at or 0.0)
        self._finished.extend(finished)
        self._next_seq = (tasks[-1].seq + 1) if tasks else 1
        self._orphan_deadline = now + self.timing.worker_window + self.timing.ping_interval
        ready: list[Task] = []
        pending, running = TaskStatus.PENDING, TaskStatus.RUNNING
        add_pending = self._by_status[pending].add
        add_running = self._by_status[running].add
        for task in finished:
            bucket = self._by_status.get(task.status)
            if bucket is not None:
                bucket.add(task)
        for task in tasks:
            status = task.status
            if status is pending:
                add_pending(task)  # before its dependencies may fail it (_set_status moves it)
                if task.dependencies:
                    self._attach_dependencies(task)
                    if task.waiting_on or task.status is not pending:
                        continue
                if task.not_before > now:
                    heapq.heappush(self._delayed, (task.not_before, self._next_timer(), task))
                else:
                    ready.append(task)
            elif status is running:
                add_running(task)
                # Its worker may still be running it: give it one liveness window to claim it.
                self._orphans.add(task.id)
                if task.timeout is not None:
                    expiry = now + task.timeout + self.timing.timeout_grace
                    heapq.heappush(
                        self._lease_deadlines, (expiry, self._next_timer(), task, task.attempts)
                    )
        self._ready.extend(ready)
        self._ready_changed = True

    # -- submitting and inspecting ---------------------------------------------------

    def submit(self, specs: list[TaskSpec], now: float) -> list[dict[str, Any]]:
        """Add a batch of tasks, all or none (every dependency must name a known task)."""
        prefix = len(specs) > 1
        for i, spec in enumerate(specs):
            for dep in spec.dependencies:
                if dep not in self.tasks:
                    where = f"tasks[{i}].dependencies" if prefix else "dependencies"
                    raise InvalidInput(f"{where}: unknown task {dep!r}")
        out = []
        # Random ids, 128 bits each as uuid4 has, drawn in one call for the whole batch.
        ids = os.urandom(16 * len(specs)).hex()
        # Names bound once: this loop runs for every task submitted.
        tasks, by_key, order, pending = self.tasks, self._by_key, self._order, TaskStatus.PENDING
        pending_tasks, counts = self._by_status[pending], self.counts
        for i, spec in enumerate(specs):
            key = spec.idempotency_key
            known = by_key.get(key) if key else None
            if known is not None:
                out.append({"id": known.id, "status": known.status.value, "created": False})
                continue
            task = Task(
                ids[32 * i : 32 * i + 32],
                self._next_seq,
                spec.name,
                spec.handler,
                spec.args,
                spec.dependencies,
                spec.priority,
                spec.max_retries,
                spec.timeout,
                tuple(sorted(spec.requires)) if spec.requires else (),
                tuple(sorted(spec.resources.items())) if spec.resources else (),
                now,
                idempotency_key=key,
            )
            if key is not None:
                by_key[key] = task
            self._next_seq += 1
            tasks[task.id] = task
            order.append(task)
            counts[pending] += 1
            pending_tasks.add(task)
            self._touch(task)
            if task.dependencies:
                self._attach_dependencies(task)
            if task.status is pending and task.waiting_on == 0:
                self._make_ready(task, now)
            out.append({"id": task.id, "status": task.status.value, "created": True})
        return out

    def submit_and_wait(
        self, specs: list[TaskSpec], wait: float, token: object, now: float
    ) -> dict[str, Any] | None:
        """``submit``, then the full records of the tasks once all are final or ``wait``
        passes (each with ``created``); None after registering ``token`` to answer later."""
        entries = self.submit(specs, now)
        waiter = _Waiter(
            token, now + wait, [e["id"] for e in entries], True, [e["created"] for e in entries]
        )
        return self._value_or_wait(waiter, wait)

    def get(self, task_id: str) -> Task:
        """The task with this id, whole (warmed if it was cold), to be shown."""
        task = self._known(task_id)
        self._warm_up([task])
        return task

    def _known(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id!r}")
        return task

    def _warm_up(self, tasks: list[Task]) -> None:
        """Make the cold ones among these tasks whole, in one call to the store."""
        cold = [task for task in tasks if task.cold]
        if cold:
            self._warm(cold)

    def list_tasks(self, query: ListTasks) -> dict[str, Any]:
        """A page of tasks in submission order, optionally filtered by status and handler."""
        status, handler, limit, after = query.status, query.handler, query.limit, query.after
        bucket = self._by_status.get(status) if status is not None else None
        if bucket is not None and len(bucket) ** 2 < limit * len(self.tasks):
            # Few tasks have this status: picking the page from them costs about len(bucket);
            # a scan would pass about limit * len(tasks) / len(bucket) tasks to fill it.
            matching = (
                t for t in bucket if t.seq > after and (handler is None or t.handler == handler)
            )
            page = heapq.nsmallest(limit + 1, matching, key=attrgetter("seq"))
            more = len(page) > limit
            del page[limit:]
        else:
            page, more = self._scan(status, handler, limit, after)
        self._warm_up(page)
        return {
            "tasks": [t.record() for t in page],
            "next": page[-1].seq if more and page else None,
        }

    def _scan(
        self, status: TaskStatus | None, handler: str | None, limit: int, after: int
    ) -> tuple[list[Task], bool]:
        """Up to ``limit`` matching tasks in submission order after ``after``, and whether
        there are more, found by walking every task from there."""
        start = bisect.bisect_right(self._order, after, key=lambda t: t.seq)
        page: list[Task] = []
        for task in itertools.islice(self._order, start, None):
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

    def cancel(self, task_id: str, now: float) -> Task:
        """Cancel a task: pending ones at once; running ones are told to stop."""
        task = self._known(task_id)
        if task.status in FINAL_STATUSES:
            raise Conflict(f"task {task.id} is already {task.status.value}")
        if task.status is TaskStatus.RUNNING:
            worker = self.workers.get(task.worker_id or "")
            if worker is not None and worker.address is not None:
                self.outbox.cancel.setdefault(worker.address, []).append(task.id)
            elif worker is not None:
                self._end_lease(worker, task)  # an HTTP worker cannot be told: free it now
            self._orphans.discard(task.id)
            self._close_lease(task, "cancelled", now)
        self._finish(task, TaskStatus.CANCELLED, now, error="cancelled")
        return task

    def wait(self, task_id: str, timeout: float, token: object, now: float) -> Task | None:
        """The task if final, else None after registering ``token`` to be answered later."""
        task = self.get(task_id)
        if task.status in FINAL_STATUSES or timeout == 0:
            return task
        self._add_waiter(_Waiter(token, now + timeout, [task.id], False))
        return None

    def wait_many(
        self, task_ids: list[str], timeout: float, token: object, now: float
    ) -> dict[str, Any] | None:
        """Brief records (id, status, result, error) of the tasks that are final once all of
        them are, or when ``timeout`` passes; None after registering ``token`` to answer later."""
        tasks = [self._known(task_id) for task_id in task_ids]
        waiter = _Waiter(token, now + timeout, [t.id for t in tasks], True)
        return self._value_or_wait(waiter, timeout)

    def _value_or_wait(self, waiter: _Waiter, limit: float) -> dict[str, Any] | None:
        """The waiter's value now if it may not wait or all its tasks are final; else None
        after registering it, to be answered through the outbox."""
        if limit == 0 or all(self.tasks[i].status in FINAL_STATUSES for i in waiter.task_ids):
            return self._value(waiter)
        self._add_waiter(waiter)
        return None

    def _add_waiter(self, waiter: _Waiter) -> None:
        for task_id in waiter.task_ids:
            if self.tasks[task_id].status not in FINAL_STATUSES:
                self._waiters.setdefault(task_id, []).append(waiter)
                waiter.pending += 1
        heapq.heappush(self._waiter_deadlines, (waiter.deadline, self._next_timer(), waiter))

    def _value(self, waiter: _Waiter) -> dict[str, Any]:
        """The answer of a ``wait_many`` or of a ``submit`` with ``wait``."""
        self._warm_up([self.tasks[i] for i in waiter.task_ids if i in self.tasks])
        if waiter.created is not None:
            records = []
            for task_id, created in zip(waiter.task_ids, waiter.created, strict=True):
                task = self.tasks.get(task_id)
                if task is not None:
                    records.append({**task.record(), "created": created})
            return {"tasks": records}
        briefs = []
        for task_id in waiter.task_ids:
            task = self.tasks.get(task_id)
            if task is not None and task.status in FINAL_STATUSES:
                briefs.append(
                    {"id": task.id, "status": task.status.value, "result": task.result,
                     "error": task.error}
                )  # fmt: skip
        return {"tasks": briefs}

    def _answer(self, waiter: _Waiter) -> None:
        waiter.done = True
        if waiter.many:
            value: Any = self._value(waiter)
        else:
            value = self.tasks[waiter.task_ids[0]].record()
        self.outbox.replies.append((waiter.token, value))

    def health(self, now: float, started: float) -> dict[str, Any]:
        return {
            "status": "ok",
            "tasks": {s.value: self.counts.get(s, 0) for s in TaskStatus},
            "workers": len(self._online),
            "stale_outcomes": self.stale_outcomes,
            "dropped_messages": self.dropped_messages,
            "uptime": now - started,
        }

    # -- ZeroMQ workers ------------------------------------------------------------

    def register(self, address: bytes, ready: Ready, now: float) -> Worker:
        """A worker said READY: (re)register it and take back the leases it still holds."""
        worker_id, slots, resources = ready.id, ready.slots, ready.resources
        capabilities = frozenset(ready.capabilities)
        old = self.workers.get(worker_id)
        if old is not None and old.kind is WorkerKind.HTTP:
            raise Conflict(f"worker id {worker_id!r} is taken by an HTTP worker")
        held: dict[str, int] = {}
        if old is not None:
            if old.address is not None:
                self._by_address.pop(old.address, None)
            if old.status is WorkerStatus.ONLINE:
                held = old.running
        worker = Worker(
            id=worker_id,
            kind=WorkerKind.ZMQ,
            capabilities=capabilities,
            resources=resources,
            slots=slots,
            last_seen=now,
            address=address,
            host=ready.host,
            pid=ready.pid,
            free=dict(resources),
            last_ping=now,
        )
        self.workers[worker_id] = worker
        self._go_online(worker)
        self._by_address[address] = worker
        refused: list[str] = []
        for task_id, attempt in ready.running:
            task = self.tasks.get(task_id)
            current = (
                task is not None
                and task.attempts == attempt
                and task.worker_id == worker_id
                and (task.status is TaskStatus.RUNNING or held.get(task_id) == attempt)
            )
            if task is not None and current:
                held.pop(task_id, None)
                self._orphans.discard(task_id)
                worker.running[task_id] = attempt
                worker.take(task.resources)
            else:
                refused.append(task_id)
        # Leases the old registration held that the worker no longer claims are lost.
        for task_id, attempt in held.items():
            task = self.tasks.get(task_id)
            if task is not None and task.attempts == attempt and task.status is TaskStatus.RUNNING:
                self._lose(task, now)
        if refused:
            self.outbox.cancel.setdefault(address, []).extend(refused)
        log.info(
            "worker %s registered: %d slots, serves %s", worker_id, slots, sorted(capabilities)
        )
        return worker

    def worker_at(self, address: bytes) -> Worker | None:
        """The online worker registered from this socket, if any."""
        worker = self._by_address.get(address)
        if worker is None or worker.status is not WorkerStatus.ONLINE:
            return None
        return worker

    def seen(self, worker: Worker, now: float) -> None:
        """Any message from a worker is a sign of life."""
        worker.last_seen = now

    def report(self, worker: Worker, outcomes: list[RunOutcome], now: float) -> list[RunKey]:
        """Outcomes from a ZeroMQ worker; returns the runs to acknowledge (all of them)."""
        for outcome in outcomes:
            task_id, attempt = outcome.run
            self._outcome(
                worker, task_id, attempt, outcome.status, outcome.result, outcome.error, now
            )
        return [outcome.run for outcome in outcomes]

    def goodbye(self, worker: Worker, now: float) -> None:
        """A worker shut down cleanly: its tasks go back to the queue without counting as lost."""
        self._offline(worker, now, count_lost=False)

    # -- HTTP workers ------------------------------------------------------------------

    def http_register(self, request: HttpRegister, now: float) -> tuple[Worker, bool]:
        worker_id, resources = request.id, request.resources
        capabilities = frozenset(request.capabilities)
        old = self.workers.get(worker_id)
        if old is not None and old.kind is WorkerKind.ZMQ:
            raise Conflict(f"worker id {worker_id!r} is taken by a ZeroMQ worker")
        if old is not None:
            old.capabilities = capabilities
            old.resources = resources
            old.free = dict(resources)
            for task_id in old.running:
                task = self.tasks.get(task_id)
                if task is not None:
                    old.take(task.resources)
            old.last_seen = now
            self._go_online(old)
            return old, False
        worker = Worker(
            id=worker_id,
            kind=WorkerKind.HTTP,
            capabilities=capabilities,
            resources=resources,
            slots=0,
            last_seen=now,
            free=dict(resources),
        )
        self.workers[worker_id] = worker
        self._go_online(worker)
        return worker, True

    def http_worker(self, worker_id: str, now: float) -> Worker:
        """An HTTP worker by id; a request from it is a sign of life and brings it back online."""
        worker = self.worker(worker_id)
        if worker.kind is not WorkerKind.HTTP:
            raise Conflict(f"worker {worker.id} is a ZeroMQ worker")
        worker.last_seen = now
        if worker.status is not WorkerStatus.ONLINE:
            self._go_online(worker)
        return worker

    def http_next(self, worker_id: str, wait: float, token: object, now: float) -> None:
        """Queue a long-poll; it is answered through the outbox, with a task or at its deadline."""
        worker = self.http_worker(worker_id, now)
        deadline = now + wait
        worker.polls.append((token, deadline))
        heapq.heappush(self._poll_deadlines, (deadline, self._next_timer(), worker, token))
        self._ready_changed = True

    def http_complete(self, request: HttpComplete, now: float) -> Task:
        worker = self.http_worker(request.worker_id, now)
        task = self._known(request.task_id)
        if task.status is not TaskStatus.RUNNING or task.worker_id != worker.id:
            raise Conflict(f"task {task.id} is not running on worker {worker.id}")
        self._outcome(
            worker, task.id, task.attempts, request.status, request.result, request.error, now
        )
        return task

    def worker(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFound(f"no worker with id {worker_id!r}")
        return worker

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[bytes]:
        """Advance timers: back-offs, lease expiry, liveness, deferred replies.

        Returns the addresses of the workers to ping now.
        """
        while self._delayed and self._delayed[0][0] <= now:
            task = heapq.heappop(self._delayed)[2]
            if task.status is TaskStatus.PENDING and not task.queued and task.not_before <= now:
                self._push_ready(task)
        while self._lease_deadlines and self._lease_deadlines[0][0] <= now:
            _, _, task, attempt = heapq.heappop(self._lease_deadlines)
            if task.status is TaskStatus.RUNNING and task.attempts == attempt:
                self._expire(task, now)
        if self._orphans and self._orphan_deadline <= now:
            orphans, self._orphans = self._orphans, set()
            for task_id in sorted(orphans, key=lambda i: self.tasks[i].seq):
                task = self.tasks[task_id]
                if task.status is TaskStatus.RUNNING:
                    log.warning("task %s: no worker claimed its lease after restart", task_id)
                    self._lose(task, now)
        pings: list[bytes] = []
        for worker in list(self._online.values()):
            if worker.polls:
                continue  # an HTTP worker waiting on a long-poll is there: we hold its request
            window = (
                self.timing.worker_window
                if worker.kind is WorkerKind.ZMQ
                else self.timing.http_liveness
            )
            if now - worker.last_seen > window:
                log.warning(
                    "worker %s offline: silent for %.1f s", worker.id, now - worker.last_seen
                )
                self._offline(worker, now, count_lost=True)
            elif worker.address is not None and now - worker.last_ping >= self.timing.ping_interval:
                worker.last_ping = now
                pings.append(worker.address)
        while self._waiter_deadlines and self._waiter_deadlines[0][0] <= now:
            waiter = heapq.heappop(self._waiter_deadlines)[2]
            if not waiter.done:
                self._answer(waiter)
                for task_id in waiter.task_ids:
                    waiters = self._waiters.get(task_id)
                    if waiters and waiter in waiters:
                        waiters.remove(waiter)
                        if not waiters:
                            del self._waiters[task_id]
        while self._poll_deadlines and self._poll_deadlines[0][0] <= now:
            _, _, worker, token = heapq.heappop(self._poll_deadlines)
            for i, (poll_token, _) in enumerate(worker.polls):
                if poll_token is token:
                    del worker.polls[i]
                    worker.last_seen = now  # it was waiting on its poll until now
                    self.outbox.replies.append((token, None))
                    break
        return pings

    def prune(self, now: float, limit: int = PRUNE_BATCH) -> int:
        """Forget up to ``limit`` tasks that finished more than ``retention`` seconds ago."""
        cutoff = now - self.timing.retention
        pruned = 0
        while self._finished and pruned < limit:
            task = self._finished[0]
            if (task.completed_at or 0.0) > cutoff:
                break
            self._finished.popleft()
            if self.tasks.get(task.id) is not task or task.status not in FINAL_STATUSES:
                continue
            del self.tasks[task.id]
            self._uncount(task)
            if task.idempotency_key is not None and self._by_key.get(task.idempotency_key) is task:
                del self._by_key[task.idempotency_key]
            self._dirty.pop(task.id, None)
            self._pruned.append(task)
            self._dead_in_order += 1
            pruned += 1
        if self._dead_in_order > len(self._order) // 2:
            self._order = [t for t in self._order if self.tasks.get(t.id) is t]
            self._dead_in_order = 0
        return pruned

    def next_timer(self) -> float | None:
        """The earliest time at which ``tick`` has work besides pings and liveness."""
        candidates = [
            heap[0][0]
            for heap in (
                self._delayed,
                self._lease_deadlines,
                self._waiter_deadlines,
                self._poll_deadlines,
            )
            if heap
        ]
        return min(candidates) if candidates else None

    # -- dispatching -------------------------------------------------------------------------

    def schedule(self, now: float) -> int:
        """Lease ready tasks to workers with free slots, best priority first; returns leases made.

        Only runs when something changed (a task became ready, a slot freed, a worker came).
        """
        if not self._ready_changed:
            return 0
        self._ready_changed = False
        workers = [w for w in self._online.values() if w.capacity() > 0]
        if not workers:
            return 0
        heads: list[tuple[int, int, Shape]] = []
        eligible: dict[Shape, list[Worker]] = {}
        for shape in self._ready.shapes():
            task = self._ready.head(shape)
            if task is None:
                continue
            serving = [w for w in workers if w.serves(shape)]
            if serving:
                eligible[shape] = serving
                heads.append((-task.priority, task.seq, shape))
        heapq.heapify(heads)
        leased = 0
        while heads:
            _, _, shape = heapq.heappop(heads)
            task = self._ready.head(shape)
            if task is None:
                continue
            worker = self._pick(eligible[shape], task)
            if worker is None:
                continue  # no worker of this shape has room now; lower tasks may still fit others
            self._ready.pop(shape)
            self._lease(task, worker, now)
            leased += 1
            following = self._ready.head(shape)
            if following is not None:
                heapq.heappush(heads, (-following.priority, following.seq, shape))
        return leased

    @staticmethod
    def _pick(candidates: list[Worker], task: Task) -> Worker | None:
        best: Worker | None = None
        best_room = 0
        for worker in candidates:
            room = worker.capacity()
            if room > best_room and worker.fits(task.resources):
                best, best_room = worker, room
        return best

    def _lease(self, task: Task, worker: Worker, now: float) -> None:
        task.attempts += 1
        task.worker_id = worker.id
        task.started_at = now
        task.completed_at = None
        self._set_status(task, TaskStatus.RUNNING)
        task.leases.append(Lease(task.attempts, worker.id, now))
        worker.running[task.id] = task.attempts
        worker.take(task.resources)
        if task.timeout is not None:
            deadline = now + task.timeout + self.timing.timeout_grace
            heapq.heappush(
                self._lease_deadlines, (deadline, self._next_timer(), task, task.attempts)
            )
        if worker.kind is WorkerKind.HTTP:
            token, _ = worker.polls.pop(0)
            worker.last_seen = now  # it was waiting on its poll until now
            self.outbox.replies.append((token, task.record()))
        else:
            assert worker.address is not None
            entry = Assignment(
                RunKey(task.id, task.attempts), task.handler, task.args, task.timeout
            )
            self.outbox.dispatch.setdefault(worker.address, []).append(entry)

    # -- outcomes ---------------------------------------------------------------------------

    def _outcome(
        self,
        worker: Worker,
        task_id: str,
        attempt: int,
        status: TaskStatus,
        result: bytes | None,
        error: str | None,
        now: float,
    ) -> None:
        """A worker reports how a run ended; only the current lease's report counts."""
        if worker.running.get(task_id) == attempt:
            del worker.running[task_id]
            task = self.tasks.get(task_id)
            if task is not None:
                worker.give_back(task.resources)
            self._ready_changed = True
        task = self.tasks.get(task_id)
        lease = task.current_lease() if task is not None else None
        if (
            task is None
            or lease is None
            or lease.worker_id != worker.id
            or attempt != task.attempts
        ):
            self._refuse(worker, task, attempt, status, now)
            return
        if status is TaskStatus.COMPLETED:
            self._close_lease(task, "completed", now)
            self._finish(task, TaskStatus.COMPLETED, now, result=result)
        elif status is TaskStatus.FAILED:
            self._close_lease(task, "failed", now, error)
            self._fail_attempt(task, error or "failed", now)
        else:
            # The worker gave the run up without being asked (shutting down): run it again.
            self._close_lease(task, "released", now)
            self._requeue(task, now)

    def _refuse(
        self, worker: Worker, task: Task | None, attempt: int, status: TaskStatus, now: float
    ) -> None:
        """An outcome for a lease that is no longer current: never recorded."""
        if task is None:
            return  # pruned long ago
        self._warm_up([task])
        lease = next((le for le in reversed(task.leases) if le.attempt == attempt), None)
        if lease is None or lease.worker_id != worker.id:
            self.stale_outcomes += 1
            log.warning(
                "refused outcome of %s #%s from %s: no such lease", task.id, attempt, worker.id
            )
            return
        if lease.outcome in (status, "cancelled") or lease.refused == status:
            # The same report again (its ACK was lost, or it was refused already), or how
            # a cancelled run ended: none of these is news, and the cancel stands.
            return
        self.stale_outcomes += 1
        lease.refused = status.value
        self._touch(task)
        log.warning(
            "refused stale outcome %r of %s #%s from %s: the lease ended %s",
            status, task.id, attempt, worker.id, lease.outcome,
        )  # fmt: skip

    def _close_lease(self, task: Task, outcome: str, now: float, error: str | None = None) -> None:
        lease = task.current_lease()
        if lease is not None:
            lease.ended_at = now
            lease.outcome = outcome
            lease.error = error

    def _fail_attempt(self, task: Task, error: str, now: float) -> None:
        task.failures += 1
        if task.failures <= task.max_retries:
            task.error = error
            backoff = min(
                self.timing.retry_backoff * 2 ** (task.failures - 1), self.timing.retry_backoff_max
            )
            self._set_status(task, TaskStatus.PENDING)
            task.not_before = now + backoff
            self._make_ready(task, now)
        else:
            self._finish(task, TaskStatus.FAILED, now, error=error)

    def _expire(self, task: Task, now: float) -> None:
        """The broker's own time limit: the worker did not report within timeout + grace."""
        worker = self.workers.get(task.worker_id or "")
        if worker is not None and worker.address is not None:
            self.outbox.cancel.setdefault(worker.address, []).append(task.id)
        elif worker is not None:
            self._end_lease(worker, task)
        error = f"timed out after {task.timeout:g} s (lease expired)"
        self._close_lease(task, "expired", now, error)
        self._fail_attempt(task, error, now)

    def _lose(self, task: Task, now: float) -> None:
        """The task's worker is gone: run it again, at most ``MAX_LOST`` times."""
        task.lost += 1
        self._close_lease(task, "lost", now)
        if task.lost > MAX_LOST:
            self._finish(task, TaskStatus.FAILED, now, error="worker lost")
        else:
            self._requeue(task, now)

    def _requeue(self, task: Task, now: float) -> None:
        self._set_status(task, TaskStatus.PENDING)
        task.worker_id = None
        self._make_ready(task, now)

    def _go_online(self, worker: Worker) -> None:
        """Mark a worker online: every turn watches it, and dispatch may use its slots."""
        worker.status = WorkerStatus.ONLINE
        self._online[worker.id] = worker
        self._ready_changed = True

    def _offline(self, worker: Worker, now: float, *, count_lost: bool) -> None:
        worker.status = WorkerStatus.OFFLINE
        if self._online.get(worker.id) is worker:
            del self._online[worker.id]
        if worker.address is not None:
            self._by_address.pop(worker.address, None)
        for token, _ in worker.polls:
            self.outbox.replies.append((token, None))
        worker.polls.clear()
        running, worker.running = worker.running, {}
        worker.free = dict(worker.resources)
        for task_id, attempt in running.items():
            task = self.tasks.get(task_id)
            if task is None or task.status is not TaskStatus.RUNNING or task.attempts != attempt:
                continue
            if count_lost:
                self._lose(task, now)
            else:
                self._close_lease(task, "released", now)
                self._requeue(task, now)

    def _end_lease(self, worker: Worker, task: Task) -> None:
        if worker.running.pop(task.id, None) is not None:
            worker.give_back(task.resources)
            self._ready_changed = True

    def _finish(
        self,
        task: Task,
        status: TaskStatus,
        now: float,
        *,
        result: bytes | None = None,
        error: str | None = None,
    ) -> None:
        """Record a final outcome, then release or fail the dependents (iteratively)."""
        stack: list[tuple[Task, TaskStatus, bytes | None, str | None]] = [
            (task, status, result, error)
        ]
        while stack:
            current, final, res, err = stack.pop()
            if current.status in FINAL_STATUSES:
                continue
            current.result = res
            current.error = err
            current.completed_at = now
            self._set_status(current, final)
            self._finished.append(current)
            for waiter in self._waiters.pop(current.id, []):
                waiter.pending -= 1
                if not waiter.done and waiter.pending == 0:
                    self._answer(waiter)
            for child in self._dependents.pop(current.id, []):
                if child.status is not TaskStatus.PENDING:
                    continue
                if final is TaskStatus.COMPLETED:
                    child.waiting_on -= 1
                    if child.waiting_on == 0:
                        self._make_ready(child, now)
                else:
                    reason = f"dependency {current.id} {final.value}"
                    stack.append((child, TaskStatus.FAILED, None, reason))

    # -- helpers -------------------------------------------------------------------------------

    def _attach_dependencies(self, task: Task) -> None:
        task.waiting_on = 0
        for dep_id in task.dependencies:
            dep = self.tasks.get(dep_id)
            if dep is None or dep.status is TaskStatus.COMPLETED:
                continue  # a missing one can only be a dependency pruned after completing
            if dep.status in FINAL_STATUSES:
                self._finish(
                    task,
                    TaskStatus.FAILED,
                    task.created_at,
                    error=f"dependency {dep_id} {dep.status.value}",
                )
                return
            task.waiting_on += 1
            self._dependents.setdefault(dep_id, []).append(task)

    def _make_ready(self, task: Task, now: float) -> None:
        # No _touch: what makes a task ready (a submit, a status change) is stored by its
        # caller; waiting_on and the queues are derived, so a restart rewrites nothing.
        if task.not_before > now:
            heapq.heappush(self._delayed, (task.not_before, self._next_timer(), task))
        else:
            self._push_ready(task)

    def _push_ready(self, task: Task) -> None:
        if not task.queued:
            self._ready.push(task)
            self._ready_changed = True

    def _set_status(self, task: Task, status: TaskStatus) -> None:
        self._uncount(task)
        self.counts[status] += 1
        bucket = self._by_status.get(status)
        if bucket is not None:
            bucket.add(task)
        task.status = status
        self._touch(task)

    def _uncount(self, task: Task) -> None:
        """Take the task out of its status's count and set (it changes status, or is gone)."""
        self.counts[task.status] -= 1
        bucket = self._by_status.get(task.status)
        if bucket is not None:
            bucket.discard(task)

    def _touch(self, task: Task) -> None:
        self._dirty[task.id] = task

    def _next_timer(self) -> int:
        self._timer_seq += 1
        return self._timer_seq
