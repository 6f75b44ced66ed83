"""The runner: thread and process pools, timeouts, cancels, exactly one outcome per run.

Synchronisation is by polling for a condition with a generous deadline, never by
sleeping a fixed time and never by asserting on speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.limits import MAX_TRACEBACK_LENGTH
from common.models import TaskStatus
from worker import context, handlers
from worker.handlers import handler
from worker.runner import Outcome, Runner

#: Seconds any wait in these tests may take before it counts as a failure.
PATIENCE = 15.0


# Handlers for the process pool live at module level: its children import this
# module (handler_modules=[__name__]), which registers them there too.


@handler("test-runner.spin")
def spin(args: bytes) -> None:
    """Burn CPU forever, ignoring cancellation: only a kill stops it."""
    while True:
        pass


@handler("test-runner.mark-and-spin")
def mark_and_spin(args: bytes) -> None:
    """Write this process's pid to the file named by ``args``, then spin like ``spin``."""
    with open(args, "w") as marker:
        marker.write(str(os.getpid()))
    while True:
        pass


@handler("test-runner.pid")
def pid(args: bytes) -> int:
    return os.getpid()


@handler("test-runner.sum-of-squares")
def sum_of_squares(args: bytes) -> int:
    n = json.loads(args)["n"]
    return sum(i * i for i in range(n))


@handler("test-runner.async-echo")
async def async_echo(args: bytes) -> bytes:
    return args


@handler("test-runner.exit")
def hard_exit(args: bytes) -> None:
    os._exit(3)


class Outcomes:
    """Collects outcomes (the runner's ``on_done``) and waits for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.all: list[Outcome] = []

    def __call__(self, outcome: Outcome) -> None:
        with self._cond:
            self.all.append(outcome)
            self._cond.notify_all()

    def of(self, task_id: str) -> list[Outcome]:
        with self._cond:
            return [o for o in self.all if o.task_id == task_id]

    def wait(self, task_id: str, timeout: float = PATIENCE) -> Outcome:
        with self._cond:
            found = self._cond.wait_for(lambda: self._find(task_id) is not None, timeout)
            assert found, f"no outcome for {task_id} within {timeout} s; have {self.all}"
            outcome = self._find(task_id)
            assert outcome is not None
            return outcome

    def _find(self, task_id: str) -> Outcome | None:
        return next((o for o in self.all if o.task_id == task_id), None)


def wait_until(condition: Callable[[], bool], timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def thread_alive(name: str) -> bool:
    return any(t.name == name for t in threading.enumerate())


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
def make_runner(outcomes: Outcomes) -> Iterator[Callable[..., Runner]]:
    """Build runners reporting to ``outcomes``; all are shut down after the test."""
    runners: list[Runner] = []

    def make(pool: str = "thread", slots: int = 2, modules: tuple[str, ...] = ()) -> Runner:
        runner = Runner(pool, slots, outcomes, list(modules))
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.shutdown()


@pytest.fixture
def registered() -> Iterator[Callable[[str, handlers.Handler], None]]:
    """Register handlers for one test (closures over its events) and remove them after."""
    names: list[str] = []

    def register(name: str, fn: handlers.Handler) -> None:
        handlers.register(name, fn, replace=True)
        names.append(name)

    yield register
    for name in names:
        handlers.unregister(name)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that blocked handlers wait on; set at teardown so no thread outlives a test."""
    event = threading.Event()
    yield event
    event.set()


Register = Callable[[str, handlers.Handler], None]


# -- thread pool ---------------------------------------------------------------------


def test_a_run_reports_its_result(make_runner: Callable[..., Runner], outcomes: Outcomes) -> None:
    # given a thread runner
    runner = make_runner()
    # when echo runs
    assert runner.start("t1", 1, "echo", b"payload")
    # then it completes with the argument bytes
    assert outcomes.wait("t1") == Outcome("t1", 1, TaskStatus.COMPLETED, b"payload", None)
    assert runner.running() == []


def test_results_are_converted_to_bytes(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    registered("test-runner.dict", lambda args: {"got": args.decode()})
    registered("test-runner.none", lambda args: None)
    runner = make_runner()
    runner.start("d", 1, "test-runner.dict", b"x")
    runner.start("n", 1, "test-runner.none", b"x")
    assert outcomes.wait("d").result == b'{"got":"x"}'
    assert outcomes.wait("n").result == b""


def test_handlers_see_their_run_context(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # given a handler that reports the context it runs in
    def whoami(args: bytes) -> dict[str, Any]:
        ctx = context.current()
        assert ctx is not None
        return {"task_id": ctx.task_id, "attempt": ctx.attempt, "timed": ctx.deadline is not None}

    registered("test-runner.whoami", whoami)
    runner = make_runner()
    # when it runs with a timeout
    runner.start("ctx", 4, "test-runner.whoami", b"", timeout=60)
    # then it saw its own task, attempt and deadline
    result = outcomes.wait("ctx").result
    assert result is not None
    assert json.loads(result) == {"task_id": "ctx", "attempt": 4, "timed": True}


def test_runs_execute_concurrently_up_to_the_slots(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # given a handler that finishes only once two runs are inside it at the same time
    barrier = threading.Barrier(2, timeout=PATIENCE)
    registered("test-runner.meet", lambda args: barrier.wait())
    runner = make_runner(slots=2)
    # when two runs start
    runner.start("a", 1, "test-runner.meet", b"")
    runner.start("b", 1, "test-runner.meet", b"")
    # then both complete (the barrier would have broken had they run one after the other)
    assert outcomes.wait("a").status is TaskStatus.COMPLETED
    assert outcomes.wait("b").status is TaskStatus.COMPLETED


def test_runs_beyond_the_slots_wait_for_a_free_one(
    make_runner: Callable[..., Runner],
    outcomes: Outcomes,
    registered: Register,
    release: threading.Event,
) -> None:
    # given one slot and a handler that blocks until released
    started: list[bytes] = []

    def block(args: bytes) -> bytes:
        started.append(args)
        release.wait(PATIENCE)
        return args

    registered("test-runner.block", block)
    runner = make_runner(slots=1)
    # when two runs start
    runner.start("first", 1, "test-runner.block", b"first")
    runner.start("second", 1, "test-runner.block", b"second")
    wait_until(lambda: started == [b"first"])
    # then only the first runs, though both count as in progress
    assert started == [b"first"]
    assert sorted(runner.running()) == [("first", 1), ("second", 1)]
    # and once released, both complete in order
    release.set()
    assert outcomes.wait("first").result == b"first"
    assert outcomes.wait("second").result == b"second"
    assert started == [b"first", b"second"]


def test_a_timeout_fails_the_run_and_frees_its_slot(
    make_runner: Callable[..., Runner],
    outcomes: Outcomes,
    registered: Register,
    release: threading.Event,
) -> None:
    # given one slot and a handler that ignores cancellation
    registered("test-runner.stubborn", lambda args: release.wait(PATIENCE) and b"late")
    runner = make_runner(slots=1)
    # when it runs past its timeout
    runner.start("slow", 1, "test-runner.stubborn", b"", timeout=0.2)
    # then it fails with a timeout error
    outcome = outcomes.wait("slow")
    assert outcome.status is TaskStatus.FAILED
    assert outcome.error == "timed out after 0.2 s"
    # and the slot is free at once, though the thread still runs
    assert thread_alive("task-slow-1")
    runner.start("next", 1, "echo", b"next")
    assert outcomes.wait("next").status is TaskStatus.COMPLETED
    # and what the abandoned thread returns later is dropped
    release.set()
    wait_until(lambda: not thread_alive("task-slow-1"))
    assert outcomes.of("slow") == [outcome]


def test_a_timed_out_run_is_told_to_stop_and_its_late_result_is_dropped(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # given a handler that waits for its run to be cancelled, notes it, then returns anyway
    told_to_stop = threading.Event()
    returned: list[bytes] = []

    def cooperative(args: bytes) -> bytes:
        ctx = context.current()
        assert ctx is not None
        if ctx.cancelled.wait(PATIENCE):
            told_to_stop.set()
        returned.append(b"late")
        return b"late"

    registered("test-runner.cooperative", cooperative)
    runner = make_runner(slots=1)
    # when it runs past its timeout
    runner.start("coop", 1, "test-runner.cooperative", b"", timeout=0.2)
    # then it fails with a timeout error
    outcome = outcomes.wait("coop")
    assert outcome == Outcome("coop", 1, TaskStatus.FAILED, None, "timed out after 0.2 s")
    # and the handler's thread sees its run's cancelled event set
    assert told_to_stop.wait(PATIENCE), "the timed-out run's cancelled event was never set"
    # and the result it returns afterwards is dropped: the timeout stays the one outcome
    wait_until(lambda: not thread_alive("task-coop-1"))
    assert returned == [b"late"]
    assert outcomes.of("coop") == [outcome]


def test_a_timeout_stops_worker_sleep_and_drops_its_cancelled_error(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # given a handler that sleeps through worker.sleep far beyond its timeout
    entered = threading.Event()

    def nap(args: bytes) -> None:
        entered.set()
        context.sleep(60)

    registered("test-runner.nap", nap)
    runner = make_runner(slots=1)
    # when it runs past its timeout
    runner.start("nap", 1, "test-runner.nap", b"", timeout=0.2)
    # then it fails with a timeout error
    outcome = outcomes.wait("nap")
    assert outcome.error == "timed out after 0.2 s"
    # and the sleep is cut short: the thread leaves the handler long before 60 s
    assert entered.wait(PATIENCE)
    wait_until(lambda: not thread_alive("task-nap-1"))
    # and the Cancelled it raised there is dropped
    assert outcomes.of("nap") == [outcome]


def test_a_deadline_centuries_away_does_not_stop_the_watchdog(
    make_runner: Callable[..., Runner],
    outcomes: Outcomes,
    registered: Register,
    release: threading.Event,
) -> None:
    # given a run whose deadline is beyond what a thread can wait for in one call
    registered("test-runner.blocked", lambda args: release.wait(PATIENCE) and b"late")
    runner = make_runner(slots=2)
    runner.start("far", 1, "test-runner.blocked", b"", timeout=1e10)
    # when a second run passes its own, short timeout
    runner.start("near", 1, "test-runner.blocked", b"", timeout=0.2)
    # then the watchdog is still there to stop it
    assert outcomes.wait("near").error == "timed out after 0.2 s"
    assert outcomes.of("far") == []


def test_a_waiting_run_keeps_its_whole_timeout(
    make_runner: Callable[..., Runner],
    outcomes: Outcomes,
    registered: Register,
    release: threading.Event,
) -> None:
    # given one slot, held by a run
    registered("test-runner.hold", lambda args: release.wait(PATIENCE))
    runner = make_runner(slots=1)
    runner.start("hold", 1, "test-runner.hold", b"")
    # when a run with a short timeout waits longer than that timeout for the slot
    runner.start("quick", 1, "echo", b"quick", timeout=0.2)
    time.sleep(0.4)  # the scenario, not a synchronisation: outwait the timeout
    release.set()
    # then it still runs, its clock starting with the handler
    assert outcomes.wait("quick").status is TaskStatus.COMPLETED


def test_cancel_stops_a_sleep_early(make_runner: Callable[..., Runner], outcomes: Outcomes) -> None:
    # given a long builtin sleep in progress
    runner = make_runner()
    runner.start("nap", 2, "sleep", b'{"seconds": 600}')
    wait_until(lambda: thread_alive("task-nap-2"))
    # when it is cancelled
    assert runner.cancel("nap") == 1
    # then it is reported cancelled, and its thread stops long before the sleep ends
    assert outcomes.wait("nap") == Outcome("nap", 2, TaskStatus.CANCELLED, None, None)
    wait_until(lambda: not thread_alive("task-nap-2"))
    assert outcomes.of("nap") == [outcomes.wait("nap")]
    assert runner.running() == []


def test_cancel_wins_even_if_the_handler_then_finishes(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # given a handler that, once cancelled, returns normally instead of raising
    def shrug(args: bytes) -> str:
        ctx = context.current()
        assert ctx is not None
        ctx.cancelled.wait(PATIENCE)
        return "finished anyway"

    registered("test-runner.shrug", shrug)
    runner = make_runner()
    runner.start("s", 1, "test-runner.shrug", b"")
    wait_until(lambda: thread_alive("task-s-1"))
    # when it is cancelled
    runner.cancel("s")
    wait_until(lambda: not thread_alive("task-s-1"))
    # then the one outcome is the cancel
    assert [o.status for o in outcomes.of("s")] == [TaskStatus.CANCELLED]


def test_cancel_of_a_waiting_run_reports_it_without_running_it(
    make_runner: Callable[..., Runner],
    outcomes: Outcomes,
    registered: Register,
    release: threading.Event,
) -> None:
    started: list[bytes] = []

    def block(args: bytes) -> None:
        started.append(args)
        release.wait(PATIENCE)

    registered("test-runner.block", block)
    runner = make_runner(slots=1)
    runner.start("busy", 1, "test-runner.block", b"busy")
    runner.start("queued", 1, "test-runner.block", b"queued")
    wait_until(lambda: started == [b"busy"])
    # when the waiting run is cancelled
    runner.cancel("queued")
    # then it is reported cancelled and never starts
    assert outcomes.wait("queued").status is TaskStatus.CANCELLED
    release.set()
    outcomes.wait("busy")
    assert started == [b"busy"]


def test_cancel_of_an_unknown_task_does_nothing(make_runner: Callable[..., Runner]) -> None:
    assert make_runner().cancel("never-started") == 0


def test_unknown_handlers_fail(make_runner: Callable[..., Runner], outcomes: Outcomes) -> None:
    runner = make_runner()
    runner.start("u", 1, "no-such-handler", b"")
    assert outcomes.wait("u") == Outcome(
        "u", 1, TaskStatus.FAILED, None, "unknown handler 'no-such-handler'"
    )


def test_a_raising_handler_fails_with_type_and_message(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    def broken(args: bytes) -> None:
        raise RuntimeError("disk on fire")

    registered("test-runner.broken", broken)
    runner = make_runner()
    runner.start("b", 1, "test-runner.broken", b"")
    runner.start("f", 1, "fibonacci", b'{"n": -1}')
    assert outcomes.wait("b").error == "RuntimeError: disk on fire"
    assert outcomes.wait("f").error == "ValueError: field 'n' must be >= 0, got -1"
    # and each says where: the handler's traceback, innermost frame last
    traceback = outcomes.wait("b").traceback
    assert traceback is not None
    assert 'raise RuntimeError("disk on fire")' in traceback
    assert traceback.rstrip().endswith("RuntimeError: disk on fire")
    assert "in broken" in traceback


def test_a_traceback_longer_than_the_protocol_carries_keeps_its_end(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    def wordy(args: bytes) -> None:
        raise ValueError("x" * MAX_TRACEBACK_LENGTH + " the end")

    registered("test-runner.wordy", wordy)
    make_runner().start("w", 1, "test-runner.wordy", b"")
    traceback = outcomes.wait("w").traceback
    assert traceback is not None and len(traceback) == MAX_TRACEBACK_LENGTH
    assert traceback.startswith("…") and traceback.rstrip().endswith("x the end")


def test_a_run_already_in_progress_is_not_started_twice(
    make_runner: Callable[..., Runner], outcomes: Outcomes
) -> None:
    runner = make_runner()
    assert runner.start("dup", 1, "sleep", b'{"seconds": 600}')
    assert not runner.start("dup", 1, "sleep", b'{"seconds": 600}')
    assert runner.running() == [("dup", 1)]
    runner.cancel("dup")
    assert [o.status for o in outcomes.of("dup")] == [TaskStatus.CANCELLED]


def test_shutdown_drops_runs_in_progress_without_reporting(
    outcomes: Outcomes,
) -> None:
    # given a run in progress
    runner = Runner("thread", 2, outcomes)
    runner.start("left", 1, "sleep", b'{"seconds": 600}')
    wait_until(lambda: thread_alive("task-left-1"))
    # when the runner shuts down
    runner.shutdown()
    # then the run stops but is not reported (the broker requeues it after BYE)
    wait_until(lambda: not thread_alive("task-left-1"))
    assert outcomes.all == []
    assert runner.running() == []
    with pytest.raises(RuntimeError):
        runner.start("after", 1, "echo", b"")


# -- async handlers ---------------------------------------------------------------------


def test_async_handlers_run_on_the_event_loop(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    async def add_later(args: bytes) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        ctx = context.current()
        return {"sum": sum(json.loads(args)), "task": ctx.task_id if ctx else None}

    registered("test-runner.async-add", add_later)
    runner = make_runner()
    for i in range(5):
        runner.start(f"a{i}", 1, "test-runner.async-add", json.dumps([i, 10]).encode())
    for i in range(5):
        result = outcomes.wait(f"a{i}").result
        assert result is not None and json.loads(result) == {"sum": i + 10, "task": f"a{i}"}


def test_async_timeout_cancels_the_asyncio_task(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # given an async handler that notes when it is cancelled
    cancelled = threading.Event()

    async def forever(args: bytes) -> None:
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    registered("test-runner.async-forever", forever)
    runner = make_runner()
    # when it passes its timeout
    runner.start("af", 1, "test-runner.async-forever", b"", timeout=0.2)
    # then the run fails and its asyncio task is cancelled
    assert outcomes.wait("af").error == "timed out after 0.2 s"
    assert cancelled.wait(PATIENCE)
    assert len(outcomes.of("af")) == 1


def test_a_timed_out_async_run_is_told_to_stop_and_its_late_result_is_dropped(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # given an async handler that, once its asyncio task is cancelled, notes whether its
    # run's cancelled event is set, and returns a result instead of stopping
    told_to_stop = threading.Event()
    cancelled_event_set: list[bool] = []

    async def stubborn(args: bytes) -> bytes:
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            ctx = context.current()
            assert ctx is not None
            cancelled_event_set.append(ctx.cancelled.is_set())
            told_to_stop.set()
        return b"late"

    async def pong(args: bytes) -> bytes:
        return args

    registered("test-runner.async-stubborn", stubborn)
    registered("test-runner.async-pong", pong)
    runner = make_runner()
    # when it passes its timeout
    runner.start("as", 1, "test-runner.async-stubborn", b"", timeout=0.2)
    # then the run fails with a timeout error
    outcome = outcomes.wait("as")
    assert outcome == Outcome("as", 1, TaskStatus.FAILED, None, "timed out after 0.2 s")
    # and the handler is cancelled, with its run's cancelled event set by then
    assert told_to_stop.wait(PATIENCE), "the timed-out async run was never cancelled"
    assert cancelled_event_set == [True], "the async run's cancelled event was not set"
    # and its late result is dropped: the handler returned in the loop step that set
    # told_to_stop, so a run started now on the same loop finishes after that return
    runner.start("probe", 1, "test-runner.async-pong", b"probe")
    assert outcomes.wait("probe").result == b"probe"
    assert outcomes.of("as") == [outcome]


def test_async_cancel_reports_cancelled(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    entered = threading.Event()

    async def forever(args: bytes) -> None:
        entered.set()
        await asyncio.sleep(600)

    registered("test-runner.async-forever", forever)
    runner = make_runner()
    runner.start("ac", 1, "test-runner.async-forever", b"")
    assert entered.wait(PATIENCE)
    runner.cancel("ac")
    assert outcomes.wait("ac").status is TaskStatus.CANCELLED


def test_async_errors_fail_the_run(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    async def broken(args: bytes) -> None:
        raise KeyError("missing")

    registered("test-runner.async-broken", broken)
    runner = make_runner()
    runner.start("ae", 1, "test-runner.async-broken", b"")
    assert outcomes.wait("ae").error == "KeyError: 'missing'"


# -- process pool -------------------------------------------------------------------------


def result_of(outcomes: Outcomes, task_id: str) -> Any:
    outcome = outcomes.wait(task_id)
    assert outcome.status is TaskStatus.COMPLETED, outcome
    assert outcome.result is not None
    return json.loads(outcome.result)


def test_process_pool_runs_handlers_in_warm_reused_children(
    make_runner: Callable[..., Runner], outcomes: Outcomes
) -> None:
    # given a process pool with one slot
    runner = make_runner("process", slots=1, modules=(__name__,))
    # when a CPU-bound handler and then others run
    runner.start("sq", 1, "test-runner.sum-of-squares", b'{"n": 100000}')
    runner.start("p1", 1, "test-runner.pid", b"")
    runner.start("p2", 1, "test-runner.pid", b"")
    runner.start("fib", 1, "fibonacci", b'{"n": 10}')
    # then they compute in a child process, the same one each time
    assert result_of(outcomes, "sq") == sum(i * i for i in range(100000))
    first, second = result_of(outcomes, "p1"), result_of(outcomes, "p2")
    assert first == second != os.getpid()
    assert result_of(outcomes, "fib") == {"n": 10, "result": 55}


def test_process_pool_timeout_kills_the_child_and_the_pool_keeps_working(
    make_runner: Callable[..., Runner], outcomes: Outcomes, tmp_path: Path
) -> None:
    # given a process pool with one slot
    runner = make_runner("process", slots=1, modules=(__name__,))
    marker = tmp_path / "pid"
    # when a handler that never returns passes its timeout
    runner.start("spin", 1, "test-runner.mark-and-spin", bytes(marker), timeout=2.0)
    # then the run fails with a timeout
    assert outcomes.wait("spin").error == "timed out after 2 s"
    # and the child that ran it is killed (it wrote its pid first thing; the timeout leaves
    # it two seconds to, however loaded the machine)
    wait_until(lambda: marker.exists() and marker.read_text() != "")
    spun_in = int(marker.read_text())
    wait_until(lambda: not pid_exists(spun_in))
    # and a fresh child serves the next run
    runner.start("after", 1, "test-runner.pid", b"")
    assert result_of(outcomes, "after") != spun_in
    assert len(outcomes.of("spin")) == 1


def test_process_pool_cancel_kills_the_run(
    make_runner: Callable[..., Runner], outcomes: Outcomes, tmp_path: Path
) -> None:
    # given a process pool running a handler that never returns
    runner = make_runner("process", slots=1, modules=(__name__,))
    marker = tmp_path / "pid"
    runner.start("spin", 1, "test-runner.mark-and-spin", bytes(marker))
    wait_until(lambda: marker.exists() and marker.read_text() != "")
    spun_in = int(marker.read_text())
    # when it is cancelled
    assert runner.cancel("spin") == 1
    # then it is reported cancelled, its child is killed, and the pool serves the next run
    assert outcomes.wait("spin").status is TaskStatus.CANCELLED
    wait_until(lambda: not pid_exists(spun_in))
    runner.start("after", 1, "echo", b"still here")
    assert outcomes.wait("after").result == b"still here"
    assert len(outcomes.of("spin")) == 1


def test_process_pool_reports_errors_unknown_handlers_and_dead_children(
    make_runner: Callable[..., Runner], outcomes: Outcomes
) -> None:
    runner = make_runner("process", slots=2, modules=(__name__,))
    runner.start("bad", 1, "prime_factorization", b'{"n": 1}')
    runner.start("unknown", 1, "nope", b"")
    runner.start("exit", 1, "test-runner.exit", b"")
    assert outcomes.wait("bad").error is not None
    assert str(outcomes.wait("bad").error).startswith("ValueError: field 'n' must be >= 2")
    assert outcomes.wait("unknown").error == "unknown handler 'nope'"
    assert outcomes.wait("exit").error == "worker process died (exit code 3)"
    # a child's traceback comes back with its error; a missing handler raised nothing
    assert "ValueError: field 'n' must be >= 2" in str(outcomes.wait("bad").traceback)
    assert outcomes.wait("unknown").traceback is None
    # and the pool still works afterwards
    runner.start("ok", 1, "echo", b"ok")
    assert outcomes.wait("ok").result == b"ok"


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- runs handed to the caller (one slot) --------------------------------------------


def test_a_one_slot_runner_hands_a_plain_run_to_its_caller_to_run(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # Given a thread runner of one slot.
    threads: list[str] = []
    registered("test-runner.where", lambda args: threads.append(threading.current_thread().name))
    runner = make_runner(slots=1)
    assert runner.inline

    # When a run is started for the caller to run.
    job = runner.start_inline("here", 1, "test-runner.where", b"", timeout=60)

    # Then it holds the slot until the caller runs it, on the caller's thread, under its own
    # name meanwhile; its outcome is reported once, and the thread keeps its name.
    assert job is not None
    assert runner.running() == [("here", 1)]
    assert runner.start_inline("next", 1, "echo", b"x") is None  # no slot: it waits its turn
    name = threading.current_thread().name
    job()
    assert threads == ["task-here-1"]
    assert threading.current_thread().name == name
    assert outcomes.wait("here").status is TaskStatus.COMPLETED
    assert outcomes.wait("next").result == b"x"  # then ran on a pool thread
    assert len(outcomes.of("here")) == 1


def test_a_run_handed_to_the_caller_and_cancelled_first_never_runs(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    ran: list[bytes] = []
    registered("test-runner.record", ran.append)
    runner = make_runner(slots=1)
    job = runner.start_inline("early", 1, "test-runner.record", b"x")
    assert job is not None

    assert runner.cancel("early") == 1
    job()

    assert ran == []
    assert [o.status for o in outcomes.of("early")] == [TaskStatus.CANCELLED]
    assert runner.running() == []


def test_a_run_handed_to_the_caller_is_not_started_twice_nor_after_shutdown(
    make_runner: Callable[..., Runner], outcomes: Outcomes
) -> None:
    runner = make_runner(slots=1)
    job = runner.start_inline("once", 1, "echo", b"1")
    assert job is not None
    # The same run again, whichever way it comes, is not started: it is running already.
    assert runner.start_inline("once", 1, "echo", b"2") is None
    assert not runner.start("once", 1, "echo", b"3")
    assert runner.running() == [("once", 1)]
    job()
    assert [o.result for o in outcomes.of("once")] == [b"1"]
    runner.shutdown()
    with pytest.raises(RuntimeError):
        runner.start_inline("after", 1, "echo", b"")


def test_a_handler_replaced_by_an_async_one_is_no_longer_handed_over(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    # Given a plain handler that a one-slot runner has handed to its caller once.
    def swap(args: bytes) -> bytes:
        return b"plain"

    registered("test-runner.swap", swap)
    runner = make_runner(slots=1)
    job = runner.start_inline("first", 1, "test-runner.swap", b"")
    assert job is not None
    job()

    # When an async handler of the same name, in both senses, takes its place.
    async def swapped(args: bytes) -> bytes:
        return b"async"

    swapped.__name__ = swapped.__qualname__ = swap.__qualname__
    registered("test-runner.swap", swapped)

    # Then its runs go to the event loop: what was learnt of the first is not reused.
    assert runner.start_inline("second", 1, "test-runner.swap", b"") is None
    assert outcomes.wait("second").result == b"async"


class _Unhashable:
    """A callable object with ``__eq__`` and so no hash."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unhashable)

    def __call__(self, args: bytes) -> bytes:
        return b"called " + args


def test_a_callable_object_that_cannot_be_hashed_is_handed_over_too(
    make_runner: Callable[..., Runner], outcomes: Outcomes, registered: Register
) -> None:
    registered("test-runner.unhashable", _Unhashable())
    runner = make_runner(slots=1)
    for i in range(2):
        job = runner.start_inline(f"obj{i}", 1, "test-runner.unhashable", b"x")
        assert job is not None
        job()
        assert outcomes.wait(f"obj{i}").result == b"called x"


def test_only_a_plain_handler_of_a_one_slot_thread_runner_is_handed_over(
    make_runner: Callable[..., Runner], outcomes: Outcomes
) -> None:
    # A runner of two slots, an async handler and an unknown one start as start() starts them.
    assert not make_runner(slots=2).inline
    assert make_runner(slots=2).start_inline("two", 1, "echo", b"2") is None
    solo = make_runner(slots=1)
    assert solo.start_inline("async", 1, "test-runner.async-echo", b"a") is None
    assert solo.start_inline("unknown", 1, "no-such-handler", b"") is None

    assert outcomes.wait("two").result == b"2"
    assert outcomes.wait("async").result == b"a"
    assert outcomes.wait("unknown").status is TaskStatus.FAILED
