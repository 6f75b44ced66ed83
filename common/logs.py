"""How every command logs: one line per record, of bounded length.

A log line's text often carries what a peer sent (a worker id, a handler name, an error);
each of those is bounded where it enters, but a record that joins many of them could still
be long, and a peer that repeats it could fill a disk. ``configure`` installs a formatter
that cuts every message to ``MAX_MESSAGE`` characters and says how much it cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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


def configure(level: str | int, format: str) -> None:
    """Log records of ``level`` and above to stderr, in ``format``, each message bounded."""
    handler = logging.StreamHandler()
    handler.setFormatter(BoundedFormatter(format))
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level, handlers=[handler]
    )
