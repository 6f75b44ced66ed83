"""``tests.conftest.wait_for``: a wrong answer fails at once, only "not up yet" is retried."""

from __future__ import annotations

import http.client
import urllib.error
from collections.abc import Callable

import pytest

from common.errors import Unavailable
from tests.conftest import wait_for


def raising(*errors: Exception, then: str = "up") -> tuple[Callable[[], str], list[int]]:
    """A check that raises ``errors`` one per call, then answers ``then``; and its call count."""
    calls = [0]

    def check() -> str:
        calls[0] += 1
        if calls[0] <= len(errors):
            raise errors[calls[0] - 1]
        return then

    return check, calls


def test_an_assertion_in_a_check_fails_at_once_with_its_own_message() -> None:
    # Given a check whose assertion fails.
    check, calls = raising(AssertionError("status is failed, expected completed"))

    # When it is polled, then that assertion is the failure, after one call.
    with pytest.raises(AssertionError) as failure:
        wait_for(check, timeout=5, interval=0.01, what="task completed")
    assert failure.value.args == ("status is failed, expected completed",)
    assert calls == [1]


@pytest.mark.parametrize("error", [KeyError("status"), TypeError("not subscriptable")])
def test_a_check_that_breaks_fails_at_once(error: Exception) -> None:
    # Given a check that breaks (a key missing from an answer, an answer of the wrong type).
    check, calls = raising(error)

    # When it is polled, then its error is raised as it is, after one call.
    with pytest.raises(type(error)) as failure:
        wait_for(check, timeout=5, interval=0.01)
    assert failure.value is error
    assert calls == [1]


def test_not_up_yet_errors_are_retried_until_the_check_answers() -> None:
    # Given a check that meets, in turn, everything a process still starting can cause.
    check, calls = raising(
        Unavailable("broker did not answer"),
        ConnectionRefusedError(111, "refused"),
        urllib.error.URLError("connection refused"),
        http.client.RemoteDisconnected("closed without a response"),
        FileNotFoundError(2, "not written yet"),
    )

    # When it is polled, then it is polled until it answers.
    assert wait_for(check, timeout=30, interval=0.01) == "up"
    assert calls == [6]


def test_a_check_never_up_times_out_naming_what_and_the_last_error() -> None:
    # Given a broker that never answers.
    check, _ = raising(*[Unavailable("broker at tcp://x did not answer")] * 10_000)

    # When it is polled past the timeout, then the failure says what and why.
    with pytest.raises(AssertionError, match=r"timed out waiting for broker health: .*tcp://x"):
        wait_for(check, timeout=0.2, interval=0.01, what="broker health")
