"""Handlers for the chaos tests, loaded with ``zmq-worker --handlers chaos_handlers``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from worker import builtin, handler


@handler("noted_sleep")
def noted_sleep(args: bytes) -> dict[str, float]:
    """The built-in ``sleep`` (same args, same result), after appending this process's pid
    to the file ``note``.

    The broker shows a task running as soon as it sends the dispatch, before the worker
    has read it; the note tells a test that the run really began, and in which worker.
    """
    note = Path(json.loads(args)["note"])
    with note.open("a") as out:
        out.write(f"{os.getpid()}\n")
    return builtin.sleep(args)
