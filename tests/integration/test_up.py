"""``zmq-scheduler up`` supervises its children: it "restarts a child that dies; Ctrl-C or
SIGTERM stops them all" (README, "Commands"), gives up on a child that keeps failing as it
starts, and takes its children with it however it dies."""

from __future__ import annotations

import os
import re
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


def up_argv(stack: Stack, port: int, *extra: str) -> list[str]:
    """``zmq-scheduler up`` on the stack's broker endpoint and ``port``, state under its
    directory, with the tests' quick liveness."""
    return [sys.executable, "-m", "common.up", "up", "--listen", f"127.0.0.1:{port}",
            "--broker-bind", stack.endpoint, "--data", str(stack.tmp_path / "db.sqlite"),
            "--ping-interval", str(PING_INTERVAL), "--liveness", str(LIVENESS), *extra]  # fmt: skip


def online_workers(client: Client) -> dict[int, str]:
    """pid -> id of the online workers."""
    return {w["pid"]: w["id"] for w in client.workers(timeout=2) if w["status"] == "online"}


def test_up_restarts_a_killed_worker_and_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    # Given `zmq-scheduler up` with two one-slot workers, answering on free ports.
    stack = Stack(tmp_path)
    port = free_port()
    argv = up_argv(stack, port, "--workers", "2", "--concurrency", "1", "--processes", "1")
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


def test_up_gives_up_on_a_broker_whose_address_is_taken_and_stops_everything(
    stack: Stack,
) -> None:
    # Given a live broker with a task in its store.
    live = stack.start_broker()
    client = stack.client()
    task_id = client.submit("echo", b"mine")

    # When `zmq-scheduler up` is started on the same address and the same store.
    # (its first back-off 0.1 s instead of 1 s).
    argv = up_argv(stack, free_port(), "--workers", "1", "--processes", "1")
    argv += ["--restart-delay", "0.1"]
    argv[argv.index("--data") + 1] = stack.data
    up = Proc("up", argv, stack.tmp_path)
    try:
        # Then it exits 1 once its broker failed 5 times in a row, backing off in between,
        # doubling the delay, and says why with the broker's own last words (it could not
        # bind: it never got as far as the live broker's store).
        assert up.popen.wait(timeout=90) == 1
        output = up.output()
        assert len(re.findall(r"started broker \(pid \d+\)", output)) == 5, output
        assert re.findall(r"broker \(pid \d+\) exited with 1 .*restarting in (\S+) s", output) == [
            "0.1", "0.2", "0.4", "0.8"
        ], output  # fmt: skip
        summary = output.split("zmq-scheduler: broker exited 5 times in a row", 1)
        assert len(summary) == 2, output
        assert f"zmq-broker: cannot bind {stack.endpoint}" in summary[1], output
        # Every process it started is gone...
        started = pids_started(output)
        assert set(started) == {"broker", "api", "worker-1"}
        wait_for(lambda: not any(alive(pid) for pid in started.values()), what="children gone")
        # ...and the live broker serves its store as before.
        assert alive(live.pid)
        assert client.health()["pid"] == live.pid
        assert client.get(task_id)["id"] == task_id
    finally:
        up.stop()


def test_killing_up_with_sigkill_takes_every_process_it_started_with_it(stack: Stack) -> None:
    # Given `zmq-scheduler up` serving, with gunicorn's master and two workers of its own.
    port = free_port()
    up = Proc("up", up_argv(stack, port, "--workers", "2", "--processes", "2"), stack.tmp_path)
    try:
        stack.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: stack.http("GET", "/health")[0] == 200, what="API up")
        wait_for(lambda: len(stack.online_workers()) == 2, what="two workers online")
        # Broker, gunicorn and its 2 workers (which may still be booting), 2 zmq-workers.
        family = wait_for(
            lambda: family if len(family := descendants(up.pid)) >= 6 else None,
            what="six processes under up",
        )
        assert set(pids_started(up.output()).values()) <= family

        # When up alone is killed with SIGKILL (its pid, not its process group).
        os.kill(up.pid, signal.SIGKILL)
        up.popen.wait(timeout=10)

        # Then every process under it goes too, gunicorn's workers included.
        wait_for(
            lambda: not [pid for pid in family if alive(pid)],
            timeout=60,
            what=f"every process up started gone: {sorted(family)}",
        )
    finally:
        up.stop()
