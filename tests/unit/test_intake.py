"""The queue of large submits the broker takes in a slice at a time (``broker.intake``)."""

from __future__ import annotations

from broker.intake import SLICE, Intake
from common import ops
from common.spec import TaskSpec


def submit(n: int, separate: bool = True) -> ops.Submit:
    return ops.Submit([TaskSpec(name="echo", handler="echo", args=b"%d" % i) for i in range(n)],
                      separate=separate)  # fmt: skip


def test_a_large_separate_submit_comes_out_in_slices_in_order() -> None:
    intake = Intake()
    request = submit(2 * SLICE + 1)
    assert intake.wants(b"a", request) and not intake.wants(b"a", submit(SLICE))
    assert not intake.wants(b"a", submit(2 * SLICE, separate=False))  # all or none: at once
    intake.add(b"a", 7, request)
    pieces = []
    while intake:
        pieces.append(intake.take())
    assert [len(p.request.tasks) for p in pieces] == [SLICE, SLICE, 1]
    assert [p.last for p in pieces] == [False, False, True]
    assert [t.args for p in pieces for t in p.request.tasks] == [t.args for t in request.tasks]
    assert {(p.address, p.req, id(p.entries)) for p in pieces} == {(b"a", 7, id(pieces[0].entries))}
    assert intake.tasks == 0 and not intake.wants(b"a", submit(1))


def test_a_clients_later_submits_wait_behind_and_whole_when_all_or_none() -> None:
    intake = Intake()
    intake.add(b"a", 1, submit(SLICE + 1))
    small, whole = submit(1), submit(3 * SLICE, separate=False)
    assert intake.wants(b"a", small) and intake.wants(b"a", whole)
    assert not intake.wants(b"b", small) and not intake.wants(b"a", ops.Health())
    intake.add(b"a", 2, small)
    intake.add(b"a", 3, whole)
    assert intake.tasks == 4 * SLICE + 2
    reqs = []
    while intake:
        piece = intake.take()
        reqs.append((piece.req, len(piece.request.tasks), piece.last))
    assert reqs == [(1, SLICE, False), (1, 1, True), (2, 1, True), (3, 3 * SLICE, True)]
    assert not intake.wants(b"a", small)


def test_dropping_a_submit_forgets_the_rest_of_its_tasks() -> None:
    intake = Intake()
    intake.add(b"a", 1, submit(3 * SLICE))
    intake.add(b"b", 2, submit(SLICE + 1))
    first = intake.take()
    intake.drop(first)
    assert intake.tasks == SLICE + 1 and not intake.wants(b"a", submit(1))
    assert intake.take().req == 2
