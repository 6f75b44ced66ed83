"""The asyncio client through a real broker and worker: many calls in flight on one socket,
the synchronous client's errors and timeout rule, and calls cancelled half way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from common import aio
from common.aio import TaskFailed, TaskTimeout
from common.errors import Conflict, InvalidInput, NotFound, Unavailable
from common.limits import MAX_BATCH
from tests.conftest import Stack, free_port

#: A generous deadline for what the machine, loaded by other tests, may make slow.
PATIENCE = 120.0


async def until(check: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    """Poll ``check`` on the loop until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_a_thousand_calls_in_flight_on_one_client_complete(stack: Stack) -> None:
    stack.start_broker()

    async def scenario() -> None:
        async with aio.Client(stack.endpoint, timeout=30) as client:
            # given 1,000 runs awaited at once, and no worker yet to run them
            runs = asyncio.gather(
                *(client.run("echo", str(i).encode(), wait=PATIENCE) for i in range(1000))
            )
            # then all 1,000 requests are in flight together on the one socket
            await until(lambda: client.in_flight == 1000, "1,000 requests in flight")
            # when a worker comes, then every run gets its own result
            await asyncio.to_thread(stack.start_worker, slots=4)
            assert await runs == [str(i).encode() for i in range(1000)]
            assert client.in_flight == 0

            # and 1,000 submits, then 1,000 results, awaited at once, each match their task
            async def submit_then_result(i: int) -> bytes:
                task_id = await client.submit("echo", b"s%d" % i)
                return await client.result(task_id, timeout=PATIENCE)

            results = await asyncio.gather(*(submit_then_result(i) for i in range(1000)))
            assert results == [b"s%d" % i for i in range(1000)]

    asyncio.run(scenario())


def test_errors_are_the_synchronous_clients(stack: Stack) -> None:
    broker = stack.start_broker()
    stack.start_worker()
    sync = stack.client()

    async def scenario() -> None:
        async with aio.Client(stack.endpoint, timeout=5) as client:
            # invalid input, refused by the broker or unencodable here, names the field
            with pytest.raises(InvalidInput, match="handler is required"):
                await client.submit_many([{"args": b""}])
            with pytest.raises(InvalidInput, match="priority"):
                await client.submit("echo", priority=2**70)
            # unknown ids
            with pytest.raises(NotFound):
                await client.get("missing")
            with pytest.raises(NotFound):
                await client.result("0" * 32, timeout=1)
            with pytest.raises(NotFound):
                await client.worker("nobody")
            # waits that run out raise TaskTimeout holding what there was
            done = await client.submit("echo", b"done")
            never = await client.submit("echo", requires=["nobody"])
            assert await client.result(done, timeout=PATIENCE) == b"done"
            with pytest.raises(TaskTimeout) as waited:
                await client.wait_many([done, never, done], timeout=0.2)
            assert [(b["id"], b["status"]) for b in waited.value.tasks] == [(done, "completed")]
            with pytest.raises(TaskTimeout) as one:
                await client.wait(never, timeout=0.1)
            assert one.value.tasks[0]["status"] == "pending"
            assert isinstance(one.value, TimeoutError)
            with pytest.raises(TaskTimeout, match=never):
                await client.result(never, timeout=0.1)
            with pytest.raises(TaskTimeout, match="still pending"):
                await client.run("echo", requires=["nobody"], wait=0.1)
            # a task that failed, and a cancel that comes too late
            with pytest.raises(TaskFailed, match="failed"):
                await client.run("fibonacci", b'{"n": "ten"}', wait=PATIENCE)
            assert (await client.cancel(never))["status"] == "cancelled"
            with pytest.raises(Conflict):
                await client.cancel(done)
            # the same answers as the synchronous client's
            assert (await client.get(done))["result"] == sync.get(done)["result"]
            assert [w["id"] for w in await client.workers()] == [w["id"] for w in sync.workers()]
            page, cursor = await client.list_tasks(status="completed", limit=1)
            assert (page, cursor) == sync.list_tasks(status="completed", limit=1)
            assert (await client.health())["status"] == "ok"
            # a finished outcome came unasked: no broker needed to read it
            pushed = await client.submit("echo", b"pushed")
            # (its outcome is sent once committed: a later reply comes after it on the socket)
            deadline = time.monotonic() + PATIENCE
            while (await client.get(pushed))["status"] != "completed":
                assert time.monotonic() < deadline, "the task never completed"
                await asyncio.sleep(0.02)
            broker.kill9()
            assert await client.result(pushed, timeout=1) == b"pushed"
            # and a broker that is down is Unavailable, within the timeout
            began = time.monotonic()
            with pytest.raises(Unavailable):
                await client.health(timeout=0.5)
            assert time.monotonic() - began < 30

    asyncio.run(scenario())


def test_unavailable_says_whether_the_request_left() -> None:
    # given a "broker" that takes requests and never answers, and an address nothing is at
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    silent = context.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")

    async def scenario() -> tuple[Unavailable, Unavailable]:
        async with (
            aio.Client(f"tcp://127.0.0.1:{port}", timeout=0.5) as heard,
            aio.Client(f"tcp://127.0.0.1:{free_port()}", timeout=0.5) as unheard,
        ):
            # when a submit is sent to each
            with pytest.raises(Unavailable, match="did not answer") as no_answer:
                await heard.submit("echo")
            with pytest.raises(Unavailable, match="not reachable") as not_reached:
                await unheard.submit("echo")
            assert (heard.in_flight, unheard.in_flight) == (0, 0)
            return no_answer.value, not_reached.value

    try:
        no_answer, not_reached = asyncio.run(scenario())
        # then the first left (and arrived); the second did not
        assert no_answer.sent is True
        assert silent.poll(10_000), "the request that left never arrived"
        assert not_reached.sent is False
    finally:
        silent.close(linger=0)
        context.term()


def test_a_cancelled_call_leaves_the_client_usable(stack: Stack) -> None:
    stack.start_broker()
    stack.start_worker()

    async def scenario() -> None:
        async with aio.Client(stack.endpoint, timeout=5) as client:
            never = await client.submit("echo", requires=["nobody"])
            # given calls awaiting: a held wait, a result awaiting its outcome, a run
            waits = [
                asyncio.ensure_future(client.wait(never, timeout=60)),
                asyncio.ensure_future(client.result(never, timeout=60)),
                asyncio.ensure_future(client.run("echo", requires=["nobody"], wait=60)),
            ]
            await until(lambda: client.in_flight >= 2, "the calls in flight")
            # when they are cancelled (by hand, and by a timeout around the call)
            for waiting in waits:
                waiting.cancel()
            for waiting in waits:
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await client.wait(never, timeout=60)
            # then nothing is left in flight, and every call still works
            assert client.in_flight == 0
            assert await client.run("echo", b"still here", wait=PATIENCE) == b"still here"
            many: list[Any] = await asyncio.gather(*(client.get(never) for _ in range(50)))
            assert {record["status"] for record in many} == {"pending"}
            assert (await client.cancel(never))["status"] == "cancelled"
            with pytest.raises(TaskFailed, match="cancelled"):
                await client.result(never, timeout=PATIENCE)

    asyncio.run(scenario())


def test_batches_larger_than_one_message_are_split_and_settings_are_read(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.start_broker()
    monkeypatch.setenv("ZMQS_BROKER", stack.endpoint)
    monkeypatch.setenv("ZMQS_REQUEST_TIMEOUT", "60")

    async def scenario() -> None:
        async with aio.Client() as client:
            assert (client.endpoint, client.timeout) == (stack.endpoint, 60.0)
            specs = [{"handler": "nobody", "args": str(i).encode()} for i in range(MAX_BATCH + 1)]
            ids = await client.submit_many(specs)
            assert len(set(ids)) == MAX_BATCH + 1
            assert (await client.get(ids[-1]))["args"] == str(MAX_BATCH).encode()
            with pytest.raises(TaskTimeout) as waited:
                await client.wait_many(ids, timeout=0)
            assert waited.value.tasks == []
            bad: list[dict[str, Any]] = [
                *specs[:MAX_BATCH],
                {"handler": "echo", "dependencies": ["x"]},
            ]
            with pytest.raises(InvalidInput) as refused:
                await client.submit_many(bad)
            assert len(refused.value.submitted) == MAX_BATCH  # type: ignore[attr-defined]

    asyncio.run(scenario())
    monkeypatch.setenv("ZMQS_REQUEST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="REQUEST_TIMEOUT"):
        aio.Client()
