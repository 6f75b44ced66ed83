"""Latency (issue item 3): sequential submit → result round trips, direct and over HTTP.

A broker with a durable store (``--sync full``), one ``zmq-worker`` (4 slots; only one
task is ever in flight) and the REST API under gunicorn (2 gevent processes, the
default). One task at a time, each started when the previous result came back:

- direct, one call: ``client.run("echo", args)`` on one ``Client`` (one broker round
  trip: the submit's answer comes when the task is final and committed);
- direct, two calls: ``client.submit`` then ``client.result`` (the submit's reply waits
  for its own commit; the outcome comes to the client unasked once the task is final, so
  the second call waits for it without a request of its own: it was ``client.wait``, a
  second round trip, before outcomes were sent);
- HTTP, one request: ``POST /tasks?wait=10`` on one keep-alive ``http.client``
  connection (args and result in base64);
- HTTP, two requests: ``POST /tasks`` then ``GET /tasks/{id}?wait=10``;
- the floor: a single round trip through the floor's relay and an echo worker, with
  no store (``bench.floor``, started beside the broker).

2,000 of each after 100 unmeasured warm-up ones, taken in turns of 100 (floor, direct
one call, direct two calls, HTTP one request, HTTP two requests, floor, ...), so that
every path sees the same moments of a noisy machine and the ratios to the floor
compare like with like. Then the direct one-call path once more, its 2,000 round trips
in a row with the other paths idle, as a client that makes only those calls sees them:
its p99 came out lower that way (1.98-3.38 ms against 2.57-6.02 in turns in full
runs; 1.52-1.87 with no other process of the benchmark started), so both are shown;
the target is held to the figure taken in turns. p50, p99 and max in milliseconds,
measured in this process with ``time.perf_counter``; every result must equal its args.
The targets apply to the one-call paths, the ones to use when the result is wanted at
once.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Callable

from bench import floor as floor_mod
from bench import reference as reference_mod
from bench.harness import (
    Latency,
    Procs,
    Report,
    Target,
    standalone,
    start_api,
    start_broker,
    start_workers,
)
from bench.reference import SCALED_NOTE
from common.client import Client

#: The issue's target for the direct p99 and the HTTP p50, in ms, as written (for its
#: 2-core machine).
TARGET_MS = 2.0
#: Round trips measured, each way.
ROUND_TRIPS = 2000
#: Unmeasured round trips first, each way.
WARMUP = 100
#: Round trips of one path before the next path's turn.
TURN = 100
#: Slots of the one worker.
CONCURRENCY = 4
#: Gunicorn processes of the API (the default of ``zmq-api``).
API_PROCESSES = 2
#: Longest a run may take, in seconds.
TIME_LIMIT = 300.0


def task_args(i: int) -> bytes:
    return b"lat-%05d" % i


Step = Callable[[int], None]


def direct_step(client: Client, one_call: bool) -> Step:
    def step(i: int) -> None:
        if one_call:
            [task] = client.submit_and_wait([{"handler": "echo", "args": task_args(i)}], 10)
        else:
            result = client.result(client.submit("echo", task_args(i)), timeout=10)
            task = {"status": "completed", "result": result}
        if task["status"] != "completed" or task["result"] != task_args(i):
            raise RuntimeError(f"task {i} ended wrong: {task!r}")

    return step


def http_step(conn: http.client.HTTPConnection, one_call: bool) -> Step:
    headers = {"Content-Type": "application/json"}

    def step(i: int) -> None:
        args = base64.b64encode(task_args(i)).decode()
        body = json.dumps({"handler": "echo", "args": args})
        conn.request("POST", "/tasks?wait=10" if one_call else "/tasks", body, headers)
        response = conn.getresponse()
        task = json.loads(response.read())
        if response.status != 201:
            raise RuntimeError(f"POST /tasks answered {response.status}: {task}")
        if not one_call:
            conn.request("GET", f"/tasks/{task['id']}?wait=10")
            response = conn.getresponse()
            task = json.loads(response.read())
        if (
            response.status not in (200, 201)
            or task["status"] != "completed"
            or (task["result"] != args)
        ):
            raise RuntimeError(f"task {i} ended wrong: {response.status} {task!r}")

    return step


def interleaved(steps: dict[str, Step], count: int, warmup: int, turn: int) -> dict[str, Latency]:
    """``count`` timed round trips of each path after ``warmup`` untimed ones, ``turn`` at a
    time from each path in order."""
    deadline = time.monotonic() + TIME_LIMIT
    i = 0
    for step in steps.values():
        for _ in range(warmup):
            step(i)
            i += 1
    samples: dict[str, list[float]] = {name: [] for name in steps}
    while any(len(timed) < count for timed in samples.values()):
        if time.monotonic() > deadline:
            done = {name: len(timed) for name, timed in samples.items()}
            raise TimeoutError(f"round trips done in {TIME_LIMIT:g} s: {done}")
        for name, step in steps.items():
            timed = samples[name]
            for _ in range(min(turn, count - len(timed))):
                began = time.perf_counter()
                step(i)
                timed.append(time.perf_counter() - began)
                i += 1
    return {name: Latency.of(timed) for name, timed in samples.items()}


def run(quick: bool = False, floor: floor_mod.Floor | None = None) -> Report:
    count = ROUND_TRIPS // 10 if quick else ROUND_TRIPS
    report = Report("latency: sequential submit -> result")
    with Procs() as procs:
        relay = floor_mod.RelayClient(floor_mod.start(procs))
        broker = start_broker(procs, "--sync", "full")
        start_workers(procs, broker.endpoint, 1, CONCURRENCY)
        port = start_api(procs, broker.endpoint, API_PROCESSES).port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            relay.wait_workers(floor_mod.WORKERS)
            with Client(broker.endpoint, timeout=10) as client:
                steps = {
                    "floor": relay.round_trip,
                    "one": direct_step(client, one_call=True),
                    "two": direct_step(client, one_call=False),
                    "web_one": http_step(conn, one_call=True),
                    "web_two": http_step(conn, one_call=False),
                }
                got = interleaved(steps, count, WARMUP, TURN)
                # The one-call direct path again, all its round trips in a row.
                alone = interleaved({"one": steps["one"]}, count, 0, count)["one"]
        finally:
            conn.close()
            relay.close()
    serial, one, two, web_one, web_two = (got[k] for k in steps)
    reference = floor.reference if floor is not None else reference_mod.measure(quick)
    scaled = TARGET_MS / reference.serial_speed
    report.add("floor one-at-a-time round trip p50 (taken in turns with the paths below)",
               serial.p50, "ms")  # fmt: skip
    report.add("floor one-at-a-time round trip p99", serial.p99, "ms")
    what = f"{count:,} round trips, 1 worker, sync=full"
    report.add(f"direct p50, one call: run() ({what})", one.p50, "ms",
               target=Target("<=", 3, on_ratio=True), base=serial.p50,
               base_name="floor p50")  # fmt: skip
    report.add("direct p99, one call", one.p99, "ms", target=Target("<", TARGET_MS),
               base=serial.p99, base_name="floor p99")  # fmt: skip
    report.add("direct p99, one call, against 2 ms scaled to this machine", one.p99, "ms",
               target=Target("<", round(scaled, 2)), base=scaled, base_name="scaled target",
               note=SCALED_NOTE)  # fmt: skip
    report.add("direct max, one call", one.max, "ms", base=serial.max, base_name="floor max")
    report.add("direct p50, one call, its round trips in a row (not in turns)", alone.p50, "ms")
    report.add("direct p99, one call, its round trips in a row", alone.p99, "ms")
    report.add("direct p50, two calls: submit() + result()", two.p50, "ms", base=serial.p50,
               base_name="floor p50")  # fmt: skip
    report.add("direct p99, two calls", two.p99, "ms", base=serial.p99, base_name="floor p99")
    report.add("HTTP p50, one request: POST /tasks?wait", web_one.p50, "ms",
               target=Target("<", TARGET_MS), base=serial.p50,
               base_name="floor p50")  # fmt: skip
    report.add("HTTP p50, one request, against 2 ms scaled to this machine", web_one.p50, "ms",
               target=Target("<", round(scaled, 2)), base=scaled, base_name="scaled target",
               note=SCALED_NOTE)  # fmt: skip
    report.add("HTTP p99, one request", web_one.p99, "ms", base=serial.p99,
               base_name="floor p99")  # fmt: skip
    report.add("HTTP max, one request", web_one.max, "ms", base=serial.max,
               base_name="floor max")  # fmt: skip
    report.add("HTTP p50, two requests: POST + GET ?wait", web_two.p50, "ms", base=serial.p50,
               base_name="floor p50")  # fmt: skip
    report.add("HTTP p99, two requests", web_two.p99, "ms", base=serial.p99,
               base_name="floor p99")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, argv)


if __name__ == "__main__":
    main()
