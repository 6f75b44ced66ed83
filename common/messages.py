"""Every message body of ZS1 as a type: what each command and each request op carries.

A body is decoded once, where it arrives (the broker's socket loop, the worker's agent,
the client library), into one of these; past that edge nothing looks at raw maps. A
decoder raises ``InvalidInput`` naming the field for anything outside the protocol or
``common.limits``: the broker answers a request with it (400) and drops a one-way message
(``READY``, ``DONE``) without acting on it. Encoders (``to_body``, ``to_args``) give the
map that travels; ``common.protocol`` packs it. ``docs/protocol.md`` has a table for each.

A map's unknown keys are ignored (fields can be added without a new version), except in
a task spec, where a misspelt field must not pass unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple, TypeAlias

from common import fields
from common.errors import InvalidInput
from common.limits import (
    DEFAULT_PAGE,
    MAX_ATTEMPT,
    MAX_BATCH,
    MAX_CAPABILITIES,
    MAX_CURSOR,
    MAX_ERROR_LENGTH,
    MAX_HOST_LENGTH,
    MAX_HTTP_WAIT,
    MAX_PAGE,
    MAX_PID,
    MAX_REQUEST_NUMBER,
    MAX_SLOTS,
    MAX_TIMEOUT,
    MAX_WAIT,
    MAX_WAIT_IDS,
)
from common.models import FINAL_STATUSES, TaskStatus
from common.spec import TaskSpec


class RunKey(NamedTuple):
    """One run of a task: the task and its attempt number, the run's fencing token."""

    task_id: str
    attempt: int

    @classmethod
    def decode(cls, task_id: Any, attempt: Any, where: str) -> RunKey:
        return cls(
            fields.identifier(task_id, f"{where}.task_id"),
            fields.integer(attempt, f"{where}.attempt", 1, MAX_ATTEMPT),
        )


# -- worker -> broker ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """``READY``: a worker registers, or registers again holding these runs."""

    id: str
    slots: int
    capabilities: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    running: list[RunKey] = field(default_factory=list)
    host: str = ""
    pid: int = 0

    def to_body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "slots": self.slots,
            "capabilities": self.capabilities,
            "resources": self.resources,
            "running": [{"task_id": r.task_id, "attempt": r.attempt} for r in self.running],
            "host": self.host,
            "pid": self.pid,
        }

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Ready:
        claims = body.get("running")
        if claims is None:
            claims = []
        elif not isinstance(claims, list):
            raise InvalidInput("running must be a list")
        if len(claims) > MAX_SLOTS:
            raise InvalidInput(f"running has more than {MAX_SLOTS} entries")
        running = []
        for i, claim in enumerate(claims):
            claim = fields.mapping(claim, f"running[{i}]")
            running.append(
                RunKey.decode(claim.get("task_id"), claim.get("attempt"), f"running[{i}]")
            )
        host = body.get("host")
        pid = body.get("pid")
        return cls(
            id=fields.identifier(body.get("id"), "id"),
            slots=fields.integer(body.get("slots"), "slots", 1, MAX_SLOTS),
            capabilities=fields.names(body.get("capabilities"), "capabilities", MAX_CAPABILITIES),
            resources=fields.resources(body.get("resources"), "resources"),
            running=running,
            host="" if host is None else fields.text(host, "host", MAX_HOST_LENGTH, empty=True),
            pid=0 if pid is None else fields.integer(pid, "pid", 0, MAX_PID),
        )


#: Statuses a worker may report for a run.
REPORTED = FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How one run ended, as a worker reports it (an entry of ``DONE``)."""

    run: RunKey
    status: TaskStatus
    result: bytes | None = None
    error: str | None = None

    def to_body(self) -> dict[str, Any]:
        return {
            "task_id": self.run.task_id,
            "attempt": self.run.attempt,
            "status": self.status.value,
            "result": self.result,
            "error": self.error,
        }

    @classmethod
    def decode(cls, entry: Any, where: str) -> RunOutcome:
        entry = fields.mapping(entry, where)
        status = entry.get("status")
        if status not in _REPORTED_VALUES:
            raise InvalidInput(f"{where}.status must be one of completed, failed, cancelled")
        return cls(
            RunKey.decode(entry.get("task_id"), entry.get("attempt"), where),
            TaskStatus(status),
            fields.binary(entry.get("result"), f"{where}.result"),
            fields.optional_text(entry.get("error"), f"{where}.error", MAX_ERROR_LENGTH),
        )


_REPORTED_VALUES = frozenset(status.value for status in REPORTED)


@dataclass(frozen=True, slots=True)
class Done:
    """``DONE``: outcomes of runs, acknowledged by ``ACK`` once committed."""

    results: list[RunOutcome]

    def to_body(self) -> dict[str, Any]:
        return {"results": [outcome.to_body() for outcome in self.results]}

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Done:
        results = body.get("results")
        if not isinstance(results, list):
            raise InvalidInput("results must be a list")
        return cls([RunOutcome.decode(entry, f"results[{i}]") for i, entry in enumerate(results)])


# -- broker -> worker ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """``WELCOME``: the registration is accepted; the broker's liveness timing."""

    worker_id: str
    ping_interval: float
    liveness: int

    def to_body(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "ping_interval": self.ping_interval,
            "liveness": self.liveness,
        }

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Welcome:
        return cls(
            fields.identifier(body.get("worker_id"), "worker_id"),
            fields.number(body.get("ping_interval"), "ping_interval", 0.0, 3600.0, above=True),
            fields.integer(body.get("liveness"), "liveness", 1, 1000),
        )


@dataclass(frozen=True, slots=True)
class Assignment:
    """One run to start (an entry of ``DISPATCH``)."""

    run: RunKey
    handler: str
    args: bytes
    timeout: float | None

    def to_body(self) -> dict[str, Any]:
        return {
            "task_id": self.run.task_id,
            "attempt": self.run.attempt,
            "handler": self.handler,
            "args": self.args,
            "timeout": self.timeout,
        }


class Unreadable(NamedTuple):
    """A ``DISPATCH`` entry whose run is readable but whose other fields are not."""

    run: RunKey
    problem: str


@dataclass(frozen=True, slots=True)
class Dispatch:
    """``DISPATCH``: runs to start, one a lease."""

    tasks: list[Assignment]

    def to_body(self) -> dict[str, Any]:
        return {"tasks": [assignment.to_body() for assignment in self.tasks]}

    @staticmethod
    def decode(body: dict[str, Any]) -> list[Assignment | Unreadable]:
        """The entries, each checked alone: a worker reports a bad one as a failed run
        rather than let its lease wait for the broker's time limit. An entry whose run
        cannot even be read raises."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise InvalidInput("tasks must be a list")
        out: list[Assignment | Unreadable] = []
        for i, entry in enumerate(tasks):
            where = f"tasks[{i}]"
            entry = fields.mapping(entry, where)
            run = RunKey.decode(entry.get("task_id"), entry.get("attempt"), where)
            try:
                timeout = entry.get("timeout")
                out.append(
                    Assignment(
                        run,
                        fields.text(entry.get("handler"), f"{where}.handler"),
                        fields.binary(entry.get("args"), f"{where}.args") or b"",
                        None
                        if timeout is None
                        else fields.number(
                            timeout, f"{where}.timeout", 0.0, MAX_TIMEOUT, above=True
                        ),
                    )
                )
            except InvalidInput as exc:
                out.append(Unreadable(run, f"malformed DISPATCH: {exc.description}"))
        return out


@dataclass(frozen=True, slots=True)
class CancelRuns:
    """``CANCEL``: stop the runs of these tasks."""

    task_ids: list[str]

    def to_body(self) -> dict[str, Any]:
        return {"task_ids": self.task_ids}

    @classmethod
    def decode(cls, body: dict[str, Any]) -> CancelRuns:
        return cls(fields.identifiers(body.get("task_ids"), "task_ids", MAX_SLOTS * 2))


@dataclass(frozen=True, slots=True)
class Ack:
    """``ACK``: these outcomes are committed; the worker may forget them."""

    runs: list[RunKey]

    def to_body(self) -> dict[str, Any]:
        return {"results": [[run.task_id, run.attempt] for run in self.runs]}

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Ack:
        results = body.get("results")
        if not isinstance(results, list):
            raise InvalidInput("results must be a list")
        runs = []
        for i, item in enumerate(results):
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise InvalidInput(f"results[{i}] must be a [task_id, attempt] pair")
            runs.append(RunKey.decode(item[0], item[1], f"results[{i}]"))
        return cls(runs)


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
    HTTP_REGISTER = "http_register"
    HTTP_NEXT = "http_next"
    HTTP_HEARTBEAT = "http_heartbeat"
    HTTP_COMPLETE = "http_complete"


def _wait(value: Any, where: str) -> float:
    """A wait in seconds; one longer than ``MAX_WAIT`` is cut to it (the answer comes then)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidInput(f"{where} must be a number of seconds >= 0")
    if value >= MAX_WAIT:
        if value == float("inf"):
            raise InvalidInput(f"{where} must be a finite number of seconds")
        return MAX_WAIT
    return float(value)


@dataclass(frozen=True, slots=True)
class Submit:
    """Add tasks, all or none; with ``wait``, answer once all are final or ``wait`` passes."""

    OP: ClassVar[Op] = Op.SUBMIT
    tasks: list[TaskSpec]
    wait: float | None = None

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"tasks": [spec.to_wire() for spec in self.tasks]}
        if self.wait is not None:
            args["wait"] = self.wait
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any], *, batch: bool | None = None) -> Submit:
        """``batch``: whether errors name the entry (``tasks[0].priority``); by default,
        when there is more than one."""
        raw = args.get("tasks")
        if not isinstance(raw, list) or not raw:
            raise InvalidInput("tasks must be a non-empty list")
        if len(raw) > MAX_BATCH:
            raise InvalidInput(f"tasks has more than {MAX_BATCH} entries")
        prefix = len(raw) > 1 if batch is None else batch
        specs = [
            TaskSpec.parse(spec, f"tasks[{i}]." if prefix else "") for i, spec in enumerate(raw)
        ]
        wait = args.get("wait")
        return cls(specs, None if wait is None else _wait(wait, "wait"))


@dataclass(frozen=True, slots=True)
class Get:
    """One task's record."""

    OP: ClassVar[Op] = Op.GET
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Get:
        return cls(fields.identifier(args.get("id"), "id"))


@dataclass(frozen=True, slots=True)
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
        limit = args.get("limit", DEFAULT_PAGE)
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}")
        after = args.get("after", 0)
        if type(after) is not int or not 0 <= after <= MAX_CURSOR:
            raise InvalidInput("after must be a cursor from a previous page")
        return cls(
            status, None if handler is None else fields.text(handler, "handler"), limit, after
        )


@dataclass(frozen=True, slots=True)
class CancelTask:
    """Cancel a task: a pending one at once, a running one is told to stop."""

    OP: ClassVar[Op] = Op.CANCEL
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> CancelTask:
        return cls(fields.identifier(args.get("id"), "id"))


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class ListWorkers:
    """Every worker's record."""

    OP: ClassVar[Op] = Op.WORKERS

    def to_args(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ListWorkers:
        return cls()


@dataclass(frozen=True, slots=True)
class GetWorker:
    """One worker's record."""

    OP: ClassVar[Op] = Op.WORKER
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GetWorker:
        return cls(fields.identifier(args.get("id"), "id"))


@dataclass(frozen=True, slots=True)
class Health:
    """The broker's counts and state."""

    OP: ClassVar[Op] = Op.HEALTH

    def to_args(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Health:
        return cls()


@dataclass(frozen=True, slots=True)
class HttpRegister:
    """Register (or register again) a worker that pulls tasks over HTTP."""

    OP: ClassVar[Op] = Op.HTTP_REGISTER
    id: str
    capabilities: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id, "capabilities": self.capabilities, "resources": self.resources}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> HttpRegister:
        return cls(
            fields.identifier(args.get("id"), "id"),
            fields.names(args.get("capabilities"), "capabilities", MAX_CAPABILITIES),
            fields.resources(args.get("resources"), "resources"),
        )


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class HttpHeartbeat:
    """An HTTP worker is alive."""

    OP: ClassVar[Op] = Op.HTTP_HEARTBEAT
    id: str

    def to_args(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> HttpHeartbeat:
        return cls(fields.identifier(args.get("id"), "id"))


@dataclass(frozen=True, slots=True)
class HttpComplete:
    """An HTTP worker reports how its run of a task ended."""

    OP: ClassVar[Op] = Op.HTTP_COMPLETE
    worker_id: str
    task_id: str
    status: TaskStatus
    result: bytes | None = None
    error: str | None = None

    def to_args(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "task_id": self.task_id,
            "status": self.status.value,
            "result": self.result,
            "error": self.error,
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
        )


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
    | HttpRegister
    | HttpNext
    | HttpHeartbeat
    | HttpComplete
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
        HttpRegister,
        HttpNext,
        HttpHeartbeat,
        HttpComplete,
    )
}


def holds(request: Request) -> float:
    """How long the broker may hold this request's answer, in seconds (a caller waits that
    long on top of the usual time for an answer)."""
    if isinstance(request, Submit):
        return request.wait or 0.0
    if isinstance(request, Wait | WaitMany):
        return request.timeout
    if isinstance(request, HttpNext):
        return request.wait
    return 0.0


def request_number(body: dict[str, Any]) -> int | None:
    """A ``REQUEST``'s number, or None if it has no readable one (nothing can answer it)."""
    req = body.get("req")
    if type(req) is not int or not 0 <= req <= MAX_REQUEST_NUMBER:
        return None
    return req


def decode_request(body: dict[str, Any]) -> Request:
    """The typed request of a ``REQUEST`` body, or ``InvalidInput`` naming what is wrong."""
    op = body.get("op")
    decoder = _DECODERS.get(op) if isinstance(op, str) else None
    if decoder is None:
        shown = op[:64] if isinstance(op, str) else op
        raise InvalidInput(f"unknown op {shown!r}")
    args = body.get("args")
    if not isinstance(args, dict):
        raise InvalidInput("args must be a map")
    return decoder(args)


def encode_request(req: int, request: Request) -> dict[str, Any]:
    """The body of a ``REQUEST``."""
    return {"req": req, "op": request.OP.value, "args": request.to_args()}


# -- broker -> client ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a request failed: an HTTP status code, a short title and what was wrong."""

    status: int
    title: str
    description: str

    def to_body(self) -> dict[str, Any]:
        return {"status": self.status, "title": self.title, "description": self.description}


@dataclass(frozen=True, slots=True)
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
        error = body.get("error")
        if not isinstance(error, dict):
            return cls(req, error=ErrorInfo(500, "Internal error", "the reply held no error"))
        status = error.get("status")
        title = error.get("title")
        description = error.get("description")
        return cls(
            req,
            error=ErrorInfo(
                status if type(status) is int and 100 <= status <= 599 else 500,
                title if isinstance(title, str) else "Internal error",
                description if isinstance(description, str) else "",
            ),
        )


def run_keys(pairs: Iterable[tuple[str, int]]) -> list[RunKey]:
    """``RunKey``s of (task_id, attempt) pairs."""
    return [RunKey(task_id, attempt) for task_id, attempt in pairs]
