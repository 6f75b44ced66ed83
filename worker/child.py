"""The process pool's child: a loop that runs one handler call at a time for the parent.

The parent (``worker.runner``) starts each child with the "spawn" method, so this
module is the whole program of a fresh interpreter: it loads the built-in handlers
and the ``--handlers`` modules, then answers requests on its pipe until the pipe
closes. A run that must stop (cancel, timeout) is stopped by killing the process.

Request: ``(task_id, attempt, handler, args, timeout)``; reply: ``("ok", result bytes)``
or ``("error", message)``. This module must never open a zmq context or socket (the
parent's agent owns the only one), and a child must never outlive its pipe: EOF on
the pipe means the parent is gone.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from common import logs
from worker import context, handlers

#: Seconds between checks that the parent (the worker) is still alive.
PARENT_CHECK_INTERVAL = 1.0

Request = tuple[str, int, str, bytes, float | None]
Reply = tuple[str, Any]


def main(
    conn: Connection, handler_modules: list[str], log_level: int, log_format: str = "text"
) -> None:
    """Entry point of a child process; it logs as its worker does (``log_format``)."""
    # Ctrl-C reaches the whole process group: the parent decides what happens to runs,
    # so a child must not die of KeyboardInterrupt in the middle of one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure(log_level, "%(asctime)s %(levelname)s %(name)s[child]: %(message)s", log_format)
    # A busy child never reads its pipe, so it would not notice a parent killed with
    # SIGKILL and could spin on as an orphan: watch the parent instead.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    import worker.builtin  # noqa: F401  (registers the built-in handlers)

    for module in handler_modules:
        handlers.load_module(module)
    while True:
        try:
            request: Request = conn.recv()
            conn.send(execute(request))
        except (EOFError, OSError):  # the parent closed the pipe or is gone
            return


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_INTERVAL)
        if os.getppid() != parent:  # re-parented: the worker died
            os._exit(1)


def execute(request: Request) -> Reply:
    """Run one handler call and describe its outcome."""
    task_id, attempt, name, args, timeout = request
    fn = handlers.get(name)
    if fn is None:
        return ("error", (handlers.unknown(name), None))
    # Cancellation is a kill, so this context is never cancelled; handlers still see
    # their task id and deadline through worker.context.
    deadline = time.monotonic() + timeout if timeout else None
    ctx = context.TaskContext(task_id, attempt, deadline)
    token = context.activate(ctx)
    try:
        value = asyncio.run(fn(args)) if inspect.iscoroutinefunction(fn) else fn(args)
        return ("ok", handlers.to_bytes(value))
    except BaseException as exc:  # SystemExit from a handler is a failed run, not an exit
        return ("error", (handlers.describe_error(exc), handlers.describe_traceback(exc)))
    finally:
        context.deactivate(token)
