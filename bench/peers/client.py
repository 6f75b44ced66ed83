"""One measurement in a fresh process; prints one JSON line.

usage: client.py SYSTEM {ready,throughput,latency,enqueue} [--n N] [--workers K]
Timing uses time.perf_counter(); connection set-up and a short warm-up are untimed.
"""
import argparse
import importlib
import json
import math
import sys
import time

WARMUP = 20


def pct(sorted_vals, p):
    """Nearest-rank percentile."""
    return sorted_vals[max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)]


def warm(c):
    for i in range(WARMUP):
        assert c.result(c.submit(i)) == i


def ready(c, k, deadline_s=90):
    """Block until k distinct worker processes have each run a task."""
    seen, t_end = set(), time.monotonic() + deadline_s
    while len(seen) < k:
        if time.monotonic() > t_end:
            raise SystemExit(f"only {len(seen)} of {k} worker processes answered")
        hs = [c.submit_whoami(0.05) for _ in range(2 * k)]
        seen.update(c.result(h, timeout=deadline_s) for h in hs)
    warm(c)
    return {"worker_pids": sorted(seen)}


def throughput(c, n):
    warm(c)
    if hasattr(c, "throughput_batch"):  # optional: the adapter's batch API (label says so)
        return throughput_batch(c, n)
    c0, t0 = time.process_time(), time.perf_counter()
    handles = [c.submit(i) for i in range(n)]
    if hasattr(c, "flush"):  # an adapter that keeps submits in flight: all acknowledged
        c.flush()
    t_enq = time.perf_counter()
    for i, h in enumerate(handles):
        if c.result(h) != i:
            raise SystemExit(f"wrong result for task {i}")
    wall = time.perf_counter() - t0
    return {"n": n, "wall_s": wall, "rate": n / wall, "enqueue_phase_s": t_enq - t0,
            "client_cpu_s": time.process_time() - c0}


def throughput_batch(c, n):
    """As throughput, but the adapter enqueues and collects all n in batches:
    c.throughput_batch(n) -> (perf_counter after the last enqueue, results in order)."""
    c0, t0 = time.process_time(), time.perf_counter()
    t_enq, results = c.throughput_batch(n)
    if len(results) != n:
        raise SystemExit(f"{len(results)} results for {n} tasks")
    for i, r in enumerate(results):
        if r != i:
            raise SystemExit(f"wrong result for task {i}")
    wall = time.perf_counter() - t0
    return {"n": n, "wall_s": wall, "rate": n / wall, "enqueue_phase_s": t_enq - t0,
            "client_cpu_s": time.process_time() - c0, "batch": True}


def latency(c, n):
    warm(c)
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        r = c.result(c.submit(i))
        lat.append((time.perf_counter() - t0) * 1e3)
        if r != i:
            raise SystemExit(f"wrong result for task {i}")
    lat.sort()
    return {"n": n, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "mean_ms": sum(lat) / n, "max_ms": lat[-1]}


def enqueue(c, n):
    for i in range(WARMUP):  # untimed: opens connections, declares queues
        c.submit(i)
    if hasattr(c, "flush"):
        c.flush()
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        c.submit(i)
    if hasattr(c, "flush"):  # an adapter that keeps submits in flight: all acknowledged
        c.flush()
    wall = time.perf_counter() - t0
    return {"n": n, "wall_s": wall, "rate": n / wall, "client_cpu_s": time.process_time() - c0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("system")
    ap.add_argument("workload", choices=["ready", "throughput", "latency", "enqueue"])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    c = importlib.import_module(f"peers_{a.system}").Client()
    if a.workload == "ready":
        out = ready(c, a.workers)
    else:
        out = globals()[a.workload](c, a.n)
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
