"""Submits read off the socket and not taken in yet: a large one a slice at a time.

A pipeline sends its submits in batches of up to 1,000 tasks. Taking one in whole costs
the loop about 9 ms (and its commit about as much again), and every worker outcome that
arrives meanwhile waits for it, and with it the worker's next task: at the start of a
run of one-call-per-task submits, two one-slot workers did almost nothing for the first
0.15-0.26 s while the batches came in. So the socket loop (``broker.server``) queues a
large ``separate`` submit here, and takes it in ``SLICE`` tasks at a time after its
turn's commands have gone out, looking at its socket between two slices: a worker's
outcome that arrives is read before the next slice, and its next task goes out at once.

What it keeps:

- **Order.** A client's submits are taken in the order it sent them: once one of its
  submits waits here, so does every later one of its submits, whatever its size. Its
  other requests are not held: none can name a task of a submit not acknowledged yet.
- **Nothing acknowledged early.** A submit's reply is due once its last slice is taken
  in (and, as every reply, sent once that is committed); an outcome of one of its tasks
  may reach the client first, which a client takes either way (``common.inbox``).
- **Bounded memory.** The loop stops reading messages in a turn once ``MAX_TASKS`` wait
  here (ZeroMQ's queue holds the rest), and takes in at least down to that bound.

It holds decoded requests only: it neither calls the core nor touches a socket.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from common import ops

#: Tasks of a queued submit taken in at once, between two looks at the socket: about 0.3 ms
#: of the loop's time. A ``separate`` submit of at most this many is taken in at once,
#: unless a submit of its client waits here already.
SLICE = 32
#: Tasks waiting here beyond which a turn reads no more messages, and takes in tasks
#: without looking at its socket until fewer wait.
MAX_TASKS = 20_000


@dataclass(slots=True)
class _Queued:
    """A submit read and not wholly taken in."""

    address: bytes
    req: int
    request: ops.Submit
    #: Its tasks taken in so far.
    taken: int = 0
    #: The reply entries of those tasks.
    entries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Slice:
    """Tasks of one queued submit to take in now, as a submit of their own."""

    address: bytes
    req: int
    request: ops.Submit
    #: The reply entries of its submit's tasks taken in before (a ``separate`` submit's);
    #: this slice's are added to them.
    entries: list[dict[str, Any]]
    #: Whether it holds the submit's last tasks: the submit's reply is due with it.
    last: bool


class Intake:
    """Queued submits, oldest first, and how many tasks they still hold."""

    __slots__ = ("_held", "_queue", "tasks")

    def __init__(self) -> None:
        self._queue: deque[_Queued] = deque()
        #: Submits queued, by client address.
        self._held: dict[bytes, int] = {}
        #: Tasks queued and not taken in yet.
        self.tasks = 0

    def __bool__(self) -> bool:
        return bool(self._queue)

    def wants(self, address: bytes, request: ops.Request) -> bool:
        """Whether this request waits here: a ``separate`` submit of more than ``SLICE``
        tasks, or any submit of a client that has one waiting here already."""
        if type(request) is not ops.Submit:
            return False
        return address in self._held or (request.separate and len(request.tasks) > SLICE)

    def add(self, address: bytes, req: int, request: ops.Submit) -> None:
        self._queue.append(_Queued(address, req, request))
        self._held[address] = self._held.get(address, 0) + 1
        self.tasks += len(request.tasks)

    def take(self) -> Slice:
        """The next slice of the oldest submit (the whole submit unless ``separate``: one
        that is all or none is taken in whole)."""
        head = self._queue[0]
        request = head.request
        start = head.taken
        end = start + SLICE if request.separate else len(request.tasks)
        last = end >= len(request.tasks)
        if start == 0 and last:
            part = request  # whole: no copy
        else:
            part = dataclasses.replace(request, tasks=request.tasks[start:end])
        head.taken = start + len(part.tasks)
        self.tasks -= len(part.tasks)
        if last:
            self._forget()
        return Slice(head.address, head.req, part, head.entries, last)

    def drop(self, piece: Slice) -> None:
        """Take none of the rest of this slice's submit (answered already, with an error)."""
        if piece.last:
            return
        head = self._queue[0]
        self.tasks -= len(head.request.tasks) - head.taken
        self._forget()

    def _forget(self) -> None:
        address = self._queue.popleft().address
        left = self._held[address] - 1
        if left:
            self._held[address] = left
        else:
            del self._held[address]
