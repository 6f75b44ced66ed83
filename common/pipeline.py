"""Submits kept in flight: many tasks submitted one call each, coalesced on the wire.

``Client.submit`` waits for the broker to store each task: one round trip a task. A
``Pipeline`` does not wait: ``submit`` checks the spec, queues it and returns a
``Submitted`` handle at once. Queued specs leave as one ``submit`` request (``separate``:
each task accepted or refused on its own) whenever nothing is in flight, or once
``batch`` of them wait; so the first goes at once and the rest gather while the broker
answers, in batches as large as the broker is slow. At most ``window`` tasks are in
flight unacknowledged: ``submit`` waits for acknowledgements beyond that.

No error is lost: a refused task's handle raises its error from ``id`` (and
``result``), and ``flush()`` (which the ``with`` block's end calls) sends what is
queued, waits for every acknowledgement and raises ``SubmitsFailed`` naming each refusal
not raised already. A task is stored (durable with ``--sync full``) once its handle's
``id`` is known; an acknowledgement that does not come within the client's timeout
fails its tasks with ``Unavailable`` (``sent``: they may exist: give tasks an
``idempotency_key`` to submit again safely). Queued submits leave with the next call of
the pipeline, at ``flush()`` or at the end of the block, not on their own: a program
that stops submitting for a while calls ``flush()``.

    with client.pipeline() as pipe:
        handles = [pipe.submit("echo", str(i).encode()) for i in range(10_000)]
    results = [handle.result() for handle in handles]
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from common.errors import InvalidInput, SchedulerError, Unavailable
from common.limits import MAX_BATCH
from common.ops import ErrorInfo, Op, Reply
from common.spec import TaskSpec

if TYPE_CHECKING:
    from types import TracebackType

    from common.client import Client


class SubmitsFailed(SchedulerError):
    """Some submits of a pipeline were refused, or not acknowledged in time: ``failed``
    holds their handles, each with its ``error``."""

    status = 400
    title = "Submits failed"

    def __init__(self, failed: list[Submitted]) -> None:
        first = failed[0].error
        super().__init__(f"{len(failed)} submits failed; the first: {first}")
        self.failed = failed
        #: The first refusal's class and status: what a caller that reads only these sees.
        self.status = first.status if first is not None else 400


class Submitted:
    """A task submitted through a pipeline: its id once the broker has stored it."""

    __slots__ = ("_id", "_pipeline", "_seen", "created", "error")

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._id: str | None = None
        #: Why the broker did not take it (None: taken, or not known yet).
        self.error: SchedulerError | None = None
        #: False when its idempotency key named a task that existed already.
        self.created = True
        #: Whether its error was raised to the caller already.
        self._seen = False

    @property
    def id(self) -> str:
        """The task's id, waiting for the broker's acknowledgement if need be; raises the
        error of a submit that was refused."""
        if self._id is None and self.error is None:
            self._pipeline.settle(self)
        if self.error is not None:
            self._seen = True
            raise self.error
        assert self._id is not None
        return self._id

    def acknowledged(self) -> bool:
        """Whether the broker answered for it (stored it, or refused it)."""
        if self._id is None and self.error is None:
            self._pipeline.poll()
        return self._id is not None or self.error is not None

    def result(self, timeout: float | None = None) -> bytes:
        """``Client.result`` of this task."""
        return self._pipeline.client.result(self.id, timeout)

    def __repr__(self) -> str:
        state = self._id or (f"refused: {self.error}" if self.error else "in flight")
        return f"<Submitted {state}>"


class Pipeline:
    """Submits of one client kept in flight (see the module's doc)."""

    def __init__(self, client: Client, batch: int = 1000, window: int = 10_000) -> None:
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be from 1 to {MAX_BATCH}")
        if window < batch:
            raise ValueError("window must be at least batch")
        self.client = client
        self.batch = batch
        self.window = window
        #: Specs not sent yet, with their handles.
        self._queued: list[tuple[dict[str, Any], Submitted]] = []
        #: Requests in flight: request number -> (handles, deadline, seconds allowed).
        self._flying: dict[int, tuple[list[Submitted], float, float]] = {}
        self._in_flight = 0
        #: Handles refused (or not acknowledged) whose error was not raised yet.
        self._failed: list[Submitted] = []

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Send what is queued and check every acknowledgement; when the block raised, its
        exception goes on, with the submits that failed noted on it."""
        try:
            self.flush()
        except SchedulerError as failure:
            if exc is None:
                raise
            exc.add_note(f"and the pipeline's submits: {failure}")

    def submit(self, handler: str, args: bytes = b"", **fields: Any) -> Submitted:
        """Queue one task (``fields`` as ``Client.submit``'s); returns its handle at once.
        A spec the broker would refuse as malformed raises ``InvalidInput`` here."""
        spec = {"handler": handler, "args": args, **fields}
        TaskSpec.parse(spec)  # raises InvalidInput naming the field, before anything queues
        handle = Submitted(self)
        self._queued.append((spec, handle))
        if self._flying:
            self.poll()
        if not self._flying or len(self._queued) >= self.batch:
            self._send()
        while self._in_flight > self.window:
            self._settle_one()
        return handle

    def flush(self) -> None:
        """Send what is queued, wait for every acknowledgement, and raise ``SubmitsFailed``
        for the refusals not raised already (each is raised once)."""
        self._send()
        while self._flying:
            self._settle_one()
        failed = [handle for handle in self._failed if not handle._seen]
        self._failed = []
        for handle in failed:
            handle._seen = True
        if failed:
            raise SubmitsFailed(failed)

    def poll(self) -> None:
        """Take in the acknowledgements that came, without waiting."""
        self.client.pump()
        client = self.client
        now = time.monotonic()
        for req, (_, deadline, limit) in list(self._flying.items()):
            reply = client.reply_to(req)
            if reply is not None:
                self._acknowledged(req, reply)
            elif now >= deadline:
                self._lost(req, limit)

    def settle(self, handle: Submitted) -> None:
        """Wait until the broker answered for ``handle``."""
        if self._queued:  # it may be among them: all go
            self._send()
        while handle._id is None and handle.error is None and self._flying:
            self._settle_one()

    # -- in flight -------------------------------------------------------------------

    def _send(self) -> None:
        """Send the queued specs, ``batch`` a request."""
        while self._queued:
            part, self._queued = self._queued[: self.batch], self._queued[self.batch :]
            specs = [spec for spec, _ in part]
            handles = [handle for _, handle in part]
            args: dict[str, Any] = {"tasks": specs, "separate": True}
            if self.client.watch:
                args["notify"] = True
            limit = self.client.timeout
            try:
                req = self.client.send_request(Op.SUBMIT, args, limit)
            except (InvalidInput, Unavailable) as exc:
                self._fail(handles, exc)
                raise
            self._flying[req] = (handles, time.monotonic() + limit, limit)
            self._in_flight += len(handles)

    def _settle_one(self) -> None:
        """Wait for the oldest request in flight to be answered, or to run out of time."""
        req, (_, deadline, limit) = next(iter(self._flying.items()))
        try:
            reply = self.client.await_reply(req, deadline, limit)
        except Unavailable:
            self._lost(req, limit)
            return
        self._acknowledged(req, reply)
        self.poll()

    def _acknowledged(self, req: int, reply: Reply) -> None:
        handles, _, _ = self._flying.pop(req)
        self._in_flight -= len(handles)
        if reply.error is not None:
            self._fail(handles, reply.error.exception())
            return
        entries = reply.value["tasks"]
        client = self.client
        for handle, entry in zip(handles, entries, strict=True):
            task_id = entry.get("id")
            if task_id is None:
                handle.error = ErrorInfo.decode(entry.get("error")).exception()
                self._failed.append(handle)
                continue
            handle._id = task_id
            handle.created = entry.get("created", True)
            if client.watch:
                client.watching(task_id)

    def _lost(self, req: int, limit: float) -> None:
        handles, _, _ = self._flying.pop(req)
        self._in_flight -= len(handles)
        self.client.forget(req)
        where = self.client.endpoint
        self._fail(handles, Unavailable(f"broker at {where} did not answer within {limit:g} s"))

    def _fail(self, handles: list[Submitted], error: SchedulerError) -> None:
        for handle in handles:
            handle.error = error
        self._failed += handles
