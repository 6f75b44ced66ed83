"""``zmq-scheduler up``: a whole local scheduler in one command.

Starts the broker, the HTTP API under gunicorn and N local workers as child
processes, restarts any child that dies, and stops them all on Ctrl-C or
SIGTERM. Signal handlers only set a flag; the supervision loop does the work.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from common import settings as config
from common.settings import Settings

log = logging.getLogger("zmq-scheduler")

#: Seconds children get to stop after SIGTERM before they are killed.
STOP_GRACE = 10.0
#: Seconds to wait before restarting a child that died.
RESTART_DELAY = 1.0


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    died_at: float | None = field(default=None)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv)
        self.died_at = None
        log.info("started %s (pid %d)", self.name, self.process.pid)


def local_endpoint(endpoint: str) -> str:
    """The endpoint local children connect to when the broker binds all interfaces."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard) :]
    return endpoint


def children(settings: Settings) -> list[Child]:
    python = sys.executable
    connect = local_endpoint(settings.broker)
    logging_flags = ["--log-level", settings.log_level]
    broker = [python, "-m", "broker", "--bind", settings.broker, "--data", settings.data]
    broker += ["--ping-interval", str(settings.ping_interval), "--liveness", str(settings.liveness)]
    api = [python, "-m", "api", "--listen", settings.listen, "--broker", connect]
    api += ["--processes", str(settings.processes)]
    out = [Child("broker", broker + logging_flags), Child("api", api + logging_flags)]
    for i in range(settings.workers):
        worker = [python, "-m", "worker", "--broker", connect, "--concurrency", str(settings.slots)]
        out.append(Child(f"worker-{i + 1}", worker + logging_flags))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zmq-scheduler", description="zmq-scheduler commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run broker, API and local workers until Ctrl-C")
    config.add_arguments(
        up,
        ["listen", "broker", "data", "workers", "concurrency", "processes", "ping_interval",
         "liveness", "log_level"],
        flags={"broker": "--broker-bind"},
    )  # fmt: skip
    args = parser.parse_args(argv)
    settings = config.load(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s zmq-scheduler %(message)s"
    )
    return supervise(children(settings))


def supervise(procs: list[Child]) -> int:
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for child in procs:
        child.start()
    try:
        while True:
            time.sleep(0.2)
            if stopping:  # Ctrl-C reaches the children too: their exits are no crash
                break
            now = time.monotonic()
            for child in procs:
                if child.process is None or child.process.poll() is None:
                    continue
                if child.died_at is None:
                    child.died_at = now
                    log.warning(
                        "%s (pid %d) exited with %s; restarting",
                        child.name,
                        child.process.pid,
                        child.process.returncode,
                    )
                elif now - child.died_at >= RESTART_DELAY:
                    child.restarts += 1
                    child.start()
    finally:
        stop_all(procs)
    return 0


def stop_all(procs: list[Child]) -> None:
    live = [c.process for c in procs if c.process is not None and c.process.poll() is None]
    for process in live:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in live:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log.info("all stopped")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
