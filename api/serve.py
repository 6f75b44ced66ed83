"""Gunicorn options for the REST API, shared by ``zmq-api`` and ``deploy/gunicorn.conf.py``.

One function turns ``Settings`` into gunicorn's settings, so the command and the
deployment config serve the API the same way. This module must never import gunicorn
or build the app: it only computes options, and is imported by gunicorn's master
before any worker forks.

Its hooks also set up the API's metrics for gunicorn's processes (``api.metrics``): the
master makes the folder their values are shared in (``PROMETHEUS_MULTIPROC_DIR``) before
it forks, empties it of an earlier run's files, and removes the one it made at exit.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from api.metrics import MULTIPROC_DIR
from common.limits import MAX_HTTP_WAIT
from common.settings import Settings

#: Gunicorn's worker class, by name: importing it here would import gunicorn.
WORKER_CLASS = "api.jsonworker.JSONErrorWorker"
#: Longest request line (method, path and query) in bytes, gunicorn's default made ours:
#: a longer one is a 414, which gunicorn answers before the app sees the request.
MAX_REQUEST_LINE = 4094


def bind_address(listen: str) -> str:
    """``HOST:PORT`` for gunicorn's ``bind``; an empty host (``:8080``) means all interfaces."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return f"{host or '0.0.0.0'}:{port}"


def quit_once(worker: Any) -> None:
    """Gunicorn's ``post_worker_init`` hook: a worker's quit handler runs at most once.

    Ctrl-C in a terminal sends SIGINT to the whole process group, workers included, and
    the master then tells each worker to quit with SIGQUIT. A worker handles both with
    ``handle_quit``, which is not re-entrant (gunicorn's gthread worker deadlocked on its
    thread pool's lock when a second signal landed during the first, and outlived its
    master still holding the listening socket; the gevent worker would start a second
    shutdown). A quit under way ignores the next one (the lock is taken in one call, so no
    signal can slip in between two checks).
    """
    handle_quit = worker.handle_quit
    quitting = threading.Lock()

    def once(signum: int, frame: FrameType | None) -> None:
        if quitting.acquire(blocking=False):
            handle_quit(signum, frame)

    for signum in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, once)


#: Signals with which gunicorn's master tells a worker to stop (SIGTERM: gracefully).
STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)


def _quit_while_booting(signum: int, frame: FrameType | None) -> None:
    os._exit(0)


def post_fork(body_timeout: float) -> Callable[[Any, Any], None]:
    """Gunicorn's ``post_fork`` hook, in a new worker before it boots.

    It gives the worker (``api.jsonworker``) its body timeout: gunicorn has no setting for
    it. And it makes a stop signal end a worker still booting. Until the worker sets its
    own handlers, which it does only after importing gevent and patching the standard
    library, it has the master's, which queue the signal for a master loop the worker does
    not run: a worker told to stop then booted anyway, and the master waited its whole
    graceful timeout (36 s) before killing it. A master orphaned by ``zmq-scheduler up``
    right after it started its workers stops them at once, and hung on for that long.
    A booting worker has nothing to finish, so it exits at once.
    """

    def hook(server: Any, worker: Any) -> None:
        worker.body_timeout = body_timeout
        for signum in STOP_SIGNALS:
            signal.signal(signum, _quit_while_booting)

    return hook


#: The metrics folder the master made itself (removed at exit), if it made one.
_made_dir: list[str] = []


def prepare_metrics(server: Any) -> None:
    """Gunicorn's ``on_starting`` hook, in the master before any fork: the folder the
    processes share their metrics in. ``PROMETHEUS_MULTIPROC_DIR`` when set (made if
    missing, emptied of an earlier run's files), else a new temporary one."""
    directory = os.environ.get(MULTIPROC_DIR)
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
        return
    directory = tempfile.mkdtemp(prefix="zmq-api-metrics-")
    _made_dir.append(directory)
    os.environ[MULTIPROC_DIR] = directory


def worker_exited(server: Any, worker: Any) -> None:
    """Gunicorn's ``child_exit`` hook: a worker's live gauges leave with it."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_DIR):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def remove_metrics(server: Any) -> None:
    """Gunicorn's ``on_exit`` hook: the folder ``prepare_metrics`` made goes."""
    while _made_dir:
        shutil.rmtree(_made_dir.pop(), ignore_errors=True)


def log_config(settings: Settings) -> dict[str, Any] | None:
    """Gunicorn's ``logconfig_dict`` for JSON lines: its own records go through the root
    logger, one JSON object a line like every other (None for text: gunicorn's own)."""
    if settings.log_format != "json":
        return None
    level = settings.log_level.upper()
    return {
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {"gunicorn.error": {"level": level, "handlers": [], "propagate": True}},
        "handlers": {
            "json": {"class": "logging.StreamHandler", "formatter": "json",
                     "stream": "ext://sys.stderr"},
        },
        "formatters": {"json": {"()": "common.logs.JsonFormatter"}},
    }  # fmt: skip


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """Gunicorn settings (names as in a gunicorn config file) for these API settings."""
    if settings.processes < 1 or settings.connections < 1:
        raise ValueError("processes and connections must be at least 1")
    if settings.log_level.upper() not in logging.getLevelNamesMapping():
        # Gunicorn would silently log at info instead.
        raise ValueError(f"unknown log level {settings.log_level!r}")
    return {
        "bind": [bind_address(settings.listen)],
        "workers": settings.processes,
        # Gunicorn's gevent worker (api.jsonworker): a connection is a greenlet, so slow,
        # idle and long-waiting clients (a ?wait=, an HTTP worker's long-poll, up to
        # MAX_HTTP_WAIT seconds each) hold no thread; up to worker_connections at once.
        "worker_class": WORKER_CLASS,
        "worker_connections": settings.connections,
        # A shutdown lets the longest request finish: a long-poll and its broker reply
        # (the client waits MAX_HTTP_WAIT + request_timeout), plus a second to answer.
        "graceful_timeout": math.ceil(MAX_HTTP_WAIT + settings.request_timeout) + 1,
        # Seconds a connection has to send a request's line and headers, from its opening
        # or its previous answer; then it is closed. This bounds slow headers and idle
        # connections alike, and lets an HTTP worker that polls in a loop keep its
        # connection between calls: the gevent worker applies gunicorn's keepalive to
        # exactly this wait, as one deadline for the whole headers (not for each read).
        "keepalive": settings.header_timeout,
        "limit_request_line": MAX_REQUEST_LINE,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "zmq-api",
        # Gunicorn >= 24 opens a control socket at one fixed path per user, which a second
        # API server on the host would fight over; nothing here uses it.
        "control_socket_disable": True,
        "post_fork": post_fork(settings.body_timeout),
        "post_worker_init": quit_once,
        "on_starting": prepare_metrics,
        "child_exit": worker_exited,
        "on_exit": remove_metrics,
        **({"logconfig_dict": config} if (config := log_config(settings)) else {}),
    }
