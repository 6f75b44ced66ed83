"""The body of every message between a worker and the broker, as a type.

A body is decoded once, where it arrives (the broker's socket loop, the worker's agent),
into one of these; past that edge nothing looks at raw maps. A decoder raises
``InvalidInput`` naming the field for anything outside the protocol or
``common.limits``: the broker then drops the message (``READY``, ``DONE``) without acting
on any of it, and counts it. Encoders (``to_body``) give the map that travels;
``common.protocol`` packs it. ``docs/protocol.md`` has a table for each. The requests of
clients have their own module, ``common.ops``.

A map's unknown keys are ignored, so fields can be added without a new version. The
types are plain (not frozen) dataclasses: they are made once per message on the hot
path, where a frozen one costs four times as much to build, and nothing changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from common import fields
from common.errors import InvalidInput
from common.limits import (
    ID_PATTERN,
    MAX_ATTEMPT,
    MAX_CAPABILITIES,
    MAX_ERROR_LENGTH,
    MAX_HOST_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PID,
    MAX_SESSION,
    MAX_SLOTS,
    MAX_TIMEOUT,
    MAX_TRACEBACK_LENGTH,
)
from common.models import FINAL_STATUSES, TaskStatus


class RunKey(NamedTuple):
    """One run of a task: the task and its attempt number, the run's fencing token."""

    task_id: str
    attempt: int

    @classmethod
    def decode(cls, task_id: Any, attempt: Any, where: str) -> RunKey:
        # Every DISPATCH, DONE and ACK entry comes through here: the usual case is checked
        # in one expression, and only a value that fails it is looked at field by field.
        run = _usual_run(task_id, attempt)
        if run is not None:
            return run
        return cls(
            fields.identifier(task_id, f"{where}.task_id"),
            fields.integer(attempt, f"{where}.attempt", 1, MAX_ATTEMPT),
        )


def _usual_run(task_id: Any, attempt: Any) -> RunKey | None:
    """The run these fields name if they are valid as they come: the decoders' one-pass
    check of the usual entry (None: each field is then checked alone, and named)."""
    return RunKey(task_id, attempt) if _usual_fields(task_id, attempt) else None


def _usual_fields(task_id: Any, attempt: Any) -> bool:
    """Whether a run's fields are valid as they come (``_usual_run``)."""
    return (
        type(task_id) is str
        and type(attempt) is int
        and 0 < attempt <= MAX_ATTEMPT
        and ID_PATTERN.fullmatch(task_id) is not None
    )


# -- worker -> broker ------------------------------------------------------------------


@dataclass(slots=True)
class Ready:
    """``READY``: a worker registers, or registers again holding these runs."""

    id: str
    slots: int
    capabilities: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    running: list[RunKey] = field(default_factory=list)
    host: str = ""
    pid: int = 0
    #: Which of its capabilities are tags (``zmq-worker --capabilities``), not handlers.
    tags: list[str] = field(default_factory=list)
    #: Random bytes the worker process drew once and sends with every READY: the broker
    #: takes a READY from a new connection for a reconnect of the same process, rather
    #: than another posing as it, by this (empty: none, only the same connection is).
    session: bytes = b""
    #: It takes the interval each PING carries for its own (``Ping``): the broker may then
    #: lengthen its pings as the cluster grows. A worker that does not say so is pinged
    #: every interval its WELCOME said.
    adaptive_ping: bool = False
    #: It takes acknowledgements carried by a ``DISPATCH`` (``Dispatch.acks``): the broker
    #: may then hold a busy worker's ACKs until its next DISPATCH rather than send them
    #: alone.
    acks_in_dispatch: bool = False

    def to_body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "slots": self.slots,
            "capabilities": self.capabilities,
            "resources": self.resources,
            "running": [{"task_id": r.task_id, "attempt": r.attempt} for r in self.running],
            "host": self.host,
            "pid": self.pid,
            "tags": self.tags,
            "session": self.session,
            "adaptive_ping": self.adaptive_ping,
            "acks_in_dispatch": self.acks_in_dispatch,
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
            tags=fields.names(body.get("tags"), "tags", MAX_CAPABILITIES),
            session=_session(body.get("session")),
            adaptive_ping=_flag(body.get("adaptive_ping"), "adaptive_ping"),
            acks_in_dispatch=_flag(body.get("acks_in_dispatch"), "acks_in_dispatch"),
        )


def _flag(value: Any, name: str) -> bool:
    """An optional boolean (absent: false)."""
    if value is None:
        return False
    if type(value) is not bool:
        raise InvalidInput(f"{name} must be a boolean")
    return value


def _session(value: Any) -> bytes:
    session = fields.binary(value, "session") or b""
    if len(session) > MAX_SESSION:
        raise InvalidInput(f"session must be at most {MAX_SESSION} bytes")
    return session


#: Statuses a worker may report for a run.
REPORTED = FINAL_STATUSES


@dataclass(slots=True)
class RunOutcome:
    """How one run ended, as a worker reports it (an entry of ``DONE``)."""

    run: RunKey
    status: TaskStatus
    result: bytes | None = None
    error: str | None = None
    #: Where a failed run's handler raised (its end, at most ``MAX_TRACEBACK_LENGTH``).
    traceback: str | None = None

    def within(self, max_payload: int) -> RunOutcome:
        """This outcome, or, if its result is over ``max_payload`` bytes (the broker's
        ``--max-payload``), a failed run saying so: what the broker records of it, and what
        a worker that knows the limit reports."""
        if self.result is None or len(self.result) <= max_payload:
            return self
        error = f"its result is {len(self.result)} bytes, more than --max-payload ({max_payload})"
        return RunOutcome(self.run, TaskStatus.FAILED, error=error)

    def to_body(self) -> dict[str, Any]:
        run = self.run
        return RunOutcome.entry(
            run.task_id, run.attempt, self.status, self.result, self.error, self.traceback
        )

    @staticmethod
    def entry(
        task_id: str,
        attempt: int,
        status: TaskStatus,
        result: bytes | None,
        error: str | None,
        traceback: str | None = None,
    ) -> dict[str, Any]:
        """The ``DONE`` entry of such an outcome, made without one (a worker's every run)."""
        body = {
            "task_id": task_id,
            "attempt": attempt,
            "status": status.value,
            "result": result,
            "error": error,
        }
        if traceback is not None:
            body["traceback"] = traceback
        return body

    @classmethod
    def decode(cls, entry: Any, index: int) -> RunOutcome:
        """Entry ``index`` of a ``DONE``'s results."""
        if type(entry) is dict:  # the usual case, in one pass (as RunKey.decode)
            task_id, attempt = entry.get("task_id"), entry.get("attempt")
            status_value = entry.get("status")
            # Only a string is looked up: a list or a map is no key of a dict (it would raise).
            status = _REPORTED_BY_VALUE.get(status_value) if type(status_value) is str else None
            result, error = entry.get("result"), entry.get("error")
            traceback = entry.get("traceback")
            if (
                status is not None
                and traceback is None
                and (result is None or type(result) is bytes)
                and (error is None or (type(error) is str and len(error) <= MAX_ERROR_LENGTH))
                and (error is None or fields.is_utf8(error))
                and (run := _usual_run(task_id, attempt)) is not None
            ):
                return cls(run, status, result, error)
        where = f"results[{index}]"
        entry = fields.mapping(entry, where)
        status_value = entry.get("status")
        if type(status_value) is not str or status_value not in _REPORTED_BY_VALUE:
            raise InvalidInput(f"{where}.status must be one of completed, failed, cancelled")
        return cls(
            RunKey.decode(entry.get("task_id"), entry.get("attempt"), where),
            TaskStatus(status_value),
            fields.binary(entry.get("result"), f"{where}.result"),
            fields.optional_text(entry.get("error"), f"{where}.error", MAX_ERROR_LENGTH),
            fields.optional_text(
                entry.get("traceback"), f"{where}.traceback", MAX_TRACEBACK_LENGTH
            ),
        )


_REPORTED_BY_VALUE = {status.value: status for status in REPORTED}


@dataclass(slots=True)
class Done:
    """``DONE``: outcomes of runs, acknowledged by ``ACK`` once committed."""

    results: list[RunOutcome]

    def to_body(self) -> dict[str, Any]:
        return Done.body([outcome.to_body() for outcome in self.results])

    @staticmethod
    def body(entries: list[dict[str, Any]]) -> dict[str, Any]:
        """The body of a ``DONE`` of these entries (``RunOutcome.entry``)."""
        return {"results": entries}

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Done:
        results = body.get("results")
        if not isinstance(results, list):
            raise InvalidInput("results must be a list")
        return cls([RunOutcome.decode(entry, i) for i, entry in enumerate(results)])


# -- broker -> worker ------------------------------------------------------------------


@dataclass(slots=True)
class Welcome:
    """``WELCOME``: the registration is accepted; the broker's liveness timing."""

    worker_id: str
    ping_interval: float
    liveness: int
    #: Largest result the broker takes, in bytes (0: not said, by a broker older than it).
    max_payload: int = 0

    def to_body(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "ping_interval": self.ping_interval,
            "liveness": self.liveness,
            "max_payload": self.max_payload,
        }

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Welcome:
        max_payload = body.get("max_payload")
        return cls(
            fields.identifier(body.get("worker_id"), "worker_id"),
            fields.number(body.get("ping_interval"), "ping_interval", 0.0, 3600.0, above=True),
            fields.integer(body.get("liveness"), "liveness", 1, 1000),
            0 if max_payload is None else fields.integer(max_payload, "max_payload", 0, 2**62),
        )


@dataclass(slots=True)
class Ping:
    """``PING``: a liveness probe, answered with ``PONG``; says the seconds until the next
    one, which a worker that follows (``Ready.adaptive_ping``) takes as its interval."""

    #: Seconds until the next PING (None: not said, by a broker older than it).
    ping_interval: float | None = None

    def to_body(self) -> dict[str, Any]:
        return {} if self.ping_interval is None else {"ping_interval": self.ping_interval}

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Ping:
        interval = body.get("ping_interval")
        if interval is None:
            return cls()
        return cls(fields.number(interval, "ping_interval", 0.0, 3600.0, above=True))


@dataclass(slots=True)
class Assignment:
    """One run to start (an entry of ``DISPATCH``)."""

    task_id: str
    attempt: int
    handler: str
    args: bytes
    timeout: float | None

    @property
    def run(self) -> RunKey:
        return RunKey(self.task_id, self.attempt)

    def to_body(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "attempt": self.attempt,
            "handler": self.handler,
            "args": self.args,
            "timeout": self.timeout,
        }


class Unreadable(NamedTuple):
    """A ``DISPATCH`` entry whose run is readable but whose other fields are not."""

    run: RunKey
    problem: str

    @property
    def task_id(self) -> str:
        return self.run.task_id

    @property
    def attempt(self) -> int:
        return self.run.attempt


@dataclass(slots=True)
class Dispatch:
    """``DISPATCH``: runs to start, one a lease; and to a worker whose READY said
    ``acks_in_dispatch``, outcomes committed (as an ``ACK`` would say)."""

    tasks: list[Assignment]
    acks: list[RunKey] = field(default_factory=list)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"tasks": [assignment.to_body() for assignment in self.tasks]}
        if self.acks:
            body["results"] = Ack(self.acks).to_body()["results"]
        return body

    @staticmethod
    def acks_of(body: dict[str, Any]) -> list[RunKey]:
        """The outcomes it acknowledges (``Ack``'s ``results``), if it carries any."""
        if body.get("results") is None:
            return []
        return Ack.decode(body).runs

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
            if type(entry) is dict:  # the usual case, in one pass (as RunOutcome.decode)
                task_id: Any = entry.get("task_id")
                attempt: Any = entry.get("attempt")
                handler, args = entry.get("handler"), entry.get("args")
                if (
                    entry.get("timeout") is None
                    and type(args) is bytes
                    and type(handler) is str
                    and 0 < len(handler) <= MAX_NAME_LENGTH
                    and handler.isascii()
                    and _usual_fields(task_id, attempt)
                ):
                    out.append(Assignment(task_id, attempt, handler, args, None))
                    continue
            where = f"tasks[{i}]"
            entry = fields.mapping(entry, where)
            run = RunKey.decode(entry.get("task_id"), entry.get("attempt"), where)
            try:
                timeout = entry.get("timeout")
                out.append(
                    Assignment(
                        run.task_id,
                        run.attempt,
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


@dataclass(slots=True)
class CancelRuns:
    """``CANCEL``: stop the runs of these tasks."""

    task_ids: list[str]

    def to_body(self) -> dict[str, Any]:
        return {"task_ids": self.task_ids}

    @classmethod
    def decode(cls, body: dict[str, Any]) -> CancelRuns:
        return cls(fields.identifiers(body.get("task_ids"), "task_ids", MAX_SLOTS * 2))


@dataclass(slots=True)
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
            usual = _usual_run(*item) if type(item) is list and len(item) == 2 else None
            if usual is not None:  # the usual case, in one pass
                runs.append(usual)
                continue
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise InvalidInput(f"results[{i}] must be a [task_id, attempt] pair")
            runs.append(RunKey.decode(item[0], item[1], f"results[{i}]"))
        return cls(runs)
