"""Log lines are bounded however long what a peer sent."""

from __future__ import annotations

import logging

from common.logs import MAX_MESSAGE, BoundedFormatter, listing


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
