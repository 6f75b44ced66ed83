"""``zmq-scheduler submit --batch FILE.jsonl``: many tasks from a file, safe to run again.

Each line of the file is one task: a JSON object with the fields of ``POST /tasks``
(``handler`` required), but ``args`` any JSON value, sent as its text when it is a
string and as its JSON otherwise (``{"n": 10}`` is sent as ``{"n": 10}``, as ``--args``
sends it). Blank lines are skipped. Every line is checked before any task is sent: a bad
line is a usage error that names it, and nothing is submitted.

Running a file again is safe: a task without an ``idempotency_key`` of its own gets one
made of the file's identity (the SHA-256 of its bytes) and its line number, so a second run,
after an interruption, a timeout or a success, finds the tasks the first run made instead
of making new ones, for as long as the scheduler keeps them (``--retention``). A file
changed in any byte is another file, whose tasks are new.

Tasks go through the client's pipeline (over ZeroMQ) or ``POST /tasks/batch`` (over HTTP).
A progress bar (tqdm, on standard error when it is a terminal) follows the submits and,
with ``--wait``, the tasks finishing; a summary follows, and the exit status is 1 when a
task was refused, failed or was cancelled.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.cli.backends import Backend
from common.cli.output import Shown
from common.errors import InvalidInput
from common.models import TaskStatus
from common.spec import TaskSpec

#: The start of the idempotency keys a batch makes: ``batch:<file's digest>:<line>``.
KEY_PREFIX = "batch:"
#: Hexadecimal digits of the file's SHA-256 in its keys (128 bits).
DIGEST_DIGITS = 32
#: Failures and refusals listed one by one in the summary, at most.
LISTED = 10


class BadBatch(ValueError):
    """A line of the file that is not a task: the command's usage error."""


@dataclass(frozen=True, slots=True)
class Line:
    """One task of the file: its line number (from 1) and its spec (``args`` as bytes)."""

    number: int
    spec: dict[str, Any]


def read(path: str) -> list[Line]:
    """Every task of the file, checked, each with its idempotency key; ``BadBatch`` naming
    the first line that is not a task (or the file that cannot be read)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadBatch(f"cannot read {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()[:DIGEST_DIGITS]
    lines: list[Line] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            spec = _spec(json.loads(raw))
            spec.setdefault("idempotency_key", f"{KEY_PREFIX}{digest}:{number}")
            TaskSpec.parse(spec)
        except (ValueError, InvalidInput) as exc:  # a JSONDecodeError is a ValueError
            raise BadBatch(f"{path}:{number}: {exc}") from None
        lines.append(Line(number, spec))
    if not lines:
        raise BadBatch(f"{path} holds no task")
    return lines


def _spec(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError('a line must be a JSON object, a task such as {"handler": "echo"}')
    if "args" in value:
        args = value["args"]
        value["args"] = (args if isinstance(args, str) else json.dumps(args)).encode()
    return value


def run(backend: Backend, path: str, wait: bool) -> Shown:
    """Submit the file's tasks and, with ``wait``, wait for every one to finish."""
    lines = read(path)
    started = time.monotonic()
    ids: list[str | None] = []
    created = existing = 0
    refused: list[dict[str, Any]] = []
    entries = backend.submit_many([line.spec for line in lines])
    with tqdm(total=len(lines), desc="submitted", unit="task", disable=None, leave=False) as bar:
        for line, entry in zip(lines, entries, strict=True):
            ids.append(entry.id)
            if entry.error is not None:
                refused.append({"line": line.number, "error": str(entry.error)})
            elif entry.created is not None:
                created += entry.created
                existing += not entry.created
            bar.update()
    summary: dict[str, Any] = {
        "file": path,
        "tasks": len(lines),
        # The REST API does not say which tasks were there already.
        "submitted": created if created + existing == len(lines) - len(refused) else None,
        "existing": existing if created + existing == len(lines) - len(refused) else None,
        "refused": refused,
        "ids": ids,
    }
    if wait:
        summary.update(_wait(backend, lines, ids))
    summary["seconds"] = round(time.monotonic() - started, 3)
    failed = bool(refused) or bool(summary.get("failures"))
    return Shown(summary, _text(summary, wait), 1 if failed else 0, _problems(summary))


def _wait(backend: Backend, lines: list[Line], ids: list[str | None]) -> dict[str, Any]:
    """How the tasks submitted ended: a count by status and the failures."""
    line_of = {task_id: line.number for line, task_id in zip(lines, ids, strict=True) if task_id}
    counts = dict.fromkeys((TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED), 0)
    failures: list[dict[str, Any]] = []
    with tqdm(total=len(line_of), desc="finished", unit="task", disable=None, leave=False) as bar:
        for task in backend.wait_many(list(line_of)):
            status = TaskStatus(task["status"])
            counts[status] = counts.get(status, 0) + 1
            if status is not TaskStatus.COMPLETED:
                failures.append(
                    {"line": line_of[task["id"]], "id": task["id"], "status": status.value,
                     "error": task.get("error")}
                )  # fmt: skip
            bar.update()
    failures.sort(key=lambda failure: int(failure["line"]))
    return {**{status.value: n for status, n in counts.items()}, "failures": failures}


def _text(summary: dict[str, Any], wait: bool) -> str:
    tasks = summary["tasks"]
    if summary["submitted"] is None:
        sent = f"{tasks - len(summary['refused'])} submitted or found already"
    else:
        sent = f"{summary['submitted']} submitted, {summary['existing']} there already"
    text = f"{summary['file']}: {tasks} tasks: {sent}, {len(summary['refused'])} refused"
    if wait:
        text += (
            f"\nfinished: {summary['completed']} completed, {summary['failed']} failed, "
            f"{summary['cancelled']} cancelled"
        )
    return text + f"\nin {summary['seconds']:.1f} s"


def _problems(summary: dict[str, Any]) -> str:
    """The first refusals and failures, a line each, for standard error."""
    lines = [f"line {r['line']}: refused: {r['error']}" for r in summary["refused"][:LISTED]]
    lines += [
        f"line {f['line']}: task {f['id']} {f['status']}: {f['error'] or ''}".rstrip()
        for f in summary.get("failures", [])[:LISTED]
    ]
    more = len(summary["refused"]) + len(summary.get("failures", [])) - len(lines)
    if more > 0:
        lines.append(f"and {more} more (--json lists them all)")
    return "\n".join(lines)
