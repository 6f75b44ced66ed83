"""Round trips beside a flood: how long one client waits while another pipelines submits.

A broker (``--sync off``) and one ``zmq-worker`` of one slot. One client makes round
trips, one task at a time: ``Client.submit`` of an ``echo``, then ``Client.result``.
First ``IDLE`` of them with nothing else running; then, while a flood process pipelines
batches of ``FLOOD_BATCH`` tasks that no worker serves (``Client.pipeline()``, each batch
flushed before the next) for ``FLOOD_SECONDS``, as many as fit.

The broker queues a large pipelined submit and takes it in 32 tasks at a time between
other messages (``broker.intake``). Before it did, a round trip that met a batch waited
for all of it: in one sitting, p99 under the flood was 106-132 ms and 150-176 round
trips were done in 4 s; with the queue, p99 26-32 ms and 424-445 round trips (p50 rose
from 2.3-4.1 to 9.4-10 ms: each round trip now shares the commits of the flood's tasks,
at most 512 of them, rather than most of them falling between two whole batches).

Figures: p50, p99 and max under the flood, each against the p50 with nothing else
running; the round trips done under the flood, against what the idle p50 would allow;
and the tasks the flood got in. Every result must equal its args.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.floor import Floor
from bench.harness import (
    Latency,
    Procs,
    Report,
    Target,
    standalone,
    start_broker,
    start_workers,
    write_json,
)
from common.client import Client

#: Round trips with nothing else running (after ``WARMUP`` unmeasured ones).
IDLE = 500
WARMUP = 50
#: Seconds of round trips under the flood.
FLOOD_SECONDS = 4.0
#: Tasks a batch of the flood's pipeline holds, and the most it sends in all.
FLOOD_BATCH = 10_000
FLOOD_MOST = 400_000
#: A handler no worker serves: the flood's tasks wait, and only their intake is measured.
NOBODY = "bench-flood-nobody"
#: Longest the flood process may take beyond its seconds.
SLACK_SECONDS = 120.0


def _flooder(endpoint: str, seconds: float, out: str) -> None:
    """Pipeline batches until ``seconds`` have passed; write how many were acknowledged."""
    sent = 0
    ends = time.monotonic() + seconds
    with Client(endpoint, timeout=60) as client:
        while time.monotonic() < ends and sent < FLOOD_MOST:
            with client.pipeline() as pipe:
                for _ in range(FLOOD_BATCH):
                    pipe.submit(NOBODY, b"x")
            sent += FLOOD_BATCH
    write_json(out, {"tasks": sent})


def _round_trip(client: Client, i: int) -> float:
    args = b"flood-%06d" % i
    began = time.perf_counter()
    result = client.result(client.submit("echo", args), timeout=60)
    took = time.perf_counter() - began
    if result != args:
        raise RuntimeError(f"round trip {i} returned {result!r}")
    return took


def run(quick: bool = False, floor: Floor | None = None) -> Report:
    idle_count = IDLE // 10 if quick else IDLE
    seconds = FLOOD_SECONDS / 4 if quick else FLOOD_SECONDS
    report = Report("round trips beside a flood of pipelined submits")
    with Procs() as procs:
        broker = start_broker(procs, "--sync", "off")
        start_workers(procs, broker.endpoint, 1, 1)
        with Client(broker.endpoint, timeout=60) as client:
            for i in range(WARMUP):
                _round_trip(client, i)
            idle = Latency.of([_round_trip(client, i) for i in range(idle_count)])
            out = procs.dir / "flooder.json"
            flooder = procs.python(
                "flooder", "bench.flood", "flooder", "--endpoint", broker.endpoint,
                "--seconds", str(seconds), "--out", str(out),
            )  # fmt: skip
            # Measured once the flood's first batch is on its way (or a second has passed).
            began = time.monotonic()
            while client.stats()["tasks"]["pending"] == 0 and time.monotonic() < began + 1:
                time.sleep(0.01)
            samples: list[float] = []
            ends = time.monotonic() + seconds * 0.9
            while time.monotonic() < ends:
                samples.append(_round_trip(client, len(samples)))
            if flooder.wait(seconds + SLACK_SECONDS) != 0:
                raise RuntimeError(f"the flood failed: {flooder.tail()}")
        flooded = Latency.of(samples)
        tasks = json.loads(out.read_text())["tasks"]
    base = f"{idle_count} alone"
    report.add("round trip p50, nothing else running", idle.p50, "ms")
    report.add("round trip p50 beside the flood", flooded.p50, "ms", base=idle.p50,
               base_name=base)  # fmt: skip
    report.add("round trip p99 beside the flood", flooded.p99, "ms", base=idle.p50,
               base_name=base, target=Target("<=", 100, on_ratio=True),
               note="p99 106-132 ms (140x-170x) when a batch was taken in whole")  # fmt: skip
    report.add("round trip max beside the flood", flooded.max, "ms", base=idle.p50,
               base_name=base)  # fmt: skip
    allowed = seconds * 0.9 / (idle.p50 / 1000)
    report.add("round trips done beside the flood", len(samples), "round trips",
               base=allowed, base_name="as many as the idle p50 allows")  # fmt: skip
    report.add("tasks the flood got in", tasks / seconds, "tasks/s")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role")
    flood = sub.add_parser("flooder")
    flood.add_argument("--endpoint", required=True)
    flood.add_argument("--seconds", type=float, required=True)
    flood.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "flooder":
        _flooder(args.endpoint, args.seconds, args.out)
    else:
        standalone(__doc__, run, ["--quick"] if args.quick else [])


if __name__ == "__main__":
    main()
