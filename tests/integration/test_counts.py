"""The broker's counts against the truth: after a random mix of submits, completions,
failures, cancels, retries, purges, pruning, eviction to the store and restarts (clean
and kill -9) through a real broker, ``stats``, ``health`` and the metrics gauges say what
a full listing of the tasks says, by status and, for pending and running tasks, by
handler."""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

from common.client import Client
from common.errors import Conflict, InvalidInput, NotFound
from tests.conftest import Stack, wait_for

#: Operations in each round of the mix, and rounds (a restart of the broker after each).
OPERATIONS = 40
ROUNDS = 3
#: Handlers: one that completes, one that fails (bad args), one no worker serves.
SPECS: list[dict[str, Any]] = [
    {"handler": "echo", "args": b"x"},
    {"handler": "fibonacci", "args": b'{"n": "x"}'},
    {"handler": "idle", "args": b""},
]


def listing(client: Client) -> list[dict[str, Any]]:
    """Every task the broker knows, page by page."""
    tasks: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page, after = client.list_tasks(limit=1000, after=after)
        tasks += page
        if after is None:
            return tasks


def truth(tasks: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    by_status = Counter(task["status"] for task in tasks)
    by_handler: dict[str, dict[str, int]] = {}
    for task in tasks:
        if task["status"] in ("pending", "running"):
            entry = by_handler.setdefault(task["handler"], {"pending": 0, "running": 0})
            entry[task["status"]] += 1
    statuses = ("pending", "running", "completed", "failed", "cancelled")
    return {s: by_status.get(s, 0) for s in statuses}, by_handler


def counts_agree(client: Client) -> str | None:
    """None when the counts match a full listing taken between two equal ``stats``; else
    what differs (the mix may still be moving: the caller polls)."""
    before = client.stats()
    tasks = listing(client)
    health = client.health()
    gauges = client.metrics()["gauges"]
    after = client.stats()
    if before["tasks"] != after["tasks"] or before["handlers"] != after["handlers"]:
        return "still moving"
    statuses, handlers = truth(tasks)
    if after["tasks"] != statuses:
        return f"stats tasks {after['tasks']} != listing {statuses}"
    if after["handlers"] != handlers:
        return f"stats handlers {after['handlers']} != listing {handlers}"
    if health["tasks"] != statuses:
        return f"health tasks {health['tasks']} != listing {statuses}"
    if gauges["tasks"] != statuses:
        return f"metrics tasks {gauges['tasks']} != listing {statuses}"
    if gauges["queue"] != handlers:
        return f"metrics queue {gauges['queue']} != listing {handlers}"
    return None


def settled(client: Client, where: str) -> None:
    """Wait for the counts to match a listing; fail naming the last difference."""
    last: list[str | None] = [None]

    def agree() -> bool:
        last[0] = counts_agree(client)
        return last[0] is None

    try:
        wait_for(agree, timeout=60, interval=0.2, what=f"counts to match ({where})")
    except AssertionError:
        raise AssertionError(f"counts never matched the listing ({where}): {last[0]}") from None


def mix(client: Client, rng: random.Random, known: list[str]) -> None:
    """One random operation; refusals (a retry of a pending task, a cancel of a finished
    one, a task purged meanwhile) are part of the mix."""
    choice = rng.random()
    try:
        if choice < 0.45 or not known:
            spec = dict(rng.choice(SPECS))
            if known and rng.random() < 0.3:
                spec["dependencies"] = [rng.choice(known)]
            if rng.random() < 0.2:
                spec["idempotency_key"] = f"key-{rng.randrange(5)}-{spec['handler']}"
                spec.pop("dependencies", None)
            known.append(client.submit(**spec))
        elif choice < 0.65:
            client.cancel(rng.choice(known))
        elif choice < 0.85:
            client.retry(rng.choice(known))
        else:
            status = rng.choice(["completed", "failed", "cancelled"])
            client.purge(status, limit=rng.choice([1, 3, 1000]))
    except (Conflict, NotFound, InvalidInput):  # a dependency purged is unknown
        pass


def test_stats_health_and_gauges_match_a_full_listing_after_a_random_mix(stack: Stack) -> None:
    seed = int(os.environ.get("ZMQS_COUNTS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    # A few finished tasks kept, so that pruning and eviction to the store happen too.
    broker_args = ("--max-finished", "15")
    stack.start_broker(*broker_args)
    stack.start_worker(worker_id="w1", slots=2)
    stack.wait_workers("w1")
    client = stack.client(timeout=10)
    known: list[str] = []
    for round_number in range(ROUNDS):
        for _ in range(OPERATIONS):
            mix(client, rng, known)
        settled(client, f"seed {seed}, round {round_number}")
        assert stack.broker is not None
        if round_number % 2:
            stack.broker.kill9()
        else:
            stack.broker.stop()
        stack.start_broker(*broker_args)
        stack.wait_workers("w1")
        client = stack.client(timeout=10)
        settled(client, f"seed {seed}, after restart {round_number}")
