"""The agent's loop, handed between two threads so that a handler can run on the loop's own.

A worker of one slot (thread pool) spent more on handing each run to a pool thread and its
outcome back (two thread switches, a pipe write, a poll) than on an ``echo`` run itself.
So the thread that reads a DISPATCH runs the handler itself, right after its turn, and
sends the outcome at once. While it does, nobody reads the socket. For a moment that is
fine: the slot is taken, so nothing comes but pings, cancels and ACKs. For long it is not:
a worker that does not answer pings is declared lost. So a second thread stands by, and
once a handler has run ``handover`` seconds it takes the loop over: it serves the socket
from then on, and the thread with the handler, once done, reports the outcome as a pool
thread would and stands by in turn.

One thread holds the loop at a time, and only it touches the loop's state (its socket
above all); the loop passes from one thread to the other under this module's lock, the
memory barrier ZeroMQ asks for when a socket changes threads.

This module must never touch a socket or the agent's state: it only says who holds the
loop, and runs the jobs it is given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Seconds a handler runs on the loop's thread before the thread standing by takes the
#: loop over: pings, cancels and outcomes of other runs wait at most this long (and a tick).
HANDOVER = 0.02
#: Longest wait of ``Relay.wait`` between two looks for a signal's handler to run.
SIGNAL_CHECK = 0.25
#: Seconds after a handler ran on the loop's thread during which the thread standing by
#: wakes every ``handover`` to look; an idle worker's stands by without waking.
WATCH = 1.0


class Relay:
    """Who holds the agent's loop: ``take`` it, ``run_inline`` jobs while holding it,
    ``finish`` when the loop ends; ``wait`` for that from another thread."""

    def __init__(self, handover: float = HANDOVER) -> None:
        self._cond = threading.Condition()
        self._handover = handover
        #: The thread that holds the loop (None: free, to the first that takes it).
        self._holder: threading.Thread | None = None
        #: When the holder began the job it runs (None: it runs none).
        self._inline_since: float | None = None
        self._standing_by = 0
        #: The thread standing by waits without a timeout: a job must wake it.
        self._asleep = False
        #: Until when the thread standing by looks every ``handover`` seconds.
        self._watch_until = 0.0
        self._finished = False
        #: Set with ``_finished``, for ``wait``: that thread never waits on ``_cond``, whose
        #: one wake-up (``run_inline``'s) must reach the thread standing by.
        self._done = threading.Event()
        #: What ended the loop, if it was an error; ``wait`` raises it.
        self._error: BaseException | None = None

    def can_inline(self) -> bool:
        """Whether the holder may run a job: another thread stands by to take over.

        Only the holder asks, and only the holder's jobs make the other thread stop standing
        by (by taking over): the answer cannot turn false before it acts on it.
        """
        return self._standing_by > 0

    def take(self) -> bool:
        """Stand by until this thread holds the loop (True), or until the loop ends (False)."""
        me = threading.current_thread()
        with self._cond:
            self._standing_by += 1
            try:
                while not self._finished:
                    now = time.monotonic()
                    since = self._inline_since
                    if self._holder is None:
                        self._holder = me
                        return True
                    if since is not None:
                        if now - since >= self._handover:
                            self._holder, self._inline_since = me, None
                            return True
                        self._cond.wait(since + self._handover - now)
                    elif now < self._watch_until:
                        self._cond.wait(self._handover)
                    else:
                        self._asleep = True
                        self._cond.wait()
                        self._asleep = False
                return False
            finally:
                self._standing_by -= 1

    def run_inline(self, job: Callable[[], None]) -> bool:
        """Run ``job`` on the holder's thread. True: this thread still holds the loop; False:
        the other took it over meanwhile (or the loop ended), and this one must ``take`` it
        before it touches the loop again."""
        me = threading.current_thread()
        with self._cond:
            now = time.monotonic()
            self._inline_since = now
            self._watch_until = now + WATCH
            if self._asleep:
                self._cond.notify_all()  # the thread standing by: nobody else waits on it
        try:
            job()
        finally:
            with self._cond:
                held = self._holder is me
                if held:
                    self._inline_since = None
        return held

    def holds(self) -> bool:
        """Whether the calling thread holds the loop."""
        with self._cond:
            return self._holder is threading.current_thread()

    def running_inline(self) -> bool:
        """Whether the calling thread holds the loop and runs a job: what it reports now, it
        sends itself once the job returns (no other thread needs waking).

        Read without the lock, on every run's outcome: the other thread takes the loop over
        under the lock and then takes in what was reported, so an outcome queued before
        this call is found by one or the other. A False read mid take-over only costs
        a wake-up."""
        return self._holder is threading.current_thread() and self._inline_since is not None

    def finish(self, error: BaseException | None = None) -> None:
        """The loop has ended, in the holder's thread (with ``error`` if one ended it)."""
        with self._cond:
            self._finished = True
            self._holder = None
            self._error = error
            self._cond.notify_all()
        self._done.set()

    def wait(self) -> None:
        """Until ``finish``; raises the error that ended the loop, if any.

        It wakes every ``SIGNAL_CHECK`` seconds: Python runs a signal's handler in the main
        thread only, once that thread runs again, and a signal the kernel delivered to
        another thread does not interrupt this one's wait (a worker that got Ctrl-C there
        went on serving until it was killed).
        """
        while not self._done.wait(SIGNAL_CHECK):
            pass
        with self._cond:
            if self._error is not None:
                raise self._error
