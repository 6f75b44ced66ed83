"""Finished tasks leave the broker's memory for the store, and are served from it."""

from __future__ import annotations

import pytest

from common.client import Client
from common.errors import NotFound
from tests.conftest import Stack, wait_for

#: More finished tasks than the broker keeps in memory (``FINISHED_IN_MEMORY``).
MANY = 1500


def finish_many(client: Client, count: int, keyed: bool = False) -> list[str]:
    specs = [
        {"handler": "echo", "args": b"%d" % i, **({"idempotency_key": f"k{i}"} if keyed else {})}
        for i in range(count)
    ]
    specs[7] = {"handler": "fibonacci", "args": b'{"n": "seven"}'}  # fails
    ids = client.submit_many(specs)
    client.wait_many(ids, timeout=120)
    return ids


def test_old_finished_tasks_are_read_from_the_store(stack: Stack) -> None:
    stack.start_broker("--sync", "off")
    stack.start_worker(slots=8)
    client = stack.client(timeout=30)
    ids = finish_many(client, MANY, keyed=True)
    # The first ones left memory: each is still shown, waited for, listed and found by key.
    first = client.get(ids[0])
    assert (first["status"], first["result"], first["leases"][0]["outcome"]) == (
        "completed", b"0", "completed"
    )  # fmt: skip
    assert client.wait(ids[0], timeout=1)["result"] == b"0"
    assert [b["result"] for b in client.wait_many(ids[:3], timeout=1)] == [b"0", b"1", b"2"]
    assert client.submit_entries([{"handler": "echo", "args": b"0", "idempotency_key": "k0"}]) == [
        {"id": ids[0], "status": "completed", "created": False}
    ]
    [failed] = client.list_tasks(status="failed")[0]
    assert failed["id"] == ids[7] and "must be an integer" in (failed["error"] or "")
    listed: list[str] = []
    after = None
    while True:
        page, after = client.list_tasks(status="completed", limit=400, after=after)
        listed += [task["id"] for task in page]
        if after is None:
            break
    assert listed == [task_id for i, task_id in enumerate(ids) if i != 7]
    child = client.submit("echo", b"after", dependencies=[ids[0]])
    assert client.result(child, timeout=30) == b"after"
    health = client.health()["tasks"]
    assert (health["completed"], health["failed"]) == (MANY, 1)
    # A restart reads none of them, and counts them all.
    assert stack.broker is not None
    stack.broker.kill9()
    stack.start_broker("--sync", "off")
    client = stack.client(timeout=30)
    assert client.health()["tasks"]["completed"] == MANY
    assert client.get(ids[1])["result"] == b"1"


def test_max_finished_prunes_the_oldest_first(stack: Stack) -> None:
    stack.start_broker("--max-finished", "10")
    stack.start_worker(slots=1)  # finished in the order submitted
    client = stack.client()
    ids = finish_many(client, 30)
    wait_for(lambda: client.health()["tasks"]["completed"] <= 10, what="pruning to 10")
    assert client.health()["tasks"]["completed"] + client.health()["tasks"]["failed"] == 10
    with pytest.raises(NotFound):
        client.get(ids[0])
    kept = [task["id"] for task in client.list_tasks(limit=100)[0]]
    assert kept == ids[-10:]
