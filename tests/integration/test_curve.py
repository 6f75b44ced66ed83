"""CURVE on the broker's port, with real processes: only the allow folder's keys get in,
each does what its role allows, a worker key registers only as its own worker id; and a
plain broker binds only loopback addresses unless told it may."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common import aio
from common.client import Client
from common.curve import ClientKeys, Role, keygen
from common.errors import Forbidden, Unavailable
from common.ops import Op
from tests.conftest import ROOT, Proc, Stack, child_env, free_port, wait_for
from tests.integration.test_up import up_argv


class Keys:
    """A key folder: the broker's pair, and pairs whose public halves ``allow`` lets in."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.allow = folder / "allow"
        self.allow.mkdir(parents=True)
        keygen(folder, "broker")
        self.server = str(folder / "broker.key")

    def make(self, name: str, role: Role, allowed: bool = True) -> str:
        """A new pair; its secret certificate's path. (A connection the broker refused
        is not tried again by ZeroMQ: a key is allowed before its client connects.)"""
        public, secret = keygen(self.folder, name, role)
        if allowed:
            shutil.copy(public, self.allow / public.name)
        return str(secret)

    def client(self, stack: Stack, secret: str, timeout: float = 5.0) -> Client:
        client = Client(stack.endpoint, timeout, curve=ClientKeys.load(self.server, secret))
        stack._clients.append(client)
        return client

    def worker_flags(self, secret: str) -> list[str]:
        return ["--curve-server-key", self.server, "--curve-secret", secret]

    def secret(self, name: str) -> str:
        return str(self.folder / f"{name}.key_secret")


@pytest.fixture
def keys(tmp_path: Path, stack: Stack) -> Keys:
    """Keys, and the stack's broker started with CURVE on, its clients with an admin key;
    ``alice`` (a client), ``w1`` and ``w2`` (workers) are allowed too."""
    keys = Keys(tmp_path / "keys")
    admin = keys.make("api", Role.ADMIN)
    for name, role in (("alice", Role.CLIENT), ("w1", Role.WORKER), ("w2", Role.WORKER)):
        keys.make(name, role)
    stack.curve = ClientKeys.load(keys.server, admin)
    stack.start_broker(
        "--curve-secret", str(keys.folder / "broker.key_secret"), "--curve-allow", str(keys.allow)
    )
    return keys


def refused(client: Client) -> bool:
    """Whether this client gets no answer at all."""
    try:
        client.health(timeout=0.5)
    except Unavailable:
        return True
    return False


def test_allowed_keys_run_a_task_end_to_end(stack: Stack, keys: Keys) -> None:
    # Given a worker and a client, each with its own allowed key.
    stack.start_worker(*keys.worker_flags(keys.secret("w1")), worker_id="w1")
    stack.wait_workers("w1")
    client = keys.client(stack, keys.secret("alice"))
    # When the client runs a task, then the worker runs it.
    assert client.run("echo", b"over curve", wait=20) == b"over curve"
    assert stack.broker is not None
    assert "CURVE on" in stack.broker.output()


def test_the_asyncio_client_reaches_a_curve_broker_with_its_keys(
    stack: Stack, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker, and the client's keys named by the settings, as for the sync client.
    stack.start_worker(*keys.worker_flags(keys.secret("w1")), worker_id="w1")
    stack.wait_workers("w1")
    monkeypatch.setenv("ZMQS_CURVE_SERVER_KEY", keys.server)
    monkeypatch.setenv("ZMQS_CURVE_SECRET", keys.secret("alice"))

    async def scenario() -> list[bytes]:
        async with aio.Client(stack.endpoint, timeout=5) as client:
            runs = [client.run("echo", b"%d" % i, wait=60) for i in range(20)]
            return await asyncio.gather(*runs)

    # When it runs tasks, then the worker runs them; a stranger's key gets no answer.
    assert asyncio.run(scenario()) == [b"%d" % i for i in range(20)]
    stranger = ClientKeys.load(keys.server, keys.make("stranger", Role.CLIENT, allowed=False))

    async def refused() -> None:
        async with aio.Client(stack.endpoint, timeout=0.5, curve=stranger) as client:
            with pytest.raises(Unavailable):
                await client.health()

    asyncio.run(refused())


def test_an_unknown_key_gets_nothing(stack: Stack, keys: Keys) -> None:
    # Given a worker and a client whose keys are not in the allow folder.
    stranger = keys.make("stranger", Role.CLIENT, allowed=False)
    intruder = keys.make("w9", Role.WORKER, allowed=False)
    stack.start_worker(*keys.worker_flags(intruder), worker_id="w9")
    # Then the client is answered nothing, not even an error...
    assert refused(keys.client(stack, stranger))
    # ...and, by the time an allowed worker has registered, the other has not.
    stack.start_worker(*keys.worker_flags(keys.secret("w1")), worker_id="w1")
    stack.wait_workers("w1")
    assert stack.online_workers() == {"w1"}


def test_a_worker_key_registers_only_as_its_own_worker_id(stack: Stack, keys: Keys) -> None:
    # Given w1 online with its key.
    w1 = keys.secret("w1")
    stack.start_worker(*keys.worker_flags(w1), worker_id="w1")
    stack.wait_workers("w1")
    admin = stack.client()
    dropped = admin.health()["dropped_messages"]
    # When w2's key says READY as w1, and as w3.
    w2 = keys.secret("w2")
    stack.start_worker(*keys.worker_flags(w2), worker_id="w1")
    stack.start_worker(*keys.worker_flags(w2), worker_id="w3")
    # Then both READYs are dropped and counted, and w1 stays the first one's.
    wait_for(lambda: admin.health()["dropped_messages"] >= dropped + 2, what="READYs dropped")
    workers = {w["id"]: w for w in admin.workers()}
    assert set(workers) == {"w1"}
    assert stack.procs[1].pid == workers["w1"]["pid"]


def test_a_key_may_only_do_what_its_role_allows(stack: Stack, keys: Keys) -> None:
    client = keys.client(stack, keys.secret("alice"))
    worker = keys.client(stack, keys.secret("w1"))
    # A client key may not make the requests of HTTP workers (the API's, admin)...
    with pytest.raises(Forbidden):
        client.request(Op.HTTP_REGISTER, {"id": "h1", "capabilities": ["echo"]})
    # ...nor may a worker key submit or look around.
    with pytest.raises(Forbidden):
        worker.submit("echo", b"x")
    with pytest.raises(Forbidden):
        worker.workers()
    # An admin key may.
    stack.client().request(Op.HTTP_REGISTER, {"id": "h1", "capabilities": ["echo"]})
    assert client.workers()[0]["id"] == "h1"


def test_the_allow_folder_is_read_again_on_sighup(stack: Stack, keys: Keys) -> None:
    # Given a key the broker does not know yet.
    bob = keys.make("bob", Role.CLIENT, allowed=False)
    assert refused(keys.client(stack, bob))
    # When its public certificate is added and the broker gets SIGHUP, it gets in.
    shutil.copy(keys.folder / "bob.key", keys.allow / "bob.key")
    assert stack.broker is not None
    stack.broker.signal(signal.SIGHUP)
    wait_for(lambda: keys.client(stack, bob, timeout=0.5).health(timeout=0.5), what="bob in")
    # When it is removed again, new connections of that key are refused.
    (keys.allow / "bob.key").unlink()
    stack.broker.signal(signal.SIGHUP)
    wait_for(lambda: refused(keys.client(stack, bob)), what="bob refused")


def test_up_secure_runs_a_task_end_to_end(stack: Stack) -> None:
    # Given `zmq-scheduler up --secure` with one worker.
    port = free_port()
    up = Proc("up", up_argv(stack, port, "--secure", "--workers", "1"), stack.tmp_path)
    try:
        folder = stack.tmp_path / "keys"
        wait_for(lambda: "the client key is" in up.output(), what="keys made")
        assert str(folder / "client.key_secret") in up.output()
        # When the user's client key runs a task, then a worker runs it.
        stack.curve = ClientKeys.load(str(folder / "broker.key"), str(folder / "client.key_secret"))
        client = stack.client()
        wait_for(lambda: client.health(timeout=1)["workers"], what="worker online")
        assert client.run("echo", b"secure", wait=20) == b"secure"
        # And the API, with its admin key, answers.
        stack.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: stack.http("GET", "/workers")[0] == 200, what="API up")
        # And a client with no key gets nothing.
        stack.curve = None
        assert refused(stack.client())
    finally:
        up.stop()


def test_plain_mode_binds_a_non_loopback_address_only_when_told_it_is_insecure(
    stack: Stack,
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "broker", "--bind", f"tcp://0.0.0.0:{port}",
            "--data", str(stack.tmp_path / "s.db")]  # fmt: skip
    shown = subprocess.run(
        argv, capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=60, check=False
    )
    assert shown.returncode == 2
    assert "plain mode" in shown.stderr and "--insecure" in shown.stderr
    stack.endpoint = f"tcp://0.0.0.0:{port}"
    stack.broker = stack._start("broker", [*argv, "--insecure"])
    client = Client(f"tcp://127.0.0.1:{port}", timeout=5)
    try:
        assert wait_for(lambda: client.health(timeout=0.5), what="broker health")
    finally:
        client.close()
    assert "plain mode" in stack.broker.output()
