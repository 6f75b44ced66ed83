"""The broker's plain data: tasks and workers, and their wire records.

Nothing here decides anything; ``broker.core`` does. Objects use ``__slots__``
because the broker holds one ``Task`` per task it knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from common.models import LeaseOutcome, TaskStatus, WorkerKind, WorkerStatus

#: Resources of a task, as a hashable, sorted tuple of (kind, amount).
ResourceKey = tuple[tuple[str, float], ...]


@dataclass(slots=True, eq=False)
class Lease:
    """One run of a task: who ran it, when, and how it ended."""

    #: The task's attempt number when it was leased: the fencing token.
    attempt: int
    worker_id: str
    started_at: float
    ended_at: float | None = None
    #: How it ended; None while it runs.
    outcome: LeaseOutcome | None = None
    error: str | None = None
    #: An outcome the worker reported after the lease had ended: refused, shown for the record.
    refused: TaskStatus | None = None
    #: Where the handler raised, when the run failed that way.
    traceback: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": None if self.outcome is None else self.outcome.value,
            "error": self.error,
            "refused": None if self.refused is None else self.refused.value,
            "traceback": self.traceback,
        }

    def to_row(self) -> list[Any]:
        """The lease as stored: seven fields, and its traceback as an eighth if it has one."""
        row = [self.attempt, self.worker_id, self.started_at, self.ended_at, self.outcome,
               self.error, self.refused]  # fmt: skip
        if self.traceback is not None:
            row.append(self.traceback)
        return row

    @classmethod
    def from_row(cls, row: list[Any]) -> Lease:
        # Stores written before tracebacks were kept have seven fields a lease.
        attempt, worker_id, started_at, ended_at, outcome, error, refused = row[:7]
        return cls(
            attempt,
            worker_id,
            started_at,
            ended_at,
            None if outcome is None else LeaseOutcome(outcome),
            error,
            None if refused is None else TaskStatus(refused),
            row[7] if len(row) > 7 else None,
        )


#: Bytes a task's record takes on the wire besides its variable-length fields, about.
RECORD_BYTES = 400
#: Bytes a lease's record takes besides its error and traceback, about.
LEASE_BYTES = 150
#: Bytes a worker's record takes besides its capabilities and runs, about.
WORKER_RECORD_BYTES = 300


@dataclass(slots=True, eq=False)
class Task:
    """One task and everything the broker knows about it."""

    id: str
    #: Submission order, unique and increasing: the FIFO tie-break and the list cursor.
    seq: int
    name: str
    handler: str
    args: bytes
    dependencies: list[str]
    priority: int
    max_retries: int
    timeout: float | None
    requires: tuple[str, ...]
    resources: ResourceKey
    created_at: float
    status: TaskStatus = TaskStatus.PENDING
    worker_id: str | None = None
    #: Runs started so far; the current lease's fencing token.
    attempts: int = 0
    #: Failed runs (handler error or timeout), counted against ``max_retries``.
    failures: int = 0
    #: Runs lost with their worker, counted against ``MAX_LOST``.
    lost: int = 0
    result: bytes | None = None
    error: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    #: Earliest time of the next run (retry back-off).
    not_before: float = 0.0
    #: Client-chosen key: a second submit with the same key returns this task.
    idempotency_key: str | None = None
    #: Every run so far, oldest first.
    leases: list[Lease] = field(default_factory=list)
    #: Dependencies not completed yet (derived at load; not stored).
    waiting_on: int = 0
    #: Whether the task sits in a ready queue (derived; not stored).
    queued: bool = False
    #: Whether the store holds a row for it yet (its spec is written once, then only its state).
    stored: bool = False

    def size(self) -> int:
        """About how many bytes its record takes on the wire: its variable-length fields,
        and a fixed allowance for the rest."""
        size = RECORD_BYTES + len(self.args) + len(self.name) + len(self.error or "")
        size += len(self.result or b"") + 40 * len(self.dependencies)
        for lease in self.leases:
            size += LEASE_BYTES + len(lease.error or "") + len(lease.traceback or "")
        return size

    @property
    def shape(self) -> tuple[str, tuple[str, ...], ResourceKey]:
        """What a worker must offer to run this task: the ready queue it waits in."""
        return (self.handler, self.requires, self.resources)

    def record(self) -> dict[str, Any]:
        """The task as the protocol shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "handler": self.handler,
            "args": self.args,
            "dependencies": self.dependencies,
            "priority": self.priority,
            "status": self.status.value,
            "worker_id": self.worker_id,
            "attempts": self.attempts,
            "result": self.result,
            "error": self.error,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "requires": list(self.requires),
            "resources": dict(self.resources),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "idempotency_key": self.idempotency_key,
            "leases": [lease.record() for lease in self.leases],
            "traceback": self.traceback(),
            # Why a pending task waits: the core fills it in (``Lifecycle.show``).
            "waiting_for": None,
        }

    def traceback(self) -> str | None:
        """Where the run whose failure is the task's error raised (None when the error is
        not a run's: a lease expired, a dependency failed, the task was cancelled)."""
        if self.leases and self.status in (TaskStatus.FAILED, TaskStatus.PENDING):
            last = self.leases[-1]
            if last.outcome is LeaseOutcome.FAILED and last.error == self.error:
                return last.traceback
        return None

    def current_lease(self) -> Lease | None:
        """The lease of the current attempt, if it is still open."""
        if self.leases and self.leases[-1].attempt == self.attempts:
            lease = self.leases[-1]
            return lease if lease.outcome is None else None
        return None


@dataclass(slots=True, eq=False)
class Worker:
    """A registered worker: a ``zmq-worker`` process or an HTTP worker."""

    id: str
    kind: WorkerKind
    capabilities: frozenset[str]
    resources: dict[str, float]
    #: Task slots (ZeroMQ workers); HTTP workers take one task per poll.
    slots: int
    last_seen: float
    #: ROUTER identity of the worker's socket (ZeroMQ workers only).
    address: bytes | None = None
    host: str = ""
    pid: int = 0
    status: WorkerStatus = WorkerStatus.ONLINE
    #: Leases held: task id -> attempt. Includes cancelled runs not yet reported.
    running: dict[str, int] = field(default_factory=dict)
    #: Resources not taken by running tasks.
    free: dict[str, float] = field(default_factory=dict)
    last_ping: float = 0.0
    #: Nothing new is dispatched to it: it said it is stopping (``stopping``), or an admin
    #: drained it (``drained``); derived from those two, and not stored.
    draining: bool = False
    #: It said it is stopping (DRAIN): draining until it is gone, whatever an admin says.
    #: Ends with the process, so it is not stored.
    stopping: bool = False
    #: An admin drained it (``Scheduler.drain_worker``): stored, so that it stays draining
    #: when it registers again, after a restart of the broker too, until an admin resumes
    #: it; a worker so drained is never forgotten (``Roster.forget_offline``).
    drained: bool = False
    #: Open long-polls of an HTTP worker, oldest first: token -> deadline.
    polls: dict[object, float] = field(default_factory=dict)
    #: Which capabilities are tags, not handlers: a task's handler and its ``requires`` are
    #: both matched against all of ``capabilities``; these are only shown apart.
    tags: frozenset[str] = frozenset()
    #: Which registration this is, of any worker's since the broker started (0: read from
    #: the store): a store rewrites a worker whole only when it changes, and otherwise
    #: only when it was last seen.
    registration: int = 0
    #: The session token of its READY (ZeroMQ workers): another connection's READY for this
    #: id is a reconnect of the same process only with the same token.
    session: bytes = b""
    #: It follows the interval each PING carries (its READY said so): the broker may then
    #: lengthen its pings as the cluster grows (``broker.roster``).
    adaptive_ping: bool = False
    #: It takes ACKs carried by a DISPATCH (its READY said so): the socket loop may hold
    #: its ACKs while it is busy, until the next DISPATCH takes them.
    acks_in_dispatch: bool = False
    #: Seconds between its pings, as the last PING (or its WELCOME) told it.
    interval: float = 0.0
    #: Which watch of the roster's its liveness timer belongs to (a timer of an earlier
    #: watch is stale).
    watch: int = 0
    #: Its place in roster order (the order it came online): the tie-break of ``pick``.
    rank: int = 0
    #: Bumped at every change of its free slots or resources: an entry of the matcher's
    #: with another stamp is stale (``broker.dispatch``).
    stamp: int = 0
    #: The matcher's services it is a member of (derived; not stored).
    services: list[Any] = field(default_factory=list)

    def size(self) -> int:
        """About how many bytes its record takes on the wire."""
        return (
            WORKER_RECORD_BYTES
            + sum(len(c) + 3 for c in self.capabilities)
            + 40 * len(self.running)
        )

    #: What a store keeps of a worker: the rest is derived, or lives only while it is online.
    STORED: ClassVar[tuple[str, ...]] = (
        "id", "kind", "capabilities", "resources", "slots", "host", "pid", "last_seen", "tags",
        "drained",
    )  # fmt: skip

    def capacity(self) -> int:
        """How many more tasks it can take now."""
        if self.status is not WorkerStatus.ONLINE or self.draining:
            return 0
        if self.kind is WorkerKind.HTTP:
            return len(self.polls)
        return self.slots - len(self.running)

    def serves(self, shape: tuple[str, tuple[str, ...], ResourceKey]) -> bool:
        """Whether it has the handler, every required tag and the declared resources."""
        handler, requires, resources = shape
        if handler not in self.capabilities:
            return False
        if any(tag not in self.capabilities for tag in requires):
            return False
        return all(self.resources.get(kind, 0.0) >= amount for kind, amount in resources)

    def fits(self, resources: ResourceKey) -> bool:
        """Whether its free resources cover these now."""
        return all(self.free.get(kind, 0.0) >= amount for kind, amount in resources)

    def take(self, resources: ResourceKey) -> None:
        for kind, amount in resources:
            self.free[kind] = self.free.get(kind, 0.0) - amount

    def give_back(self, resources: ResourceKey) -> None:
        for kind, amount in resources:
            self.free[kind] = min(self.resources.get(kind, 0.0), self.free.get(kind, 0.0) + amount)

    def record(self) -> dict[str, Any]:
        """The worker as the protocol shows it."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "status": self.status.value,
            "capabilities": sorted(self.capabilities),
            "handlers": sorted(self.capabilities - self.tags),
            "tags": sorted(self.tags),
            "resources": dict(self.resources),
            "slots": self.slots if self.kind is WorkerKind.ZMQ else None,
            "running": sorted(self.running),
            "last_seen": self.last_seen,
            "host": self.host,
            "pid": self.pid,
            "draining": self.draining,
        }
