"""Settings: a flag beats the environment, which beats the default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields, replace

import pytest

from common import settings as config
from tests.conftest import ROOT, child_env
from worker.runner import POOLS


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


def test_the_pools_checked_are_those_the_worker_knows() -> None:
    assert config.POOLS == POOLS


def test_every_problem_is_found_and_names_the_flag_as_the_command_calls_it() -> None:
    bad = config.Settings(broker="5555", workers=-1, reconnect_backoff=64.0, log_level="LOUD")

    found = config.problems(bad, config.names_for(config.UP), config.RENAMED[config.UP])

    assert found == [
        "--broker-bind (ZMQS_BROKER) must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555, "
        "got '5555'",
        "--workers (ZMQS_WORKERS) must be >= 0, got -1",
        "--reconnect-backoff-max (ZMQS_RECONNECT_BACKOFF_MAX) must be at least "
        "--reconnect-backoff, got 32.0",
        "--log-level (ZMQS_LOG_LEVEL) must be a logging level such as DEBUG, INFO or WARNING, "
        "got 'LOUD'",
    ]
    # A command is held only to the settings it takes, each flag named as it calls it.
    assert config.problems(bad, config.names_for(config.API)) == [
        found[0].replace("--broker-bind", "--broker"),
        found[-1],
    ]
    assert config.problems(config.Settings(), config.names_for(config.UP)) == []


def test_the_arguments_up_passes_on_give_back_the_same_settings() -> None:
    settings = config.Settings(
        broker="tcp://127.0.0.1:1", handlers="a,b", cpu=1.5, connections=3, insecure=True
    )
    for command in (config.BROKER, config.WORKER, config.API):
        parser = argparse.ArgumentParser()
        config.add_command(parser, command)
        args = parser.parse_args(config.to_argv(settings, command))
        again = config.from_args(parser, args, command, environ={})
        for name in config.names_for(command):
            assert getattr(again, name) == getattr(settings, name), (command, name)


def test_a_yes_or_no_setting_is_a_flag_without_a_value_or_a_word_in_the_environment() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, ["insecure"])

    assert config.load(parser.parse_args([]), {}).insecure is False
    assert config.load(parser.parse_args(["--insecure"]), {}).insecure is True
    for word, meaning in [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("", False)]:
        assert config.load(parser.parse_args([]), {"ZMQS_INSECURE": word}).insecure is meaning
    # The flag wins over the environment, as every flag does.
    assert config.load(parser.parse_args(["--insecure"]), {"ZMQS_INSECURE": "0"}).insecure
    assert config.to_argv(config.Settings(insecure=False), config.API).count("--insecure") == 0
    assert config.to_argv(config.Settings(insecure=True), config.API).count("--insecure") == 1


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [("127.0.0.1:8080", True), ("127.1.2.3:1", True), ("localhost:80", True),
     ("[::1]:80", True), (":8080", False), ("0.0.0.0:8080", False), ("[::]:80", False),
     ("10.0.0.1:80", False), ("api.example.com:80", False)],
)  # fmt: skip
def test_is_loopback(listen: str, loopback: bool) -> None:
    assert config.is_loopback(listen) is loopback


def test_an_open_api_beyond_loopback_is_a_problem_unless_tokens_or_insecure() -> None:
    names = config.names_for(config.API)
    public = config.Settings(listen=":8080")

    [problem] = config.problems(public, names)
    assert problem.startswith("--listen (ZMQS_LISTEN) must be a loopback address")
    assert "--insecure" in problem and "got ':8080'" in problem
    assert config.problems(replace(public, insecure=True), names) == []
    assert config.problems(replace(public, api_tokens="tokens"), names) == []
    # A listen address that is not HOST:PORT is one problem, not two.
    assert len(config.problems(config.Settings(listen="nope"), names)) == 1
