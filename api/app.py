"""The REST API: a Falcon app in which every HTTP request becomes one broker client call.

Serve it with ``gunicorn -c deploy/gunicorn.conf.py 'api.app:create_app()'`` or
``zmq-api``. The app holds no scheduling state: the broker owns tasks and workers, and
this module only translates JSON to client calls and records back to JSON
(``api.parse`` and ``api.render``). Errors are JSON objects with ``title`` and
``description``; bad input is a 400, unknown ids 404, a silent broker 503 (which, for a
request that changes state, says the request may still take effect). With a tokens file
(``--api-tokens``) every request but ``/health`` needs a token whose role the route grants
(``api.auth``); without one the API is open, and only on loopback unless ``--insecure``.

It must never open a socket at import time or in ``create_app``: gunicorn may fork
after both, and ZeroMQ sockets do not survive a fork. Each call borrows a client of the
process's pool (``api.clients``), made on first use, because sockets are not thread-safe.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlencode

import falcon

from api import openapi, parse
from api.auth import Authorization
from api.clients import pooled_clients
from api.render import render
from common.errors import InvalidInput, SchedulerError, Unavailable
from common.limits import DEFAULT_PAGE, MAX_CURSOR, MAX_HTTP_WAIT, MAX_PAGE, MAX_PURGE, MAX_TIME
from common.models import TaskStatus
from common.ops import PURGEABLE, Op
from common.settings import Settings, exposed_open, load
from common.tokens import Tokens, read_tokens

logger = logging.getLogger(__name__)

#: Seconds ``GET /health`` waits for the broker, so a probe never hangs on a dead one.
HEALTH_TIMEOUT = 1.5

#: What a 503 adds for each op that changes state. The broker may have received the request
#: and be slow rather than gone (frozen, swapping, a long commit): it then carries the
#: request out when it comes back, after the 503 was sent.
MAY_TAKE_EFFECT = {
    Op.SUBMIT: (
        "the request may still take effect: retry with the same idempotency_key, which "
        "returns what the first request made instead of making it again (without an "
        "idempotency_key, a retry may make the tasks twice)"
    ),
    Op.CANCEL: "the request may still take effect: cancelling again is safe",
    Op.HTTP_REGISTER: "the request may still take effect: registering again is safe",
    Op.RETRY: (
        "the request may still take effect: GET /tasks/{id} shows whether the task is "
        "pending again (a retry of a task already pending is a 409)"
    ),
    Op.PURGE: "the request may have deleted some of the tasks: purging again is safe",
    Op.DRAIN: "the request may still take effect: asking again is safe",
    Op.HTTP_NEXT: (
        "the request may still take effect: a task may be leased to this worker, and "
        "GET /workers/{id} lists the tasks it holds"
    ),
    Op.HTTP_COMPLETE: (
        "the request may still take effect: reporting the outcome again is safe "
        "(a 409 then says the task is no longer running on this worker)"
    ),
}

WORKER_FIELDS = ("id", "capabilities", "resources", "tags")
COMPLETE_FIELDS = ("status", "result", "error", "traceback")


class ClientLike(Protocol):
    """What the API needs of a client: ``common.client.Client``, or in tests a client that
    calls a scheduler in the same process."""

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any: ...


ClientFactory = Callable[[], ClientLike]


def create_app(
    client: ClientFactory | None = None,
    settings: Settings | None = None,
    tokens: Tokens | None = None,
) -> falcon.App[falcon.Request, falcon.Response]:
    """Build the app; ``client`` returns the client for the calling request (default: the
    process's pool, ``api.clients``), ``tokens`` are the known tokens (by default those of
    ``settings.api_tokens``, if any).

    Raises ``ValueError`` for a tokens file that cannot be used, or for an open API (no
    tokens) set to listen beyond loopback without ``settings.insecure``: ``zmq-api``
    refuses both before it starts, a plain gunicorn deployment when its workers boot.
    """
    settings = settings or load()
    if tokens is None and settings.api_tokens:
        tokens = read_tokens(settings.api_tokens)
    if tokens is None:
        if exposed_open(settings):
            raise ValueError(
                f"the API is open (no --api-tokens) and would listen on {settings.listen}, "
                "beyond loopback: give it a tokens file, a loopback --listen, or --insecure"
            )
        logger.warning(
            "the API is open: no --api-tokens given, so anyone who reaches %s may submit, "
            "read and cancel any task and act as any worker",
            settings.listen,
        )
    clients = noting_effects(client or pooled_clients(settings))
    middleware = [] if tokens is None else [Authorization(tokens, settings.max_body)]
    app = falcon.App(middleware=middleware)
    # /tasks/ is /tasks, as most APIs have it, rather than a task with an empty id.
    app.req_options.strip_url_path_trailing_slash = True
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
    app.add_route("/tasks/{task_id}/retry", tasks, suffix="retry")
    app.add_route("/workers", workers)
    app.add_route("/workers/{worker_id}", workers, suffix="worker")
    app.add_route("/workers/{worker_id}/heartbeat", workers, suffix="heartbeat")
    app.add_route("/workers/{worker_id}/drain", workers, suffix="drain")
    app.add_route("/workers/{worker_id}/tasks/next", workers, suffix="next")
    app.add_route("/workers/{worker_id}/tasks/{task_id}/complete", workers, suffix="complete")
    app.add_route("/health", Health(clients))
    app.add_route("/stats", Stats(clients))
    app.add_route(openapi.PATH, Document(openapi.document(settings.max_body)))
    return app


def noting_effects(clients: ClientFactory) -> ClientFactory:
    """The same clients, whose ``Unavailable`` for an op that changes state says that the
    request may still take effect, and what to do about it (``MAY_TAKE_EFFECT``)."""

    def get() -> ClientLike:
        return _NotingEffects(clients())

    return get


class _NotingEffects:
    def __init__(self, client: ClientLike) -> None:
        self.client = client

    def request(self, op: Op, args: dict[str, Any], timeout: float | None = None) -> Any:
        try:
            return self.client.request(op, args, timeout)
        except Unavailable as exc:
            note = MAY_TAKE_EFFECT.get(op)
            if note is None or not exc.sent:
                raise
            raise Unavailable(f"{exc.description}; {note}") from None


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
        args, wait = _submit_args(req, [spec])
        [entry] = self.client().request(Op.SUBMIT, args)["tasks"]
        if wait > 0:
            created = entry.pop("created", True)
            resp.media = render(entry)
        else:
            created = entry.get("created", True)
            resp.media = {"id": entry["id"], "status": entry["status"]}
        # A repeated idempotency key returns the task it made the first time, with 200.
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.location = f"/tasks/{entry['id']}"

    def on_post_batch(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Many tasks in one request, all or none: ``{"tasks": [...]}`` -> ``{"ids": [...]}``;
        with ``?wait=SECONDS``, also ``"tasks"``: their records once all are final (or the
        time is up)."""
        body = parse.read_object(req, self.max_body)
        parse.reject_unknown(body, frozenset({"tasks"}))
        specs = body.get("tasks")
        for i, spec in enumerate(specs if isinstance(specs, list) else []):
            if isinstance(spec, dict) and "args" in spec:
                spec["args"] = parse.decode_b64(spec["args"], f"tasks[{i}].args")
        args, wait = _submit_args(req, specs)
        try:
            entries = self.client().request(Op.SUBMIT, args)["tasks"]
        except InvalidInput as exc:
            raise _naming_the_entry(exc, specs) from None
        resp.status = falcon.HTTP_201
        resp.media = {"ids": [entry["id"] for entry in entries]}
        if wait > 0:
            for entry in entries:
                entry.pop("created", None)
            resp.media["tasks"] = render(entries)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = parse.query_choice(req, "status", [s.value for s in TaskStatus])
        handler = parse.query(req, "handler")
        limit = parse.query_int(req, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        after = parse.query_int(req, "after", 0, 0, MAX_CURSOR)
        if handler == "":
            raise InvalidInput("query parameter handler must not be empty")
        args: dict[str, Any] = {"limit": limit, "after": after}
        args.update((k, v) for k, v in (("status", status), ("handler", handler)) if v)
        page = self.client().request(Op.LIST, args)
        resp.media = render(page_of(resp, "/tasks", args, page, "tasks"))

    def on_get_task(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        # ?wait=SECONDS holds the request until the task is final (or the time is up).
        wait = parse.query_float(req, "wait", 0.0, 0.0, MAX_HTTP_WAIT)
        client = self.client()
        if wait > 0:
            resp.media = render(client.request(Op.WAIT, {"id": task_id, "timeout": wait}))
        else:
            resp.media = render(client.request(Op.GET, {"id": task_id}))

    # HEAD wherever GET: the same answer, whose body Falcon leaves out.
    on_head = on_get
    on_head_task = on_get_task

    def on_delete_task(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        resp.media = render(self.client().request(Op.CANCEL, {"id": task_id}))

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Purge: delete the finished tasks of ``?status=`` (completed, failed or cancelled)
        that completed before ``?before=`` (seconds since the epoch or ISO 8601; any time
        when absent), asked of the broker in bounded requests until none is left."""
        status = parse.query_choice(req, "status", [s.value for s in PURGEABLE])
        if status is None:
            raise InvalidInput("query parameter status is required: completed, failed or cancelled")
        before = parse.query_time(req, "before", MAX_TIME)
        args: dict[str, Any] = {"status": status, "limit": MAX_PURGE}
        if before is not None:
            args["before"] = before
        client = self.client()
        purged = 0
        while True:
            value = client.request(Op.PURGE, args)
            purged += value["purged"]
            if not value["more"]:
                break
        resp.media = {"purged": purged}

    def on_post_retry(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        resp.media = render(self.client().request(Op.RETRY, {"id": task_id}))


def page_of(
    resp: falcon.Response, path: str, args: dict[str, Any], page: dict[str, Any], key: str
) -> list[dict[str, Any]]:
    """The items of a listing's page (``page[key]``), with a ``Link`` to the next page, the
    same query (``args``) after the page's cursor, when there is one."""
    if page["next"] is not None:
        link = urlencode(list({**args, "after": page["next"]}.items()))
        resp.set_header("Link", f'<{path}?{link}>; rel="next"')
    items: list[dict[str, Any]] = page[key]
    return items


class Workers:
    """``/workers`` and everything an HTTP worker calls under ``/workers/{worker_id}``."""

    def __init__(self, client: ClientFactory, max_body: int) -> None:
        self.client = client
        self.max_body = max_body

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # A worker's token has had the body read already, to check the id (api.auth).
        body = req.context.get("body") or parse.read_object(req, self.max_body)
        parse.reject_unknown(body, WORKER_FIELDS)
        record = self.client().request(Op.HTTP_REGISTER, body)
        # The broker says whether the id was new; the flag is the status code, not a field.
        if record.pop("created", False):
            resp.status = falcon.HTTP_201
            resp.location = f"/workers/{record['id']}"
        resp.media = render(record)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = parse.query_int(req, "limit", MAX_PAGE, 1, MAX_PAGE)
        args: dict[str, Any] = {"limit": limit}
        after = parse.query(req, "after")
        if after:
            args["after"] = after
        page = self.client().request(Op.WORKERS, args)
        resp.media = render(page_of(resp, "/workers", args, page, "workers"))

    def on_get_worker(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        resp.media = render(self.client().request(Op.WORKER, {"id": worker_id}))

    on_head = on_get
    on_head_worker = on_get_worker

    def on_post_drain(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        resp.media = render(self.client().request(Op.DRAIN, {"id": worker_id, "on": True}))

    def on_delete_drain(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        resp.media = render(self.client().request(Op.DRAIN, {"id": worker_id, "on": False}))

    def on_put_heartbeat(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        resp.media = render(self.client().request(Op.HTTP_HEARTBEAT, {"id": worker_id}))

    def on_post_next(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        wait = parse.query_float(req, "wait", 0.0, 0.0, MAX_HTTP_WAIT)
        record = self.client().request(Op.HTTP_NEXT, {"id": worker_id, "wait": wait})
        if record is None:
            resp.status = falcon.HTTP_204
            return
        resp.media = render(record)

    def on_post_complete(
        self, req: falcon.Request, resp: falcon.Response, worker_id: str, task_id: str
    ) -> None:
        body = parse.read_object(req, self.max_body)
        parse.reject_unknown(body, COMPLETE_FIELDS)
        args = {
            **body,
            "worker_id": worker_id,
            "task_id": task_id,
            "result": parse.decode_b64(body.get("result"), "result"),
        }
        resp.media = render(self.client().request(Op.HTTP_COMPLETE, args))


class Health:
    """``/health``: 200 when the broker answers within ``HEALTH_TIMEOUT``, else 503."""

    def __init__(self, client: ClientFactory) -> None:
        self.client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            health = self.client().request(Op.HEALTH, {}, timeout=HEALTH_TIMEOUT)
        except Unavailable as exc:
            resp.status = falcon.HTTP_503
            resp.media = {
                "status": "unavailable",
                "title": exc.title,
                "description": exc.description,
            }
            return
        resp.media = {"status": "ok", **render(health)}

    on_head = on_get


class Stats:
    """``/stats``: tasks by status and handler, workers and throughput (``Client.stats``)."""

    def __init__(self, client: ClientFactory) -> None:
        self.client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = render(self.client().request(Op.STATS, {}))

    on_head = on_get


class Document:
    """``/openapi.json``: the API's OpenAPI document (``api.openapi``), open to anyone."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.body = json.dumps(document, separators=(",", ":")).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body

    on_head = on_get


def _submit_args(req: falcon.Request, specs: Any) -> tuple[dict[str, Any], float]:
    """The arguments of a submit of these specs, with what its query asks (``?wait``,
    ``?refuse_unservable``), and the wait (0: answer at once)."""
    wait = parse.query_float(req, "wait", 0.0, 0.0, MAX_HTTP_WAIT)
    args: dict[str, Any] = {"tasks": specs}
    if wait > 0:
        args["wait"] = wait
    if parse.query_bool(req, "refuse_unservable"):
        args["refuse_unservable"] = True
    return args, wait


def _naming_the_entry(error: InvalidInput, specs: Any) -> InvalidInput:
    """The error of a batch of one, naming its entry as a longer batch's would
    (``tasks[0].priority``): the broker names entries only when there are several."""
    if not isinstance(specs, list) or len(specs) != 1 or error.description.startswith("tasks"):
        return error
    description = error.description
    if description.startswith("task must be"):
        return InvalidInput("tasks[0]" + description.removeprefix("task"))
    if description.startswith("unknown field "):
        return InvalidInput("unknown field tasks[0]." + description.removeprefix("unknown field "))
    return InvalidInput("tasks[0]." + description)


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
