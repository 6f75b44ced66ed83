"""The operations a client asks of the broker (``REQUEST``) and their answers (``REPLY``).

Each op is a type with its decoder (``from_args``), which checks the arguments against
``common.limits`` and raises ``InvalidInput`` naming the field. The broker's socket loop
decodes each request once, as it arrives, and answers a refused one with a 400; the
client library sends the arguments it is given and decodes only the reply, checking
its arguments itself only when they cannot even be encoded (so that no bare encoding
error ever reaches a caller). ``docs/protocol.md`` lists every op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from common import fields
from common.errors import InvalidInput, SchedulerError
from common.limits import (
    DEFAULT_PAGE,
    DEFAULT_PURGE,
    MAX_BATCH,
    MAX_CAPABILITIES,
    MAX_CURSOR,
    MAX_ERROR_LENGTH,
    MAX_HTTP_WAIT,
    MAX_PAGE,
    MAX_PURGE,
    MAX_REQUEST_NUMBER,
    MAX_TIME,
    MAX_TRACEBACK_LENGTH,
    MAX_WAIT,
    MAX_WAIT_IDS,
)
from common.models import FINAL_STATUSES, TaskStatus
from common.spec import TaskSpec

# -- client -> broker: requests ------------------------------------------------------------


class Op(StrEnum):
    """The operations a ``REQUEST`` names."""

    SUBMIT = "submit"
    GET = "get"
    LIST = "list"
    CANCEL = "cancel"
    WAIT = "wait"
    WAIT_MANY = "wait_many"
    WORKERS = "workers"
    WORKER = "worker"
    HEALTH = "health"
    METRICS = "metrics"
    HTTP_REGISTER = "http_register"
    HTTP_NEXT = "http_next"
    HTTP_HEARTBEAT = "http_heartbeat"
    HTTP_COMPLETE = "http_complete"
    RETRY = "retry"
    PURGE = "purge"
    DRAIN = "drain"
    STATS = "stats"


def _wait(value: Any, where: str) -> float:
    """A wait in seconds; one longer than ``MAX_WAIT`` is cut to it (the answer comes then)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidInput(f"{where} must be a number of seconds >= 0")
    if value >= MAX_WAIT:
        if value == float("inf"):
            raise InvalidInput(f"{where} must be a finite number of seconds")
        return MAX_WAIT
    return float(value)


@dataclass(slots=True)
class Submit:
    """Add tasks, all or none; with ``wait``, answer once all are final or ``wait`` passes;
    with ``refuse_unservable``, refuse them (409) if no online worker could run one; with
    ``notify``, send each task's outcome to the submitter unasked once it is final; with
    ``separate``, each task on its own: one refused (its entry in the reply is
    ``{error}``) does not refuse the others (not with ``wait``)."""

    OP: ClassVar[Op] = Op.SUBMIT
    tasks: list[TaskSpec]
    wait: float | None = None
    refuse_unservable: bool = False
    notify: bool = False
    separate: bool = False

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"tasks": [spec.to_wire() for spec in self.tasks]}
        if self.wait is not None:
            args["wait"] = self.wait
        if self.refuse_unservable:
            args["refuse_unservable"] = True
        if self.notify:
            args["notify"] = True
        if self.separate:
            args["separate"] = True
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Submit:
        """Errors name the entry (``tasks[3].priority``) when there are several."""
        raw = args.get("tasks")
        if not isinstance(raw, list) or not raw:
            raise InvalidInput("tasks must be a non-empty list")
        if len(raw) > MAX_BATCH:
            raise InvalidInput(f"tasks has more than {MAX_BATCH} entries")
        prefix = len(raw) > 1
        specs = [
            TaskSpec.parse(spec, f"tasks[{i}]." if prefix else "") for i, spec in enumerate(raw)
        ]
        wait = args.get("wait")
        refuse = args.get("refuse_unservable", False)
        if not isinstance(refuse, bool):
            raise InvalidInput("refuse_unservable must be true or false")
        notify = args.get("notify", False)
        if not isinstance(notify, bool):
            raise InvalidInput("notify must be true or false")
        separate = args.get("separate", False)
        if not isinstance(separate, bool):
            raise InvalidInput("separate must be true or false")
        if separate and wait is not None:
            raise InvalidInput("separate cannot go with wait")
        return cls(specs, None if wait is None else _wait(wait, "wait"), refuse, notify, separate)


@dataclass(slots=True)
class Get:
    """One task's record."""

    OP: ClassVar[Op] = Op.GET
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Get:
        return cls(fields.identifier(args.get("id"), "id"))


def _page_limit(args: dict[str, Any], default: int) -> int:
    """The ``limit`` of a listing: 1 to ``MAX_PAGE`` items a page."""
    limit = args.get("limit", default)
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}")
    return limit


@dataclass(slots=True)
class ListTasks:
    """A page of tasks in submission order, after the cursor ``after``."""

    OP: ClassVar[Op] = Op.LIST
    status: TaskStatus | None = None
    handler: str | None = None
    limit: int = DEFAULT_PAGE
    after: int = 0

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"limit": self.limit}
        if self.status is not None:
            args["status"] = self.status.value
        if self.handler is not None:
            args["handler"] = self.handler
        if self.after:
            args["after"] = self.after
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ListTasks:
        status = args.get("status")
        if status is not None:
            try:
                status = TaskStatus(status)
            except ValueError:
                known = ", ".join(s.value for s in TaskStatus)
                raise InvalidInput(f"status must be one of {known}") from None
        handler = args.get("handler")
        limit = _page_limit(args, DEFAULT_PAGE)
        after = args.get("after", 0)
        if type(after) is not int or not 0 <= after <= MAX_CURSOR:
            raise InvalidInput("after must be a cursor from a previous page")
        return cls(
            status, None if handler is None else fields.text(handler, "handler"), limit, after
        )


@dataclass(slots=True)
class CancelTask:
    """Cancel a task: a pending one at once, a running one is told to stop."""

    OP: ClassVar[Op] = Op.CANCEL
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> CancelTask:
        return cls(fields.identifier(args.get("id"), "id"))


@dataclass(slots=True)
class Wait:
    """A task's record once it is final, or when ``timeout`` passes."""

    OP: ClassVar[Op] = Op.WAIT
    id: str
    timeout: float

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id, "timeout": self.timeout}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Wait:
        return cls(fields.identifier(args.get("id"), "id"), _wait(args.get("timeout"), "timeout"))


@dataclass(slots=True)
class WaitMany:
    """Brief records of tasks once all are final, or of those final when ``timeout`` passes."""

    OP: ClassVar[Op] = Op.WAIT_MANY
    ids: list[str]
    timeout: float

    def to_args(self) -> dict[str, Any]:
        return {"ids": self.ids, "timeout": self.timeout}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WaitMany:
        ids = args.get("ids")
        if not isinstance(ids, list) or len(ids) > MAX_WAIT_IDS:
            raise InvalidInput(f"ids must be a list of at most {MAX_WAIT_IDS} task ids")
        for i, task_id in enumerate(ids):
            fields.identifier(task_id, f"ids[{i}]")
        return cls(list(ids), _wait(args.get("timeout"), "timeout"))


@dataclass(slots=True)
class ListWorkers:
    """A page of workers' records in the order of their ids, after the id ``after``."""

    OP: ClassVar[Op] = Op.WORKERS
    limit: int = MAX_PAGE
    after: str = ""

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"limit": self.limit}
        if self.after:
            args["after"] = self.after
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ListWorkers:
        after = args.get("after")
        return cls(
            _page_limit(args, MAX_PAGE), "" if after is None else fields.identifier(after, "after")
        )


@dataclass(slots=True)
class GetWorker:
    """One worker's record."""

    OP: ClassVar[Op] = Op.WORKER
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GetWorker:
        return cls(fields.identifier(args.get("id"), "id"))


@dataclass(slots=True)
class Health:
    """The broker's counts and state."""

    OP: ClassVar[Op] = Op.HEALTH

    def to_args(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Health:
        return cls()


@dataclass(slots=True)
class Metrics:
    """The broker's counters, gauges and histograms, for ``GET /metrics``."""

    OP: ClassVar[Op] = Op.METRICS

    def to_args(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Metrics:
        return cls()


@dataclass(slots=True)
class HttpRegister:
    """Register (or register again) a worker that pulls tasks over HTTP."""

    OP: ClassVar[Op] = Op.HTTP_REGISTER
    id: str
    capabilities: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    #: Which of its capabilities are tags rather than handlers (shown apart).
    tags: list[str] = field(default_factory=list)

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id, "capabilities": self.capabilities, "resources": self.resources,
                "tags": self.tags}  # fmt: skip

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> HttpRegister:
        return cls(
            fields.identifier(args.get("id"), "id"),
            fields.names(args.get("capabilities"), "capabilities", MAX_CAPABILITIES),
            fields.resources(args.get("resources"), "resources"),
            fields.names(args.get("tags"), "tags", MAX_CAPABILITIES),
        )


@dataclass(slots=True)
class HttpNext:
    """Lease the next task to an HTTP worker, waiting up to ``wait`` seconds for one."""

    OP: ClassVar[Op] = Op.HTTP_NEXT
    id: str
    wait: float = 0.0

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id, "wait": self.wait}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> HttpNext:
        wait = args.get("wait")
        if wait is not None and (isinstance(wait, bool) or not isinstance(wait, int | float)):
            raise InvalidInput(f"wait must be a number of seconds from 0 to {MAX_HTTP_WAIT:g}")
        try:
            seconds = 0.0 if wait is None else fields.seconds(wait, "wait", MAX_HTTP_WAIT)
        except InvalidInput:
            raise InvalidInput(
                f"wait must be a number of seconds from 0 to {MAX_HTTP_WAIT:g}"
            ) from None
        return cls(fields.identifier(args.get("id"), "id"), seconds)


@dataclass(slots=True)
class HttpHeartbeat:
    """An HTTP worker is alive."""

    OP: ClassVar[Op] = Op.HTTP_HEARTBEAT
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> HttpHeartbeat:
        return cls(fields.identifier(args.get("id"), "id"))


@dataclass(slots=True)
class HttpComplete:
    """An HTTP worker reports how its run of a task ended."""

    OP: ClassVar[Op] = Op.HTTP_COMPLETE
    worker_id: str
    task_id: str
    status: TaskStatus
    result: bytes | None = None
    error: str | None = None
    traceback: str | None = None

    def to_args(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "task_id": self.task_id,
            "status": self.status.value,
            "result": self.result,
            "error": self.error,
            "traceback": self.traceback,
        }

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> HttpComplete:
        status = args.get("status")
        if status not in (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value):
            raise InvalidInput("status must be 'completed' or 'failed'")
        return cls(
            fields.identifier(args.get("worker_id"), "worker_id"),
            fields.identifier(args.get("task_id"), "task_id"),
            TaskStatus(status),
            fields.binary(args.get("result"), "result"),
            fields.optional_text(args.get("error"), "error", MAX_ERROR_LENGTH),
            fields.optional_text(args.get("traceback"), "traceback", MAX_TRACEBACK_LENGTH),
        )


@dataclass(slots=True)
class Retry:
    """Run a failed or cancelled task again (and its dependents that failed because of it)."""

    OP: ClassVar[Op] = Op.RETRY
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Retry:
        return cls(fields.identifier(args.get("id"), "id"))


#: The statuses a purge may name: the final ones, in a stable order for messages.
PURGEABLE = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass(slots=True)
class Purge:
    """Delete up to ``limit`` finished tasks of ``status`` that completed before ``before``
    (seconds since the epoch; any time when None)."""

    OP: ClassVar[Op] = Op.PURGE
    status: TaskStatus
    before: float | None = None
    limit: int = DEFAULT_PURGE

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"status": self.status.value, "limit": self.limit}
        if self.before is not None:
            args["before"] = self.before
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Purge:
        status = args.get("status")
        if status not in PURGEABLE:  # a StrEnum's tuple: str members
            known = ", ".join(s.value for s in PURGEABLE)
            raise InvalidInput(f"status must be one of {known}")
        before = args.get("before")
        if before is not None and (
            isinstance(before, bool)
            or not isinstance(before, int | float)
            or not 0 <= before <= MAX_TIME
        ):
            raise InvalidInput(
                f"before must be a time in seconds since the epoch, 0 to {MAX_TIME:g}"
            )
        limit = args.get("limit", DEFAULT_PURGE)
        if type(limit) is not int or not 1 <= limit <= MAX_PURGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PURGE}")
        return cls(TaskStatus(status), None if before is None else float(before), limit)


@dataclass(slots=True)
class Drain:
    """Drain a worker (``on``: no new task; its runs finish), or resume it (``on`` false)."""

    OP: ClassVar[Op] = Op.DRAIN
    id: str
    on: bool = True

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id, "on": self.on}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Drain:
        on = args.get("on", True)
        if not isinstance(on, bool):
            raise InvalidInput("on must be true or false")
        return cls(fields.identifier(args.get("id"), "id"), on)


@dataclass(slots=True)
class Stats:
    """Counts of tasks, workers and throughput, for a dashboard."""

    OP: ClassVar[Op] = Op.STATS

    def to_args(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Stats:
        return cls()


Request: TypeAlias = (
    Submit
    | Get
    | ListTasks
    | CancelTask
    | Wait
    | WaitMany
    | ListWorkers
    | GetWorker
    | Health
    | Metrics
    | HttpRegister
    | HttpNext
    | HttpHeartbeat
    | HttpComplete
    | Retry
    | Purge
    | Drain
    | Stats
)

#: The decoder of each op's arguments.
_DECODERS: dict[str, Callable[[dict[str, Any]], Request]] = {
    cls.OP.value: cls.from_args
    for cls in (
        Submit,
        Get,
        ListTasks,
        CancelTask,
        Wait,
        WaitMany,
        ListWorkers,
        GetWorker,
        Health,
        Metrics,
        HttpRegister,
        HttpNext,
        HttpHeartbeat,
        HttpComplete,
        Retry,
        Purge,
        Drain,
        Stats,
    )
}


#: The argument of each op that says how long the broker may hold its answer.
_HOLDS = {Op.SUBMIT: "wait", Op.WAIT: "timeout", Op.WAIT_MANY: "timeout", Op.HTTP_NEXT: "wait"}


def holds(op: Op, args: dict[str, Any]) -> float:
    """How long the broker may hold the answer to these arguments, in seconds (a caller waits
    that long on top of the usual time for an answer); 0 for a value it would refuse.

    As ``_wait`` does, a finite wait beyond ``MAX_WAIT``, however large, holds ``MAX_WAIT``
    (compared, never converted: an integer beyond a float's range is no error here)."""
    key = _HOLDS.get(op)
    value = args.get(key) if key is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        return 0.0
    return MAX_WAIT if value >= MAX_WAIT else float(value)


def request_number(body: dict[str, Any]) -> int | None:
    """A ``REQUEST``'s number, or None if it has no readable one (nothing can answer it)."""
    req = body.get("req")
    if type(req) is not int or not 0 <= req <= MAX_REQUEST_NUMBER:
        return None
    return req


def decode_request(body: dict[str, Any]) -> Request:
    """The typed request of a ``REQUEST`` body, or ``InvalidInput`` naming what is wrong."""
    return decode_args(body.get("op"), body.get("args"))


def decode_args(op: Any, args: Any) -> Request:
    """The typed request of an op and its arguments, or ``InvalidInput`` naming what is wrong."""
    decoder = _DECODERS.get(op) if isinstance(op, str) else None
    if decoder is None:
        shown = op[:64] if isinstance(op, str) else op
        raise InvalidInput(f"unknown op {shown!r}")
    if not isinstance(args, dict):
        raise InvalidInput("args must be a map")
    return decoder(args)


def encode_request(req: int, op: Op, args: dict[str, Any]) -> dict[str, Any]:
    """The body of a ``REQUEST``."""
    return {"req": req, "op": op.value, "args": args}


# -- broker -> client ----------------------------------------------------------------------


@dataclass(slots=True)
class ErrorInfo:
    """Why a request failed: an HTTP status code, a short title and what was wrong."""

    status: int
    title: str
    description: str

    def to_body(self) -> dict[str, Any]:
        return {"status": self.status, "title": self.title, "description": self.description}

    @classmethod
    def decode(cls, error: Any) -> ErrorInfo:
        """An error as a peer sent it; what is not readable reads as a 500."""
        if not isinstance(error, dict):
            return cls(500, "Internal error", "the reply held no error")
        status = error.get("status")
        title = error.get("title")
        description = error.get("description")
        return cls(
            status if type(status) is int and 100 <= status <= 599 else 500,
            title if isinstance(title, str) else "Internal error",
            description if isinstance(description, str) else "",
        )

    @classmethod
    def of(cls, exc: SchedulerError) -> ErrorInfo:
        """The error to answer with for an exception raised (``exception``'s inverse)."""
        return cls(exc.status, exc.title, exc.description)

    def exception(self) -> SchedulerError:
        """The error to raise for it: the ``SchedulerError`` of its status."""
        return SchedulerError.of(self.status, self.title, self.description)


@dataclass(slots=True)
class Reply:
    """``REPLY``: the answer to request ``req``: a value, or an error."""

    req: int
    value: Any = None
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_body(self) -> dict[str, Any]:
        if self.error is None:
            return {"req": self.req, "ok": True, "value": self.value}
        return {"req": self.req, "ok": False, "error": self.error.to_body()}

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Reply:
        req = request_number(body)
        if req is None:
            raise InvalidInput("req must be a request number")
        ok = body.get("ok")
        if ok is True:
            return cls(req, body.get("value"))
        if ok is not False:
            raise InvalidInput("ok must be a boolean")
        return cls(req, error=ErrorInfo.decode(body.get("error")))


@dataclass(slots=True)
class Outcomes:
    """``OUTCOME``: brief records ``{id, status, result, error}`` of final tasks that the
    client watches (a submit with ``notify``), sent unasked once they are committed."""

    tasks: list[dict[str, Any]]

    def to_body(self) -> dict[str, Any]:
        return {"tasks": self.tasks}

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Outcomes:
        """Entries that are not brief records of final tasks are left out."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise InvalidInput("tasks must be a list")
        return cls(
            [
                entry
                for entry in tasks
                if isinstance(entry, dict)
                and isinstance(entry.get("id"), str)
                and entry.get("status") in FINAL_STATUSES  # a StrEnum's set: str members
            ]
        )
