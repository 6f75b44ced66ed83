"""The gunicorn worker class of the REST API: gthread, whose own error answers are JSON.

Gunicorn answers some requests itself, before the app sees them: a request line longer
than ``limit_request_line`` (414), too many or too large headers (431), a request it
cannot parse (400). It writes those answers as HTML, and has no setting to change them
(benoitc/gunicorn#993); they all go through one function, ``gunicorn.util.write_error``,
called by ``Worker.handle_error`` with the status, reason and message gunicorn chose.
This worker class, named by ``api.serve.gunicorn_options``, writes them as JSON with a
``title`` and a ``description``, like every error of the app, by replacing that function
in its own process once forked: it keeps gunicorn's limits, its choice of status and its
logging, and changes only the body. Raising the limits instead and checking them in the
app would leave the other errors HTML, and a request line without a limit costs memory.

This module must never be imported by the app or change anything at import time: only
gunicorn loads it, by name, and the replacement is made in ``init_process``.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

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


class JSONErrorWorker(ThreadWorker):  # type: ignore[misc]
    """Gunicorn's ``gthread`` worker, answering its own errors in JSON."""

    def init_process(self) -> None:
        # After the fork, in this worker process alone, before it serves anything.
        util.write_error = write_json_error
        super().init_process()
