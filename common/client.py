"""The Python client library: talk to the broker over ZeroMQ, without HTTP.

A ``Client`` owns one DEALER socket and is not thread-safe: use one per thread
(the REST API keeps one per thread). ``Client()`` reaches the broker the settings name
(``ZMQS_BROKER``, and ``ZMQS_CURVE_SERVER_KEY`` / ``ZMQS_CURVE_SECRET`` for a CURVE one),
``common.settings``; arguments win.

One timeout rule: every call takes ``timeout``, the most it waits, and raises when it
runs out. Calls that ask the broker something wait ``timeout`` (the client's, by
default: ``ZMQS_REQUEST_TIMEOUT``) and raise ``Unavailable`` when no answer came (its
``sent`` says whether the request left, and so may still take effect). Calls that wait
for tasks to finish (``wait``, ``wait_many``, ``result``, ``run``) wait up to ``timeout``
for the tasks (``MAX_WAIT``, 300 s, by default), plus the client's for the answer, and
raise ``TaskTimeout`` (a ``TimeoutError``, holding what there was) when a task is still
unfinished. Errors the broker reports come back as the matching ``SchedulerError``
(``InvalidInput``, ``NotFound``, ``Conflict``, ``TooLarge``): a bad argument is
``InvalidInput`` naming the field, whether the broker refused it or it could not even be
encoded (then nothing leaves).

Two ways to submit:

- ``submit`` returns once the broker has stored the task (durable with ``--sync full``):
  one round trip a task.
- ``pipeline()`` keeps many submits in flight on the socket, coalesced into batches, and
  checks every acknowledgement: a ``Submitted`` handle's ``id`` raises the error of a
  refused submit, and ``flush()`` (or the ``with`` block's end) raises ``SubmitsFailed``
  for any refusal not seen yet. A task is durable once its ``id`` is known.

Outcomes come to the client: the broker sends the outcome of each task submitted here
once it is final (``watch``, on by default), so ``result()`` of a finished task costs no
round trip. A client keeps the outcomes it was sent and not asked for yet up to
``MAX_OUTCOMES`` (and ``MAX_OUTCOME_BYTES`` of results), oldest dropped first; one that
was dropped, or never came (a restarted broker), is asked for.

    with Client("tcp://127.0.0.1:5555") as client:
        task_id = client.submit("fibonacci", b'{"n": 10}')
        print(client.result(task_id, timeout=10))
        print(client.run("fibonacci", b'{"n": 10}', timeout=10))  # submit + result, one round trip
        with client.pipeline() as pipe:
            handles = [pipe.submit("echo", str(i).encode()) for i in range(10_000)]
        results = [handle.result() for handle in handles]
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, cast

import zmq

from common import endpoints, ops, protocol, settings
from common.curve import ClientKeys
from common.errors import InvalidInput, SchedulerError, Unavailable
from common.limits import DEFAULT_PAGE, DEFAULT_PURGE, MAX_BATCH, MAX_WAIT, MAX_WAIT_IDS
from common.models import FINAL_STATUSES, TaskStatus
from common.ops import Op
from common.transport import send_frames

if TYPE_CHECKING:
    from common.pipeline import Pipeline, Submitted

#: Seconds a call waits for the broker when no timeout is given (``ZMQS_REQUEST_TIMEOUT``
#: overrides it for ``Client()``).
DEFAULT_TIMEOUT: float = settings.Settings().request_timeout
#: Outcomes sent to the client and not asked for yet that it keeps, at most.
MAX_OUTCOMES = 100_000
#: Bytes of results and errors of those outcomes it keeps, about, at most.
MAX_OUTCOME_BYTES = 64 * 1024 * 1024
#: Seconds ``result`` waits for the outcome of a task it watches before it asks for it:
#: an outcome the broker sent is lost when the connection breaks or the broker restarts.
OUTCOME_GRACE = 1.0

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class TaskFailed(Exception):
    """``Client.result`` was asked for the result of a task that did not complete."""

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


class Client:
    """A connection to the broker for submitting and inspecting tasks."""

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float | None = None,
        context: zmq.Context[Any] | None = None,
        curve: ClientKeys | None = None,
        *,
        watch: bool = True,
    ) -> None:
        """``endpoint``, ``timeout`` (seconds to wait for an answer) and ``curve`` (the keys
        to reach a CURVE broker, ``ClientKeys.load``) default to the settings of the
        environment (``ZMQS_BROKER``, ``ZMQS_REQUEST_TIMEOUT``, ``ZMQS_CURVE_SERVER_KEY``
        and ``ZMQS_CURVE_SECRET``). ``watch``: have the outcomes of the tasks ``submit``
        and ``pipeline`` make sent here (``submit_many`` asks with ``notify``)."""
        if endpoint is None or timeout is None or curve is None:
            try:
                given = settings.load()
            except SystemExit as exc:  # a malformed ZMQS_ variable: a library does not exit
                raise ValueError(str(exc)) from None
            endpoint = given.broker if endpoint is None else endpoint
            timeout = given.request_timeout if timeout is None else timeout
            if curve is None:
                curve = ClientKeys.load(given.curve_server_key, given.curve_secret)
        self.endpoint = endpoint
        self._curve = curve
        self.timeout = timeout
        self.watch = watch
        self._context = context or zmq.Context.instance()
        self._counter = itertools.count(1)
        #: Requests sent and not answered yet (nor given up), and the replies that came for
        #: them before they were asked for.
        self._awaited: set[int] = set()
        self._replies: dict[int, ops.Reply] = {}
        #: Outcomes sent here, not asked for yet, by task id (oldest first), and their bytes.
        self._outcomes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._outcome_bytes = 0
        #: Tasks whose outcome the broker was asked to send here, not come yet (oldest first).
        self._watched: OrderedDict[str, None] = OrderedDict()
        self._socket = self._connect()

    def _connect(self) -> zmq.Socket[bytes]:
        socket: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        # Queue nothing for a broker that is not connected: a send then waits
        # (bounded by the call's timeout) instead of piling up requests.
        socket.setsockopt(zmq.IMMEDIATE, 1)
        if self._curve is not None:
            self._curve.apply(socket)
        socket.connect(self.endpoint)
        return socket

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one round trip ----------------------------------------------------

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one request and return the reply's value, or raise the reply's error.

        ``timeout`` (default: the client's) is how long to wait for an answer, on top of
        the time the broker may hold it (a wait's own timeout). The broker checks the
        arguments; arguments that cannot even be encoded are checked here, with the
        broker's own checks, so the error names the field (``InvalidInput``).
        """
        limit = (self.timeout if timeout is None else timeout) + ops.holds(op, args)
        req = self.send_request(op, args, limit)
        reply = self.await_reply(req, time.monotonic() + limit, limit)
        if reply.error is None:
            return reply.value
        raise reply.error.exception()

    def send_request(self, op: Op, args: dict[str, Any], limit: float) -> int:
        """Send a request without waiting for its answer (``await_reply``); returns its
        number. Raises ``InvalidInput`` for arguments that cannot be encoded and
        ``Unavailable`` when it cannot leave within ``limit`` seconds."""
        req = next(self._counter)
        try:
            frames = protocol.request(req, op, args)
        except (TypeError, ValueError, OverflowError) as exc:  # msgpack cannot encode a value
            ops.decode_args(op.value, args)  # raises InvalidInput naming the field
            raise InvalidInput(f"the arguments of {op.value} cannot be sent: {exc}") from None
        if not self._send(frames, limit):
            self._reset()
            raise Unavailable(self._why(f"broker at {self.endpoint} is not reachable"), sent=False)
        self._awaited.add(req)
        return req

    def await_reply(self, req: int, deadline: float, limit: float) -> ops.Reply:
        """The reply to request ``req``, or ``Unavailable`` at ``deadline`` (``limit``
        seconds after it was sent), after which a late reply to it is dropped."""
        while True:
            reply = self._replies.pop(req, None)
            if reply is not None:
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._receive(remaining):
                self._awaited.discard(req)
                raise Unavailable(
                    self._why(f"broker at {self.endpoint} did not answer within {limit:g} s")
                )

    def reply_to(self, req: int) -> ops.Reply | None:
        """The reply to request ``req`` if it came (taken: asked for once), without waiting."""
        return self._replies.pop(req, None)

    def forget(self, req: int) -> None:
        """Give up on request ``req``: a reply that comes later is dropped."""
        self._awaited.discard(req)
        self._replies.pop(req, None)

    def _receive(self, seconds: float) -> bool:
        """Take in one message, waiting up to ``seconds``; False if none came."""
        if not self._socket.poll(int(seconds * 1000) + 1, zmq.POLLIN):
            return False
        self._take(self._socket.recv_multipart())
        return True

    def pump(self) -> None:
        """Take in every message that waits on the socket, without waiting."""
        socket = self._socket
        # Asked first: a receive that finds nothing costs three times as much (zmq.Again).
        while cast(int, socket.getsockopt(_EVENTS)) & _POLLIN:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._take(frames)

    def _take(self, frames: list[bytes]) -> None:
        """File one message: a reply under its request, outcomes under their tasks. One
        this client cannot read, or a late reply to a call that gave up, is dropped."""
        try:
            message = protocol.unpack(frames)
            if message.command is protocol.Command.REPLY:
                reply = ops.Reply.decode(message.body)
                if reply.req in self._awaited:
                    self._awaited.discard(reply.req)
                    self._replies[reply.req] = reply
            elif message.command is protocol.Command.OUTCOME:
                for outcome in ops.Outcomes.decode(message.body).tasks:
                    self._keep(outcome)
        except (protocol.ProtocolError, InvalidInput):
            pass  # nothing answers a message that is not one this client reads

    # -- outcomes sent unasked ---------------------------------------------------------

    def watching(self, task_id: str) -> None:
        """The broker was asked to send this task's outcome here."""
        self._watched[task_id] = None
        if len(self._watched) > MAX_OUTCOMES:
            self._watched.popitem(last=False)  # asked for if it is wanted: see ``result``

    def _keep(self, outcome: dict[str, Any]) -> None:
        task_id = outcome["id"]
        self._watched.pop(task_id, None)
        if task_id in self._outcomes:
            return
        self._outcomes[task_id] = outcome
        self._outcome_bytes += _outcome_size(outcome)
        while len(self._outcomes) > MAX_OUTCOMES or self._outcome_bytes > MAX_OUTCOME_BYTES:
            _, dropped = self._outcomes.popitem(last=False)
            self._outcome_bytes -= _outcome_size(dropped)

    def _take_outcome(self, task_id: str) -> dict[str, Any] | None:
        outcome = self._outcomes.pop(task_id, None)
        if outcome is not None:
            self._outcome_bytes -= _outcome_size(outcome)
        return outcome

    def call(self, request: ops.Request, timeout: float | None = None) -> Any:
        """``request`` with a typed request (``common.ops``)."""
        return self.request(request.OP, request.to_args(), timeout)

    def _send(self, frames: list[bytes], limit: float) -> bool:
        """Send at once, or once connected within ``limit`` seconds; False if it cannot."""
        try:
            send_frames(self._socket, frames)
            return True
        except zmq.Again:  # not connected (yet): wait for the connection, within the limit
            pass
        if not self._socket.poll(int(limit * 1000), zmq.POLLOUT):
            return False
        try:
            send_frames(self._socket, frames)
        except zmq.Again:
            return False
        return True

    def _why(self, problem: str) -> str:
        """``problem``, and that the broker's host name does not resolve when it does not:
        ZeroMQ never says so, and the name is the likeliest mistake in an endpoint."""
        cause = endpoints.unresolved(self.endpoint)
        return problem if cause is None else f"{problem}: {cause}"

    def _reset(self) -> None:
        # A request queued on a half-open connection must not be sent later.
        self._socket.close(linger=0)
        self._socket = self._connect()

    # -- tasks -------------------------------------------------------------------

    def submit(
        self, handler: str, args: bytes = b"", *, refuse_unservable: bool = False, **fields: Any
    ) -> str:
        """Submit one task and return its id, once the broker has stored it.

        ``fields``: name, dependencies, priority, max_retries, timeout (the task's: seconds
        a run may take), requires, resources, idempotency_key. With an
        ``idempotency_key``, submitting again after a timeout is safe: the broker returns
        the task it already has for that key (and refuses, with ``Conflict``, the same key
        with another spec). With ``refuse_unservable``, the broker refuses the task
        (``Conflict``, saying why) when no online worker could run it, instead of keeping
        it waiting for one.
        """
        spec = {"handler": handler, "args": args, **fields}
        [task_id] = self.submit_many([spec], refuse_unservable=refuse_unservable, notify=self.watch)
        return task_id

    def pipeline(self, batch: int = 1000, window: int = 10_000) -> Pipeline:
        """Submits kept in flight, coalesced into batches of at most ``batch`` tasks, at most
        ``window`` tasks unacknowledged: see ``common.pipeline``."""
        from common.pipeline import Pipeline

        return Pipeline(self, batch, window)

    def submit_many(
        self,
        specs: list[dict[str, Any]],
        timeout: float | None = None,
        *,
        refuse_unservable: bool = False,
        notify: bool = False,
    ) -> list[str]:
        """Submit many tasks, all or none, and return their ids in order (see
        ``submit_entries``)."""
        entries = self.submit_entries(
            specs, timeout, refuse_unservable=refuse_unservable, notify=notify
        )
        return [entry["id"] for entry in entries]

    def submit_entries(
        self,
        specs: list[dict[str, Any]],
        timeout: float | None = None,
        *,
        refuse_unservable: bool = False,
        notify: bool = False,
    ) -> list[dict[str, Any]]:
        """Like ``submit_many``, returning ``{id, status, created}`` for each task;
        ``created`` is false when an idempotency key named a task that already existed.

        More than ``MAX_BATCH`` (10,000) specs go in messages of that many, one after the
        other, each all or none: when one is refused, the error (raised) holds the
        entries of those before it in ``submitted``. With ``notify``, the outcome of each
        task is sent here once it is final (``result`` then costs no round trip)."""
        args: dict[str, Any] = {}
        if refuse_unservable:
            args["refuse_unservable"] = True
        if notify:
            args["notify"] = True
        entries: list[dict[str, Any]] = []
        for start in range(0, max(len(specs), 1), MAX_BATCH):
            try:
                value = self.request(
                    Op.SUBMIT, {"tasks": specs[start : start + MAX_BATCH], **args}, timeout
                )
            except SchedulerError as exc:
                exc.submitted = entries  # type: ignore[attr-defined]
                raise
            entries += value["tasks"]
        if notify:
            for entry in entries:
                self.watching(entry["id"])
        return entries

    def run(
        self, handler: str, args: bytes = b"", wait: float | None = None, **fields: Any
    ) -> bytes:
        """Submit one task, wait up to ``wait`` seconds (default ``MAX_WAIT``) for it and
        return its result, in one round trip (``fields`` as ``submit``'s, ``timeout`` the
        task's own).

        Raises ``TaskFailed`` if it did not complete and ``TaskTimeout`` if it is still
        unfinished then (it keeps running: its id is in the error).
        """
        limit = _waiting(wait)
        [task] = self.submit_and_wait([{"handler": handler, "args": args, **fields}], limit)
        return _result_of(task, limit)

    def submit_and_wait(self, specs: list[dict[str, Any]], wait: float) -> list[dict[str, Any]]:
        """Submit tasks (all or none) and wait up to ``wait`` seconds (at most 300) for all of
        them to finish, in one round trip; returns each task's full record, with ``created``.

        The broker answers once every task is final or the time is up, so a record may
        still be pending or running. The submit is durable when the answer arrives.
        """
        value = self.request(Op.SUBMIT, {"tasks": specs, "wait": wait})
        records: list[dict[str, Any]] = value["tasks"]
        return records

    def get(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The task's current record."""
        result: dict[str, Any] = self.request(Op.GET, {"id": task_id}, timeout)
        return result

    def list_tasks(
        self,
        status: str | None = None,
        handler: str | None = None,
        limit: int = DEFAULT_PAGE,
        after: int | None = None,
        timeout: float | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of tasks in submission order and the cursor of the next page (or None)."""
        args: dict[str, Any] = {"limit": limit}
        if status is not None:
            args["status"] = status
        if handler is not None:
            args["handler"] = handler
        if after is not None:
            args["after"] = after
        value = self.request(Op.LIST, args, timeout)
        return value["tasks"], value["next"]

    def cancel(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Cancel a task: at once when pending; a running one is told to stop."""
        result: dict[str, Any] = self.request(Op.CANCEL, {"id": task_id}, timeout)
        return result

    def retry(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Run a failed or cancelled task again (same id; its attempts continue), with its
        dependents that failed because of it; the task's record, pending. ``Conflict``
        for a task that is not failed or cancelled."""
        result: dict[str, Any] = self.request(Op.RETRY, {"id": task_id}, timeout)
        return result

    def purge(
        self,
        status: str,
        before: float | None = None,
        limit: int = DEFAULT_PURGE,
        timeout: float | None = None,
    ) -> int:
        """Delete the finished tasks of ``status`` (completed, failed or cancelled) that
        completed before ``before`` (seconds since the epoch; any time when None), in
        requests of at most ``limit`` each until none is left; returns how many."""
        args: dict[str, Any] = {"status": status, "limit": limit}
        if before is not None:
            args["before"] = before
        total = 0
        while True:
            value = self.request(Op.PURGE, args, timeout)
            total += int(value["purged"])
            if not value["more"]:
                return total

    def wait(self, task_id: str | Submitted, timeout: float | None = None) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds (default ``MAX_WAIT``) for the task to finish and
        return its record; ``TaskTimeout`` (its ``tasks`` holding the record as it was) if
        it is still unfinished then."""
        task_id = _id_of(task_id)
        limit = _waiting(timeout)
        record: dict[str, Any] = self.request(Op.WAIT, {"id": task_id, "timeout": limit})
        if record["status"] not in FINAL_STATUSES:
            status = record["status"]
            raise TaskTimeout(f"task {task_id} still {status} after {limit:g} s", [record])
        return record

    def wait_many(self, task_ids: list[str], timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait up to ``timeout`` seconds (default ``MAX_WAIT``) for all these tasks to
        finish; returns ``{id, status, result, error}`` for each, in the order of
        ``task_ids`` (a task named twice, once). ``TaskTimeout``, holding the brief records
        of those final by then, if some are still unfinished. More than ``MAX_WAIT_IDS``
        ids are asked for in parts, within the one ``timeout``."""
        limit = _waiting(timeout)
        deadline = time.monotonic() + limit
        self.pump()
        found: dict[str, dict[str, Any]] = {}
        asked: list[str] = []
        for task_id in dict.fromkeys(task_ids):  # each once, in order
            outcome = self._take_outcome(task_id)
            if outcome is not None:
                found[task_id] = outcome
            else:
                asked.append(task_id)
        for start in range(0, len(asked), MAX_WAIT_IDS):
            part = asked[start : start + MAX_WAIT_IDS]
            remaining = max(0.0, deadline - time.monotonic())
            value = self.request(Op.WAIT_MANY, {"ids": part, "timeout": remaining})
            for brief in value["tasks"]:
                found[brief["id"]] = brief
                self._watched.pop(brief["id"], None)
        briefs = [found[task_id] for task_id in dict.fromkeys(task_ids) if task_id in found]
        unfinished = len(asked) - sum(1 for task_id in asked if task_id in found)
        if unfinished:
            raise TaskTimeout(f"{unfinished} tasks still unfinished after {limit:g} s", briefs)
        return briefs

    def result(self, task_id: str | Submitted, timeout: float | None = None) -> bytes:
        """Wait up to ``timeout`` seconds (default ``MAX_WAIT``) for the task and return its
        result; raise ``TaskFailed`` if it did not complete and ``TaskTimeout`` if it is
        still unfinished then. The outcome of a task submitted here with ``watch`` on
        comes unasked: no round trip once it is final."""
        task_id = _id_of(task_id)
        limit = _waiting(timeout)
        deadline = time.monotonic() + limit
        self.pump()
        outcome = self._take_outcome(task_id)
        if outcome is None and task_id in self._watched:
            outcome = self._outcome_within(task_id, min(deadline, time.monotonic() + OUTCOME_GRACE))
        if outcome is None:
            try:
                [outcome] = self.wait_many([task_id], max(0.0, deadline - time.monotonic()))
            except TaskTimeout:
                message = f"task {task_id} still unfinished after {limit:g} s"
                raise TaskTimeout(message, []) from None
        return _result_of(outcome, limit)

    def _outcome_within(self, task_id: str, deadline: float) -> dict[str, Any] | None:
        """The outcome of a watched task if it comes by ``deadline``."""
        while task_id in self._watched:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._receive(remaining):
                return None
        return self._take_outcome(task_id)

    # -- workers and health --------------------------------------------------------

    def workers(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every worker's record, in the order of their ids (asked a page at a time:
        ``timeout`` is for each page)."""
        workers: list[dict[str, Any]] = []
        args: dict[str, Any] = {}
        while True:
            page = self.request(Op.WORKERS, args, timeout)
            workers += page["workers"]
            if page["next"] is None:
                return workers
            args = {"after": page["next"]}

    def worker(self, worker_id: str, timeout: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(Op.WORKER, {"id": worker_id}, timeout)
        return result

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(Op.HEALTH, {}, timeout)
        return result

    def drain_worker(
        self, worker_id: str, on: bool = True, timeout: float | None = None
    ) -> dict[str, Any]:
        """Drain a worker (no new task for it; its runs finish), or resume it with ``on``
        false; the worker's record, which shows ``draining``."""
        result: dict[str, Any] = self.request(Op.DRAIN, {"id": worker_id, "on": on}, timeout)
        return result

    def stats(self, timeout: float | None = None) -> dict[str, Any]:
        """Tasks by status and by handler, workers, and throughput over the last 15 minutes."""
        result: dict[str, Any] = self.request(Op.STATS, {}, timeout)
        return result

    # -- HTTP workers (used by the REST API) -----------------------------------------

    def register_http_worker(
        self,
        worker_id: str,
        capabilities: list[str],
        resources: dict[str, float],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Register (or re-register) a worker that pulls tasks over HTTP."""
        args = {"id": worker_id, "capabilities": capabilities, "resources": resources}
        result: dict[str, Any] = self.request(Op.HTTP_REGISTER, args, timeout)
        return result

    def next_task(self, worker_id: str, wait: float = 0.0) -> dict[str, Any] | None:
        """Lease the next task to an HTTP worker, waiting up to ``wait`` seconds for one."""
        result: dict[str, Any] | None = self.request(Op.HTTP_NEXT, {"id": worker_id, "wait": wait})
        return result

    def heartbeat(self, worker_id: str, timeout: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(Op.HTTP_HEARTBEAT, {"id": worker_id}, timeout)
        return result

    def complete(
        self,
        worker_id: str,
        task_id: str,
        status: str,
        result: bytes | None = None,
        error: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Report the outcome of a task an HTTP worker ran."""
        args = {
            "worker_id": worker_id,
            "task_id": task_id,
            "status": status,
            "result": result,
            "error": error,
        }
        value: dict[str, Any] = self.request(Op.HTTP_COMPLETE, args, timeout)
        return value


def _result_of(task: dict[str, Any], waited: float) -> bytes:
    if task["status"] == TaskStatus.COMPLETED:
        return bytes(task["result"] or b"")
    if task["status"] not in FINAL_STATUSES:
        raise TaskTimeout(f"task {task['id']} still {task['status']} after {waited:g} s", [task])
    raise TaskFailed(task)


def _waiting(timeout: float | None) -> float:
    """How long a call that waits for tasks waits: ``timeout``, or ``MAX_WAIT``."""
    return MAX_WAIT if timeout is None else timeout


def _id_of(task: str | Submitted) -> str:
    return task if isinstance(task, str) else task.id


def _outcome_size(outcome: dict[str, Any]) -> int:
    return len(outcome["result"] or b"") + len(outcome["error"] or "") + 200
