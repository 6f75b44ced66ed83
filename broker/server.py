"""The broker's socket loop: decode frames, call the core, commit, then answer.

One ROUTER socket serves workers and clients alike. Each loop turn drains the
messages waiting on the socket and lets the core decide. What the turn produced
falls in two kinds:

- promises (replies to clients, ACKs of worker outcomes) go out only after every
  change made so far is committed: nothing is acknowledged before it is durable;
- commands (DISPATCH, CANCEL, PING, WELCOME, RESYNC) go out at once, before the
  commit: a worker starts a task while its lease is being written. A command
  promises nothing: if the broker dies before the commit, the restarted broker
  does not know the lease, refuses the worker's claim and runs the task again.
  A completed run's slot takes its next run even before the completion is recorded
  (``Scheduler.report`` with ``early``; ``settle`` follows in the same turn, and before
  any message but a DONE is read).

The loop commits itself, between sending the commands and the promises: messages
that arrive during the fsync wait on the socket and make the next turn, so a
burst shares one commit (group commit). A turn that made changes but owes no
reply does not commit at once: its changes join the next turn's commit (a submit
whose reply waits for the task to finish is written once, finished), at most
``COMMIT_DELAY`` later; ACKs, which only let a worker forget outcomes, wait for
that commit too, and go out together, one per worker, ``ACK_DELAY`` after the first
outcome they answer (or at that commit, if later). A failed commit stops the broker
before anything it held is acknowledged. A large pipelined submit is not taken in within
the turn that reads it: it is queued (``broker.intake``) and taken in a slice at a time
after each turn's commands have gone out, so that no client's batch holds up the workers'
next tasks or other clients' answers. This module holds no scheduling logic, and nothing a
peer sends can make it raise.

With CURVE on (``--curve-secret``), each message comes with the ZAP ``User-Id`` of the
key that sent it (``broker.gate``), read off its first frame; what that key's role may
do is checked here, against ``broker.roles``, before the core sees the message. A plain
broker reads no ``User-Id`` and checks nothing but the roster's identity rule.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import zmq

from broker.core import IdentityTaken, Scheduler, Timing
from broker.intake import MAX_TASKS as MAX_INTAKE
from broker.intake import Intake
from broker.lifecycle import Outbox
from broker.operations import DEFERRED, perform
from broker.outflow import HIGH_WATER_MARK, Outflow
from broker.roles import Peer, may_act_as, may_request
from broker.store import Store
from broker.waiters import client_of
from common import curve, messages, ops, protocol
from common.errors import Forbidden, InvalidInput, SchedulerError, TooLarge
from common.logs import Throttled
from common.protocol import Command
from common.settings import Settings
from common.transport import message_waits, receive_frames

log = logging.getLogger(__name__)

#: Most messages handled in one loop turn before committing and sending.
MAX_MESSAGES_PER_TURN = 2000
#: Longest a loop turn takes messages in, in seconds, before it commits and answers: a
#: flood of costly requests leaves room for others' turns.
TURN_SECONDS = 0.025
#: Bytes of replies a turn packs, about: it takes no more messages in once its replies
#: hold this much, and sends no more than this (and one more reply) of the answers that
#: are due; the rest wait for the next turn, which comes at once.
TURN_REPLY_BYTES = 16 * 1024 * 1024
#: Longest time in seconds a turn takes in queued submits (``broker.intake``) while no
#: message waits on the socket, before it commits and answers.
INTAKE_SECONDS = 0.005
#: Tasks taken in from queued submits since the last commit from which a turn stops taking
#: in and commits them: a reply that another client waits for meanwhile shares a commit of at
#: most these rows (about 5 ms), not of every task taken in since the last commit.
INTAKE_COMMIT_TASKS = 512
#: Longest sleep of the loop in seconds: the resolution of liveness checks and pings.
MAX_POLL_SECONDS = 0.1
#: Longest time in seconds a change that nothing waits for stays uncommitted.
COMMIT_DELAY = 0.01
#: A client that still waits for at most this many outcomes of the tasks it watches gets
#: an outcome with a commit made for it at once (it likely waits for that one); one with
#: more in flight (a pipeline) gets its outcomes with the next commit, at most
#: ``COMMIT_DELAY`` later, so that a burst of outcomes shares one commit.
URGENT_OUTCOMES = 8
#: Longest time in seconds between a worker's outcome and its ACK, which is sent once the
#: outcome is committed: the ACKs of every outcome reported in that time go out together,
#: one per worker, rather than one after each commit (a worker needs an ACK only to forget
#: an outcome, and each one costs it a wake-up and the broker a send).
ACK_DELAY = 0.01
#: Longest time in seconds the ACKs of a full worker (every slot taken) whose READY said
#: ``acks_in_dispatch`` wait for a DISPATCH to that worker to carry them, before they go
#: alone: a worker that reports outcome after outcome gets a DISPATCH after each, and
#: needs no ACK of its own. A worker with a free slot may get no DISPATCH for a while: its
#: ACKs go as before.
ACK_HOLD = 1.0
#: Seconds between two rounds of pruning finished tasks past their retention.
PRUNE_INTERVAL = 1.0
#: Tasks submitted since the collector last had long-lived objects moved out of its sight
#: (gc.freeze) beyond which they are moved again. A full collection walks every object it
#: tracks, about 1.5 s with a million tasks held, stalling the loop; this bounds what it
#: walks to about this many tasks' objects.
FREEZE_AFTER = 100_000
#: Messages from one peer ZeroMQ queues for the loop before it stops reading that peer.
RECEIVE_HIGH_WATER_MARK = 1000
#: Largest frame a peer may send, at least: ZeroMQ drops the connection of a peer that sends
#: a larger one, before reading it. A task's args (``--max-payload``) and 16 MiB more fit.
MIN_FRAME_BYTES = 64 * 1024 * 1024
#: Bytes of outcomes one ``OUTCOME`` message carries, about (and one outcome more).
NOTICE_BYTES = 1024 * 1024
#: Distinct keys whose peer is kept, beyond which the cache starts over.
MAX_PEERS = 10_000

Frames = list[bytes]

#: Marker: a request failed, and its error is promised.
_FAILED: Any = object()


def timing_from(settings: Settings) -> Timing:
    return Timing(
        ping_interval=settings.ping_interval,
        liveness=settings.liveness,
        ping_rate=settings.ping_rate,
        http_liveness=settings.http_liveness,
        retry_backoff=settings.retry_backoff,
        retry_backoff_max=settings.retry_backoff_max,
        timeout_grace=settings.timeout_grace,
        retention=settings.retention,
        worker_retention=settings.worker_retention,
    )


def max_frame(settings: Settings) -> int:
    """The largest frame the broker reads from a peer."""
    return max(MIN_FRAME_BYTES, settings.max_payload + 16 * 1024 * 1024)


def listen(
    context: zmq.Context[Any],
    endpoint: str,
    curve_secret: str = "",
    max_frame: int = MIN_FRAME_BYTES,
) -> zmq.Socket[bytes]:
    """The broker's ROUTER socket, bound to ``endpoint`` (raises ``zmq.ZMQError`` when it
    cannot be, an address in use above all); a CURVE server with the key pair of
    ``curve_secret`` when given (its ZAP handler, ``broker.gate``, runs on ``context``)."""
    socket: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    socket.setsockopt(zmq.RCVHWM, RECEIVE_HIGH_WATER_MARK)
    socket.setsockopt(zmq.MAXMSGSIZE, max_frame)
    try:
        if curve_secret:
            curve.serve(socket, curve_secret)
        socket.bind(endpoint)
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


class BrokerServer:
    """The ROUTER loop around a ``Scheduler`` and a ``Store``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], float] = time.time,
        socket: zmq.Socket[bytes] | None = None,
    ) -> None:
        """``socket``: a ROUTER bound already (``listen``), for a caller that binds before it
        opens the store; ``bind`` binds one otherwise."""
        self.settings = settings
        self.store = store
        self.core = Scheduler(timing_from(settings))
        self.core.max_payload = settings.max_payload
        self.core.max_finished = settings.max_finished
        #: Seconds since the epoch: the core's ``now`` (tests pass a clock they move by hand).
        self.clock = clock
        self.started = clock()
        self._context = context or zmq.Context.instance()
        self._socket = socket
        self._stopping = threading.Event()
        #: Replies of this turn, by address, packed or not: sent once its changes are
        #: committed.
        self._promises: list[tuple[bytes, ops.Reply, Frames | None]] = []
        #: Bytes of the replies this turn packed.
        self._packed = 0
        #: Replies committed and due, not sent yet: what one turn did not get to.
        self._due: deque[tuple[bytes, ops.Reply, Frames | None]] = deque()
        self._outflow: Outflow | None = None
        #: The log of dropped messages: a line each, ten a second at most.
        self._dropped = Throttled(log)
        #: Outcomes to acknowledge once committed, by worker address (their commit is not
        #: hurried for them).
        self._acks: dict[bytes, list[messages.RunKey]] = {}
        #: When the first of ``_acks`` was reported (None: there is none).
        self._acks_since: float | None = None
        #: Outcomes committed, by worker address: one ACK each at ``_ack_due``.
        self._acked: dict[bytes, list[messages.RunKey]] = {}
        #: When the ACKs of ``_acked`` are due: ``ACK_DELAY`` after the first of them was
        #: reported (None: there is none).
        self._ack_due: float | None = None
        #: Outcomes committed of full workers that take ACKs in a DISPATCH, by address: the
        #: next DISPATCH to each carries them, or an ACK at ``_held_due``.
        self._held: dict[bytes, list[messages.RunKey]] = {}
        #: When the ACKs of ``_held`` go alone: ``ACK_HOLD`` after the first was held.
        self._held_due: float | None = None
        #: Outcomes for watchers, made but not committed yet (``URGENT_OUTCOMES``).
        self._notices: list[tuple[object, dict[str, Any]]] = []
        #: Large submits read and not taken in yet, taken in a slice at a time.
        self._intake = Intake()
        #: Whether this turn took tasks in: the next one comes at once, to schedule them.
        self._took_in = False
        #: Tasks taken in from queued submits since the last commit.
        self._taken_since_commit = 0
        #: WELCOME and RESYNC of this turn: sent at its end, before the commit.
        self._commands: list[Frames] = []
        #: When the oldest change that is not committed yet was made (None: there is none).
        self._dirty_since: float | None = None
        self._next_prune = 0.0
        self._frozen_at = 0
        self.endpoint = ""
        #: CURVE on: each message's key is read and its role checked.
        self._curve = False
        #: Peer of each ZAP User-Id seen (one per allowed key).
        self._peers: dict[str, Peer] = {}
        #: The core's counters and histograms (``broker.metrics``), fed here with what the
        #: loop sees: messages in and out, commits, turns and timers' lag.
        self.metrics = self.core.metrics

    def bind(self) -> str:
        """Bind the socket, then load the store; returns the bound endpoint.

        The socket first: a broker whose address is taken (another broker's, most likely)
        fails at once, before it reads the store. Messages that arrive while the store
        loads wait on the socket.
        """
        if self._socket is None:
            self._socket = listen(
                self._context,
                self.settings.broker,
                self.settings.curve_secret,
                max_frame(self.settings),
            )
        self._curve = self._socket.getsockopt(zmq.MECHANISM) == zmq.CURVE
        began = time.monotonic()
        # A million loaded tasks (a backlog) would make the collector walk them all, more
        # than once, while they load, and again at every full collection after: they are
        # moved out of its sight (gc.freeze), which does not keep reference counting from
        # freeing them when they finish and leave memory.
        gc.disable()
        try:
            tasks = self.store.load()
            workers = self.store.load_workers()
            self.core.load(tasks, self.clock(), workers, self.store)
        finally:
            gc.freeze()
            gc.enable()
        self._frozen_at = self.core.next_seq
        log.info("loaded %d unfinished tasks in %.2f s", len(tasks), time.monotonic() - began)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info(
            "broker listening on %s, %s", self.endpoint,
            "CURVE on: keys and roles checked" if self._curve else "plain mode: no keys checked",
        )  # fmt: skip
        return self.endpoint

    def stop(self) -> None:
        """Ask the loop to finish its turn and return (safe from signal handlers and threads)."""
        self._stopping.set()

    def run(self) -> None:
        if not self.endpoint:  # not bound and loaded yet
            self.bind()
        socket = self._socket
        assert socket is not None
        clean = False
        # zmq_poll on a list made once: ``Socket.poll`` makes and fills a ``Poller`` at
        # every call, which cost about as much again as the poll itself.
        waiting = [(socket, zmq.POLLIN)]
        try:
            turn = self.metrics.turn
            while not self._stopping.is_set():
                ready = zmq.zmq_poll(waiting, self._poll_timeout_ms())
                began = time.perf_counter()
                self._turn(socket, bool(ready))
                turn.observe(time.perf_counter() - began)
            clean = True
        finally:
            # Changes that no answer waited for yet: keep them, unless the store is failing.
            if clean and self.core.has_changes():
                self._commit()
            socket.close(linger=0)
            self.store.close()
            log.info("broker stopped")

    def _commit(self) -> None:
        """Make every change of the core durable, in one transaction of the store."""
        core = self.core
        workers, forgotten = core.take_workers()
        began = time.perf_counter()
        self.store.save(core.take_dirty(), core.take_pruned(), workers=workers, forgotten=forgotten)
        self.metrics.commit.observe(time.perf_counter() - began)
        self._taken_since_commit = 0
        core.evict()  # finished tasks committed: the store serves them from now on

    def _poll_timeout_ms(self) -> int:
        if self._due or self._intake or self._took_in:
            return 0
        # The earliest of the times the loop must wake at, if any: one clock read.
        wake = self.core.next_timer()
        if self._dirty_since is not None:
            commit = self._dirty_since + COMMIT_DELAY
            wake = commit if wake is None else min(wake, commit)
        if self._ack_due is not None:
            # Set once the outcomes are committed: the others wait for their commit above.
            wake = self._ack_due if wake is None else min(wake, self._ack_due)
        if self._held_due is not None:
            wake = self._held_due if wake is None else min(wake, self._held_due)
        if wake is None:
            return math.ceil(MAX_POLL_SECONDS * 1000)
        return math.ceil(min(MAX_POLL_SECONDS, max(0.0, wake - self.clock())) * 1000)

    def _turn(self, socket: zmq.Socket[bytes], ready: bool = True) -> None:
        """One turn: take in what waits on ``socket`` (``ready``: the poll said something
        does), then schedule, commit and answer.

        Whether another message waits is asked (``message_waits``) before each receive after
        the first: a receive that finds nothing raises ``zmq.Again``, which cost 4 us a
        turn and the question 2.4 (most turns take in one or two messages)."""
        ends = time.monotonic() + TURN_SECONDS
        for i in range(MAX_MESSAGES_PER_TURN):
            if not (ready if i == 0 else message_waits(socket)):
                break
            try:
                if self._curve:
                    frames, peer = self._receive_with_peer(socket)
                else:
                    frames, peer = receive_frames(socket), None
            except zmq.Again:
                break
            now = self.clock()
            try:
                self._handle(frames, now, peer)
            except Exception:  # never let one message take the broker down
                log.exception("error handling a message; dropped")
            if (
                self._packed >= TURN_REPLY_BYTES
                or self._intake.tasks >= MAX_INTAKE
                or time.monotonic() >= ends
            ):
                break
        now = self.clock()
        core = self.core
        early = None
        if core.completing:
            # The slots that completed runs freed take their next runs before the runs'
            # tasks are recorded completed: the workers start them meanwhile.
            core.schedule(now)
            early = core.take_outbox()
            self._send_runs(socket, early)
            core.settle()
        core.schedule(now)
        due = core.next_timer()
        if due is not None and due <= now:
            self.metrics.lag.observe(now - due)
        pings = core.tick(now)
        core.schedule(now)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            core.prune(now)  # a bounded batch: pruning never stalls scheduling
        if core.next_seq - self._frozen_at >= FREEZE_AFTER:
            self._freeze()
        # Commands first, before the commit: they promise nothing (see the module's doc).
        for address in pings:
            body = core.ping(address).to_body()
            self._send(socket, [address, *protocol.pack(Command.PING, body)])
        for message in self._commands:
            self._send(socket, message)
        self._commands = []
        outbox = core.take_outbox()
        self._send_runs(socket, outbox)
        if early is not None:  # (answers to HTTP workers' polls, say)
            outbox.replies[:0] = early.replies
            outbox.notices[:0] = early.notices
        self._took_in = bool(self._intake)
        if self._took_in:
            # After the runs went out: a worker starts its next task while submits come in.
            self._take_in(socket, now)
            later = core.take_outbox()
            self._send_runs(socket, later)
            outbox.replies += later.replies
            outbox.notices += later.notices
        promises = self._promises
        self._promises = []
        for token, value in outbox.replies:
            address, req_id = cast(tuple[bytes, int], token)
            promises.append((address, ops.Reply(req_id, value), None))
        notices = self._notices
        notices += outbox.notices
        self._packed = 0
        if core.has_changes():
            if self._dirty_since is None:
                self._dirty_since = now
            # (or the clock went back: waiting for it to catch up could take hours)
            delayed = self._dirty_since <= now < self._dirty_since + COMMIT_DELAY
            if (
                promises
                or not delayed
                or self._taken_since_commit >= INTAKE_COMMIT_TASKS
                or (outbox.notices and self._urgent(outbox.notices))
            ):
                self._dirty_since = None
                # Raises if the store fails: the loop stops and nothing here is sent.
                self._commit()
            else:
                # Nothing this turn made is owed to a client yet: the new ACKs wait for the
                # commit, and only what earlier turns committed goes out.
                self._send_acks(socket, now)
                self._send_due(socket)
                return
        # Every change so far is committed: so are the outcomes reported so far.
        if self._acks_since is not None:
            acked, held, worker_at = self._acked, self._held, core.worker_at
            for address, runs in self._acks.items():
                worker = worker_at(address)
                if (
                    worker is not None
                    and worker.acks_in_dispatch
                    and len(worker.running) >= worker.slots
                    and not worker.draining
                ):
                    held.setdefault(address, []).extend(runs)
                    if self._held_due is None:
                        self._held_due = now + ACK_HOLD
                else:  # with what it held: idle, it gets no DISPATCH soon
                    acked.setdefault(address, []).extend(held.pop(address, ()))
                    acked[address].extend(runs)
            self._acks = {}
            due = self._acks_since + ACK_DELAY
            self._ack_due = due if self._ack_due is None else min(self._ack_due, due)
            self._acks_since = None
        self._send_acks(socket, now)
        # Outcomes before replies: a client that reads a reply showing a task final has
        # read the task's OUTCOME already (docs/protocol.md).
        if notices:
            self._notices = []
            self._send_notices(socket, notices)
        self._due.extend(promises)
        self._send_due(socket)
        self._outflow_of(socket).sweep()

    def _send_runs(self, socket: zmq.Socket[bytes], outbox: Outbox) -> None:
        """Send the outbox's commands to workers: runs to stop, then runs to start."""
        for address, task_ids in outbox.cancel.items():
            body = messages.CancelRuns(task_ids).to_body()
            self._send(socket, [address, *protocol.pack(Command.CANCEL, body)])
        for address, entries in outbox.dispatch.items():
            body = messages.Dispatch(entries, self._acks_for(address)).to_body()
            self._send(socket, [address, *protocol.pack(Command.DISPATCH, body)])

    def _take_in(self, socket: zmq.Socket[bytes], now: float) -> None:
        """Take in queued submits a slice at a time, until none is left, a message waits on
        the socket, ``INTAKE_SECONDS`` passed or ``INTAKE_COMMIT_TASKS`` wait for a commit
        (one slice at least, and down to ``MAX_INTAKE`` tasks whatever waits); a submit
        wholly taken in is answered."""
        intake = self._intake
        ends = time.monotonic() + INTAKE_SECONDS
        while intake:
            piece = intake.take()
            self._taken_since_commit += len(piece.request.tasks)
            value = self._perform(piece.address, piece.req, piece.request, now)
            if value is _FAILED:
                intake.drop(piece)
            elif piece.request.separate:
                piece.entries += value["tasks"]
                if piece.last:
                    self._promise(piece.address, ops.Reply(piece.req, {"tasks": piece.entries}))
            elif value is not DEFERRED:
                self._promise(piece.address, ops.Reply(piece.req, value))
            if intake.tasks < MAX_INTAKE and (
                self._taken_since_commit >= INTAKE_COMMIT_TASKS
                or message_waits(socket)
                or time.monotonic() >= ends
            ):
                return

    def _acks_for(self, address: bytes) -> list[messages.RunKey]:
        """The committed outcomes of the worker at ``address`` that a DISPATCH to it may
        carry (none unless its READY said ``acks_in_dispatch``)."""
        runs = self._held.pop(address, [])
        if address in self._acked:
            worker = self.core.worker_at(address)
            if worker is not None and worker.acks_in_dispatch:
                runs += self._acked.pop(address)
        return runs

    def _send_acks(self, socket: zmq.Socket[bytes], now: float) -> None:
        """Send the ACKs of the committed outcomes once they are due, one per worker."""
        held_due = self._held_due
        if held_due is not None and not held_due - ACK_HOLD <= now < held_due:
            self._held_due = None
            for address, runs in self._held.items():
                self._send_ack(socket, address, runs)
            self._held = {}
        due = self._ack_due
        if due is None or due - ACK_DELAY <= now < due:  # not due, unless the clock went back
            return
        for address, runs in self._acked.items():
            self._send_ack(socket, address, runs)
        self._acked = {}
        self._ack_due = None

    def _send_ack(
        self, socket: zmq.Socket[bytes], address: bytes, runs: list[messages.RunKey]
    ) -> None:
        self._send(socket, [address, *protocol.pack(Command.ACK, messages.Ack(runs).to_body())])

    def _freeze(self) -> None:
        """Move the objects that survived so far out of the collector's sight.

        Tasks hold no reference cycles, so a frozen task is still freed by reference
        counting when it leaves memory. A garbage cycle that
        is frozen is kept for good: the young collection first clears those not yet in
        the oldest generation, and the broker makes none on purpose.
        """
        self._frozen_at = self.core.next_seq
        gc.collect(1)
        gc.freeze()

    def _outflow_of(self, socket: zmq.Socket[bytes]) -> Outflow:
        if self._outflow is None or self._outflow.socket is not socket:
            self._outflow = Outflow(socket)
        return self._outflow

    def _send(self, socket: zmq.Socket[bytes], frames: Frames) -> None:
        try:
            self._outflow_of(socket).send(frames)
        except zmq.ZMQError as exc:  # peer gone or its queue full: it will resync
            log.debug("send failed: %s", exc)
            return
        sent, command = self.metrics.sent, frames[2]  # [address, signature, command, body]
        if command in sent:  # always, for frames protocol made; never a KeyError here
            sent[command] += 1

    def _send_due(self, socket: zmq.Socket[bytes]) -> None:
        """Send the committed replies that are due, about ``TURN_REPLY_BYTES`` of them (a
        deferred answer is packed now); a large one goes as a short error instead while its
        peer, or every peer, has too much unread on the broker already."""
        outflow = self._outflow_of(socket)
        due = self._due
        sent = 0
        while due and sent < TURN_REPLY_BYTES:
            address, answer, frames = due.popleft()
            if frames is None:
                if outflow.queued(address) >= outflow.peer_bytes:
                    # Not even packed: a peer this far behind gets errors until it reads.
                    self._send(socket, self._refusal(outflow, address, answer.req))
                    continue
                frames = [address, *protocol.reply(answer)]
            size = len(frames[-1])
            sent += size
            if size >= outflow.track_bytes and outflow.over(address):
                frames = self._refusal(outflow, address, answer.req)
            self._send(socket, frames)

    def _urgent(self, notices: list[tuple[object, dict[str, Any]]]) -> bool:
        """Whether a client of these outcomes waits for few enough (``URGENT_OUTCOMES``)
        that it likely waits for one of them now."""
        watched_by = self.core.deferred.watched_by
        return any(watched_by(client_of(token)) <= URGENT_OUTCOMES for token, _ in notices)

    def _send_notices(
        self, socket: zmq.Socket[bytes], notices: list[tuple[object, dict[str, Any]]]
    ) -> None:
        """Send the committed outcomes of watched tasks, one ``OUTCOME`` for each client of
        about ``NOTICE_BYTES`` at most (and one outcome more); a large one is left out while
        its client has too much unread on the broker: the client still has ``wait``."""
        by_address: dict[bytes, list[dict[str, Any]]] = {}
        for token, outcome in notices:
            address = cast(tuple[bytes, int], token)[0]
            by_address.setdefault(address, []).append(outcome)
        outflow = self._outflow_of(socket)
        for address, outcomes in by_address.items():
            start, size = 0, 0
            for i, outcome in enumerate(outcomes):
                size += len(outcome["result"] or b"") + len(outcome["error"] or "") + 64
                if size >= NOTICE_BYTES or i == len(outcomes) - 1:
                    frames = [address, *protocol.outcomes(ops.Outcomes(outcomes[start : i + 1]))]
                    if len(frames[-1]) >= outflow.track_bytes and outflow.over(address):
                        self.core.refused_replies += 1
                    else:
                        self._send(socket, frames)
                    start, size = i + 1, 0

    def _refusal(self, outflow: Outflow, address: bytes, req: int) -> Frames:
        """The reply to request ``req`` of a peer whose replies are not read fast enough."""
        queued = outflow.queued(address)
        description = (
            f"the broker holds {queued} bytes of replies you have not read"
            if queued >= outflow.peer_bytes
            else "the broker holds too many bytes of replies its peers have not read"
        )
        self.core.refused_replies += 1
        error = ops.ErrorInfo(TooLarge.status, "Replies not read", description)
        return [address, *protocol.reply(ops.Reply(req, error=error))]

    def _promise(self, address: bytes, answer: ops.Reply) -> None:
        """Send once this turn's changes are committed (packed now: the turn counts its
        replies' bytes)."""
        frames = [address, *protocol.reply(answer)]
        self._packed += len(frames[-1])
        self._promises.append((address, answer, frames))

    def _command(self, address: bytes, frames: Frames) -> None:
        """Send at the end of this turn, before its commit."""
        self._commands.append([address, *frames])

    # -- decoding -------------------------------------------------------------------

    def _receive_with_peer(self, socket: zmq.Socket[bytes]) -> tuple[Frames, Peer]:
        """One message and the key it came with (raises ``zmq.Again`` when none waits).

        Taken as ``receive_frames`` takes it, frame by frame without copying: the first
        frame also says which key sent it (its ``User-Id``)."""
        frame = socket.recv(zmq.NOBLOCK, copy=False)
        try:
            user = str(frame.get("User-Id"))
        except zmq.ZMQError:  # no ZAP handler answered for this connection
            user = ":"
        frames = [frame.bytes]
        while frame.more:
            frame = socket.recv(zmq.NOBLOCK, copy=False)
            frames.append(frame.bytes)
        peer = self._peers.get(user)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                self._peers.clear()
            peer = self._peers[user] = Peer.of(user)
        return frames, peer

    def _handle(self, frames: Frames, now: float, peer: Peer | None = None) -> None:
        if len(frames) < 2:
            return
        address, payload = frames[0], frames[1:]
        try:
            message = protocol.unpack(payload)
        except protocol.ProtocolError as exc:
            self._dropped.warning("dropped malformed message: %s", exc)
            return
        command, body = message.command, message.body
        self.metrics.received[command.value] += 1
        if command is not Command.DONE and self.core.completing:
            self.core.settle()  # what came before this message is recorded before it is read
        if command is Command.REQUEST:
            self._request(address, body, now, peer)
        elif command is Command.READY:
            self._ready(address, body, now, peer)
        elif command in (Command.PONG, Command.DONE, Command.DRAIN, Command.BYE):
            self._from_worker(address, command, body, now, peer)
        else:
            self._dropped.warning("dropped %s: not a message a peer sends", command.name)

    def _ready(self, address: bytes, body: dict[str, Any], now: float, peer: Peer | None) -> None:
        try:
            ready = messages.Ready.decode(body)
            if peer is not None and not may_act_as(peer, Command.READY, ready.id):
                raise Forbidden(f"key {peer.name!r} ({peer.role or 'no role'}) is not {ready.id}")
            worker = self.core.register(address, ready, now)
        except IdentityTaken as exc:
            self._drop(Command.READY, exc, quiet=True)  # the core logged it, once
            return
        except SchedulerError as exc:
            self._drop(Command.READY, exc)
            return
        timing = self.core.timing
        welcome = messages.Welcome(
            worker.id, worker.interval, timing.liveness, self.settings.max_payload
        )
        self._command(address, protocol.pack(Command.WELCOME, welcome.to_body()))

    def _from_worker(
        self, address: bytes, command: Command, body: dict[str, Any], now: float, peer: Peer | None
    ) -> None:
        worker = self.core.worker_at(address)
        if worker is None:
            if command is not Command.BYE:
                self._command(address, protocol.pack(Command.RESYNC))
            return
        if peer is not None and not may_act_as(peer, command, worker.id):
            self._drop(command, Forbidden(f"key {peer.name!r} is not {worker.id}"))
            return
        self.core.seen(worker, now)
        if command is Command.DONE:
            try:
                done = messages.Done.decode(body)
            except SchedulerError as exc:
                self._drop(Command.DONE, exc, worker.id)
                return
            limit = self.settings.max_payload
            done.results = [outcome.within(limit) for outcome in done.results]
            # A worker keeps its outcomes until ACKed and needs nothing else from the ACK,
            # so ACKs wait for a commit that something else needs, or at most COMMIT_DELAY,
            # and go out together, ACK_DELAY after the first outcome.
            runs = self.core.report(worker, done.results, now, early=True)
            self._acks.setdefault(address, []).extend(runs)
            if self._acks_since is None:
                self._acks_since = now
        elif command is Command.DRAIN:
            self.core.drain(worker, now)
        elif command is Command.BYE:
            log.info("worker %s said goodbye", worker.id, extra={"worker_id": worker.id})
            self.core.goodbye(worker, now)

    def _check_payloads(self, request: ops.Request) -> None:
        """Refuse a request that carries args or a result over ``--max-payload``: the store
        is never asked to write a value it cannot, nor a reply to carry one."""
        limit = self.settings.max_payload
        if isinstance(request, ops.Submit) and not request.separate:  # the core checks each
            for i, spec in enumerate(request.tasks):
                if len(spec.args) > limit:
                    where = f"tasks[{i}].args" if len(request.tasks) > 1 else "args"
                    raise TooLarge(f"{where} is {len(spec.args)} bytes, more than {limit}")
        elif (
            isinstance(request, ops.HttpComplete)
            and request.result is not None
            and len(request.result) > limit
        ):
            raise TooLarge(f"result is {len(request.result)} bytes, more than {limit}")

    def _drop(
        self, command: Command, exc: SchedulerError, sender: str = "", quiet: bool = False
    ) -> None:
        """A one-way message that breaks the protocol: never acted on, counted."""
        self.core.dropped_messages += 1
        (log.debug if quiet else self._dropped.warning)(
            "dropped %s%s: %s", command.name, f" from {sender}" if sender else "",
            exc.description,
        )  # fmt: skip

    def _request(self, address: bytes, body: dict[str, Any], now: float, peer: Peer | None) -> None:
        req = ops.request_number(body)
        if req is None:
            self._drop(Command.REQUEST, InvalidInput("req must be a request number"))
            return
        try:
            request = ops.decode_request(body)
            if peer is not None and not may_request(peer, request.OP):
                raise Forbidden(f"a {peer.role or 'role-less'} key may not {request.OP.value}")
            self._check_payloads(request)
        except Exception as exc:
            self._promise_error(address, req, exc, body.get("op"))
            return
        if self._intake.wants(address, request):
            self._intake.add(address, req, cast(ops.Submit, request))
            return
        value = self._perform(address, req, request, now)
        if value is not DEFERRED and value is not _FAILED:
            self._promise(address, ops.Reply(req, value))

    def _perform(self, address: bytes, req: int, request: ops.Request, now: float) -> Any:
        """Run a request; returns its reply's value, ``DEFERRED``, or ``_FAILED`` once its
        error is promised."""
        try:
            return perform(self.core, request, (address, req), now, self.started)
        except Exception as exc:
            self._promise_error(address, req, exc, request.OP.value)
            return _FAILED

    def _promise_error(self, address: bytes, req: int, exc: Exception, op: object) -> None:
        """Answer a request with the error it met: a ``SchedulerError`` as it says, anything
        else as the broker's bug (500, logged)."""
        if isinstance(exc, SchedulerError):
            error = ops.ErrorInfo.of(exc)
        else:
            log.error("request %r failed", op, exc_info=exc)
            error = ops.ErrorInfo(500, "Internal error", "the broker hit a bug")
        self._promise(address, ops.Reply(req, error=error))
