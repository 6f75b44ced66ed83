"""Every deadline of the scheduling core in one heap, whatever it is for.

A timer is (when, kind, subject, detail): a task to make ready after its delay or
back-off, a lease to expire, a deferred answer (a wait, a long-poll) to give at its
deadline, the window in which workers may claim leases after a restart, a worker's next
ping or liveness check (one timer per online worker: liveness walks no list of workers).
``due`` hands back, in order of time, the timers whose moment has come; the core decides
what each still means. Timers are never removed early: one that no longer applies (its task
finished, its waiter was answered) is dropped by the core when it comes due, which
keeps adding one O(log n) and cancelling one free. New kinds (cron, rate limits) join
the same heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from enum import Enum
from typing import Any


class TimerKind(Enum):
    """What a timer is for."""

    #: A pending task's delay or retry back-off ends: subject is the task.
    READY = "ready"
    #: A lease's time limit (timeout + grace): subject is the task, detail its attempt.
    LEASE = "lease"
    #: A deferred answer (wait, wait_many, submit with wait) is due: subject is the waiter.
    WAIT = "wait"
    #: An HTTP worker's long-poll ends empty: subject is the worker, detail the poll's token.
    POLL = "poll"
    #: The window after a restart in which workers may claim the leases they hold ends.
    ORPHANS = "orphans"
    #: A worker's next ping or liveness check is due: subject is the worker, detail its watch.
    LIVENESS = "liveness"


class Timers:
    """A min-heap of (when, sequence, kind, subject, detail); the sequence breaks ties in
    the order timers were set, so subjects are never compared."""

    __slots__ = ("_heap", "_sequence")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerKind, Any, Any]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, kind: TimerKind, subject: Any, detail: Any = None) -> None:
        heapq.heappush(self._heap, (when, next(self._sequence), kind, subject, detail))

    def next_deadline(self) -> float | None:
        """When the earliest timer comes due (None: there is none)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> Iterator[tuple[TimerKind, Any, Any]]:
        """Pop each timer due at ``now``, earliest first (timers added meanwhile included)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, subject, detail = heapq.heappop(heap)
            yield kind, subject, detail
