"""The command-line client's parts that need no scheduler: a batch file's tasks and keys,
the API's page links, table cells."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.cli import batch
from common.cli.backends import _next_after, _parts
from common.cli.output import cell, payload, readable, table


def test_each_line_gets_a_key_of_the_files_identity_and_its_line(tmp_path: Path) -> None:
    # Given a file of three tasks, a blank line among them, one with a key of its own.
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        '{"handler": "fibonacci", "args": {"n": 10}}\n\n'
        '{"handler": "echo", "args": "text", "idempotency_key": "mine"}\n'
        '{"handler": "echo", "priority": 2}\n'
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[: batch.DIGEST_DIGITS]

    # When it is read.
    lines = batch.read(str(path))

    # Then each task has its line number, and a key made of the file and the line unless
    # it has one; args are a string's text or a value's JSON.
    assert [line.number for line in lines] == [1, 3, 4]
    assert [line.spec["idempotency_key"] for line in lines] == [
        f"batch:{digest}:1", "mine", f"batch:{digest}:4"
    ]  # fmt: skip
    assert lines[0].spec["args"] == b'{"n": 10}'
    assert lines[1].spec["args"] == b"text"
    assert "args" not in lines[2].spec
    # The same bytes elsewhere are the same tasks; one byte more, other tasks.
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    assert batch.read(str(copy)) == lines
    copy.write_bytes(path.read_bytes() + b"\n")
    assert batch.read(str(copy))[0].spec["idempotency_key"] != lines[0].spec["idempotency_key"]


@pytest.mark.parametrize(
    ("content", "refused"),
    [
        ('{"handler": "echo"}\n[1, 2]\n', ":2: a line must be a JSON object"),
        ('{"handler": "echo"}\n{"handler": \n', ":2: Expecting value"),
        ('{"args": 1}\n', ":1: handler"),
        ('{"handler": "echo", "colour": "red"}\n', ":1: "),
        ("\n\n", "holds no task"),
    ],
)
def test_a_bad_line_is_named(content: str, refused: str, tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(content)

    with pytest.raises(batch.BadBatch) as caught:
        batch.read(str(path))

    assert str(caught.value).startswith(str(path))
    assert refused in str(caught.value)


def test_http_batches_hold_at_most_a_thousand_tasks_or_about_4_mib() -> None:
    small = [{"handler": "echo", "args": b"x"}] * 2500
    large = [{"handler": "echo", "args": b"x" * 3_000_000}] * 3

    assert [len(part) for part in _parts(small)] == [1000, 1000, 500]
    assert [len(part) for part in _parts(large)] == [1, 1, 1]
    assert next(iter(_parts(small)))[0]["args"] == "eA=="  # base64, as POST takes it


def test_the_next_page_is_read_from_the_link_header() -> None:
    link = '</tasks?limit=2&after=17&status=failed>; rel="next"'

    assert _next_after(link) == "17"
    assert _next_after("") is None


def test_cells_and_payloads_are_readable() -> None:
    assert cell(None) == "-" and cell([]) == "-" and cell(["a", "b"]) == "a,b"
    assert cell(True) == "yes" and cell("two\nlines") == "two lines"
    assert len(cell("x" * 100)) == 48 and cell("x" * 100).endswith("…")
    assert readable(payload("aGk=")) == "hi" and readable(payload(None)) == "-"
    assert readable(b"\xff\x00") == "<2 bytes>"
    assert table(["id", "status"], [["a", "done"], ["bb", None]]).splitlines() == [
        "ID  STATUS", "a   done", "bb  -"
    ]  # fmt: skip
