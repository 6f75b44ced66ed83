"""``zmq-scheduler up``'s restart policy: back off a child that fails as it starts, give up
after a few such failures in a row, restart one that ran a while after the first back-off
(``--restart-delay``); and how it stops
its children: the workers first, each within its drain grace, then the others."""

from __future__ import annotations

import selectors
import signal
import sys
from pathlib import Path
from typing import Any

from common.settings import Settings
from common.up import (
    MAX_QUICK_FAILURES,
    STARTUP_WINDOW,
    STOP_GRACE,
    Backoff,
    Child,
    children,
    stop_all,
)
from tests.conftest import wait_for

QUICK = STARTUP_WINDOW / 10
LONG = STARTUP_WINDOW * 10
#: ``--restart-delay``'s default.
RESTART_DELAY = Settings().restart_delay


def test_failures_as_it_starts_back_off_doubling_then_give_up() -> None:
    backoff = Backoff()
    delays = [backoff.delay(QUICK) for _ in range(MAX_QUICK_FAILURES)]
    assert delays == [RESTART_DELAY * 2**n for n in range(MAX_QUICK_FAILURES - 1)] + [None]


def test_the_back_off_starts_at_the_restart_delay_of_the_settings() -> None:
    assert RESTART_DELAY == 1.0
    procs = children(Settings(workers=1, restart_delay=0.25))
    assert [child.name for child in procs] == ["broker", "api", "worker-1"]
    for child in procs:
        assert [child.backoff.delay(QUICK) for _ in range(MAX_QUICK_FAILURES)] == [
            0.25, 0.5, 1.0, 2.0, None
        ], child.name  # fmt: skip
        assert child.backoff.delay(LONG) == 0.25


def test_a_child_that_ran_a_while_is_restarted_after_the_delay_and_its_count_starts_again() -> None:
    backoff = Backoff()
    for _ in range(MAX_QUICK_FAILURES - 1):
        backoff.delay(QUICK)

    assert backoff.delay(LONG) == RESTART_DELAY
    assert backoff.delay(STARTUP_WINDOW) == RESTART_DELAY  # the window's end is a while

    # Then it takes as many failures in a row as ever to give up.
    delays = [backoff.delay(QUICK) for _ in range(MAX_QUICK_FAILURES)]
    assert delays[-2:] == [RESTART_DELAY * 2 ** (MAX_QUICK_FAILURES - 2), None]


def test_workers_get_their_drain_grace_and_stop_before_the_broker(tmp_path: Path) -> None:
    settings = Settings(workers=2, drain_grace=3.0)
    by_name = {child.name: child for child in children(settings)}
    assert {name: (c.grace, c.drains) for name, c in by_name.items()} == {
        "broker": (STOP_GRACE, False), "api": (STOP_GRACE, False),
        "worker-1": (3.0 + STOP_GRACE, True), "worker-2": (3.0 + STOP_GRACE, True),
    }  # fmt: skip

    # Processes that write to one file when they are told to stop and when they exit: a
    # "worker" that takes a moment to drain, a "broker" that stops at once, and a "worker"
    # that never stops, killed past its grace.
    events = tmp_path / "events"
    script = (
        "import signal, sys, time\n"
        "name, linger = sys.argv[1], float(sys.argv[2])\n"
        "def note(what):\n"
        "    with open(sys.argv[3], 'a') as f: f.write(f'{name} {what}\\n')\n"
        "def on_term(signum, frame):\n"
        "    note('told'); time.sleep(linger); note('gone'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "note('up')\n"
        "while True: time.sleep(1)\n"
    )

    def child(name: str, linger: float, **kwargs: Any) -> Child:
        return Child(name, [sys.executable, "-c", script, name, str(linger), str(events)], **kwargs)

    procs = [child("broker", 0.0), child("worker", 0.5, drains=True),
             child("stuck", 60.0, drains=True, grace=1.0)]  # fmt: skip
    selector = selectors.DefaultSelector()
    for proc in procs:
        proc.start(selector)
    wait_for(lambda: events.exists() and events.read_text().count(" up") == 3, what="3 up")
    stop_all(procs, selector)
    lines = events.read_text().splitlines()[3:]
    assert sorted(lines[:3]) == ["stuck told", "worker gone", "worker told"]
    assert lines[3:] == ["broker told", "broker gone"]  # once the workers are gone
    assert [p.process.returncode for p in procs if p.process] == [0, 0, -signal.SIGKILL]
