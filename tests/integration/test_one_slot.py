"""A worker of one slot runs a handler on its loop's own thread, and a long one never makes
it deaf: the loop passes to a second thread (``worker.relay``), which answers pings,
cancels, timeouts and stops as a pool thread's run would let it.

The handler here, ``stubborn_sleep``, ignores cancels and timeouts, as a handler that never
looks at its task's context does; the broker's liveness window is 0.6 s (``conftest``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from pathlib import Path

import pytest

from common.client import Client
from tests.conftest import Proc, Stack, alive, wait_for


def start_solo(stack: Stack, *extra: str) -> tuple[Proc, Client]:
    """A broker and its one worker, ``solo``, of one slot with the test handlers; online."""
    stack.start_broker()
    solo = stack.start_worker("--handlers", "flaky_handlers", *extra, worker_id="solo", slots=1)
    stack.wait_workers("solo")
    return solo, stack.client()


def stubborn(seconds: float, note: Path) -> bytes:
    return json.dumps({"seconds": seconds, "note": str(note)}).encode()


def test_a_long_handler_leaves_its_worker_answering_and_its_cancel_frees_the_slot(
    stack: Stack, tmp_path: Path
) -> None:
    _, client = start_solo(stack)
    note = tmp_path / "note"

    # Given a run that lasts fifty liveness windows, deaf to cancels.
    long = client.submit("stubborn_sleep", stubborn(30, note))
    wait_for(lambda: client.get(long)["status"] == "running", what="long task running")

    # Then its worker stays online all the while it runs (three windows are watched)...
    watched_until = time.monotonic() + 2.0
    while time.monotonic() < watched_until:
        assert client.worker("solo")["status"] == "online"
        time.sleep(0.05)

    # ...and when the task is cancelled, the worker says so and its slot runs the next task
    # while the first handler still sleeps.
    client.cancel(long)
    wait_for(lambda: client.get(long)["status"] == "cancelled", what="long task cancelled")
    after = client.submit("echo", b"next")
    assert client.result(after, 30) == b"next"
    assert client.get(after)["worker_id"] == "solo"
    assert not note.exists()
    assert client.get(long)["leases"][-1]["outcome"] == "cancelled"
    assert client.health()["stale_outcomes"] == 0


def test_a_long_handler_times_out_on_time_and_the_next_task_runs(
    stack: Stack, tmp_path: Path
) -> None:
    _, client = start_solo(stack)

    # Given a task allowed 0.5 s whose handler sleeps 30 s and ignores its deadline.
    late = client.submit("stubborn_sleep", stubborn(30, tmp_path / "note"), timeout=0.5)

    # Then it fails for its timeout, long before the handler ends, and the slot is free.
    wait_for(lambda: client.get(late)["status"] == "failed", what="timed out")
    assert "timed out after 0.5 s" in client.get(late)["error"]
    assert client.result(client.submit("echo", b"then"), 30) == b"then"
    assert client.worker("solo")["status"] == "online"


def test_a_worker_stops_while_a_long_handler_runs_and_its_task_runs_elsewhere(
    stack: Stack, tmp_path: Path
) -> None:
    solo, client = start_solo(stack, "--drain-grace", "0.5")
    note = tmp_path / "note"
    task = client.submit("stubborn_sleep", stubborn(30, note))
    wait_for(lambda: client.get(task)["status"] == "running", what="task running")

    # When the worker is told to stop (its drain grace is shorter than the run).
    solo.signal(signal.SIGTERM)

    # Then it gives the run back and exits well before the handler would have ended...
    assert solo.popen.wait(timeout=20) == 0
    assert not alive(solo.pid)
    assert not note.exists()
    # ...and the task runs again on the next worker.
    stack.start_worker("--handlers", "flaky_handlers", worker_id="next", slots=1)
    wait_for(lambda: client.get(task)["worker_id"] == "next", what="task on the next worker")
    assert [lease["worker_id"] for lease in client.get(task)["leases"]] == ["solo", "next"]


#: tgkill(2), which sends a signal to one thread of a process, by machine.
TGKILL = {"x86_64": 234, "aarch64": 131}


def taking(pid: int, signum: int) -> list[int]:
    """The threads of ``pid`` that do not block ``signum`` (ZeroMQ's own threads block all)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        blocked = int(status.split("SigBlk:")[1].split()[0], 16)
        if not blocked & (1 << (signum - 1)):
            found.append(int(tid))
    return found


@pytest.mark.skipif(os.uname().machine not in TGKILL, reason="tgkill's number unknown here")
def test_a_stop_signal_that_lands_on_any_thread_stops_the_worker(stack: Stack) -> None:
    solo, client = start_solo(stack)
    assert client.result(client.submit("echo", b"x"), 30) == b"x"  # its loop relayed once

    # When SIGTERM is delivered to a thread of the worker other than its main one (the
    # kernel gives a signal sent to a process to any thread that does not block it).
    others = [tid for tid in taking(solo.pid, signal.SIGTERM) if tid != solo.pid]
    assert others
    tgkill = ctypes.CDLL(None, use_errno=True).syscall
    assert tgkill(TGKILL[os.uname().machine], solo.pid, others[0], signal.SIGTERM) == 0

    # Then it stops as if the main thread had got it.
    assert solo.popen.wait(timeout=20) == 0
    wait_for(lambda: client.worker("solo")["status"] == "offline", what="worker gone")


def test_an_error_that_cannot_be_put_in_words_fails_its_task_and_nothing_else(
    stack: Stack,
) -> None:
    _, client = start_solo(stack)

    # Given handlers whose exception's str() raises, quickly and after a takeover (0.2 s).
    for seconds in (b"0", b"0.2"):
        task = client.submit("raise_unprintable", seconds)

        # Then the task fails naming the exception's type, and the worker carries on.
        wait_for(lambda: client.get(task)["status"] == "failed", what="failed")  # noqa: B023
        assert client.get(task)["error"].startswith("Unprintable"), client.get(task)
        assert client.result(client.submit("echo", b"on"), 30) == b"on"
        assert client.worker("solo")["status"] == "online"
