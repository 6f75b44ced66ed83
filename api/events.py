"""``GET /events``: the dashboard's server-sent events, read from the process's feed.

Each listener gets the feed's snapshot (``api.feed``) as an ``event: snapshot`` whose data
is one line of JSON, then every new one as it comes; a comment line (``: heartbeat``) when
nothing changed for ``HEARTBEAT`` seconds, so that proxies keep the stream open and a
gone client is noticed; and, after ``LIFETIME`` seconds, an ``event: end`` that closes the
stream, so that a listener reconnects (to another process, perhaps) and no stream is held
forever. A process serves at most ``api.feed.MAX_LISTENERS`` streams: one more is a 503.

This module must never ask the broker anything: the feed does, once for all listeners.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import falcon

from api.feed import Feed, TooBusy

#: Seconds of silence after which a stream sends a heartbeat.
HEARTBEAT = 10.0
#: Seconds a stream lasts before it ends and its listener reconnects.
LIFETIME = 300.0
#: What a browser's EventSource waits before it reconnects, in milliseconds.
RECONNECT_MS = 1000
#: The media type of the stream.
EVENT_STREAM = "text/event-stream"


class Stream:
    """One listener's stream: the WSGI body, whose ``close`` (the server calls it when the
    stream ends or the client goes) gives the listener's place back to the feed."""

    def __init__(
        self,
        feed: Feed,
        lifetime: float = LIFETIME,
        heartbeat: float = HEARTBEAT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self.heartbeat = heartbeat
        self.clock = clock
        self.deadline = clock() + lifetime
        self.seen = 0
        self.started = False
        self.ended = False
        self.closed = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> bytes:
        if self.ended or self.closed:
            raise StopIteration
        if not self.started:
            self.started = True
            return f"retry: {RECONNECT_MS}\n\n".encode()
        left = self.deadline - self.clock()
        if left <= 0:
            self.ended = True
            return b"event: end\ndata: {}\n\n"
        version, snapshot = self.feed.next(self.seen, min(self.heartbeat, left))
        if snapshot is None:
            return b": heartbeat\n\n"
        self.seen = version
        return b"event: snapshot\ndata: " + snapshot + b"\n\n"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed.leave()


class Events:
    """``/events``: a stream of the feed's snapshots (``HEAD``: its headers alone)."""

    def __init__(self, feed: Feed, lifetime: float = LIFETIME, heartbeat: float = HEARTBEAT):
        self.feed = feed
        self.lifetime = lifetime
        self.heartbeat = heartbeat

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.feed.join()
        except TooBusy as exc:
            raise falcon.HTTPServiceUnavailable(
                title="Too many listeners", description=str(exc), retry_after=5
            ) from None
        _headers(resp)
        resp.stream = Stream(self.feed, self.lifetime, self.heartbeat)

    def on_head(self, req: falcon.Request, resp: falcon.Response) -> None:
        _headers(resp)


def _headers(resp: falcon.Response) -> None:
    resp.content_type = EVENT_STREAM
    resp.set_header("Cache-Control", "no-store")
    # A proxy (nginx) that buffers answers would hold the events back.
    resp.set_header("X-Accel-Buffering", "no")
