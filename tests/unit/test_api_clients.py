"""The API's broker client pool: green sockets that poll whatever their file descriptor, and
wait on gevent's hub, not holding it."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator

import pytest
import zmq

from api.clients import green_context
from common.client import Client
from common.errors import Unavailable

#: Open files to hold, so the next sockets get descriptors past select's limit (1,023).
HELD = 1100


@pytest.fixture
def many_files_open() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HELD + 100:
        pytest.skip(f"the open-files hard limit ({hard}) is below {HELD + 100}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HELD + 100), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(HELD)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_green_sockets_poll_past_selects_file_descriptor_limit(many_files_open: None) -> None:
    # given two green sockets made while over a thousand files are open
    context = green_context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        assert b.getsockopt(zmq.FD) > 1023

        # when nothing comes, then poll times out with nothing ready
        assert b.poll(50, zmq.POLLIN) == 0
        # when a message comes, then poll says so and it can be read
        a.send(b"hello")
        assert b.poll(5000, zmq.POLLIN) == zmq.POLLIN
        assert b.recv() == b"hello"
        # and a connected socket can send at once
        assert b.poll(5000, zmq.POLLOUT) == zmq.POLLOUT
    finally:
        a.close(linger=0)
        b.close(linger=0)
        context.term()


def test_a_client_on_green_sockets_lets_other_greenlets_run_while_it_waits() -> None:
    import gevent

    # given a broker that never answers, and a client of the API's green context
    context = green_context()
    silent: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    client = Client(f"tcp://127.0.0.1:{port}", timeout=5, context=context)
    ticks: list[float] = []

    def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    try:
        gevent.sleep(0.05)
        # when a call waits for its reply until it gives up
        began, before = time.monotonic(), len(ticks)
        with pytest.raises(Unavailable):
            client.health(timeout=0.5)
        # then another greenlet of the process ran all along (a poll that held the hub
        # would have let it run not once: every request of an API process would wait)
        assert time.monotonic() - began >= 0.5
        assert len(ticks) - before >= 10
    finally:
        ticker.kill()
        client.close()
        silent.close(linger=0)
        context.term()
