"""Calls of the scheduling core with maps, decoded as the broker's socket loop decodes them.

Tests of the core and the store write submissions, registrations and reports as the
wire carries them (maps); these functions pass each through its decoder in
``common.messages`` and ``common.ops`` (raising ``InvalidInput`` as the broker would
answer), then call the core with the typed value, as ``broker.server`` and
``broker.operations`` do.
"""

from __future__ import annotations

from typing import Any

from broker.core import Scheduler
from broker.state import Task, Worker
from common import messages, ops


def submit(core: Scheduler, specs: list[Any], now: float) -> list[dict[str, Any]]:
    return core.submit(ops.Submit.from_args({"tasks": specs}).tasks, now)


def submit_and_wait(
    core: Scheduler, specs: list[Any], wait: Any, token: object, now: float
) -> dict[str, Any] | None:
    request = ops.Submit.from_args({"tasks": specs, "wait": wait})
    assert request.wait is not None
    return core.submit_and_wait(request.tasks, request.wait, token, now)


def register(core: Scheduler, address: bytes, body: dict[str, Any], now: float) -> Worker:
    return core.register(address, messages.Ready.decode(body), now)


def report(
    core: Scheduler,
    worker: Worker,
    results: list[dict[str, Any]],
    now: float,
    early: bool = False,
) -> list[list[Any]]:
    """The runs acknowledged, as the ACK carries them."""
    runs = core.report(worker, messages.Done.decode({"results": results}).results, now, early)
    return [[run.task_id, run.attempt] for run in runs]


def list_tasks(core: Scheduler, args: dict[str, Any]) -> dict[str, Any]:
    return core.list_tasks(ops.ListTasks.from_args(args))


def http_register(core: Scheduler, args: dict[str, Any], now: float) -> tuple[Worker, bool]:
    return core.http_register(ops.HttpRegister.from_args(args), now)


def http_next(core: Scheduler, args: dict[str, Any], token: object, now: float) -> None:
    request = ops.HttpNext.from_args(args)
    core.http_next(request.id, request.wait, token, now)


def http_complete(core: Scheduler, args: dict[str, Any], now: float) -> Task:
    return core.http_complete(ops.HttpComplete.from_args(args), now)
