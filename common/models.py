"""Named states shared by the broker, the API and the client library.

The enum values are the strings the REST API shows.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    #: Waiting: for its dependencies, for a retry back-off, or for a free worker slot.
    PENDING = "pending"
    #: Leased to a worker that is running it.
    RUNNING = "running"
    #: Finished successfully; ``result`` holds the handler's output.
    COMPLETED = "completed"
    #: Finished unsuccessfully after its retries; ``error`` says why.
    FAILED = "failed"
    #: Cancelled by a client before it finished.
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class LeaseOutcome(StrEnum):
    """How one run (a lease) of a task ended, as its record in ``leases`` shows."""

    #: The worker reported the handler's result.
    COMPLETED = "completed"
    #: The worker reported an error or a timeout of its own.
    FAILED = "failed"
    #: A client cancelled the task while it ran (the worker is told to stop).
    CANCELLED = "cancelled"
    #: The broker's time limit (timeout + grace) passed without a report.
    EXPIRED = "expired"
    #: The worker went silent, or no worker claimed the lease after a broker restart.
    LOST = "lost"
    #: The worker gave the run back: it shut down, or stopped the run unasked.
    RELEASED = "released"


class WorkerStatus(StrEnum):
    #: Answering pings (ZeroMQ workers) or sending heartbeats (HTTP workers).
    ONLINE = "online"
    #: Silent for longer than its liveness window; its tasks were requeued.
    OFFLINE = "offline"


class WorkerKind(StrEnum):
    #: A ``zmq-worker`` process: tasks are pushed to it over a DEALER socket.
    ZMQ = "zmq"
    #: A program that pulls tasks over the REST API.
    HTTP = "http"


#: Resource kinds a worker can declare and a task can ask for.
RESOURCE_KINDS = ("cpu", "memory", "disk")
