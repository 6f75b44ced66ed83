"""The loop's relay between two threads (``worker.relay``): one holder at a time, a short job
keeps the loop on its thread, a long one hands it over, and the end releases everyone.

Threads meet through events with generous deadlines; nothing asserts on speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worker.relay import Relay

PATIENCE = 15.0


def in_thread(target: Callable[[], object], name: str) -> tuple[threading.Thread, list[object]]:
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(target()), name=name, daemon=True)
    thread.start()
    return thread, got


def until_standing_by(relay: Relay) -> None:
    deadline = time.monotonic() + PATIENCE
    while not relay.can_inline():
        assert time.monotonic() < deadline, "nobody stood by"
        time.sleep(0.01)


def test_a_short_job_keeps_the_loop_and_a_long_one_hands_it_over() -> None:
    relay = Relay(handover=0.05)
    # Given a holder, and a second thread standing by.
    assert relay.take()
    assert not relay.can_inline()
    standby, took = in_thread(relay.take, "standby")
    until_standing_by(relay)

    # When a job returns at once, the holder still holds the loop; nobody took it.
    assert relay.run_inline(lambda: None)
    assert took == []

    # When a job runs on until the other thread took the loop over...
    taken = threading.Event()

    def long_job() -> None:
        assert relay.running_inline()
        standby.join(PATIENCE)  # take() returned in the other thread
        taken.set()

    # Then the job's thread no longer holds it, and the other does.
    assert not relay.run_inline(long_job)
    assert taken.is_set() and took == [True]
    assert not relay.running_inline()


def test_the_end_of_the_loop_releases_whoever_stands_by_and_wait_raises_its_error() -> None:
    relay = Relay()
    assert relay.take()
    standby, took = in_thread(relay.take, "standby")
    until_standing_by(relay)

    relay.finish(RuntimeError("loop failed"))

    standby.join(PATIENCE)
    assert took == [False]
    try:
        relay.wait()
    except RuntimeError as exc:
        assert str(exc) == "loop failed"
    else:
        raise AssertionError("wait() did not raise the loop's error")


def test_a_sleeping_stand_by_is_woken_by_a_job_while_another_thread_waits_for_the_end() -> None:
    # Given the thread of Agent.run waiting for the loop's end first, then a second thread
    # standing by asleep (no job ran lately).
    relay = Relay(handover=0.05)
    assert relay.take()
    waiter, _ = in_thread(relay.wait, "waits for the end")
    standby, took = in_thread(relay.take, "standby")
    until_standing_by(relay)
    deadline = time.monotonic() + PATIENCE
    while not relay._asleep:
        assert time.monotonic() < deadline, "the stand-by never slept"
        time.sleep(0.01)

    # When the holder runs a job that lasts until someone takes the loop over.
    def long_job() -> None:
        standby.join(PATIENCE)

    held = relay.run_inline(long_job)

    # Then the thread standing by took it (the job's wake-up did not go to the waiter).
    assert took == [True] and not held
    relay.finish()
    waiter.join(PATIENCE)
    assert not waiter.is_alive()
