"""Settings: a flag beats the environment, which beats the default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest

from common import settings as config
from tests.conftest import ROOT, child_env


def parse(argv: list[str], names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, names, flags={"broker": "--bind"})
    return parser.parse_args(argv)


def test_flag_over_environment_over_default() -> None:
    names = ["broker", "liveness", "ping_interval", "handlers"]
    env = {"ZMQS_BROKER": "tcp://10.1.1.1:1", "ZMQS_LIVENESS": "7"}
    loaded = config.load(
        parse(["--liveness", "5", "--handlers", "a", "--handlers", "b"], names), env
    )
    assert loaded.broker == "tcp://10.1.1.1:1"
    assert loaded.liveness == 5
    assert loaded.ping_interval == 1.0
    assert config.split_list(loaded.handlers) == ["a", "b"]
    assert config.load(parse(["--bind", "ipc:///x"], names), env).broker == "ipc:///x"


def test_bad_numbers_are_refused_with_the_setting_name() -> None:
    with pytest.raises(SystemExit, match="liveness"):
        config.load(None, {"ZMQS_LIVENESS": "three"})


def test_slots_default_to_cpu_count() -> None:
    assert config.Settings(concurrency=3).slots == 3
    assert config.Settings().slots >= 1


def readme_settings_table() -> list[str]:
    """The table lines of the README's "Settings" section."""
    readme = (ROOT / "README.md").read_text()
    assert "\n## Settings\n" in readme, "README has no Settings section"
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_python_m_common_settings_prints_the_readme_table() -> None:
    # Given the README's table, which says `python -m common.settings` prints it.
    readme = readme_settings_table()

    # When the module is run.
    printed = subprocess.run(
        [sys.executable, "-m", "common.settings"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=60,
        check=False,
    )

    # Then it prints that table, row for row, and the table has a row for every setting.
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines() == readme
    envs = [row.split("|")[3].strip() for row in readme[2:]]
    assert envs == [f"`{config.env_name(f.name)}`" for f in fields(config.Settings)]
