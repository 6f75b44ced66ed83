"""The REST API: a Falcon app in which every HTTP request becomes one broker client call.

Serve it with ``gunicorn -c deploy/gunicorn.conf.py 'api.app:create_app()'`` or
``zmq-api``. The app holds no scheduling state: the broker owns tasks and workers, and
this module only translates JSON to client calls and records back to JSON
(``api.parse`` and ``api.render``). Errors are JSON objects with ``title`` and
``description``; bad input is a 400, unknown ids 404, a silent broker 503.

It must never open a socket at import time or in ``create_app``: gunicorn may fork
after both, and ZeroMQ sockets do not survive a fork. Each thread gets its own client,
made on first use, because sockets are not thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlencode

import falcon

from api import parse
from api.render import render
from common.client import Client
from common.errors import InvalidInput, SchedulerError, Unavailable
from common.models import TaskStatus
from common.settings import Settings, load

logger = logging.getLogger(__name__)

#: Seconds ``GET /health`` waits for the broker, so a probe never hangs on a dead one.
HEALTH_TIMEOUT = 1.5
#: Most tasks in one ``POST /tasks/batch``.
MAX_BATCH = 1000
#: Longest long-poll of ``POST /workers/{id}/tasks/next`` in seconds (the broker's limit).
MAX_WAIT = 30.0
#: Largest page of ``GET /tasks`` (the broker's limit) and the default one.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: Largest ``after`` cursor: the broker's sequence numbers are signed 64-bit integers.
MAX_CURSOR = 2**63 - 1

WORKER_FIELDS = ("id", "capabilities", "resources")
COMPLETE_FIELDS = ("status", "result", "error")
OUTCOMES = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value)


class ClientLike(Protocol):
    """The part of ``common.client.Client`` the API calls; tests pass an in-memory fake."""

    def submit_entries(
        self, specs: list[dict[str, Any]], timeout: float | None = None
    ) -> list[dict[str, Any]]: ...

    def submit_and_wait(self, specs: list[dict[str, Any]], wait: float) -> list[dict[str, Any]]: ...

    def get(self, task_id: str, timeout: float | None = None) -> dict[str, Any]: ...

    def cancel(self, task_id: str, timeout: float | None = None) -> dict[str, Any]: ...

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]: ...

    def workers(self, timeout: float | None = None) -> list[dict[str, Any]]: ...

    def worker(self, worker_id: str, timeout: float | None = None) -> dict[str, Any]: ...

    def health(self, timeout: float | None = None) -> dict[str, Any]: ...

    def register_http_worker(
        self,
        worker_id: str,
        capabilities: list[str],
        resources: dict[str, float],
        timeout: float | None = None,
    ) -> dict[str, Any]: ...

    def next_task(self, worker_id: str, wait: float = 0.0) -> dict[str, Any] | None: ...

    def heartbeat(self, worker_id: str, timeout: float | None = None) -> dict[str, Any]: ...

    def complete(
        self,
        worker_id: str,
        task_id: str,
        status: str,
        result: bytes | None = None,
        error: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]: ...

    def list_tasks(
        self,
        status: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: int | None = None,
        timeout: float | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]: ...


ClientFactory = Callable[[], ClientLike]


def create_app(
    client: ClientFactory | None = None,
    settings: Settings | None = None,
) -> falcon.App[falcon.Request, falcon.Response]:
    """Build the app; ``client`` returns the client for the calling thread."""
    settings = settings or load()
    clients = client or thread_local_clients(settings)
    app = falcon.App()
    # Every error is JSON whatever the Accept header says: Falcon's default sends no
    # body at all to a client that accepts neither JSON nor XML.
    app.set_error_serializer(_serialize_error)
    app.add_error_handler(SchedulerError, _scheduler_error)
    app.add_error_handler(Exception, _unexpected_error)

    tasks = Tasks(clients, settings.max_body)
    workers = Workers(clients, settings.max_body)
    app.add_route("/tasks", tasks)
    app.add_route("/tasks/batch", tasks, suffix="batch")
    app.add_route("/tasks/{task_id}", tasks, suffix="task")
    app.add_route("/workers", workers)
    app.add_route("/workers/{worker_id}", workers, suffix="worker")
    app.add_route("/workers/{worker_id}/heartbeat", workers, suffix="heartbeat")
    app.add_route("/workers/{worker_id}/tasks/next", workers, suffix="next")
    app.add_route("/workers/{worker_id}/tasks/{task_id}/complete", workers, suffix="complete")
    app.add_route("/health", Health(clients))
    return app


def thread_local_clients(settings: Settings) -> ClientFactory:
    """A factory giving each thread its own ``Client``, connected on the thread's first call."""
    local = threading.local()

    def get() -> ClientLike:
        client: Client | None = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(settings.broker, timeout=settings.request_timeout)
        return client

    return get


class Tasks:
    """``/tasks`` and ``/tasks/{task_id}``."""

    def __init__(self, client: ClientFactory, max_body: int) -> None:
        self.client = client
        self.max_body = max_body

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = parse.read_object(req, self.max_body)
        if "args" in spec:
            spec["args"] = parse.decode_b64(spec["args"], "args")
        # ?wait=SECONDS answers once the task is final (or the time is up), with its record.
        wait = parse.query_float(req, "wait", 0.0, 0.0, MAX_WAIT)
        # Everything else is the broker's to validate (TaskSpec.parse), unknown fields too.
        if wait > 0:
            [entry] = self.client().submit_and_wait([spec], wait)
            created = entry.pop("created", True)
            resp.media = render(entry)
        else:
            [entry] = self.client().submit_entries([spec])
            created = entry.get("created", True)
            resp.media = {"id": entry["id"], "status": entry["status"]}
        # A repeated idempotency key returns the task it made the first time, with 200.
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.location = f"/tasks/{entry['id']}"

    def on_post_batch(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Many tasks in one request, all or none: ``{"tasks": [...]}`` -> ``{"ids": [...]}``."""
        body = parse.read_object(req, self.max_body)
        parse.reject_unknown(body, frozenset({"tasks"}))
        specs = body.get("tasks")
        if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_BATCH:
            raise InvalidInput(f"tasks must be a list of 1 to {MAX_BATCH} task objects")
        for i, spec in enumerate(specs):
            if not isinstance(spec, dict):
                raise InvalidInput(f"tasks[{i}] must be an object")
            if "args" in spec:
                spec["args"] = parse.decode_b64(spec["args"], f"tasks[{i}].args")
        entries = self.client().submit_entries(specs)
        resp.status = falcon.HTTP_201
        resp.media = {"ids": [entry["id"] for entry in entries]}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = parse.query_choice(req, "status", [s.value for s in TaskStatus])
        handler = parse.query(req, "handler")
        if handler == "":
            raise InvalidInput("query parameter handler must not be empty")
        limit = parse.query_int(req, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        after = parse.query_int(req, "after", None, 0, MAX_CURSOR)
        records, cursor = self.client().list_tasks(
            status=status, handler=handler, limit=limit, after=after
        )
        if cursor is not None:
            query: list[tuple[str, str | int]] = [("limit", limit), ("after", cursor)]
            query += [(k, v) for k, v in (("status", status), ("handler", handler)) if v]
            resp.set_header("Link", f'</tasks?{urlencode(query)}>; rel="next"')
        resp.media = render(records)

    def on_get_task(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        # ?wait=SECONDS holds the request until the task is final (or the time is up).
        wait = parse.query_float(req, "wait", 0.0, 0.0, MAX_WAIT)
        client = self.client()
        resp.media = render(client.wait(task_id, wait) if wait > 0 else client.get(task_id))

    def on_delete_task(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        resp.media = render(self.client().cancel(task_id))


class Workers:
    """``/workers`` and everything an HTTP worker calls under ``/workers/{worker_id}``."""

    def __init__(self, client: ClientFactory, max_body: int) -> None:
        self.client = client
        self.max_body = max_body

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse.read_object(req, self.max_body)
        parse.reject_unknown(body, WORKER_FIELDS)
        worker_id = body.get("id")
        if not isinstance(worker_id, str) or not worker_id:
            raise InvalidInput("id must be a non-empty string")
        record = self.client().register_http_worker(
            worker_id, body.get("capabilities", []), body.get("resources", {})
        )
        # The broker says whether the id was new; the flag is the status code, not a field.
        if record.pop("created", False):
            resp.status = falcon.HTTP_201
            resp.location = f"/workers/{worker_id}"
        resp.media = render(record)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = render(self.client().workers())

    def on_get_worker(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        resp.media = render(self.client().worker(worker_id))

    def on_put_heartbeat(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        resp.media = render(self.client().heartbeat(worker_id))

    def on_post_next(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        wait = parse.query_float(req, "wait", 0.0, 0.0, MAX_WAIT)
        record = self.client().next_task(worker_id, wait=wait)
        if record is None:
            resp.status = falcon.HTTP_204
            return
        resp.media = render(record)

    def on_post_complete(
        self, req: falcon.Request, resp: falcon.Response, worker_id: str, task_id: str
    ) -> None:
        body = parse.read_object(req, self.max_body)
        parse.reject_unknown(body, COMPLETE_FIELDS)
        status = body.get("status")
        if status not in OUTCOMES:
            raise InvalidInput("status must be 'completed' or 'failed'")
        record = self.client().complete(
            worker_id,
            task_id,
            status,
            result=parse.decode_b64(body.get("result"), "result"),
            error=parse.optional_str(body, "error"),
        )
        resp.media = render(record)


class Health:
    """``/health``: 200 when the broker answers within ``HEALTH_TIMEOUT``, else 503."""

    def __init__(self, client: ClientFactory) -> None:
        self.client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            health = self.client().health(timeout=HEALTH_TIMEOUT)
        except Unavailable as exc:
            resp.status = falcon.HTTP_503
            resp.media = {
                "status": "unavailable",
                "title": exc.title,
                "description": exc.description,
            }
            return
        resp.media = {"status": "ok", **render(health)}


def _serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    body = error.to_dict()
    # Falcon's own errors (no route, method not allowed) come without a description.
    body.setdefault("description", f"{req.method} {req.path}: {error.title}")
    resp.content_type = falcon.MEDIA_JSON
    resp.media = body


def _scheduler_error(
    req: falcon.Request, resp: falcon.Response, error: SchedulerError, params: dict[str, Any]
) -> None:
    raise falcon.HTTPError(
        falcon.code_to_http_status(error.status),
        title=error.title,
        description=error.description,
    )


def _unexpected_error(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: dict[str, Any]
) -> None:
    # HTTPError and HTTPStatus never get here: Falcon's handlers for them are more specific.
    logger.error("%s %s failed", req.method, req.path, exc_info=error)
    raise falcon.HTTPInternalServerError(
        title="Internal error", description="the API failed unexpectedly; see its log"
    )
