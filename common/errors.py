"""Errors that travel: the broker raises them, the wire carries them, the API shows them.

Each error has an HTTP status code, a short title and a description that says
what was wrong, so that every layer reports bad input the same way.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base of every error the broker reports to a client."""

    #: HTTP status code that describes this error.
    status = 500
    #: Short, fixed title (as Falcon's HTTP errors have).
    title = "Internal error"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    @staticmethod
    def of(status: int, title: str, description: str) -> SchedulerError:
        """The error a broker reply carries, as the class of its status code."""
        for cls in (InvalidInput, Forbidden, NotFound, Conflict, TooLarge, Unavailable):
            if cls.status == status:
                return cls(description)
        exc = SchedulerError(description)
        exc.status = status
        exc.title = title
        return exc


class InvalidInput(SchedulerError):
    """The request is malformed: wrong type, missing field, unknown dependency..."""

    status = 400
    title = "Invalid input"


class Forbidden(SchedulerError):
    """The key the request came with may not do this (a CURVE broker's role table)."""

    status = 403
    title = "Forbidden"


class NotFound(SchedulerError):
    """An id that names no task or worker."""

    status = 404
    title = "Not found"


class Conflict(SchedulerError):
    """The request is valid but does not fit the current state."""

    status = 409
    title = "Conflict"


class TooLarge(SchedulerError):
    """A value larger than the broker takes (``--max-payload``), or a reply larger than
    the peer's queue on the broker has room for."""

    status = 413
    title = "Too large"


class Unavailable(SchedulerError):
    """The broker did not answer in time (or could not be reached)."""

    status = 503
    title = "Broker unavailable"

    def __init__(self, description: str, sent: bool = True) -> None:
        super().__init__(description)
        #: Whether the request left for the broker: one that did may still take effect, as
        #: a broker that is slow rather than gone carries it out when it comes back.
        self.sent = sent
