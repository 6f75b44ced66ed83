"""The worker: runs tasks the broker dispatches, with handlers registered by name.

For handler authors:

    from worker import handler, sleep

    @handler("thumbnail")
    def thumbnail(args: bytes) -> bytes:
        ...

Importing this package must never import zmq or start anything: handler modules
and the process pool's children import it.
"""

from worker.context import Cancelled, TaskContext, current, sleep
from worker.handlers import handler, register

__all__ = ["Cancelled", "TaskContext", "current", "handler", "register", "sleep"]
