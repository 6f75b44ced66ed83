"""The Python client library: talk to the broker over ZeroMQ, without HTTP.

A ``Client`` owns one DEALER socket and is not thread-safe: use one per thread
(the REST API keeps one per thread). Every call takes a timeout and raises
``Unavailable`` when the broker does not answer in time (its ``sent`` says whether the
request left, and so may still take effect); errors the broker reports come back as
the matching ``SchedulerError`` (``InvalidInput``, ``NotFound``, ``Conflict``): a bad
argument is ``InvalidInput`` naming the field, whether the broker refused it or it
could not even be encoded (then nothing leaves).

    with Client("tcp://127.0.0.1:5555") as client:
        task_id = client.submit("fibonacci", b'{"n": 10}')
        task = client.wait(task_id, timeout=10)
        print(task["status"], task["result"])
        print(client.run("fibonacci", b'{"n": 10}', wait=10))  # submit + result, one round trip
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import zmq

from common import endpoints, ops, protocol
from common.curve import ClientKeys
from common.errors import InvalidInput, SchedulerError, Unavailable
from common.limits import DEFAULT_PAGE
from common.models import TaskStatus
from common.ops import Op
from common.transport import send_frames

#: Seconds a call waits for the broker when no timeout is given.
DEFAULT_TIMEOUT = 5.0


class TaskFailed(Exception):
    """``Client.result`` was asked for the result of a task that did not complete."""

    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(f"task {task['id']} {task['status']}: {task.get('error') or ''}".strip())
        self.task = task


class Client:
    """A connection to the broker for submitting and inspecting tasks."""

    def __init__(
        self,
        endpoint: str,
        timeout: float = DEFAULT_TIMEOUT,
        context: zmq.Context[Any] | None = None,
        curve: ClientKeys | None = None,
    ) -> None:
        """``curve``: the keys to reach a CURVE broker (``ClientKeys.load``); None for a
        plain one."""
        self.endpoint = endpoint
        self._curve = curve
        self.timeout = timeout
        self._context = context or zmq.Context.instance()
        self._counter = itertools.count(1)
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
        deadline = time.monotonic() + limit
        req = next(self._counter)
        try:
            frames = protocol.request(req, op, args)
        except (TypeError, ValueError, OverflowError) as exc:  # msgpack cannot encode a value
            ops.decode_args(op.value, args)  # raises InvalidInput naming the field
            raise InvalidInput(f"the arguments of {op.value} cannot be sent: {exc}") from None
        if not self._send(frames, limit):
            self._reset()
            raise Unavailable(self._why(f"broker at {self.endpoint} is not reachable"), sent=False)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                raise Unavailable(
                    self._why(f"broker at {self.endpoint} did not answer within {limit:g} s")
                )
            frames = self._socket.recv_multipart()
            try:
                message = protocol.unpack(frames)
                if message.command is not protocol.Command.REPLY:
                    continue
                reply = ops.Reply.decode(message.body)
            except (protocol.ProtocolError, InvalidInput):
                continue  # not a reply this client can read: nothing answers it
            if reply.req != req:
                continue  # a late reply to an earlier call that timed out
            if reply.error is None:
                return reply.value
            error = reply.error
            raise SchedulerError.of(error.status, error.title, error.description)

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
        """Submit one task and return its id.

        ``fields``: name, dependencies, priority, max_retries, timeout, requires, resources,
        idempotency_key. With an ``idempotency_key``, submitting again after a timeout is
        safe: the broker returns the task it already has for that key (and refuses, with
        ``Conflict``, the same key with another spec). With ``refuse_unservable``, the
        broker refuses the task (``Conflict``, saying why) when no online worker could run
        it, instead of keeping it waiting for one.
        """
        spec = {"handler": handler, "args": args, **fields}
        return self.submit_many([spec], refuse_unservable=refuse_unservable)[0]

    def submit_many(
        self,
        specs: list[dict[str, Any]],
        timeout: float | None = None,
        *,
        refuse_unservable: bool = False,
    ) -> list[str]:
        """Submit many tasks in one message, all or none; returns their ids in order."""
        entries = self.submit_entries(specs, timeout, refuse_unservable=refuse_unservable)
        return [entry["id"] for entry in entries]

    def submit_entries(
        self,
        specs: list[dict[str, Any]],
        timeout: float | None = None,
        *,
        refuse_unservable: bool = False,
    ) -> list[dict[str, Any]]:
        """Like ``submit_many``, returning ``{id, status, created}`` for each task;
        ``created`` is false when an idempotency key named a task that already existed."""
        args: dict[str, Any] = {"tasks": specs}
        if refuse_unservable:
            args["refuse_unservable"] = True
        value = self.request(Op.SUBMIT, args, timeout)
        entries: list[dict[str, Any]] = value["tasks"]
        return entries

    def run(self, handler: str, args: bytes = b"", wait: float = 60.0, **fields: Any) -> bytes:
        """Submit one task, wait for it and return its result, in one round trip.

        Raises ``TaskFailed`` if it did not complete and ``TimeoutError`` if it is still
        unfinished after ``wait`` seconds (it keeps running: its id is in the error).
        """
        [task] = self.submit_and_wait([{"handler": handler, "args": args, **fields}], wait)
        return _result_of(task, wait)

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

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds (at most 300) for the task to finish; returns its
        record, whose status may still be pending or running if time ran out."""
        result: dict[str, Any] = self.request(Op.WAIT, {"id": task_id, "timeout": timeout})
        return result

    def wait_many(self, task_ids: list[str], timeout: float) -> list[dict[str, Any]]:
        """Wait up to ``timeout`` seconds (at most 300) for all these tasks (at most 10,000)
        to finish.

        Returns ``{id, status, result, error}`` for each task that is final by then, so a
        shorter list than ``task_ids`` means time ran out.
        """
        value = self.request(Op.WAIT_MANY, {"ids": task_ids, "timeout": timeout})
        tasks: list[dict[str, Any]] = value["tasks"]
        return tasks

    def result(self, task_id: str, timeout: float) -> bytes:
        """Wait for the task and return its result; raise ``TaskFailed`` if it did not complete
        and ``TimeoutError`` if it is still unfinished after ``timeout`` seconds."""
        return _result_of(self.wait(task_id, timeout), timeout)

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
    if task["status"] in (TaskStatus.PENDING, TaskStatus.RUNNING):
        raise TimeoutError(f"task {task['id']} still {task['status']} after {waited:g} s")
    raise TaskFailed(task)
