"""Tokens and roles on the REST API through real gunicorn and a real broker: every endpoint
family refused without a token, refused to the wrong role, served to the right one; a
worker's token bound to its own id; a bad tokens file and an open API on a public address
refused as they start."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Proc, Stack, child_env, free_port, wait_for

TOKENS = {
    "admin": "admin-5Nf0sXq2-token-of-the-test",
    "client": "client-Xq2-5Nf0s-token-of-the-test",
    "worker:w1": "worker-1-Zr8k-token-of-the-test",
    "worker:w2": "worker-2-Zr8k-token-of-the-test",
}
Response = tuple[int, Any, dict[str, str]]


def write_tokens(path: Path) -> Path:
    lines = ["# tokens of the test", ""] + [f"{token} {role}" for role, token in TOKENS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class AuthStack:
    """A broker and the API with the test's tokens; each call made as a role (None: no token)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def as_(self, role: str | None, method: str, path: str, body: Any = None) -> Response:
        headers = {} if role is None else {"Authorization": f"Bearer {TOKENS[role]}"}
        return self.stack.http(method, path, body, headers=headers)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    """One broker and one API for the module's tests: each uses its own tasks and workers."""
    tmp_path = tmp_path_factory.mktemp("auth")
    stack = Stack(tmp_path)
    try:
        stack.start_broker()
        stack.start_api("--api-tokens", str(write_tokens(tmp_path / "tokens")))
        yield AuthStack(stack)
    finally:
        stack.close()


def assert_refused(response: Response, status: int) -> None:
    code, body, headers = response
    assert code == status, response
    assert headers["content-type"].startswith("application/json"), headers
    assert body["title"] and body["description"], body
    assert not any(token in str(body) for token in TOKENS.values())
    if status == 401:
        assert headers["www-authenticate"] == "Bearer"


#: A call of each endpoint family: (method, path, body).
CLIENT_CALLS: list[tuple[str, str, Any]] = [
    ("POST", "/tasks", {"handler": "nobody-serves-this"}),
    ("POST", "/tasks/batch", {"tasks": [{"handler": "nobody-serves-this"}]}),
    ("GET", "/tasks", None),
    ("GET", "/workers", None),
]
WORKER_CALLS: list[tuple[str, str, Any]] = [
    ("POST", "/workers", {"id": "w1", "capabilities": ["w1-job"]}),
    ("PUT", "/workers/w1/heartbeat", None),
    ("POST", "/workers/w1/tasks/next", None),
    ("POST", "/workers/w1/tasks/some-task/complete", {"status": "completed"}),
]


def test_health_is_open_and_everything_else_needs_a_token(api: AuthStack) -> None:
    status, health, _ = api.as_(None, "GET", "/health")
    assert status == 200 and health["status"] == "ok"

    for method, path, body in [
        *CLIENT_CALLS,
        *WORKER_CALLS,
        ("GET", "/tasks/some-task", None),
        ("DELETE", "/tasks/some-task", None),
        ("GET", "/workers/w1", None),
        ("GET", "/nowhere", None),
    ]:
        assert_refused(api.as_(None, method, path, body), 401)
    assert_refused(
        api.stack.http(
            "GET", "/tasks", headers={"Authorization": "Bearer unknown-token-0123456789"}
        ),
        401,
    )


def test_each_role_is_served_its_calls_and_refused_the_others(api: AuthStack) -> None:
    # A client submits, reads, lists and cancels.
    status, made, _ = api.as_("client", "POST", "/tasks", {"handler": "w1-job", "args": "MQ=="})
    assert status == 201, made
    task_id = made["id"]
    status, batch, _ = api.as_("client", "POST", "/tasks/batch", {"tasks": [{"handler": "x"}]})
    assert status == 201, batch
    assert api.as_("client", "GET", "/tasks")[0] == 200
    assert api.as_("client", "GET", f"/tasks/{task_id}")[0] == 200
    assert api.as_("client", "GET", "/workers")[0] == 200
    status, cancelled, _ = api.as_("client", "DELETE", f"/tasks/{batch['ids'][0]}")
    assert status == 200 and cancelled["status"] == "cancelled"
    # ... and may not act as a worker.
    for method, path, body in WORKER_CALLS:
        assert_refused(api.as_("client", method, path, body), 403)

    # The worker w1 registers, beats, takes the task and completes it.
    status, worker, _ = api.as_("worker:w1", *WORKER_CALLS[0])
    assert status == 201 and worker["id"] == "w1", worker
    assert api.as_("worker:w1", "PUT", "/workers/w1/heartbeat")[0] == 200
    status, leased, _ = api.as_("worker:w1", "POST", "/workers/w1/tasks/next")
    assert status == 200 and leased["id"] == task_id, leased
    assert api.as_("worker:w1", "GET", "/workers/w1")[0] == 200
    done = {"status": "completed", "result": "Mg=="}
    status, completed, _ = api.as_(
        "worker:w1", "POST", f"/workers/w1/tasks/{task_id}/complete", done
    )
    assert status == 200 and completed["status"] == "completed", completed
    # ... and may not submit, read or cancel.
    for method, path, body in [*CLIENT_CALLS, ("GET", f"/tasks/{task_id}", None)]:
        assert_refused(api.as_("worker:w1", method, path, body), 403)
    assert_refused(api.as_("worker:w1", "DELETE", f"/tasks/{task_id}"), 403)

    # The admin does all of it.
    status, made, _ = api.as_("admin", "POST", "/tasks", {"handler": "admin-job"})
    assert status == 201
    admins = {"id": "admin-made", "capabilities": ["admin-job"]}
    assert api.as_("admin", "POST", "/workers", admins)[0] == 201
    assert api.as_("admin", "PUT", "/workers/admin-made/heartbeat")[0] == 200
    status, leased, _ = api.as_("admin", "POST", "/workers/admin-made/tasks/next")
    assert status == 200 and leased["id"] == made["id"]
    path = f"/workers/admin-made/tasks/{made['id']}/complete"
    assert api.as_("admin", "POST", path, {"status": "completed"})[0] == 200
    assert api.as_("admin", "GET", f"/tasks/{made['id']}")[1]["status"] == "completed"
    assert api.as_("admin", "GET", "/workers/admin-made")[0] == 200


def test_a_worker_token_cannot_act_as_another_worker(api: AuthStack) -> None:
    # Given w2's task, leased to w2.
    status, made, _ = api.as_("client", "POST", "/tasks", {"handler": "w2-job"})
    assert status == 201
    assert api.as_("worker:w2", "POST", "/workers", {"id": "w2", "capabilities": ["w2-job"]})[
        0
    ] in (
        200,
        201,
    )
    status, leased, _ = api.as_("worker:w2", "POST", "/workers/w2/tasks/next")
    assert status == 200 and leased["id"] == made["id"]

    # When w1's token calls as w2, every call is refused.
    as_w2 = [
        ("POST", "/workers", {"id": "w2", "capabilities": ["w2-job"]}),
        ("PUT", "/workers/w2/heartbeat", None),
        ("POST", "/workers/w2/tasks/next", None),
        ("POST", f"/workers/w2/tasks/{made['id']}/complete", {"status": "failed", "error": "x"}),
        ("GET", "/workers/w2", None),
    ]
    for method, path, body in as_w2:
        assert_refused(api.as_("worker:w1", method, path, body), 403)

    # Then the task still runs on w2, which completes it.
    assert api.as_("client", "GET", f"/tasks/{made['id']}")[1]["status"] == "running"
    done = api.as_("worker:w2", *as_w2[3][:2], {"status": "completed"})
    assert done[0] == 200 and done[1]["status"] == "completed"


# -- start-up ---------------------------------------------------------------------------


def run_api(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**child_env(), **(env or {})},
        timeout=60,
        check=False,
    )


def test_a_malformed_tokens_file_is_refused_naming_the_line_not_the_token(tmp_path: Path) -> None:
    secret = "s3cret-short"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# ok\n{TOKENS['admin']} admin\n\n{secret} client\n")

    refused = run_api(
        "--api-tokens", str(tokens), "--listen", f"127.0.0.1:{free_port()}", cwd=tmp_path
    )

    assert refused.returncode == 2, refused.stderr
    assert f"tokens file {tokens}, line 4: " in refused.stderr
    assert "at least 16 characters" in refused.stderr
    assert secret not in refused.stderr and TOKENS["admin"] not in refused.stderr
    assert "Booting worker" not in refused.stderr  # gunicorn never started


def test_gunicorn_conf_refuses_a_malformed_tokens_file_too(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS['admin']} root\n")
    env = {
        **child_env(),
        "ZMQS_API_TOKENS": str(tokens),
        "ZMQS_LISTEN": f"127.0.0.1:{free_port()}",
        "ZMQS_PROCESSES": "1",
    }

    refused = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "api.app:create_app()"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )

    assert refused.returncode != 0
    assert f"tokens file {tokens}, line 1: the role must be" in refused.stderr
    assert TOKENS["admin"] not in refused.stderr


def test_an_open_api_refuses_a_public_address_unless_insecure(tmp_path: Path) -> None:
    port = free_port()
    public = ["--listen", f"0.0.0.0:{port}", "--processes", "1"]

    refused = run_api(*public, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "must be a loopback address" in refused.stderr and "--insecure" in refused.stderr

    api = Proc("api-insecure", [sys.executable, "-m", "api", *public, "--insecure"], tmp_path)
    try:

        def health_status() -> int:
            url = f"http://127.0.0.1:{port}/health"
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:  # 503: no broker behind it, but serving
                return exc.code

        wait_for(health_status, what="the insecure API answering")
        wait_for(lambda: "the API is open" in api.output(), what="the open-API warning")
    finally:
        api.stop()
