"""The calls' plans without a socket: what each asks, in what order, and what it makes of
the answers (both clients carry them out; tests/integration runs them for real)."""

from __future__ import annotations

from typing import Any

import pytest

from common import calls
from common.errors import InvalidInput
from common.inbox import Inbox
from common.limits import MAX_BATCH
from common.ops import Op


def carry_out(plan: calls.Plan[Any], answers: list[Any]) -> tuple[Any, list[calls.Step]]:
    """Run ``plan``, answering its ``Ask`` steps with ``answers`` in turn (an exception is
    raised into the plan); returns its value and the steps it took."""
    steps: list[calls.Step] = []
    step = calls.resume(plan)
    while not isinstance(step, calls.Done):
        steps.append(step)
        if isinstance(step, calls.Expect):
            step = calls.resume(plan)
            continue
        answer = answers.pop(0)
        if isinstance(answer, InvalidInput):
            step = calls.resume(plan, error=answer)
        else:
            step = calls.resume(plan, answer)
    return step.value, steps


def brief(task_id: str, result: bytes = b"r") -> dict[str, Any]:
    return {"id": task_id, "status": "completed", "result": result, "error": None}


def test_a_result_in_the_inbox_costs_no_request_and_a_missing_one_is_expected_then_asked() -> None:
    inbox = Inbox()
    inbox.watching("a")
    inbox.keep(brief("a", b"kept"))
    assert carry_out(calls.result(inbox, "a", 10), []) == (b"kept", [])
    inbox.watching("b")
    value, steps = carry_out(calls.result(inbox, "b", 10), [{"tasks": [brief("b", b"asked")]}])
    assert value == b"asked"
    assert [type(step) for step in steps] == [calls.Expect, calls.Ask]
    assert isinstance(steps[1], calls.Ask) and steps[1].op is Op.WAIT_MANY
    assert not inbox.watches("b")


def test_submits_above_one_message_go_in_parts_and_a_refusal_keeps_what_went_before() -> None:
    inbox = Inbox()
    specs = [{"handler": "echo"}] * (MAX_BATCH + 1)
    first = {"tasks": [{"id": f"t{i}"} for i in range(MAX_BATCH)]}
    ids, steps = carry_out(
        calls.submit_many(inbox, specs, None, False, True), [first, {"tasks": [{"id": "last"}]}]
    )
    assert len(ids) == MAX_BATCH + 1 and ids[-1] == "last"
    assert [len(step.args["tasks"]) for step in steps if isinstance(step, calls.Ask)] == [
        MAX_BATCH,
        1,
    ]
    assert inbox.watches("last")
    with pytest.raises(InvalidInput) as refused:
        carry_out(calls.submit_many(inbox, specs, None, False, False), [first, InvalidInput("no")])
    assert len(refused.value.submitted) == MAX_BATCH  # type: ignore[attr-defined]
