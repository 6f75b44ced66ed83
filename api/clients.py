"""The API's broker clients: a pool per process, each client lent for one call at a time.

Under gunicorn the API serves each connection in a greenlet (``api.jsonworker``), so a
request waiting on the broker (``?wait=``, an HTTP worker's long-poll) costs a greenlet
and a socket, not a thread. The pool's sockets are then ``zmq.green``'s, which wait by
yielding to the other greenlets; in a process that gevent has not patched (the app in a
test, or under a threaded server) they are plain pyzmq sockets. A ZeroMQ socket serves
one caller at a time, so a call borrows an idle client or makes one, and gives it back;
the pool keeps at most ``MAX_IDLE`` idle ones (a burst of long waits does not leave
hundreds of sockets open).

This module must never open a socket before the first call: gunicorn forks after the
app is built, and ZeroMQ sockets and contexts do not survive a fork.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from common.client import Client
from common.curve import ClientKeys
from common.ops import Op
from common.settings import Settings

#: Idle clients a process keeps for later calls; the rest are closed when given back.
MAX_IDLE = 32


def green() -> bool:
    """Whether gevent has patched this process's sockets (gunicorn's gevent worker does)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def context() -> zmq.Context[Any]:
    """A ZeroMQ context whose sockets suit this process: a new green one under gevent
    (``green_context``), else the process's shared one (``common.client``'s default)."""
    if green():
        return green_context()
    return zmq.Context.instance()


def green_context() -> zmq.Context[Any]:
    """A ``zmq.green`` context whose sockets' ``poll`` waits on the hub, as their ``recv``
    does.

    ``zmq.green``'s own ``poll`` calls ``select``, which refuses a file descriptor past
    1,023: a client made while the process holds a thousand connections would fail every
    call (``common.client.Client`` polls before each receive).
    """
    import gevent.socket  # only a green process imports gevent
    import zmq.green as zmq_green

    # Not generic at run time, unlike zmq.Socket and zmq.Context.
    green_socket: Any = zmq_green.Socket
    green_ctx: Any = zmq_green.Context

    class Socket(green_socket):  # type: ignore[misc]
        def poll(self, timeout: int | None = None, flags: int = zmq.POLLIN) -> int:
            deadline = None if timeout is None else time.monotonic() + timeout / 1000
            while True:
                ready = int(self.getsockopt(zmq.EVENTS)) & int(flags)
                if ready:
                    return ready
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return 0
                # ZMQ_FD turns readable when the socket's events change, and stays so until
                # they are read again: nothing can slip in between the check and the wait.
                with contextlib.suppress(TimeoutError):
                    gevent.socket.wait_read(self.getsockopt(zmq.FD), timeout=left)

    class Context(green_ctx):  # type: ignore[misc]
        _socket_class = Socket

    made: zmq.Context[Any] = Context()
    return made


class ClientPool:
    """Broker clients for many concurrent callers (greenlets or threads), one call each."""

    def __init__(self, settings: Settings, max_idle: int = MAX_IDLE) -> None:
        self.endpoint = settings.broker
        self.timeout = settings.request_timeout
        #: The CURVE keys of the settings (read once, here), when they are given.
        self.keys = ClientKeys.load(settings.curve_server_key, settings.curve_secret)
        self.max_idle = max_idle
        self._context: zmq.Context[Any] | None = None
        self._idle: list[Client] = []

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        """``Client.request`` on an idle client, or a new one if none is idle."""
        client = self._borrow()
        try:
            return client.request(op, args, timeout)
        finally:
            # Reusable whatever happened: a reply that comes after its call timed out is
            # told apart by its request number, and dropped by the next call.
            self._give_back(client)

    def _borrow(self) -> Client:
        try:
            return self._idle.pop()  # atomic: no lock needed between threads either
        except IndexError:
            pass
        if self._context is None:
            self._context = context()
        return Client(self.endpoint, timeout=self.timeout, context=self._context, curve=self.keys)

    def _give_back(self, client: Client) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(client)
        else:
            client.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def pooled_clients(settings: Settings) -> Callable[[], ClientPool]:
    """A client factory for ``api.app.create_app``: the process's pool, made on first use."""
    pools: list[ClientPool] = []

    def get() -> ClientPool:
        if not pools:
            pools.append(ClientPool(settings))
        return pools[0]

    return get
