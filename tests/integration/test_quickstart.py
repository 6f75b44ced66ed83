"""``zmq-scheduler up`` restarts a broker killed under it and stops everything on SIGTERM.

(The README's own examples, the quick start's among them, run in ``test_readme.py``.)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.conftest import Proc, Stack, alive, free_port, pids_started, wait_for


def test_up_restarts_a_killed_broker_and_sigterm_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    stack = Stack(tmp_path)
    argv = [sys.executable, "-m", "common.up", "up", "--listen", f"127.0.0.1:{port}",
            "--broker-bind", stack.endpoint, "--data", str(tmp_path / "db.sqlite"),
            "--workers", "2", "--concurrency", "2"]  # fmt: skip
    up = Proc("up", argv, tmp_path)
    try:
        stack.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: stack.http("GET", "/health")[0] == 200, what="API up")
        wait_for(lambda: len(stack.online_workers()) == 2, what="two workers")
        client = stack.client()
        assert client.run("fibonacci", b'{"n": 10}', wait=30) == b'{"n":10,"result":55}'

        # A child that dies is restarted.
        started = pids_started(up.output())
        assert set(started) == {"broker", "api", "worker-1", "worker-2"}
        os.kill(started["broker"], signal.SIGKILL)
        wait_for(
            lambda: stack.client(timeout=1).health()["pid"] != started["broker"],
            what="broker restarted",
        )

        # SIGTERM stops every child.
        up.popen.send_signal(signal.SIGTERM)
        assert up.popen.wait(timeout=30) == 0
        children = pids_started(up.output()).values()
        wait_for(lambda: not any(alive(pid) for pid in children), what="children gone")
    finally:
        up.stop()
        stack.close()
