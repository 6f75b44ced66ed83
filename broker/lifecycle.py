"""The lifecycle of a task and of its leases: every transition, and the state they keep.

A task is ``pending`` (waiting for its dependencies, a delay or back-off, or a worker),
``running`` (one open lease on one worker), then ``completed``, ``failed`` or
``cancelled`` for good; ``docs/states.md`` draws both machines and names the method that
makes each transition. ``Lifecycle`` holds the state every part of the core shares
(tasks and their indexes, the ready queues, the roster, the timers, deferred answers,
the outbox, the changes to store) and makes the transitions; ``broker.core.Scheduler``
builds on it with what the outside world asks. Nothing here blocks, does I/O or reads a
clock: ``now`` comes from the caller.

Invariants, which ``broker.invariants`` checks after every step in the tests:

- a running task's last lease is open, of attempt ``attempts``, and held by the worker
  ``worker_id`` names: in that worker's ``running`` with that attempt, and the worker is
  online, or the task is an orphan waiting to be claimed after a restart;
- every other lease of every task is closed, with its outcome;
- a pending task is in exactly one of: its ready queue, waiting on dependencies (listed
  under each), waiting for its ``not_before`` (a timer is set);
- a finished task has ``completed_at`` and is in no ready queue;
- every entry of a worker's ``running`` names a lease of that worker: the task's open
  lease, or one that ended while the worker was told to stop it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.dispatch import Matcher
from broker.index import TaskIndex
from broker.metrics import Metrics
from broker.queue import ReadyQueues, Shape
from broker.roster import DEFAULT_PING_RATE, Roster
from broker.state import Lease, Task, Worker
from broker.store import Store
from broker.throughput import Throughput
from broker.timers import TimerKind, Timers
from broker.waiters import Deferred
from common.errors import NotFound
from common.messages import Assignment
from common.models import FINAL_STATUSES, LeaseOutcome, TaskStatus, WorkerKind

log = logging.getLogger(__name__)

#: Times a task may go back to the queue because its worker was lost before it fails.
MAX_LOST = 3
#: Finished tasks the broker keeps in memory, the most recent ones, once they are committed
#: (with a store), and the most bytes of them: the others are read from the store when asked
#: for. 10,000 were tried: the batch path was no faster (a waiter holds its tasks as they
#: finish, so a wait seldom reads the store), and churning ten times as many 1 KB tasks
#: through memory left the broker's RSS 1.5x higher after a million than after 10,000.
FINISHED_IN_MEMORY = 1000
FINISHED_BYTES_IN_MEMORY = 64 * 1024 * 1024


@dataclass(frozen=True)
class Timing:
    """The core's time constants (from ``common.settings.Settings``)."""

    ping_interval: float = 1.0
    liveness: int = 3
    #: Pings a second to all ZeroMQ workers together, about (``broker.roster``).
    ping_rate: float = DEFAULT_PING_RATE
    http_liveness: float = 15.0
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0
    timeout_grace: float = 5.0
    retention: float = 7 * 24 * 3600.0
    worker_retention: float = 3600.0

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
    #: Outcomes of watched tasks, to send unasked after the commit: (token, brief record).
    notices: list[tuple[object, dict[str, Any]]] = field(default_factory=list)


class Lifecycle:
    """The core's state and the transitions of tasks and leases."""

    def __init__(
        self, timing: Timing | None = None, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.timing = timing or Timing()
        timing = self.timing
        #: Where task ids come from (tests give a sequence they can replay).
        self.random_bytes = random_bytes
        self.index = TaskIndex()
        self.timers = Timers()
        self.roster = Roster(
            timing.ping_interval, timing.liveness, timing.http_liveness, self.timers,
            timing.ping_rate,
        )  # fmt: skip
        self.deferred = Deferred(self.find, self.timers, self._reply, self.show, self._notice)
        #: Where finished tasks are once they leave memory (None: they never do, as in
        #: tests of the core alone): ``load`` sets it.
        self.store: Store | None = None
        #: Finished tasks held at most, beyond which the oldest are pruned (``--max-finished``;
        #: 0: no limit, ``retention`` alone).
        self.max_finished = 0
        #: Finished tasks kept in memory once committed, the most recent (with a store).
        self.finished_in_memory = FINISHED_IN_MEMORY
        #: Outcomes refused because their lease was no longer current.
        self.stale_outcomes = 0
        #: One-way messages (READY, DONE) dropped because they broke the protocol.
        self.dropped_messages = 0
        #: Large replies refused because their peer had too much unread on the broker.
        self.refused_replies = 0
        #: Counters and histograms of task events (``broker.metrics``).
        self.metrics = Metrics()
        metrics = self.metrics
        #: The counter of each final status.
        self._finished_counters = {
            TaskStatus.COMPLETED: metrics.completed,
            TaskStatus.FAILED: metrics.failed,
            TaskStatus.CANCELLED: metrics.cancelled,
        }
        #: Tasks completed and failed over the last minutes (``stats``).
        self.throughput = Throughput()
        self.outbox = Outbox()
        self._dirty: dict[str, Task] = {}
        self._pruned: list[Task] = []
        #: Workers whose stored fields changed (registered, went offline), and ids of
        #: those forgotten, since the last ``take_workers``.
        self._dirty_workers: dict[str, Worker] = {}
        #: Registrations so far (``Worker.registration``).
        self._registrations = 0
        self._forgotten_workers: list[str] = []
        self._next_seq = 1
        self.ready = ReadyQueues()
        #: Which worker takes which ready task (``broker.dispatch``).
        self.matcher = Matcher(self.ready, self.roster.online)
        #: Task id -> the pending tasks waiting for it to complete.
        self.dependents: dict[str, list[Task]] = {}
        #: Leases recovered from the store after a restart, waiting for their worker to claim them.
        self.orphans: set[str] = set()
        #: Completed runs whose slot is free already, their tasks still running until
        #: ``settle`` records them (``_free_early``): (task, worker, attempt, result, when).
        self.completing: list[tuple[Task, Worker, int, bytes | None, float]] = []
        #: Shapes of tasks logged as waiting for no worker, since the roster's generation.
        self._warned: set[Shape] = set()
        self._warned_at = -1

    @property
    def tasks(self) -> dict[str, Task]:
        return self.index.tasks

    @property
    def workers(self) -> dict[str, Worker]:
        return self.roster.workers

    # -- persistence -------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number the next submitted task gets: counts every task ever made."""
        return self._next_seq

    def has_changes(self) -> bool:
        """Whether anything changed (or was pruned) since the last ``take_dirty``,
        ``take_pruned`` and ``take_workers``."""
        return bool(self._dirty or self._pruned or self._dirty_workers or self._forgotten_workers)

    def take_dirty(self) -> list[Task]:
        """Tasks changed since the last call: the store writes these in one transaction."""
        dirty = list(self._dirty.values())
        self._dirty.clear()
        return dirty

    def take_pruned(self) -> list[Task]:
        """Tasks pruned since the last call: the store deletes these."""
        pruned, self._pruned = self._pruned, []
        return pruned

    def take_workers(self) -> tuple[list[Worker], list[str]]:
        """Workers changed since the last call, and ids of those forgotten: the store
        writes these with the tasks, in the same transaction."""
        changed = list(self._dirty_workers.values())
        self._dirty_workers.clear()
        forgotten, self._forgotten_workers = self._forgotten_workers, []
        return changed, forgotten

    def _worker_changed(self, worker: Worker) -> None:
        """What the store keeps of this worker changed: it is written with the next commit."""
        self._dirty_workers[worker.id] = worker

    def take_outbox(self) -> Outbox:
        outbox, self.outbox = self.outbox, Outbox()
        return outbox

    def _known(self, task_id: str) -> Task:
        task = self.find(task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id!r}")
        return task

    def find(self, task_id: str) -> Task | None:
        """The task with this id: in memory, or finished and read from the store (a new
        object each time, which nothing changes), or None."""
        task = self.index.tasks.get(task_id)
        if task is None and self.store is not None:
            return self.store.find(task_id)
        return task

    def find_many(self, task_ids: list[str]) -> dict[str, Task]:
        """The tasks with these ids that exist, by id: those in memory, and the others read
        from the store in one go (a batch that finished a while ago is no longer in memory,
        and one read a task would cost a query each)."""
        tasks = self.index.tasks
        found: dict[str, Task] = {}
        missing: list[str] = []
        for task_id in task_ids:
            task = tasks.get(task_id)
            if task is not None:
                found[task_id] = task
            elif task_id not in found:
                missing.append(task_id)
        if missing and self.store is not None:
            found.update(self.store.find_many(missing))
        return found

    def _keyed(self, key: str) -> Task | None:
        """The task that holds this idempotency key, in memory or the store."""
        task = self.index.by_key.get(key)
        if task is None and self.store is not None:
            return self.store.find_key(key)
        return task

    def evict(self) -> int:
        """Let the finished tasks beyond the most recent ``finished_in_memory`` leave
        memory, once committed: the socket loop calls this right after each commit. Returns
        how many left (none while a change is not committed)."""
        if self.store is None or self._dirty:
            return 0
        keep = self.finished_in_memory
        if self.max_finished:
            keep = min(keep, self.max_finished)
        return self.index.evict_finished(keep, FINISHED_BYTES_IN_MEMORY)

    def _reply(self, token: object, value: Any) -> None:
        self.outbox.replies.append((token, value))

    def _notice(self, token: object, outcome: dict[str, Any]) -> None:
        self.outbox.notices.append((token, outcome))

    def show(self, task: Task) -> dict[str, Any]:
        """The task's record as a client sees it, with why it waits if it is pending."""
        record = task.record()
        if task.status is TaskStatus.PENDING:
            record["waiting_for"] = self.waiting_for(task)
        return record

    def waiting_for(self, task: Task) -> dict[str, Any]:
        """Why a pending task is not running: its dependencies, a delay or a retry's
        back-off (and until when), no online worker that could run it (and why), or only a
        free slot."""
        if task.waiting_on:
            tasks, completed = self.index.tasks, TaskStatus.COMPLETED
            unfinished = [d for d in task.dependencies if (dep := tasks.get(d)) is not None
                          and dep.status is not completed]  # fmt: skip
            return {"reason": "dependencies", "tasks": unfinished}
        if not task.queued:
            reason = "back-off" if task.failures else "delay"
            return {"reason": reason, "ready_at": task.not_before}
        unserved = self.roster.why_unserved(task.shape)
        if unserved is not None:
            return {"reason": "no worker", "detail": unserved}
        return {"reason": "slot", "detail": "every online worker that can run it is busy"}

    # -- leases and outcomes ----------------------------------------------------------

    def _lease(self, task: Task, worker: Worker, now: float) -> None:
        task.attempts += 1
        task.worker_id = worker.id
        task.started_at = now
        task.completed_at = None
        self._set_status(task, TaskStatus.RUNNING)
        task.leases.append(Lease(task.attempts, worker.id, now))
        if task.attempts == 1:
            self.metrics.wait.observe(now - task.created_at)
        worker.running[task.id] = task.attempts
        worker.take(task.resources)
        if task.timeout is not None:
            deadline = now + task.timeout + self.timing.timeout_grace
            self.timers.add(deadline, TimerKind.LEASE, task, task.attempts)
        if worker.kind is WorkerKind.HTTP:
            self.deferred.answer_poll(worker, task, now)
        else:
            assert worker.address is not None
            entry = Assignment(task.id, task.attempts, task.handler, task.args, task.timeout)
            self.outbox.dispatch.setdefault(worker.address, []).append(entry)
        self.matcher.touch(worker)

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
        traceback: str | None = None,
    ) -> None:
        """A worker reports how a run ended; only the current lease's report counts."""
        # A run stopped (cancelled, expired) holds its slot and resources until reported,
        # while its task, final, may have left memory for the store.
        task = self.find(task_id)
        self._free_slot(worker, task_id, attempt, task)
        lease = self._reported_lease(worker, task, attempt)
        if task is None or lease is None:
            self._refuse(worker, task, attempt, status)
            return
        if status is TaskStatus.COMPLETED or status is TaskStatus.FAILED:
            self.metrics.run.observe(now - lease.started_at)
        if status is TaskStatus.COMPLETED:
            self._close_lease(task, LeaseOutcome.COMPLETED, now)
            self._finish(task, TaskStatus.COMPLETED, now, result=result)
        elif status is TaskStatus.FAILED:
            self._close_lease(task, LeaseOutcome.FAILED, now, error, traceback)
            self._fail_attempt(task, error or "failed", now)
        else:
            self._release(task, now)  # given up without being asked (its worker is stopping)

    def _free_slot(self, worker: Worker, task_id: str, attempt: int, task: Task | None) -> None:
        """The slot and resources of a reported run, given back if its worker holds it still."""
        if worker.running.get(task_id) == attempt:
            del worker.running[task_id]
            if task is not None:
                worker.give_back(task.resources)
            self.matcher.touch(worker)

    @staticmethod
    def _reported_lease(worker: Worker, task: Task | None, attempt: int) -> Lease | None:
        """The lease a worker's report of this run ends: its task's open one, if the run is
        that lease's (on this worker, of the current attempt); else None (refused)."""
        lease = task.current_lease() if task is not None else None
        if lease is None or lease.worker_id != worker.id or attempt != lease.attempt:
            return None
        return lease

    def _free_early(
        self, worker: Worker, task_id: str, attempt: int, result: bytes | None, now: float
    ) -> bool:
        """A completed run's slot, freed at once, its task recorded completed by ``settle``:
        whether the run was one that may wait so (the current lease of a task in memory
        that nothing depends on, so that recording it later makes no task ready later)."""
        task = self.index.tasks.get(task_id)
        if (
            task is None
            or worker.running.get(task_id) != attempt
            or task_id in self.dependents
            or self._reported_lease(worker, task, attempt) is None
        ):
            return False
        self._free_slot(worker, task_id, attempt, task)
        self.completing.append((task, worker, attempt, result, now))
        return True

    def settle(self) -> None:
        """Record the completed runs whose slots ``_free_early`` freed, as ``_outcome`` records
        any (their slots free, nothing is given back twice)."""
        completing, self.completing = self.completing, []
        for task, worker, attempt, result, now in completing:
            self._outcome(worker, task.id, attempt, TaskStatus.COMPLETED, result, None, now)

    def _refuse(self, worker: Worker, task: Task | None, attempt: int, status: TaskStatus) -> None:
        """An outcome for a lease that is no longer current: never recorded."""
        if task is None:
            return  # pruned long ago
        lease = next((le for le in reversed(task.leases) if le.attempt == attempt), None)
        if lease is None or lease.worker_id != worker.id:
            self.stale_outcomes += 1
            log.warning(
                "refused outcome of %s #%s from %s: no such lease", task.id, attempt, worker.id,
                extra={"task_id": task.id, "attempt": attempt, "worker_id": worker.id},
            )  # fmt: skip
            return
        if lease.outcome in (status, LeaseOutcome.CANCELLED) or lease.refused == status:
            # The same report again (its ACK was lost, or it was refused already), or how
            # a cancelled run ended: none of these is news, and the cancel stands.
            return
        self.stale_outcomes += 1
        lease.refused = status
        self._dirty[task.id] = task
        log.warning(
            "refused stale outcome %r of %s #%s from %s: the lease ended %s",
            status.value, task.id, attempt, worker.id, lease.outcome,
            extra={"task_id": task.id, "attempt": attempt, "worker_id": worker.id,
                   "status": status.value, "outcome": lease.outcome},
        )  # fmt: skip

    def _close_lease(
        self,
        task: Task,
        outcome: LeaseOutcome,
        now: float,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        lease = task.current_lease()
        if lease is not None:
            lease.ended_at = now
            lease.outcome = outcome
            lease.error = error
            lease.traceback = traceback

    def _fail_attempt(self, task: Task, error: str, now: float) -> None:
        task.failures += 1
        if task.failures <= task.max_retries:
            task.error = error
            backoff = min(
                self.timing.retry_backoff * 2 ** (task.failures - 1), self.timing.retry_backoff_max
            )
            task.not_before = now + backoff
            log.info(
                "task %s requeued after failed attempt #%d on %s: retry %d of %d in %g s",
                task.id, task.attempts, task.worker_id, task.failures, task.max_retries, backoff,
                extra={"task_id": task.id, "attempt": task.attempts, "worker_id": task.worker_id,
                       "handler": task.handler, "backoff": backoff},
            )  # fmt: skip
            self.metrics.count(self.metrics.retried, task.handler)
            self._requeue(task, now)
        else:
            self._finish(task, TaskStatus.FAILED, now, error=error)

    def _expire(self, task: Task, now: float) -> None:
        """The broker's own time limit: the worker did not report within timeout + grace."""
        self._stop_run(task)
        self.metrics.count(self.metrics.lost, task.handler)
        log.warning(
            "task %s: lease #%d on %s expired, no report within its timeout and grace",
            task.id, task.attempts, task.worker_id,
            extra={"task_id": task.id, "attempt": task.attempts, "worker_id": task.worker_id,
                   "handler": task.handler},
        )  # fmt: skip
        error = f"timed out after {task.timeout:g} s (lease expired)"
        self._close_lease(task, LeaseOutcome.EXPIRED, now, error)
        self._fail_attempt(task, error, now)

    def _stop_run(self, task: Task) -> None:
        """Tell the worker of a running task to stop it; an HTTP worker cannot be told, so
        its slot is freed now."""
        worker = self.roster.get(task.worker_id or "")
        if worker is not None and worker.address is not None:
            self.outbox.cancel.setdefault(worker.address, []).append(task.id)
        elif worker is not None:
            self._end_lease(worker, task)

    def _lose(self, task: Task, now: float) -> None:
        """The task's worker is gone: run it again, at most ``MAX_LOST`` times."""
        task.lost += 1
        metrics = self.metrics
        metrics.count(metrics.lost, task.handler)
        log.info(
            "task %s: lease #%d on %s lost (%d of %d); %s", task.id, task.attempts,
            task.worker_id, task.lost, MAX_LOST,
            "failed" if task.lost > MAX_LOST else "requeued",
            extra={"task_id": task.id, "attempt": task.attempts, "worker_id": task.worker_id,
                   "handler": task.handler},
        )  # fmt: skip
        self._close_lease(task, LeaseOutcome.LOST, now)
        if task.lost > MAX_LOST:
            self._finish(task, TaskStatus.FAILED, now, error="worker lost")
        else:
            metrics.count(metrics.retried, task.handler)
            self._requeue(task, now)

    def _requeue(self, task: Task, now: float) -> None:
        """Back to pending, ready at ``not_before``: a pending task has no worker (its leases
        say where it ran)."""
        self._set_status(task, TaskStatus.PENDING)
        task.worker_id = None
        self._make_ready(task, now)

    def _release(self, task: Task, now: float) -> None:
        """Its worker gave the run back (stopping): run it again, counting no failure or loss."""
        self._close_lease(task, LeaseOutcome.RELEASED, now)
        self._requeue(task, now)

    def _go_online(self, worker: Worker) -> None:
        """Mark a worker online: its liveness is watched, and dispatch may use its slots."""
        self.roster.go_online(worker)
        self.matcher.join(worker)

    def _offline(self, worker: Worker, now: float, *, count_lost: bool) -> None:
        self.roster.go_offline(worker)
        self.matcher.leave(worker)
        self._worker_changed(worker)
        self.deferred.drop_polls(worker)
        running, worker.running = worker.running, {}
        worker.free = dict(worker.resources)
        tasks = self.index.tasks
        for task_id, attempt in running.items():
            task = tasks.get(task_id)
            if task is None or task.status is not TaskStatus.RUNNING or task.attempts != attempt:
                continue
            if count_lost:
                self._lose(task, now)
            else:
                self._release(task, now)

    def _end_lease(self, worker: Worker, task: Task) -> None:
        if worker.running.pop(task.id, None) is not None:
            worker.give_back(task.resources)
            self.matcher.touch(worker)

    def _finish(
        self,
        task: Task,
        status: TaskStatus,
        now: float,
        *,
        result: bytes | None = None,
        error: str | None = None,
    ) -> None:
        """Record a final outcome, then release or fail the dependents (iteratively). A
        dependent that fails names the dependency that ended it and, further down a chain,
        the task whose failure started it."""
        Root = tuple[str, TaskStatus] | None
        count, finished = self.metrics.count, self._finished_counters
        stack: list[tuple[Task, TaskStatus, bytes | None, str | None, Root]] = [
            (task, status, result, error, None)
        ]
        while stack:
            current, final, res, err, root = stack.pop()
            if current.status in FINAL_STATUSES:
                continue
            current.result = res
            current.error = err
            current.completed_at = now
            self._set_status(current, final)
            count(finished[final], current.handler)
            self.throughput.count(final, now)
            deferred = self.deferred
            if current.id in deferred.by_task or current.id in deferred.watchers:
                deferred.finished(current.id)
            for child in self.dependents.pop(current.id, []):
                if child.status is not TaskStatus.PENDING:
                    continue
                if final is TaskStatus.COMPLETED:
                    child.waiting_on -= 1
                    if child.waiting_on == 0:
                        self._make_ready(child, now)
                else:
                    start = root or (current.id, final)
                    reason = _dependency_failed(current.id, final, start)
                    stack.append((child, TaskStatus.FAILED, None, reason, start))

    # -- helpers -------------------------------------------------------------------------------

    def _attach_dependencies(self, task: Task) -> None:
        task.waiting_on = 0
        for dep_id in task.dependencies:
            dep = self.find(dep_id)
            if dep is None or dep.status is TaskStatus.COMPLETED:
                continue  # a missing one can only be a dependency pruned after completing
            if dep.status in FINAL_STATUSES:
                start = self._first_to_end(dep)
                reason = _dependency_failed(dep_id, dep.status, (start.id, start.status))
                self._finish(task, TaskStatus.FAILED, task.created_at, error=reason)
                return
            task.waiting_on += 1
            self.dependents.setdefault(dep_id, []).append(task)

    def _first_to_end(self, task: Task) -> Task:
        """The task whose failure or cancellation started the chain that failed this one
        (itself if it failed on its own), as far as the tasks in memory tell."""
        tasks, seen = self.index.tasks, {task.id}
        while task.error is not None and task.error.startswith("dependency "):
            ended = (tasks.get(dep_id) for dep_id in task.dependencies)
            cause = next((d for d in ended if d is not None and d.status in _ENDED_BADLY), None)
            if cause is None or cause.id in seen:
                break
            seen.add(cause.id)
            task = cause
        return task

    def _make_ready(self, task: Task, now: float) -> None:
        # Nothing to store: what makes a task ready (a submit, a status change) is stored by
        # its caller; waiting_on and the queues are derived, so a restart rewrites nothing.
        if task.not_before > now:
            self.timers.add(task.not_before, TimerKind.READY, task)
        else:
            self._push_ready(task)

    def _push_ready(self, task: Task) -> None:
        if not task.queued:
            self.ready.push(task)
            self.matcher.pushed(task)

    def _set_status(self, task: Task, status: TaskStatus) -> None:
        self.index.set_status(task, status)
        self._dirty[task.id] = task


#: Final statuses that fail the dependents of a task (and that a retry starts again from).
ENDED_BADLY = _ENDED_BADLY = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})


def _dependency_failed(dep_id: str, status: TaskStatus, start: tuple[str, TaskStatus]) -> str:
    """The error of a task failed by its dependency ``dep_id``: which one, and the task that
    started the chain when it is another."""
    reason = f"dependency {dep_id} {status.value}"
    if start[0] != dep_id:
        reason += f" (the first to end: task {start[0]} {start[1].value})"
    return reason
