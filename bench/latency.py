"""Latency (issue item 3): sequential submit → result round trips, direct and over HTTP.

A broker with a durable store (``--sync full``), one ``zmq-worker`` (4 slots; only one
task is ever in flight) and the REST API under gunicorn (2 processes × 16 threads,
the defaults). One task at a time, each started when the previous result came back:

- direct: ``client.submit("echo", args)`` then ``client.wait(id, timeout)`` on one
  ``Client`` (two broker round trips; the submit's reply waits for its commit);
- HTTP: ``POST /tasks`` then ``GET /tasks/{id}?wait=10`` on one keep-alive
  ``http.client`` connection (args and result in base64).

2,000 of each after 100 unmeasured warm-up ones; p50, p99 and max in milliseconds,
measured in this process with ``time.perf_counter``; every result must equal its
args. The direct p50 is compared with the floor's one-at-a-time round trip, which is
a single round trip through a relay and an echo worker with no store.
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


def direct(endpoint: str, count: int, warmup: int) -> Latency:
    samples: list[float] = []
    deadline = time.monotonic() + TIME_LIMIT
    with Client(endpoint, timeout=10) as client:
        for i in range(warmup + count):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(samples)} direct round trips in {TIME_LIMIT:g} s")
            began = time.perf_counter()
            task_id = client.submit("echo", task_args(i))
            task = client.wait(task_id, timeout=10)
            elapsed = time.perf_counter() - began
            if task["status"] != "completed" or task["result"] != task_args(i):
                raise RuntimeError(f"task {i} ended wrong: {task!r}")
            if i >= warmup:
                samples.append(elapsed)
    return Latency.of(samples)


def over_http(port: int, count: int, warmup: int) -> Latency:
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
            conn.request("POST", "/tasks", body, headers)
            response = conn.getresponse()
            created = json.loads(response.read())
            if response.status != 201:
                raise RuntimeError(f"POST /tasks answered {response.status}: {created}")
            conn.request("GET", f"/tasks/{created['id']}?wait=10")
            response = conn.getresponse()
            task = json.loads(response.read())
            elapsed = time.perf_counter() - began
            if response.status != 200 or task["status"] != "completed" or task["result"] != args:
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
        lat = direct(broker.endpoint, count, WARMUP)
        web = over_http(port, count, WARMUP)
    serial = floor.serial
    what = f"{count:,} round trips, 1 worker, sync=full"
    report.add(f"direct p50 ({what})", lat.p50, "ms", target=Target("<=", 3, on_ratio=True),
               base=serial.p50, base_name="floor p50")  # fmt: skip
    report.add("direct p99", lat.p99, "ms", target=Target("<", 2), base=serial.p99,
               base_name="floor p99")  # fmt: skip
    report.add("direct max", lat.max, "ms", base=serial.max, base_name="floor max")
    report.add("HTTP p50 (POST /tasks + GET ?wait)", web.p50, "ms", target=Target("<", 2),
               base=serial.p50, base_name="floor p50")  # fmt: skip
    report.add("HTTP p99", web.p99, "ms", base=serial.p99, base_name="floor p99")
    report.add("HTTP max", web.max, "ms", base=serial.max, base_name="floor max")
    return report


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, argv)


if __name__ == "__main__":
    main()
