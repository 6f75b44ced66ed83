"""The worker's side of ZS1: one DEALER socket to the broker, driven by one thread.

``Agent.run`` registers (READY → WELCOME), starts the runs the broker dispatches,
cancels the ones it cancels, answers pings, and sends outcomes in batches (DONE)
until the broker acknowledges them (ACK); unacknowledged outcomes are sent again
after every registration. When the broker falls silent for ``ping_interval ×
liveness`` seconds the agent drops the socket and reconnects with back-off, the
Paranoid Pirate way, registering again with the leases it holds (runs in progress,
and finished runs whose outcome is not acknowledged yet). The warning it logs then says
when the broker's host name does not resolve (``common.endpoints``).

Every READY carries a session token drawn once per agent: the broker binds a worker id to
the connection it registered from while it is online, and takes a READY from a new
connection (a reconnect) for the same worker only with the same token. With ``curve``
keys the socket is a CURVE client of the broker (``common.curve``).

Runner threads hand outcomes over through a queue and wake the loop by writing a
byte to a pipe whose read end the loop polls with the socket. A worker of
one slot (thread pool) runs the handler of a plain function on the loop's own thread
instead, and a second thread takes the loop over if it runs long (``worker.relay``).

This module must never let any thread but the loop's touch the socket (ZeroMQ sockets
are not thread-safe; a relayed loop passes from thread to thread only through
``worker.relay``), must never open a context at import time, and must never die on a
malformed message from the broker: such a message is logged and dropped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from common import endpoints, messages, protocol
from common.curve import ClientKeys
from common.errors import InvalidInput
from common.limits import MAX_ERROR_LENGTH
from common.messages import RunKey
from common.models import TaskStatus
from common.protocol import Command
from common.transport import message_waits, receive_frames, send_frames
from worker.relay import Relay
from worker.runner import OnDone, Outcome, Runner

logger = logging.getLogger(__name__)


#: Seconds before the first reconnect once the broker is lost; doubles with each attempt
#: that gets no WELCOME, and starts over after a WELCOME (``--reconnect-backoff``).
BACKOFF_INITIAL = 1.0
#: Longest wait between reconnects, in seconds (``--reconnect-backoff-max``).
BACKOFF_MAX = 32.0
#: Seconds a stopping worker lets its runs finish before it gives the rest back.
DRAIN_GRACE = 30.0
#: Ping interval assumed until the first WELCOME says otherwise (seconds).
DEFAULT_PING_INTERVAL = 1.0
#: Silent ping intervals after which the broker is presumed gone, until WELCOME says otherwise.
DEFAULT_LIVENESS = 3
#: Milliseconds the final close may spend delivering BYE: long enough for a live broker,
#: short enough that a dead one cannot hold up the exit.
SHUTDOWN_LINGER_MS = 500
#: Longest single poll, in seconds: a safety net for noticing a stop request.
MAX_POLL = 1.0
#: Most messages handled per loop turn, so outcomes are flushed under a flood of messages.
RECEIVE_BATCH = 1000
#: Result bytes in one DONE past which the next outcome goes in another: the broker reads
#: no frame larger than its ``--max-payload`` and 16 MiB, nor 64 MiB.
DONE_BYTES = 16 * 1024 * 1024

RunnerFactory = Callable[[OnDone], Runner]


class Agent:
    """Connects a ``Runner`` to the broker. Create it, then call ``run`` in one thread."""

    def __init__(
        self,
        *,
        endpoint: str,
        worker_id: str,
        slots: int,
        make_runner: RunnerFactory,
        capabilities: Sequence[str] = (),
        tags: Sequence[str] = (),
        resources: Mapping[str, float] | None = None,
        host: str | None = None,
        pid: int | None = None,
        drain_grace: float = DRAIN_GRACE,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        liveness: int = DEFAULT_LIVENESS,
        curve: ClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._curve = curve
        #: Sent with every READY (see the module's doc); never shown, never logged.
        self._session = secrets.token_bytes(16)
        self.worker_id = worker_id
        self.slots = slots
        self.capabilities = list(capabilities)
        #: Which of the capabilities are tags rather than handler names.
        self.tags = list(tags)
        self.resources = {k: float(v) for k, v in (resources or {}).items() if v > 0}
        self.host = host if host is not None else platform.node()
        self.pid = pid if pid is not None else os.getpid()
        self._make_runner = make_runner
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._ping_interval = ping_interval
        self._liveness = liveness
        #: Largest result the broker takes (its WELCOME says; 0 until then, or never said).
        self._max_payload = 0

        self._drain_grace = drain_grace
        #: A stop was asked for: take nothing new, let the runs finish (at most drain_grace).
        self._drain_requested = False
        #: When the runs left are given back (None: not draining yet).
        self._drain_deadline: float | None = None
        #: Stop now: drop the runs left, say BYE.
        self._stop_requested = False
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        # Reentrant: a signal handler may call request_stop while the main thread holds it.
        self._wake_lock = threading.RLock()
        self._wake_read = -1
        self._wake_write = -1
        #: A wake byte was written since the loop last drained the pipe: another one would
        #: only cost a system call (many runs finish while the loop is busy).
        self._wake_pending = False

        # Loop state, touched only by the thread in run().
        self._runner: Runner | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        #: What the loop polls (``zmq.zmq_poll``): the wake pipe, and the socket while there
        #: is one. A ``zmq.Poller`` builds this list at every poll.
        self._waiting: list[tuple[Any, int]] = []
        self._registered = False  # WELCOME received since the last READY
        self._ready_sent_at = 0.0
        self._ever_registered = False
        self._last_heard = 0.0
        self._reconnect_at = 0.0
        self._backoff = backoff_initial
        #: Outcomes sent and not acknowledged yet, by (task_id, attempt).
        self._unacked: dict[tuple[str, int], Outcome] = {}
        #: DISPATCHes whose acknowledgements are not read yet: a run they start is started
        #: (and its outcome sent) first, since nothing of it waits for them.
        self._dispatch_acks: list[dict[str, Any]] = []
        #: Hands the loop between two threads when runs may run on its thread (else None).
        self._relay: Relay | None = None
        #: A run started this turn, for the loop's thread to run once the turn is over.
        self._inline_job: Callable[[], None] | None = None

    # -- called from other threads -------------------------------------------------

    def request_stop(self) -> None:
        """Ask ``run`` to shut down and return: the first call drains (the broker is told,
        nothing new is started, the runs in progress get ``drain_grace`` seconds to finish
        and report), a second stops at once (the runs left go back to the queue).

        Safe from any thread and from a signal handler: it sets flags and writes one byte
        to a non-blocking pipe (the self-pipe trick), nothing else.
        """
        if self._drain_requested or self._drain_grace <= 0:
            self._stop_requested = True
        self._drain_requested = True
        self._wake()

    def _deliver(self, outcome: Outcome) -> None:
        """The runner's ``on_done``: queue the outcome for the loop thread."""
        self._outcomes.put(outcome)
        if self._relay is None or not self._relay.running_inline():
            self._wake()
        # else the loop's own thread ran it, and sends it once the handler returns

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_write < 0 or self._wake_pending:
                return
            self._wake_pending = True
            # A full pipe means the loop is awake already.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_write, b"\0")

    # -- the loop --------------------------------------------------------------------

    @property
    def _window(self) -> float:
        return self._ping_interval * self._liveness

    def run(self) -> None:
        """Serve until ``request_stop``; then stop the runs, say BYE and close."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        with self._wake_lock:
            self._wake_read, self._wake_write = read_end, write_end
        try:
            self._runner = self._make_runner(self._deliver)
            self._context = zmq.Context()
            self._waiting = [(read_end, zmq.POLLIN)]
            self._connect()
            if self._runner.inline:
                self._relay = Relay()
                for name in ("agent-1", "agent-2"):
                    threading.Thread(target=self._hold_loop, name=name, daemon=True).start()
                # The loop ends in one of them; a handler may still run in the other, which
                # is left to finish or to die with the process, as a pool thread's would.
                self._relay.wait()
            else:
                while not self._stop_requested:
                    self._turn()
        finally:
            self._shutdown()

    def _hold_loop(self) -> None:
        """One of the two threads of a relayed loop (``worker.relay``): serve while holding
        the loop, run a run's handler right after the turn that started it, and stand by
        when the other thread took the loop over meanwhile."""
        relay = self._relay
        assert relay is not None
        try:
            while relay.take():
                # Outcomes queued while the other thread held it, which woke nobody.
                self._flush_outcomes()
                while not self._stop_requested:
                    self._turn()
                    job, self._inline_job = self._inline_job, None
                    if job is not None:
                        if not self._run_inline(relay, job):
                            break  # taken over: stand by
                        self._flush_outcomes()
                        self._settle_acks()
                else:
                    relay.finish()
                    return
        except BaseException as exc:  # the loop's error, raised by run() in its thread
            relay.finish(exc)

    @staticmethod
    def _run_inline(relay: Relay, job: Callable[[], None]) -> bool:
        """Run a run on this thread; whether this thread still holds the loop after.

        A run's error is its own (the runner reports what a handler raises): one that
        escapes all the same must not end the loop, which the other thread may hold by now.
        """
        try:
            return relay.run_inline(job)
        except Exception:
            logger.exception("a run on the loop's thread failed")
            return relay.holds()

    def _turn(self) -> None:
        now = time.monotonic()
        due = self._reconnect_at if self._socket is None else self._last_heard + self._window
        if self._drain_deadline is not None:
            due = min(due, self._drain_deadline)
        timeout = min(max(due - now, 0.0), MAX_POLL)
        woken = readable = False
        for item, _ in zmq.zmq_poll(self._waiting, math.ceil(timeout * 1000)):
            if item is self._socket:
                readable = True
            else:
                woken = True
        if woken:
            self._drain_wake_pipe()
        # After the drain and before the outcomes are read: whatever is queued from here on
        # writes a new byte, and whatever was queued before is read below.
        with self._wake_lock:
            self._wake_pending = False
        if readable:
            self._receive()
        self._flush_outcomes()
        if self._inline_job is None:  # else once its outcome is sent (``_hold_loop``)
            self._settle_acks()
        now = time.monotonic()
        if self._stop_requested:
            return
        if self._drain_requested and self._drained(now):
            self._stop_requested = True
            return
        if self._socket is None:
            if now >= self._reconnect_at:
                self._connect()
        elif now >= self._last_heard + self._window:
            self._lose_broker(now)

    def _drained(self, now: float) -> bool:
        """Drain: tell the broker, then wait until every run has finished and its outcome
        is acknowledged, or the grace is over."""
        assert self._runner is not None
        if self._drain_deadline is None:
            self._drain_deadline = now + self._drain_grace
            logger.info(
                "worker %s draining: %d runs get up to %g s to finish",
                self.worker_id, len(self._runner.running()), self._drain_grace,
            )  # fmt: skip
            if self._registered:
                self._send(Command.DRAIN)
        if not self._runner.running() and not self._unacked:
            return True
        return now >= self._drain_deadline

    def _drain_wake_pipe(self) -> None:
        # One read: a byte is written only while none is pending (``_wake``), so the pipe
        # holds one at most, and a second read, which would find it empty, cost a system
        # call and an exception for every run. A byte left over would only wake the loop
        # once more.
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)

    # -- connection ------------------------------------------------------------------

    def _connect(self) -> None:
        assert self._context is not None
        socket: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            self._curve.apply(socket)
        socket.connect(self.endpoint)
        self._socket = socket
        self._waiting.append((socket, zmq.POLLIN))
        self._last_heard = time.monotonic()
        logger.info("connecting to broker at %s as %s", self.endpoint, self.worker_id)
        self._send_ready()

    def _lose_broker(self, now: float) -> None:
        # The first try after losing a broker that had welcomed us is immediate: a restarted
        # broker holds our leases for one liveness window only, and the new socket's READY
        # waits in its queue until the broker binds again. Later tries back off.
        delay = 0.0 if self._registered else self._backoff
        # ZeroMQ never says that the broker's host name does not resolve; a lookup does.
        cause = endpoints.unresolved(self.endpoint)
        logger.warning(
            "no message from the broker at %s for %g s%s; reconnecting in %g s",
            self.endpoint,
            self._window,
            "" if cause is None else f": {cause}",
            delay,
        )
        self._close_socket(linger=0)
        self._reconnect_at = now + delay
        if delay:
            self._backoff = min(self._backoff * 2, self._backoff_max)

    def _close_socket(self, linger: int) -> None:
        if self._socket is None:
            return
        self._waiting = [entry for entry in self._waiting if entry[0] is not self._socket]
        self._socket.close(linger=linger)
        self._socket = None
        self._registered = False

    def _send(self, command: Command, body: dict[str, Any] | None = None) -> None:
        if self._socket is None:
            return
        try:
            send_frames(self._socket, protocol.pack(command, body))
        except zmq.Again:
            # Nothing is lost for good: outcomes stay until ACKed, READY is sent on reconnect.
            logger.debug("dropped %s: broker not reachable", command.name)

    def _send_ready(self) -> None:
        assert self._runner is not None
        self._settle_acks()  # what is acknowledged already is claimed no more
        self._registered = False
        self._ready_sent_at = time.monotonic()
        # Finished runs whose outcome is not yet acknowledged are claimed too: a lease the
        # READY leaves out is lost (requeued), and the DONE sent after WELCOME would then
        # arrive too late to count.
        held = dict.fromkeys([*self._runner.running(), *self._unacked])
        ready = messages.Ready(
            self.worker_id,
            self.slots,
            self.capabilities,
            self.resources,
            [RunKey(task_id, attempt) for task_id, attempt in held],
            self.host,
            self.pid,
            self.tags,
            self._session,
            adaptive_ping=True,
            acks_in_dispatch=True,
        )
        self._send(Command.READY, ready.to_body())

    # -- messages from the broker ----------------------------------------------------

    def _receive(self) -> None:
        """Handle what the broker sent, the poll having said something waits: whether more
        does is asked (``message_waits``) rather than found by a receive that raises
        ``zmq.Again``, which costs twice as much."""
        for i in range(RECEIVE_BATCH):
            if self._socket is None or self._inline_job is not None:
                return  # (a run to start on this thread: the rest waits for its outcome)
            if i and not message_waits(self._socket):
                return
            try:
                frames = receive_frames(self._socket)
            except zmq.Again:
                return
            # Any message is a sign of life, even one we cannot decode.
            self._last_heard = time.monotonic()
            try:
                self._handle(protocol.unpack(frames))
            except protocol.ProtocolError as exc:
                logger.warning("dropped malformed message from broker: %s", exc)
            except InvalidInput as exc:
                logger.warning("dropped malformed message from broker: %s", exc.description)
            except Exception:
                # A bug handling one message must not take the worker off the cluster.
                logger.exception("failed to handle a message from the broker")

    def _handle(self, message: protocol.Message) -> None:
        command, body = message.command, message.body
        if command is Command.PING:
            self._send(Command.PONG)
            # The broker says when its next PING comes (longer as the cluster grows): the
            # broker is presumed gone only after that many intervals of silence.
            interval = messages.Ping.decode(body).ping_interval
            if interval is not None:
                self._ping_interval = interval
        elif command is Command.DISPATCH:
            self._on_dispatch(body)
        elif command is Command.CANCEL:
            self._on_cancel(body)
        elif command is Command.ACK:
            self._on_ack(body)
        elif command is Command.WELCOME:
            self._on_welcome(body)
        elif command is Command.RESYNC:
            if self._registered or time.monotonic() - self._ready_sent_at > self._window:
                logger.info("broker asked to register again")
                self._send_ready()
            # else a READY is on its way already: a second one sent after the broker leased
            # us new work would leave that work out of its claims.
        else:
            logger.warning("ignored unexpected %s from broker", command.name)

    def _on_welcome(self, body: dict[str, Any]) -> None:
        welcome = messages.Welcome.decode(body)
        self._ping_interval = welcome.ping_interval
        self._liveness = welcome.liveness
        self._max_payload = welcome.max_payload
        self._registered = True
        self._backoff = self._backoff_initial
        logger.info(
            "%s with broker at %s as %s (ping every %g s, liveness %d)",
            "registered again" if self._ever_registered else "registered",
            self.endpoint,
            self.worker_id,
            self._ping_interval,
            self._liveness,
        )
        self._ever_registered = True
        if self._drain_deadline is not None:
            self._send(Command.DRAIN)  # registered again while draining: still taking nothing
        if self._unacked:
            self._send_done(list(self._unacked.values()))

    def _on_dispatch(self, body: dict[str, Any]) -> None:
        assert self._runner is not None
        if body.get("results") is not None:
            self._dispatch_acks.append(body)
        for entry in messages.Dispatch.decode(body):
            task_id, attempt = run = entry.task_id, entry.attempt
            if self._drain_deadline is not None:
                # Sent before the broker heard of the drain: given back at once, to run
                # elsewhere (a run reported cancelled unasked is requeued).
                self._deliver(Outcome(task_id, attempt, TaskStatus.CANCELLED))
                continue
            if run in self._unacked:
                self._settle_acks()  # as if read first: they may acknowledge this run
                if run in self._unacked:
                    logger.debug("task %s attempt %d already finished", task_id, attempt)
                    continue
            if isinstance(entry, messages.Unreadable):
                # Report it, or the lease would sit until the broker expires it.
                self._deliver(Outcome(task_id, attempt, TaskStatus.FAILED, error=entry.problem))
                continue
            if self._inline_job is None and self._relay is not None and self._relay.can_inline():
                # Run on this thread once the turn is over, if it gets the slot at once.
                self._inline_job = self._runner.start_inline(
                    task_id, attempt, entry.handler, entry.args, entry.timeout
                )
            else:
                self._runner.start(task_id, attempt, entry.handler, entry.args, entry.timeout)

    def _settle_acks(self) -> None:
        """Forget the outcomes the DISPATCHes read so far acknowledge."""
        bodies, self._dispatch_acks = self._dispatch_acks, []
        unacked = self._unacked
        for body in bodies:
            if _acks_held(body["results"], unacked):
                # The usual case: each names an outcome held, so each is a valid run.
                for task_id, attempt in body["results"]:
                    unacked.pop((task_id, attempt), None)
                continue
            try:
                for run in messages.Dispatch.acks_of(body):
                    self._unacked.pop(run, None)
            except InvalidInput as exc:  # the runs started; the outcomes wait for an ACK
                logger.warning("dropped the malformed acknowledgements of a DISPATCH: %s", exc)

    def _on_cancel(self, body: dict[str, Any]) -> None:
        assert self._runner is not None
        for task_id in messages.CancelRuns.decode(body).task_ids:
            self._runner.cancel(task_id)

    def _on_ack(self, body: dict[str, Any]) -> None:
        for run in messages.Ack.decode(body).runs:
            self._unacked.pop(run, None)

    # -- outcomes -----------------------------------------------------------------------

    def _flush_outcomes(self) -> None:
        fresh: list[Outcome] = []
        outcomes = self._outcomes
        # Only this thread takes from the queue: what ``empty`` says is there stays there
        # (and the ``queue.Empty`` a ``get_nowait`` raises at the end costs more than this).
        while not outcomes.empty():
            outcome = outcomes.get_nowait()
            self._unacked[outcome.task_id, outcome.attempt] = outcome
            fresh.append(outcome)
        # Before WELCOME they wait: the WELCOME handler sends every unacked outcome.
        if fresh and self._registered:
            self._send_done(fresh)

    def _send_done(self, outcomes: list[Outcome]) -> None:
        """Report outcomes, in DONEs of about ``DONE_BYTES`` of results each (the broker
        reads no frame much larger); a result over the broker's ``--max-payload`` is
        reported as a failed run instead."""
        limit = self._max_payload
        results: list[dict[str, Any]] = []
        size = 0
        for o in outcomes:
            error = o.error if o.error is None else o.error[:MAX_ERROR_LENGTH]
            result = o.result
            if limit and result is not None and len(result) > limit:
                outcome = messages.RunOutcome(o.key, o.status, result, error, o.traceback)
                entry = outcome.within(limit).to_body()
            else:
                entry = messages.RunOutcome.entry(
                    o.task_id, o.attempt, o.status, result, error, o.traceback
                )
            length = len(entry["result"] or b"")
            if results and size + length > DONE_BYTES:
                self._send(Command.DONE, messages.Done.body(results))
                results, size = [], 0
            results.append(entry)
            size += length
        if results:
            self._send(Command.DONE, messages.Done.body(results))

    # -- shutdown ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        logger.info("worker %s shutting down", self.worker_id)
        try:
            if self._runner is not None:
                # Runs in progress are dropped, not reported: BYE makes the broker requeue them.
                self._runner.shutdown()
            self._flush_outcomes()
            if self._socket is not None:
                if self._registered and self._unacked:
                    self._send_done(list(self._unacked.values()))
                self._send(Command.BYE)
                self._close_socket(linger=SHUTDOWN_LINGER_MS)
            if self._context is not None:
                self._context.term()
                self._context = None
        finally:
            with self._wake_lock:
                for fd in (self._wake_read, self._wake_write):
                    if fd >= 0:
                        os.close(fd)
                self._wake_read = self._wake_write = -1


def _acks_held(results: Any, unacked: dict[tuple[str, int], Outcome]) -> bool:
    """Whether ``results`` (a DISPATCH's) is a list of ``[task_id, attempt]`` pairs each of
    which names an outcome in ``unacked``: it needs no other check then (an entry that
    fails this is checked by ``Dispatch.acks_of``, and named if it is malformed)."""
    if type(results) is not list:
        return False
    for item in results:
        if not (
            type(item) is list
            and len(item) == 2
            and type(item[0]) is str
            and type(item[1]) is int  # (not True, which would find attempt 1)
            and (item[0], item[1]) in unacked
        ):
            return False
    return True
