"""What each call of the client library asks the broker and makes of its answers, apart
from how the messages travel.

A call is a plan: a generator that yields the steps it needs and returns the call's value.
``Ask`` sends a request: the plan resumes with the reply's value, or with the reply's error
raised where it yielded. ``Expect`` waits for the outcome of a task the broker was asked
to send unasked, until a deadline. The synchronous client (``common.client``) and the
asyncio one (``common.aio``) run the same plans over their own sockets, so both have the
same calls with the same arguments, defaults, return values and errors; a new call is a
plan here and a line in each client. Nothing here touches a socket or waits.

The timeout rule of every call: a call that asks the broker something waits ``timeout``
(the client's when None) and raises ``Unavailable`` when no answer came; a call that waits
for tasks to finish waits up to its ``timeout`` (``MAX_WAIT`` when None) for them, plus
the client's for the answer, and raises ``TaskTimeout`` when a task is still unfinished.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from common.errors import SchedulerError
from common.inbox import Inbox
from common.limits import MAX_BATCH, MAX_WAIT, MAX_WAIT_IDS
from common.models import FINAL_STATUSES, TaskStatus
from common.ops import Op

if TYPE_CHECKING:
    from common.pipeline import Submitted

T = TypeVar("T")

#: Seconds ``result`` waits for the outcome of a task it watches before it asks for it:
#: an outcome the broker sent is lost when the connection breaks or the broker restarts.
OUTCOME_GRACE = 1.0


class TaskFailed(Exception):
    """``result`` was asked for the result of a task that did not complete."""

    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(f"task {task['id']} {task['status']}: {task.get('error') or ''}".strip())
        self.task = task


class TaskTimeout(TimeoutError):
    """A call that waits for tasks ran out of time with some still unfinished.

    ``tasks`` holds what there was when time ran out: the record of the task (``wait``),
    the brief records of the tasks that were final (``wait_many``), or the records of the
    submitted tasks (``run``)."""

    def __init__(self, message: str, tasks: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.tasks = tasks


# -- steps -------------------------------------------------------------------------------


@dataclass(slots=True)
class Ask:
    """Send a request; the plan resumes with its value or its error."""

    op: Op
    args: dict[str, Any]
    #: Seconds to wait for the answer (besides what the broker may hold it), None: the client's.
    timeout: float | None = None


@dataclass(slots=True)
class Expect:
    """Wait until the outcome of a watched task comes, or ``deadline`` (``time.monotonic``);
    the plan resumes with None and looks in the inbox."""

    task_id: str
    deadline: float


@dataclass(slots=True)
class Done(Generic[T]):
    """The plan returned: the call's value."""

    value: T


Step: TypeAlias = Ask | Expect
Plan: TypeAlias = Generator[Step, Any, T]


def resume(plan: Plan[T], value: Any = None, error: SchedulerError | None = None) -> Step | Done[T]:
    """The plan's next step, given the answer to the last one (``value``, or ``error`` raised
    in the plan), or ``Done`` with its value."""
    try:
        return plan.send(value) if error is None else plan.throw(error)
    except StopIteration as stop:
        return Done(stop.value)


# -- one request -------------------------------------------------------------------------


def record(op: Op, args: dict[str, Any], timeout: float | None) -> Plan[dict[str, Any]]:
    """One request whose answer is a record (a task's, a worker's, the broker's health)."""
    value: dict[str, Any] = yield Ask(op, args, timeout)
    return value


def get(task_id: str, timeout: float | None) -> Plan[dict[str, Any]]:
    return record(Op.GET, {"id": task_id}, timeout)


def cancel(task_id: str, timeout: float | None) -> Plan[dict[str, Any]]:
    return record(Op.CANCEL, {"id": task_id}, timeout)


def worker(worker_id: str, timeout: float | None) -> Plan[dict[str, Any]]:
    return record(Op.WORKER, {"id": worker_id}, timeout)


def health(timeout: float | None) -> Plan[dict[str, Any]]:
    return record(Op.HEALTH, {}, timeout)


def retry(inbox: Inbox, task_id: str, timeout: float | None) -> Plan[dict[str, Any]]:
    """Run a failed or cancelled task again; the outcomes kept of tasks that did not
    complete are forgotten (this retry may have made them, or its dependents, pending)."""
    value: dict[str, Any] = yield Ask(Op.RETRY, {"id": task_id}, timeout)
    inbox.drop_unsuccessful()
    return value


def purge(status: str, before: float | None, limit: int, timeout: float | None) -> Plan[int]:
    """Delete finished tasks of a status, a request of at most ``limit`` at a time until
    none is left; how many went."""
    args: dict[str, Any] = {"status": status, "limit": limit}
    if before is not None:
        args["before"] = before
    total = 0
    while True:
        value = yield Ask(Op.PURGE, args, timeout)
        total += int(value["purged"])
        if not value["more"]:
            return total


def drain_worker(worker_id: str, on: bool, timeout: float | None) -> Plan[dict[str, Any]]:
    return record(Op.DRAIN, {"id": worker_id, "on": on}, timeout)


def stats(timeout: float | None) -> Plan[dict[str, Any]]:
    return record(Op.STATS, {}, timeout)


def metrics(timeout: float | None) -> Plan[dict[str, Any]]:
    """The broker's counters, gauges and histograms (``docs/protocol.md``, ``metrics``)."""
    return record(Op.METRICS, {}, timeout)


def list_tasks(
    status: str | None, handler: str | None, limit: int, after: int | None, timeout: float | None
) -> Plan[tuple[list[dict[str, Any]], int | None]]:
    args: dict[str, Any] = {"limit": limit}
    if status is not None:
        args["status"] = status
    if handler is not None:
        args["handler"] = handler
    if after is not None:
        args["after"] = after
    value = yield Ask(Op.LIST, args, timeout)
    return value["tasks"], value["next"]


# -- submitting --------------------------------------------------------------------------


def submit_entries(
    inbox: Inbox,
    specs: list[dict[str, Any]],
    timeout: float | None,
    refuse_unservable: bool,
    notify: bool,
) -> Plan[list[dict[str, Any]]]:
    """``{id, status, created}`` of each task; more than ``MAX_BATCH`` specs go in messages
    of that many, each all or none: the error of a refused one holds the entries of those
    before it in ``submitted``."""
    args: dict[str, Any] = {}
    if refuse_unservable:
        args["refuse_unservable"] = True
    if notify:
        args["notify"] = True
    entries: list[dict[str, Any]] = []
    for start in range(0, max(len(specs), 1), MAX_BATCH):
        try:
            value = yield Ask(
                Op.SUBMIT, {"tasks": specs[start : start + MAX_BATCH], **args}, timeout
            )
        except SchedulerError as exc:
            exc.submitted = entries  # type: ignore[attr-defined]
            raise
        entries += value["tasks"]
    if notify:
        for entry in entries:
            inbox.watching(entry["id"])
    return entries


def submit_many(
    inbox: Inbox,
    specs: list[dict[str, Any]],
    timeout: float | None,
    refuse_unservable: bool,
    notify: bool,
) -> Plan[list[str]]:
    entries = yield from submit_entries(inbox, specs, timeout, refuse_unservable, notify)
    return [entry["id"] for entry in entries]


def submit(inbox: Inbox, spec: dict[str, Any], refuse_unservable: bool, watch: bool) -> Plan[str]:
    [task_id] = yield from submit_many(inbox, [spec], None, refuse_unservable, watch)
    return task_id


def submit_and_wait(specs: list[dict[str, Any]], wait: float) -> Plan[list[dict[str, Any]]]:
    value = yield Ask(Op.SUBMIT, {"tasks": specs, "wait": wait})
    records: list[dict[str, Any]] = value["tasks"]
    return records


def run(spec: dict[str, Any], wait: float | None) -> Plan[bytes]:
    limit = waiting(wait)
    [task] = yield from submit_and_wait([spec], limit)
    return result_of(task, limit)


# -- waiting -----------------------------------------------------------------------------


def wait(task_id: str | Submitted, timeout: float | None) -> Plan[dict[str, Any]]:
    task_id = id_of(task_id)
    limit = waiting(timeout)
    found: dict[str, Any] = yield Ask(Op.WAIT, {"id": task_id, "timeout": limit})
    if found["status"] not in FINAL_STATUSES:
        status = found["status"]
        raise TaskTimeout(f"task {task_id} still {status} after {limit:g} s", [found])
    return found


def wait_many(
    inbox: Inbox, task_ids: list[str], timeout: float | None
) -> Plan[list[dict[str, Any]]]:
    """Outcomes in the inbox are taken from it; the others are asked for, ``MAX_WAIT_IDS``
    a request, within the one ``timeout``."""
    limit = waiting(timeout)
    deadline = time.monotonic() + limit
    found: dict[str, dict[str, Any]] = {}
    asked: list[str] = []
    for task_id in dict.fromkeys(task_ids):  # each once, in order
        outcome = inbox.take(task_id)
        if outcome is not None:
            found[task_id] = outcome
        else:
            asked.append(task_id)
    for start in range(0, len(asked), MAX_WAIT_IDS):
        part = asked[start : start + MAX_WAIT_IDS]
        remaining = max(0.0, deadline - time.monotonic())
        value = yield Ask(Op.WAIT_MANY, {"ids": part, "timeout": remaining})
        for brief in value["tasks"]:
            found[brief["id"]] = brief
            inbox.answered(brief["id"])
    briefs = [found[task_id] for task_id in dict.fromkeys(task_ids) if task_id in found]
    unfinished = len(asked) - sum(1 for task_id in asked if task_id in found)
    if unfinished:
        raise TaskTimeout(f"{unfinished} tasks still unfinished after {limit:g} s", briefs)
    return briefs


def result(inbox: Inbox, task_id: str | Submitted, timeout: float | None) -> Plan[bytes]:
    """The outcome of a watched task comes unasked: it is waited for ``OUTCOME_GRACE`` at
    most, then asked for."""
    task_id = id_of(task_id)
    limit = waiting(timeout)
    deadline = time.monotonic() + limit
    outcome = inbox.take(task_id)
    if outcome is None and inbox.watches(task_id):
        yield Expect(task_id, min(deadline, time.monotonic() + OUTCOME_GRACE))
        outcome = inbox.take(task_id)
    if outcome is None:
        try:
            [outcome] = yield from wait_many(
                inbox, [task_id], max(0.0, deadline - time.monotonic())
            )
        except TaskTimeout:
            raise TaskTimeout(f"task {task_id} still unfinished after {limit:g} s", []) from None
    return result_of(outcome, limit)


# -- workers -----------------------------------------------------------------------------


def workers(timeout: float | None) -> Plan[list[dict[str, Any]]]:
    """Every worker's record, a page at a time (``timeout`` is for each page)."""
    found: list[dict[str, Any]] = []
    args: dict[str, Any] = {}
    while True:
        page = yield Ask(Op.WORKERS, args, timeout)
        found += page["workers"]
        if page["next"] is None:
            return found
        args = {"after": page["next"]}


# -- helpers -----------------------------------------------------------------------------


def result_of(task: dict[str, Any], waited: float) -> bytes:
    """A task's result, ``TaskFailed`` if it did not complete, ``TaskTimeout`` if unfinished."""
    if task["status"] == TaskStatus.COMPLETED:
        return bytes(task["result"] or b"")
    if task["status"] not in FINAL_STATUSES:
        raise TaskTimeout(f"task {task['id']} still {task['status']} after {waited:g} s", [task])
    raise TaskFailed(task)


def waiting(timeout: float | None) -> float:
    """How long a call that waits for tasks waits: ``timeout``, or ``MAX_WAIT``."""
    return MAX_WAIT if timeout is None else timeout


def id_of(task: str | Submitted) -> str:
    return task if isinstance(task, str) else task.id
