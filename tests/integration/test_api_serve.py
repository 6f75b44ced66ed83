"""The API under real gunicorn with no broker running: it must answer, and answer fast.

Starts the server both ways it is deployed (``python -m api`` and ``gunicorn -c
deploy/gunicorn.conf.py``) on a free port, in its own process group so a failure
never leaves it behind, and checks that ``/health`` is a 503 within seconds, that a
chunked body over the limit is a 413, that the errors gunicorn answers itself are JSON
too, and that SIGTERM stops it cleanly.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from api.cli import APIServer, main
from api.serve import (
    MAX_REQUEST_LINE,
    STOP_SIGNALS,
    bind_address,
    gunicorn_options,
    quit_once,
)
from common.limits import MAX_HTTP_WAIT as MAX_WAIT
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: Seconds the server may take to start answering (a loaded CI machine is slow to fork).
START_DEADLINE = 30.0
MAX_BODY = 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def request(
    port: int,
    method: str,
    path: str,
    body: Iterator[bytes] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, encode_chunked=body is not None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until_serving(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"server exited with {server.returncode}:\n{log.read_text()}")
        try:
            request(port, "GET", "/health")
            return
        except OSError:  # not listening yet
            time.sleep(0.1)
    pytest.fail(f"server did not answer within {START_DEADLINE} s:\n{log.read_text()}")


def command(how: str, port: int, broker: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQS_")}
    if how == "cli":
        argv = [sys.executable, "-m", "api", "--listen", f"127.0.0.1:{port}", "--broker", broker]
        argv += ["--processes", "1", "--connections", "100", "--max-body", str(MAX_BODY)]
        return argv, env
    env.update(
        ZMQS_LISTEN=f"127.0.0.1:{port}",
        ZMQS_BROKER=broker,
        ZMQS_PROCESSES="1",
        ZMQS_CONNECTIONS="100",
        ZMQS_MAX_BODY=str(MAX_BODY),
    )
    argv = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"]
    return [*argv, "api.app:create_app()"], env


@dataclass
class Served:
    """The API under gunicorn, started one of the two ways it is deployed."""

    server: subprocess.Popen[bytes]
    port: int
    log: Path


@pytest.fixture(params=["cli", "gunicorn.conf"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """The API served by ``zmq-api`` or by ``gunicorn -c deploy/gunicorn.conf.py``, with no
    broker behind it; killed by process group afterwards."""
    port = free_port()
    argv, env = command(request.param, port, f"tcp://127.0.0.1:{free_port()}")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_serving(server, port, log)
        yield Served(server, port, log)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_served_api_answers_503_without_a_broker(served: Served) -> None:
    # (That it waits HEALTH_TIMEOUT, not the request timeout, is test_api's to show: no
    # test here measures the wall clock.)
    server, port, log = served.server, served.port, served.log
    status, body = request(port, "GET", "/health")
    assert status == 503, body
    assert json.loads(body)["status"] == "unavailable"

    # A chunked body has no Content-Length: the limit must hold while reading.
    status, body = request(port, "POST", "/tasks", iter([b"[" * 600, b"]" * 600]))
    assert status == 413, body
    assert str(MAX_BODY) in json.loads(body)["description"]

    os.killpg(server.pid, signal.SIGTERM)
    assert server.wait(timeout=15) == 0, log.read_text()


def raw_exchange(port: int, data: bytes) -> tuple[int, str, Any]:
    """Send these bytes as they are; the answer's status, Content-Type and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        payload = response.read()
    try:
        body = json.loads(payload)
    except ValueError:
        raise AssertionError(
            f"answered {response.status} with a body that is not JSON: {payload[:200]!r}"
        ) from None
    return response.status, response.getheader("Content-Type", ""), body


#: Requests gunicorn refuses before the app sees them, the status it answers and words its
#: description must hold.
REFUSED_BY_GUNICORN = [
    # A request line over limit_request_line: the app never sees it.
    (
        b"GET /tasks?handler=" + b"x" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        [str(MAX_REQUEST_LINE)],
    ),
    # A header over limit_request_field_size (8190 bytes).
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431, []),
    # No request line at all.
    (b"this is not HTTP\r\n\r\n", 400, []),
]


def test_errors_gunicorn_answers_itself_are_json(served: Served) -> None:
    for data, status, words in REFUSED_BY_GUNICORN:
        # when a request gunicorn refuses before the app sees it is sent
        got, content_type, body = raw_exchange(served.port, data)

        # then the answer is JSON with a title and a description, as every error of the app
        assert got == status, body
        assert content_type == "application/json"
        assert isinstance(body, dict), body
        assert isinstance(body["title"], str) and body["title"], body
        assert isinstance(body["description"], str) and body["description"], body
        for word in words:
            assert word in body["description"], body


# -- options shared by zmq-api and deploy/gunicorn.conf.py --------------------------------


@pytest.mark.parametrize(
    ("listen", "bind"),
    [
        (":8080", "0.0.0.0:8080"),
        ("127.0.0.1:9000", "127.0.0.1:9000"),
        ("[::1]:8080", "[::1]:8080"),
        ("api.example:80", "api.example:80"),
    ],
)
def test_bind_address(listen: str, bind: str) -> None:
    assert bind_address(listen) == bind


@pytest.mark.parametrize("listen", ["8080", "localhost:", ""])
def test_bind_address_rejects_what_is_not_host_port(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        bind_address(listen)


def test_gunicorn_options_follow_the_settings() -> None:
    settings = Settings(listen=":9090", processes=3, connections=7, log_level="DEBUG")

    options = gunicorn_options(settings)

    assert options["bind"] == ["0.0.0.0:9090"]
    assert options["workers"] == 3
    assert options["worker_class"] == "api.jsonworker.JSONErrorWorker"
    assert options["limit_request_line"] == MAX_REQUEST_LINE == 4094  # as the README says
    assert options["worker_connections"] == 7
    assert options["loglevel"] == "debug"
    assert options["accesslog"] is None
    # A long-poll and the broker's reply to it fit in a graceful shutdown.
    assert options["graceful_timeout"] >= MAX_WAIT + settings.request_timeout
    assert options["post_worker_init"] is quit_once


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_worker_told_to_stop_while_booting_exits_at_once(signum: int) -> None:
    # Given a forked worker process that ran the post_fork hook and boots on (its own
    # handlers come later: until then it has what the master had).
    class Worker:
        body_timeout = 0.0

    hook = gunicorn_options(Settings())["post_fork"]
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            signal.signal(signum, lambda *_: os._exit(3))  # the master's, inherited
            hook(None, Worker())
            # When the master tells it to stop.
            signal.raise_signal(signum)
            os._exit(4)  # booted on, as if told nothing
        finally:
            os._exit(5)

    # Then it exits at once, with 0.
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_post_fork_hook_gives_a_worker_its_body_timeout() -> None:
    class Worker:
        body_timeout = 0.0

    worker = Worker()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        gunicorn_options(Settings(body_timeout=7.5))["post_fork"](None, worker)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    assert worker.body_timeout == 7.5


def test_a_worker_quits_once_when_ctrl_c_and_the_masters_quit_overlap() -> None:
    # Given a worker set up by the hook, whose quit handler is still at work when the
    # master's SIGQUIT lands (raise_signal runs the handler before it returns).
    calls: list[int] = []

    class Worker:
        def handle_quit(self, signum: int, frame: FrameType | None) -> None:
            calls.append(signum)
            if len(calls) == 1:
                signal.raise_signal(signal.SIGQUIT)
            raise SystemExit(0)

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGQUIT)}
    try:
        quit_once(Worker())

        # When Ctrl-C reaches the worker.
        with pytest.raises(SystemExit):
            signal.raise_signal(signal.SIGINT)

        # Then it quit once: the second signal did not start a second quit inside the first.
        assert calls == [signal.SIGINT]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize(
    "argv",
    [["--processes", "0"], ["--connections", "0"], ["--listen", "8080"], ["--log-level", "LOUD"]],
)
def test_cli_rejects_bad_settings_before_serving(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def serve(self: APIServer) -> None:
        pytest.fail("zmq-api started serving with bad settings")

    monkeypatch.setattr(APIServer, "run", serve)

    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    assert exit_info.value.code == 2
    assert "zmq-api" in capsys.readouterr().err
