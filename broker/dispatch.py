"""Matching ready tasks to workers with free slots: best priority first, cluster-wide.

Every ready task waits in the queue of its shape (``broker.queue``); a worker can run a
shape if it serves the handler, has every required tag and declared the resources. The
next task for the cluster is the best head among the shapes some free worker serves;
it goes to the eligible worker with the most free slots whose free resources cover it
(the first such in roster order on a tie). A shape whose head fits no worker now does
not hold up lower tasks of other shapes. Equal priorities go in submission order
(``seq``), across shapes as within one.

The ``Matcher`` keeps this without a scan of the workers. Workers are grouped in
*services*, one per (handler, required tags) that ready tasks asked for: the online
workers serving it, and a heap of those with a free slot by (most free slots, roster
order). Choosing a worker for a task pops stale entries off the top and walks down
past workers whose free resources do not cover the task's: O(log n) for a task that
asks for no resources; for one that does, the walk passes every better-placed worker
that lacks them (the worst case: all of the service's free workers, when none fits).
Shapes whose head found no worker are *parked* on their service, and woken only when
one of its workers that could take that head frees a slot or resources, or comes
online; so a turn considers only shapes that something changed for (``_heads``).

Every change of a worker's free slots or resources goes through ``touch``, its coming
online through ``join`` and its going through ``leave``; ``broker.invariants`` checks
that the heaps, the members and the parked shapes agree with the workers.

``match`` only chooses; ``lease`` (the caller's) leases each pair before the next is
chosen, and must ``touch`` the worker.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable

from broker.queue import ReadyQueues, Shape
from broker.state import ResourceKey, Task, Worker

#: What a service is for: a handler and the tags a task requires.
ServiceKey = tuple[str, tuple[str, ...]]
#: A heap entry: (-free slots, roster rank, stamp, worker); current only while the
#: worker's stamp is the entry's.
Entry = tuple[int, int, int, Worker]
#: A ready shape's place in the heads heap: (-priority, seq) of its head.
HeadKey = tuple[int, int]

#: Stale entries a service's heap may hold beyond twice its members before it is rebuilt.
COMPACT_SLACK = 64


def service_of(shape: Shape) -> ServiceKey:
    return shape[0], shape[1]


def provides(worker: Worker, key: ServiceKey) -> bool:
    """Whether the worker has the handler and every tag of the service."""
    handler, requires = key
    caps = worker.capabilities
    return handler in caps and all(tag in caps for tag in requires)


class Service:
    """The online workers that serve one (handler, tags), and the free ones by room."""

    __slots__ = ("heap", "key", "members", "parked")

    def __init__(self, key: ServiceKey) -> None:
        self.key = key
        self.members: set[Worker] = set()
        self.heap: list[Entry] = []
        #: Shapes of this service whose head no member could take when last tried.
        self.parked: set[Shape] = set()

    def compact(self) -> None:
        """Rebuild the heap from the members: stale entries out, O(members)."""
        self.heap = [
            (-room, worker.rank, worker.stamp, worker)
            for worker in self.members
            if (room := worker.capacity()) > 0
        ]
        heapq.heapify(self.heap)

    def pick(self, resources: ResourceKey) -> Worker | None:
        """The member with the most free slots (first in roster order on a tie) whose free
        resources cover these."""
        heap = self.heap
        passed: list[Entry] = []
        chosen: Worker | None = None
        while heap:
            _, _, stamp, worker = heap[0]
            if stamp != worker.stamp:
                heapq.heappop(heap)  # its slots or resources changed since
                continue
            if not resources or worker.fits(resources):
                chosen = worker
                break
            passed.append(heapq.heappop(heap))
        for entry in passed:
            heapq.heappush(heap, entry)
        return chosen


class Matcher:
    """Services, the shapes to consider next, and the parked ones."""

    def __init__(self, ready: ReadyQueues, online: dict[str, Worker]) -> None:
        self.ready = ready
        #: The roster's online workers: a new service is filled from them.
        self.online = online
        self.services: dict[ServiceKey, Service] = {}
        #: Services by handler, to find a joining worker's among many.
        self._by_handler: dict[str, list[Service]] = {}
        #: Shapes to consider, by their head: (-priority, seq, shape); an entry whose key
        #: is not the shape's in ``_queued`` is stale.
        self._heads: list[tuple[int, int, Shape]] = []
        self._queued: dict[Shape, HeadKey] = {}
        #: Parked shapes and the service they wait on.
        self.parked_on: dict[Shape, Service] = {}
        self._stamps = itertools.count(1)

    # -- workers ------------------------------------------------------------------------

    def join(self, worker: Worker) -> None:
        """The worker is online (again, or with other capabilities): it joins the services
        it provides."""
        self.leave(worker)
        caps = worker.capabilities
        if len(caps) < len(self._by_handler):
            lists = [self._by_handler[c] for c in caps if c in self._by_handler]
        else:
            lists = [services for h, services in self._by_handler.items() if h in caps]
        for services in lists:
            for service in services:
                if provides(worker, service.key):
                    service.members.add(worker)
                    worker.services.append(service)
        self.touch(worker)

    def leave(self, worker: Worker) -> None:
        """The worker is offline or replaced: out of every service, its entries stale."""
        for service in worker.services:
            service.members.discard(worker)
        worker.services = []
        worker.stamp = next(self._stamps)

    def touch(self, worker: Worker) -> None:
        """Its free slots or free resources may have changed: a current entry in each of its
        services, and the shapes parked there that it could now take are woken."""
        worker.stamp = stamp = next(self._stamps)
        room = worker.capacity()
        if room <= 0:
            return
        entry = (-room, worker.rank, stamp, worker)
        for service in worker.services:
            heap = service.heap
            heapq.heappush(heap, entry)
            if len(heap) > 2 * len(service.members) + COMPACT_SLACK:
                service.compact()
            if service.parked:
                for shape in [s for s in service.parked if worker.fits(s[2])]:
                    service.parked.discard(shape)
                    del self.parked_on[shape]
                    self.consider(shape)

    # -- shapes ---------------------------------------------------------------------------

    def pushed(self, task: Task) -> None:
        """A task joined its ready queue: its shape is considered unless it is parked (no
        task of a parked shape fits any worker until a worker changes)."""
        shape = task.shape
        if shape in self.parked_on:
            return
        key = (-task.priority, task.seq)
        queued = self._queued.get(shape)
        if queued is None or key < queued:
            self._queued[shape] = key
            heapq.heappush(self._heads, (key[0], key[1], shape))

    def consider(self, shape: Shape) -> None:
        """Consider the shape at the next ``match`` (by its current head)."""
        head = self.ready.head(shape)
        if head is None:
            self._queued.pop(shape, None)
            return
        key = (-head.priority, head.seq)
        if self._queued.get(shape) != key:
            self._queued[shape] = key
            heapq.heappush(self._heads, (key[0], key[1], shape))

    def consider_all(self, shapes: Iterable[Shape]) -> None:
        for shape in shapes:
            if shape not in self.parked_on:
                self.consider(shape)

    def pending(self) -> bool:
        """Whether some shape is to be considered."""
        return bool(self._heads)

    def service(self, key: ServiceKey) -> Service:
        """The service for this key, made (from the online workers) on first use."""
        service = self.services.get(key)
        if service is None:
            service = self.services[key] = Service(key)
            self._by_handler.setdefault(key[0], []).append(service)
            for worker in self.online.values():
                if provides(worker, key):
                    service.members.add(worker)
                    worker.services.append(service)
            service.compact()
        return service

    # -- matching -------------------------------------------------------------------------

    def match(self, lease: Callable[[Task, Worker], None]) -> int:
        """Lease ready tasks to the workers to run them, best task first (each taken out of
        its queue before ``lease`` is called); returns how many."""
        heads, queued, ready = self._heads, self._queued, self.ready
        leased = 0
        while heads:
            priority, seq, shape = heapq.heappop(heads)
            if queued.get(shape) != (priority, seq):
                continue  # superseded by a better head, or the shape was done with
            task = ready.head(shape)
            if task is None:
                del queued[shape]
                continue
            if task.seq != seq:  # the head it was queued by is gone (cancelled)
                queued[shape] = key = (-task.priority, task.seq)
                heapq.heappush(heads, (key[0], key[1], shape))
                continue
            service = self.service(service_of(shape))
            worker = service.pick(shape[2])
            if worker is None:
                # No worker of this shape has room now; lower tasks may still fit others.
                del queued[shape]
                service.parked.add(shape)
                self.parked_on[shape] = service
                continue
            ready.pop(shape)
            lease(task, worker)
            leased += 1
            following = ready.head(shape)
            if following is None:
                del queued[shape]
            else:
                queued[shape] = key = (-following.priority, following.seq)
                heapq.heappush(heads, (key[0], key[1], shape))
        return leased
