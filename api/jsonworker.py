"""The gunicorn worker class of the REST API: gevent, with read deadlines and JSON errors.

Gunicorn's gevent worker serves each connection in a greenlet, so a client that is slow,
idle or waiting (``?wait=``, an HTTP worker's long-poll) holds a greenlet and a socket,
never a thread, and the process serves up to ``worker_connections`` of them at once
(``api.serve.gunicorn_options``). The broker clients then wait by yielding to the other
greenlets (``api.clients``). This class adds what a slow client must not get around:

- the request line and headers must be in within the ``header_timeout`` setting
  (gunicorn's ``keepalive``, which the gevent worker enforces as one deadline);
- the body within ``body_timeout`` seconds once the headers are in: one
  deadline for the whole body, not for each read, so a byte every few seconds does not
  keep a connection forever (``DeadlineSocket``; ``api.parse`` answers 408);
- the open-files limit raised to its hard limit, so that a process can hold its
  ``worker_connections``.

Gunicorn answers some requests itself, before the app sees them: a request line longer
than ``limit_request_line`` (414), too many or too large headers (431), a request it
cannot parse (400). It writes those answers as HTML, and has no setting to change them
(benoitc/gunicorn#993); they all go through one function, ``gunicorn.util.write_error``,
called by ``Worker.handle_error`` with the status, reason and message gunicorn chose.
This class writes them as JSON with a ``title`` and a ``description``, like every error
of the app, by replacing that function in its own process once forked: it keeps
gunicorn's limits, its choice of status and its logging, and changes only the body.

This module must never be imported by the app or change anything at import time: only
gunicorn loads it, by name, and the changes are made in ``init_process``.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from typing import Any

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

if not callable(getattr(util, "write_error", None)):
    # A gunicorn that no longer writes its errors through this function would answer
    # HTML again: better that the server refuse to start.
    raise ImportError("gunicorn.util.write_error is gone: see api/jsonworker.py")


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error``, with the same arguments, writing a JSON body."""
    body = json.dumps({"title": reason, "description": mesg or reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


#: The body timeout when ``api.serve`` gave none (gunicorn run without its options).
BODY_TIMEOUT = 10.0


class DeadlineSocket:
    """A connection whose reads end at ``deadline`` (``time.monotonic``; None: no deadline),
    raising ``TimeoutError``, and whose writes each take at most ``send_timeout`` seconds.

    Everything else is the socket's own. Gunicorn reads requests and writes answers
    through ``recv`` and ``sendall`` only.
    """

    def __init__(self, sock: socket.socket, send_timeout: float) -> None:
        self._sock = sock
        self.send_timeout = send_timeout
        self.deadline: float | None = None

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.deadline is None:
            self._sock.settimeout(None)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request body took too long")
            self._sock.settimeout(left)
        return self._sock.recv(size, flags)

    def sendall(self, data: bytes, flags: int = 0) -> None:
        self._sock.settimeout(self.send_timeout)
        self._sock.sendall(data, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to the hard one: each connection is a
    file, and the usual soft limit (1,024) is below ``worker_connections``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class JSONErrorWorker(GeventWorker):  # type: ignore[misc]
    """Gunicorn's ``gevent`` worker with read deadlines, answering its own errors in JSON."""

    #: Set by ``api.serve.body_timeout`` after the fork.
    body_timeout = BODY_TIMEOUT

    def init_process(self) -> None:
        # After the fork, in this worker process alone, before it serves anything.
        #: Connections between two requests (or before their first): what a graceful stop
        #: closes at once rather than wait up to ``header_timeout`` for each.
        self.idle: set[DeadlineSocket] = set()
        util.write_error = write_json_error
        raise_open_files_limit()
        super().init_process()

    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        sock = DeadlineSocket(client, self.body_timeout)
        self.idle.add(sock)
        try:
            super().handle(listener, sock, addr)
        finally:
            self.idle.discard(sock)

    def handle_request(self, listener_name: Any, req: Any, sock: DeadlineSocket, addr: Any) -> None:
        # The headers are in (within header_timeout): the body has body_timeout from now.
        self.idle.discard(sock)
        sock.deadline = time.monotonic() + self.body_timeout
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            sock.deadline = None
            self.idle.add(sock)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: a graceful stop. Requests under way finish (a long wait included); a
        connection waiting for its next request is closed now, as the threaded worker did,
        so that an idle keep-alive client does not hold the stop for ``header_timeout``."""
        super().handle_exit(sig, frame)
        for sock in list(self.idle):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
