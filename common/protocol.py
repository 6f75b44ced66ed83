"""The wire protocol: the one module that packs and unpacks frames.

Every message between a peer (worker or client) and the broker is three
ZeroMQ frames after the ROUTER envelope:

    frame 0  signature   b"ZS1"  (protocol name and version)
    frame 1  command     ASCII, one of the ``Command`` values
    frame 2  body        a msgpack map

``docs/protocol.md`` lists every command with its body as a frame table, and
``common.messages`` and ``common.ops`` give each body its type. Nothing else in the
code base touches msgpack; nothing here touches sockets.
Decoding never raises anything but ``ProtocolError``, so a malformed frame
can be logged and dropped without killing the process that received it.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any, NamedTuple

import msgpack

from common.ops import Op, Outcomes, Reply, encode_request

#: Protocol signature and version, sent as the first frame of every message.
SIGNATURE = b"ZS1"


class Command(bytes, Enum):
    """Message kinds. The value is the second frame on the wire."""

    # worker -> broker
    #: Register (or re-register after a reconnect): id, slots, capabilities, resources, running.
    READY = b"READY"
    #: Answer to PING. Any message from a worker counts as a sign of life.
    PONG = b"PONG"
    #: Outcomes of one or more runs: results = [{task_id, attempt, status, result, error}].
    DONE = b"DONE"
    #: The worker is stopping: it takes nothing new and lets its runs finish, then says BYE.
    DRAIN = b"DRAIN"
    #: The worker is shutting down cleanly; its running tasks go back to the queue.
    BYE = b"BYE"

    # broker -> worker
    #: Registration accepted: worker_id, ping_interval, liveness.
    WELCOME = b"WELCOME"
    #: Liveness probe; the worker answers PONG.
    PING = b"PING"
    #: Run these: tasks = [{task_id, attempt, handler, args, timeout}].
    DISPATCH = b"DISPATCH"
    #: Stop these runs: task_ids = [...].
    CANCEL = b"CANCEL"
    #: These outcomes are committed: results = [[task_id, attempt], ...].
    ACK = b"ACK"
    #: The broker does not know this worker (restart, or declared offline): register again.
    RESYNC = b"RESYNC"

    # client -> broker
    #: A request: req (int, echoed in the reply), op (str), args (map).
    REQUEST = b"REQUEST"

    # broker -> client
    #: Answer to REQUEST: req, ok, and value (when ok) or error {status, title, description}.
    REPLY = b"REPLY"
    #: Unasked: outcomes of tasks the client watches (a submit with ``notify``), once
    #: committed: tasks = [{id, status, result, error}].
    OUTCOME = b"OUTCOME"


_COMMANDS = {c.value: c for c in Command}


class ProtocolError(ValueError):
    """A frame sequence that is not a valid message of this protocol."""


class Message(NamedTuple):
    """A decoded message: its command and its body (a tuple: made for every message read,
    at a third of a frozen dataclass's cost)."""

    command: Command
    body: dict[str, Any]


#: Bytes a message's packer starts with (it grows as a larger body needs). ``msgpack.packb``
#: starts each with 256 KiB, which cost more than packing a whole DONE or DISPATCH.
PACK_BUFFER = 1024


def pack(command: Command, body: dict[str, Any] | None = None) -> list[bytes]:
    """Encode a message as the frames to send (without any ROUTER envelope)."""
    packer = msgpack.Packer(use_bin_type=True, buf_size=PACK_BUFFER)
    data: bytes = packer.pack(body or {})
    # ``_value_``: what ``value`` returns, read without the enum's property.
    return [SIGNATURE, command._value_, data]


def unpack(frames: Sequence[bytes]) -> Message:
    """Decode the frames of one message (without any ROUTER envelope).

    Raises ``ProtocolError`` for anything that is not a valid message.
    """
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    signature, command, body = frames
    if bytes(signature) != SIGNATURE:
        raise ProtocolError(f"unsupported protocol signature {bytes(signature)[:16]!r}")
    try:
        cmd = _COMMANDS[bytes(command)]
    except KeyError:
        raise ProtocolError(f"unknown command {bytes(command)[:32]!r}") from None
    try:
        decoded = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"body is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(decoded, dict):
        raise ProtocolError("body is not a map")
    return Message(cmd, decoded)


def request(req: int, op: Op, args: dict[str, Any]) -> list[bytes]:
    """Frames of a client ``REQUEST``; raises what msgpack raises for a value it cannot
    encode (a ``TypeError``, ``ValueError`` or ``OverflowError``)."""
    return pack(Command.REQUEST, encode_request(req, op, args))


def reply(answer: Reply) -> list[bytes]:
    """Frames of a ``REPLY``."""
    return pack(Command.REPLY, answer.to_body())


def outcomes(notice: Outcomes) -> list[bytes]:
    """Frames of an ``OUTCOME``."""
    return pack(Command.OUTCOME, notice.to_body())
