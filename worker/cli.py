"""The ``zmq-worker`` command: serve handlers to a broker until SIGINT or SIGTERM.

    zmq-worker --broker tcp://10.0.0.5:5555 --concurrency 4 --handlers myapp.tasks

It loads the built-in handlers and each ``--handlers`` module (from the current
directory too), registers with the broker under its id (generated from host name and
pid when not given) and runs tasks until signalled; it then stops its runs, says BYE
and exits 0. Settings come from ``common.settings`` (flag, then ``ZMQS_*`` environment
variable, then default).

This module must never do the agent's work: it reads settings, sets up logging
and signals, and hands over to ``Agent``. Signal handlers only set a flag.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from common import logs
from common import settings as config
from common.curve import ClientKeys
from common.models import RESOURCE_KINDS
from worker import handlers
from worker.agent import Agent
from worker.runner import OnDone, Runner

logger = logging.getLogger("worker")


def default_worker_id(host: str | None = None, pid: int | None = None) -> str:
    """``<host>-<pid>-<4 hex digits>``: readable, and unique even when pids repeat (containers)."""
    host = host if host is not None else (platform.node() or "worker")
    pid = pid if pid is not None else os.getpid()
    return f"{host}-{pid}-{secrets.token_hex(2)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker; returns the exit status."""
    _, settings = config.command_line(
        "zmq-worker",
        "Run tasks dispatched by a zmq-scheduler broker: the built-in handlers and those of "
        "the --handlers modules (looked for in the current directory too).",
        config.WORKER,
        argv,
    )
    level = logging.getLevelName(settings.log_level.upper())
    resources = {kind: float(getattr(settings, kind)) for kind in RESOURCE_KINDS}
    logs.configure(level, "%(asctime)s %(levelname)s %(name)s: %(message)s", settings.log_format)

    import worker.builtin  # noqa: F401  (registers the built-in handlers)

    modules = config.split_list(settings.handlers)
    if modules and os.getcwd() not in sys.path:
        # `zmq-worker --handlers myapp.tasks` run where myapp/ is finds it, as `python -m`
        # would and as celery and dramatiq do: a console script's path holds only its own
        # directory. The process pool's children are given this path too.
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            handlers.load_module(module)
        except Exception:
            logger.exception("cannot load handler module %r", module)
            return 1

    try:
        keys = ClientKeys.load(settings.curve_server_key, settings.curve_secret)
    except (OSError, ValueError) as exc:
        logger.error("cannot read the CURVE keys: %s", exc)
        return 2
    worker_id = settings.worker_id or default_worker_id()
    names = handlers.names()
    # Handler names first, then extra tags; a tag naming a handler is not repeated.
    tags = config.split_list(settings.capabilities)
    capabilities = list(dict.fromkeys([*names, *tags]))
    slots = settings.slots
    logger.info(
        "worker %s: %d slots (%s pool), handlers: %s",
        worker_id,
        slots,
        settings.pool,
        ", ".join(names),
    )

    def make_runner(on_done: OnDone) -> Runner:
        return Runner(settings.pool, slots, on_done, modules)

    agent = Agent(
        endpoint=settings.broker,
        worker_id=worker_id,
        slots=slots,
        make_runner=make_runner,
        capabilities=capabilities,
        tags=tags,
        resources=resources,
        drain_grace=settings.drain_grace,
        backoff_initial=settings.reconnect_backoff,
        backoff_max=settings.reconnect_backoff_max,
        curve=keys,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # The first signal drains, a second stops at once: a flag and a wake-up byte each,
        # no logging here.
        agent.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        agent.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("worker %s stopped", worker_id)
    return 0
