"""Log lines are bounded however long what a peer sent."""

from __future__ import annotations

import json
import logging

import pytest

from common.logs import MAX_MESSAGE, BoundedFormatter, JsonFormatter, Throttled, listing


def test_a_long_message_is_cut_and_says_how_much_was_left_out() -> None:
    formatter = BoundedFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "worker %s", ("w" * 5000,), None)
    line = formatter.format(record)
    assert line == f"INFO worker {'w' * (MAX_MESSAGE - 7)}... (3007 more characters)"
    short = logging.LogRecord("x", logging.INFO, __file__, 1, "worker %s", ("w1",), None)
    assert formatter.format(short) == "INFO worker w1"


def test_a_listing_names_the_first_twenty_and_counts_the_rest() -> None:
    assert listing(["a", "b"]) == "[a, b]"
    names = [f"t{i}" for i in range(1000)]
    assert listing(names) == f"[{', '.join(names[:20])}, and 980 more]"


def test_warnings_of_a_flood_go_out_ten_a_second_and_say_how_many_were_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttled = Throttled(logging.getLogger("flood"), per_second=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="flood"):
        for i in range(1000):  # a thousand bad messages within one second
            throttled.warning("dropped message %d", i)
        now[0] = 101.2
        throttled.warning("dropped message %d", 1000)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[:10] == [f"dropped message {i}" for i in range(10)]
    assert lines[10:] == ["dropped message 1000 (and 990 more like these not logged)"]


def test_a_json_line_holds_the_record_and_its_fields_each_bounded() -> None:
    record = logging.LogRecord("broker.core", logging.WARNING, __file__, 1, "task %s lost", ("t1",),
                               None)  # fmt: skip
    record.__dict__.update(task_id="t1", worker_id="w" * (MAX_MESSAGE + 10), attempt=2)

    line = json.loads(JsonFormatter().format(record))

    assert line["level"] == "WARNING" and line["logger"] == "broker.core"
    assert line["message"] == "task t1 lost"
    assert line["task_id"] == "t1" and line["attempt"] == 2
    assert line["worker_id"].endswith("... (10 more characters)")
    assert line["time"].endswith("+00:00")
    assert "\n" not in JsonFormatter().format(record)
