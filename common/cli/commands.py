"""The command table of the command-line client: each command its arguments and its run.

A command is a function of a backend (``common.cli.backends``) and its parsed arguments
that returns what to show (``Shown``), registered with ``@command``; ``common.cli`` builds
the parser and the error handling around every one. Input a command finds wrong before it
sends anything raises ``UsageError`` (exit status 2, with the usage).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.cli import batch
from common.cli.backends import Backend
from common.cli.output import Shown, payload, stats_view, task_view, tasks_table, workers_table
from common.errors import InvalidInput
from common.limits import DEFAULT_PAGE, MAX_PAGE
from common.models import TaskStatus
from common.ops import PURGEABLE
from common.spec import TaskSpec


class UsageError(ValueError):
    """Arguments that cannot make a request; shown with the command's usage, exit status 2."""


#: An argument of a command: ``add_argument``'s positional and keyword arguments.
Argument = tuple[tuple[str, ...], dict[str, Any]]
Run = Callable[[Backend, argparse.Namespace], Shown]


def arg(*flags: str, **options: Any) -> Argument:
    return flags, options


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    #: One line for the list of commands; the first sentence of ``description``.
    help: str
    description: str
    arguments: tuple[Argument, ...]
    run: Run


#: Every command, by name, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(name: str, description: str, *arguments: Argument) -> Callable[[Run], Run]:
    """Register the decorated function as the command ``name``."""

    def register(run: Run) -> Run:
        first = description.split(". ", 1)[0].rstrip(".")
        help_line = first[0].lower() + first[1:]
        COMMANDS[name] = Command(name, help_line, description, arguments, run)
        return run

    return register


TASK_ID = arg("id", metavar="ID", help="the task's id")


@command(
    "submit",
    "Submit a task and print its id, or with --wait its result once it has finished (exit "
    "status 1 when it failed, its error on standard error). With --batch, submit every task "
    "of a JSON-lines file, one task a line, safe to run again: see the README.",
    arg("handler", nargs="?", metavar="HANDLER", help="the handler that runs the task"),
    arg("--args", metavar="JSON", help="the task's args, a JSON text"),
    arg("--args-file", metavar="PATH", help="a file whose bytes are the task's args (-: stdin)"),
    arg("--name", help="the task's name"),
    arg("--priority", type=int, help="higher runs first (default 0)"),
    arg("--dep", action="append", metavar="ID", help="a task that must complete first"),
    arg("--max-retries", type=int, help="further attempts after a failure (default 0)"),
    arg("--key", metavar="KEY", help="idempotency key: submitting it again finds the task"),
    arg("--wait", action="store_true", help="wait for the task(s) to finish"),
    arg("--batch", metavar="FILE", help="a JSON-lines file of tasks to submit"),
)
def submit(backend: Backend, args: argparse.Namespace) -> Shown:
    one = [args.args, args.args_file, args.name, args.priority, args.dep, args.max_retries,
           args.key]  # fmt: skip
    if args.batch is not None:
        if args.handler is not None or any(value is not None for value in one):
            raise UsageError("--batch takes its tasks from the file: give no HANDLER nor task flag")
        try:
            return batch.run(backend, args.batch, args.wait)
        except batch.BadBatch as exc:
            raise UsageError(str(exc)) from None
    if args.handler is None:
        raise UsageError("give a HANDLER, or --batch FILE")
    spec = _spec(args)
    task = backend.submit(spec, args.wait)
    if not args.wait:
        return Shown(task, task["id"])
    return _finished(task)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    """The task the flags describe, checked as the scheduler would."""
    spec: dict[str, Any] = {"handler": args.handler}
    if args.args is not None and args.args_file is not None:
        raise UsageError("give --args or --args-file, not both")
    if args.args is not None:
        try:
            json.loads(args.args)
        except ValueError as exc:
            raise UsageError(f"--args is not JSON: {exc}") from None
        spec["args"] = args.args.encode()
    elif args.args_file is not None:
        try:
            spec["args"] = (
                sys.stdin.buffer.read()
                if args.args_file == "-"
                else Path(args.args_file).read_bytes()
            )
        except OSError as exc:
            raise UsageError(f"cannot read --args-file {args.args_file}: {exc.strerror}") from None
    for field, value in (("name", args.name), ("priority", args.priority),
                         ("dependencies", args.dep), ("max_retries", args.max_retries),
                         ("idempotency_key", args.key)):  # fmt: skip
        if value is not None:
            spec[field] = value
    try:
        TaskSpec.parse(spec)
    except InvalidInput as exc:
        raise UsageError(str(exc)) from None
    return spec


def _finished(task: dict[str, Any]) -> Shown:
    """A task waited for: its result, or its error and exit status 1."""
    if task["status"] == TaskStatus.COMPLETED:
        result = payload(task.get("result")) or b""
        return Shown(task, result.decode("utf-8", "replace"))
    error = f"task {task['id']} {task['status']}: {task.get('error') or ''}".rstrip(": ")
    return Shown(task, "", status=1, error=error)


@command(
    "tasks",
    "List tasks, in submission order, a page at a time. The last line names the next page "
    "when there is one (--after); --all follows every page.",
    arg("--status", choices=[s.value for s in TaskStatus], help="only tasks in this status"),
    arg("--handler", help="only tasks of this handler"),
    arg("--limit", type=int, default=DEFAULT_PAGE, help=f"tasks a page, 1 to {MAX_PAGE}"),
    arg("--after", type=int, metavar="CURSOR", help="the page after this cursor"),
    arg("--all", action="store_true", help="every page, not only the first"),
)
def tasks(backend: Backend, args: argparse.Namespace) -> Shown:
    if not 1 <= args.limit <= MAX_PAGE:
        raise UsageError(f"--limit must be 1 to {MAX_PAGE}, got {args.limit}")
    found, cursor = backend.list_tasks(args.status, args.handler, args.limit, args.after)
    while args.all and cursor is not None:
        page, cursor = backend.list_tasks(args.status, args.handler, args.limit, cursor)
        found += page
    text = tasks_table(found)
    if cursor is not None:
        text += f"\nmore: --after {cursor}"
    return Shown({"tasks": found, "next": cursor}, text)


@command("task", "Show a task: its fields, args and result decoded, and its runs.", TASK_ID)
def task(backend: Backend, args: argparse.Namespace) -> Shown:
    record = backend.get(args.id)
    return Shown(record, task_view(record))


@command(
    "cancel",
    "Cancel a task: at once when it is pending; a running one is told to stop.",
    TASK_ID,
)
def cancel(backend: Backend, args: argparse.Namespace) -> Shown:
    record = backend.cancel(args.id)
    return Shown(record, f"{record['id']} {record['status']}")


@command("workers", "List the workers: status, slots used / total, handlers and tags.")
def workers(backend: Backend, args: argparse.Namespace) -> Shown:
    found = backend.workers()
    return Shown(found, workers_table(found))


@command(
    "retry",
    "Run a failed or cancelled task again (same id, its attempts continue), with its "
    "dependents that failed because of it.",
    TASK_ID,
)
def retry(backend: Backend, args: argparse.Namespace) -> Shown:
    record = backend.retry(args.id)
    return Shown(record, f"{record['id']} {record['status']}")


@command(
    "purge",
    "Delete the finished tasks of a status, those that finished before --before if given.",
    arg("--status", required=True, choices=[s.value for s in PURGEABLE]),
    arg("--before", metavar="TIME", help="seconds since the epoch, or ISO 8601 (UTC if no zone)"),
)
def purge(backend: Backend, args: argparse.Namespace) -> Shown:
    purged = backend.purge(args.status, None if args.before is None else _time(args.before))
    return Shown({"purged": purged}, f"purged {purged} {args.status} tasks")


def _time(text: str) -> float:
    """``--before``: seconds since the epoch, or an ISO 8601 time (UTC when it has no zone)."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            seconds = math.nan
        else:
            seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds):
        raise UsageError(f"--before must be seconds since the epoch or ISO 8601, got {text!r}")
    return seconds


@command(
    "drain",
    "Drain a worker: it gets no new task and its running tasks finish (--resume: take work again).",
    arg("id", metavar="WORKER_ID", help="the worker's id"),
    arg("--resume", action="store_true", help="end the drain"),
)
def drain(backend: Backend, args: argparse.Namespace) -> Shown:
    record = backend.drain(args.id, not args.resume)
    return Shown(record, f"{record['id']} {'draining' if record['draining'] else 'taking work'}")


@command("stats", "Show tasks by status and handler, workers, and throughput.")
def stats(backend: Backend, args: argparse.Namespace) -> Shown:
    found = backend.stats()
    return Shown(found, stats_view(found))
