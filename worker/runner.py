"""Runs handlers concurrently and reports each run's outcome exactly once.

``Runner.start`` begins a run; ``on_done`` later receives its ``Outcome``
(completed, failed or cancelled), called from whichever thread finished it.

Pools:

- ``thread``: each run runs on a pooled daemon thread; ``async def`` handlers run on
  one shared asyncio loop in a background thread. A thread cannot be killed, so a
  cancel or timeout sets the run's ``cancelled`` event (cooperative handlers stop),
  reports at once and frees the slot; whatever the thread produces later is dropped.
- ``process``: one warm child process per slot (``worker.child``), reused from run to
  run; a cancel or timeout kills the child, which is then replaced.

Runs beyond ``slots`` wait in order for a free slot; a run's timeout counts from
when its handler starts, so waiting does not eat into it. The first of finishing,
cancel and timeout claims a run's outcome; the others find it claimed and do
nothing. ``shutdown`` abandons runs without reporting them: the agent's BYE makes
the broker requeue them.

This module must never touch sockets: the agent thread owns the only one, and
outcomes reach it through ``on_done``. It must never block its caller on a
handler either: ``start``, ``cancel`` and ``running`` return at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import inspect
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

from common import logs
from common.messages import RunKey
from common.models import TaskStatus
from worker import child, context, handlers
from worker.context import TaskContext

logger = logging.getLogger(__name__)

#: Pool kinds accepted by ``Runner``.
POOLS = ("thread", "process")
#: Seconds ``shutdown`` waits for the asyncio loop and the child processes to stop.
SHUTDOWN_WAIT = 2.0
#: Longest single sleep of the watchdog thread, in seconds.
WATCHDOG_STEP = 3600.0
#: A child that dies on its own within this many seconds of starting is replaced only
#: after this long, so a child that cannot start (a broken handler module) does not
#: make its slot thread spin.
RESPAWN_THROTTLE = 1.0


class Outcome(NamedTuple):
    """How one run ended (a tuple: one is made for every run, at half a frozen dataclass's
    cost)."""

    task_id: str
    attempt: int
    status: TaskStatus
    #: The handler's result (completed runs).
    result: bytes | None = None
    #: What went wrong (failed runs).
    error: str | None = None
    #: Where it went wrong: the handler's traceback (failed runs whose handler raised).
    traceback: str | None = None

    @property
    def key(self) -> RunKey:
        return RunKey(self.task_id, self.attempt)


OnDone = Callable[[Outcome], None]


@dataclass(eq=False, slots=True)
class _Run:
    task_id: str
    attempt: int
    handler: str
    args: bytes
    timeout: float | None
    ctx: TaskContext
    #: The outcome is claimed (reported, or dropped at shutdown): nothing else may report.
    claimed: bool = False
    #: Holds a thread-pool slot (admitted and not yet claimed).
    admitted: bool = False
    #: Stops the execution (cancels the asyncio task, kills the child); set while running.
    abort: Callable[[], object] | None = None
    #: The handler, as registered when the run started (thread pool; a child looks it up).
    fn: handlers.Handler | None = None


class Runner:
    """Runs tasks in a thread or process pool of ``slots`` and reports their outcomes."""

    def __init__(
        self,
        pool: str,
        slots: int,
        on_done: OnDone,
        handler_modules: Sequence[str] = (),
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        import worker.builtin  # noqa: F401  (registers the built-in handlers)

        for module in handler_modules:
            handlers.load_module(module)
        self.pool = pool
        self.slots = slots
        self._on_done = on_done
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, int], _Run] = {}
        self._pending: deque[_Run] = deque()  # thread pool: admitted in order as slots free
        self._active = 0  # thread pool: runs holding a slot
        #: Whether each handler seen is ``async def`` (``_is_async``).
        self._async: dict[handlers.Handler, bool] = {}
        self._closed = False
        self._watchdog = _Watchdog()
        self._threads = _Threads(max_idle=slots)
        self._loop: _AsyncLoop | None = None
        self._processes = (
            _ProcessPool(self, slots, list(handler_modules)) if pool == "process" else None
        )

    # -- the interface -----------------------------------------------------------

    def start(
        self, task_id: str, attempt: int, handler: str, args: bytes, timeout: float | None = None
    ) -> bool:
        """Begin a run; False (and no outcome) if this run is already in progress.

        ``timeout`` (seconds > 0, as ``common.messages`` checked it, or None for none)
        counts from when the handler starts, not from this call: a run that waits for a
        slot (or for a child to be replaced) keeps its whole budget.
        """
        run = self._register(task_id, attempt, handler, args, timeout, handlers.get(handler))
        if run is None:
            return False
        self._queue(run)
        return True

    @property
    def inline(self) -> bool:
        """Whether ``start_inline`` may hand runs to its caller: one slot, thread pool."""
        return self._processes is None and self.slots == 1

    def start_inline(
        self, task_id: str, attempt: int, handler: str, args: bytes, timeout: float | None = None
    ) -> Callable[[], None] | None:
        """``start``, for a caller that can run the handler itself as soon as it returns.

        When the run gets the slot at once and its handler is a plain function of the
        thread pool (``inline``), the run is admitted and returned as a job for the caller
        to call on its own thread, which saves handing it to a pool thread and back. The
        run is like any other meanwhile: ``running`` lists it, a cancel or its timeout
        reports it at once, and calling the job reports its outcome unless they did.
        Otherwise the run starts as ``start`` starts it, and None is returned.
        """
        fn = handlers.get(handler)
        if fn is None or not self.inline or self._is_async(fn):
            self.start(task_id, attempt, handler, args, timeout)
            return None
        run = self._register(task_id, attempt, handler, args, timeout, fn, admit=True)
        if run is None:
            return None
        if run.admitted:
            return partial(self._run_admitted, run, fn)
        self._queue(run)
        return None

    def _run_admitted(self, run: _Run, fn: handlers.Handler) -> None:
        """A job of ``start_inline``: the run, unless a cancel or its timeout came first."""
        if not run.claimed:
            self._arm(run)
            self._run_thread(run, fn)

    def _is_async(self, fn: handlers.Handler) -> bool:
        """Whether ``fn`` is an ``async def`` handler (asked once a handler: ``inspect``
        takes longer than many a handler's run)."""
        try:
            known = self._async.get(fn)
            if known is None:
                known = self._async[fn] = inspect.iscoroutinefunction(fn)
        except TypeError:  # a callable object that cannot be a key: asked every time
            return inspect.iscoroutinefunction(fn)
        return known

    def _register(
        self,
        task_id: str,
        attempt: int,
        handler: str,
        args: bytes,
        timeout: float | None,
        fn: handlers.Handler | None,
        admit: bool = False,
    ) -> _Run | None:
        """The run of handler ``fn``, listed as in progress; None (logged) if it is in
        progress already. ``admit``: it also takes a thread-pool slot, under the same turn of
        the lock, if one is free and no run waits for one (``admitted`` says whether)."""
        run = _Run(task_id, attempt, handler, args, timeout, TaskContext(task_id, attempt), fn=fn)
        key = (task_id, attempt)
        with self._lock:
            if self._closed:
                raise RuntimeError("runner is shut down")
            if key in self._runs:
                logger.warning("task %s attempt %d is already running", task_id, attempt)
                return None
            self._runs[key] = run
            if admit and not self._pending and self._active < self.slots:
                run.admitted = True
                self._active += 1
        return run

    def _queue(self, run: _Run) -> None:
        """Start a registered run in its pool, in turn for a slot; fail one whose handler
        is unknown."""
        if run.fn is None:
            self._finish(run, TaskStatus.FAILED, error=handlers.unknown(run.handler))
        elif self._processes is not None:
            self._processes.submit(run)
        else:
            with self._lock:
                self._pending.append(run)
            self._admit()

    def cancel(self, task_id: str) -> int:
        """Stop every run of ``task_id`` and report it cancelled; returns how many there were."""
        with self._lock:
            runs = [run for run in self._runs.values() if run.task_id == task_id]
        cancelled = 0
        for run in runs:
            if self._finish(run, TaskStatus.CANCELLED, stop=True):
                cancelled += 1
        return cancelled

    def running(self) -> list[tuple[str, int]]:
        """(task_id, attempt) of every run not yet reported, waiting ones included."""
        with self._lock:
            return list(self._runs)

    def shutdown(self) -> None:
        """Stop everything without reporting the runs in progress (their tasks get requeued)."""
        if self._processes is not None:
            self._processes.stopping.set()  # first, so no slot replaces a child killed below
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runs = list(self._runs.values())
            self._runs.clear()
            self._pending.clear()
            for run in runs:
                run.claimed = True
                self._stop(run)
        self._watchdog.close()
        if self._loop is not None:
            self._loop.close(SHUTDOWN_WAIT)
        if self._processes is not None:
            self._processes.close(SHUTDOWN_WAIT)

    # -- claiming outcomes ---------------------------------------------------------

    def _finish(
        self,
        run: _Run,
        status: TaskStatus,
        result: bytes | None = None,
        error: str | None = None,
        stop: bool = False,
        traceback: str | None = None,
    ) -> bool:
        """Report the run's outcome unless another path already claimed it.

        ``stop``: also stop the execution (cancel, timeout). That happens under the
        lock, after the claim, so a handler that then fails (``Cancelled``) finds the
        outcome claimed, and a child is killed only while it still runs this run.
        """
        with self._lock:
            if run.claimed:
                return False
            run.claimed = True
            self._runs.pop((run.task_id, run.attempt), None)
            if run.admitted:
                run.admitted = False
                self._active -= 1
            if stop:
                self._stop(run)
            closed = self._closed
        if status is TaskStatus.FAILED:
            logger.info("task %s attempt %d failed: %s", run.task_id, run.attempt, error)
        elif status is TaskStatus.CANCELLED:
            logger.info("task %s attempt %d cancelled", run.task_id, run.attempt)
        else:
            logger.debug("task %s attempt %d completed", run.task_id, run.attempt)
        if not closed:
            try:
                outcome = Outcome(run.task_id, run.attempt, status, result, error, traceback)
                self._on_done(outcome)
            except Exception:
                logger.exception("on_done failed for task %s", run.task_id)
        if self._processes is None and self._pending:  # (``_queue`` admits what it adds)
            self._admit()
        return True

    @staticmethod
    def _stop(run: _Run) -> None:
        # Caller holds the lock. Both hooks return at once (a signal, a call_soon).
        run.ctx.cancellation.set()
        if run.abort is not None:
            run.abort()
            run.abort = None

    def _arm(self, run: _Run) -> None:
        """The handler starts now: set the run's deadline and watch for it."""
        if run.timeout is not None:
            deadline = time.monotonic() + run.timeout
            run.ctx = replace(run.ctx, deadline=deadline)  # same cancellation
            self._watchdog.schedule(deadline, lambda: self._expire(run))

    def _expire(self, run: _Run) -> None:
        error = f"timed out after {run.timeout:g} s"
        self._finish(run, TaskStatus.FAILED, error=error, stop=True)

    # -- thread pool ---------------------------------------------------------------

    def _admit(self) -> None:
        """Start waiting runs while slots are free."""
        while True:
            with self._lock:
                if self._closed or not self._pending or self._active >= self.slots:
                    return
                run = self._pending.popleft()
                if run.claimed:  # cancelled while waiting
                    continue
                run.admitted = True
                self._active += 1
            self._launch(run)

    def _launch(self, run: _Run) -> None:
        self._arm(run)
        fn = run.fn
        assert fn is not None  # start() reported the run failed otherwise
        if self._is_async(fn):
            with self._lock:
                if self._closed:  # shut down since it was admitted: it is claimed already
                    return
                if self._loop is None:  # first async run; runs launch from several threads
                    self._loop = _AsyncLoop()
                loop = self._loop
            future = loop.submit(self._run_async(run, fn))
            with self._lock:
                if run.claimed:  # cancelled in the meantime
                    future.cancel()
                else:
                    run.abort = future.cancel
        else:
            self._threads.submit(lambda: self._run_thread(run, fn))

    def _run_thread(self, run: _Run, fn: handlers.Handler) -> None:
        token = context.activate(run.ctx)
        thread = threading.current_thread()
        name = thread.name
        thread.name = f"task-{run.task_id}-{run.attempt}"  # for stack dumps and profilers
        try:
            result = handlers.to_bytes(fn(run.args))
        except BaseException as exc:  # this thread is ours: SystemExit fails the run
            self._failed(run, exc)
        else:
            self._finish(run, TaskStatus.COMPLETED, result=result)
        finally:
            context.deactivate(token)  # the thread serves other runs next
            thread.name = name

    def _failed(self, run: _Run, exc: BaseException) -> None:
        """The handler raised: the run failed, saying what and where."""
        error, traceback = handlers.describe_error(exc), handlers.describe_traceback(exc)
        self._finish(run, TaskStatus.FAILED, error=error, traceback=traceback)

    async def _run_async(self, run: _Run, fn: handlers.Handler) -> None:
        # Each asyncio task has its own copy of the context: this stays in this run.
        context.activate(run.ctx)
        try:
            result = handlers.to_bytes(await fn(run.args))
        except asyncio.CancelledError as exc:
            # Normally a cancel or timeout that already claimed the outcome; if the
            # handler's own awaitable was cancelled, that is a failure to report.
            self._failed(run, exc)
            raise
        except BaseException as exc:  # never let SystemExit stop the shared loop
            self._failed(run, exc)
        else:
            self._finish(run, TaskStatus.COMPLETED, result=result)


class _Threads:
    """Reusable daemon threads for sync handlers.

    Starting a thread per run cost more than an ``echo`` run itself. A thread that
    finishes a run waits for the next one; a new thread starts only when none is idle,
    so a run abandoned at its timeout (its thread still busy) never delays the others.
    At most ``max_idle`` threads wait idle; more exit.
    """

    def __init__(self, max_idle: int) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._max_idle = max_idle

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that idle thread takes this job (or an equal one)
        self._queue.put(job)
        if start:
            threading.Thread(target=self._serve, name="runner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._queue.get()()
            with self._lock:
                if self._idle >= self._max_idle:
                    return
                self._idle += 1


class _Watchdog:
    """One thread that calls callbacks at their deadlines (``time.monotonic`` values)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()  # breaks ties: callbacks do not compare
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def schedule(self, when: float, callback: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (when, next(self._counter), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    # A far deadline is waited for in steps: a wait of more than about
                    # 292 years (threading.TIMEOUT_MAX) raises, and would stop this thread.
                    wait = min(self._heap[0][0] - now, WATCHDOG_STEP) if self._heap else None
                    self._cond.wait(wait)
                _, _, callback = heapq.heappop(self._heap)
            # Outside the lock: a callback may take the runner's lock and report.
            # Entries of runs that finished early stay until due; their callback is a no-op.
            try:
                callback()
            except Exception:
                logger.exception("deadline callback failed")


class _AsyncLoop:
    """The asyncio event loop shared by ``async def`` handlers, in a daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asyncio", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        # Cancelling the returned future cancels the asyncio task (in the loop's thread).
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self, timeout: float) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            logger.warning("async handlers did not stop within %g s", timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()
        # else a handler blocks the loop; the daemon thread dies with the process.


class _Child:
    """One child process of the process pool and the parent's end of its pipe."""

    def __init__(self, index: int, handler_modules: list[str]) -> None:
        # "spawn" execs a fresh interpreter. fork would copy the parent's zmq context
        # and its I/O threads' locks mid-use (libzmq does not survive a fork), and
        # children are replaced long after the agent opened its socket, so "fork before
        # any zmq context exists" cannot hold. forkserver would start faster, but a
        # child is spawned only at start-up and after a kill, so simple wins.
        mp = multiprocessing.get_context("spawn")
        parent_end, child_end = mp.Pipe(duplex=True)
        # daemon: multiprocessing kills it if the worker exits without shutdown().
        self.process: BaseProcess = mp.Process(
            target=child.main,
            args=(
                child_end,
                handler_modules,
                logging.getLogger().getEffectiveLevel(),
                logs.format_in_use(),
            ),
            name=f"worker-child-{index}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.conn: Connection = parent_end
        self.started = time.monotonic()
        #: Killed (or about to be): must not take another run.
        self.doomed = False

    def kill(self) -> None:
        """Kill the child at once (callers hold the runner lock, so a run is not reassigned)."""
        self.doomed = True
        self.process.kill()

    def execute(self, run: _Run) -> tuple[str, Any]:
        """Send the run; ("ok", bytes), ("error", (message, traceback)) or ("died", exit code)."""
        request = (run.task_id, run.attempt, run.handler, run.args, run.ctx.remaining())
        try:
            self.conn.send(request)
            ready = wait([self.conn, self.process.sentinel])
            if self.conn in ready:
                reply: tuple[str, Any] = self.conn.recv()
                return reply
        except (EOFError, OSError):
            pass
        # Dead, or its pipe is broken: either way it is done for.
        self.process.kill()
        self.process.join()
        return ("died", self.process.exitcode)

    def close(self, timeout: float) -> None:
        self.conn.close()
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join(timeout)
        if self.process.exitcode is not None:
            self.process.close()


class _ProcessPool:
    """``slots`` threads, each feeding runs to its own warm child process."""

    def __init__(self, runner: Runner, slots: int, handler_modules: list[str]) -> None:
        self._runner = runner
        self._handler_modules = handler_modules
        self._queue: deque[_Run | None] = deque()
        self._cond = threading.Condition()
        self.stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._slot, args=(i,), name=f"slot-{i}", daemon=True)
            for i in range(slots)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, run: _Run) -> None:
        with self._cond:
            self._queue.append(run)
            self._cond.notify()

    def close(self, timeout: float) -> None:
        self.stopping.set()
        with self._cond:
            self._queue.clear()
            self._queue.extend([None] * len(self._threads))
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _next(self) -> _Run | None:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            return self._queue.popleft()

    def _spawn(self, index: int, previous: _Child | None) -> _Child | None:
        if previous is not None:
            previous.close(SHUTDOWN_WAIT)
            lived = time.monotonic() - previous.started
            if not previous.doomed and lived < RESPAWN_THROTTLE:
                logger.warning(
                    "child process %d died %.2f s after starting; replacing it in %g s",
                    index,
                    lived,
                    RESPAWN_THROTTLE,
                )
                if self.stopping.wait(RESPAWN_THROTTLE):
                    return None
        while not self.stopping.is_set():
            try:
                return _Child(index, self._handler_modules)
            except Exception:  # out of processes or memory: try again rather than lose the slot
                logger.exception("cannot start child process %d", index)
                self.stopping.wait(RESPAWN_THROTTLE)
        return None

    def _slot(self, index: int) -> None:
        runner = self._runner
        worker: _Child | None = None
        try:
            worker = self._spawn(index, None)
            while worker is not None:
                run = self._next()
                if run is None:
                    return
                if worker.doomed or not worker.process.is_alive():
                    worker = self._spawn(index, worker)
                    if worker is None:
                        return
                with runner._lock:
                    if run.claimed:  # cancelled while waiting
                        continue
                    run.abort = worker.kill
                    runner._arm(run)
                kind, payload = worker.execute(run)
                with runner._lock:
                    run.abort = None
                if kind == "ok":
                    runner._finish(run, TaskStatus.COMPLETED, result=payload)
                elif kind == "error":
                    error, traceback = payload
                    runner._finish(run, TaskStatus.FAILED, error=error, traceback=traceback)
                else:
                    error = f"worker process died (exit code {payload})"
                    runner._finish(run, TaskStatus.FAILED, error=error)
                if worker.doomed or kind == "died":
                    # Replace it now, so the next run finds a warm child.
                    worker = self._spawn(index, worker)
        except Exception:
            logger.exception("process pool slot %d failed", index)
        finally:
            if worker is not None:
                worker.close(SHUTDOWN_WAIT)
