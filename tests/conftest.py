"""Fixtures that start real stacks (broker, workers, API) on free loopback ports.

Every process is started in its own session and killed by process group at
teardown. Tests synchronise by polling for a state, never by sleeping.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from api.metrics import MULTIPROC_DIR
from common import protocol
from common.client import Client
from common.curve import ClientKeys
from common.errors import Unavailable

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = Path(__file__).resolve().parent / "support"
#: Fast liveness for tests: a silent worker is offline after 0.2 s × 3.
PING_INTERVAL = 0.2
LIVENESS = 3

T = TypeVar("T")


def raw_request(req: int, op: str, args: Any) -> list[bytes]:
    """The frames of a ``REQUEST`` as a peer may send them, checked or not."""
    return protocol.pack(protocol.Command.REQUEST, {"req": req, "op": op, "args": args})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: What a check may raise while the thing it polls is not up yet: a broker that does not
#: answer, a connection refused or reset (``urllib.error.URLError`` is an ``OSError``), an
#: HTTP answer cut short by a server starting or stopping, a file not written yet.
NOT_UP_YET: tuple[type[Exception], ...] = (Unavailable, OSError, http.client.HTTPException)


def wait_for(
    check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds.

    Only ``NOT_UP_YET`` errors are retried. Anything else, an ``AssertionError`` above all,
    is a wrong answer rather than no answer yet, and fails the test at once with its message.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except NOT_UP_YET as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or check}: last error {last_error!r}")


def pids_started(log: str) -> dict[str, int]:
    """The pid ``zmq-scheduler up`` last started each child with, by child name, from its log."""
    return {m[1]: int(m[2]) for m in re.finditer(r"started (\S+) \(pid (\d+)\)", log)}


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state is the first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie, dead but not yet reaped, does not."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process under ``pid``: its children, theirs, and so on (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[0] != "Z":
            parents.setdefault(int(stat[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # No empty entry: Python would read it as the working directory.
    paths = [str(SUPPORT), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A child process in its own process group, logging to a file."""

    #: What ``stop`` sends first.
    stop_signal: int = signal.SIGTERM
    #: Killed at the end of a test rather than stopped: its stop is not what tests look at
    #: there, and costs time (the stops that matter have tests of their own).
    kill_at_teardown: bool = False

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env() if env is None else env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, grace: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            self.signal(self.stop_signal)
            try:
                # A worker drains on the first signal (waiting, with its broker gone, for
                # ACKs that never come) and stops at once on a second one.
                self.popen.wait(timeout=min(1.0, grace))
            except subprocess.TimeoutExpired:
                self.signal(self.stop_signal)
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    self.popen.wait(timeout=10)
        # Anything left in its group (a gunicorn worker, a pool child) goes too.
        self.signal(signal.SIGKILL)
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class Stack:
    """A broker, its workers and optionally the HTTP API, on free ports under ``tmp_path``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.data = str(tmp_path / "scheduler.db")
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.procs: list[Proc] = []
        self.broker: Proc | None = None
        self.api_url = ""
        self._clients: list[Client] = []
        self._names: dict[str, int] = {}
        #: The keys the stack's clients use (a CURVE broker's), None for a plain broker.
        self.curve: ClientKeys | None = None

    def _name(self, base: str) -> str:
        self._names[base] = self._names.get(base, 0) + 1
        return f"{base}-{self._names[base]}"

    def start_broker(self, *extra: str) -> Proc:
        argv = [sys.executable, "-m", "broker", "--bind", self.endpoint, "--data", self.data,
                "--ping-interval", str(PING_INTERVAL), "--liveness", str(LIVENESS),
                "--retry-backoff", "0.1", "--timeout-grace", "1", *extra]  # fmt: skip
        self.broker = self._start("broker", argv)
        client = self.client()
        wait_for(lambda: client.health(timeout=0.5), what="broker health")
        return self.broker

    def start_worker(self, *extra: str, worker_id: str | None = None, slots: int = 2) -> Proc:
        name = self._name("worker")
        argv = [sys.executable, "-m", "worker", "--broker", self.endpoint,
                "--id", worker_id or name, "--concurrency", str(slots), *extra]  # fmt: skip
        return self._start(name, argv)

    def start_api(self, *extra: str) -> Proc:
        port = free_port()
        argv = [sys.executable, "-m", "api", "--listen", f"127.0.0.1:{port}",
                "--broker", self.endpoint, "--processes", "1", *extra]  # fmt: skip
        # Its metrics folder under tmp_path, not one it makes and removes as it exits: the
        # test's end kills it (a quick stop took 0.4 s at every teardown).
        env = child_env()
        env[MULTIPROC_DIR] = str(self.tmp_path / self._name("api-metrics"))
        proc = self._start("api", argv, env)
        proc.kill_at_teardown = True
        # Gunicorn's quick stop when a test stops it: a graceful one waits for the gevent
        # worker's 1 s tick; the graceful stop has tests of its own.
        proc.stop_signal = signal.SIGINT
        self.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: self.http("GET", "/health")[0] == 200, what="API health")
        return proc

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.tmp_path, env=env)
        self.procs.append(proc)
        return proc

    def client(self, timeout: float = 5.0) -> Client:
        client = Client(self.endpoint, timeout=timeout, curve=self.curve)
        self._clients.append(client)
        return client

    def online_workers(self) -> set[str]:
        workers = self.client().workers(timeout=2)
        return {w["id"] for w in workers if w["status"] == "online"}

    def wait_workers(self, *ids: str) -> None:
        wait_for(lambda: set(ids) <= self.online_workers(), what=f"workers {ids} online")

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One HTTP request to the API: (status, parsed JSON body or None, headers)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.api_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=40) as response:
                payload = response.read()
                status, got = response.status, {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            status, got = exc.code, {k.lower(): v for k, v in exc.headers.items()}
            exc.close()
        if not payload:
            return status, None, got
        try:
            return status, json.loads(payload), got
        except ValueError:  # every answer of the API is JSON, errors included
            raise AssertionError(
                f"{method} {path} answered {status} with a body that is not JSON "
                f"({got.get('content-type')}): {payload[:200]!r}"
            ) from None

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for proc in reversed(self.procs):
            if proc.kill_at_teardown:
                proc.kill9()
            proc.stop()  # closes its log; a killed one is reaped already


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()
