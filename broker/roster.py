"""The worker roster: every worker that registered, the online ones, and their liveness.

A ZeroMQ worker is online from its READY until it says BYE or falls silent for
``worker_window`` seconds (any message is a sign of life; the broker pings each online
worker every ``ping_interval``). An HTTP worker is online from its registration or any
request of its own until it is silent for ``http_liveness`` seconds, an open long-poll
counting as presence. Offline workers stay listed (``GET /workers``) until a restart.

Invariants, which ``broker.invariants`` checks:

- ``online`` holds exactly the workers whose status is online;
- ``by_address`` maps each online ZeroMQ worker's socket address to it, and nothing else;
- an offline worker holds no leases, no free resources taken, and no open polls.

What going offline does to a worker's tasks is the core's business (``broker.core``):
the roster only says who is silent and whom to ping.
"""

from __future__ import annotations

from broker.state import Worker
from common.models import WorkerKind, WorkerStatus


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

    def go_online(self, worker: Worker) -> None:
        worker.status = WorkerStatus.ONLINE
        self.online[worker.id] = worker

    def go_offline(self, worker: Worker) -> None:
        """Mark it offline; its leases and polls are the caller's to end first or after."""
        worker.status = WorkerStatus.OFFLINE
        if self.online.get(worker.id) is worker:
            del self.online[worker.id]
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
