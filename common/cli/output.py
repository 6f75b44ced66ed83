"""What the command-line client shows: records as readable tables and views, or as JSON.

Records come as the REST API shows them (``common.cli.backends``): args and results in
base64, times in RFC 3339. Tables decode them for people (text where it is UTF-8, a size
otherwise) and cut long cells; ``--json`` shows the records unchanged. This module only
formats: it must never call a backend or print.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Longest cell of a table, in characters; a longer one is cut with an ellipsis.
MAX_CELL = 48


@dataclass(frozen=True, slots=True)
class Shown:
    """What a command shows: ``data`` with ``--json``, ``text`` otherwise; ``error`` on
    standard error either way; and the exit status."""

    data: Any
    text: str
    status: int = 0
    error: str = ""


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def payload(value: str | None) -> bytes | None:
    """The bytes of a base64 ``args`` or ``result``; None for none."""
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode()  # not base64: shown as it came


def readable(data: bytes | None) -> str:
    """Bytes as text when they are UTF-8, else their size; ``-`` for none."""
    if data is None:
        return "-"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(data)} bytes>"


def cell(value: Any) -> str:
    """One table cell: lists joined, times to the second, long text cut, nothing as ``-``."""
    if value is None or value == "" or value == []:
        text = "-"
    elif isinstance(value, list):
        text = ",".join(str(item) for item in value)
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = str(value)
    text = " ".join(text.split())  # a newline would break the row
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def when(value: str | None) -> str:
    """An RFC 3339 time to the second, as ``2026-11-27 02:20:38``."""
    return "-" if not value else value.replace("T", " ")[:19]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns under upper-case headers."""
    cells = [[header.upper() for header in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def tasks_table(tasks: Sequence[dict[str, Any]]) -> str:
    headers = ["id", "name", "handler", "status", "priority", "attempts", "worker", "created"]
    rows = [
        [t["id"], t.get("name"), t["handler"], t["status"], t.get("priority"),
         t.get("attempts"), t.get("worker_id"), when(t.get("created_at"))]
        for t in tasks
    ]  # fmt: skip
    return table(headers, rows)


def workers_table(workers: Sequence[dict[str, Any]]) -> str:
    headers = ["id", "kind", "status", "slots", "handlers", "tags", "last seen", "draining"]
    rows = [
        [w["id"], w["kind"], w["status"], _slots(w), w.get("handlers"), w.get("tags"),
         when(w.get("last_seen")), w.get("draining")]
        for w in workers
    ]  # fmt: skip
    return table(headers, rows)


def _slots(worker: dict[str, Any]) -> str:
    """Slots used / total (an HTTP worker has no fixed number)."""
    used = len(worker.get("running") or [])
    total = worker.get("slots")
    return f"{used}/{total if total is not None else '-'}"


def task_view(task: dict[str, Any]) -> str:
    """One task, a field a line, args and result decoded; its runs as a table."""
    fields = [
        ("id", task["id"]), ("name", task.get("name")), ("handler", task.get("handler")),
        ("status", task.get("status")), ("priority", task.get("priority")),
        ("attempts", task.get("attempts")), ("max retries", task.get("max_retries")),
        ("timeout", task.get("timeout")), ("worker", task.get("worker_id")),
        ("dependencies", task.get("dependencies")), ("requires", task.get("requires")),
        ("resources", task.get("resources") or None),
        ("created", when(task.get("created_at"))), ("started", when(task.get("started_at"))),
        ("completed", when(task.get("completed_at"))),
        ("idempotency key", task.get("idempotency_key")),
        ("waiting for", _waiting(task.get("waiting_for"))),
        ("args", readable(payload(task.get("args")))),
        ("result", readable(payload(task.get("result")))),
        ("error", task.get("error")),
    ]  # fmt: skip
    width = max(len(name) for name, _ in fields)
    lines = [f"{name + ':':<{width + 1}} {_field(value)}" for name, value in fields]
    leases = task.get("leases") or []
    if leases:
        rows = [
            [lease.get("attempt"), lease.get("worker_id"), when(lease.get("started_at")),
             when(lease.get("ended_at")), lease.get("outcome"), lease.get("error")]
            for lease in leases
        ]  # fmt: skip
        headers = ["attempt", "worker", "started", "ended", "outcome", "error"]
        lines += ["", "runs:", table(headers, rows)]
    return "\n".join(lines)


def _field(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return "-" if value is None or value == "" else str(value)


def _waiting(why: dict[str, Any] | None) -> str | None:
    """Why a pending task waits, in a few words."""
    if not why:
        return None
    detail = why.get("detail") or why.get("tasks") or why.get("ready_at") or ""
    if isinstance(detail, list):
        detail = ", ".join(detail)
    return f"{why.get('reason')}: {detail}" if detail else str(why.get("reason"))


def stats_view(stats: dict[str, Any]) -> str:
    """``stats``: counts by status, queue by handler, workers, the last 15 minutes."""
    tasks = stats.get("tasks") or {}
    workers = stats.get("workers") or {}
    slots = workers.get("slots") or {}
    throughput = stats.get("throughput") or {}
    bucket = throughput.get("bucket", 10)
    completed, failed = throughput.get("completed") or [], throughput.get("failed") or []
    minutes = len(completed) * bucket / 60
    lines = [
        "tasks:      " + ", ".join(f"{n} {status}" for status, n in tasks.items()),
        f"workers:    {workers.get('online', 0)} online, {workers.get('draining', 0)} draining, "
        f"slots {slots.get('used', 0)}/{slots.get('total', 0)} used",
        f"last {minutes:g} min: {sum(completed)} completed, {sum(failed)} failed",
        f"uptime:     {stats.get('uptime', 0):.0f} s",
    ]
    handlers = stats.get("handlers") or {}
    if handlers:
        statuses = sorted({status for counts in handlers.values() for status in counts})
        rows = [[name, *(counts.get(s, 0) for s in statuses)] for name, counts in handlers.items()]
        lines += ["", table(["handler", *statuses], rows)]
    return "\n".join(lines)
