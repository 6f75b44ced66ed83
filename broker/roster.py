"""The worker roster: every worker that registered, the online ones, and their liveness.

A ZeroMQ worker is online from its READY until it says BYE or falls silent for
``worker_window`` seconds (any message is a sign of life; the broker pings each online
worker every ``ping_interval``). An HTTP worker is online from its registration or any
request of its own until it is silent for ``http_liveness`` seconds, an open long-poll
counting as presence. Offline workers stay listed (``GET /workers``), across restarts of
the broker (the store keeps them), until they have been offline for the worker retention
(``--worker-retention``).

Invariants, which ``broker.invariants`` checks:

- ``online`` holds exactly the workers whose status is online;
- ``by_address`` maps each online ZeroMQ worker's socket address to it, and nothing else;
- an offline worker holds no leases, no free resources taken, and no open polls.

What going offline does to a worker's tasks is the core's business (``broker.core``):
the roster only says who is silent and whom to ping.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from broker.queue import Shape
from broker.state import Worker
from common.models import WorkerKind, WorkerStatus

#: Marker: servability of a shape not worked out since the roster last changed.
_UNKNOWN = object()


class Roster:
    """Workers by id and by socket address, and which are online."""

    def __init__(self, ping_interval: float, worker_window: float, http_liveness: float) -> None:
        self.ping_interval = ping_interval
        self.worker_window = worker_window
        self.http_liveness = http_liveness
        self.workers: dict[str, Worker] = {}
        #: The online ones: every loop turn walks these, and offline workers stay listed
        #: (for ``GET /workers``) however many come and go.
        self.online: dict[str, Worker] = {}
        self.by_address: dict[bytes, Worker] = {}
        #: Shape -> why no online worker can run it (None: one can), until the roster changes.
        self._unserved: dict[Shape, object] = {}
        #: Counts the changes of who is online or what they serve.
        self.generation = 0

    def get(self, worker_id: str) -> Worker | None:
        return self.workers.get(worker_id)

    def at(self, address: bytes) -> Worker | None:
        """The online worker registered from this socket, if any."""
        worker = self.by_address.get(address)
        if worker is None or worker.status is not WorkerStatus.ONLINE:
            return None
        return worker

    def put(self, worker: Worker) -> None:
        """Add a ZeroMQ worker, or replace the registration of its id (the old socket is
        forgotten); it is online from now."""
        old = self.workers.get(worker.id)
        if old is not None and old.address is not None:
            self.by_address.pop(old.address, None)
        self.workers[worker.id] = worker
        if worker.address is not None:
            self.by_address[worker.address] = worker
        self.go_online(worker)

    def add_offline(self, worker: Worker) -> None:
        """List a worker known from before a restart: offline until it speaks."""
        worker.status = WorkerStatus.OFFLINE
        self.workers[worker.id] = worker

    def forget_offline(self, before: float, limit: int) -> list[Worker]:
        """Forget up to ``limit`` of the workers offline and last seen before this time;
        returns them."""
        if len(self.workers) == len(self.online):
            return []
        gone = list(
            itertools.islice(
                (
                    worker
                    for worker in self.workers.values()
                    if worker.status is not WorkerStatus.ONLINE and worker.last_seen < before
                ),
                limit,
            )
        )
        for worker in gone:
            del self.workers[worker.id]
        return gone

    def go_online(self, worker: Worker) -> None:
        worker.status = WorkerStatus.ONLINE
        self.online[worker.id] = worker
        self.changed()

    def changed(self) -> None:
        """Who is online, or what one serves, changed: servability is worked out again."""
        self._unserved.clear()
        self.generation += 1

    def why_unserved(self, shape: Shape) -> str | None:
        """Why no online worker could run a task of this shape even with all its slots free
        (no worker serves the handler, has a tag, declares enough of a resource), or None."""
        reason = self._unserved.get(shape, _UNKNOWN)
        if reason is _UNKNOWN:
            taking = (worker for worker in self.online.values() if not worker.draining)
            reason = self._unserved[shape] = unserved(shape, taking)
        assert reason is None or isinstance(reason, str)
        return reason

    def go_offline(self, worker: Worker) -> None:
        """Mark it offline; its leases and polls are the caller's to end first or after."""
        worker.status = WorkerStatus.OFFLINE
        if self.online.get(worker.id) is worker:
            del self.online[worker.id]
            self.changed()
        if worker.address is not None and self.by_address.get(worker.address) is worker:
            del self.by_address[worker.address]

    def count_online(self) -> int:
        return len(self.online)

    def check(self, now: float) -> tuple[list[Worker], list[bytes]]:
        """The workers silent past their window (to be declared offline) and the addresses
        of the ZeroMQ workers to ping now."""
        silent: list[Worker] = []
        pings: list[bytes] = []
        for worker in self.online.values():
            if worker.polls:
                continue  # an HTTP worker waiting on a long-poll is there: we hold its request
            window = self.worker_window if worker.kind is WorkerKind.ZMQ else self.http_liveness
            if now - worker.last_seen > window:
                silent.append(worker)
            elif worker.address is not None and now - worker.last_ping >= self.ping_interval:
                worker.last_ping = now
                pings.append(worker.address)
        return silent, pings


def unserved(shape: Shape, workers: Iterable[Worker]) -> str | None:
    """Why none of these workers could run a task of this shape, or None if one could."""
    handler, requires, resources = shape
    able = [worker for worker in workers if handler in worker.capabilities]
    if not able:
        return f"no online worker serves handler {handler!r}"
    for tag in requires:
        able = [worker for worker in able if tag in worker.capabilities]
        if not able:
            return f"no online worker serving {handler!r} has tag {tag!r}"
    for kind, amount in resources:
        able = [worker for worker in able if worker.resources.get(kind, 0.0) >= amount]
        if not able:
            return f"no online worker serving {handler!r} offers {amount:g} {kind}"
    return None
