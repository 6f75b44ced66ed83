"""What each client request does: a typed request in, the core called, the reply's value out.

The socket loop (``broker.server``) decodes a ``REQUEST`` into one of
``common.messages``' request types and hands it here; so does the in-process client the
API's tests use. Each op is one small function of the core's; nothing here checks input
(the request was checked when it was decoded) or touches sockets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from broker.core import Scheduler
from common import messages as m

#: Marker: the reply will come later, from the core's outbox.
DEFERRED: Any = object()


def perform(core: Scheduler, request: m.Request, token: object, now: float, started: float) -> Any:
    """Run one request; returns its reply's value, or ``DEFERRED`` to answer later (the
    answer then comes through the core's outbox, under ``token``)."""
    return _OPS[type(request)](core, request, token, now, started)


def _submit(core: Scheduler, request: m.Submit, token: object, now: float, started: float) -> Any:
    if request.wait is not None:
        done = core.submit_and_wait(request.tasks, request.wait, token, now)
        return DEFERRED if done is None else done
    return {"tasks": core.submit(request.tasks, now)}


def _get(core: Scheduler, request: m.Get, token: object, now: float, started: float) -> Any:
    return core.get(request.id).record()


def _list(core: Scheduler, request: m.ListTasks, token: object, now: float, started: float) -> Any:
    return core.list_tasks(request)


def _cancel(
    core: Scheduler, request: m.CancelTask, token: object, now: float, started: float
) -> Any:
    return core.cancel(request.id, now).record()


def _wait(core: Scheduler, request: m.Wait, token: object, now: float, started: float) -> Any:
    task = core.wait(request.id, request.timeout, token, now)
    return DEFERRED if task is None else task.record()


def _wait_many(
    core: Scheduler, request: m.WaitMany, token: object, now: float, started: float
) -> Any:
    brief = core.wait_many(request.ids, request.timeout, token, now)
    return DEFERRED if brief is None else brief


def _workers(
    core: Scheduler, request: m.ListWorkers, token: object, now: float, started: float
) -> Any:
    return [worker.record() for worker in core.workers.values()]


def _worker(
    core: Scheduler, request: m.GetWorker, token: object, now: float, started: float
) -> Any:
    return core.worker(request.id).record()


def _health(core: Scheduler, request: m.Health, token: object, now: float, started: float) -> Any:
    return {**core.health(now, started), "pid": os.getpid()}


def _http_register(
    core: Scheduler, request: m.HttpRegister, token: object, now: float, started: float
) -> Any:
    worker, created = core.http_register(request, now)
    return {**worker.record(), "created": created}


def _http_next(
    core: Scheduler, request: m.HttpNext, token: object, now: float, started: float
) -> Any:
    core.http_next(request.id, request.wait, token, now)
    return DEFERRED


def _http_heartbeat(
    core: Scheduler, request: m.HttpHeartbeat, token: object, now: float, started: float
) -> Any:
    return core.http_worker(request.id, now).record()


def _http_complete(
    core: Scheduler, request: m.HttpComplete, token: object, now: float, started: float
) -> Any:
    return core.http_complete(request, now).record()


_OPS: dict[type, Callable[[Scheduler, Any, object, float, float], Any]] = {
    m.Submit: _submit,
    m.Get: _get,
    m.ListTasks: _list,
    m.CancelTask: _cancel,
    m.Wait: _wait,
    m.WaitMany: _wait_many,
    m.ListWorkers: _workers,
    m.GetWorker: _worker,
    m.Health: _health,
    m.HttpRegister: _http_register,
    m.HttpNext: _http_next,
    m.HttpHeartbeat: _http_heartbeat,
    m.HttpComplete: _http_complete,
}
