"""One broker per store, and a broker that cannot bind touches no store.

A second broker started on a live broker's store, or on its address, must stop at once,
non-zero, saying why, and leave the live broker and its store alone; a broker killed with
SIGKILL must not keep its store from the next one.
"""

from __future__ import annotations

import sys

from tests.conftest import Proc, Stack, alive, free_port, wait_for

#: Seconds a broker that cannot start may take to say so and exit (a loaded machine is slow
#: to start Python; this bounds a hang, it is no measure of speed).
EXIT_DEADLINE = 60.0


def broker_argv(endpoint: str, data: str) -> list[str]:
    return [sys.executable, "-m", "broker", "--bind", endpoint, "--data", data]


def start_second(stack: Stack, endpoint: str, data: str) -> Proc:
    proc = Proc("second-broker", broker_argv(endpoint, data), stack.tmp_path)
    stack.procs.append(proc)
    return proc


def test_a_second_broker_on_a_live_store_exits_naming_the_holder(stack: Stack) -> None:
    # Given a broker serving a task from its store.
    first = stack.start_broker()
    client = stack.client()
    task_id = client.submit("echo", b"kept")

    # When a second broker is started on the same store, at another address.
    second = start_second(stack, f"tcp://127.0.0.1:{free_port()}", stack.data)

    # Then it exits non-zero, naming the live broker's pid and the store's lock file...
    assert second.popen.wait(timeout=EXIT_DEADLINE) != 0
    output = second.output()
    assert f"{stack.data} is in use by pid {first.pid}" in output, output
    assert f"{stack.data}.lock" in output, output
    # ...and the first still serves its store.
    assert alive(first.pid)
    assert client.get(task_id)["status"] == "pending"
    assert client.health()["pid"] == first.pid


def test_a_store_whose_broker_was_killed_with_sigkill_opens_for_the_next(stack: Stack) -> None:
    # Given a broker that saved a task, killed with SIGKILL: it released nothing itself.
    first = stack.start_broker()
    task_id = stack.client().submit("echo", b"kept")
    first.kill9()

    # When another broker is started on its store.
    second = stack.start_broker()

    # Then it opens it (the kernel dropped the lock with the dead process) and serves it.
    assert second.pid != first.pid
    client = stack.client()
    assert client.health()["pid"] == second.pid
    assert client.get(task_id)["status"] == "pending"


def test_a_broker_whose_address_is_taken_exits_before_it_opens_its_store(stack: Stack) -> None:
    # Given a broker bound to its address.
    first = stack.start_broker()
    fresh = stack.tmp_path / "fresh" / "scheduler.db"

    # When a second broker is started on the same address, with a store of its own.
    second = start_second(stack, stack.endpoint, str(fresh))

    # Then it exits non-zero having never made (or locked) its store, saying it cannot bind.
    assert second.popen.wait(timeout=EXIT_DEADLINE) != 0
    output = second.output()
    assert not fresh.parent.exists(), sorted(fresh.parent.rglob("*"))
    assert f"cannot bind {stack.endpoint}" in output, output
    # The first is untouched.
    wait_for(lambda: stack.client().health(timeout=1)["pid"] == first.pid, what="first serves")
