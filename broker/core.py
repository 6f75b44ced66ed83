"""The scheduling core: what the outside world asks of it, with no sockets and no clock.

Every method takes ``now`` (seconds since the epoch) from its caller, so tests drive
time by hand. Inputs are typed requests (``common.ops``) and worker reports
(``common.messages``);
outputs are collected in an ``Outbox`` (what to send to whom) and in the set of tasks
whose stored state changed. The socket loop in ``broker.server`` commits those changes
before it sends any reply, so nothing is acknowledged before it is durable. Nothing
here may block or do I/O.

``Scheduler`` takes submissions, cancels, waits, registrations, worker reports and the
passing of time, and turns each into transitions of ``broker.lifecycle``. Each other
concern has its module: the tasks and their indexes (``broker.index``), the ready
queues (``broker.queue``) and the matching of tasks to workers (``broker.dispatch``), the
workers and their liveness (``broker.roster``), deferred answers (``broker.waiters``)
and every deadline (``broker.timers``).
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, cast

from broker import metrics
from broker.lifecycle import ENDED_BADLY, MAX_LOST, Lifecycle, Outbox, Timing
from broker.queue import Shape
from broker.roster import Verdict, detection_time
from broker.state import Task, Worker
from broker.store import Store
from broker.timers import TimerKind
from broker.waiters import Waiter
from common.errors import Conflict, InvalidInput, NotFound, SchedulerError, TooLarge
from common.limits import DEPENDENTS_SHOWN, MAX_PAGE_BYTES, MAX_PAYLOAD
from common.logs import listing
from common.messages import Ping, Ready, RunKey, RunOutcome
from common.models import FINAL_STATUSES, LeaseOutcome, TaskStatus, WorkerKind, WorkerStatus
from common.ops import HttpComplete, HttpRegister, ListTasks, ListWorkers
from common.spec import TaskSpec

__all__ = [
    "MAX_LOST",
    "PRUNE_BATCH",
    "STATS_HANDLERS",
    "WORKER_PRUNE_BATCH",
    "IdentityTaken",
    "Outbox",
    "Scheduler",
    "Timing",
]

log = logging.getLogger(__name__)

#: Most finished tasks pruned in one call of ``prune``, so pruning never stalls the loop.
PRUNE_BATCH = 1000
#: Handlers ``stats`` shows a line each, those with the most pending and running tasks; the
#: others are summed under ``broker.metrics.OTHER``. Handler names come from clients: every
#: dashboard's snapshot carries them, once a second, however many a client made up.
STATS_HANDLERS = 100
#: Most offline workers forgotten in one round: each may have thousands of capabilities,
#: which the store deletes with it.
WORKER_PRUNE_BATCH = 100


class IdentityTaken(Conflict):
    """A READY names a worker that is online on another connection."""


class Scheduler(Lifecycle):
    """Tasks, workers and leases; priority, matching, dependencies, retries and liveness."""

    def __init__(
        self, timing: Timing | None = None, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        super().__init__(timing, random_bytes)
        #: Largest args of a task in bytes (``--max-payload``, which the socket loop sets).
        self.max_payload = MAX_PAYLOAD
        #: Per worker id, the connection whose refused READY was logged last (an online
        #: worker's only): a connection that keeps trying is logged once.
        self._refused_from: dict[str, bytes] = {}

    def load(
        self,
        tasks: list[Task],
        now: float,
        workers: Sequence[Worker] = (),
        store: Store | None = None,
    ) -> None:
        """Rebuild state from stored tasks and workers (after a restart), before any request.

        With a ``store``, ``tasks`` are its unfinished ones
        (``Store.load``): the finished ones stay there, counted from its ``summary`` and
        read when asked for, and those finished from now on leave memory once committed
        (``evict``). Runs once per task a million times for a million tasks, so the loops
        are kept plain and the ready queues are built in bulk. The workers are listed,
        offline, until they speak: a ZeroMQ worker registers again, an HTTP worker carries
        on where it was (``http_worker``).
        """
        for worker in workers:
            self.roster.add_offline(worker)
        tasks.sort(key=attrgetter("seq"))
        self.index.load(tasks)
        self._next_seq = (tasks[-1].seq + 1) if tasks else 1
        if store is not None:
            self.store = store
            summary = store.summary()
            self.index.counts.update(summary.finished)
            self._next_seq = max(self._next_seq, summary.next_seq)
        ready: list[Task] = []
        pending, running = TaskStatus.PENDING, TaskStatus.RUNNING
        grace = self.timing.timeout_grace
        for task in tasks:
            status = task.status
            if status is pending:
                if task.dependencies:
                    self._attach_dependencies(task)
                    if task.waiting_on or task.status is not pending:
                        continue
                if task.not_before > now:
                    self.timers.add(task.not_before, TimerKind.READY, task)
                else:
                    ready.append(task)
            elif status is running:
                # Its worker may still be running it: give it one liveness window to claim it.
                self.orphans.add(task.id)
                if task.timeout is not None:
                    expiry = now + task.timeout + grace
                    self.timers.add(expiry, TimerKind.LEASE, task, task.attempts)
        if self.orphans:
            # Each worker watches the broker with the window its last PING set, which grew
            # with the cluster: at most the window for every worker the store lists.
            timing = self.timing
            zmq_workers = sum(1 for worker in workers if worker.kind is WorkerKind.ZMQ)
            window = detection_time(
                zmq_workers, timing.ping_interval, timing.liveness, timing.ping_rate
            )
            self.timers.add(now + window + timing.ping_interval, TimerKind.ORPHANS, None)
        self.ready.extend(ready)
        self.matcher.consider_all({task.shape for task in ready})

    # -- submitting and inspecting ---------------------------------------------------

    def submit(
        self, specs: list[TaskSpec], now: float, *, refuse_unservable: bool = False
    ) -> list[dict[str, Any]]:
        """Add a batch of tasks, all or none: every dependency must name a known task, an
        idempotency key used before must come with the same spec, and with
        ``refuse_unservable`` some online worker must be able to run each task. A task no
        online worker could run is logged, once for its shape until the workers change."""
        shapes, known_keys, _ = self._check_submit(specs, refuse_unservable, separate=False)
        # Nothing refused: every entry is a task's.
        return cast(list[dict[str, Any]], self._make(specs, shapes, known_keys, now, {}))

    def submit_each(
        self, specs: list[TaskSpec], now: float, *, refuse_unservable: bool = False
    ) -> list[dict[str, Any] | SchedulerError]:
        """Add each task on its own, as ``submit`` of it alone would, in order: a task
        refused does not refuse the others, and its entry is the error it met."""
        shapes, known_keys, refused = self._check_submit(specs, refuse_unservable, separate=True)
        return self._make(specs, shapes, known_keys, now, refused)

    def _make(
        self,
        specs: list[TaskSpec],
        shapes: list[Shape],
        known_keys: dict[str, Task],
        now: float,
        refused: dict[int, SchedulerError],
    ) -> list[dict[str, Any] | SchedulerError]:
        """Make the tasks of a checked submit (but those ``refused``); returns each one's
        entry: its id and status, and whether it was made (not an idempotency key's
        existing task), or the error it met."""
        out: list[dict[str, Any] | SchedulerError] = []
        # An id is 32 hex digits: the task's seq (12) then 80 random bits, drawn in one call
        # for the whole batch. Ids in submission order are appended at the end of the
        # store's index by id, where random ones landed anywhere in it: a batch of 1,000
        # committed at twice the rate (sync=full), and 80 bits are still beyond guessing.
        ids = self.random_bytes(10 * len(specs)).hex()
        # Names bound once: this loop runs for every task submitted.
        by_key, add, pending = self.index.by_key, self.index.add, TaskStatus.PENDING
        metrics = self.metrics
        submitted = metrics.submitted
        for i, spec in enumerate(specs):
            if refused:
                error = refused.get(i)
                if error is not None:
                    out.append(error)
                    continue
            key = spec.idempotency_key
            known = (by_key.get(key) or known_keys.get(key)) if key else None
            if known is not None:
                out.append({"id": known.id, "status": known.status.value, "created": False})
                continue
            _, requires, resources = shapes[i]
            task = Task(
                f"{self._next_seq:012x}{ids[20 * i : 20 * i + 20]}",
                self._next_seq,
                spec.name,
                spec.handler,
                spec.args,
                spec.dependencies,
                spec.priority,
                spec.max_retries,
                spec.timeout,
                requires,
                resources,
                now,
                idempotency_key=key,
            )
            self._next_seq += 1
            add(task)
            metrics.count(submitted, task.handler)
            self._dirty[task.id] = task
            if task.dependencies:
                self._attach_dependencies(task)
            if task.status is pending and task.waiting_on == 0:
                self._make_ready(task, now)
            out.append({"id": task.id, "status": task.status.value, "created": True})
        return out

    def _check_submit(
        self, specs: list[TaskSpec], refuse_unservable: bool, separate: bool
    ) -> tuple[list[Shape], dict[str, Task], dict[int, SchedulerError]]:
        """What must hold before any task of a submit is made; returns each one's shape, the
        tasks that hold the idempotency keys used before, by key, and (``separate``: each
        task checked as if submitted alone, after those before it) the error of each task
        refused, by index; raises the first error otherwise."""
        prefix = len(specs) > 1 and not separate
        roster = self.roster
        known_keys: dict[str, Task] = {}
        refused: dict[int, SchedulerError] = {}
        if self._warned_at != roster.generation:
            self._warned.clear()
            self._warned_at = roster.generation
        shapes: list[Shape] = []
        keyed: dict[str, dict[str, Any]] = {}
        for i, spec in enumerate(specs):
            shape: Shape = (
                spec.handler,
                tuple(sorted(spec.requires)) if spec.requires else (),
                tuple(sorted(spec.resources.items())) if spec.resources else (),
            )
            shapes.append(shape)
            try:
                self._check_spec(
                    spec, shape, f"tasks[{i}]." if prefix else "", refuse_unservable,
                    known_keys, keyed,
                )  # fmt: skip
            except SchedulerError as exc:
                if not separate:
                    raise
                refused[i] = exc
        return shapes, known_keys, refused

    def _check_spec(
        self,
        spec: TaskSpec,
        shape: Shape,
        where: str,
        refuse_unservable: bool,
        known_keys: dict[str, Task],
        keyed: dict[str, dict[str, Any]],
    ) -> None:
        """Raise why this task of a submit is refused (``where``: its place in the
        request's errors), if it is; note its idempotency key, once it is not."""
        if len(spec.args) > self.max_payload:
            size = len(spec.args)
            raise TooLarge(f"{where}args is {size} bytes, more than {self.max_payload}")
        for dep in spec.dependencies:
            if self.find(dep) is None:
                raise InvalidInput(f"{where}dependencies: unknown task {dep!r}")
        key = spec.idempotency_key
        if key is not None:
            known = known_keys.get(key) or self._keyed(key)
            if known is not None:
                known_keys[key] = known
                _same_spec(key, _spec_of(known), _spec_of(spec), f"task {known.id}", where)
                return
            if key in keyed:  # twice in one batch: the first makes the task
                _same_spec(key, keyed[key], _spec_of(spec), "an earlier entry", where)
                return
        unserved = self.roster.why_unserved(shape)
        if unserved is not None:
            if refuse_unservable:
                raise Conflict(f"{where}refused: {unserved}")
            if shape not in self._warned:
                self._warned.add(shape)
                log.warning(
                    "tasks of handler %r will wait: %s", spec.handler, unserved,
                    extra={"handler": spec.handler},
                )  # fmt: skip
        if key is not None:
            keyed[key] = _spec_of(spec)

    def submit_and_wait(
        self,
        specs: list[TaskSpec],
        wait: float,
        token: object,
        now: float,
        *,
        refuse_unservable: bool = False,
    ) -> dict[str, Any] | None:
        """``submit``, then the full records of the tasks once all are final or ``wait``
        passes (each with ``created``); None after registering ``token`` to answer later."""
        entries = self.submit(specs, now, refuse_unservable=refuse_unservable)
        ids, created = [e["id"] for e in entries], [e["created"] for e in entries]
        value: dict[str, Any] | None = self.deferred.value_or_wait(
            Waiter(token, now + wait, ids, True, created), wait
        )
        return value

    def get(self, task_id: str) -> Task:
        """The task with this id, to be shown."""
        return self._known(task_id)

    def dependents_of(self, task_id: str, limit: int = DEPENDENTS_SHOWN) -> tuple[list[str], bool]:
        """The ids of the first ``limit`` tasks, in seq order, that name ``task_id`` among
        their dependencies, finished or not, and whether there are more.

        With a store, those it holds (its index of dependencies: a task that ran, finished
        and left memory long ago is found as one still pending), then those submitted
        since the last commit, not stored yet, which came after every stored one.
        Without, the tasks in memory, which are all there are."""
        if self.store is not None:
            found = self.store.dependents(task_id, limit + 1)
            if len(found) <= limit:
                unsaved = sorted(
                    (t for t in self._dirty.values() if not t.stored and task_id in t.dependencies),
                    key=attrgetter("seq"),
                )
                found += [t.id for t in unsaved[: limit + 1 - len(found)]]
        else:
            tasks = self.index.tasks
            matching = (
                t.id for t in self.index.order if task_id in t.dependencies and tasks.get(t.id) is t
            )
            found = list(itertools.islice(matching, limit + 1))
        return found[:limit], len(found) > limit

    def list_tasks(self, query: ListTasks) -> dict[str, Any]:
        """A page of tasks in submission order, optionally filtered by status and handler:
        at most ``query.limit`` tasks and about ``MAX_PAGE_BYTES`` (at least one task)."""
        page, more = self.index.page(query)
        status = query.status
        if self.store is not None and (status is None or status in FINAL_STATUSES):
            # The finished tasks the store holds, merged in seq order with those in memory
            # (the memory's copy of a task in both).
            limit = query.limit
            stored = self.store.finished_page(
                status, query.handler, query.after, limit + 1, MAX_PAGE_BYTES
            )
            tasks = self.index.tasks
            merged = page + [t for t in stored if t.id not in tasks]
            if len(merged) > len(page):
                merged.sort(key=attrgetter("seq"))
                more = more or len(merged) > limit
                page = merged[:limit]
        size = 0
        for i, task in enumerate(page):
            size += task.size()
            if size > MAX_PAGE_BYTES and i > 0:
                del page[i:]
                more = True
                break
        return {
            "tasks": [self.show(t) for t in page],
            "next": page[-1].seq if more and page else None,
        }

    def cancel(self, task_id: str, now: float) -> Task:
        """Cancel a task: pending ones at once; running ones are told to stop."""
        task = self._known(task_id)
        if task.status in FINAL_STATUSES:
            raise Conflict(f"task {task.id} is already {task.status.value}")
        if task.status is TaskStatus.RUNNING:
            self._stop_run(task)
            self.orphans.discard(task.id)
            self._close_lease(task, LeaseOutcome.CANCELLED, now)
        self._finish(task, TaskStatus.CANCELLED, now, error="cancelled")
        return task

    def retry(self, task_id: str, now: float) -> Task:
        """Run a failed or cancelled task again: pending once more, same id, its attempts
        and leases continued and its failures and losses counted from zero (the whole
        ``max_retries`` again); so are, transitively, its dependents that failed because it
        ended (their error names it), which wait for it again. Refused (``Conflict``): a
        task whose own dependency failed or was cancelled (that one is to be retried), and
        one whose last run its worker has not stopped yet."""
        task = self._known(task_id)
        if task.status not in ENDED_BADLY:
            raise Conflict(
                f"task {task.id} is {task.status.value}: only a failed or cancelled task is retried"
            )
        last = task.leases[-1] if task.leases else None
        holder = self.roster.get(last.worker_id) if last is not None else None
        if holder is not None and task.id in holder.running:
            # A worker holds one run of a task at a time: the run it was told to stop (a
            # cancel, an expiry) first has to end.
            raise Conflict(
                f"task {task.id}: worker {holder.id} has not stopped its last run yet; "
                "retry once it has"
            )
        for dep_id in task.dependencies:
            dep = self.find(dep_id)
            if dep is not None and dep.status in ENDED_BADLY:
                raise Conflict(
                    f"task {task.id} depends on task {dep_id}, which {dep.status.value}: "
                    f"retry task {dep_id}"
                )
        gone = self._unknown_dependency(task)
        if gone is not None:
            raise Conflict(
                f"task {task.id} depends on task {gone}, which was deleted before the task "
                "ever ran: whether it completed is unknown, so submit the task again"
            )
        again, stack, seen = [task], [task.id], {task.id}
        while stack:
            for child in self._failed_by(stack.pop()):
                # A dependent with another dependency deleted stays failed, and so do its own.
                if child.id not in seen and self._unknown_dependency(child) is None:
                    seen.add(child.id)
                    again.append(child)
                    stack.append(child.id)
        self.ready.drop(again)
        for current in again:  # each after the task it waits for
            self._reopen(current, now)
        log.info("task %s retried, with %d dependents", task.id, len(again) - 1)
        return task

    def _unknown_dependency(self, task: Task) -> str | None:
        """A dependency of a task that never ran which is no longer known, if any.

        Pending again, a task takes a dependency it cannot find for one pruned after it
        completed (``_attach_dependencies``); but a purge deletes failed and cancelled tasks
        too, so for a task that never ran a missing dependency may never have completed. A
        task that ran had every dependency completed then."""
        if task.leases:
            return None
        found = self.find_many(list(task.dependencies)) if task.dependencies else {}
        return next((dep_id for dep_id in task.dependencies if dep_id not in found), None)

    def _failed_by(self, task_id: str) -> list[Task]:
        """The tasks that failed because ``task_id`` ended badly, in memory or the store
        (the memory's object of a task in both)."""
        prefix = f"dependency {task_id} "
        tasks = self.index.tasks
        found = {
            t.id: t
            for t in self.index.by_status[TaskStatus.FAILED]
            if t.error is not None and t.error.startswith(prefix)
        }
        if self.store is not None:
            for stored in self.store.failed_by(task_id):
                if stored.id not in tasks:
                    found[stored.id] = stored
        return sorted(found.values(), key=attrgetter("seq"))

    def _reopen(self, task: Task, now: float) -> None:
        """A finished task (in memory, or read from the store) pending again."""
        if self.index.tasks.get(task.id) is not task:
            self.index.restore(task)
        self._set_status(task, TaskStatus.PENDING)  # before its size changes (the index's)
        task.failures = 0
        task.lost = 0
        task.error = None
        task.result = None
        task.completed_at = None
        task.worker_id = None
        task.not_before = 0.0
        if task.dependencies:
            # It may still be listed under a dependency it did not fail by (listed until
            # that one ends): listed again once, below.
            for dep_id in task.dependencies:
                listed = self.dependents.get(dep_id)
                if listed:
                    listed[:] = [child for child in listed if child.id != task.id]
            self._attach_dependencies(task)
        if task.status is TaskStatus.PENDING and task.waiting_on == 0:
            self._make_ready(task, now)

    def purge(self, status: TaskStatus, before: float | None, limit: int) -> dict[str, Any]:
        """Delete up to ``limit`` finished tasks of ``status`` that completed before
        ``before`` (any time when None): ``{"purged": n, "more": bool}``, ``more`` when
        there may be more to delete. With a store, deleted there at once, in a transaction
        of their own, which leaves out the tasks changed since the last commit."""
        if status not in FINAL_STATUSES:
            raise InvalidInput("status must be one of completed, failed, cancelled")
        # A run stopped (cancelled, expired) holds its worker's slot and resources until
        # the worker reports it, and the report gives back what the task's record names:
        # such a task is left for a later purge, as are those not committed yet.
        held = self._held_runs()
        if self.store is not None:
            deleted, more = self.store.purge(status, before, limit, self._dirty.keys() | held)
            for task_id, final in deleted:
                self.index.forget(task_id, final)
            count = len(deleted)
        else:
            matching = (
                t
                for t in self.index.order
                if self.index.tasks.get(t.id) is t
                and t.status is status
                and t.id not in held
                and (before is None or (t.completed_at or 0.0) < before)
            )
            doomed = list(itertools.islice(matching, limit + 1))
            more = len(doomed) > limit
            for task in doomed[:limit]:
                self.index.forget(task.id, task.status)
                self._dirty.pop(task.id, None)
                self._pruned.append(task)
            count = min(len(doomed), limit)
        if count:
            log.info("purged %d %s tasks", count, status.value)
        return {"purged": count, "more": more}

    def wait(self, task_id: str, timeout: float, token: object, now: float) -> Task | None:
        """The task if final, else None after registering ``token`` to be answered later."""
        task = self.get(task_id)
        if task.status in FINAL_STATUSES or timeout == 0:
            return task
        self.deferred.add(Waiter(token, now + timeout, [task.id], False))
        return None

    def wait_many(
        self, task_ids: list[str], timeout: float, token: object, now: float
    ) -> dict[str, Any] | None:
        """Brief records (id, status, result, error) of the tasks that are final once all of
        them are, or when ``timeout`` passes; None after registering ``token`` to answer later."""
        found = self.find_many(task_ids)
        for task_id in task_ids:
            if task_id not in found:
                raise NotFound(f"no task with id {task_id!r}")
        waiter = Waiter(token, now + timeout, list(task_ids), True)
        # Those final already are held now, not looked for again.
        waiter.held = {i: t for i, t in found.items() if t.status in FINAL_STATUSES}
        value: dict[str, Any] | None = self.deferred.value_or_wait(waiter, timeout)
        return value

    def health(self, now: float, started: float) -> dict[str, Any]:
        counts = self.index.counts
        return {
            "status": "ok",
            "tasks": {s.value: counts.get(s, 0) for s in TaskStatus},
            "workers": self.roster.count_online(),
            # Pending tasks that no online worker could ever run (docs/operations.md).
            "unservable": sum(
                count
                for shape, count in self.index.pending_by_shape.items()
                if count and self.roster.why_unserved(shape) is not None
            ),
            "stale_outcomes": self.stale_outcomes,
            "dropped_messages": self.dropped_messages,
            "refused_replies": self.refused_replies,
            "uptime": now - started,
        }

    def metrics_report(self, now: float, started: float) -> dict[str, Any]:
        """The broker's counters, gauges and histograms (``broker.metrics.report``)."""
        extra = {
            "stale_outcomes": self.stale_outcomes,
            "dropped_messages": self.dropped_messages,
            "refused_replies": self.refused_replies,
        }
        return metrics.report(
            self.metrics, self.index, self.roster.online.values(), extra, now - started
        )

    def stats(self, now: float, started: float) -> dict[str, Any]:
        """Counts for a dashboard, cheap enough to ask every second with a million tasks:
        tasks by status (kept as they change), pending and running ones by handler (kept
        too), the online workers (one pass over them), and the tasks completed and failed
        in each ``broker.throughput`` bucket of the last 15 minutes."""
        counts = self.index.counts
        used = total = draining = 0
        by_kind: dict[str, int] = {}
        for worker in self.roster.online.values():
            kind = worker.kind.value
            by_kind[kind] = by_kind.get(kind, 0) + 1
            draining += worker.draining
            if worker.kind is WorkerKind.ZMQ:
                used += len(worker.running)
                total += worker.slots
        return {
            "tasks": {s.value: counts.get(s, 0) for s in TaskStatus},
            "handlers": _busiest(self.index.by_handler()),
            "workers": {
                "online": len(self.roster.online),
                "draining": draining,
                "slots": {"used": used, "total": total},
                "by_kind": by_kind,
            },
            "throughput": self.throughput.recent(now),
            "uptime": now - started,
        }

    def list_workers(self, query: ListWorkers) -> dict[str, Any]:
        """A page of workers' records in the order of their ids after ``query.after``: at
        most ``query.limit`` and about ``MAX_PAGE_BYTES`` (at least one worker)."""
        ids = sorted(i for i in self.roster.workers if i > query.after)
        page: list[dict[str, Any]] = []
        size = 0
        for worker_id in ids[: query.limit]:
            worker = self.roster.workers[worker_id]
            size += worker.size()
            if size > MAX_PAGE_BYTES and page:
                break
            page.append(worker.record())
        more = len(page) < len(ids)
        return {"workers": page, "next": page[-1]["id"] if more else None}

    def worker(self, worker_id: str) -> Worker:
        worker = self.roster.get(worker_id)
        if worker is None:
            raise NotFound(f"no worker with id {worker_id!r}")
        return worker

    # -- ZeroMQ workers ------------------------------------------------------------

    def _registered(self) -> int:
        """The number of a new registration."""
        self._registrations += 1
        return self._registrations

    def register(self, address: bytes, ready: Ready, now: float) -> Worker:
        """A worker said READY: (re)register it and take back the leases it still holds.

        An id is bound to its connection while it is online: a READY naming it from
        another (a second process given the same id, or one posing as it) is refused with
        ``IdentityTaken``, logged once per id and address, until the first is offline
        (BYE, or silent for the liveness window). The same connection may register again,
        and so may another whose READY carries the registration's session token (the
        same worker process, reconnected after a network blip: ``worker.agent``)."""
        worker_id = ready.id
        old = self.roster.get(worker_id)
        if old is not None and old.kind is WorkerKind.HTTP:
            raise Conflict(f"worker id {worker_id!r} is taken by an HTTP worker")
        if (
            old is not None
            and old.status is WorkerStatus.ONLINE
            and old.address != address
            and not (ready.session and hmac.compare_digest(ready.session, old.session))
        ):
            if self._refused_from.get(worker_id) != address:
                if len(self._refused_from) >= len(self.roster.online) + 1000:
                    self._refused_from.clear()  # ids long offline: at worst one more line each
                self._refused_from[worker_id] = address
                log.warning(
                    "refused READY as %s from a new connection: the worker is online on "
                    "another; accepted once that one is offline", worker_id,
                    extra={"worker_id": worker_id},
                )  # fmt: skip
            raise IdentityTaken(f"worker {worker_id} is online on another connection")
        self._refused_from.pop(worker_id, None)
        held = old.running if old is not None and old.status is WorkerStatus.ONLINE else {}
        # An admin's drain outlasts the registration (``drain_worker``).
        drained = old is not None and old.drained
        worker = Worker(
            id=worker_id,
            kind=WorkerKind.ZMQ,
            capabilities=frozenset(ready.capabilities).union(ready.tags),
            resources=ready.resources,
            slots=ready.slots,
            last_seen=now,
            address=address,
            host=ready.host,
            pid=ready.pid,
            free=dict(ready.resources),
            last_ping=now,
            tags=frozenset(ready.tags),
            registration=self._registered(),
            session=ready.session,
            adaptive_ping=ready.adaptive_ping,
            acks_in_dispatch=ready.acks_in_dispatch,
            draining=drained,
            drained=drained,
        )
        if old is not None:
            self.matcher.leave(old)
        self.roster.put(worker)
        self.matcher.join(worker)
        self._worker_changed(worker)
        refused: list[str] = []
        tasks = self.index.tasks
        for task_id, attempt in ready.running:
            task = tasks.get(task_id)
            if task is None and task_id in held:  # a stopped run of a task now in the store
                task = self.find(task_id)
            if (
                task is not None
                and task.attempts == attempt
                and task.worker_id == worker_id
                and (task.status is TaskStatus.RUNNING or held.get(task_id) == attempt)
            ):
                held.pop(task_id, None)
                self.orphans.discard(task_id)
                worker.running[task_id] = attempt
                worker.take(task.resources)
            else:
                refused.append(task_id)
        # Leases the old registration held that the worker no longer claims are lost.
        for task_id, attempt in held.items():
            task = tasks.get(task_id)
            if task is not None and task.attempts == attempt and task.status is TaskStatus.RUNNING:
                self._lose(task, now)
        self.matcher.touch(worker)
        if refused:
            self.outbox.cancel.setdefault(address, []).extend(refused)
        log.info(
            "worker %s registered: %d slots, serves %s",
            worker_id, ready.slots, listing(sorted(worker.capabilities)),
            extra={"worker_id": worker_id, "slots": ready.slots, "host": ready.host,
                   "pid": ready.pid, "claimed": len(worker.running), "refused": len(refused)},
        )  # fmt: skip
        return worker

    def worker_at(self, address: bytes) -> Worker | None:
        """The online worker registered from this socket, if any."""
        return self.roster.at(address)

    def seen(self, worker: Worker, now: float) -> None:
        """Any message from a worker is a sign of life."""
        worker.last_seen = now

    def report(
        self, worker: Worker, outcomes: list[RunOutcome], now: float, early: bool = False
    ) -> list[RunKey]:
        """Outcomes from a ZeroMQ worker; returns the runs to acknowledge (all of them).

        ``early``: a run that completed a task nothing depends on frees its slot now, and
        its task is recorded completed by ``settle``, which the caller must call before any
        other method but ``schedule`` and ``take_outbox`` (and ``report`` with ``early``):
        the socket loop sends the runs that take the freed slots first. The task's outcome
        makes no task ready, so no run is leased otherwise than it would be.
        """
        for outcome in outcomes:
            task_id, attempt = outcome.run
            if (
                early
                and outcome.status is TaskStatus.COMPLETED
                and self._free_early(worker, task_id, attempt, outcome.result, now)
            ):
                continue
            if self.completing:
                self.settle()  # this outcome sees the earlier ones, as they came
            self._outcome(
                worker, task_id, attempt, outcome.status, outcome.result, outcome.error, now,
                outcome.traceback,
            )  # fmt: skip
        return [outcome.run for outcome in outcomes]

    def drain(self, worker: Worker, now: float) -> None:
        """A worker is stopping: nothing new goes to it; its runs may still finish (it says
        BYE when they have, or when its grace is over)."""
        worker.stopping = True
        if not worker.draining:
            self._set_draining(worker, True)
            log.info(
                "worker %s is draining: %d runs left", worker.id, len(worker.running),
                extra={"worker_id": worker.id, "running": len(worker.running)},
            )  # fmt: skip

    def drain_worker(self, worker_id: str, on: bool, now: float) -> Worker:
        """An admin drains a worker (``on``): it gets no new task, its runs finish, and it
        stays drained when it registers again, until an admin resumes it (``on`` false).
        A worker stopping of its own accord stays draining whatever is asked.

        The drain is the worker's ``drained``, which the store keeps: the change is
        committed with this turn, before the reply, and a restarted broker loads it back
        with the worker (``load``), so that the worker is draining still when it registers
        again. A drained worker is kept while offline, however long, until resumed."""
        worker = self.worker(worker_id)
        if worker.drained != on:
            worker.drained = on
            self._worker_changed(worker)
        draining = on or worker.stopping
        if worker.draining != draining:
            self._set_draining(worker, draining)
            log.info(
                "worker %s %s by an admin: %d runs", worker.id,
                "drained" if draining else "resumed", len(worker.running),
            )  # fmt: skip
        return worker

    def _set_draining(self, worker: Worker, draining: bool) -> None:
        worker.draining = draining
        self.matcher.touch(worker)
        self.roster.changed()

    def goodbye(self, worker: Worker, now: float) -> None:
        """A worker shut down cleanly: its tasks go back to the queue without counting as lost."""
        self._offline(worker, now, count_lost=False)

    # -- HTTP workers ------------------------------------------------------------------

    def http_register(self, request: HttpRegister, now: float) -> tuple[Worker, bool]:
        old = self.roster.get(request.id)
        if old is not None and old.kind is WorkerKind.ZMQ:
            raise Conflict(f"worker id {request.id!r} is taken by a ZeroMQ worker")
        if old is not None:
            old.capabilities = frozenset(request.capabilities).union(request.tags)
            old.tags = frozenset(request.tags)
            old.resources = request.resources
            old.free = dict(request.resources)
            old.registration = self._registered()
            for task_id in old.running:
                task = self.find(task_id)
                if task is not None:
                    old.take(task.resources)
            old.last_seen = now
            self._http_online(old)
            return old, False
        worker = Worker(
            id=request.id,
            kind=WorkerKind.HTTP,
            capabilities=frozenset(request.capabilities).union(request.tags),
            resources=request.resources,
            slots=0,
            last_seen=now,
            free=dict(request.resources),
            tags=frozenset(request.tags),
            registration=self._registered(),
        )
        self.roster.workers[worker.id] = worker
        self._worker_changed(worker)
        self._go_online(worker)
        return worker, True

    def http_worker(self, worker_id: str, now: float) -> Worker:
        """An HTTP worker by id; a request from it is a sign of life and brings it back online."""
        worker = self.worker(worker_id)
        if worker.kind is not WorkerKind.HTTP:
            raise Conflict(f"worker {worker.id} is a ZeroMQ worker")
        worker.last_seen = now
        if worker.status is not WorkerStatus.ONLINE:
            self._http_online(worker)
        return worker

    def _http_online(self, worker: Worker) -> None:
        """An HTTP worker registered, or spoke while offline: it is online and, after a
        restart of the broker, holds again the leases it held (it has no READY to claim
        them with: a request of its own within the claim window is its claim)."""
        self._go_online(worker)
        self._worker_changed(worker)
        tasks = self.index.tasks
        # An orphan that ended meanwhile may have left memory: it has nothing to claim.
        for task_id in sorted(self.orphans & tasks.keys(), key=lambda i: tasks[i].seq):
            task = tasks[task_id]
            if task.worker_id == worker.id and task.status is TaskStatus.RUNNING:
                self.orphans.discard(task_id)
                worker.running[task_id] = task.attempts
                worker.take(task.resources)
        self.matcher.touch(worker)

    def http_next(self, worker_id: str, wait: float, token: object, now: float) -> None:
        """Queue a long-poll; it is answered through the outbox, with a task or at its deadline."""
        worker = self.http_worker(worker_id, now)
        self.deferred.open_poll(worker, token, now + wait)
        self.matcher.touch(worker)

    def http_complete(self, request: HttpComplete, now: float) -> Task:
        worker = self.http_worker(request.worker_id, now)
        task = self._known(request.task_id)
        if task.status is not TaskStatus.RUNNING or task.worker_id != worker.id:
            raise Conflict(f"task {task.id} is not running on worker {worker.id}")
        self._outcome(
            worker, task.id, task.attempts, request.status, request.result, request.error, now,
            request.traceback,
        )  # fmt: skip
        return task

    # -- time ------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest time at which ``tick`` has work besides pings and liveness."""
        return self.timers.next_deadline()

    def tick(self, now: float) -> list[bytes]:
        """Fire the timers due (back-offs, lease expiry, deferred answers, the claim window
        after a restart, liveness). Returns the addresses of the workers to ping now (what
        each PING says: ``ping``)."""
        pings: list[bytes] = []
        for kind, subject, detail in self.timers.due(now):
            if kind is TimerKind.LIVENESS:
                verdict = self.roster.due(subject, detail, now)
                if verdict is Verdict.PING:
                    pings.append(subject.address)
                elif verdict is Verdict.SILENT:
                    worker = subject
                    silent = now - worker.last_seen
                    log.warning(
                        "worker %s offline: silent for %.1f s", worker.id, silent,
                        extra={"worker_id": worker.id, "silent_seconds": round(silent, 3),
                               "running": len(worker.running)},
                    )  # fmt: skip
                    self._offline(worker, now, count_lost=True)
            elif kind is TimerKind.READY:
                task = subject
                if task.status is TaskStatus.PENDING and not task.queued and task.not_before <= now:
                    self._push_ready(task)
            elif kind is TimerKind.LEASE:
                task = subject
                if task.status is TaskStatus.RUNNING and task.attempts == detail:
                    self._expire(task, now)
            elif kind is TimerKind.WAIT:
                self.deferred.expire(subject)
            elif kind is TimerKind.POLL:
                self.deferred.poll_due(subject, detail, now)
                self.matcher.touch(subject)
            elif kind is TimerKind.ORPHANS:
                self._orphans_unclaimed(now)
        return pings

    def ping(self, address: bytes) -> Ping:
        """What the PING to the worker at this address says: its interval until the next."""
        worker = self.roster.at(address)
        return Ping(worker.interval if worker is not None else self.timing.ping_interval)

    def _orphans_unclaimed(self, now: float) -> None:
        """The claim window after a restart is over: leases nobody claimed are lost."""
        orphans, self.orphans = self.orphans, set()
        tasks = self.index.tasks
        for task_id in sorted(orphans & tasks.keys(), key=lambda i: tasks[i].seq):
            task = tasks[task_id]
            if task.status is TaskStatus.RUNNING:
                log.warning(
                    "task %s: no worker claimed its lease after restart", task_id,
                    extra={"task_id": task_id, "worker_id": task.worker_id,
                           "handler": task.handler},
                )  # fmt: skip
                self._lose(task, now)

    def _held_runs(self) -> set[str]:
        """The tasks whose runs online workers hold (a stopped one until it is reported)."""
        return {task_id for worker in self.roster.online.values() for task_id in worker.running}

    def prune(self, now: float, limit: int = PRUNE_BATCH) -> int:
        """Forget up to ``limit`` tasks that finished more than ``retention`` seconds ago,
        and up to ``WORKER_PRUNE_BATCH`` workers offline for longer than
        ``worker_retention``; returns how many tasks it forgot."""
        before = now - self.timing.retention
        if self.store is not None:
            # Finished tasks are in the store: pruned there, in a transaction of their own.
            finished = sum(self.index.counts[status] for status in FINAL_STATUSES)
            excess = max(0, finished - self.max_finished) if self.max_finished else 0
            # Left for later, as a purge leaves them: a task changed and not committed yet
            # (a retry made it pending again, the store still says it failed), and a run
            # stopped that its worker still holds (its report gives back what the task's
            # record names).
            keep = self._dirty.keys() | self._held_runs()
            deleted = self.store.prune(before, excess, limit, keep)
            for task_id, status in deleted:
                self._dirty.pop(task_id, None)
                self.index.forget(task_id, status)
            count = len(deleted)
        else:
            pruned = self.index.prune(before, limit)
            for task in pruned:
                self._dirty.pop(task.id, None)
            self._pruned.extend(pruned)
            count = len(pruned)
        forget = self.roster.forget_offline(now - self.timing.worker_retention, WORKER_PRUNE_BATCH)
        for worker in forget:
            self._dirty_workers.pop(worker.id, None)
            self._forgotten_workers.append(worker.id)
        return count

    # -- dispatching -------------------------------------------------------------------------

    def schedule(self, now: float) -> int:
        """Lease ready tasks to workers with free slots, best priority first; returns leases made.

        Considers only the shapes something changed for (a task became ready, a worker that
        could take one freed a slot or came): ``broker.dispatch``.
        """
        if not self.matcher.pending():
            return 0

        def lease(task: Task, worker: Worker) -> None:
            self._lease(task, worker, now)

        return self.matcher.match(lease)


def _busiest(handlers: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The ``STATS_HANDLERS`` handlers with the most tasks, and the others' sum as one."""
    if len(handlers) <= STATS_HANDLERS:
        return handlers
    shown = heapq.nlargest(
        STATS_HANDLERS, handlers, key=lambda name: (sum(handlers[name].values()), name)
    )
    out = {name: handlers[name] for name in sorted(shown)}
    rest = out.setdefault(metrics.OTHER, {"pending": 0, "running": 0})
    for name in handlers.keys() - shown:
        for status, count in handlers[name].items():
            rest[status] = rest.get(status, 0) + count
    return out


def _spec_of(task: Task | TaskSpec) -> dict[str, Any]:
    """What an idempotency key stands for: every field of a submission."""
    return {
        "name": task.name,
        "handler": task.handler,
        "args": task.args,
        "dependencies": list(task.dependencies),
        "priority": task.priority,
        "max_retries": task.max_retries,
        "timeout": task.timeout,
        "requires": sorted(task.requires),
        "resources": dict(task.resources),
    }


def _same_spec(
    key: str, first: dict[str, Any], again: dict[str, Any], what: str, where: str
) -> None:
    """An idempotency key names the task it made: sent again with another spec, it is a
    conflict, not the same request sent again."""
    differ = [name for name in first if first[name] != again[name]]
    if differ:
        raise Conflict(
            f"{where}idempotency_key {key!r} names {what}, submitted with another {differ[0]}"
        )
