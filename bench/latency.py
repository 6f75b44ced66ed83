"""Latency (issue item 3): sequential submit → result round trips, direct and over HTTP.

A broker with a durable store (``--sync full``), one ``zmq-worker`` (4 slots; only one
task is ever in flight) and the REST API under gunicorn (2 processes × 16 threads,
the defaults). One task at a time, each started when the previous result came back:

- direct, one call: ``client.run("echo", args)`` on one ``Client`` (one broker round
  trip: the submit's answer comes when the task is final and committed);
- direct, two calls: ``client.submit`` then ``client.wait`` (two round trips; the
  submit's reply waits for its own commit);
- HTTP, one request: ``POST /tasks?wait=10`` on one keep-alive ``http.client``
  connection (args and result in base64);
- HTTP, two requests: ``POST /tasks`` then ``GET /tasks/{id}?wait=10``.

2,000 of each after 100 unmeasured warm-up ones; p50, p99 and max in milliseconds,
measured in this process with ``time.perf_counter``; every result must equal its
args. The targets apply to the one-call paths, the ones to use when the result is
wanted at once; the direct p50 is compared with the floor's one-at-a-time round
trip, which is a single round trip through a relay and an echo worker with no store.
"""

from __future__ import annotations

import base64
import http.client
import json
import time

from bench import floor as floor_mod
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
from common.client import Client

#: Round trips measured, each way.
ROUND_TRIPS = 2000
#: Unmeasured round trips first.
WARMUP = 100
#: Slots of the one worker.
CONCURRENCY = 4
#: Gunicorn processes and threads of the API (the defaults of ``zmq-api``).
API_PROCESSES = 2
API_THREADS = 16
#: Longest a run may take, in seconds.
TIME_LIMIT = 300.0


def task_args(i: int) -> bytes:
    return b"lat-%05d" % i


def direct(endpoint: str, count: int, warmup: int, one_call: bool) -> Latency:
    samples: list[float] = []
    deadline = time.monotonic() + TIME_LIMIT
    with Client(endpoint, timeout=10) as client:
        for i in range(warmup + count):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(samples)} direct round trips in {TIME_LIMIT:g} s")
            began = time.perf_counter()
            if one_call:
                [task] = client.submit_and_wait([{"handler": "echo", "args": task_args(i)}], 10)
            else:
                task = client.wait(client.submit("echo", task_args(i)), timeout=10)
            elapsed = time.perf_counter() - began
            if task["status"] != "completed" or task["result"] != task_args(i):
                raise RuntimeError(f"task {i} ended wrong: {task!r}")
            if i >= warmup:
                samples.append(elapsed)
    return Latency.of(samples)


def over_http(port: int, count: int, warmup: int, one_call: bool) -> Latency:
    samples: list[float] = []
    deadline = time.monotonic() + TIME_LIMIT
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    try:
        for i in range(warmup + count):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(samples)} HTTP round trips in {TIME_LIMIT:g} s")
            args = base64.b64encode(task_args(i)).decode()
            body = json.dumps({"handler": "echo", "args": args})
            began = time.perf_counter()
            conn.request("POST", "/tasks?wait=10" if one_call else "/tasks", body, headers)
            response = conn.getresponse()
            task = json.loads(response.read())
            if response.status != 201:
                raise RuntimeError(f"POST /tasks answered {response.status}: {task}")
            if not one_call:
                conn.request("GET", f"/tasks/{task['id']}?wait=10")
                response = conn.getresponse()
                task = json.loads(response.read())
            elapsed = time.perf_counter() - began
            if (
                response.status not in (200, 201)
                or task["status"] != "completed"
                or task["result"] != args
            ):
                raise RuntimeError(f"task {i} ended wrong: {response.status} {task!r}")
            if i >= warmup:
                samples.append(elapsed)
    finally:
        conn.close()
    return Latency.of(samples)


def run(quick: bool = False, floor: floor_mod.Floor | None = None) -> Report:
    count = ROUND_TRIPS // 10 if quick else ROUND_TRIPS
    floor = floor or floor_mod.measure(quick)
    report = Report("latency: sequential submit -> result")
    with Procs() as procs:
        broker = start_broker(procs, "--sync", "full")
        start_workers(procs, broker.endpoint, 1, CONCURRENCY)
        port = start_api(procs, broker.endpoint, API_PROCESSES, API_THREADS).port
        one = direct(broker.endpoint, count, WARMUP, one_call=True)
        two = direct(broker.endpoint, count, WARMUP, one_call=False)
        web_one = over_http(port, count, WARMUP, one_call=True)
        web_two = over_http(port, count, WARMUP, one_call=False)
    serial = floor.serial
    what = f"{count:,} round trips, 1 worker, sync=full"
    report.add(f"direct p50, one call: run() ({what})", one.p50, "ms",
               target=Target("<=", 3, on_ratio=True), base=serial.p50,
               base_name="floor p50")  # fmt: skip
    report.add("direct p99, one call", one.p99, "ms", target=Target("<", 2), base=serial.p99,
               base_name="floor p99")  # fmt: skip
    report.add("direct max, one call", one.max, "ms", base=serial.max, base_name="floor max")
    report.add("direct p50, two calls: submit() + wait()", two.p50, "ms", base=serial.p50,
               base_name="floor p50")  # fmt: skip
    report.add("direct p99, two calls", two.p99, "ms", base=serial.p99, base_name="floor p99")
    report.add("HTTP p50, one request: POST /tasks?wait", web_one.p50, "ms",
               target=Target("<", 2), base=serial.p50, base_name="floor p50")  # fmt: skip
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
