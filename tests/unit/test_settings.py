"""Settings: a flag beats the environment, which beats the default."""

from __future__ import annotations

import argparse

import pytest

from common import settings as config


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
