"""``zmq-scheduler up``'s restart policy: back off a child that fails as it starts, give up
after a few such failures in a row, restart at once one that ran a while."""

from __future__ import annotations

from common.up import MAX_QUICK_FAILURES, RESTART_DELAY, STARTUP_WINDOW, Backoff

QUICK = STARTUP_WINDOW / 10
LONG = STARTUP_WINDOW * 10


def test_failures_as_it_starts_back_off_doubling_then_give_up() -> None:
    backoff = Backoff()
    delays = [backoff.delay(QUICK) for _ in range(MAX_QUICK_FAILURES)]
    assert delays == [RESTART_DELAY * 2**n for n in range(MAX_QUICK_FAILURES - 1)] + [None]


def test_a_child_that_ran_a_while_is_restarted_at_once_and_its_count_starts_again() -> None:
    backoff = Backoff()
    for _ in range(MAX_QUICK_FAILURES - 1):
        backoff.delay(QUICK)

    assert backoff.delay(LONG) == RESTART_DELAY
    assert backoff.delay(STARTUP_WINDOW) == RESTART_DELAY  # the window's end is a while

    # Then it takes as many failures in a row as ever to give up.
    delays = [backoff.delay(QUICK) for _ in range(MAX_QUICK_FAILURES)]
    assert delays[-2:] == [RESTART_DELAY * 2 ** (MAX_QUICK_FAILURES - 2), None]
