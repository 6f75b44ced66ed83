"""The dashboard's feed, stream and files, against an in-process scheduler or a fake broker."""

from __future__ import annotations

import json
import time
from typing import Any

import falcon.testing
import pytest

from api.app import create_app
from api.events import Stream
from api.feed import Feed, NewestFailures, Throughput, TooBusy
from common.errors import InvalidInput
from common.ops import Op
from common.settings import Settings


class FailedTasks:
    """A broker that knows only failed tasks, numbered by ``seqs``, and counts the requests."""

    def __init__(self, seqs: list[int]) -> None:
        self.seqs = sorted(seqs)
        self.requests = 0

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        assert op is Op.LIST and args["status"] == "failed"
        self.requests += 1
        after = [s for s in self.seqs if s > args["after"]]
        page = after[: args["limit"]]
        more = len(after) > len(page)
        return {"tasks": [{"id": str(s)} for s in page], "next": page[-1] if more else None}


def ids(tasks: list[dict[str, Any]]) -> list[int]:
    return [int(t["id"]) for t in tasks]


def test_the_newest_failures_are_found_with_few_requests_among_a_million() -> None:
    # given a million tasks of which every third failed
    broker = FailedTasks(list(range(3, 1_000_000, 3)))
    newest = NewestFailures(shown=20)
    # when the newest are asked for
    found = ids(newest.newest(broker))
    # then they are the last 20, newest first, after a few dozen one-page requests
    assert found == broker.seqs[-20:][::-1]
    assert broker.requests < 60
    # and asking again with nothing new costs one request
    broker.requests = 0
    assert ids(newest.newest(broker)) == found
    assert broker.requests == 1


def test_new_failures_and_retried_ones_move_the_cursor() -> None:
    broker = FailedTasks(list(range(1, 101)))
    newest = NewestFailures(shown=5)
    assert ids(newest.newest(broker)) == [100, 99, 98, 97, 96]
    broker.seqs += [150, 151, 152]
    assert ids(newest.newest(broker)) == [152, 151, 150, 100, 99]
    broker.seqs = [s for s in broker.seqs if s < 99 or s > 151]  # retried or purged
    assert ids(newest.newest(broker)) == [152, 98, 97, 96, 95]
    broker.seqs = [7, 9]
    assert ids(newest.newest(broker)) == [9, 7]
    broker.seqs = []
    assert newest.newest(broker) == []


def test_throughput_counts_what_finished_in_each_bucket() -> None:
    series = Throughput(bucket=10, buckets=4)
    assert series.add(1000.0, 5, 1)["completed"] == [0, 0, 0, 0]
    assert series.add(1005.0, 8, 1)["completed"] == [0, 0, 0, 3]
    got = series.add(1012.0, 20, 4)
    assert got == {"bucket": 10, "completed": [0, 0, 3, 12], "failed": [0, 0, 0, 3]}
    # a count that went down (tasks pruned) is not a negative throughput
    assert series.add(1031.0, 2, 0)["completed"] == [3, 12, 0, 0]
    assert series.add(1045.0, 1, 0)["completed"] == [12, 0, 0, 0]


class Counting:
    """A broker whose counts are ``value``; with ``stats`` false, one older than ``stats``."""

    def __init__(self, value: dict[str, Any], stats: bool = True) -> None:
        self.value = value
        self.stats = stats

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        if op is Op.STATS:
            if not self.stats:
                raise InvalidInput("op must be one of ...")
            workers = {"online": 0, "draining": 0, "slots": {"used": 0, "total": 0}, "by_kind": {}}
            throughput = {"bucket": 10, "completed": [0] * 90, "failed": [0] * 90}
            return {"tasks": dict(self.value), "handlers": {}, "workers": workers,
                    "throughput": throughput, "uptime": 1.0}  # fmt: skip
        if op is Op.HEALTH:
            return {"tasks": dict(self.value), "unservable": 0}
        if op is Op.WORKERS:
            return {"workers": [], "next": None}
        return {"tasks": [], "next": None}


@pytest.mark.parametrize("stats", [True, False], ids=["stats", "older-broker"])
def test_one_poll_serves_every_listener_and_a_listener_too_many_is_refused(stats: bool) -> None:
    broker = Counting({"completed": 1}, stats)
    # A clock that stands still: the throughput worked out from health's counts moves to a
    # new bucket every 10 s, which would be news where the test expects a heartbeat.
    feed = Feed(lambda: broker, interval=0.05, max_listeners=3, idle_stop=0.2, clock=lambda: 1e9)
    streams = []
    for _ in range(3):
        feed.join()
        streams.append(Stream(feed, lifetime=30, heartbeat=0.5))
    try:
        feed.join()
        raise AssertionError("a fourth listener was let in")
    except TooBusy:
        pass
    # each stream starts with its reconnect delay, then the same snapshot
    firsts = [(next(s), next(s)) for s in streams]
    assert all(first.startswith(b"retry: ") for first, _ in firsts)
    assert len({snapshot for _, snapshot in firsts}) == 1
    data = json.loads(firsts[0][1].split(b"data: ", 1)[1])
    assert data["tasks"] == {"completed": 1}
    assert data["source"] == ("stats" if stats else "health")
    # a change reaches every stream; no change is a heartbeat
    broker.value = {"completed": 2}
    assert all(b'"completed":2' in next(s) for s in streams)
    assert next(streams[0]) == b": heartbeat\n\n"
    # the listeners leave (the server closes each stream), and the poll stops
    for stream in streams:
        stream.close()
        stream.close()
    assert feed.listeners == 0
    polls = feed.polls
    time.sleep(0.6)
    assert feed.polls <= polls + 6


def test_a_stream_ends_after_its_lifetime() -> None:
    feed = Feed(lambda: Counting({}), interval=0.05, idle_stop=0)
    feed.join()
    now = [0.0]
    stream = Stream(feed, lifetime=10, heartbeat=0.1, clock=lambda: now[0])
    assert next(stream).startswith(b"retry: ")
    now[0] = 11.0
    assert next(stream) == b"event: end\ndata: {}\n\n"
    assert list(stream) == []
    stream.close()
    assert feed.listeners == 0


def test_a_broker_that_does_not_answer_is_a_snapshot_saying_so() -> None:
    class Silent:
        def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
            from common.errors import Unavailable

            raise Unavailable("no answer in 5 s")

    assert "does not answer" in Feed(lambda: Silent()).poll()["error"]


def test_the_page_and_its_files_are_served_open_and_events_need_a_token() -> None:
    app = create_app(client=lambda: Counting({}), settings=Settings(), tokens=None)
    http = falcon.testing.TestClient(app)
    page = http.simulate_get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert b'src="/dashboard.js"' in page.content
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for path, media_type in (("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")):
        got = http.simulate_get(path)
        assert got.status_code == 200 and got.headers["content-type"].startswith(media_type)
    head = http.simulate_head("/events")
    assert head.status_code == 200 and head.headers["content-type"] == "text/event-stream"
