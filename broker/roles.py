"""Who may do what at a CURVE broker: the peer a key makes, and the role table.

With CURVE on, every message reaches the broker with the ZAP ``User-Id`` of the key that
sent it, which ``broker.gate`` makes ``ROLE:NAME`` from the allow folder's certificate.
A request's op is allowed when the key's role is among the op's roles; a worker's
messages (READY, PONG, DONE, DRAIN, BYE) only as the worker id that is the key's name
(an admin key as any). Anything the table does not list is refused: deny by default.
Without CURVE there is no peer (None) and nothing is checked here; the identity rule of
the roster holds either way (``broker.core``).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.curve import Role
from common.ops import Op
from common.protocol import Command

_CLIENTS = frozenset({Role.CLIENT, Role.ADMIN})
_ADMINS = frozenset({Role.ADMIN})
_WORKERS = frozenset({Role.WORKER, Role.ADMIN})

#: The roles allowed each request op; an op missing here is refused to every key.
OP_ROLES: dict[Op, frozenset[Role]] = {
    Op.SUBMIT: _CLIENTS,
    Op.GET: _CLIENTS,
    Op.LIST: _CLIENTS,
    Op.CANCEL: _CLIENTS,
    Op.WAIT: _CLIENTS,
    Op.WAIT_MANY: _CLIENTS,
    Op.WORKERS: _CLIENTS,
    Op.WORKER: _CLIENTS,
    Op.HEALTH: _CLIENTS,
    Op.HTTP_REGISTER: _ADMINS,
    Op.HTTP_NEXT: _ADMINS,
    Op.HTTP_HEARTBEAT: _ADMINS,
    Op.HTTP_COMPLETE: _ADMINS,
    Op.RETRY: _CLIENTS,
    Op.PURGE: _ADMINS,
    Op.DRAIN: _ADMINS,
    Op.STATS: _CLIENTS,
}

#: The roles allowed each one-way worker message, besides its name binding.
COMMAND_ROLES: dict[Command, frozenset[Role]] = {
    Command.READY: _WORKERS,
    Command.PONG: _WORKERS,
    Command.DONE: _WORKERS,
    Command.DRAIN: _WORKERS,
    Command.BYE: _WORKERS,
}


@dataclass(frozen=True, slots=True)
class Peer:
    """The key a message came with: its name and its role (empty: a key naming none)."""

    name: str
    role: str

    @classmethod
    def of(cls, user_id: str) -> Peer:
        """From a ZAP ``User-Id``, ``ROLE:NAME`` (a role holds no colon; a name may)."""
        role, _, name = user_id.partition(":")
        return cls(name, role)


def may_request(peer: Peer, op: Op) -> bool:
    """Whether this key may make a request of ``op``."""
    return peer.role in OP_ROLES.get(op, ())


def may_act_as(peer: Peer, command: Command, worker_id: str) -> bool:
    """Whether this key may send ``command`` as the worker ``worker_id``."""
    if peer.role not in COMMAND_ROLES.get(command, ()):
        return False
    return peer.role == Role.ADMIN or peer.name == worker_id
