"""The health checks of ``deploy/compose.yaml`` and ``deploy/k8s/`` against a real stack.

Each check's command is run as the container would run it, its addresses and key paths
pointed at this stack: it succeeds while the part it checks is up, and fails once that part
is gone, which is all a container runtime asks of it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.curve import ClientKeys, Role, keygen
from tests.conftest import Stack, child_env
from tests.unit.test_deploy import component, compose_services, k8s_workloads


def start_check(
    argv: list[str], stack: Stack, env: dict[str, str], paths: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start a check's ``python -c`` with this stack's addresses and key paths."""
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2].replace("tcp://127.0.0.1:5555", stack.endpoint)
    code = code.replace("http://127.0.0.1:8080", stack.api_url)
    for old, new in paths.items():
        code = code.replace(old, new)
    given = {k: v for k, v in env.items() if k.startswith("ZMQS_")}
    merged = {**child_env(), **given, "ZMQS_BROKER": stack.endpoint}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=merged,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_checks(
    checks: dict[str, list[str]],
    stack: Stack,
    envs: dict[str, dict[str, str]],
    paths: dict[str, str],
) -> dict[str, int]:
    """Run the checks side by side (each waits up to its timeout for a part that is gone);
    their exit statuses by name."""
    running = {name: start_check(argv, stack, envs.get(name, {}), paths)
               for name, argv in checks.items()}  # fmt: skip
    return {name: proc.wait(timeout=60) for name, proc in running.items()}


def test_compose_health_checks_pass_while_up_and_fail_when_the_broker_is_gone(
    stack: Stack,
) -> None:
    services = compose_services()
    broker = stack.start_broker()
    stack.start_worker(worker_id="worker-1")
    stack.start_api()
    stack.wait_workers("worker-1")
    checks = {name: service["healthcheck"]["test"][1:] for name, service in services.items()}
    envs = {name: service.get("environment", {}) for name, service in services.items()}

    checks = {name: checks[name] for name in ("broker", "api", "worker-1")}

    assert run_checks(checks, stack, envs, {}) == dict.fromkeys(checks, 0)

    broker.stop()
    assert all(run_checks(checks, stack, envs, {}).values())


def test_the_kubernetes_broker_probe_answers_with_its_own_client_key(
    stack: Stack, tmp_path: Path
) -> None:
    # Keys made as docs/deployment.md makes them: the broker's, and the probe's, let in.
    keys, allow, probe = tmp_path / "keys", tmp_path / "allow", tmp_path / "probe"
    keygen(keys, "broker")
    keygen(keys, "probe", Role.CLIENT)
    allow.mkdir()
    probe.mkdir()
    (allow / "probe.key").write_text((keys / "probe.key").read_text())
    for name in ("broker.key", "probe.key_secret"):
        (probe / name).write_text((keys / name).read_text())
    stack.curve = ClientKeys.load(str(keys / "broker.key"), str(keys / "probe.key_secret"))
    [workload] = [w for w in k8s_workloads() if component(w) == "broker"]
    [container] = workload["spec"]["template"]["spec"]["containers"]
    paths = {"/etc/zmqs/probe": str(probe)}
    broker = stack.start_broker(
        "--curve-secret", str(keys / "broker.key_secret"), "--curve-allow", str(allow)
    )

    probes = {
        kind: container[kind]["exec"]["command"] for kind in ("readinessProbe", "livenessProbe")
    }

    assert run_checks(probes, stack, {}, paths) == dict.fromkeys(probes, 0)

    broker.stop()
    assert all(run_checks(probes, stack, {}, paths).values())
