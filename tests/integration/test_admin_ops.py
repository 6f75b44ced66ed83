"""The admin operations end to end, through the direct client and through the REST API:
retry (with the dependents a failure took down), purge, an admin's drain of a worker
(which outlasts the worker reconnecting), stats; and the roles that may call them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from common.client import Client
from common.errors import Conflict, Forbidden, NotFound
from tests.conftest import Stack, wait_for
from tests.integration.test_curve import Keys, keys  # noqa: F401 (the fixture)
from tests.integration.test_http_auth import TOKENS, write_tokens


def failed_chain(client: Client) -> tuple[str, str]:
    """A task cancelled before any worker came, and its dependent failed by it."""
    root = client.submit("echo", b"root")
    child = client.submit("echo", b"child", dependencies=[root])
    client.cancel(root)
    assert client.get(child)["error"] == f"dependency {root} cancelled"
    return root, child


def test_retry_purge_drain_and_stats_through_the_client(stack: Stack) -> None:
    stack.start_broker()
    client = stack.client()
    root, child = failed_chain(client)
    bad = client.submit("fibonacci", b'{"n": "x"}')
    # retry: the cancelled task and its dependent run once a worker comes
    assert client.retry(root)["status"] == "pending"
    assert client.get(child)["status"] == "pending"
    with pytest.raises(Conflict):
        client.retry(child)  # pending already
    stack.start_worker(worker_id="w1", slots=2)
    assert client.result(child, timeout=30) == b"child"
    assert client.wait(bad, timeout=30)["status"] == "failed"
    again = client.retry(bad)
    assert again["status"] == "pending" and again["id"] == bad
    task = client.wait(bad, timeout=30)
    assert (task["status"], task["attempts"]) == ("failed", 2)
    # stats
    stats = client.stats()
    assert stats["tasks"]["completed"] == 2 and stats["tasks"]["failed"] == 1
    assert stats["workers"]["online"] == 1 and stats["workers"]["slots"]["total"] == 2
    assert sum(stats["throughput"]["completed"]) == 2
    # drain: outlasts the worker reconnecting, until resumed
    assert client.drain_worker("w1")["draining"] is True
    held = client.submit("echo", b"held")
    stack.procs[-1].kill9()
    wait_for(lambda: client.worker("w1")["status"] == "offline", what="w1 offline")
    stack.start_worker(worker_id="w1", slots=2)
    stack.wait_workers("w1")
    assert client.worker("w1")["draining"] is True
    time.sleep(0.5)  # time enough to dispatch, which must not happen
    assert client.get(held)["status"] == "pending"
    assert client.drain_worker("w1", on=False)["draining"] is False
    assert client.result(held, timeout=30) == b"held"
    with pytest.raises(NotFound):
        client.drain_worker("nobody")
    # purge
    assert client.purge("failed", before=0) == 0
    assert client.purge("failed") == 1
    with pytest.raises(NotFound):
        client.get(bad)
    assert client.purge("completed", before=time.time() + 1) == 3
    assert client.stats()["tasks"]["completed"] == 0


def test_a_client_key_may_retry_and_read_stats_but_not_purge_or_drain(
    stack: Stack,
    keys: Keys,  # noqa: F811
) -> None:
    client = keys.client(stack, keys.secret("alice"))
    root, _ = failed_chain(client)
    assert client.retry(root)["status"] == "pending"
    assert client.stats()["tasks"]["pending"] == 2
    with pytest.raises(Forbidden):
        client.purge("failed")
    with pytest.raises(Forbidden):
        client.drain_worker("w1")
    assert stack.client().purge("failed") == 0  # an admin key may


def test_the_admin_routes_over_http_and_their_roles(stack: Stack, tmp_path: Path) -> None:
    stack.start_broker()
    stack.start_api("--api-tokens", str(write_tokens(tmp_path / "tokens")))

    def call(role: str, method: str, path: str) -> tuple[int, Any]:
        status, body, _ = stack.http(
            method, path, headers={"Authorization": f"Bearer {TOKENS[role]}"}
        )
        return status, body

    root, child = failed_chain(stack.client())
    # (a client that did not retry them keeps their outcomes: a new one asks the broker)
    client = stack.client()
    # retry: a client's token may
    status, body = call("client", "POST", f"/tasks/{root}/retry")
    assert status == 200 and body["status"] == "pending" and body["id"] == root
    assert call("client", "POST", f"/tasks/{root}/retry")[0] == 409
    assert call("client", "POST", f"/tasks/{'0' * 32}/retry")[0] == 404
    assert client.get(child)["status"] == "pending"
    # drain: admin only
    stack.start_worker(worker_id="w1", slots=1)
    stack.wait_workers("w1")
    assert client.result(child, timeout=30) == b"child"
    assert call("client", "POST", "/workers/w1/drain")[0] == 403
    status, body = call("admin", "POST", "/workers/w1/drain")
    assert status == 200 and body["draining"] is True
    assert call("admin", "POST", "/workers/nobody/drain")[0] == 404
    held = client.submit("echo", b"held")
    time.sleep(0.5)
    assert client.get(held)["status"] == "pending"
    status, body = call("admin", "DELETE", "/workers/w1/drain")
    assert status == 200 and body["draining"] is False
    assert client.result(held, timeout=30) == b"held"
    # stats: a client's token may
    status, stats = call("client", "GET", "/stats")
    assert status == 200 and stats["tasks"]["completed"] == 3
    assert stats["workers"]["by_kind"] == {"zmq": 1}
    # purge: admin only, with the time as a number or ISO 8601
    doomed = client.submit("echo", b"x", dependencies=[client.submit("none-serves-this")])
    client.cancel(client.get(doomed)["dependencies"][0])
    assert call("client", "DELETE", "/tasks?status=failed")[0] == 403
    assert call("admin", "DELETE", "/tasks")[0] == 400
    assert call("admin", "DELETE", "/tasks?status=pending")[0] == 400
    assert call("admin", "DELETE", "/tasks?status=failed&before=yesterday")[0] == 400
    assert call("admin", "DELETE", "/tasks?status=failed&before=1970-01-02T00:00:00Z") == (
        200,
        {"purged": 0},
    )
    assert call("admin", "DELETE", "/tasks?status=failed") == (200, {"purged": 1})
    assert call("admin", "DELETE", f"/tasks?status=completed&before={time.time() + 5}") == (
        200,
        {"purged": 3},
    )
    with pytest.raises(NotFound):
        client.get(doomed)
