"""The wire protocol: round trips and every way a frame can be wrong."""

from __future__ import annotations

import msgpack
import pytest

from common import protocol
from common.ops import ErrorInfo, Reply
from common.protocol import Command, ProtocolError


def test_every_command_round_trips_with_binary_values() -> None:
    body = {"tasks": [{"task_id": "t", "args": b"\x00\xff", "timeout": None, "n": 2**60}]}
    for command in Command:
        message = protocol.unpack(protocol.pack(command, body))
        assert (message.command, message.body) == (command, body)


def test_replies_carry_the_request_number() -> None:
    ok = protocol.unpack(protocol.reply(Reply(9, {"x": 1}))).body
    assert ok == {"req": 9, "ok": True, "value": {"x": 1}}
    failed = Reply(3, error=ErrorInfo(404, "Not found", "no task 'x'"))
    error = protocol.unpack(protocol.reply(failed)).body
    assert error["error"] == {"status": 404, "title": "Not found", "description": "no task 'x'"}


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([b"ZS1", b"PING"], "expected 3 frames"),
        ([b"ZS2", b"PING", b"\x80"], "unsupported protocol signature"),
        ([b"ZS1", b"SHOUT", b"\x80"], "unknown command"),
        ([b"ZS1", b"PING", b"\xc1"], "not valid msgpack"),
        ([b"ZS1", b"PING", b"\x92\x01\x02"], "not a map"),
        ([b"ZS1", b"PING", b"\x81\x01\x02"], "not valid msgpack"),  # non-string key
        ([b"ZS1", b"PING", msgpack.packb({"a": 1}) + b"junk"], "not valid msgpack"),
    ],
)
def test_malformed_frames_raise_protocol_error_only(frames: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.unpack(frames)
