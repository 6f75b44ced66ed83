"""How every command logs: one line per record, of bounded length.

A log line's text often carries what a peer sent (a worker id, a handler name, an error);
each of those is bounded where it enters, but a record that joins many of them could still
be long, and a peer that repeats it could fill a disk. ``configure`` installs a formatter
that cuts every message to ``MAX_MESSAGE`` characters and says how much it cut.

Lines are text for people, or JSON (``--log-format json``) for a log pipeline: one object
a line with ``time``, ``level``, ``logger``, ``message`` and the fields the call gave in
``extra`` (``task_id``, ``worker_id``, ``handler``...), each string of them bounded as a
message is. No call may put a token, a task's args or a request's body in either.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

#: Longest message of one log record, in characters (the time, level and logger name come
#: on top).
MAX_MESSAGE = 2000


#: Most names of a list that a log line shows.
MAX_LISTED = 20


def listing(names: list[str]) -> str:
    """Names for a log line: the first ``MAX_LISTED``, and how many more there are."""
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return f"[{shown}, and {more} more]" if more > 0 else f"[{shown}]"


class BoundedFormatter(logging.Formatter):
    """A formatter whose messages are cut to ``MAX_MESSAGE`` characters; a traceback is
    kept whole (it comes from our own code, not from a peer)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if len(message) > MAX_MESSAGE:
            cut = len(message) - MAX_MESSAGE
            record.message = f"{message[:MAX_MESSAGE]}... ({cut} more characters)"
        return super().formatMessage(record)


class Throttled:
    """Warnings of one kind, at most ``per_second`` lines a second: a peer that sends a
    flood of bad messages must not fill the disk with a line for each. What is held back is
    counted, and said with the next line that goes out."""

    def __init__(
        self,
        logger: logging.Logger,
        per_second: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.per_second = per_second
        self.clock = clock
        self._second = -1
        self._lines = 0
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        second = int(self.clock())
        if second != self._second:
            self._second, self._lines = second, 0
        if self._lines >= self.per_second:
            self._held += 1
            return
        self._lines += 1
        if self._held:
            message += " (and %d more like these not logged)"
            args = (*args, self._held)
            self._held = 0
        self.logger.warning(message, *args)


#: The attributes every ``LogRecord`` has: any other was given by the call (``extra``).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName",
}  # fmt: skip


def _bounded(text: str) -> str:
    if len(text) > MAX_MESSAGE:
        return f"{text[:MAX_MESSAGE]}... ({len(text) - MAX_MESSAGE} more characters)"
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (RFC 3339 UTC), ``level``, ``logger``, ``message``
    (bounded as ``BoundedFormatter`` bounds it), the call's ``extra`` fields, and
    ``traceback`` when the record carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": _bounded(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line:
                line[key] = _bounded(value) if isinstance(value, str) else value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["traceback"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(format: str, log_format: str = "text") -> logging.Formatter:
    """The formatter of ``log_format``: ``text`` lines in ``format``, or ``json``."""
    return JsonFormatter() if log_format == "json" else BoundedFormatter(format)


def configure(level: str | int, format: str, log_format: str = "text") -> None:
    """Log records of ``level`` and above to stderr, each message bounded: as text in
    ``format``, or as JSON when ``log_format`` is ``json``."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(format, log_format))
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level, handlers=[handler]
    )


def format_in_use() -> str:
    """``json`` when the root logger writes JSON lines (``configure``), else ``text``: what
    a process started to do this one's work (a worker's child) is to log in."""
    handlers = logging.getLogger().handlers
    return "json" if any(isinstance(h.formatter, JsonFormatter) for h in handlers) else "text"
