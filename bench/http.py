"""HTTP (issue item 2): request rates through the REST API under gunicorn.

A broker with a durable store (``--sync full``) and no workers (so ``POST /tasks``
measures submitting only: tasks stay pending), and the API under gunicorn (``zmq-api``,
gevent, 2 processes, its defaults). The load generator is Python:
2 processes × 16 threads, each thread with its own keep-alive ``http.client``
connection (32 connections), all connected first, then starting at the same moment
and sending requests back to back for a fixed time (10 s); only answers with the
expected status count. The generator shares the machine's 2 cores with gunicorn and
the broker, so the rates are those of the whole stack on this machine, generator
included; each figure's note gives the CPU each part used (percent of one core).

- ``GET /health`` (one broker round trip, no store write): the baseline;
- ``POST /tasks`` with one 8-byte task: requests/s, compared with the baseline;
- ``POST /tasks/batch`` with 1,000 tasks a request: tasks/s.

If ``wrk`` is installed, ``GET /health`` and ``POST /tasks`` are also measured with it
(2 threads, 32 connections), for reference.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    START_TIMEOUT,
    Api,
    Broker,
    CpuMeter,
    Procs,
    Report,
    Target,
    arg_parser,
    barrier_release,
    barrier_wait,
    start_api,
    start_broker,
    write_json,
)

#: Load generator processes and threads per process (one connection per thread).
GEN_PROCESSES = 2
GEN_THREADS = 16
#: Gunicorn processes of the API (the default of ``zmq-api``).
API_PROCESSES = 2
#: Seconds each measurement lasts.
DURATION = 10.0
#: Tasks per ``POST /tasks/batch``.
BATCH = 1000

ARGS = base64.b64encode(b"12345678").decode()
KINDS: dict[str, tuple[str, str, int, int]] = {
    # kind: method, path, expected status, tasks per request
    "health": ("GET", "/health", 200, 0),
    "post": ("POST", "/tasks", 201, 1),
    "batch": ("POST", "/tasks/batch", 201, BATCH),
}


def _body(kind: str) -> str | None:
    if kind == "post":
        return json.dumps({"handler": "echo", "args": ARGS})
    if kind == "batch":
        return json.dumps({"tasks": [{"handler": "echo", "args": ARGS}] * BATCH})
    return None


# -- the generator (``python -m bench.http load``) -------------------------------------------


def _connection(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def _load_thread(
    port: int,
    kind: str,
    ready: threading.Barrier,
    go: threading.Event,
    times: list[float],
    out: list[dict[str, Any]],
) -> None:
    method, path, expected, _ = KINDS[kind]
    body = _body(kind)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn = _connection(port)
    ok = errors = 0
    statuses: dict[str, int] = {}
    conn.request(method, path, body, headers)  # connect (and warm up) before the start
    conn.getresponse().read()
    ready.wait(START_TIMEOUT)
    go.wait(START_TIMEOUT)
    stop_at = times[1]
    while time.time() < stop_at:
        try:
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            errors += 1
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
            conn.close()
            conn = _connection(port)
            continue
        if response.status == expected:
            ok += 1
        else:
            errors += 1
            statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
    out.append({"ok": ok, "errors": errors, "statuses": statuses, "end": time.time()})
    conn.close()


def load_main(args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = []
    ready = threading.Barrier(args.threads + 1)
    go = threading.Event()
    times: list[float] = []
    threads = [
        threading.Thread(
            target=_load_thread,
            args=(args.port, args.kind, ready, go, times, results),
            daemon=True,
        )
        for _ in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    ready.wait(START_TIMEOUT)  # every connection open
    start = barrier_wait(args.barrier, str(os.getpid()))
    times[:] = [start, start + args.duration]
    go.set()
    for thread in threads:
        thread.join(args.duration + 60)
    if len(results) != len(threads):
        raise SystemExit("a load thread failed or hung")
    write_json(args.out, {"threads": results, "cpu": time.process_time()})


# -- the benchmark -------------------------------------------------------------------------


@dataclass
class Rate:
    requests: int
    errors: int
    seconds: float
    statuses: dict[str, int]
    #: Percent of one core used by: the generator, gunicorn, the broker.
    cpu: dict[str, float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def measure(procs: Procs, api: Api, broker: Broker, kind: str, duration: float) -> Rate:
    """32 keep-alive connections sending ``kind`` requests back to back for ``duration``."""
    barrier = procs.dir / f"barrier-{kind}"
    barrier.mkdir()
    children = [
        procs.python("http-load", "bench.http", "load", "--port", str(api.port), "--kind", kind,
                     "--threads", str(GEN_THREADS), "--barrier", str(barrier),
                     "--duration", repr(duration), "--out", str(procs.dir / f"{kind}-{i}.json"))
        for i in range(GEN_PROCESSES)
    ]  # fmt: skip
    meter = CpuMeter({"gunicorn": api.proc.pid, "broker": broker.proc.pid})
    start = barrier_release(str(barrier), children)
    meter.start()
    results: list[dict[str, Any]] = []
    generator_cpu = 0.0
    for i, child in enumerate(children):
        if child.wait(duration + 120) != 0:
            raise RuntimeError(f"load generator failed: {child.tail()}")
        out = json.loads((procs.dir / f"{kind}-{i}.json").read_text())
        results += out["threads"]
        generator_cpu += out["cpu"]
    meter.stop()
    statuses: dict[str, int] = {}
    for result in results:
        for status, n in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    seconds = max(r["end"] for r in results) - start
    cpu = {"generator": 100 * generator_cpu / seconds, "gunicorn": meter.percent["gunicorn"],
           "broker": meter.percent["broker"]}  # fmt: skip
    return Rate(
        requests=sum(r["ok"] for r in results),
        errors=sum(r["errors"] for r in results),
        seconds=seconds,
        statuses=statuses,
        cpu=cpu,
    )


def wrk_rate(port: int, kind: str, duration: float) -> float | None:
    """Requests/s measured by ``wrk`` (2 threads, 32 connections), or None without it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    method, path, _, _ = KINDS[kind]
    script = ""
    if method == "POST":
        body = json.dumps(_body(kind))
        script = (f'wrk.method = "POST"\nwrk.body = {body}\n'
                  'wrk.headers["Content-Type"] = "application/json"\n')  # fmt: skip
    argv = [wrk, "-t2", "-c32", f"-d{max(1, round(duration))}s", f"http://127.0.0.1:{port}{path}"]
    with Procs() as procs:
        lua = procs.dir / "post.lua"
        if script:
            lua.write_text(script)
            argv[1:1] = ["-s", str(lua)]
        proc = procs.start("wrk", argv)
        proc.wait(duration + 60)
        text = proc.log_path.read_text()
    for line in text.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


def run(quick: bool = False, floor: object = None) -> Report:
    duration = DURATION / 5 if quick else DURATION
    report = Report("HTTP API under gunicorn")
    with Procs() as procs:
        broker = start_broker(procs, "--sync", "full")
        api = start_api(procs, broker.endpoint, API_PROCESSES)
        health = measure(procs, api, broker, "health", duration)
        post = measure(procs, api, broker, "post", duration)
        batch = measure(procs, api, broker, "batch", duration)
        wrk_health = wrk_rate(api.port, "health", duration)
        wrk_post = wrk_rate(api.port, "post", duration)
    setup = (f"{GEN_PROCESSES}x{GEN_THREADS} keep-alive connections, gunicorn "
             f"{API_PROCESSES} processes (gevent)")  # fmt: skip

    def note(rate: Rate) -> str:
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in rate.cpu.items())
        errors = f"; {rate.errors} errors {rate.statuses}" if rate.errors else ""
        return f"CPU (% of one core): {cpu}{errors}"

    report.add(f"GET /health requests/s ({setup})", health.per_second, "req/s",
               note=note(health))  # fmt: skip
    report.add("POST /tasks requests/s (no workers, sync=full)", post.per_second, "req/s",
               target=Target(">=", 0.5, on_ratio=True), base=health.per_second,
               base_name="GET /health", note=note(post))  # fmt: skip
    report.add(f"POST /tasks/batch tasks/s ({BATCH:,} tasks a request)",
               batch.per_second * BATCH, "tasks/s", target=Target(">=", 20_000),
               note=note(batch))  # fmt: skip
    if wrk_health is not None and wrk_post is not None:
        report.add("wrk: GET /health requests/s", wrk_health, "req/s")
        report.add("wrk: POST /tasks requests/s", wrk_post, "req/s", base=wrk_health,
                   base_name="wrk GET /health")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    parser = arg_parser(__doc__)
    sub = parser.add_subparsers(dest="role")
    p_load = sub.add_parser("load")
    p_load.add_argument("--port", type=int, required=True)
    p_load.add_argument("--kind", choices=sorted(KINDS), required=True)
    p_load.add_argument("--threads", type=int, default=GEN_THREADS)
    p_load.add_argument("--barrier", required=True)
    p_load.add_argument("--duration", type=float, default=DURATION)
    p_load.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "load":
        load_main(args)
    else:
        print(run(args.quick).table())


if __name__ == "__main__":
    main()
