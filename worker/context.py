"""The run context: what a handler can learn about the run it is executing.

The runner activates a ``TaskContext`` around each handler call (a context
variable, so it follows the run's thread or asyncio task); a handler reads it
with ``current()`` to stop early when its run is cancelled or times out:

    from worker import handler, sleep

    @handler("poll")
    def poll(args: bytes) -> str:
        for _ in range(60):
            sleep(1.0)  # raises Cancelled as soon as the run is cancelled
        return "done"

This module must never touch sockets or import zmq: handler code and child
processes import it.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


class Cancelled(Exception):
    """The current run was cancelled or timed out; raised by ``sleep`` and ``check``."""


#: Guards the moment a run's event is made against a cancel at the same moment.
_event_lock = threading.Lock()


class Cancellation:
    """Whether a run was cancelled; its ``threading.Event`` is made only when asked for.

    Most runs are never cancelled and their handlers never look: making an Event (a
    condition and its lock) for every run was about a fifth of a busy worker loop's time.
    """

    __slots__ = ("_cancelled", "_event")

    def __init__(self) -> None:
        self._cancelled = False
        self._event: threading.Event | None = None

    def set(self) -> None:
        """Cancel the run: its event, made now or later, is set."""
        with _event_lock:
            self._cancelled = True
            event = self._event
        if event is not None:
            event.set()

    def is_set(self) -> bool:
        event = self._event  # handler code may set the event itself
        return self._cancelled or (event is not None and event.is_set())

    def event(self) -> threading.Event:
        """The run's event, set if the run is cancelled already."""
        event = self._event
        if event is None:
            with _event_lock:
                if self._event is None:
                    self._event = threading.Event()
                    if self._cancelled:
                        self._event.set()
                event = self._event
        return event


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The run a handler is executing."""

    #: The task's id.
    task_id: str
    #: The lease's attempt number (its fencing token).
    attempt: int
    #: ``time.monotonic()`` value at which the run times out, or None for no timeout.
    deadline: float | None = None
    #: Whether the run is cancelled; shared by the copies the runner makes of a context
    #: (it sets the deadline when the handler starts).
    cancellation: Cancellation = field(default_factory=Cancellation, repr=False, compare=False)

    @property
    def cancelled(self) -> threading.Event:
        """Set when the run is cancelled or passes its timeout: the handler should stop."""
        return self.cancellation.event()

    def remaining(self) -> float | None:
        """Seconds left before the timeout (never negative), or None without a timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


_current: ContextVar[TaskContext | None] = ContextVar("zmq_scheduler_task", default=None)


def current() -> TaskContext | None:
    """The context of the run executing in this thread or asyncio task; None outside a run."""
    return _current.get()


def activate(ctx: TaskContext | None) -> Token[TaskContext | None]:
    """Make ``ctx`` the current run (the runner's job); returns a token for ``deactivate``."""
    return _current.set(ctx)


def deactivate(token: Token[TaskContext | None]) -> None:
    """Restore the context that was current before ``activate``."""
    _current.reset(token)


def check() -> None:
    """Raise ``Cancelled`` if the current run was cancelled; for CPU loops that cannot sleep."""
    ctx = _current.get()
    if ctx is not None and ctx.cancellation.is_set():
        raise Cancelled(f"run of task {ctx.task_id} was cancelled")


def sleep(seconds: float) -> None:
    """Sleep, but raise ``Cancelled`` as soon as the current run is cancelled or times out.

    Outside a run this is ``time.sleep``. Blocking: async handlers use ``asyncio.sleep``,
    which their cancellation interrupts.
    """
    ctx = _current.get()
    if ctx is None:
        time.sleep(max(0.0, seconds))
        return
    if ctx.cancelled.wait(max(0.0, seconds)):
        raise Cancelled(f"run of task {ctx.task_id} was cancelled")
