"""``common.transport``: ``send_frames`` queues one multipart message, or raises ``zmq.Again``
and queues nothing; ``receive_frames`` takes one whole message, or raises ``zmq.Again``,
which ``message_waits`` tells in advance."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import zmq

from common.transport import message_waits, receive_frames, send_frames

Sockets = Callable[[int], zmq.Socket[bytes]]


@pytest.fixture
def socket() -> Iterator[Sockets]:
    """Makes sockets of a fresh context, closed (linger 0) after the test."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    made: list[zmq.Socket[bytes]] = []

    def make(kind: int) -> zmq.Socket[bytes]:
        made.append(context.socket(kind))
        made[-1].setsockopt(zmq.LINGER, 0)
        return made[-1]

    yield make
    for sock in made:
        sock.close()
    context.term()


def test_frames_arrive_as_one_message_in_order(socket: Sockets) -> None:
    # given a ROUTER and a DEALER connected to it
    router = socket(zmq.ROUTER)
    router.bind("inproc://transport-order")
    dealer = socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"peer")
    dealer.connect("inproc://transport-order")
    # when the DEALER sends multipart messages with send_frames
    send_frames(dealer, [b"ZS1", b"PONG", b"\x80"])
    send_frames(dealer, [b"single"])
    # then each arrives whole, its frames in order
    assert router.poll(5000)
    assert router.recv_multipart() == [b"peer", b"ZS1", b"PONG", b"\x80"]
    assert router.recv_multipart() == [b"peer", b"single"]
    # and so does the ROUTER's answer, sent once it knows the peer
    send_frames(router, [b"peer", b"ZS1", b"PING", b""])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"ZS1", b"PING", b""]


def test_no_peer_raises_again_and_queues_nothing(socket: Sockets) -> None:
    # given a DEALER that is not connected to anyone
    dealer = socket(zmq.DEALER)
    # when a message is sent without waiting
    # then it raises zmq.Again at once, as send_multipart(..., NOBLOCK) does
    with pytest.raises(zmq.Again):
        send_frames(dealer, [b"ZS1", b"DONE", b"\x80"])
    # and nothing half-sent waits for a peer: the first one to come gets nothing
    router = socket(zmq.ROUTER)
    router.bind("inproc://transport-again")
    dealer.connect("inproc://transport-again")
    send_frames(dealer, [b"after"])
    assert router.poll(5000)
    assert router.recv_multipart()[1:] == [b"after"]


class _Recording(zmq.Socket[bytes]):
    """A socket of another kind than ``zmq.Socket`` (as gevent's green sockets are), whose
    ``send`` notes each frame before it sends it."""

    sent: list[bytes]

    def send(  # type: ignore[override]
        self, data: bytes, flags: int = 0, copy: bool = True, track: bool = False
    ) -> zmq.MessageTracker | None:
        self.sent.append(data)
        return super().send(data, flags, copy=copy, track=track)


def test_a_socket_of_another_kind_keeps_its_own_send() -> None:
    # given a DEALER of a socket class with its own send (gevent's green sockets wait on
    # the hub there), connected to a plain ROUTER
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        router = context.socket(zmq.ROUTER)
        router.bind("inproc://transport-kind")
        dealer = context.socket(zmq.DEALER, socket_class=_Recording)
        dealer.sent = []
        dealer.connect("inproc://transport-kind")
        # when a message is sent with send_frames
        send_frames(dealer, [b"ZS1", b"PONG", b"\x80"])
        # then every frame went through that send, and the message arrives whole
        assert dealer.sent == [b"ZS1", b"PONG", b"\x80"]
        assert router.poll(5000)
        assert router.recv_multipart()[1:] == [b"ZS1", b"PONG", b"\x80"]
        # and with no peer it raises zmq.Again from there too
        lonely = context.socket(zmq.DEALER, socket_class=_Recording)
        lonely.sent = []
        with pytest.raises(zmq.Again):
            send_frames(lonely, [b"ZS1", b"DONE"])
        assert lonely.sent == [b"ZS1"]
    finally:
        context.destroy(linger=0)


def test_receive_takes_one_whole_message_at_a_time_and_again_when_none_waits(
    socket: Sockets,
) -> None:
    # given a ROUTER with nothing to read
    router = socket(zmq.ROUTER)
    router.bind("inproc://transport-receive")
    # then none is said to wait, and a receive raises zmq.Again at once, as
    # recv_multipart(NOBLOCK) does
    assert not message_waits(router)
    with pytest.raises(zmq.Again):
        receive_frames(router)
    # when a peer sends messages of several frames, of one, and one with an empty frame
    dealer = socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"peer")
    dealer.connect("inproc://transport-receive")
    large = bytes(range(256)) * 4096  # past ZeroMQ's inline size: a frame it does not copy
    for frames in ([b"ZS1", b"DONE", large], [b"one"], [b"", b"last"]):
        send_frames(dealer, frames)
    assert router.poll(5000)
    # then each receive takes one message, whole and in order, as bytes
    assert receive_frames(router) == [b"peer", b"ZS1", b"DONE", large]
    assert receive_frames(router) == [b"peer", b"one"]
    assert message_waits(router)
    got = receive_frames(router)
    assert got == [b"peer", b"", b"last"] and all(type(frame) is bytes for frame in got)
    assert not message_waits(router)
    with pytest.raises(zmq.Again):
        receive_frames(router)
