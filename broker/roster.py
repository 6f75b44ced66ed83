"""The worker roster: every worker that registered, the online ones, and their liveness.

A ZeroMQ worker is online from its READY until it says BYE or falls silent for its window,
``liveness`` times its ping interval (any message is a sign of life). The broker pings it
every interval, unless it heard from it within the last one (a busy worker is not pinged):
``ping_interval`` (1 s) while at most ``ping_rate`` ZeroMQ workers are
online, and longer beyond, ``workers / ping_rate`` seconds, so that all pings together
stay near ``ping_rate`` a second however large the cluster (``interval_for``;
``detection_time`` is the window for a cluster's size). Only a worker whose READY said
``adaptive_ping`` gets a longer interval: each PING tells it the interval until the
next, and it takes that for its own watch of the broker; any other keeps the interval
its WELCOME said. An HTTP worker is online from its registration or any request of its
own until it is silent for ``http_liveness`` seconds, an open long-poll counting as
presence. Offline workers stay listed (``GET /workers``), across restarts of the broker
(the store keeps them), until they have been offline for the worker retention
(``--worker-retention``).

Liveness walks no list of workers: each online worker has one timer in the core's heap
(``TimerKind.LIVENESS``) for its next ping or, if that comes first, the end of its
window; ``due`` handles one when it fires and sets the next. Pings are set on a grid of
``SLOT`` seconds, so one loop turn sends the pings of a slot together, and each worker's
first ping comes at a phase of its own within the interval, so a thousand workers
that register at once are not pinged at once ever after.

Invariants, which ``broker.invariants`` checks:

- ``online`` holds exactly the workers whose status is online;
- ``by_address`` maps each online ZeroMQ worker's socket address to it, and nothing else;
- an offline worker holds no leases, no free resources taken, and no open polls;
- every online worker has a liveness timer of its current watch.

What going offline does to a worker's tasks is the core's business (``broker.core``):
the roster only says who is silent and whom to ping.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Iterable

from broker.queue import Shape
from broker.state import Worker
from broker.timers import TimerKind, Timers
from common.models import WorkerKind, WorkerStatus

#: Pings a second to all ZeroMQ workers together, by default (``--ping-rate``).
DEFAULT_PING_RATE = 1000.0
#: Seconds of the grid pings are set on: the pings of one slot go out in one loop turn.
SLOT = 0.1
#: Seconds past the end of a window at which a silent worker is checked: it is offline
#: once silent for longer than its window, never at the window's very end.
AFTER = 0.001
#: The fractional part of the golden ratio: successive watches get phases spread evenly.
_PHASE = 0.6180339887498949


class Verdict(enum.Enum):
    """What a liveness timer found."""

    #: The timer is stale, or nothing is due yet (the next one is set).
    NOTHING = "nothing"
    #: Ping the worker now (the next timer is set).
    PING = "ping"
    #: The worker was silent for its whole window: it is to be declared offline.
    SILENT = "silent"


def interval_for(workers: int, ping_interval: float, ping_rate: float) -> float:
    """Seconds between two pings of an adaptive worker among ``workers`` ZeroMQ workers."""
    return max(ping_interval, workers / ping_rate)


def detection_time(
    workers: int,
    ping_interval: float = 1.0,
    liveness: int = 3,
    ping_rate: float = DEFAULT_PING_RATE,
) -> float:
    """Seconds from a worker's last sign of life to its being declared offline, among
    ``workers`` ZeroMQ workers (the loop may add up to ``SLOT``)."""
    return liveness * interval_for(workers, ping_interval, ping_rate)


def _slot(when: float) -> float:
    """The first point of the grid at or after ``when``."""
    return math.ceil(when / SLOT - 1e-9) * SLOT


#: Marker: servability of a shape not worked out since the roster last changed.
_UNKNOWN = object()


class Roster:
    """Workers by id and by socket address, and which are online."""

    def __init__(
        self,
        ping_interval: float,
        liveness: int,
        http_liveness: float,
        timers: Timers,
        ping_rate: float = DEFAULT_PING_RATE,
    ) -> None:
        self.ping_interval = ping_interval
        self.liveness = liveness
        self.http_liveness = http_liveness
        self.ping_rate = ping_rate
        self.timers = timers
        self.workers: dict[str, Worker] = {}
        #: The online ones: every loop turn walks these, and offline workers stay listed
        #: (for ``GET /workers``) however many come and go.
        self.online: dict[str, Worker] = {}
        self.by_address: dict[bytes, Worker] = {}
        #: Shape -> why no online worker can run it (None: one can), until the roster changes.
        self._unserved: dict[Shape, object] = {}
        #: Counts the changes of who is online or what they serve.
        self.generation = 0
        self._watches = itertools.count(1)
        self._ranks = itertools.count(1)

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
        """List a worker known from before a restart: offline until it speaks, and
        draining if an admin drained it (what it said of stopping ended with the broker)."""
        worker.status = WorkerStatus.OFFLINE
        worker.stopping = False
        worker.draining = worker.drained
        self.workers[worker.id] = worker

    def forget_offline(self, before: float, limit: int) -> list[Worker]:
        """Forget up to ``limit`` of the workers offline and last seen before this time,
        but none an admin drained (its drain is kept until it is resumed); returns them."""
        if len(self.workers) == len(self.online):
            return []
        gone = list(
            itertools.islice(
                (
                    worker
                    for worker in self.workers.values()
                    if worker.status is not WorkerStatus.ONLINE
                    and worker.last_seen < before
                    and not worker.drained
                ),
                limit,
            )
        )
        for worker in gone:
            del self.workers[worker.id]
        return gone

    def go_online(self, worker: Worker) -> None:
        """Mark it online (a new registration takes the place in roster order of the one it
        replaces) and watch its liveness from its ``last_seen``."""
        current = self.online.get(worker.id)
        if current is None:
            worker.rank = next(self._ranks)
        elif current is not worker:
            worker.rank = current.rank
        worker.status = WorkerStatus.ONLINE
        self.online[worker.id] = worker
        if current is not worker:
            self._watch(worker)
        self.changed()

    # -- liveness -------------------------------------------------------------------------

    def interval_of(self, worker: Worker) -> float:
        """The ping interval a worker gets now: longer as the cluster grows, if it follows."""
        if not worker.adaptive_ping:
            return self.ping_interval
        return interval_for(len(self.by_address), self.ping_interval, self.ping_rate)

    def window_of(self, worker: Worker) -> float:
        """Seconds of silence after which the worker is offline."""
        if worker.kind is WorkerKind.HTTP:
            return self.http_liveness
        return worker.interval * self.liveness

    def _watch(self, worker: Worker) -> None:
        """Start a new watch of the worker (timers of earlier ones are stale): its first
        ping at a phase of its own within the interval, counted from its ``last_seen``."""
        worker.watch = watch = next(self._watches)
        start = worker.last_seen
        if worker.kind is WorkerKind.HTTP:
            self.timers.add(start + self.http_liveness + AFTER, TimerKind.LIVENESS, worker, watch)
            return
        if not worker.interval:
            worker.interval = self.interval_of(worker)
        first = start + worker.interval * ((watch * _PHASE) % 1.0)
        worker.last_ping = first - worker.interval  # as if pinged one interval before that
        self.timers.add(_slot(first), TimerKind.LIVENESS, worker, watch)

    def due(self, worker: Worker, watch: int, now: float) -> Verdict:
        """A liveness timer of this worker fired: whether it is silent, or to be pinged now;
        sets the next timer (unless it is silent or the timer stale)."""
        if worker.watch != watch or self.online.get(worker.id) is not worker:
            return Verdict.NOTHING
        if worker.kind is WorkerKind.HTTP:
            if worker.polls:
                # We hold its request: it is there. Its poll's end counts as a sign of life.
                when = now + self.http_liveness + AFTER
            elif now - worker.last_seen > self.http_liveness:
                return Verdict.SILENT
            else:
                when = worker.last_seen + self.http_liveness + AFTER
            self.timers.add(when, TimerKind.LIVENESS, worker, watch)
            return Verdict.NOTHING
        if now - worker.last_seen > worker.interval * self.liveness:
            return Verdict.SILENT
        verdict = Verdict.NOTHING
        if now + 1e-9 >= worker.last_ping + worker.interval:
            if now - worker.last_seen < worker.interval:
                # Heard from within an interval (a busy worker reports all the time, and
                # hears ACKs and DISPATCHes back): not pinged this time, at its own phase
                # still. Its interval changes only with a ping, which tells it.
                worker.last_ping += worker.interval
            else:
                worker.interval = self.interval_of(worker)
                worker.last_ping = now
                verdict = Verdict.PING
        deadline = worker.last_seen + worker.interval * self.liveness + AFTER
        self.timers.add(
            min(_slot(worker.last_ping + worker.interval), deadline),
            TimerKind.LIVENESS, worker, watch,
        )  # fmt: skip
        return verdict

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
            reason = unserved(shape, taking)
            if reason is not None:
                draining = [w for w in self.online.values() if w.draining]
                if draining and unserved(shape, draining) is None:
                    # Some could, but take no new task: say so, not that none serves it.
                    reason = f"{reason}, but for {len(draining)} draining"
            self._unserved[shape] = reason
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
