"""The command-line client end to end: ``zmq-scheduler submit``, ``tasks``, ``task``,
``cancel`` and ``workers`` as installed, against a real broker and worker, through either
door (``--broker``, or the REST API with ``--api``)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from common.cli import COMMANDS
from tests.conftest import Stack, wait_for
from tests.integration.test_commands import run, table

DOORS = ["broker", "api"]


def cli(stack: Stack, door: str, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``zmq-scheduler COMMAND ARGS`` through ``door``, to its end."""
    where = ["--broker", stack.endpoint] if door == "broker" else ["--api", stack.api_url]
    return run(f"zmq-scheduler {command}", *args, *where, "--request-timeout", "10")


def start(stack: Stack, door: str, slots: int = 4) -> None:
    stack.start_broker()
    stack.start_worker(slots=slots)
    if door == "api":
        stack.start_api()
    stack.wait_workers("worker-1")


@pytest.mark.parametrize("door", DOORS)
def test_submit_wait_prints_the_result(door: str, stack: Stack) -> None:
    start(stack, door)

    shown = cli(stack, door, "submit", "fibonacci", "--args", '{"n": 10}', "--wait")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == '{"n":10,"result":55}\n'


@pytest.mark.parametrize("door", DOORS)
def test_submit_wait_of_a_task_that_fails_exits_1_with_its_error(door: str, stack: Stack) -> None:
    start(stack, door)

    shown = cli(stack, door, "submit", "fibonacci", "--args", '{"n": "ten"}', "--wait")

    assert shown.returncode == 1
    assert shown.stdout == ""
    assert " failed: " in shown.stderr and "n" in shown.stderr


@pytest.mark.parametrize("door", DOORS)
def test_every_command_through_each_door(door: str, stack: Stack) -> None:
    start(stack, door)

    # submit prints the id; task shows it, args decoded; --json is the API's record.
    submitted = cli(stack, door, "submit", "echo", "--args", '"hello"', "--name", "greeting",
                    "--priority", "3", "--key", "k-1")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    client = stack.client()
    wait_for(lambda: client.get(task_id)["status"] == "completed", what="the echo completed")
    shown = cli(stack, door, "task", task_id)
    assert shown.returncode == 0, shown.stderr
    assert "status:" in shown.stdout and "completed" in shown.stdout
    assert 'result:          "hello"' in shown.stdout and "runs:" in shown.stdout
    record = json.loads(cli(stack, door, "task", task_id, "--json").stdout)
    assert record["name"] == "greeting" and record["priority"] == 3
    assert record["result"] == "ImhlbGxvIg=="  # base64, as GET /tasks/{id} shows it
    # The same key again finds the task.
    again = cli(stack, door, "submit", "echo", "--args", '"hello"', "--name", "greeting",
                "--priority", "3", "--key", "k-1")  # fmt: skip
    assert again.stdout.strip() == task_id

    # cancel a task no worker serves; tasks lists both, as a table and as JSON.
    pending = cli(stack, door, "submit", "nobody-serves-this").stdout.strip()
    cancelled = cli(stack, door, "cancel", pending)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"{pending} cancelled\n"
    listed = cli(stack, door, "tasks")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "HANDLER", "STATUS"]
    assert [row.split()[0] for row in rows] == [task_id, pending]
    page = json.loads(cli(stack, door, "tasks", "--status", "cancelled", "--json").stdout)
    assert [t["id"] for t in page["tasks"]] == [pending] and page["next"] is None

    # workers shows the worker and its slots.
    workers = cli(stack, door, "workers")
    assert workers.returncode == 0, workers.stderr
    [row] = [line for line in workers.stdout.splitlines() if line.startswith("worker-1 ")]
    assert row.split()[1:4] == ["zmq", "online", "0/4"]
    [worker] = json.loads(cli(stack, door, "workers", "--json").stdout)
    assert worker["id"] == "worker-1" and "echo" in worker["handlers"]


@pytest.mark.parametrize("door", DOORS)
def test_tasks_is_paged_and_all_follows_every_page(door: str, stack: Stack) -> None:
    start(stack, door)
    ids = stack.client().submit_many([{"handler": "nobody"} for _ in range(5)])

    first = cli(stack, door, "tasks", "--limit", "2")
    assert first.returncode == 0, first.stderr
    *rows, more = first.stdout.splitlines()
    assert [row.split()[0] for row in rows[1:]] == ids[:2]
    assert more.startswith("more: --after ")
    cursor = more.split()[-1]
    shown = cli(stack, door, "tasks", "--limit", "2", "--after", cursor, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [t["id"] for t in json.loads(shown.stdout)["tasks"]] == ids[2:4]
    shown = cli(stack, door, "tasks", "--limit", "2", "--all", "--json")
    assert shown.returncode == 0, shown.stderr
    every = json.loads(shown.stdout)
    assert [t["id"] for t in every["tasks"]] == ids and every["next"] is None


@pytest.mark.parametrize("door", DOORS)
def test_a_batch_of_1000_completes_and_running_it_again_submits_nothing(
    door: str, stack: Stack
) -> None:
    # Given a file of 1,000 tasks (and a blank line, which is skipped).
    start(stack, door, slots=8)
    lines = [json.dumps({"handler": "echo", "args": {"i": i}}) for i in range(1000)]
    path = stack.tmp_path / "tasks.jsonl"
    path.write_text("\n".join([*lines[:500], "", *lines[500:]]) + "\n")

    # When it is submitted with --wait, twice.
    first = cli(stack, door, "submit", "--batch", str(path), "--wait", "--json")
    second = cli(stack, door, "submit", "--batch", str(path), "--wait")

    # Then every task completed, once: the second run found the first's tasks.
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["tasks"], summary["completed"], summary["failed"]) == (1000, 1000, 0)
    assert summary["refused"] == [] and summary["failures"] == []
    if door == "broker":
        assert (summary["submitted"], summary["existing"]) == (1000, 0)
    assert second.returncode == 0, second.stderr
    assert "1000 tasks" in second.stdout and "1000 completed, 0 failed" in second.stdout
    if door == "broker":
        assert "0 submitted, 1000 there already" in second.stdout
    tasks, _ = stack.client().list_tasks(limit=1000)
    assert len(tasks) == 1000 and {t["status"] for t in tasks} == {"completed"}
    first_ids = summary["ids"]
    assert sorted(first_ids) == sorted(t["id"] for t in tasks)
    assert tasks[0]["args"] == b'{"i": 0}'


def test_a_batch_reports_the_tasks_that_failed_by_line(stack: Stack) -> None:
    start(stack, "broker")
    path = stack.tmp_path / "tasks.jsonl"
    path.write_text('{"handler": "echo", "args": "a"}\n{"handler": "fibonacci", "args": "x"}\n')

    shown = cli(stack, "broker", "submit", "--batch", str(path), "--wait")

    assert shown.returncode == 1
    assert "1 completed, 1 failed, 0 cancelled" in shown.stdout
    assert shown.stderr.startswith("line 2: task ") and " failed: " in shown.stderr


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["submit", "echo", "--args", "{not json"], "--args is not JSON"),
        (["submit"], "give a HANDLER, or --batch FILE"),
        (["submit", "echo", "--priority", "high"], "argument --priority: invalid int value"),
        (["submit", "echo", "--args", "1", "--args-file", "f"], "give --args or --args-file"),
        (["submit", "echo", "--args-file", "/nonexistent"], "cannot read --args-file"),
        (["submit", "--batch", "/nonexistent.jsonl"], "cannot read /nonexistent.jsonl"),
        (["submit", "echo", "--batch", "x.jsonl"], "--batch takes its tasks from the file"),
        (["submit", "", "--wait"], "handler"),
        (["tasks", "--limit", "0"], "--limit must be 1 to 1000"),
        (["tasks", "--status", "lost"], "argument --status: invalid choice"),
        (["task"], "the following arguments are required: ID"),
        (["workers", "--api", "localhost:8080"], "--api (ZMQS_API) must be the API's URL"),
        (["workers", "--broker", "5555"], "--broker (ZMQS_BROKER) must be a ZeroMQ endpoint"),
        (["workers", "--curve-secret", "x"], "the CURVE keys cannot be used"),
        (["purge"], "the following arguments are required: --status"),
        (["purge", "--status", "pending"], "argument --status: invalid choice"),
        (["purge", "--status", "failed", "--before", "yesterday"], "--before must be seconds"),
        (["drain"], "the following arguments are required: WORKER_ID"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_status_2(args: list[str], refused: str) -> None:
    command, *rest = args

    shown = run(f"zmq-scheduler {command}", "--broker", "tcp://127.0.0.1:1", *rest)

    assert shown.returncode == 2, shown.stderr
    assert f"zmq-scheduler {command}: error: " in shown.stderr
    assert refused in shown.stderr


@pytest.mark.parametrize("door", DOORS)
def test_a_batch_with_a_bad_line_submits_nothing_and_input_the_scheduler_refuses_is_2(
    door: str, stack: Stack
) -> None:
    start(stack, door)
    path = stack.tmp_path / "tasks.jsonl"
    path.write_text('{"handler": "echo"}\n{"handler": "echo", "priority": "high"}\n')

    bad_line = cli(stack, door, "submit", "--batch", str(path))
    unknown_dependency = cli(stack, door, "submit", "echo", "--dep", "no-such-task")
    unknown_id = cli(stack, door, "task", "no-such-task")

    assert bad_line.returncode == 2
    assert f"error: {path}:2: " in bad_line.stderr and "priority" in bad_line.stderr
    assert unknown_dependency.returncode == 2
    assert "error: " in unknown_dependency.stderr and "no-such-task" in unknown_dependency.stderr
    assert unknown_id.returncode == 1
    assert "zmq-scheduler task: not found: " in unknown_id.stderr
    assert stack.client().list_tasks()[0] == []


def test_the_api_door_shows_its_token(stack: Stack) -> None:
    token = "a-token-of-the-cli-test-0123456789"
    tokens = stack.tmp_path / "tokens"
    tokens.write_text(f"{token} client\n")
    stack.start_broker()
    stack.start_api("--api-tokens", str(tokens))
    where = ["--api", stack.api_url]

    without = run("zmq-scheduler tasks", *where)
    with_flag = run("zmq-scheduler tasks", *where, "--token", token)
    from_env = run("zmq-scheduler tasks", *where, env={"ZMQS_TOKEN": token})

    assert without.returncode == 1 and "zmq-scheduler tasks: " in without.stderr
    assert with_flag.returncode == 0, with_flag.stderr
    assert from_env.returncode == 0 and from_env.stdout.startswith("ID ")


def test_a_scheduler_that_does_not_answer_is_status_1() -> None:
    shown = run(
        "zmq-scheduler", "workers", "--broker", "tcp://127.0.0.1:1", "--request-timeout", "0.5"
    )
    by_api = run("zmq-scheduler", "workers", "--api", "http://127.0.0.1:1")

    assert shown.returncode == 1 and "zmq-scheduler workers: broker unavailable: " in shown.stderr
    assert by_api.returncode == 1 and "not reachable" in by_api.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_the_client_settings_the_readme_gives_it(command: str) -> None:
    shown = run(f"zmq-scheduler {command}", "--help")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: zmq-scheduler {command}")
    client = {flag for flag, _, taken in table() if "client" in taken}
    assert {"--broker", "--api", "--token", "--request-timeout"} <= client
    for flag in client | {"--json", "--version"}:
        assert f"  {flag} " in shown.stdout, flag


@pytest.mark.parametrize("door", DOORS)
def test_retry_purge_drain_and_stats_through_each_door(door: str, stack: Stack) -> None:
    start(stack, door)
    client = stack.client()

    # retry: a failed task runs again, same id, and fails again (its args are still bad).
    failed = cli(stack, door, "submit", "fibonacci", "--args", '{"n": "x"}', "--wait", "--json")
    task_id = json.loads(failed.stdout)["id"]
    retried = cli(stack, door, "retry", task_id)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout == f"{task_id} pending\n"
    wait_for(lambda: client.get(task_id)["attempts"] == 2, what="the second attempt")
    wait_for(lambda: client.get(task_id)["status"] == "failed", what="the retry failed")
    pending = cli(stack, door, "submit", "nobody-serves-this").stdout.strip()
    not_failed = cli(stack, door, "retry", pending)
    assert not_failed.returncode == 1 and "conflict: " in not_failed.stderr

    # stats counts them.
    shown = json.loads(cli(stack, door, "stats", "--json").stdout)
    assert shown["tasks"]["failed"] == 1 and shown["workers"]["online"] == 1
    text = cli(stack, door, "stats").stdout
    assert "1 failed" in text and "1 online" in text

    # purge deletes the failed one, and --before in the past deletes nothing.
    none = cli(stack, door, "purge", "--status", "failed", "--before", "2000-01-01T00:00:00Z")
    assert none.stdout == "purged 0 failed tasks\n", none.stderr
    purged = json.loads(cli(stack, door, "purge", "--status", "failed", "--json").stdout)
    assert purged == {"purged": 1}
    assert cli(stack, door, "task", task_id).returncode == 1

    # drain: the worker takes no new task until resumed.
    drained = cli(stack, door, "drain", "worker-1")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout == "worker-1 draining\n"
    waiting = cli(stack, door, "submit", "echo", "--args", "1").stdout.strip()
    [row] = [line for line in cli(stack, door, "workers").stdout.splitlines() if "worker-1" in line]
    assert row.split()[-1] == "yes"  # the DRAINING column
    for _ in range(10):  # no deadline to meet: a worker that took it would have done so by now
        assert client.get(waiting)["status"] == "pending"
        time.sleep(0.05)
    resumed = cli(stack, door, "drain", "worker-1", "--resume")
    assert resumed.stdout == "worker-1 taking work\n", resumed.stderr
    wait_for(lambda: client.get(waiting)["status"] == "completed", what="the task after resume")
