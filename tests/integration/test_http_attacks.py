"""Slow, idle and long-waiting clients do not starve the REST API's other callers.

Each attack of ``bench.attack_http`` runs at the scaled-down sizes of its ``QUICK`` (40
slow connections, 1,000 idle ones, 200 long waits and 10 long-polls) against the API
under gunicorn, the slow ones with timeouts of 2 s so that cut-offs happen within a
test; ``make attack-http`` runs them at full size. Throughout each, a prober's ``GET /health`` must
answer, and an honest client's tasks complete.

The bounds, p99 <= 200 ms and max <= 1 s: the machine has 2 cores, shared by the
attacking process, gunicorn's 2 processes, the broker, a worker and the prober, so a
probe may wait some scheduler slices for a core (its p50 unloaded is ~3 ms). A starved
API is far outside them: a probe then gets no answer within 2 s (``PROBE_TIMEOUT``).
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from bench.attack_http import QUICK, Outcome, measure
from bench.harness import Api, Procs, start_api, start_broker, start_worker, wait_workers
from tests.conftest import Stack

#: The API's header and body timeouts in these tests, in seconds.
TIMEOUT = 2
#: Bounds on the prober's latency during an attack, in milliseconds (see above).
P99_BOUND = 200.0
MAX_BOUND = 1000.0

#: They time how others are served during an attack: run alone (make test).
pytestmark = pytest.mark.serial


def serve(timeout: int) -> Iterator[tuple[Procs, Api]]:
    with Procs() as procs:
        broker = start_broker(procs)
        start_worker(procs, broker.endpoint, "honest", 4)
        wait_workers(broker.endpoint, ["honest"])
        served = start_api(procs, broker.endpoint, 2, "--header-timeout", str(timeout),
                           "--body-timeout", str(timeout))  # fmt: skip
        yield procs, served
        # Killed, not stopped: a graceful stop lets the long waits the attackers left behind
        # run out (up to 30 s), which is what it is for, and not what these tests measure.
        served.proc.kill()


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[Procs, Api]]:
    """The API with short timeouts: connections are cut off within a test."""
    yield from serve(TIMEOUT)


@pytest.fixture(scope="module")
def roomy_api() -> Iterator[tuple[Procs, Api]]:
    """The API with timeouts longer than an attack: its connections stay while measured
    (with 2 s, 1,000 idle connections would be cut and reopened 500 times a second)."""
    yield from serve(int(QUICK.duration) + 10)


def assert_not_starved(outcome: Outcome) -> None:
    print(outcome.row())
    assert outcome.health_failed == 0, outcome.row()
    assert outcome.health.p99 <= P99_BOUND, outcome.row()
    assert outcome.health.max <= MAX_BOUND, outcome.row()
    assert outcome.honest_done == outcome.honest_tasks, outcome.row()


@pytest.mark.parametrize("attack", ["slow-headers", "slow-bodies"])
def test_slow_connections_are_cut_off_and_starve_no_one(
    api: tuple[Procs, Api], attack: str
) -> None:
    procs, served = api
    # given an attack holding its connections open (and reopening those cut off)
    # when health and an honest client are measured for QUICK.duration seconds
    outcome = measure(procs, served.port, attack, QUICK)

    # then neither waited for the attack
    assert_not_starved(outcome)
    # and the attack's connections were cut off after about the timeout
    attacker = outcome.attacker
    assert attacker["cut"] >= 1, outcome.row()
    assert attacker["longest_s"] <= TIMEOUT + 5, outcome.row()


def test_idle_connections_starve_no_one(roomy_api: tuple[Procs, Api]) -> None:
    procs, served = roomy_api
    # given 1,000 connections that send nothing
    # when health and an honest client are measured meanwhile
    outcome = measure(procs, served.port, "idle", QUICK)

    # then neither waited for them
    assert_not_starved(outcome)
    assert outcome.attacker["open"] >= QUICK.idle - 5, outcome.row()


def test_long_waits_hold_no_thread(roomy_api: tuple[Procs, Api]) -> None:
    procs, served = roomy_api
    # given 200 GET /tasks/{id}?wait=30 on a task that never finishes, and 10 HTTP
    # workers' long-polls, all waiting
    # when health and an honest client are measured meanwhile
    outcome = measure(procs, served.port, "long-waits", QUICK)

    # then neither waited for them
    assert_not_starved(outcome)
    assert outcome.attacker["requests"] == QUICK.waiters + QUICK.pollers


def raw_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + 10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_body_slower_than_the_timeout_is_a_408(api: tuple[Procs, Api]) -> None:
    _, served = api
    # given a request whose body stops coming after its first byte
    with raw_connection(served.port) as sock:
        sock.sendall(
            b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        # when the server stops waiting, then it answers 408 with a JSON body, and closes
        answer = read_all(sock)
    assert time.monotonic() - started >= TIMEOUT - 0.5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["title"] == "Request timeout"


def test_headers_slower_than_the_timeout_are_cut_off(api: tuple[Procs, Api]) -> None:
    _, served = api
    # given a request whose headers come a line a second, never ending
    with raw_connection(served.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        for _ in range(int(TIMEOUT + 10)):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:  # reset: cut off
                closed = True
                break
            sock.settimeout(1.0)
            try:
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        # then the server closed it, after about the header timeout and not before
        assert closed
    assert TIMEOUT - 0.5 <= time.monotonic() - started <= TIMEOUT + 8


def test_a_graceful_stop_closes_idle_keep_alive_connections_at_once(stack: Stack) -> None:
    # Given an API whose clients may take a minute between requests, and one client that
    # made a request and keeps its connection open.
    stack.start_broker()
    api = stack.start_api("--header-timeout", "60")
    host, port = stack.api_url.removeprefix("http://").rsplit(":", 1)
    idle = http.client.HTTPConnection(host, int(port), timeout=90)
    idle.request("GET", "/health")
    assert idle.getresponse().read()
    # When it is asked to stop (SIGTERM, as zmq-scheduler up and service managers do).
    api.signal(signal.SIGTERM)
    # Then it is gone well before that minute: the idle connection did not hold it.
    assert api.popen.wait(timeout=30) == 0
    idle.close()
