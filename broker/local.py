"""A client of a scheduler in this very process: requests run as the broker runs them, with
no socket between.

``LocalClient.request`` takes the same ops and arguments as the client library's
``request``, decodes them as the broker does, and passes them to
``broker.operations.perform`` on a real ``Scheduler``, followed by the dispatch round
the socket loop would run (what the loop would commit is dropped: there is no store).
A request the broker would answer later (a wait, a long-poll) is answered at once if
the turn answered it, or else at its deadline: nothing else runs
in this process, so the client moves its clock there and lets the core's timers fire.
The REST API's unit tests run against it, so they see the broker's real rules and
replies; it is not a way to run a cluster (no worker can reach it).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from broker.core import Scheduler
from broker.operations import DEFERRED, perform
from common.errors import SchedulerError
from common.ops import Op, Request, decode_args, holds

#: Marker: the outbox held no answer for the call.
_NO_ANSWER: Any = object()


class LocalClient:
    """Calls a ``Scheduler`` directly; thread-safe (one call at a time)."""

    def __init__(self, core: Scheduler | None = None, now: float = 0.0) -> None:
        self.core = core or Scheduler()
        #: The scheduler's clock, in seconds since the epoch: moved only by waits that
        #: run out, and by tests.
        self.now = now
        self.started = now
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        """The value of an op with these arguments, decoded as the broker decodes them."""
        return self.call(decode_args(op.value, args), timeout)

    def call(self, request: Request, timeout: float | None = None) -> Any:
        """The request's value, or its ``SchedulerError``, as the broker would answer."""
        with self._lock:
            token = ("local", next(self._tokens))
            value = perform(self.core, request, token, self.now, self.started)
            self.core.schedule(self.now)
            answer = self._answer(token)
            if value is DEFERRED and answer is _NO_ANSWER:
                self.now += holds(request.OP, request.to_args())
                self.core.tick(self.now)
                self.core.schedule(self.now)
                answer = self._answer(token)
            self.core.take_dirty()
            self.core.take_pruned()
            self.core.take_workers()
        if value is not DEFERRED:
            return value
        if answer is _NO_ANSWER:
            raise SchedulerError("the scheduler never answered the request")
        return answer

    def _answer(self, token: object) -> Any:
        answer = _NO_ANSWER
        for replied, value in self.core.take_outbox().replies:
            if replied == token:
                answer = value
        return answer
