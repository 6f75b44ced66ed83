"""Every code block of README.md runs as written, against ``zmq-scheduler up``.

The blocks run in the README's order, in a fresh directory, as a reader would run them:

- a ``python`` block whose first line names a file (``# myapp/tasks.py``) is written there;
  any other runs with this Python, and prints what the comments of its ``print`` lines say;
- a ``console`` block's ``$`` commands (and their indented continuations) run in bash, and
  print the lines that follow them;
- a ``sh`` block of ``zmq-worker`` commands starts each (they run until stopped), waits for
  it to serve the handlers of its ``--handlers`` module, and leaves it running for the
  blocks after it;
- the blocks in ``NOT_RUN`` do not run here, each for the reason given.

The stack is started the way ``make run`` starts it, ``zmq-scheduler up`` with its
defaults, but on free ports, which reach every block through the environment variables the
README documents: ``ZMQS_LISTEN`` and ``ZMQS_BROKER``. Two literals in the blocks name the
default ports, which a reader's stack has and this one has not: ``localhost:8080`` (curl)
and ``tcp://127.0.0.1:5555`` (the Python client). The test replaces the port in exactly
those two and nothing else, and checks that no other mention of 8080 or 5555 is left in a
block it runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, Proc, Stack, descendants, free_port, wait_for

BIN = Path(sys.executable).parent

#: Blocks that do not run here, by their first line, and why.
NOT_RUN = {
    "make run     # broker, REST API on localhost:8080, 2 workers; state in ./var/scheduler.db": (
        "make run is `zmq-scheduler up`, which runs until Ctrl-C: the test starts that stack "
        "itself, on free ports; make test runs this very suite"
    ),
    "   HTTP clients / HTTP workers            Python programs (common.client)": "a diagram",
    "python3 -m venv /opt/zmq-scheduler/.venv": (
        "installs on a server, in /opt; tests/unit/test_deploy.py holds the image's build "
        "steps to it"
    ),
    "$ id=$(zmq-scheduler submit sleep --args '{\"seconds\": 60}' --name nap --priority 5)": (
        "tables and ids that differ from run to run; tests/integration/test_cli.py runs each "
        "of these commands, through the broker and through the API"
    ),
    "# on the broker host": (
        "commands for other hosts: up binds every interface, and the worker connects to "
        "broker.example.internal"
    ),
}

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")),
    reason="the README's examples need curl and jq",
)


@dataclass
class Block:
    language: str
    lines: list[str]

    @property
    def first(self) -> str:
        return self.lines[0] if self.lines else ""


def readme_blocks() -> list[Block]:
    """Every fenced block of the README, in order."""
    text = (ROOT / "README.md").read_text()
    return [
        Block(language, body.splitlines())
        for language, body in re.findall(r"(?ms)^```(\w*)\n(.*?)^```$", text)
    ]


@dataclass
class Reader:
    """Someone following the README in ``home``, against a stack on ``port`` and ``endpoint``."""

    home: Path
    port: int
    endpoint: str
    stack: Stack

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQS_")}
        env.pop("PYTHONPATH", None)  # only what an installed package and its directory give
        env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
        env["ZMQS_LISTEN"] = f"127.0.0.1:{self.port}"
        env["ZMQS_BROKER"] = self.endpoint
        return env

    def substitute(self, line: str) -> str:
        line = line.replace("localhost:8080", f"localhost:{self.port}")
        line = line.replace("tcp://127.0.0.1:5555", self.endpoint)
        assert "8080" not in line and "5555" not in line, f"a fixed port is left in: {line}"
        return line

    def run(self, block: Block) -> None:
        if block.language == "python":
            self.python(block)
        elif block.language == "console":
            self.console(block)
        elif block.language == "sh":
            self.services(block)
        else:
            pytest.fail(f"a {block.language or 'plain'} block neither runs nor is in NOT_RUN")

    def python(self, block: Block) -> None:
        named = re.fullmatch(r"# (\S+\.py)", block.first)
        if named:  # a file the README shows
            path = self.home / named[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(block.lines) + "\n")
            return
        prints = [line for line in block.lines if line.strip().startswith("print(")]
        expected = [line.split("  # ", 1)[1] for line in prints if "  # " in line]
        assert len(expected) == len(prints), "each print line says what it prints"
        code = "\n".join(self.substitute(line) for line in block.lines) + "\n"
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=self.home, env=self.env(),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == expected

    def console(self, block: Block) -> None:
        script: list[str] = []
        expected: list[str] = []
        for line in block.lines:
            if line.startswith("$ "):
                script.append(self.substitute(line[2:]))
            elif line.startswith("    ") and script and not expected:
                script.append(self.substitute(line))  # the command above, continued
            else:
                expected.append(line)
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + "\n".join(script)], cwd=self.home,
            env=self.env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == expected

    def services(self, block: Block) -> None:
        for line in block.lines:
            command = shlex.split(line, comments=True)
            assert command[:1] == ["zmq-worker"], f"not a command this test knows: {line}"
            module = command[command.index("--handlers") + 1]
            name = f"readme-worker-{len(self.stack.procs)}"
            argv = ["bash", "-c", self.substitute(line)]
            proc = Proc(name, argv, self.stack.tmp_path, cwd=self.home, env=self.env())
            self.stack.procs.append(proc)  # stopped with the stack, process group and all
            self.wait_serving(proc, module, line)

    def wait_serving(self, proc: Proc, module: str, line: str) -> None:
        """Wait for the worker ``proc`` started to be online with the handlers ``module``
        registers (as the README's file of it shows them)."""
        source = (self.home / (module.replace(".", "/") + ".py")).read_text()
        names = set(re.findall(r"""(?:@handler\(|register\()["'](\w+)["']""", source))
        assert names, f"{module} registers no handler"
        client = self.stack.client()

        def serving() -> bool:
            assert proc.popen.poll() is None, proc.output()
            pids = {proc.pid} | descendants(proc.pid)
            online = [w for w in client.workers(timeout=2) if w["status"] == "online"]
            return any(w["pid"] in pids and names <= set(w["capabilities"]) for w in online)

        wait_for(serving, what=f"{line!r} serving {sorted(names)}")


def test_every_block_of_the_readme_runs_as_written(tmp_path: Path) -> None:
    blocks = readme_blocks()
    firsts = [block.first for block in blocks]
    assert set(NOT_RUN) <= set(firsts), "NOT_RUN names a block the README no longer has"

    # Given `zmq-scheduler up` with its defaults, on free ports, in a fresh directory.
    home = tmp_path / "home"
    home.mkdir()
    stack = Stack(tmp_path)
    reader = Reader(home, free_port(), stack.endpoint, stack)
    up = Proc("up", [str(BIN / "zmq-scheduler"), "up"], tmp_path, cwd=home, env=reader.env())
    try:
        stack.api_url = f"http://127.0.0.1:{reader.port}"
        wait_for(lambda: stack.http("GET", "/health")[0] == 200, what="API up")
        wait_for(lambda: len(stack.online_workers()) == 2, what="its two workers online")

        # When every block runs in turn, Then each does what the README says.
        for block in blocks:
            if block.first not in NOT_RUN:
                reader.run(block)
    finally:
        stack.close()
        up.stop()
