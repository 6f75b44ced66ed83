"""The deployment files of ``deploy/`` say only what the code understands.

No container runtime or cluster is needed: every YAML file parses; every command the image,
Compose, Kubernetes and systemd run is a console script given flags its parser takes and an
environment its settings accept (or ``python -c`` code whose imports exist); every ``ZMQS_``
name is a setting's; Compose and Kubernetes run the same commands; Kubernetes mounts each
file a setting names; the image is built by the README's install steps; and ``systemd-analyze
verify`` passes on the units where it is installed.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import pytest
import yaml

from broker.cli import security_problem
from common import settings as config
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
GUIDE = ROOT / "docs" / "deployment.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The console scripts the package installs, and the settings each takes.
SCRIPTS: dict[str, str] = {"zmq-broker": config.BROKER, "zmq-worker": config.WORKER,
                           "zmq-api": config.API}  # fmt: skip
#: Every environment variable a setting reads.
ENV_NAMES = {config.env_name(f.name) for f in fields(config.Settings)}
#: What a pod's name is in the worker StatefulSet, for its ``$(POD_NAME)``.
POD_NAME = "zmq-worker-0"


@dataclass(frozen=True)
class Command:
    """A command a deployment file runs, and the environment it runs in."""

    where: str
    argv: list[str]
    env: dict[str, str]


# -- reading the files -------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, as (INSTRUCTION, rest), continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, rest = (pending + line).partition(" ")
        out.append((instruction.upper(), " ".join(rest.split())))
        pending = ""
    return out


def image_env() -> dict[str, str]:
    """The image's ``ENV``, as ``KEY=VALUE`` pairs."""
    env: dict[str, str] = {}
    for instruction, rest in dockerfile():
        if instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def k8s_objects() -> list[dict[str, Any]]:
    """The objects of the manifests that ``kustomization.yaml`` lists."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return [doc for name in listed for doc in yaml_docs(K8S / name)]


def k8s_workloads() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment, ``$(NAME)`` expanded as Kubernetes does."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.name", f"{item['name']}: a field this test cannot tell"
            env[item["name"]] = POD_NAME
        else:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], str(item["value"]))
    return env


def unit_files() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def unit_entries(path: Path, key: str) -> list[str]:
    return [
        line.partition("=")[2] for line in path.read_text().splitlines() if line.startswith(key)
    ]


def env_file(path: Path) -> dict[str, str]:
    """An environment file's ``KEY=VALUE`` lines."""
    pairs = [line.partition("=") for line in path.read_text().splitlines()]
    return {key: value for key, sep, value in pairs if sep and not key.startswith("#")}


def unit_env(unit: Path) -> dict[str, str]:
    """A unit's environment as its examples set it: its own ``Environment=`` lines and its
    drop-ins', overridden by the ``EnvironmentFile=`` it reads, each an ``*.example`` here."""
    env: dict[str, str] = {}
    for source in [unit, *sorted(SYSTEMD.glob(f"{unit.name}.d/*.conf"))]:
        for assignment in unit_entries(source, "Environment="):
            key, _, value = assignment.partition("=")
            env[key] = value.replace("%H", "host").replace("%i", "1")
    for path in unit_entries(unit, "EnvironmentFile="):
        example = DEPLOY / (PurePosixPath(path.lstrip("-")).name + ".example")
        assert example.exists(), f"{unit.name}: no {example.name} for {path}"
        env |= env_file(example)
    return env


def commands() -> Iterator[Command]:
    """Every command any deployment file runs."""
    image = image_env()
    for instruction, rest in dockerfile():
        if instruction == "CMD":
            yield Command("Dockerfile CMD", json.loads(rest), image)
    for name, service in compose_services().items():
        env = {**image, **service.get("environment", {})}
        yield Command(f"compose {name}", service["command"], env)
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", f"compose {name}: healthcheck not in exec form"
        yield Command(f"compose {name} healthcheck", test[1:], env)
    for workload in k8s_workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            where = f"k8s {workload['metadata']['name']}"
            env = {**image, **k8s_env(container)}
            yield Command(where, container["command"] + container.get("args", []), env)
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if "exec" in container.get(probe, {}):
                    yield Command(f"{where} {probe}", container[probe]["exec"]["command"], env)
    for unit in unit_files():
        env = unit_env(unit)
        for exec_start in unit_entries(unit, "ExecStart="):
            argv = shlex.split(exec_start)
            yield Command(f"systemd {unit.name}", [PurePosixPath(argv[0]).name, *argv[1:]], env)


# -- checking a command ------------------------------------------------------------------


class StrictParser(argparse.ArgumentParser):
    """A parser that raises instead of exiting, so that a test says what it refused."""

    def error(self, message: str) -> NoReturn:
        raise AssertionError(message)


def check_script(where: str, argv: list[str], env: dict[str, str]) -> None:
    """A console script's flags and environment are what its parser and settings take."""
    name, rest = argv[0], argv[1:]
    if name == "zmq-scheduler":
        assert rest[:1] == ["up"], f"{where}: zmq-scheduler {rest[:1]} in a deployment"
        command, rest = config.UP, rest[1:]
    else:
        command = SCRIPTS[name]
    parser = StrictParser(prog=name)
    config.add_command(parser, command)
    try:
        settings = config.from_args(parser, parser.parse_args(rest), command, environ=env)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {shlex.join(argv)}: {exc}") from None
    if command in (config.BROKER, config.UP):
        assert not security_problem(settings), f"{where}: {security_problem(settings)}"


def check_python(where: str, argv: list[str], env: dict[str, str]) -> None:
    """``python -c CODE``: it compiles, what it imports exists, the variables it reads are set."""
    assert argv[1] == "-c", f"{where}: python {argv[1]} (only -c is checked)"
    tree = ast.parse(argv[2], filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif (
            isinstance(node, ast.Subscript)
            and ast.unparse(node.value) == "os.environ"
            and isinstance(node.slice, ast.Constant)
        ):
            assert node.slice.value in env, f"{where}: reads {node.slice.value!r}, which is unset"
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    for call in calls:  # the client's calls, by name: Client(...).health
        method = call.rpartition(".")[2]
        if call.startswith("Client(") and method:
            from common.client import Client

            assert hasattr(Client, method), f"{where}: Client has no {method}"


def test_every_yaml_file_parses() -> None:
    assert {p.relative_to(DEPLOY).as_posix() for p in yaml_files()} >= {
        "compose.yaml", "k8s/kustomization.yaml", "k8s/broker.yaml", "k8s/api.yaml",
        "k8s/worker.yaml",
    }  # fmt: skip
    for path in yaml_files():
        docs = yaml_docs(path)
        assert docs and all(isinstance(doc, dict) for doc in docs), path


def test_every_command_its_flags_and_its_environment_exist() -> None:
    scripts = set(PYPROJECT["project"]["scripts"])
    assert scripts == {*SCRIPTS, "zmq-scheduler"}, "a console script this test does not know"
    found = list(commands())
    assert len(found) >= 12, [c.where for c in found]
    for command in found:
        unknown = {k for k in command.env if k.startswith(config.ENV_PREFIX)} - ENV_NAMES
        assert not unknown, f"{command.where}: no such setting {sorted(unknown)}"
        if command.argv[0] in scripts:
            check_script(command.where, command.argv, command.env)
        elif command.argv[0] in ("python", "python3"):
            check_python(command.where, command.argv, command.env)
        else:
            raise AssertionError(f"{command.where}: {command.argv[0]} is no command of ours")


def test_every_zmqs_name_in_the_deployment_files_and_guide_is_a_setting() -> None:
    for path in [*DEPLOY.rglob("*"), GUIDE]:
        if path.is_file() and "__pycache__" not in path.parts:
            named = set(re.findall(r"\bZMQS_[A-Z0-9_]+", path.read_text()))
            assert named <= ENV_NAMES, f"{path.name}: no such setting {sorted(named - ENV_NAMES)}"


def test_compose_and_kubernetes_run_the_same_commands() -> None:
    kube = {
        component(w): c["command"] + c.get("args", [])
        for w in k8s_workloads()
        for c in w["spec"]["template"]["spec"]["containers"]
    }
    services = compose_services()
    assert set(kube) == {"broker", "api", "worker"}
    for name, service in services.items():
        role = "worker" if name.startswith("worker-") else name
        assert service["command"] == kube[role], name
    assert sum(name.startswith("worker-") for name in services) == 2
    # and systemd runs the same programs, the broker's endpoint from its environment file
    units = {unit.name.split(".")[0].removesuffix("@"): unit for unit in unit_files()}
    for role, argv in kube.items():
        [exec_start] = unit_entries(units[f"zmq-{role}"], "ExecStart=")
        assert PurePosixPath(shlex.split(exec_start)[0]).name == argv[0], role


def test_compose_stores_the_broker_on_a_volume_and_mounts_the_tokens_where_the_image_expects() -> (
    None
):
    services = compose_services()
    data = image_env()["ZMQS_DATA"]
    volumes = [v.split(":") for v in services["broker"]["volumes"]]
    assert any(PurePosixPath(data).parent == PurePosixPath(target) for _, target in volumes)
    assert {name for name, _ in volumes} <= set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    # Compose mounts a secret at /run/secrets/NAME.
    tokens = image_env()["ZMQS_API_TOKENS"]
    assert [f"/run/secrets/{name}" for name in services["api"]["secrets"]] == [tokens]
    assert services["api"]["ports"] == ["8080:8080"]
    assert all("healthcheck" in service for service in services.values())


def test_kubernetes_mounts_every_file_a_setting_or_probe_names() -> None:
    kinds = {(component(w), w["kind"]) for w in k8s_workloads()}
    # Workers are a StatefulSet: each pod's name is its worker id, which its CURVE key names.
    assert kinds == {("broker", "StatefulSet"), ("api", "Deployment"), ("worker", "StatefulSet")}
    secrets: set[str] = set()
    for workload in k8s_workloads():
        spec = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert set(mounts.values()) <= set(volumes) | claims, workload["metadata"]["name"]
            env = k8s_env(container)
            paths = [env[k] for k in env if k.startswith(("ZMQS_CURVE", "ZMQS_API_TOKENS"))]
            for probe in ("readinessProbe", "livenessProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command", [])
                paths += re.findall(r"'(/etc/[^']+)'", " ".join(command))
            if "ZMQS_DATA" in env:
                paths.append(env["ZMQS_DATA"])
                assert any(mounts[m] in claims for m in mounts if env["ZMQS_DATA"].startswith(m))
            for path in paths:
                assert any(path == m or path.startswith(m + "/") for m in mounts), (
                    f"{workload['metadata']['name']}: nothing mounted at {path}"
                )
        secrets |= {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    # each Secret is one the guide says how to make
    guide = GUIDE.read_text()
    for secret in secrets:
        assert f"kubectl create secret generic {secret}" in guide, secret
    api = next(w for w in k8s_workloads() if component(w) == "api")
    [container] = api["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"


def test_the_image_is_built_by_the_readme_install_steps() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Installing on a server\n", 1)[1].split("\n## ", 1)[0]
    steps = section.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    instructions = dockerfile()
    first_copy = next(i for i, (name, _) in enumerate(instructions) if name == "COPY")
    runs = [rest for name, rest in instructions[first_copy:] if name == "RUN"]
    assert [run.replace(" --no-cache-dir", "") for run in runs] == steps
    # The scripts are found where the README puts them, in the image and by the units.
    bin_dir = PurePosixPath(shlex.split(steps[0])[-1]) / "bin"
    assert image_env()["PATH"].split(":")[0] == str(bin_dir)
    for unit in unit_files():
        for exec_start in unit_entries(unit, "ExecStart="):
            assert PurePosixPath(shlex.split(exec_start)[0]).parent == bin_dir, unit.name
    # The build context holds what pyproject.toml makes the build read.
    copied = {
        source for name, rest in instructions if name == "COPY" for source in shlex.split(rest)[:-1]
    }
    project = PYPROJECT["project"]
    needed = {project["readme"], *project["license-files"], "pyproject.toml"}
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    needed |= {pattern.rstrip("*") for pattern in packages}
    assert needed <= copied, f"not in the image: {sorted(needed - copied)}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_passes_on_the_units(tmp_path: Path) -> None:
    # The units' commands are looked for in this checkout's environment instead of
    # /opt/zmq-scheduler/.venv, which only an installed server has: verify checks they exist.
    here = Path(sys.executable).parent
    for unit in unit_files():
        text = unit.read_text().replace("/opt/zmq-scheduler/.venv/bin/", f"{here}/")
        text = text.replace("WorkingDirectory=/opt/zmq-scheduler", f"WorkingDirectory={ROOT}")
        name = unit.name.replace("@.", "@1.")  # a template is verified as an instance
        (tmp_path / name).write_text(text)
    names = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(
        ["systemd-analyze", "verify", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not here")
def test_kustomize_renders_every_manifest() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc)
    assert kinds == sorted(o["kind"] for o in k8s_objects())
