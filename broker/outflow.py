"""What the broker has handed ZeroMQ to send and ZeroMQ has not written yet, per peer.

ZeroMQ bounds a peer's send queue in messages (the high-water mark), not in bytes: a
peer that never reads its replies would let one 8 MiB reply after another pile up in the
broker. So every message of at least ``TRACK_BYTES`` is sent with a tracker, which says
when ZeroMQ has written it to the connection (or dropped it with a peer that left), and
its bytes count against its peer until then. Smaller messages are bounded by the
high-water mark alone: at most ``HIGH_WATER_MARK * TRACK_BYTES`` a peer.

The socket loop asks ``over`` before it sends a large reply: a peer whose unwritten
messages hold ``PEER_BYTES`` or more, or any peer while all of them hold ``TOTAL_BYTES``,
gets a short error instead (its request is answered, and the answer costs nothing).
Commands to workers (``DISPATCH``) are counted but never replaced.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import zmq

from common.transport import send_frames

#: Messages of at least this many bytes are tracked until written.
TRACK_BYTES = 16 * 1024
#: Messages a peer's socket may queue on the broker before ZeroMQ drops more.
HIGH_WATER_MARK = 10_000
#: Unwritten tracked bytes of one peer from which its replies are refused.
PEER_BYTES = 64 * 1024 * 1024
#: Unwritten tracked bytes of all peers together from which every large reply is refused.
TOTAL_BYTES = 1024 * 1024 * 1024

#: Least seconds between two walks of every peer's queue to learn what was written.
SWEEP_INTERVAL = 0.1

_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)


class Outflow:
    """Sends messages on the broker's ROUTER socket, counting the unwritten large ones."""

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        peer_bytes: int = PEER_BYTES,
        total_bytes: int = TOTAL_BYTES,
        track_bytes: int = TRACK_BYTES,
    ) -> None:
        self.socket = socket
        # pyzmq copies a message smaller than this despite copy=False, and its tracker is
        # then done at once: every message from TRACK_BYTES up must be sent uncopied.
        socket.copy_threshold = track_bytes
        self.peer_bytes = peer_bytes
        self.total_bytes = total_bytes
        self.track_bytes = track_bytes
        #: Peer address -> its tracked messages not known to be written, oldest first.
        self._queued: dict[bytes, deque[tuple[zmq.MessageTracker, int]]] = {}
        self._bytes: dict[bytes, int] = {}
        #: The sum of ``_bytes``.
        self.total = 0
        self._swept = 0.0

    def send(self, frames: Sequence[bytes]) -> None:
        """Queue ``[address, *message]`` (raises ``zmq.ZMQError`` as ``send_frames``)."""
        size = len(frames[-1])
        if size < self.track_bytes:
            send_frames(self.socket, frames)
            return
        socket = self.socket
        last = len(frames) - 1
        for i in range(last):
            socket.send(frames[i], _MORE)
        # Not copied: ZeroMQ sends the bytes object itself, and says when it is done.
        tracker = socket.send(frames[last], _LAST, copy=False, track=True)
        address = frames[0]
        self._queued.setdefault(address, deque()).append((tracker, size))
        self._bytes[address] = self._bytes.get(address, 0) + size
        self.total += size

    def queued(self, address: bytes) -> int:
        """Bytes of tracked messages to this peer that ZeroMQ has not written yet."""
        entries = self._queued.get(address)
        if entries is None:
            return 0
        written = 0
        while entries and entries[0][0].done:
            written += entries.popleft()[1]
        if written:
            self.total -= written
            self._bytes[address] -= written
        if not entries:
            del self._queued[address]
            return self._bytes.pop(address)  # zero
        return self._bytes[address]

    def over(self, address: bytes) -> bool:
        """Whether a large message to this peer should be refused now: its own unwritten
        bytes, or everyone's, are at their bound."""
        if self.queued(address) >= self.peer_bytes:
            return True
        if self.total >= self.total_bytes:
            self.sweep()
        return self.total >= self.total_bytes

    def sweep(self) -> None:
        """Forget what has been written to every peer, at most every ``SWEEP_INTERVAL``: a
        peer that left after a large reply would otherwise keep its entry, and the tracker
        its message, until a message to the same address. The socket loop calls it every
        turn."""
        now = time.monotonic()
        if now - self._swept < SWEEP_INTERVAL:
            return
        self._swept = now
        for peer in list(self._queued):
            self.queued(peer)
