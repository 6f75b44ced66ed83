"""pyproject.toml declares its license the way setuptools no longer warns about (PEP 639)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]

    # A table ({text = "MIT"}) is deprecated: setuptools warned on every install.
    assert project["license"] == "MIT"
    for pattern in project["license-files"]:
        assert list(ROOT.glob(pattern)), f"license-files {pattern!r} matches no file"
    # and the build uses a setuptools that reads both (77 is the first).
    [setuptools] = [
        Requirement(r) for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")
    ]
    assert not setuptools.specifier.contains(Version("76.9")), setuptools


def test_mutation_testing_copies_every_file_the_unit_tests_read() -> None:
    """``make mutate`` runs tests/unit in mutmut's copy of the tree, which holds only the
    source paths, the tests, pyproject.toml and ``also_copy``: a unit test that reads any
    other file fails there, and then no mutant is tested at all."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mutmut = pyproject["tool"]["mutmut"]
    copied = {*mutmut["source_paths"], *mutmut["also_copy"], "tests", "pyproject.toml"}
    read = set(pyproject["project"]["license-files"])  # the packaging test reads them
    for test in [*(ROOT / "tests" / "unit").glob("*.py"), ROOT / "tests" / "conftest.py"]:
        read.update(re.findall(r'ROOT / "([\w.-]+)', test.read_text()))
    assert read - copied == set(), "add them to [tool.mutmut] also_copy in pyproject.toml"
