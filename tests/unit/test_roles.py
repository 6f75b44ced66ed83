"""Who may do what: the role table of a CURVE broker, its key files, and the identity rule
that binds a live worker id to its connection in both modes."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from broker.core import IdentityTaken, Scheduler, Timing
from broker.gate import allowed_keys
from broker.roles import COMMAND_ROLES, OP_ROLES, Peer, may_act_as, may_request
from common import curve
from common.curve import Role
from common.models import TaskStatus, WorkerStatus
from common.ops import Op
from common.protocol import Command
from tests import edge

T0 = 1_000_000.0
CLIENT, ADMIN = Peer("alice", Role.CLIENT), Peer("api", Role.ADMIN)
WORKER = Peer("w1", Role.WORKER)


def test_every_op_and_worker_message_has_a_row() -> None:
    assert set(OP_ROLES) == set(Op)
    assert set(COMMAND_ROLES) == {Command.READY, Command.PONG, Command.DONE, Command.DRAIN,
                                  Command.BYE}  # fmt: skip


def test_clients_submit_and_inspect_but_make_no_http_worker_or_admin_request() -> None:
    http = {op for op in Op if op.value.startswith("http_")}
    admin = {Op.PURGE, Op.DRAIN}
    assert {op for op in Op if may_request(CLIENT, op)} == set(Op) - http - admin
    assert may_request(CLIENT, Op.RETRY) and may_request(CLIENT, Op.STATS)
    assert all(may_request(ADMIN, op) for op in Op)


def test_workers_keys_without_a_role_and_unknown_roles_make_no_request() -> None:
    for peer in (WORKER, Peer("broker", ""), Peer("x", "root"), Peer.of(":")):
        assert not any(may_request(peer, op) for op in Op), peer


def test_a_worker_key_acts_only_as_the_worker_id_that_is_its_name() -> None:
    for command in COMMAND_ROLES:
        assert may_act_as(WORKER, command, "w1")
        assert not may_act_as(WORKER, command, "w2")
        assert not may_act_as(Peer("w1", Role.CLIENT), command, "w1")
        assert may_act_as(ADMIN, command, "w2")
    assert not may_act_as(WORKER, Command.REQUEST, "w1")


def test_a_user_id_is_role_then_name_which_may_hold_colons() -> None:
    assert Peer.of("worker:host:1") == Peer("host:1", "worker")
    assert Peer.of("") == Peer("", "")


def test_keygen_writes_a_private_secret_and_a_public_cert_naming_the_role(
    tmp_path: Path,
) -> None:
    public, secret = curve.keygen(tmp_path / "keys", "w1", Role.WORKER)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    mine, theirs = curve.read_cert(secret), curve.read_cert(public)
    assert mine.secret is not None and theirs.secret is None
    assert mine.public == theirs.public
    assert (theirs.name, theirs.role) == ("w1", "worker")
    with pytest.raises(FileExistsError):
        curve.keygen(tmp_path / "keys", "w1", Role.WORKER)
    with pytest.raises(ValueError):
        curve.keygen(tmp_path / "keys", "../x")
    broker, _ = curve.keygen(tmp_path / "keys", "broker")
    assert curve.read_cert(broker).role == ""
    assert allowed_keys(tmp_path / "keys") == {
        theirs.public: "worker:w1",
        curve.read_cert(broker).public: ":broker",
    }


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.9.0.1:*", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/broker", True),
        ("inproc://broker", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://10.0.0.5:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://[::]:5555", False),
    ],
)
def test_loopback_endpoints(endpoint: str, local: bool) -> None:
    assert curve.is_loopback(endpoint) is local


# -- the identity rule (both modes) ---------------------------------------------------------


def core() -> Scheduler:
    return Scheduler(Timing(ping_interval=1.0, liveness=3))


def ready(
    worker_id: str = "w1", session: bytes = b"", running: list[str] | None = None
) -> dict[str, Any]:
    return {
        "id": worker_id, "slots": 1, "capabilities": ["echo"], "session": session,
        "running": [{"task_id": t, "attempt": 1} for t in running or []],
    }  # fmt: skip


def test_a_ready_for_an_online_worker_from_another_connection_is_refused() -> None:
    # given w1 online at address A, running a task
    scheduler = core()
    edge.register(scheduler, b"A", ready(session=b"s" * 16), T0)
    [task] = edge.submit(scheduler, [{"handler": "echo"}], T0)
    scheduler.schedule(T0)
    assert scheduler.get(task["id"]).worker_id == "w1"
    # when another connection says READY as w1, claiming nothing (or with another session)
    for session in (b"", b"x" * 16):
        with pytest.raises(IdentityTaken):
            edge.register(scheduler, b"B", ready(session=session), T0 + 1)
    # then w1 stays A's, its task still running there
    assert scheduler.worker_at(b"A") is not None and scheduler.worker_at(b"B") is None
    assert scheduler.get(task["id"]).status is TaskStatus.RUNNING
    # and A itself may say READY again (its task claimed), as may a reconnect of the same
    # process, from a new connection with the registration's session
    edge.register(scheduler, b"A", ready(session=b"s" * 16, running=[task["id"]]), T0 + 2)
    edge.register(scheduler, b"C", ready(session=b"s" * 16, running=[task["id"]]), T0 + 2)
    assert scheduler.worker_at(b"C") is not None
    assert scheduler.get(task["id"]).status is TaskStatus.RUNNING


def test_another_connection_may_take_the_id_once_the_first_is_offline() -> None:
    scheduler = core()
    edge.register(scheduler, b"A", ready(), T0)
    with pytest.raises(IdentityTaken):
        edge.register(scheduler, b"B", ready(), T0 + 1)
    # when A is silent past the liveness window (3 s)
    scheduler.tick(T0 + 4)
    worker = scheduler.worker("w1")
    assert worker.status is WorkerStatus.OFFLINE
    # then B's READY is taken
    edge.register(scheduler, b"B", ready(), T0 + 4)
    assert scheduler.worker_at(b"B") is not None
