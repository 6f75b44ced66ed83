"""What every client of the broker does with its DEALER socket, whatever drives it.

The synchronous client (``common.client``) and the asyncio one (``common.aio``) read their
settings, set up their socket, encode their requests and read what comes back the same
way: through these functions. Nothing here waits or keeps state: each client owns its
socket and decides when to send and receive.
"""

from __future__ import annotations

from typing import Any, TypeVar

import zmq

from common import endpoints, ops, protocol, settings
from common.curve import ClientKeys
from common.errors import InvalidInput

S = TypeVar("S", bound=zmq.Socket[Any])


def resolve(
    endpoint: str | None, timeout: float | None, curve: ClientKeys | None
) -> tuple[str, float, ClientKeys | None]:
    """The broker's endpoint, the seconds to wait for an answer and the CURVE keys: those
    given, the settings of the environment for those not (``ZMQS_BROKER``,
    ``ZMQS_REQUEST_TIMEOUT``, ``ZMQS_CURVE_SERVER_KEY`` and ``ZMQS_CURVE_SECRET``).
    A malformed ``ZMQS_`` variable is a ``ValueError``: a library does not exit."""
    if endpoint is None or timeout is None or curve is None:
        try:
            given = settings.load()
        except SystemExit as exc:
            raise ValueError(str(exc)) from None
        endpoint = given.broker if endpoint is None else endpoint
        timeout = given.request_timeout if timeout is None else timeout
        if curve is None:
            curve = ClientKeys.load(given.curve_server_key, given.curve_secret)
    return endpoint, timeout, curve


def connect(socket: S, endpoint: str, curve: ClientKeys | None) -> S:
    """``socket`` (a new DEALER) set up as a client's and connected to ``endpoint``."""
    socket.setsockopt(zmq.LINGER, 0)
    # Queue nothing for a broker that is not connected: a send then waits
    # (bounded by the call's timeout) instead of piling up requests.
    socket.setsockopt(zmq.IMMEDIATE, 1)
    if curve is not None:
        curve.apply(socket)
    socket.connect(endpoint)
    return socket


def limit(timeout: float, op: ops.Op, args: dict[str, Any]) -> float:
    """Seconds to wait for the answer to a request: ``timeout``, plus the time the broker
    may hold it (a wait's own timeout)."""
    return timeout + ops.holds(op, args)


def encode(req: int, op: ops.Op, args: dict[str, Any]) -> list[bytes]:
    """The frames of request ``req``. Arguments that cannot even be encoded are checked
    with the broker's own checks, so that the error names the field (``InvalidInput``)."""
    try:
        return protocol.request(req, op, args)
    except (TypeError, ValueError, OverflowError) as exc:  # msgpack cannot encode a value
        ops.decode_args(op.value, args)  # raises InvalidInput naming the field
        raise InvalidInput(f"the arguments of {op.value} cannot be sent: {exc}") from None


def read(frames: list[bytes]) -> ops.Reply | ops.Outcomes | None:
    """A message from the broker: a reply, outcomes sent unasked, or None for one that a
    client cannot read (dropped: nothing answers it)."""
    try:
        message = protocol.unpack(frames)
        if message.command is protocol.Command.REPLY:
            return ops.Reply.decode(message.body)
        if message.command is protocol.Command.OUTCOME:
            return ops.Outcomes.decode(message.body)
    except (protocol.ProtocolError, InvalidInput):
        pass
    return None


def unreachable(endpoint: str) -> str:
    """What ``Unavailable`` says when a request could not leave."""
    return why(endpoint, f"broker at {endpoint} is not reachable")


def unanswered(endpoint: str, limit: float) -> str:
    """What ``Unavailable`` says when a request left and no answer came in time."""
    return why(endpoint, f"broker at {endpoint} did not answer within {limit:g} s")


def why(endpoint: str, problem: str) -> str:
    """``problem``, and that the broker's host name does not resolve when it does not:
    ZeroMQ never says so, and the name is the likeliest mistake in an endpoint."""
    cause = endpoints.unresolved(endpoint)
    return problem if cause is None else f"{problem}: {cause}"
