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
``MAX_OUTCOMES`` (and ``MAX_OUTCOME_BYTES`` of results), oldest dropped first
(``common.inbox``); one that was dropped, or never came (a restarted broker), is asked for.

What each call asks and makes of the answers is in ``common.calls``, which the asyncio
client (``common.aio``) runs too: the same calls, with many in flight on one socket.

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
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from common import calls, dealer, ops, settings
from common.calls import OUTCOME_GRACE, TaskFailed, TaskTimeout
from common.curve import ClientKeys
from common.errors import SchedulerError, Unavailable
from common.inbox import Inbox
from common.limits import DEFAULT_PAGE, DEFAULT_PURGE
from common.ops import Op
from common.transport import message_waits, receive_frames, send_frames

if TYPE_CHECKING:
    from common.pipeline import Pipeline, Submitted

__all__ = ["DEFAULT_TIMEOUT", "OUTCOME_GRACE", "Client", "TaskFailed", "TaskTimeout"]

T = TypeVar("T")

#: Seconds a call waits for the broker when no timeout is given (``ZMQS_REQUEST_TIMEOUT``
#: overrides it for ``Client()``).
DEFAULT_TIMEOUT: float = settings.Settings().request_timeout


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
        self.endpoint, self.timeout, self._curve = dealer.resolve(endpoint, timeout, curve)
        self.watch = watch
        self._context = context or zmq.Context.instance()
        self._counter = itertools.count(1)
        #: Requests sent and not answered yet (nor given up), and the replies that came for
        #: them before they were asked for.
        self._awaited: set[int] = set()
        self._replies: dict[int, ops.Reply] = {}
        #: Outcomes sent here unasked, until they are asked for.
        self._inbox = Inbox()
        self._socket = self._connect()

    def _connect(self) -> zmq.Socket[bytes]:
        socket: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        return dealer.connect(socket, self.endpoint, self._curve)

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
        limit = dealer.limit(self.timeout if timeout is None else timeout, op, args)
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
        frames = dealer.encode(req, op, args)
        if not self._send(frames, limit):
            self._reset()
            raise Unavailable(dealer.unreachable(self.endpoint), sent=False)
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
                raise Unavailable(dealer.unanswered(self.endpoint, limit))

    def reply_to(self, req: int) -> ops.Reply | None:
        """The reply to request ``req`` if it came (taken: asked for once), without waiting."""
        return self._replies.pop(req, None)

    def forget(self, req: int) -> None:
        """Give up on request ``req``: a reply that comes later is dropped."""
        self._awaited.discard(req)
        self._replies.pop(req, None)

    def _receive(self, seconds: float) -> bool:
        """Take in one message, waiting up to ``seconds``; False if none came."""
        # The socket's own poll, not zmq.zmq_poll: the API's green sockets wait on gevent's
        # hub there (``api.clients``), where zmq_poll would block every greenlet.
        if not self._socket.poll(int(seconds * 1000) + 1, zmq.POLLIN):
            return False
        self._take(receive_frames(self._socket))
        return True

    def pump(self) -> None:
        """Take in every message that waits on the socket, without waiting."""
        socket = self._socket
        # Asked first: a receive that finds nothing costs three times as much (zmq.Again).
        while message_waits(socket):
            try:
                frames = receive_frames(socket)
            except zmq.Again:
                return
            self._take(frames)

    def _take(self, frames: list[bytes]) -> None:
        """File one message: a reply under its request, outcomes under their tasks. One
        this client cannot read, or a late reply to a call that gave up, is dropped."""
        message = dealer.read(frames)
        if isinstance(message, ops.Reply):
            if message.req in self._awaited:
                self._awaited.discard(message.req)
                self._replies[message.req] = message
        elif message is not None:
            for outcome in message.tasks:
                self._inbox.keep(outcome)

    def watching(self, task_id: str) -> None:
        """The broker was asked to send this task's outcome here."""
        self._inbox.watching(task_id)

    def call(self, request: ops.Request, timeout: float | None = None) -> Any:
        """``request`` with a typed request (``common.ops``)."""
        return self.request(request.OP, request.to_args(), timeout)

    def _run(self, plan: calls.Plan[T]) -> T:
        """Carry out a call's plan (``common.calls``) on this socket."""
        step = calls.resume(plan)
        while not isinstance(step, calls.Done):
            if isinstance(step, calls.Expect):
                self._expect(step.task_id, step.deadline)
                step = calls.resume(plan)
                continue
            try:
                value = self.request(step.op, step.args, step.timeout)
            except SchedulerError as exc:
                step = calls.resume(plan, error=exc)
            else:
                step = calls.resume(plan, value)
        return step.value

    def _expect(self, task_id: str, deadline: float) -> None:
        """Take in messages until the outcome of a watched task came, or ``deadline``."""
        while self._inbox.watches(task_id):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._receive(remaining):
                return

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

    def _reset(self) -> None:
        # A request queued on a half-open connection must not be sent later.
        self._socket.close(linger=0)
        self._socket = self._connect()

    # -- tasks (each call's plan is in common.calls) ---------------------------------

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
        return self._run(calls.submit(self._inbox, spec, refuse_unservable, self.watch))

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
        plan = calls.submit_many(self._inbox, specs, timeout, refuse_unservable, notify)
        return self._run(plan)

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
        plan = calls.submit_entries(self._inbox, specs, timeout, refuse_unservable, notify)
        return self._run(plan)

    def run(
        self, handler: str, args: bytes = b"", wait: float | None = None, **fields: Any
    ) -> bytes:
        """Submit one task, wait up to ``wait`` seconds (default ``MAX_WAIT``) for it and
        return its result, in one round trip (``fields`` as ``submit``'s, ``timeout`` the
        task's own).

        Raises ``TaskFailed`` if it did not complete and ``TaskTimeout`` if it is still
        unfinished then (it keeps running: its id is in the error).
        """
        return self._run(calls.run({"handler": handler, "args": args, **fields}, wait))

    def submit_and_wait(self, specs: list[dict[str, Any]], wait: float) -> list[dict[str, Any]]:
        """Submit tasks (all or none) and wait up to ``wait`` seconds (at most 300) for all of
        them to finish, in one round trip; returns each task's full record, with ``created``.

        The broker answers once every task is final or the time is up, so a record may
        still be pending or running. The submit is durable when the answer arrives.
        """
        return self._run(calls.submit_and_wait(specs, wait))

    def get(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The task's current record."""
        return self._run(calls.get(task_id, timeout))

    def list_tasks(
        self,
        status: str | None = None,
        handler: str | None = None,
        limit: int = DEFAULT_PAGE,
        after: int | None = None,
        timeout: float | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of tasks in submission order and the cursor of the next page (or None)."""
        return self._run(calls.list_tasks(status, handler, limit, after, timeout))

    def cancel(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Cancel a task: at once when pending; a running one is told to stop."""
        return self._run(calls.cancel(task_id, timeout))

    def retry(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Run a failed or cancelled task again (same id; its attempts continue), with its
        dependents that failed because of it; the task's record, pending. ``Conflict``
        for a task that is not failed or cancelled."""
        return self._run(calls.retry(self._inbox, task_id, timeout))

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
        return self._run(calls.purge(status, before, limit, timeout))

    def wait(self, task_id: str | Submitted, timeout: float | None = None) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds (default ``MAX_WAIT``) for the task to finish and
        return its record; ``TaskTimeout`` (its ``tasks`` holding the record as it was) if
        it is still unfinished then."""
        return self._run(calls.wait(task_id, timeout))

    def wait_many(self, task_ids: list[str], timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait up to ``timeout`` seconds (default ``MAX_WAIT``) for all these tasks to
        finish; returns ``{id, status, result, error}`` for each, in the order of
        ``task_ids`` (a task named twice, once). ``TaskTimeout``, holding the brief records
        of those final by then, if some are still unfinished. More than ``MAX_WAIT_IDS``
        ids are asked for in parts, within the one ``timeout``."""
        self.pump()
        return self._run(calls.wait_many(self._inbox, task_ids, timeout))

    def result(self, task_id: str | Submitted, timeout: float | None = None) -> bytes:
        """Wait up to ``timeout`` seconds (default ``MAX_WAIT``) for the task and return its
        result; raise ``TaskFailed`` if it did not complete and ``TaskTimeout`` if it is
        still unfinished then. The outcome of a task submitted here with ``watch`` on
        comes unasked: no round trip once it is final."""
        self.pump()
        return self._run(calls.result(self._inbox, task_id, timeout))

    # -- workers and health --------------------------------------------------------

    def workers(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every worker's record, in the order of their ids (asked a page at a time:
        ``timeout`` is for each page)."""
        return self._run(calls.workers(timeout))

    def worker(self, worker_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._run(calls.worker(worker_id, timeout))

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        return self._run(calls.health(timeout))

    def metrics(self, timeout: float | None = None) -> dict[str, Any]:
        """The broker's counters, gauges and histograms (``docs/protocol.md``, ``metrics``)."""
        return self._run(calls.metrics(timeout))

    def drain_worker(
        self, worker_id: str, on: bool = True, timeout: float | None = None
    ) -> dict[str, Any]:
        """Drain a worker (no new task for it; its runs finish), or resume it with ``on``
        false; the worker's record, which shows ``draining``. The drain is stored before
        the answer: it holds across reconnects and restarts of the broker until resumed."""
        return self._run(calls.drain_worker(worker_id, on, timeout))

    def stats(self, timeout: float | None = None) -> dict[str, Any]:
        """Tasks by status and by handler, workers, and throughput over the last 15 minutes."""
        return self._run(calls.stats(timeout))

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
