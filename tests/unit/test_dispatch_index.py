"""The indexed matcher (``broker.dispatch.Matcher``) against the scan it replaced.

Two cores take the same random operations (ZeroMQ and HTTP workers coming, draining,
leaving and going silent, with tags, slots and resources; tasks of several shapes and
priorities submitted, cancelled and finished); one schedules with the matcher, the
other with ``scan_match``, the matching the broker used to do by scanning every worker
for every shape. After every step both must have leased the same tasks to the same
workers, in the same order.
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from broker.core import Scheduler, Timing
from broker.invariants import CheckedScheduler
from broker.queue import ReadyQueues, Shape
from broker.state import Task, Worker
from common.errors import SchedulerError
from common.models import TaskStatus, WorkerStatus
from tests import edge

T0 = 1_000_000.0
HANDLERS = ["a", "b"]
TAGS = ["x", "y"]
WORKERS = [f"w{i}" for i in range(6)]
HTTP_WORKERS = ["h0", "h1"]


def scan_match(
    ready: ReadyQueues, online: Iterable[Worker], lease: Callable[[Task, Worker], None]
) -> int:
    """The matching before the index, verbatim: every online worker with a free slot is
    listed, then scanned for each ready shape (``serves``) and for each task (``pick``)."""
    workers = [w for w in online if w.capacity() > 0]
    if not workers:
        return 0
    heads: list[tuple[int, int, Shape]] = []
    eligible: dict[Shape, list[Worker]] = {}
    for shape in ready.shapes():
        task = ready.head(shape)
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
        task = ready.head(shape)
        if task is None:
            continue
        worker = scan_pick(eligible[shape], task)
        if worker is None:
            continue
        ready.pop(shape)
        lease(task, worker)
        leased += 1
        following = ready.head(shape)
        if following is not None:
            heapq.heappush(heads, (-following.priority, following.seq, shape))
    return leased


def scan_pick(candidates: list[Worker], task: Task) -> Worker | None:
    best: Worker | None = None
    best_room = 0
    for worker in candidates:
        room = worker.capacity()
        if room > best_room and worker.fits(task.resources):
            best, best_room = worker, room
    return best


class ScanScheduler(Scheduler):
    """A core that schedules by the scan."""

    def schedule(self, now: float) -> int:
        def lease(task: Task, worker: Worker) -> None:
            self._lease(task, worker, now)

        self.matcher._heads.clear()  # unused here: kept from growing
        self.matcher._queued.clear()
        return scan_match(self.ready, self.roster.online.values(), lease)


def leases(core: Scheduler) -> list[tuple[str, str | None, int, str]]:
    return [
        (task.id, task.worker_id, task.attempts, task.status.value)
        for task in sorted(core.tasks.values(), key=lambda t: t.seq)
    ]


def dispatches(core: Scheduler) -> dict[bytes, list[str]]:
    outbox = core.take_outbox()
    return {a: [e.task_id for e in entries] for a, entries in outbox.dispatch.items()}


class Twins:
    """The same operations on both cores, compared after each."""

    def __init__(self, seed: int, checked: bool) -> None:
        self.rng = random.Random(seed)
        timing = Timing(ping_interval=1.0, liveness=3, http_liveness=15.0)
        indexed = CheckedScheduler if checked else Scheduler
        self.cores: list[Scheduler] = [
            indexed(timing, random.Random(seed).randbytes),
            ScanScheduler(timing, random.Random(seed).randbytes),
        ]
        self.now = T0

    def each(self, action: Callable[[Scheduler], Any]) -> None:
        for core in self.cores:
            with contextlib.suppress(SchedulerError):  # refused alike by both (compared below)
                action(core)

    def compare(self) -> None:
        indexed, scan = self.cores
        for core in self.cores:
            core.schedule(self.now)
        assert dispatches(indexed) == dispatches(scan)
        assert leases(indexed) == leases(scan)

    def step(self) -> None:
        rng, now = self.rng, self.now
        op = rng.randrange(10)
        if op <= 2:
            specs = [self.spec() for _ in range(rng.randint(1, 4))]
            self.each(lambda core: edge.submit(core, specs, now))
        elif op == 3:
            worker_id = rng.choice(WORKERS)
            body: dict[str, Any] = {
                "id": worker_id,
                "slots": rng.randint(1, 3),
                "capabilities": rng.sample(HANDLERS + TAGS, rng.randint(1, 4)),
            }
            if rng.random() < 0.5:
                body["resources"] = {"cpu": rng.choice([1, 2, 4])}
            self.each(lambda core: edge.register(core, worker_id.encode(), body, now))
        elif op <= 5:
            self.finish_one()
        elif op == 6:
            choice = rng.randrange(4)
            worker_id = rng.choice(WORKERS)

            def act(core: Scheduler) -> None:
                worker = core.roster.online.get(worker_id)
                if worker is None:
                    return
                if choice == 0:
                    core.drain(worker, now)
                elif choice == 1:
                    core.goodbye(worker, now)
                else:
                    core.seen(worker, now)

            self.each(act)
        elif op == 7:
            worker_id = rng.choice(HTTP_WORKERS)
            caps = rng.sample(HANDLERS + TAGS, rng.randint(1, 3))
            args: dict[str, Any] = {"id": worker_id, "capabilities": caps}
            if rng.random() < 0.5:
                args["resources"] = {"cpu": rng.choice([1, 2])}
            if rng.random() < 0.3:
                self.each(lambda core: edge.http_register(core, args, now))
            else:
                wait = rng.choice([0.0, 5.0])
                self.each(lambda core: edge.http_next(core, {"id": worker_id, "wait": wait},
                                                      object(), now))  # fmt: skip
        elif op == 8:
            pending = [t.id for t in self.cores[0].tasks.values()
                       if t.status in (TaskStatus.PENDING, TaskStatus.RUNNING)]  # fmt: skip
            if pending:
                task_id = rng.choice(pending)
                self.each(lambda core: core.cancel(task_id, now))
        else:
            self.now += rng.choice([0.5, 1.0, 4.0])
            later = self.now
            self.each(lambda core: core.tick(later))
        self.compare()

    def spec(self) -> dict[str, Any]:
        rng = self.rng
        spec: dict[str, Any] = {"handler": rng.choice(HANDLERS),
                                "priority": rng.randint(0, 2)}  # fmt: skip
        if rng.random() < 0.3:
            spec["requires"] = rng.sample(TAGS, rng.randint(1, 2))
        if rng.random() < 0.4:
            spec["resources"] = {"cpu": rng.choice([1, 2, 3])}
        return spec

    def finish_one(self) -> None:
        """The worker of one running task reports it, completed or failed (both cores run
        the same tasks on the same workers, as compared at every step)."""
        running = [t for t in self.cores[0].tasks.values() if t.status is TaskStatus.RUNNING]
        if not running:
            return
        task = self.rng.choice(running)
        status = self.rng.choice(["completed", "failed"])
        task_id, attempt, worker_id = task.id, task.attempts, task.worker_id or ""

        def act(core: Scheduler) -> None:
            worker = core.roster.get(worker_id)
            if worker is None or worker.status is not WorkerStatus.ONLINE:
                return
            if worker.address is None:
                edge.http_complete(core, {"worker_id": worker_id, "task_id": task_id,
                                          "status": status}, self.now)  # fmt: skip
                return
            outcome = {"task_id": task_id, "attempt": attempt, "status": status}
            edge.report(core, worker, [outcome], self.now)

        self.each(act)


@pytest.mark.parametrize("seed", range(60))
def test_the_index_leases_what_the_scan_leased(seed: int) -> None:
    # Given two cores, one matching by index and one by the scan, taking the same steps
    twins = Twins(seed, checked=seed < 10)
    # When each step is taken, then both lease the same tasks to the same workers.
    for _ in range(150):
        twins.step()
    indexed, _ = twins.cores
    assert any(t.attempts for t in indexed.tasks.values())  # the steps did lease tasks
