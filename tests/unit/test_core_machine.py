"""Random sequences of everything that can happen to the core, with every invariant checked
after every step.

A hypothesis state machine drives one ``CheckedScheduler`` (``broker.invariants``: every
invariant of the core checked after each of its methods) through submits with
dependencies, priorities, retries, timeouts, resources and idempotency keys;
registrations of ZeroMQ workers (again, with the runs they hold, or some of them) and
of an HTTP worker; outcomes of the runs workers hold, late and forged reports, cancels
obeyed or not; time passing with workers alive or silent; clean shutdowns; pruning;
waits; an admin's drains and resumes; and broker restarts from what was committed. Each
step ends as the socket loop's turn does: a scheduling round, then a commit to an
in-memory store.

Beyond the core's own invariants, the machine checks the promises a client sees: a task
that was final stays final with the same outcome (exactly one outcome), a committed
task survives a restart as it was committed, an admin's drain holds (through restarts
too) until it is resumed, and nothing runs before its dependencies completed.

``make test`` runs a few dozen sequences; ``make fuzz-core`` many more (``ZMQS_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.core import Timing
from broker.invariants import CheckedScheduler
from broker.state import Task
from broker.store.memory import MemoryStore
from common.errors import SchedulerError
from common.messages import RunKey
from common.models import FINAL_STATUSES, TaskStatus
from tests import edge

HANDLERS = ("a", "b")
WORKERS = ("w1", "w2", "w3")
HTTP_WORKER = "h1"
KEYS = ("k1", "k2")
#: Sequences (examples) and steps of each; ``make fuzz-core`` raises the first.
EXAMPLES = int(os.environ.get("ZMQS_FUZZ_EXAMPLES", "40"))
STEPS = int(os.environ.get("ZMQS_FUZZ_STEPS", "60"))
#: Steps checked across every sequence of this run (``make fuzz-core`` prints it).
STEPS_CHECKED = [0]


class CoreMachine(RuleBasedStateMachine):
    """The broker's core with a model of its workers and of what clients were told."""

    def __init__(self) -> None:
        super().__init__()
        self.timing = Timing(
            ping_interval=1.0, liveness=3, http_liveness=15.0, retry_backoff=1.0,
            retry_backoff_max=8.0, timeout_grace=2.0, retention=200.0,
        )  # fmt: skip
        self.store = MemoryStore()
        #: Task ids from a counter, so that a sequence replays exactly (hypothesis shrinks).
        self.random = random.Random(7)
        self.core = self._new_core()
        self.now = 1_000_000.0
        self.ids: list[str] = []
        #: The first final (status, result) seen of each task: it must never change.
        self.final: dict[str, tuple[TaskStatus, bytes | None]] = {}
        #: Runs each ZeroMQ worker was sent and has not reported (it holds them).
        self.held: dict[str, set[RunKey]] = {w: set() for w in WORKERS}
        #: Tasks each worker was told to stop.
        self.stop: dict[str, set[str]] = {w: set() for w in WORKERS}
        #: When each task's dependencies were final, to check nothing started before.
        self.started_runs: list[tuple[str, float]] = []
        #: Tasks a client watches whose outcome it was not sent yet.
        self.watched: set[str] = set()
        #: Workers an admin drained and did not resume: kept, drained, through restarts.
        self.drained: set[str] = set()

    def _new_core(self) -> CheckedScheduler:
        """A core on the store, as the broker's: finished tasks leave memory once committed,
        all but the last two here, so that every step meets tasks in the store only."""
        core = CheckedScheduler(self.timing, self.random.randbytes)
        core.load(self.store.load(), getattr(self, "now", 1_000_000.0),
                  self.store.load_workers(), self.store)  # fmt: skip
        core.finished_in_memory = 2
        return core

    # -- the turn every step ends with ---------------------------------------------------

    def turn(self) -> None:
        self.core.schedule(self.now)
        outbox = self.core.take_outbox()
        for address, entries in outbox.dispatch.items():
            worker = self.core.worker_at(address)
            assert worker is not None and len(worker.running) <= worker.slots, "over its slots"
            for entry in entries:
                self.held[address.decode()].add(entry.run)
                self.started_runs.append((entry.run.task_id, self.now))
        for address, task_ids in outbox.cancel.items():
            self.stop[address.decode()].update(task_ids)
        for _, value in outbox.replies:
            if isinstance(value, dict) and value.get("status") == "running":
                self.started_runs.append((value["id"], self.now))
        for _, outcome in outbox.notices:
            task = self.core.tasks[outcome["id"]]  # in memory: not committed yet
            assert outcome["id"] in self.watched, f"outcome of {task.id} sent twice or unasked"
            self.watched.discard(task.id)
            assert task.status in FINAL_STATUSES and outcome["status"] == task.status.value
            assert (outcome["result"], outcome["error"]) == (task.result, task.error)
        for task_id in self.watched:
            task = self.core.tasks[task_id]
            assert task.status not in FINAL_STATUSES, f"{task_id} final, its watcher not told"
        workers, forgotten = self.core.take_workers()
        self.store.save(
            self.core.take_dirty(), self.core.take_pruned(), workers=workers, forgotten=forgotten
        )
        self.core.evict()
        STEPS_CHECKED[0] += 1

    @invariant()
    def outcomes_are_final(self) -> None:
        for task in self.core.tasks.values():
            if task.status not in FINAL_STATUSES:
                continue
            first = self.final.setdefault(task.id, (task.status, task.result))
            assert first == (task.status, task.result), f"task {task.id} changed its outcome"

    @invariant()
    def nothing_started_before_its_dependencies(self) -> None:
        for task_id, when in self.started_runs:
            task = self.core.find(task_id)
            if task is None:
                continue
            for dep_id in task.dependencies:
                dep = self.core.find(dep_id)
                if dep is None:
                    continue  # pruned: it had completed
                assert dep.status is TaskStatus.COMPLETED, f"{task_id} ran before {dep_id}"
                assert dep.completed_at is not None and dep.completed_at <= when
        self.started_runs.clear()

    # -- clients -----------------------------------------------------------------------------

    @rule(data=st.data(), count=st.integers(1, 3))
    def submit(self, data: st.DataObject, count: int) -> None:
        specs = [self._spec(data) for _ in range(count)]
        try:
            entries = edge.submit(self.core, specs, self.now)
        except SchedulerError:
            pass  # a dependency pruned since: refused whole
        else:
            self.ids += [e["id"] for e in entries if e["created"]]
            if data.draw(st.booleans(), label="watched"):
                for entry in entries:
                    if entry["created"]:
                        self.core.deferred.watch(entry["id"], "client")
                        self.watched.add(entry["id"])
        self.turn()

    def _spec(self, data: st.DataObject) -> dict[str, Any]:
        spec: dict[str, Any] = {"handler": data.draw(st.sampled_from(HANDLERS))}
        if data.draw(st.booleans()):
            spec["priority"] = data.draw(st.integers(-2, 2))
        if self.ids and data.draw(st.booleans()) is True:
            recent = st.sampled_from(self.ids[-8:])
            spec["dependencies"] = data.draw(st.lists(recent, max_size=2, unique=True))
        if data.draw(st.booleans()):
            spec["max_retries"] = data.draw(st.integers(0, 2))
        if data.draw(st.integers(0, 3)) == 0:
            spec["timeout"] = data.draw(st.sampled_from([0.5, 3.0]))
        if data.draw(st.integers(0, 3)) == 0:
            spec["resources"] = {"cpu": data.draw(st.sampled_from([1, 2]))}
        if data.draw(st.integers(0, 4)) == 0:
            spec["idempotency_key"] = data.draw(st.sampled_from(KEYS))
        return spec

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(self.ids))
        with contextlib.suppress(SchedulerError):  # final already, or pruned
            self.core.cancel(task_id, self.now)
        self.turn()

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data(), timeout=st.sampled_from([0.0, 2.0, 30.0]))
    def wait(self, data: st.DataObject, timeout: float) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.ids), min_size=1, max_size=3))
        try:
            self.core.wait_many(ids, timeout, object(), self.now)
            self.core.wait(ids[0], timeout, object(), self.now)
        except SchedulerError:
            pass  # pruned
        self.turn()

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(self.ids))
        try:
            self.core.retry(task_id, self.now)
        except SchedulerError:
            pass  # not failed or cancelled, its dependency is, or pruned
        else:
            # It and the dependents it brought back run again: a new outcome is theirs.
            assert self.core.tasks[task_id].status is TaskStatus.PENDING
            for task in self.core.tasks.values():
                if task.status not in FINAL_STATUSES:
                    self.final.pop(task.id, None)
        self.turn()

    @rule(
        status=st.sampled_from([TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]),
        age=st.sampled_from([None, 0.0, 30.0]),
        limit=st.integers(1, 3),
    )
    def purge(self, status: TaskStatus, age: float | None, limit: int) -> None:
        before = None if age is None else self.now - age
        reply = self.core.purge(status, before, limit)
        assert reply["purged"] <= limit
        self.turn()

    @rule(worker_id=st.sampled_from((*WORKERS, HTTP_WORKER)), on=st.booleans())
    def drain_worker(self, worker_id: str, on: bool) -> None:
        with contextlib.suppress(SchedulerError):  # not registered yet
            assert self.core.drain_worker(worker_id, on, self.now).draining is on
            (self.drained.add if on else self.drained.discard)(worker_id)
        self.turn()

    @invariant()
    def admin_drains_hold_until_resumed(self) -> None:
        drained = {w.id for w in self.core.workers.values() if w.drained}
        assert drained == self.drained, f"drained {drained}, {self.drained} expected"

    # -- ZeroMQ workers ---------------------------------------------------------------------

    @rule(
        worker_id=st.sampled_from(WORKERS),
        handlers=st.lists(st.sampled_from(HANDLERS), min_size=1, unique=True),
        slots=st.integers(1, 3),
        cpu=st.sampled_from([None, 2, 4]),
        data=st.data(),
    )
    def register(
        self, worker_id: str, handlers: list[str], slots: int, cpu: int | None, data: st.DataObject
    ) -> None:
        held = sorted(self.held[worker_id])
        claims = data.draw(st.lists(st.sampled_from(held), unique=True)) if held else []
        body: dict[str, Any] = {
            "id": worker_id,
            "slots": slots,
            "capabilities": handlers,
            "running": [{"task_id": t, "attempt": a} for t, a in claims],
        }
        if cpu is not None:
            body["resources"] = {"cpu": cpu}
        edge.register(self.core, worker_id.encode(), body, self.now)
        # Runs it did not claim it has dropped (as after a crash of its own).
        self.held[worker_id] = set(claims)
        self.turn()

    @rule(
        worker_id=st.sampled_from(WORKERS),
        status=st.sampled_from(["completed", "failed", "cancelled"]),
        data=st.data(),
    )
    def report(self, worker_id: str, status: str, data: st.DataObject) -> None:
        worker = self.core.worker_at(worker_id.encode())
        if worker is not None and self.held[worker_id]:
            run = data.draw(st.sampled_from(sorted(self.held[worker_id])))
            if status == "cancelled" and run.task_id not in self.stop[worker_id]:
                status = "completed"  # a worker reports cancelled only what it was told to stop
            entry = {"task_id": run.task_id, "attempt": run.attempt, "status": status,
                     "result": f"{run.task_id}#{run.attempt}".encode(), "error": "x"}  # fmt: skip
            acked = edge.report(self.core, worker, [entry], self.now)
            assert acked == [[run.task_id, run.attempt]]
            self.held[worker_id].discard(run)
            self.stop[worker_id].discard(run.task_id)
        self.turn()

    @precondition(lambda self: bool(self.ids))
    @rule(
        worker_id=st.sampled_from(WORKERS),
        attempt=st.integers(1, 4),
        status=st.sampled_from(["completed", "failed", "cancelled"]),
        data=st.data(),
    )
    def report_forged(self, worker_id: str, attempt: int, status: str, data: st.DataObject) -> None:
        """A report of a run the worker does not hold: late, duplicated or forged."""
        worker = self.core.worker_at(worker_id.encode())
        task_id = data.draw(st.sampled_from(self.ids))
        if worker is not None and RunKey(task_id, attempt) not in self.held[worker_id]:
            entry = {"task_id": task_id, "attempt": attempt, "status": status, "result": b"no"}
            edge.report(self.core, worker, [entry], self.now)
            task = self.core.find(task_id)
            if task is not None and task.status is TaskStatus.COMPLETED:
                assert task.result != b"no", "a report of a run nobody held was recorded"
        self.turn()

    @rule(worker_id=st.sampled_from(WORKERS))
    def goodbye(self, worker_id: str) -> None:
        worker = self.core.worker_at(worker_id.encode())
        if worker is not None:
            self.core.goodbye(worker, self.now)
            self.held[worker_id].clear()  # a worker that says BYE drops its runs
        self.turn()

    @rule(
        seconds=st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0, 10.0, 60.0]),
        alive=st.lists(st.sampled_from(WORKERS), unique=True),
    )
    def time_passes(self, seconds: float, alive: list[str]) -> None:
        self.now += seconds
        for worker_id in alive:
            worker = self.core.worker_at(worker_id.encode())
            if worker is not None:
                self.core.seen(worker, self.now)
        self.core.tick(self.now)
        self.turn()

    @rule()
    def prune(self) -> None:
        self.core.prune(self.now, limit=5)
        self.turn()

    # -- an HTTP worker ------------------------------------------------------------------------

    @rule(handlers=st.lists(st.sampled_from(HANDLERS), min_size=1, unique=True))
    def http_register(self, handlers: list[str]) -> None:
        edge.http_register(self.core, {"id": HTTP_WORKER, "capabilities": handlers}, self.now)
        self.turn()

    @precondition(lambda self: HTTP_WORKER in self.core.workers)
    @rule(wait=st.sampled_from([0.0, 5.0]))
    def http_next(self, wait: float) -> None:
        edge.http_next(self.core, {"id": HTTP_WORKER, "wait": wait}, object(), self.now)
        self.turn()

    @precondition(lambda self: HTTP_WORKER in self.core.workers)
    @rule(status=st.sampled_from(["completed", "failed"]), data=st.data())
    def http_complete(self, status: str, data: st.DataObject) -> None:
        running = sorted(self.core.workers[HTTP_WORKER].running)
        if running:
            task_id = data.draw(st.sampled_from(running))
            args = {"worker_id": HTTP_WORKER, "task_id": task_id, "status": status,
                    "result": b"http", "error": "x"}  # fmt: skip
            with contextlib.suppress(SchedulerError):  # cancelled or expired meanwhile: 409
                edge.http_complete(self.core, args, self.now)
        self.turn()

    # -- the broker ------------------------------------------------------------------------

    @rule(mid_turn=st.booleans())
    def restart(self, mid_turn: bool) -> None:
        """kill -9 and start again: only what was committed comes back. ``mid_turn``: the
        broker dies after sending a scheduling round's dispatches, before their commit."""
        committed = {task.id: _stored(task) for task in self.core.tasks.values()}
        registered = {w.id: (w.kind, w.capabilities, w.drained) for w in self.core.workers.values()}
        if mid_turn:
            self.core.tick(self.now)
            self.core.schedule(self.now)
            for address, entries in self.core.take_outbox().dispatch.items():
                self.held[address.decode()].update(entry.run for entry in entries)
        self.watched.clear()  # a restarted broker forgets who watched
        self.core = self._new_core()
        # Every worker registered is listed again, offline until it speaks.
        assert {
            w.id: (w.kind, w.capabilities, w.drained) for w in self.core.workers.values()
        } == registered
        assert self.core.roster.online == {}
        for task_id, stored in committed.items():
            task = self.core.find(task_id)
            assert task is not None, f"committed task {task_id} lost in a restart"
            assert _stored(task) == stored, f"task {task_id} changed in a restart"
        self.turn()


def _stored(task: Task) -> dict[str, Any]:
    """What a restart must bring back of a task."""
    record: dict[str, Any] = task.record()
    return {k: v for k, v in record.items() if k != "leases"} | {
        "leases": [
            (le["attempt"], le["worker_id"], le["outcome"]) for le in record.get("leases", [])
        ]
    }


@pytest.fixture(scope="module", autouse=True)
def _report_steps() -> Iterator[None]:
    yield
    if "ZMQS_FUZZ_EXAMPLES" in os.environ:  # make fuzz-core: say how much was checked
        print(f"\ncore state machine: {STEPS_CHECKED[0]} steps checked")


CoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    # make test runs the same sequences every time (a failure there is never luck);
    # make fuzz-core draws new ones.
    derandomize="ZMQS_FUZZ_EXAMPLES" not in os.environ,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoreMachine = CoreMachine.TestCase
