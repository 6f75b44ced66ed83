"""The wire protocol: round trips, every way a frame can be wrong, and the decoders of bodies
at its edge."""

from __future__ import annotations

import math
import re
import tracemalloc
from typing import Any

import msgpack
import pytest

from common import messages, ops, protocol
from common.errors import InvalidInput
from common.limits import MAX_WAIT
from common.ops import ErrorInfo, Op, Reply
from common.protocol import Command, ProtocolError


def test_every_command_round_trips_with_binary_values() -> None:
    body = {"tasks": [{"task_id": "t", "args": b"\x00\xff", "timeout": None, "n": 2**60}]}
    for command in Command:
        message = protocol.unpack(protocol.pack(command, body))
        assert (message.command, message.body) == (command, body)


def test_a_body_msgpack_cannot_encode_raises_and_the_next_message_packs_whole() -> None:
    with pytest.raises(TypeError):
        protocol.pack(Command.DONE, {"results": [{"result": object()}], "tail": b"x" * 100})
    assert protocol.unpack(protocol.pack(Command.PING, {"n": 1})).body == {"n": 1}


def test_packing_a_large_message_leaves_no_buffer_of_its_size_behind() -> None:
    big = {"result": b"\x01" * (16 << 20)}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        frames = protocol.pack(Command.DONE, big)
        assert protocol.unpack(frames).body == big
        del frames
        assert protocol.unpack(protocol.pack(Command.DONE, {"n": 2})).body == {"n": 2}
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1 << 20, f"{held:,} bytes held after packing a 16 MiB body"


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


@pytest.mark.parametrize("status", [["completed"], {"completed": 1}, msgpack.ExtType(1, b"")])
def test_a_done_whose_status_is_a_list_or_a_map_is_refused_naming_it(status: Any) -> None:
    # A list or a map is no key of a dict: looking it up raised TypeError, which the broker's
    # loop caught and logged as a bug instead of dropping and counting the DONE.
    entry = {"task_id": "t", "attempt": 1, "status": status, "result": None, "error": None}
    for slow in (False, True):  # with a traceback, the decoder takes its field-by-field path
        body = {"results": [{**entry, "traceback": "tb"} if slow else entry]}
        with pytest.raises(InvalidInput, match=r"^results\[0\]\.status must be one of"):
            messages.Done.decode(body)


_ENTRY = {"task_id": "t1", "attempt": 3, "handler": "echo", "args": b"x", "timeout": None}


@pytest.mark.parametrize(
    "change",
    [{}, {"args": b""}, {"handler": "h" * 256}, {"attempt": 2**31 - 1},
     # each of these takes the field-by-field path, which must read the same entry
     {"timeout": 2.5}, {"args": None}, {"args": bytearray(b"x")}, {"handler": "échó"},
     {"extra": 1}],
)  # fmt: skip
def test_a_dispatch_entry_reads_the_same_on_either_path(change: dict[str, Any]) -> None:
    entry = {**_ENTRY, **change}
    [got] = messages.Dispatch.decode({"tasks": [entry]})
    assert got == messages.Assignment(
        entry["task_id"], entry["attempt"], entry["handler"], bytes(entry["args"] or b""),
        entry["timeout"],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "problem"),
    [({"handler": ""}, "tasks[0].handler must not be empty"),
     ({"handler": "h" * 257}, "tasks[0].handler is longer than 256 characters"),
     ({"handler": "\ud800"}, "tasks[0].handler is not valid UTF-8"),
     ({"args": "text"}, "tasks[0].args must be bytes"),
     ({"timeout": 0}, "tasks[0].timeout must be")],
)  # fmt: skip
def test_a_dispatch_entry_the_fast_path_would_not_check_is_unreadable(
    change: dict[str, Any], problem: str
) -> None:
    [got] = messages.Dispatch.decode({"tasks": [{**_ENTRY, **change}]})
    assert isinstance(got, messages.Unreadable)
    assert got.run == messages.RunKey("t1", 3)
    assert problem in got.problem


@pytest.mark.parametrize("change", [{"task_id": "bad id"}, {"attempt": 0}, {"attempt": True}])
def test_a_dispatch_entry_whose_run_is_unreadable_raises(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=r"^tasks\[0\]\."):
        messages.Dispatch.decode({"tasks": [{**_ENTRY, **change}]})


def test_an_ack_reads_its_runs_and_names_the_first_bad_one() -> None:
    ack = messages.Ack.decode({"results": [["t1", 1], ("t2", 2), ["t3", 2**31 - 1]]})
    assert ack.runs == [("t1", 1), ("t2", 2), ("t3", 2**31 - 1)]
    for bad, where in [
        (["bad id", 1], "results[1].task_id"),
        (["t", 0], "results[1].attempt"),
        (["t", True], "results[1].attempt"),
        (["t"], "results[1] must be"),
    ]:
        with pytest.raises(InvalidInput, match=rf"^{re.escape(where)}"):
            messages.Ack.decode({"results": [["t1", 1], bad]})  # fmt: skip


@pytest.mark.parametrize(
    ("wait", "held"),
    [(5, 5.0), (MAX_WAIT, MAX_WAIT), (1e10, MAX_WAIT), (2**63 - 1, MAX_WAIT),
     pytest.param(10**400, MAX_WAIT, id="10**400"),
     (math.inf, 0.0), (math.nan, 0.0), (-1, 0.0), (0, 0.0), (True, 0.0), ("5", 0.0)],
)  # fmt: skip
def test_a_client_waits_as_long_as_the_broker_holds_its_answer(wait: Any, held: float) -> None:
    # The broker cuts a wait beyond MAX_WAIT to it; a caller that took 1e10 for a value it
    # would refuse gave up after its usual timeout while the broker still held the answer.
    assert ops.holds(Op.WAIT, {"id": "t", "timeout": wait}) == held
    assert ops.holds(Op.SUBMIT, {"tasks": [], "wait": wait}) == held
    if held:
        assert ops.Wait.from_args({"id": "t", "timeout": wait}).timeout == held
