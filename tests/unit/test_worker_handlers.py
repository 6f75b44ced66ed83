"""The handler registry, result conversion and the run context handlers read."""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import worker
from worker import context, handlers
from worker.context import Cancelled, TaskContext


@pytest.fixture
def registered() -> Iterator[Callable[[str, handlers.Handler], None]]:
    """Register handlers for one test and remove them afterwards."""
    names: list[str] = []

    def register(name: str, fn: handlers.Handler) -> None:
        handlers.register(name, fn)
        names.append(name)

    yield register
    for name in names:
        handlers.unregister(name)


# -- registry -----------------------------------------------------------------------


def test_decorator_registers_and_returns_the_function() -> None:
    # given a function decorated as a handler
    @worker.handler("test-handlers.double")
    def double(args: bytes) -> bytes:
        return args * 2

    try:
        # then it is served under its name, unchanged
        assert handlers.get("test-handlers.double") is double
        assert "test-handlers.double" in handlers.names()
        assert double(b"ab") == b"abab"
    finally:
        handlers.unregister("test-handlers.double")


def test_unknown_names_are_not_found() -> None:
    assert handlers.get("test-handlers.nothing-here") is None


def test_registering_the_same_function_again_is_harmless(
    registered: Callable[[str, handlers.Handler], None],
) -> None:
    def fn(args: bytes) -> None:
        return None

    registered("test-handlers.twice", fn)
    handlers.register("test-handlers.twice", fn)
    assert handlers.get("test-handlers.twice") is fn


def test_a_taken_name_is_refused_unless_replacing(
    registered: Callable[[str, handlers.Handler], None],
) -> None:
    # given a handler under a name
    def first(args: bytes) -> str:
        return "first"

    def second(args: bytes) -> str:
        return "second"

    registered("test-handlers.taken", first)
    # when another function claims the name
    # then it is refused, naming the holder
    with pytest.raises(ValueError, match=r"already registered by .*first"):
        handlers.register("test-handlers.taken", second)
    # unless it asks to replace it
    handlers.register("test-handlers.taken", second, replace=True)
    assert handlers.get("test-handlers.taken") is second


@pytest.mark.parametrize("name", ["", "   "])
def test_names_must_not_be_empty(name: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        handlers.register(name, lambda args: args)


def test_handlers_must_be_callable() -> None:
    not_callable: Any = 42
    with pytest.raises(TypeError, match="must be callable"):
        handlers.register("test-handlers.number", not_callable)


def test_load_module_imports_a_module_whose_decorators_register(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a module of handlers on the path
    (tmp_path / "my_test_handlers_mod.py").write_text(
        "from worker import handler\n"
        "@handler('test-handlers.from-module')\n"
        "def shout(args: bytes) -> bytes:\n"
        "    return args.upper()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        # when it is loaded by name
        module = handlers.load_module("my_test_handlers_mod")
        # then its handlers are registered
        assert isinstance(module, types.ModuleType)
        fn = handlers.get("test-handlers.from-module")
        assert fn is not None and fn(b"hi") == b"HI"
    finally:
        handlers.unregister("test-handlers.from-module")
        sys.modules.pop("my_test_handlers_mod", None)


def test_load_module_of_a_missing_module_fails() -> None:
    with pytest.raises(ModuleNotFoundError):
        handlers.load_module("no_such_module_for_worker_tests")


# -- result conversion -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x00raw", b"\x00raw"),
        (bytearray(b"ba"), b"ba"),
        ("héllo", "héllo".encode()),
        (None, b""),
        ({"a": [1, 2.5, None, True]}, b'{"a":[1,2.5,null,true]}'),
        ([], b"[]"),
        (0, b"0"),
        (-7, b"-7"),
        (True, b"true"),  # a bool is an int, but its JSON is not its digits
        (2**100, str(2**100).encode()),
        ("", b""),
    ],
)
def test_results_become_bytes(value: Any, expected: bytes) -> None:
    assert handlers.to_bytes(value) == expected


def test_results_json_cannot_represent_are_errors() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        handlers.to_bytes({"when": object()})
    with pytest.raises(ValueError, match="not JSON compliant"):
        handlers.to_bytes(math.nan)


def test_errors_are_described_by_type_and_message() -> None:
    assert handlers.describe_error(ValueError("bad n")) == "ValueError: bad n"
    assert handlers.describe_error(KeyError("k")) == "KeyError: 'k'"
    assert handlers.describe_error(RuntimeError()) == "RuntimeError"


# -- run context ---------------------------------------------------------------------------


def test_there_is_no_context_outside_a_run() -> None:
    assert worker.current() is None
    context.check()  # nothing to cancel: no error


def test_activated_context_is_current_until_deactivated() -> None:
    # given an activated run context
    ctx = TaskContext("t-7", 3, time.monotonic() + 60)
    token = context.activate(ctx)
    try:
        # then handlers see it
        current = worker.current()
        assert current is ctx
        remaining = ctx.remaining()
        assert remaining is not None and 0 < remaining <= 60
    finally:
        context.deactivate(token)
    assert worker.current() is None


def test_context_does_not_leak_into_other_threads() -> None:
    # given a run context in this thread
    token = context.activate(TaskContext("t-8", 1))
    seen: list[TaskContext | None] = []
    try:
        # when another thread looks
        thread = threading.Thread(target=lambda: seen.append(worker.current()))
        thread.start()
        thread.join()
    finally:
        context.deactivate(token)
    # then it sees no run
    assert seen == [None]


def test_sleep_and_check_raise_cancelled_once_the_run_is_cancelled() -> None:
    # given a run cancelled through its event, as handler code may do
    ctx = TaskContext("t-9", 1)
    ctx.cancelled.set()
    token = context.activate(ctx)
    try:
        # then cooperative handlers are told to stop
        with pytest.raises(Cancelled, match="t-9"):
            worker.sleep(3600)
        with pytest.raises(Cancelled):
            context.check()
    finally:
        context.deactivate(token)


def test_a_cancel_before_anyone_looked_sets_the_event_made_later() -> None:
    # given a run cancelled (as the runner does) before its handler asked for the event
    ctx = TaskContext("t-10", 1)
    ctx.cancellation.set()
    # then check() sees it, and the event made now is set
    with pytest.raises(Cancelled):
        token = context.activate(ctx)
        try:
            context.check()
        finally:
            context.deactivate(token)
    assert ctx.cancelled.is_set()
    assert ctx.cancelled is ctx.cancelled  # one event per run


def test_a_cancel_sets_the_event_a_handler_waits_on_and_every_copy_sees_it() -> None:
    # given a handler waiting on its run's event in another thread
    ctx = TaskContext("t-11", 1)
    woke: list[bool] = []
    waiting = threading.Thread(target=lambda: woke.append(ctx.cancelled.wait(10)))
    waiting.start()
    # and a copy of the context with a deadline (the runner makes one when the handler starts)
    timed = dataclasses.replace(ctx, deadline=time.monotonic() + 60)
    # when the copy is cancelled
    timed.cancellation.set()
    waiting.join(10)
    # then the waiting handler woke, and both contexts say cancelled
    assert woke == [True]
    assert ctx.cancelled.is_set() and timed.cancelled.is_set()
    assert ctx.cancellation.is_set() and timed.cancellation.is_set()


def test_sleep_outside_a_run_just_sleeps() -> None:
    started = time.monotonic()
    worker.sleep(0.01)
    assert time.monotonic() - started >= 0.01
