"""``GET /metrics`` of a real stack, parsed as Prometheus parses it, and the JSON log lines
of the broker and the API (``--log-format json``)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, wait_for

CLIENT_TOKEN = "client-token-4f1c9a7e2b"
ADMIN_TOKEN = "admin-token-8d3e6b0a51"
WRONG_TOKEN = "unknown-token-5a77c2e9d0"


def write_tokens(path: Path) -> Path:
    path.write_text(f"{CLIENT_TOKEN} client\n{ADMIN_TOKEN} admin\n")
    return path


def scrape(stack: Stack, token: str | None = CLIENT_TOKEN) -> tuple[int, str, str]:
    """(status, content type, body) of ``GET /metrics``."""
    request = urllib.request.Request(stack.api_url + "/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read().decode()
            return response.status, response.headers["Content-Type"], body
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, exc.headers["Content-Type"], body


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and labels, as Prometheus' own parser reads it."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_scraped_and_the_counters_move_as_tasks_run(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.start_broker()
        stack.start_worker(worker_id="w1")
        stack.start_api("--api-tokens", str(write_tokens(tmp_path / "tokens")))
        stack.wait_workers("w1")
        status, content_type, text = scrape(stack)
        assert status == 200, text
        assert content_type.startswith("text/plain")
        before = samples(text)
        assert value(before, "zmqs_broker_up") == 1
        assert value(before, "zmqs_workers_online", kind="zmq") == 1

        # When tasks run, some of them failing once and then for good
        client = stack.client()
        ok = client.submit_many([{"handler": "echo", "args": b"hi"} for _ in range(5)])
        bad = [client.submit("fibonacci", b"not json", max_retries=1) for _ in range(2)]
        finished = client.wait_many(ok + bad, timeout=60)
        assert len(finished) == 7

        # Then the counters moved by as much
        def failures_counted() -> Samples | None:
            found = samples(scrape(stack)[2])
            failed = value(found, "zmqs_tasks_failed_total", handler="fibonacci")
            return found if failed == 2 else None

        after = wait_for(failures_counted, what="the failures counted")
        assert value(after, "zmqs_tasks_submitted_total", handler="echo") == 5
        assert value(after, "zmqs_tasks_completed_total", handler="echo") == 5
        assert value(after, "zmqs_tasks_submitted_total", handler="fibonacci") == 2
        assert value(after, "zmqs_tasks_retried_total", handler="fibonacci") == 2
        assert value(after, "zmqs_tasks", status="completed") == 5
        assert value(after, "zmqs_tasks", status="failed") == 2
        assert value(after, "zmqs_task_wait_seconds_count") == 7
        assert value(after, "zmqs_task_run_seconds_count") == 9
        assert value(after, "zmqs_task_run_seconds_bucket", le="+Inf") == 9
        assert value(after, "zmqs_store_commit_seconds_count") > value(
            before, "zmqs_store_commit_seconds_count"
        )
        assert value(after, "zmqs_broker_messages_received_total", command="DONE") >= 1
        assert value(after, "zmqs_broker_messages_sent_total", command="DISPATCH") >= 1
        assert value(after, "zmqs_broker_turn_seconds_count") > 0
        # The API's own requests: the scrapes before this one, by route template.
        assert value(after, "zmqs_api_requests_total", method="GET", route="/metrics",
                     status="200") >= 1  # fmt: skip

        # A scrape needs a token that may read.
        assert scrape(stack, token=None)[0] == 401
    finally:
        stack.close()


def log_lines(text: str) -> list[dict[str, object]]:
    """Every line of a log, each parsed as one JSON object (any other line fails)."""
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a log line that is not JSON: {line!r}") from None
    return parsed


def test_json_logs_carry_the_events_fields_and_never_a_token(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        broker = stack.start_broker("--log-format", "json")
        worker = stack.start_worker("--log-format", "json", worker_id="w1")
        api = stack.start_api(
            "--log-format", "json", "--api-tokens", str(write_tokens(tmp_path / "tokens"))
        )
        stack.wait_workers("w1")
        headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        status, task, _ = stack.http(
            "POST", "/tasks?wait=20", {"handler": "echo", "args": "aGk="}, headers=headers
        )
        assert status == 201 and task["status"] == "completed"
        assert stack.http("GET", f"/tasks/{task['id']}", headers=headers)[0] == 200
        assert (
            stack.http("GET", "/tasks", headers={"Authorization": f"Bearer {WRONG_TOKEN}"})[0]
            == 401
        )
        worker.stop()  # says goodbye: the broker logs it with the worker's id

        def api_requests() -> list[dict[str, object]]:
            lines = log_lines(api.output())
            return [line for line in lines if line["logger"] == "api.requests"] if any(
                line.get("route") == "/tasks/{task_id}" for line in lines
            ) else []  # fmt: skip

        requests = wait_for(api_requests, what="the API's request lines")
        goodbye = wait_for(
            lambda: [
                line
                for line in log_lines(broker.output())
                if line.get("worker_id") == "w1" and "goodbye" in str(line["message"])
            ],
            what="the broker's line of the worker's goodbye",
        )
    finally:
        stack.close()

    broker_log, api_log, worker_log = (p.log_path.read_text() for p in (broker, api, worker))
    for line in log_lines(broker_log) + log_lines(api_log) + log_lines(worker_log):
        assert {"time", "level", "logger", "message"} <= set(line)
    assert goodbye[0]["level"] == "INFO"
    registered = [line for line in log_lines(broker_log) if "registered" in str(line["message"])]
    assert registered and registered[0]["worker_id"] == "w1"
    routes = {(line["method"], line["route"], line["status"]) for line in requests}
    assert ("POST", "/tasks", 201) in routes
    assert ("GET", "/tasks/{task_id}", 200) in routes
    assert ("GET", "-", 401) in routes  # refused before routing: no path, no id
    assert all(isinstance(line["duration_ms"], float | int) for line in requests)
    everything = broker_log + api_log + worker_log
    for secret in (CLIENT_TOKEN, ADMIN_TOKEN, WRONG_TOKEN):
        assert secret not in everything
    # The request lines name the route, not the path: no task id in them.
    assert not any(task["id"] in json.dumps(line) for line in requests)


def test_a_process_pool_child_logs_json_as_its_worker_does(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.start_broker()
        worker = stack.start_worker(
            "--log-format", "json", "--pool", "process", "--handlers", "flaky_handlers",
            worker_id="pw",
        )  # fmt: skip
        stack.wait_workers("pw")
        with stack.client() as client:
            child = int(client.run("log_pid", b"", wait=60))

        def child_line() -> list[dict[str, object]]:
            lines = log_lines(worker.output())
            return [line for line in lines if str(child) in str(line["message"])]

        [line] = wait_for(child_line, what="the child's line")
        assert line["level"] == "WARNING" and line["logger"] == "flaky_handlers"
    finally:
        stack.close()
    for line in log_lines(worker.log_path.read_text()):
        assert {"time", "level", "logger", "message"} <= set(line)
