"""``zmq-scheduler up`` supervises its children: it "restarts a child that dies; Ctrl-C or
SIGTERM stops them all" (README, "Commands")."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from common.client import Client
from tests.conftest import (
    LIVENESS,
    PING_INTERVAL,
    Proc,
    Stack,
    alive,
    descendants,
    free_port,
    pids_started,
    wait_for,
)


def online_workers(client: Client) -> dict[int, str]:
    """pid -> id of the online workers."""
    return {w["pid"]: w["id"] for w in client.workers(timeout=2) if w["status"] == "online"}


def test_up_restarts_a_killed_worker_and_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    # Given `zmq-scheduler up` with two one-slot workers, answering on free ports.
    stack = Stack(tmp_path)
    port = free_port()
    argv = [sys.executable, "-m", "common.up", "up", "--listen", f"127.0.0.1:{port}",
            "--broker-bind", stack.endpoint, "--data", str(tmp_path / "db.sqlite"),
            "--workers", "2", "--concurrency", "1", "--processes", "1",
            "--ping-interval", str(PING_INTERVAL), "--liveness", str(LIVENESS)]  # fmt: skip
    up = Proc("up", argv, tmp_path)
    try:
        stack.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: stack.http("GET", "/health")[0] == 200, what="API up")
        client = stack.client()
        wait_for(lambda: len(online_workers(client)) == 2, what="two workers online")
        started = pids_started(up.output())
        assert set(online_workers(client)) == {started["worker-1"], started["worker-2"]}

        # When one worker process, and only it, is killed with SIGKILL.
        victim, survivor = started["worker-1"], started["worker-2"]
        os.kill(victim, signal.SIGKILL)

        # Then up starts another in its place, which comes online...
        def restarted() -> int | None:
            pid = pids_started(up.output())["worker-1"]
            return pid if pid != victim else None

        new = wait_for(restarted, what="worker-1 started again")
        wait_for(lambda: set(online_workers(client)) == {new, survivor}, what="new worker online")
        # ...and runs tasks: two submitted together fill the two one-slot workers, one each.
        workers = online_workers(client)
        ids = client.submit_many([{"handler": "sleep", "args": b'{"seconds": 0.2}'}] * 2)
        tasks = [client.wait(task_id, timeout=30) for task_id in ids]
        assert [task["status"] for task in tasks] == ["completed", "completed"]
        assert {task["worker_id"] for task in tasks} == {workers[new], workers[survivor]}

        # When Ctrl-C is pressed: SIGINT to the whole foreground process group.
        family = descendants(up.pid)
        assert set(pids_started(up.output()).values()) <= family
        assert len(family) > 4  # broker, API (gunicorn and its worker) and two workers
        os.killpg(up.pid, signal.SIGINT)

        # Then up exits cleanly, and every process under it is gone.
        assert up.popen.wait(timeout=60) == 0
        wait_for(
            lambda: not [pid for pid in family if alive(pid)],
            timeout=60,
            what=f"every process under up gone: {sorted(family)}",
        )
    finally:
        up.stop()
        stack.close()
