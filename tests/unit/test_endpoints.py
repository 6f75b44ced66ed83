"""``common.endpoints``: the host of an endpoint, and whether it resolves."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from common.endpoints import tcp_host, unresolved


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        ("tcp://127.0.0.1:5555", "127.0.0.1"),
        ("tcp://broker.example.internal:5555", "broker.example.internal"),
        ("tcp://[::1]:5555", "::1"),
        ("tcp://10.0.0.2;broker:5555", "broker"),  # a source address first
        ("tcp://*:5555", None),
        ("tcp://broker", None),
        ("ipc:///tmp/broker", None),
        ("inproc://broker", None),
        ("broker:5555", None),
    ],
)
def test_tcp_host(endpoint: str, host: str | None) -> None:
    assert tcp_host(endpoint) == host


def test_a_host_that_resolves_or_none_at_all_says_nothing() -> None:
    assert unresolved("tcp://127.0.0.1:5555") is None
    assert unresolved("tcp://localhost:5555") is None
    assert unresolved("tcp://[::1]:5555") is None
    assert unresolved("ipc:///tmp/broker") is None


def test_a_host_that_does_not_resolve_is_named_with_the_resolvers_reason() -> None:
    # .invalid is reserved: it never resolves
    cause = unresolved("tcp://no-such-host.invalid:5555")
    assert cause is not None, cause
    assert cause.startswith("host 'no-such-host.invalid' does not resolve ("), cause
    # a label longer than DNS allows is refused before any lookup
    cause = unresolved(f"tcp://{'a' * 64}.example:5555")
    assert cause is not None and "does not resolve" in cause, cause


def test_a_resolver_that_does_not_answer_holds_the_caller_no_longer_than_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a resolver that answers only when the test lets it
    release = threading.Event()

    def stuck(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    try:
        # when a lookup is asked for with a short timeout, then it says nothing
        assert unresolved("tcp://slow.example:5555", timeout=0.05) is None
    finally:
        release.set()
    # and once the resolver answers, the same lookup says why
    assert unresolved("tcp://slow.example:5555", timeout=30) is not None
