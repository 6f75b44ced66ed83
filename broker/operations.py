"""What each client request does: a typed request in, the core called, the reply's value out.

The socket loop (``broker.server``) decodes a ``REQUEST`` into one of
``common.ops``' request types and hands it here; so does the in-process client the
API's tests use. Each op is one small function of the core's; nothing here checks input
(the request was checked when it was decoded) or touches sockets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from broker.core import Scheduler
from common import ops
from common.errors import SchedulerError

#: Marker: the reply will come later, from the core's outbox.
DEFERRED: Any = object()


def perform(
    core: Scheduler, request: ops.Request, token: object, now: float, started: float
) -> Any:
    """Run one request; returns its reply's value, or ``DEFERRED`` to answer later (the
    answer then comes through the core's outbox, under ``token``)."""
    return _OPS[type(request)](core, request, token, now, started)


def _submit(core: Scheduler, request: ops.Submit, token: object, now: float, started: float) -> Any:
    refuse = request.refuse_unservable
    if request.wait is not None:
        done = core.submit_and_wait(
            request.tasks, request.wait, token, now, refuse_unservable=refuse
        )
        return DEFERRED if done is None else done
    if request.separate:
        entries = _submit_each(core, request, now)
    else:
        entries = core.submit(request.tasks, now, refuse_unservable=refuse)
    if request.notify:
        for entry in entries:
            if "id" in entry:
                core.deferred.watch(entry["id"], token)
    return {"tasks": entries}


def _submit_each(core: Scheduler, request: ops.Submit, now: float) -> list[dict[str, Any]]:
    """Each task submitted on its own: the entry of one refused is ``{error}``."""
    entries = core.submit_each(request.tasks, now, refuse_unservable=request.refuse_unservable)
    return [
        {"error": ops.ErrorInfo.of(e).to_body()} if isinstance(e, SchedulerError) else e
        for e in entries
    ]


def _get(core: Scheduler, request: ops.Get, token: object, now: float, started: float) -> Any:
    task = core.get(request.id)
    dependents, more = core.dependents_of(task.id)
    return {**core.show(task), "dependents": dependents, "more_dependents": more}


def _list(
    core: Scheduler, request: ops.ListTasks, token: object, now: float, started: float
) -> Any:
    return core.list_tasks(request)


def _cancel(
    core: Scheduler, request: ops.CancelTask, token: object, now: float, started: float
) -> Any:
    return core.show(core.cancel(request.id, now))


def _wait(core: Scheduler, request: ops.Wait, token: object, now: float, started: float) -> Any:
    task = core.wait(request.id, request.timeout, token, now)
    return DEFERRED if task is None else core.show(task)


def _wait_many(
    core: Scheduler, request: ops.WaitMany, token: object, now: float, started: float
) -> Any:
    brief = core.wait_many(request.ids, request.timeout, token, now)
    return DEFERRED if brief is None else brief


def _workers(
    core: Scheduler, request: ops.ListWorkers, token: object, now: float, started: float
) -> Any:
    return core.list_workers(request)


def _worker(
    core: Scheduler, request: ops.GetWorker, token: object, now: float, started: float
) -> Any:
    return core.worker(request.id).record()


def _health(core: Scheduler, request: ops.Health, token: object, now: float, started: float) -> Any:
    return {**core.health(now, started), "pid": os.getpid()}


def _metrics(
    core: Scheduler, request: ops.Metrics, token: object, now: float, started: float
) -> Any:
    return core.metrics_report(now, started)


def _http_register(
    core: Scheduler, request: ops.HttpRegister, token: object, now: float, started: float
) -> Any:
    worker, created = core.http_register(request, now)
    return {**worker.record(), "created": created}


def _http_next(
    core: Scheduler, request: ops.HttpNext, token: object, now: float, started: float
) -> Any:
    core.http_next(request.id, request.wait, token, now)
    return DEFERRED


def _http_heartbeat(
    core: Scheduler, request: ops.HttpHeartbeat, token: object, now: float, started: float
) -> Any:
    return core.http_worker(request.id, now).record()


def _http_complete(
    core: Scheduler, request: ops.HttpComplete, token: object, now: float, started: float
) -> Any:
    return core.show(core.http_complete(request, now))


def _retry(core: Scheduler, request: ops.Retry, token: object, now: float, started: float) -> Any:
    return core.show(core.retry(request.id, now))


def _purge(core: Scheduler, request: ops.Purge, token: object, now: float, started: float) -> Any:
    return core.purge(request.status, request.before, request.limit)


def _drain(core: Scheduler, request: ops.Drain, token: object, now: float, started: float) -> Any:
    return core.drain_worker(request.id, request.on, now).record()


def _stats(core: Scheduler, request: ops.Stats, token: object, now: float, started: float) -> Any:
    return core.stats(now, started)


_OPS: dict[type, Callable[[Scheduler, Any, object, float, float], Any]] = {
    ops.Submit: _submit,
    ops.Get: _get,
    ops.ListTasks: _list,
    ops.CancelTask: _cancel,
    ops.Wait: _wait,
    ops.WaitMany: _wait_many,
    ops.ListWorkers: _workers,
    ops.GetWorker: _worker,
    ops.Health: _health,
    ops.Metrics: _metrics,
    ops.HttpRegister: _http_register,
    ops.HttpNext: _http_next,
    ops.HttpHeartbeat: _http_heartbeat,
    ops.HttpComplete: _http_complete,
    ops.Retry: _retry,
    ops.Purge: _purge,
    ops.Drain: _drain,
    ops.Stats: _stats,
}
