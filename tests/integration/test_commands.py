"""Every command takes the settings the README's table gives it, checks them before it starts
anything, and has ``--help`` and ``--version``; ``zmq-scheduler up`` takes them all and passes
each on to the children that use it.

The commands run as the installed console scripts, the table is read from README.md.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Proc, Stack, child_env, free_port, pids_started, wait_for

BIN = Path(sys.executable).parent
#: Each command as it is typed, and its name in the table's "taken by" column.
COMMANDS = {
    "zmq-broker": "broker",
    "zmq-worker": "worker",
    "zmq-api": "api",
    "zmq-scheduler up": "up",
}
#: The endpoint flag as each command calls it (README: "`zmq-broker` calls the endpoint flag
#: `--bind` and `zmq-scheduler up` calls it `--broker-bind`").
ENDPOINT_FLAG = {"broker": "--bind", "up": "--broker-bind"}


def table() -> list[tuple[str, str, set[str]]]:
    """(flag, environment variable, commands taking it) of each row of the README's table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]
    out = []
    for row in rows:
        _, flag, env, _, taken = (cell.strip() for cell in row.strip("|").split("|"))
        out.append((flag.strip("`"), env.strip("`"), set(taken.split(", ")) - {"up only"}))
    return out


def flags_of(command: str) -> set[str]:
    """The flags the README's table gives ``command`` (``up``: every one but the client's
    own)."""
    flags = {
        flag
        for flag, _, taken in table()
        if command in taken or (command == "up" and taken != {"client"})
    }
    if "--broker" in flags and command in ENDPOINT_FLAG:
        flags = (flags - {"--broker"}) | {ENDPOINT_FLAG[command]}
    return flags


def run(
    command: str, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; one still running after a minute fails the test, and is
    killed with every process it started (its process group)."""
    program, *sub = command.split()
    argv = [str(BIN / program), *sub, *args]
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**child_env(), **(env or {})},
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"{command} {' '.join(args)} still ran after 60 s")
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_describes_the_command_and_lists_every_setting_it_takes(command: str) -> None:
    shown = run(command, "--help")

    assert shown.returncode == 0, shown.stderr
    usage, description, *_ = shown.stdout.split("\n\n")
    assert usage.startswith(f"usage: {command}")
    assert not description.startswith("options:") and len(description.split()) > 5
    listed = set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z-]+)", shown.stdout))
    assert listed == flags_of(COMMANDS[command]) | {"--help", "--version"}


@pytest.mark.parametrize("command", COMMANDS)
def test_version_is_the_installed_packages(command: str) -> None:
    shown = run(command, "--version")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"{command} {importlib.metadata.version('zmq-scheduler')}\n"


@pytest.mark.parametrize(
    ("command", "args", "env", "refused"),
    [
        ("zmq-scheduler up", ["--workers", "-1"], {}, "--workers (ZMQS_WORKERS) must be >= 0"),
        ("zmq-scheduler up", ["--concurrency", "-2"], {}, "--concurrency (ZMQS_CONCURRENCY)"),
        ("zmq-scheduler up", ["--processes", "0"], {}, "--processes (ZMQS_PROCESSES) must be"),
        ("zmq-scheduler up", ["--sync", "sometimes"], {}, "must be one of full, normal, off"),
        ("zmq-scheduler up", ["--pool", "fork"], {}, "--pool (ZMQS_POOL) must be one of"),
        ("zmq-scheduler up", ["--listen", "8080"], {}, "--listen (ZMQS_LISTEN) must be HOST:"),
        ("zmq-scheduler up", ["--handlers", "my-app"], {}, "--handlers (ZMQS_HANDLERS)"),
        ("zmq-scheduler up", ["--listen", ":8080"], {}, "must be a loopback address such as"),
        ("zmq-scheduler up", ["--api-tokens", "gone"], {}, "tokens file gone: cannot be read"),
        ("zmq-scheduler up", [], {"ZMQS_INSECURE": "maybe"}, "'maybe' is not one of 1, 0"),
        ("zmq-scheduler up", [], {"ZMQS_WORKERS": "two"}, "'two' is not a whole number"),
        ("zmq-scheduler up", [], {"ZMQS_CPU": "nan"}, "'nan' is not a finite number"),
        ("zmq-broker", ["--sync", "sometimes"], {}, "--sync (ZMQS_SYNC) must be one of"),
        ("zmq-broker", ["--liveness", "0"], {}, "--liveness (ZMQS_LIVENESS) must be >= 1"),
        ("zmq-broker", ["--bind", "5555"], {}, "--bind (ZMQS_BROKER) must be a ZeroMQ endpoint"),
        ("zmq-worker", ["--pool", "fork"], {}, "--pool (ZMQS_POOL) must be one of thread"),
        ("zmq-worker", ["--cpu", "-1"], {}, "--cpu (ZMQS_CPU) must be >= 0, got -1.0"),
        ("zmq-api", ["--listen", "nope"], {}, "--listen (ZMQS_LISTEN) must be HOST:PORT"),
        ("zmq-api", ["--connections", "0"], {}, "--connections (ZMQS_CONNECTIONS) must be >= 1"),
        ("zmq-api", [], {"ZMQS_LISTEN": "0.0.0.0:8080"}, "while the API is open (no --api-"),
    ],
)
def test_a_bad_setting_is_refused_with_status_2_before_anything_starts(
    command: str, args: list[str], env: dict[str, str], refused: str, tmp_path: Path
) -> None:
    data = tmp_path / "var" / "scheduler.db"
    if command in ("zmq-broker", "zmq-scheduler up"):
        args = [*args, "--data", str(data)]

    shown = run(command, *args, env=env, cwd=tmp_path)

    assert shown.returncode == 2, shown.stderr
    assert f"{command}: error: " in shown.stderr
    assert refused in shown.stderr
    assert "started" not in shown.stderr  # up started no child
    assert not data.parent.exists()  # and no broker made a store


#: The value of a flag that has none (``--insecure``) in the tables of flags and values.
FLAG_ONLY = "(given)"
#: The CURVE settings, which ``zmq-scheduler up --secure`` gives each child its own of
#: (tests/integration/test_curve.py).
SECURITY = {"--curve-secret", "--curve-allow", "--curve-server-key", "--secure"}
#: The settings only the command-line client takes (tests/integration/test_cli.py).
CLIENT_ONLY = {"--api", "--token"}


def argv_started(log: str) -> dict[str, list[str]]:
    """The command line ``zmq-scheduler up`` last started each child with, from its log (the
    API's own, in ``/proc``, is gunicorn's process title once it has set it)."""
    messages = [json.loads(line)["message"] if line.startswith("{") else line
                for line in log.splitlines()]  # fmt: skip
    found = (re.search(r"started (\S+) \(pid \d+\): (.*)", line) for line in messages)
    return {m[1]: shlex.split(m[2]) for m in found if m}


def test_up_passes_every_setting_on_to_the_children_that_take_it(tmp_path: Path) -> None:
    # Given a value other than the default for every setting but the number of workers.
    stack = Stack(tmp_path)
    port = free_port()
    given = {
        "--broker": stack.endpoint, "--data": str(tmp_path / "s.db"), "--sync": "normal",
        "--listen": f"127.0.0.1:{port}", "--workers": "1", "--restart-delay": "0.5",
        "--processes": "1", "--connections": "300", "--concurrency": "2", "--id": "w",
        "--capabilities": "gpu",
        "--cpu": "2.0", "--memory": "512.0", "--disk": "1024.0",
        "--handlers": "flaky_handlers", "--pool": "process", "--drain-grace": "7.0",
        "--reconnect-backoff": "0.5",
        "--reconnect-backoff-max": "4.0", "--ping-interval": "0.2", "--liveness": "4",
        "--http-liveness": "9.0", "--retry-backoff": "0.5", "--retry-backoff-max": "30.0",
        "--timeout-grace": "2.0", "--retention": "3600.0", "--max-finished": "100000",
        "--ping-rate": "500.0",
        "--worker-retention": "600.0",
        "--max-payload": "1048576", "--max-body": "65536",
        "--request-timeout": "4.0", "--header-timeout": "7", "--body-timeout": "8.0",
        "--log-level": "info", "--log-format": "json",
        "--api-tokens": str(tmp_path / "tokens"), "--insecure": FLAG_ONLY,
    }  # fmt: skip
    (tmp_path / "tokens").write_text("a-token-of-the-test-0123456789 admin\n")
    assert set(given) | SECURITY | CLIENT_ONLY == {flag for flag, _, _ in table()}
    argv = [sys.executable, "-m", "common.up", "up"]
    for flag, value in given.items():
        argv += [ENDPOINT_FLAG["up"] if flag == "--broker" else flag, value]
    argv.remove(FLAG_ONLY)

    # When `zmq-scheduler up` runs with them.
    up = Proc("up", argv, tmp_path)
    try:
        stack.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: stack.http("GET", "/health")[0] == 200, what="API up")
        client = stack.client()
        [worker] = wait_for(lambda: client.workers(timeout=2), what="the worker registered")

        # Then each child was given every setting it takes, as given...
        started = pids_started(up.output())
        assert set(started) == {"broker", "api", "worker-1"}
        for child, command in (("broker", "broker"), ("api", "api"), ("worker-1", "worker")):
            args = argv_started(up.output())[child]
            if "--insecure" in args:  # a flag without a value
                args[args.index("--insecure") + 1 : 0] = [FLAG_ONLY]
            passed = dict(zip(args[3::2], args[4::2], strict=True))
            expected = {
                ENDPOINT_FLAG.get(command, flag) if flag == "--broker" else flag: given[flag]
                for flag, _, taken in table()
                if command in taken and flag not in SECURITY
            }
            if command == "worker":
                expected["--id"] = "w-1"  # up's workers are its --id, numbered
            assert passed == expected, child
        # ...and the worker shows them.
        assert worker["id"] == "w-1"
        assert {"gpu", "fail_times"} <= set(worker["capabilities"])
        assert worker["resources"] == {"cpu": 2.0, "memory": 512.0, "disk": 1024.0}
        assert worker["slots"] == 2

        # SIGTERM stops it cleanly.
        os.kill(up.pid, signal.SIGTERM)
        assert up.popen.wait(timeout=60) == 0
    finally:
        up.stop()
        stack.close()


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_zmq_worker_finds_handler_modules_in_the_directory_it_runs_in(
    pool: str, stack: Stack
) -> None:
    # Given a module of handlers in a directory of its own, on no path Python searches.
    stack.start_broker()
    app = stack.tmp_path / "app"
    (app / "jobs").mkdir(parents=True)
    (app / "jobs" / "shout.py").write_text(
        "from worker import handler\n\n\n"
        "@handler('shout')\n"
        "def shout(args: bytes) -> bytes:\n"
        "    return args.upper()\n"
    )
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}

    # When zmq-worker is run from that directory with --handlers naming the module.
    argv = [str(BIN / "zmq-worker"), "--broker", stack.endpoint, "--handlers", "jobs.shout",
            "--pool", pool, "--concurrency", "1"]  # fmt: skip
    worker = Proc("worker", argv, stack.tmp_path, cwd=app, env=env)
    stack.procs.append(worker)

    # Then it serves the module's handler, in its pool's children too.
    client = stack.client()

    def serving() -> bool:
        assert worker.popen.poll() is None, worker.output()
        online = [w for w in client.workers(timeout=2) if w["status"] == "online"]
        return any("shout" in w["capabilities"] for w in online)

    wait_for(serving, what="the worker serving shout")
    assert client.run("shout", b"hi", wait=30) == b"HI"
