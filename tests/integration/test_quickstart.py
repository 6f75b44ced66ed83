"""``zmq-scheduler up`` and the README's curl example, run verbatim."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Proc, Stack, alive, free_port, pids_started, wait_for

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="the README example needs curl and jq"
)


def readme_console_example() -> tuple[str, list[str]]:
    """The first ```console block of the README: (shell script, expected output lines)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```console\n(.*?)```", text, re.S)
    assert match, "README has no console example"
    script: list[str] = []
    expected: list[str] = []
    for line in match.group(1).splitlines():
        if line.startswith("$ "):
            script.append(line[2:])
        elif line.startswith("    ") and script:
            script.append(line)  # continuation of the command above
        else:
            expected.append(line)
    return "\n".join(script), expected


def test_up_answers_the_readme_example_and_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    stack = Stack(tmp_path)
    argv = [sys.executable, "-m", "common.up", "up", "--listen", f"127.0.0.1:{port}",
            "--broker-bind", stack.endpoint, "--data", str(tmp_path / "db.sqlite"),
            "--workers", "2", "--concurrency", "2"]  # fmt: skip
    up = Proc("up", argv, tmp_path)
    try:
        stack.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: stack.http("GET", "/health")[0] == 200, what="API up")
        wait_for(lambda: len(stack.online_workers()) == 2, what="two workers")

        script, expected = readme_console_example()
        script = script.replace("localhost:8080", f"127.0.0.1:{port}")
        result = subprocess.run(
            ["bash", "-c", "set -e\n" + script], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == expected

        # A child that dies is restarted.
        started = pids_started(up.output())
        assert set(started) == {"broker", "api", "worker-1", "worker-2"}
        os.kill(started["broker"], signal.SIGKILL)
        wait_for(
            lambda: stack.client(timeout=1).health()["pid"] != started["broker"],
            what="broker restarted",
        )

        # SIGTERM stops every child.
        up.popen.send_signal(signal.SIGTERM)
        assert up.popen.wait(timeout=30) == 0
        children = pids_started(up.output()).values()
        wait_for(lambda: not any(alive(pid) for pid in children), what="children gone")
    finally:
        up.stop()
        stack.close()
