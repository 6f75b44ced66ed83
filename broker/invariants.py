"""What must hold of the scheduling core between any two steps, checked from scratch.

``check(core)`` walks every task, worker, lease, queue, index and deferred answer and
raises ``InvariantError`` naming the first rule broken. It is written against the
core's state directly, not its methods, so a bug in a method cannot hide itself; it
costs O(tasks + workers), which is for tests (the core's tests run it after every
operation), never for the broker's loop.

The rules are the ones the modules' docstrings state: ``broker.lifecycle`` (tasks and
leases), ``broker.index`` (counts, sets and orders), ``broker.roster`` (who is online,
and the liveness timers), ``broker.dispatch`` (the matcher's services, heaps and parked
shapes, which must agree with the workers and queues) and ``broker.waiters`` (deferred
answers).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

from broker.core import Scheduler
from broker.dispatch import provides, service_of
from broker.index import ACTIVE_STATUSES
from broker.queue import Shape
from broker.state import Lease, Task
from broker.timers import TimerKind
from broker.waiters import MAX_WATCHERS, client_of
from common.messages import RunKey
from common.models import FINAL_STATUSES, LeaseOutcome, TaskStatus, WorkerStatus


class InvariantError(AssertionError):
    """A rule of the core's state does not hold."""


def check(core: Scheduler) -> None:
    """Raise ``InvariantError`` if any rule does not hold."""
    _index(core)
    _tasks(core)
    _completing(core)
    _workers(core)
    _liveness(core)
    _matcher(core)
    _waiters(core)


def _fail(message: str) -> None:
    raise InvariantError(message)


def _index(core: Scheduler) -> None:
    index, tasks = core.index, core.index.tasks
    actual = Counter(task.status for task in tasks.values())
    if core.store is not None:
        # Finished tasks leave memory for the store: they are counted where they are.
        finished = core.store.finished_page(None, None, 0, 2**62, 2**62)
        actual.update(task.status for task in finished if task.id not in tasks)
    for status in TaskStatus:
        if index.counts.get(status, 0) != actual.get(status, 0):
            _fail(f"count of {status}: {index.counts.get(status, 0)}, tasks: {actual[status]}")
    for status, bucket in index.by_status.items():
        expected = {task.id for task in tasks.values() if task.status is status}
        stale = any(tasks.get(t.id) is not t for t in bucket)
        if stale or {task.id for task in bucket} != expected:
            _fail(f"the set of {status} tasks differs from the tasks of that status")
    for key, task in index.by_key.items():
        if tasks.get(task.id) is not task or task.idempotency_key != key:
            _fail(f"idempotency key {key!r} names a task that is gone or has another key")
    for task in tasks.values():
        if task.idempotency_key is not None and index.by_key.get(task.idempotency_key) is not task:
            _fail(f"task {task.id}'s idempotency key does not find it")
    listed = [task for task in index.order if tasks.get(task.id) is task]
    if len(listed) != len(tasks) or any(a.seq >= b.seq for a, b in itertools.pairwise(listed)):
        _fail("the submission order does not hold every task once, by seq")
    in_memory = sum(t.size() for t in tasks.values() if t.status in FINAL_STATUSES)
    if index.finished_bytes != in_memory:
        _fail(f"finished tasks in memory hold {in_memory} bytes, {index.finished_bytes} counted")
    in_order = {task.id for task in index.finished if tasks.get(task.id) is task}
    missing = [t.id for t in tasks.values() if t.status in FINAL_STATUSES and t.id not in in_order]
    if missing:
        _fail(f"finished tasks missing from the completion order: {missing[:3]}")
    shapes = Counter(t.shape for t in tasks.values() if t.status is TaskStatus.PENDING)
    if +index.pending_by_shape != shapes:
        _fail(f"pending tasks by shape: counted {dict(index.pending_by_shape)}, are {dict(shapes)}")
    active = Counter((t.handler, t.status) for t in tasks.values() if t.status in ACTIVE_STATUSES)
    counted = {key: count for key, count in index.active.items() if count}
    if counted != dict(active):
        _fail(f"pending and running tasks by handler: counted {counted}, are {dict(active)}")
    if any(task.seq >= core.next_seq for task in tasks.values()):
        _fail("a task's seq is not below the next one to give")


def _tasks(core: Scheduler) -> None:
    tasks = core.index.tasks
    waiting_for = Counter(
        child.id for dep_id, children in core.dependents.items() for child in children
    )
    for dep_id in core.dependents:
        dep = tasks.get(dep_id)
        if dep is None or dep.status in FINAL_STATUSES:
            _fail(f"dependents are listed under {dep_id}, which is gone or final")
    ready_timers = {id(subject) for kind, subject in _timers(core) if kind is TimerKind.READY}
    for task in tasks.values():
        attempts = [lease.attempt for lease in task.leases]
        if attempts != list(range(1, len(attempts) + 1)) or task.attempts != len(attempts):
            _fail(f"task {task.id}: attempts {task.attempts}, leases numbered {attempts}")
        open_leases = [lease for lease in task.leases if lease.outcome is None]
        if task.status is TaskStatus.RUNNING:
            _running(core, task, open_leases)
        elif open_leases:
            _fail(f"task {task.id} is {task.status} with an open lease")
        if task.status is TaskStatus.PENDING and task.worker_id is not None:
            _fail(f"pending task {task.id} names worker {task.worker_id}")
        if task.status is TaskStatus.PENDING:
            queued = task.queued
            waiting = task.waiting_on > 0
            delayed = id(task) in ready_timers
            if waiting and waiting_for[task.id] != task.waiting_on:
                _fail(f"task {task.id} waits on {task.waiting_on}, listed {waiting_for[task.id]}")
            if queued + waiting != 1 and not (delayed and not queued and not waiting):
                _fail(
                    f"pending task {task.id}: queued={queued} waiting_on={task.waiting_on} "
                    f"delayed={delayed}"
                )
        elif task.status in FINAL_STATUSES and task.completed_at is None:
            _fail(f"task {task.id} is {task.status} without completed_at")


def _running(core: Scheduler, task: Task, open_leases: list[Lease]) -> None:
    if len(open_leases) != 1 or open_leases[0] is not task.leases[-1]:
        _fail(f"running task {task.id} has {len(open_leases)} open leases")
    lease = task.leases[-1]
    if lease.worker_id != task.worker_id:
        _fail(f"running task {task.id}'s lease is {lease.worker_id}'s, not {task.worker_id}'s")
    if task.id in core.orphans:
        return
    worker = core.roster.get(task.worker_id or "")
    if worker is None or worker.status is not WorkerStatus.ONLINE:
        _fail(f"running task {task.id}'s worker {task.worker_id} is not online")
    elif worker.running.get(task.id) != task.attempts and not any(
        entry[0] is task and entry[1] is worker and entry[2] == task.attempts
        for entry in core.completing
    ):  # (a completed run whose slot is freed, its task not recorded yet: ``settle``)
        _fail(f"running task {task.id} is not in {worker.id}'s running as #{task.attempts}")


def _completing(core: Scheduler) -> None:
    seen: set[str] = set()
    for task, worker, attempt, _, _ in core.completing:
        lease = task.current_lease()
        if (
            task.status is not TaskStatus.RUNNING
            or core.index.tasks.get(task.id) is not task
            or lease is None
            or lease.worker_id != worker.id
            or attempt != task.attempts
        ):
            _fail(f"completing {task.id} #{attempt} is not its running task's current lease")
        if task.id in worker.running or task.id in core.dependents or task.id in seen:
            _fail(f"completing {task.id} is still running on {worker.id}, depended on or twice")
        seen.add(task.id)


def _workers(core: Scheduler) -> None:
    roster = core.roster
    online = {w.id for w in roster.workers.values() if w.status is WorkerStatus.ONLINE}
    stale = any(roster.workers[i] is not w for i, w in roster.online.items())
    if stale or set(roster.online) != online:
        _fail("the online workers differ from the workers whose status is online")
    for address, worker in roster.by_address.items():
        if worker.address != address or roster.workers.get(worker.id) is not worker:
            _fail(f"address {address!r} names a worker that is not registered from it")
        if worker.status is not WorkerStatus.ONLINE:
            _fail(f"address {address!r} names offline worker {worker.id}")
    for worker in roster.workers.values():
        if worker.draining != (worker.stopping or worker.drained):
            _fail(f"worker {worker.id} draining={worker.draining}: neither stopping nor drained")
        if worker.status is WorkerStatus.OFFLINE and (worker.running or worker.polls):
            _fail(f"offline worker {worker.id} holds runs or polls")
        taken: dict[str, float] = {}
        for task_id, attempt in worker.running.items():
            task = core.find(task_id)  # a stopped run's task may be in the store only
            if task is None:
                continue  # pruned since: its worker has not reported the stopped run
            lease = next((le for le in task.leases if le.attempt == attempt), None)
            if lease is None or lease.worker_id != worker.id:
                _fail(f"worker {worker.id} runs {RunKey(task_id, attempt)}, not its lease")
            elif lease.outcome not in (None, LeaseOutcome.CANCELLED, LeaseOutcome.EXPIRED):
                _fail(f"worker {worker.id} still holds {task_id} #{attempt}, ended {lease.outcome}")
            for kind, amount in task.resources:
                taken[kind] = taken.get(kind, 0.0) + amount
        for kind, total in worker.resources.items():
            free = worker.free.get(kind, 0.0)
            # Claims after a restart may hold more than the worker declares: free goes
            # below zero, and nothing more that needs the resource fits until runs end.
            expected = total - taken.get(kind, 0.0)
            if worker.status is WorkerStatus.ONLINE and abs(free - expected) > 1e-6:
                _fail(f"worker {worker.id} has {free} {kind} free of {total}, {expected} expected")


def _liveness(core: Scheduler) -> None:
    watched = {
        (id(subject), detail)
        for _, _, kind, subject, detail in core.timers._heap
        if kind is TimerKind.LIVENESS
    }
    for worker in core.roster.online.values():
        if (id(worker), worker.watch) not in watched:
            _fail(f"online worker {worker.id} has no liveness timer of its watch")


def _live_heads(core: Scheduler) -> dict[Shape, Task]:
    """The head of each ready queue, read without the lazy deletion ``head`` does."""
    heads: dict[Shape, Task] = {}
    for shape, heap in core.ready._heaps.items():
        live = [t for _, _, t in heap if t.queued and t.status is TaskStatus.PENDING]
        if live:
            heads[shape] = min(live, key=lambda t: (-t.priority, t.seq))
    return heads


def _matcher(core: Scheduler) -> None:
    matcher, online = core.matcher, core.roster.online
    for key, service in matcher.services.items():
        members = {w for w in online.values() if provides(w, key)}
        if service.members != members:
            _fail(f"service {key} lists other members than the online workers providing it")
        current = {(id(w), stamp, -room) for room, _, stamp, w in service.heap}
        for worker in members:
            if service not in worker.services:
                _fail(f"worker {worker.id} is a member of {key} that it does not list")
            room = worker.capacity()
            if room > 0 and (id(worker), worker.stamp, room) not in current:
                _fail(f"worker {worker.id} has {room} free slots and no current entry in {key}")
    for worker in core.roster.workers.values():
        for service in worker.services:
            if worker not in service.members:
                _fail(f"worker {worker.id} lists service {service.key}, not a member of it")
    heads = _live_heads(core)
    for shape, service in matcher.parked_on.items():
        if shape not in service.parked or service.key != service_of(shape):
            _fail(f"shape {shape} is parked on the wrong service")
        if shape in heads:
            taker = next((w for w in service.members if w.capacity() > 0
                          and w.fits(shape[2])), None)  # fmt: skip
            if taker is not None:
                _fail(f"shape {shape} is parked while {taker.id} could take its head")
    for shape, head in heads.items():
        if shape in matcher.parked_on:
            continue
        queued = matcher._queued.get(shape)
        if queued is None or queued > (-head.priority, head.seq):
            _fail(f"shape {shape} has a ready task and is neither parked nor considered")
    if not matcher.pending():
        # Nothing to consider: no ready task may be left that a free worker could run.
        for shape, head in heads.items():
            for worker in online.values():
                if worker.capacity() > 0 and worker.serves(shape) and worker.fits(head.resources):
                    _fail(f"task {head.id} waits while {worker.id} could run it")


def _waiters(core: Scheduler) -> None:
    tasks = core.index.tasks
    listed: Counter[int] = Counter()
    for task_id, waiters in core.deferred.by_task.items():
        task = tasks.get(task_id)
        if task is None or task.status in FINAL_STATUSES:
            _fail(f"waiters are listed under {task_id}, which is gone or final")
        for waiter in waiters:
            if waiter.done:
                _fail(f"an answered waiter is still listed under {task_id}")
            listed[id(waiter)] += 1
    for task_id, tokens in core.deferred.watchers.items():
        task = tasks.get(task_id)
        if task is None or task.status in FINAL_STATUSES:
            _fail(f"watchers are listed under {task_id}, which is gone or final")
        if not 0 < len(tokens) <= MAX_WATCHERS:
            _fail(f"{len(tokens)} watchers are listed under {task_id}")
    watching = Counter(client_of(t) for tokens in core.deferred.watchers.values() for t in tokens)
    if watching != core.deferred.watching:
        _fail(f"outcomes awaited by client {dict(core.deferred.watching)}, listed {dict(watching)}")
    for kind, subject in _timers(core):
        if kind is TimerKind.WAIT and not subject.done and listed[id(subject)] != subject.pending:
            _fail(f"a waiter counts {subject.pending} pending, listed {listed[id(subject)]} times")


def _timers(core: Scheduler) -> list[tuple[TimerKind, Any]]:
    return [(kind, subject) for _, _, kind, subject, _ in core.timers._heap]


#: The scheduler's methods after which the tests check every invariant.
CHECKED_METHODS = (
    "load", "submit", "submit_each", "submit_and_wait", "get", "list_tasks", "cancel", "wait",
    "wait_many",
    "register", "seen", "report", "drain", "goodbye", "http_register", "http_worker",
    "http_next", "http_complete", "tick", "prune", "schedule", "retry", "purge",
    "drain_worker", "stats", "settle",
)  # fmt: skip


def _checking(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(self: Scheduler, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            check(self)

    return checked


class CheckedScheduler(Scheduler):
    """A ``Scheduler`` that checks every invariant after each of ``CHECKED_METHODS``, even
    one that raised (a refused request must leave the state as it was, and whole)."""


for _name in CHECKED_METHODS:
    setattr(CheckedScheduler, _name, _checking(getattr(Scheduler, _name)))
