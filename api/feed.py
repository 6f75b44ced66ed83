"""The dashboard's live feed: one short poll of the broker per API process, shared by all.

Every listener of ``GET /events`` (``api.events``) in a process reads the same snapshot,
made by one poller (a greenlet under gunicorn's gevent worker, a thread elsewhere) about
once a second while anyone listens: a hundred open dashboards cost the broker what one
costs. A snapshot is bounded whatever the store holds: counts by status (the broker's
``stats`` where it has them, else ``health``), the first ``WORKERS_SHOWN`` workers, the
first ``RUNNING_SHOWN`` running tasks and the ``FAILURES_SHOWN`` newest failures, each
found with a handful of one-page requests (``NewestFailures``), never a walk through the
store.

This module must never poll while nobody listens, nor ask the broker for more than a
page in one request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from api.render import render
from common.errors import SchedulerError, Unavailable
from common.limits import MAX_CURSOR
from common.models import TaskStatus
from common.ops import Op

logger = logging.getLogger(__name__)

#: Seconds between two polls of the broker while someone listens.
POLL_INTERVAL = 1.0
#: Listeners one API process serves at once; one more is answered 503.
MAX_LISTENERS = 100
#: Seconds the poller goes on after the last listener left, so that a reconnect finds it.
IDLE_STOP = 10.0
#: Workers a snapshot lists (the counts cover them all when the broker has ``stats``).
WORKERS_SHOWN = 100
#: Running tasks a snapshot lists.
RUNNING_SHOWN = 50
#: Newest failed tasks a snapshot lists.
FAILURES_SHOWN = 20
#: Characters of an error a snapshot carries; the task view shows all of it.
ERROR_SHOWN = 500
#: Seconds in a bucket of the throughput charts, and the buckets shown (15 minutes).
BUCKET = 10
BUCKETS = 90
#: Fields of a task a snapshot's lists carry: no args, no result, no history.
BRIEF_FIELDS = (
    "id", "name", "handler", "status", "worker_id", "attempts", "created_at", "started_at",
    "completed_at", "error",
)  # fmt: skip


class Requester(Protocol):
    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any: ...


class TooBusy(Exception):
    """The process serves ``MAX_LISTENERS`` listeners already."""


def brief(task: dict[str, Any]) -> dict[str, Any]:
    """The fields of a task a list shows, its error cut to ``ERROR_SHOWN`` characters."""
    shown = {key: task.get(key) for key in BRIEF_FIELDS}
    error = shown["error"]
    if isinstance(error, str) and len(error) > ERROR_SHOWN:
        shown["error"] = error[:ERROR_SHOWN] + "…"
    return shown


class Throughput:
    """Tasks completed and failed per ``BUCKET`` seconds, from successive counts by status:
    what the charts show when the broker has no ``stats`` (which counts them itself)."""

    def __init__(self, bucket: int = BUCKET, buckets: int = BUCKETS) -> None:
        self.bucket = bucket
        self.buckets = buckets
        #: The first and the last counts (completed, failed) seen in each bucket, by number.
        self.first: dict[int, tuple[int, int]] = {}
        self.last: dict[int, tuple[int, int]] = {}

    def add(self, now: float, completed: int, failed: int) -> dict[str, Any]:
        """Note the counts at ``now``; the series, oldest bucket first. A bucket without
        counts shows 0, as does a count that went down (tasks pruned)."""
        current = int(now // self.bucket)
        self.first.setdefault(current, (completed, failed))
        self.last[current] = (completed, failed)
        first = current - self.buckets + 1
        for old in [b for b in self.last if b < first - 1]:
            del self.last[old], self.first[old]
        done: list[int] = []
        lost: list[int] = []
        for number in range(first, current + 1):
            before = self.last.get(number - 1, self.first.get(number))
            after = self.last.get(number)
            if before is None or after is None:
                done.append(0)
                lost.append(0)
            else:
                done.append(max(0, after[0] - before[0]))
                lost.append(max(0, after[1] - before[1]))
        return {"bucket": self.bucket, "completed": done, "failed": lost}


class NewestFailures:
    """The ``shown`` newest failed tasks, with one-page requests only.

    The broker lists tasks oldest first after a cursor (a task's number in submission
    order). ``cursor`` is kept where exactly ``shown`` failed tasks come after it: one
    request a poll while nothing fails. When more come (new failures) or fewer (some
    retried or purged), the cursor is searched for again, galloping then bisecting on
    "more than ``shown`` after this cursor", which holds below it and not from it on:
    about 2 log2(n) requests for n tasks submitted since, a few dozen for a million.
    """

    def __init__(self, shown: int = FAILURES_SHOWN) -> None:
        self.shown = shown
        self.cursor = 0

    def _page(self, client: Requester, after: int) -> dict[str, Any]:
        page: dict[str, Any] = client.request(
            Op.LIST, {"status": TaskStatus.FAILED.value, "after": after, "limit": self.shown}
        )
        return page

    def _more(self, client: Requester, after: int) -> bool:
        return self._page(client, after)["next"] is not None

    def newest(self, client: Requester) -> list[dict[str, Any]]:
        """The newest failed tasks, newest first."""
        page = self._page(client, self.cursor)
        if page["next"] is None and (len(page["tasks"]) >= self.shown or self.cursor == 0):
            return list(reversed(page["tasks"]))
        if page["next"] is not None:
            # More than shown after the cursor: more holds at the cursor, so gallop up.
            low, step = self.cursor, max(1, page["next"] - self.cursor)
            high = min(MAX_CURSOR, low + step)
            while high < MAX_CURSOR and self._more(client, high):
                low, step = high, step * 2
                high = min(MAX_CURSOR, low + step)
        elif not self._more(client, 0):
            self.cursor = 0
            return list(reversed(self._page(client, 0)["tasks"]))
        else:
            # Fewer than shown after the cursor, more than shown in all: it lies below.
            low, high = 0, self.cursor
        while high - low > 1:
            middle = (low + high) // 2
            if self._more(client, middle):
                low = middle
            else:
                high = middle
        self.cursor = high
        return list(reversed(self._page(client, high)["tasks"]))


class Feed:
    """The latest snapshot of a process's poll, and the listeners waiting for the next one.

    ``client`` returns a broker client for the poller (``api.app``'s factory). Listeners
    ``join`` (``TooBusy`` beyond ``max_listeners``), read with ``next`` and ``leave``.
    """

    def __init__(
        self,
        client: Callable[[], Requester],
        interval: float = POLL_INTERVAL,
        max_listeners: int = MAX_LISTENERS,
        idle_stop: float = IDLE_STOP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.interval = interval
        self.max_listeners = max_listeners
        self.idle_stop = idle_stop
        self.clock = clock
        self.listeners = 0
        #: Grows by one with each snapshot whose content changed; 0 before the first.
        self.version = 0
        #: The snapshot as an event's data: JSON in one line.
        self.snapshot = b""
        self.polls = 0
        self._content = ""
        self._changed = threading.Condition()
        self._polling = False
        self._left_at = 0.0
        self._failures = NewestFailures()
        self._throughput = Throughput()
        #: Whether the broker answers ``stats`` (one older than the API does not: counts
        #: come from ``health`` then).
        self._stats = True

    def join(self) -> None:
        with self._changed:
            if self.listeners >= self.max_listeners:
                raise TooBusy(f"this API process serves {self.max_listeners} listeners already")
            self.listeners += 1
            if not self._polling:
                self._polling = True
                threading.Thread(target=self._run, name="dashboard feed", daemon=True).start()

    def leave(self) -> None:
        with self._changed:
            self.listeners -= 1
            self._left_at = time.monotonic()

    def next(self, seen: int, timeout: float) -> tuple[int, bytes | None]:
        """The snapshot after version ``seen`` and its version, at once if there is one,
        else when it comes within ``timeout`` seconds; ``(seen, None)`` if none came."""
        with self._changed:
            if self._changed.wait_for(lambda: self.version > seen, timeout):
                return self.version, self.snapshot
            return seen, None

    def _run(self) -> None:
        while True:
            with self._changed:
                idle = time.monotonic() - self._left_at
                if self.listeners == 0 and idle >= self.idle_stop:
                    self._polling = False
                    return
            started = time.monotonic()
            self.publish(self.poll())
            time.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def publish(self, content: dict[str, Any]) -> None:
        """Make ``content`` the snapshot if it changed, and wake the listeners."""
        key = json.dumps(content, sort_keys=True, default=str)
        with self._changed:
            if key == self._content:
                return
            self._content = key
            body = {**content, "at": self.clock()}
            self.snapshot = json.dumps(body, separators=(",", ":"), default=str).encode()
            self.version += 1
            self._changed.notify_all()

    def poll(self) -> dict[str, Any]:
        """What the broker says now, or the error that kept it from answering."""
        self.polls += 1
        try:
            return self._ask(self.client())
        except Unavailable as exc:
            return {"error": f"the broker does not answer: {exc.description}"}
        except SchedulerError as exc:
            return {"error": f"the broker refused: {exc.description}"}
        except Exception:  # the poller must outlive anything one poll meets
            logger.exception("the dashboard's poll failed")
            return {"error": "the API failed to poll the broker; see its log"}

    def _ask(self, client: Requester) -> dict[str, Any]:
        stats = self._ask_stats(client)
        content: dict[str, Any] = {}
        if stats is None:
            health = client.request(Op.HEALTH, {})
            counts = health["tasks"]
            content["source"] = "health"
            content["tasks"] = counts
            content["unservable"] = health.get("unservable")
            content["handlers"] = None
            content["throughput"] = self._throughput.add(
                self.clock(), counts.get("completed", 0), counts.get("failed", 0)
            )
        else:
            content["source"] = "stats"
            content["tasks"] = stats.get("tasks")
            content["handlers"] = stats.get("handlers")
            content["throughput"] = stats.get("throughput")
        workers = client.request(Op.WORKERS, {"limit": WORKERS_SHOWN})
        content["worker_list"] = render(workers["workers"])
        content["more_workers"] = workers["next"] is not None
        content["workers"] = (stats or {}).get("workers") or _summary(workers["workers"])
        running = client.request(
            Op.LIST, {"status": TaskStatus.RUNNING.value, "limit": RUNNING_SHOWN}
        )
        content["running"] = [render(brief(task)) for task in running["tasks"]]
        content["more_running"] = running["next"] is not None
        content["failures"] = [render(brief(task)) for task in self._failures.newest(client)]
        return content

    def _ask_stats(self, client: Requester) -> dict[str, Any] | None:
        if not self._stats:
            return None
        try:
            stats: dict[str, Any] = client.request(Op.STATS, {})
        except Unavailable:
            raise
        except SchedulerError:
            # A broker older than the API: counts from health from now on.
            self._stats = False
            return None
        return stats


def _summary(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' figures of ``stats``, from a page of workers (all of them, or the first
    ``WORKERS_SHOWN`` when the broker has no ``stats``)."""
    online = [w for w in workers if w.get("status") == "online"]
    by_kind: dict[str, int] = {}
    for worker in online:
        by_kind[worker.get("kind", "?")] = by_kind.get(worker.get("kind", "?"), 0) + 1
    return {
        "online": len(online),
        "draining": sum(1 for w in online if w.get("draining")),
        "slots": {
            "used": sum(len(w.get("running") or []) for w in online),
            "total": sum(w.get("slots") or 0 for w in online),
        },
        "by_kind": by_kind,
    }
