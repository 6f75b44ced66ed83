"""The asyncio client library: the calls of ``common.client`` as coroutines, many in flight
on one socket.

``common.aio.Client`` has every call of the synchronous client but its pipeline and the
HTTP workers' calls, with the same names, arguments, defaults (the settings:
``ZMQS_BROKER``, ``ZMQS_REQUEST_TIMEOUT``, ``ZMQS_CURVE_SERVER_KEY`` / ``ZMQS_CURVE_SECRET``),
return values, errors and timeout rule: both run the plans of ``common.calls``. Here each
call is awaited, and any number of them may be in flight at once: each request carries its
number, and one reader task matches every reply to the call that awaits it and files the
outcomes the broker sends unasked. A client is safe to share among the tasks of one event
loop (not among loops or threads).

A call that is cancelled (``task.cancel()``, ``asyncio.timeout``) gives up its request: a
reply that comes later is dropped, and the client stays usable. A request that left may
still take effect, as with a timeout (``Unavailable.sent``).

    async with Client("tcp://127.0.0.1:5555") as client:
        results = await asyncio.gather(
            *(client.run("echo", str(i).encode(), wait=60) for i in range(1000))
        )
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import zmq
import zmq.asyncio

from common import calls, dealer, ops
from common.calls import TaskFailed, TaskTimeout
from common.curve import ClientKeys
from common.errors import SchedulerError, Unavailable
from common.inbox import Inbox
from common.limits import DEFAULT_PAGE, DEFAULT_PURGE
from common.ops import Op

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Client", "TaskFailed", "TaskTimeout"]

T = TypeVar("T")


class Client:
    """A connection to the broker for the coroutines of one event loop."""

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float | None = None,
        context: zmq.asyncio.Context | None = None,
        curve: ClientKeys | None = None,
        *,
        watch: bool = True,
    ) -> None:
        """As ``common.client.Client``: ``endpoint``, ``timeout`` (seconds to wait for an
        answer) and ``curve`` default to the settings of the environment; ``watch`` has the
        outcomes of the tasks ``submit`` makes sent here."""
        self.endpoint, self.timeout, self._curve = dealer.resolve(endpoint, timeout, curve)
        self.watch = watch
        context = context or zmq.asyncio.Context.instance()
        socket: zmq.asyncio.Socket = context.socket(zmq.DEALER)
        self._socket = dealer.connect(socket, self.endpoint, self._curve)
        self._counter = itertools.count(1)
        #: Calls awaiting a reply, by request number.
        self._pending: dict[int, asyncio.Future[ops.Reply]] = {}
        #: Outcomes sent here unasked, and the calls waiting for one, by task id.
        self._inbox = Inbox()
        self._arrivals: dict[str, list[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading and close the socket; calls still awaiting a reply raise
        ``Unavailable``."""
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(Unavailable(f"the client of {self.endpoint} was closed"))
        self._pending.clear()
        for arrivals in self._arrivals.values():
            for arrival in arrivals:
                if not arrival.done():
                    arrival.set_result(None)
        self._socket.close(linger=0)

    @property
    def in_flight(self) -> int:
        """Requests sent and awaiting their reply."""
        return len(self._pending)

    # -- requests in flight ------------------------------------------------------------

    async def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one request and return the reply's value, or raise the reply's error
        (``common.client.Client.request``'s rule: ``timeout``, the client's by default,
        on top of the time the broker may hold the answer)."""
        if self._closed:
            raise RuntimeError("the client is closed")
        limit = dealer.limit(self.timeout if timeout is None else timeout, op, args)
        req = next(self._counter)
        frames = dealer.encode(req, op, args)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        answer: asyncio.Future[ops.Reply] = asyncio.get_running_loop().create_future()
        self._pending[req] = answer
        deadline = time.monotonic() + limit
        try:
            try:
                # A send that cannot leave now waits for a connection (``IMMEDIATE``); one
                # given up is taken off the queue: nothing is sent later.
                await asyncio.wait_for(self._socket.send_multipart(frames), limit)
            except TimeoutError:
                raise Unavailable(
                    await _why(dealer.unreachable, self.endpoint), sent=False
                ) from None
            try:
                reply = await asyncio.wait_for(answer, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                problem = await _why(dealer.unanswered, self.endpoint, limit)
                raise Unavailable(problem) from None
        finally:
            self._pending.pop(req, None)  # a reply that comes later is dropped
        if reply.error is None:
            return reply.value
        raise reply.error.exception()

    async def _read(self) -> None:
        """File every message that comes, until the client closes."""
        socket = self._socket
        while True:
            frames = await socket.recv_multipart()
            message = dealer.read(frames)
            if isinstance(message, ops.Reply):
                answer = self._pending.pop(message.req, None)
                if answer is not None and not answer.done():
                    answer.set_result(message)
            elif message is not None:
                for outcome in message.tasks:
                    self._inbox.keep(outcome)
                    for arrival in self._arrivals.pop(outcome["id"], ()):
                        if not arrival.done():
                            arrival.set_result(None)

    async def _expect(self, task_id: str, deadline: float) -> None:
        """Wait until the outcome of a watched task came, or ``deadline``."""
        if not self._inbox.watches(task_id) or self._closed:
            return
        arrival: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        arrivals = self._arrivals.setdefault(task_id, [])
        arrivals.append(arrival)
        try:
            await asyncio.wait({arrival}, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            if arrival in arrivals:
                arrivals.remove(arrival)
                if not arrivals and self._arrivals.get(task_id) is arrivals:
                    del self._arrivals[task_id]

    async def _run(self, plan: calls.Plan[T]) -> T:
        """Carry out a call's plan (``common.calls``)."""
        step = calls.resume(plan)
        while not isinstance(step, calls.Done):
            if isinstance(step, calls.Expect):
                await self._expect(step.task_id, step.deadline)
                step = calls.resume(plan)
                continue
            try:
                value = await self.request(step.op, step.args, step.timeout)
            except SchedulerError as exc:
                step = calls.resume(plan, error=exc)
            else:
                step = calls.resume(plan, value)
        return step.value

    async def call(self, request: ops.Request, timeout: float | None = None) -> Any:
        """``request`` with a typed request (``common.ops``)."""
        return await self.request(request.OP, request.to_args(), timeout)

    # -- tasks (as common.client.Client's; each call's plan is in common.calls) ---------

    async def submit(
        self, handler: str, args: bytes = b"", *, refuse_unservable: bool = False, **fields: Any
    ) -> str:
        """Submit one task and return its id, once the broker has stored it."""
        spec = {"handler": handler, "args": args, **fields}
        return await self._run(calls.submit(self._inbox, spec, refuse_unservable, self.watch))

    async def submit_many(
        self,
        specs: list[dict[str, Any]],
        timeout: float | None = None,
        *,
        refuse_unservable: bool = False,
        notify: bool = False,
    ) -> list[str]:
        """Submit many tasks, all or none for each 10,000, and return their ids in order."""
        plan = calls.submit_many(self._inbox, specs, timeout, refuse_unservable, notify)
        return await self._run(plan)

    async def submit_entries(
        self,
        specs: list[dict[str, Any]],
        timeout: float | None = None,
        *,
        refuse_unservable: bool = False,
        notify: bool = False,
    ) -> list[dict[str, Any]]:
        """Like ``submit_many``, returning ``{id, status, created}`` for each task."""
        plan = calls.submit_entries(self._inbox, specs, timeout, refuse_unservable, notify)
        return await self._run(plan)

    async def run(
        self, handler: str, args: bytes = b"", wait: float | None = None, **fields: Any
    ) -> bytes:
        """Submit one task and return its result once it finished, in one round trip."""
        return await self._run(calls.run({"handler": handler, "args": args, **fields}, wait))

    async def submit_and_wait(
        self, specs: list[dict[str, Any]], wait: float
    ) -> list[dict[str, Any]]:
        """Submit tasks and wait up to ``wait`` seconds for all of them, in one round trip."""
        return await self._run(calls.submit_and_wait(specs, wait))

    async def get(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The task's current record."""
        return await self._run(calls.get(task_id, timeout))

    async def list_tasks(
        self,
        status: str | None = None,
        handler: str | None = None,
        limit: int = DEFAULT_PAGE,
        after: int | None = None,
        timeout: float | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of tasks in submission order and the cursor of the next page (or None)."""
        return await self._run(calls.list_tasks(status, handler, limit, after, timeout))

    async def cancel(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Cancel a task: at once when pending; a running one is told to stop."""
        return await self._run(calls.cancel(task_id, timeout))

    async def retry(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Run a failed or cancelled task again, with its dependents that failed because of
        it (``common.client.Client.retry``)."""
        return await self._run(calls.retry(self._inbox, task_id, timeout))

    async def purge(
        self,
        status: str,
        before: float | None = None,
        limit: int = DEFAULT_PURGE,
        timeout: float | None = None,
    ) -> int:
        """Delete the finished tasks of ``status`` that completed before ``before``; how many
        (``common.client.Client.purge``)."""
        return await self._run(calls.purge(status, before, limit, timeout))

    async def drain_worker(
        self, worker_id: str, on: bool = True, timeout: float | None = None
    ) -> dict[str, Any]:
        """Drain a worker, or resume it with ``on`` false; the worker's record."""
        return await self._run(calls.drain_worker(worker_id, on, timeout))

    async def stats(self, timeout: float | None = None) -> dict[str, Any]:
        """Tasks by status and by handler, workers, and throughput over the last 15 minutes."""
        return await self._run(calls.stats(timeout))

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The task's record once it finished (``TaskTimeout`` if it has not by ``timeout``)."""
        return await self._run(calls.wait(task_id, timeout))

    async def wait_many(
        self, task_ids: list[str], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """``{id, status, result, error}`` of each task once all finished."""
        return await self._run(calls.wait_many(self._inbox, task_ids, timeout))

    async def result(self, task_id: str, timeout: float | None = None) -> bytes:
        """The task's result once it finished (``TaskFailed`` if it did not complete)."""
        return await self._run(calls.result(self._inbox, task_id, timeout))

    # -- workers and health ------------------------------------------------------------

    async def workers(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every worker's record, in the order of their ids."""
        return await self._run(calls.workers(timeout))

    async def worker(self, worker_id: str, timeout: float | None = None) -> dict[str, Any]:
        return await self._run(calls.worker(worker_id, timeout))

    async def health(self, timeout: float | None = None) -> dict[str, Any]:
        return await self._run(calls.health(timeout))

    async def metrics(self, timeout: float | None = None) -> dict[str, Any]:
        """The broker's counters, gauges and histograms (``docs/protocol.md``, ``metrics``)."""
        return await self._run(calls.metrics(timeout))


async def _why(message: Callable[..., str], *args: Any) -> str:
    """``message(*args)`` in a thread: it may look the broker's host name up."""
    return await asyncio.to_thread(message, *args)
