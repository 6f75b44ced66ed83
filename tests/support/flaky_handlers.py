"""Handlers used by the integration tests, loaded with ``zmq-worker --handlers flaky_handlers``."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from worker import handler, register


@handler("fail_times")
def fail_times(args: bytes) -> dict[str, int]:
    """Fail the first ``fail`` runs (counted in the file ``path``), then succeed."""
    spec = json.loads(args)
    counter = Path(spec["path"])
    runs = int(counter.read_text()) + 1 if counter.exists() else 1
    # Atomic, so a run killed mid-write cannot leave the counter empty.
    scratch = counter.with_suffix(".tmp")
    scratch.write_text(str(runs))
    os.replace(scratch, counter)
    if runs <= spec["fail"]:
        raise RuntimeError(f"planned failure {runs}")
    return {"runs": runs}


def always_fail(args: bytes) -> bytes:
    raise RuntimeError("boom")


register("always_fail", always_fail)


@handler("async_echo")
async def async_echo(args: bytes) -> bytes:
    return args


@handler("spin")
def spin(args: bytes) -> None:
    """Burn CPU and never look at cancellation: only a process pool can stop it."""
    while True:
        pass


@handler("log_pid")
def log_pid(args: bytes) -> int:
    """Log a warning naming this process, and return its pid."""
    logging.getLogger("flaky_handlers").warning("handler ran in %d", os.getpid())
    return os.getpid()


@handler("stubborn_sleep")
def stubborn_sleep(args: bytes) -> dict[str, float]:
    """Sleep ``seconds`` deaf to cancels and timeouts (``time.sleep``, not the task's
    ``context.sleep``), then append "done" to the file ``note``."""
    spec = json.loads(args)
    time.sleep(spec["seconds"])
    with Path(spec["note"]).open("a") as out:
        out.write("done\n")
    return {"slept": spec["seconds"]}


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no words for it")


@handler("raise_unprintable")
def raise_unprintable(args: bytes) -> None:
    """Raise an exception whose ``str()`` raises too, after ``args`` seconds."""
    time.sleep(float(args or b"0"))
    raise Unprintable()
