"""The broker's count of what ZeroMQ has not written yet, on real sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from broker.outflow import Outflow
from tests.conftest import wait_for


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    router: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDHWM, 0)  # nothing dropped: every message sent arrives
    router.bind("tcp://127.0.0.1:0")
    dealer: zmq.Socket[bytes] = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, b"peer")
    dealer.setsockopt(zmq.RCVBUF, 16 * 1024)
    dealer.setsockopt(zmq.RCVHWM, 1)
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    dealer.send(b"hello")
    assert router.poll(10_000)
    router.recv_multipart()
    try:
        yield router, dealer
    finally:
        router.close(linger=0)
        dealer.close(linger=0)


def test_large_messages_count_against_their_peer_until_written(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, dealer = pair
    outflow = Outflow(router, peer_bytes=1024 * 1024, track_bytes=16 * 1024)
    # A peer that does not read: 1,000 messages of 20 KiB (each at least TRACK_BYTES, below
    # pyzmq's own copy threshold, so counted too) fill the kernel's buffers and stay queued.
    for _ in range(1000):
        outflow.send([b"peer", b"x" * 20 * 1024])
    outflow.send([b"peer", b"small"])  # not counted: bounded by the high-water mark
    queued = outflow.queued(b"peer")
    assert queued > 1024 * 1024 and outflow.over(b"peer")
    assert outflow.queued(b"someone-else") == 0 and not outflow.over(b"someone-else")
    # Once it reads them all, nothing is queued.
    received = 0
    while received < 1001:
        assert dealer.poll(10_000)
        dealer.recv()
        received += 1
    wait_for(lambda: outflow.queued(b"peer") == 0, what="every message written")
    assert outflow.total == 0 and not outflow.over(b"peer")


def test_a_sweep_forgets_what_was_written_to_peers_nobody_asks_about(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, dealer = pair
    outflow = Outflow(router, track_bytes=16 * 1024)
    outflow.send([b"peer", b"x" * 20 * 1024])
    assert dealer.poll(10_000)
    dealer.recv()  # read: its tracker is done, but nothing asked about this peer since

    def swept() -> bool:
        outflow._swept = 0.0
        outflow.sweep()
        return outflow.total == 0 and not outflow._queued

    wait_for(swept, what="the peer's entry forgotten")


def test_all_peers_together_have_a_bound_too(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, _ = pair
    outflow = Outflow(router, peer_bytes=10**9, total_bytes=4 * 1024 * 1024)
    for _ in range(100):
        outflow.send([b"peer", b"x" * 200 * 1024])  # 20 MB: more than the kernel buffers
    # Another peer, with nothing queued of its own, is refused large replies while the
    # total is over its bound (counted again: a walk of every peer's queue).
    outflow._swept = 0.0
    assert outflow.over(b"another") and outflow.total > 4 * 1024 * 1024
