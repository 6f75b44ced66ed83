"""Matching ready tasks to workers with free slots: best priority first, cluster-wide.

Every ready task waits in the queue of its shape (``broker.queue``); a worker can run a
shape if it serves the handler, has every required tag and declared the resources. The
next task for the cluster is the best head among the shapes some free worker serves;
it goes to the eligible worker with the most free slots whose free resources cover it
(the first such in roster order on a tie). A shape whose head fits no worker now does
not hold up lower tasks of other shapes. Equal priorities go in submission order
(``seq``), across shapes as within one.

``match`` only chooses; ``lease`` (the caller's) leases each pair before the next is
chosen, which is what changes the workers' free slots and resources.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from broker.queue import ReadyQueues, Shape
from broker.state import Task, Worker


def match(
    ready: ReadyQueues, online: Iterable[Worker], lease: Callable[[Task, Worker], None]
) -> int:
    """Lease ready tasks to the workers to run them, best task first (each taken out of its
    queue before ``lease`` is called); returns how many."""
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
        worker = pick(eligible[shape], task)
        if worker is None:
            continue  # no worker of this shape has room now; lower tasks may still fit others
        ready.pop(shape)
        lease(task, worker)
        leased += 1
        following = ready.head(shape)
        if following is not None:
            heapq.heappush(heads, (-following.priority, following.seq, shape))
    return leased


def pick(candidates: list[Worker], task: Task) -> Worker | None:
    """The candidate with the most free slots whose free resources cover the task's."""
    best: Worker | None = None
    best_room = 0
    for worker in candidates:
        room = worker.capacity()
        if room > best_room and worker.fits(task.resources):
            best, best_room = worker, room
    return best
