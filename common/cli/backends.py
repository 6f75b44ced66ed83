"""How the command-line client reaches the scheduler: the broker over ZeroMQ, or the REST API.

``open_backend`` picks the door the settings name: the REST API at ``--api`` (``ZMQS_API``,
with ``--token``), else the broker at ``--broker`` (``ZMQS_BROKER``, with the CURVE keys a
worker would use). Both make the same calls and answer with the records ``GET /tasks/{id}``
shows (JSON: args and results in base64, times in RFC 3339), so a command, its table and its
``--json`` are the same whichever door it went through; and both raise the
``SchedulerError`` of what went wrong (``NotFound``, ``Conflict``, ``Unavailable``...),
an HTTP answer's status read as the broker's. This module never prints.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from api.render import b64, render
from common.client import Client, TaskTimeout
from common.curve import ClientKeys
from common.errors import SchedulerError, Unavailable
from common.limits import MAX_BATCH, MAX_HTTP_WAIT, MAX_WAIT
from common.models import FINAL_STATUSES
from common.settings import Settings

#: Ids a broker backend waits for in one request while it follows a batch: the progress
#: moves by at most this many tasks.
WAIT_STEP = 100
#: Tasks an HTTP backend sends in one ``POST /tasks/batch``, and about the most bytes of
#: JSON (the API refuses a body over its ``--max-body``, 8 MiB by default).
HTTP_BATCH = 1000
HTTP_BATCH_BYTES = 4 * 1024 * 1024
#: Seconds an HTTP connection may sit idle before a new one is opened for the next request
#: (the API closes idle ones after its ``--header-timeout``, 10 s by default).
HTTP_IDLE = 1.0


@dataclass(frozen=True, slots=True)
class Entry:
    """One task of a batch as the scheduler took it: its id, or why it was refused."""

    id: str | None
    #: False when its idempotency key named a task made before; None when not known (the
    #: REST API does not say).
    created: bool | None
    error: SchedulerError | None = None


class Backend(Protocol):
    """The calls the commands make. Task specs have ``args`` as bytes."""

    #: Where it goes, for messages: the broker's endpoint or the API's URL.
    where: str

    def submit(self, spec: dict[str, Any], wait: bool) -> dict[str, Any]:
        """Submit one task: ``{id, status}``, or with ``wait`` its record once final."""
        ...

    def submit_many(self, specs: list[dict[str, Any]]) -> Iterator[Entry]:
        """Submit many tasks, each taken or refused on its own (a refused batch of the REST
        API refuses its tasks); yields an entry for each, in order."""
        ...

    def wait(self, task_id: str) -> dict[str, Any]:
        """The task's record once it is final, however long that takes."""
        ...

    def wait_many(self, task_ids: list[str]) -> Iterator[dict[str, Any]]:
        """Each task (at least ``id``, ``status``, ``result``, ``error``) once it is final,
        as they finish, however long that takes."""
        ...

    def get(self, task_id: str) -> dict[str, Any]: ...

    def cancel(self, task_id: str) -> dict[str, Any]: ...

    def list_tasks(
        self, status: str | None, handler: str | None, limit: int, after: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of tasks in submission order and the cursor of the next (None: the last)."""
        ...

    def workers(self) -> list[dict[str, Any]]: ...

    def retry(self, task_id: str) -> dict[str, Any]: ...

    def purge(self, status: str, before: float | None) -> int:
        """Delete the finished tasks of ``status`` finished before ``before``; how many."""
        ...

    def drain(self, worker_id: str, on: bool) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def open_backend(settings: Settings) -> Backend:
    """The backend the settings name. Raises ``ValueError`` or ``OSError`` for CURVE keys
    that cannot be used."""
    if settings.api:
        return HttpBackend(settings.api, settings.token, settings.request_timeout)
    curve = ClientKeys.load(settings.curve_server_key, settings.curve_secret)
    return BrokerBackend(Client(settings.broker, settings.request_timeout, curve=curve))


class BrokerBackend:
    """The broker, through the Python client library."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.where = client.endpoint

    def submit(self, spec: dict[str, Any], wait: bool) -> dict[str, Any]:
        if not wait:
            entry = self.client.submit_entries([spec])[0]
            return {"id": entry["id"], "status": entry["status"]}
        [record] = self.client.submit_and_wait([spec], MAX_WAIT)
        record.pop("created", None)
        if record["status"] not in FINAL_STATUSES:
            return self.wait(record["id"])
        return dict(render(record))

    def submit_many(self, specs: list[dict[str, Any]]) -> Iterator[Entry]:
        pipe = self.client.pipeline()
        handles = [pipe.submit(**spec) for spec in specs]
        for handle in handles:
            try:
                yield Entry(handle.id, handle.created)
            except SchedulerError as exc:
                yield Entry(None, None, exc)

    def wait(self, task_id: str) -> dict[str, Any]:
        while True:
            try:
                return dict(render(self.client.wait(task_id, MAX_WAIT)))
            except TaskTimeout:
                continue

    def wait_many(self, task_ids: list[str]) -> Iterator[dict[str, Any]]:
        for start in range(0, len(task_ids), WAIT_STEP):
            waiting = dict.fromkeys(task_ids[start : start + WAIT_STEP])
            while waiting:
                try:
                    briefs = self.client.wait_many(list(waiting), MAX_WAIT)
                except TaskTimeout as exc:
                    briefs = exc.tasks
                for brief in briefs:
                    waiting.pop(brief["id"], None)
                    yield dict(render(brief))

    def get(self, task_id: str) -> dict[str, Any]:
        return dict(render(self.client.get(task_id)))

    def cancel(self, task_id: str) -> dict[str, Any]:
        return dict(render(self.client.cancel(task_id)))

    def list_tasks(
        self, status: str | None, handler: str | None, limit: int, after: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        tasks, cursor = self.client.list_tasks(status, handler, limit, after)
        return list(render(tasks)), cursor

    def workers(self) -> list[dict[str, Any]]:
        return list(render(self.client.workers()))

    def retry(self, task_id: str) -> dict[str, Any]:
        return dict(render(self.client.retry(task_id)))

    def purge(self, status: str, before: float | None) -> int:
        return self.client.purge(status, before)

    def drain(self, worker_id: str, on: bool) -> dict[str, Any]:
        return dict(render(self.client.drain_worker(worker_id, on)))

    def stats(self) -> dict[str, Any]:
        return dict(render(self.client.stats()))

    def close(self) -> None:
        self.client.close()


class HttpBackend:
    """The REST API, over one keep-alive connection (``http.client``: nothing to install)."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.where = url
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._token = token
        #: Seconds to wait for an answer besides the time the API is asked to hold it.
        self._timeout = timeout + 5.0
        self._connection: http.client.HTTPConnection | None = None
        self._last_used = 0.0

    def submit(self, spec: dict[str, Any], wait: bool) -> dict[str, Any]:
        query = {"wait": MAX_HTTP_WAIT} if wait else {}
        record: dict[str, Any] = self.request("POST", "/tasks", query, _json_spec(spec))
        if wait and record["status"] not in FINAL_STATUSES:
            return self.wait(record["id"])
        return record

    def submit_many(self, specs: list[dict[str, Any]]) -> Iterator[Entry]:
        for part in _parts(specs):
            try:
                answer = self.request("POST", "/tasks/batch", {}, {"tasks": part})
            except SchedulerError as exc:
                if isinstance(exc, Unavailable):
                    raise  # the API is gone: the rest would wait for it in turn
                yield from (Entry(None, None, exc) for _ in part)
                continue
            yield from (Entry(task_id, None) for task_id in answer["ids"])

    def wait(self, task_id: str) -> dict[str, Any]:
        while True:
            record: dict[str, Any] = self.request(
                "GET", f"/tasks/{quote(task_id)}", {"wait": MAX_HTTP_WAIT}
            )
            if record["status"] in FINAL_STATUSES:
                return record

    def wait_many(self, task_ids: list[str]) -> Iterator[dict[str, Any]]:
        for task_id in dict.fromkeys(task_ids):
            yield self.wait(task_id)

    def get(self, task_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.request("GET", f"/tasks/{quote(task_id)}")
        return record

    def cancel(self, task_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.request("DELETE", f"/tasks/{quote(task_id)}")
        return record

    def list_tasks(
        self, status: str | None, handler: str | None, limit: int, after: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        query: dict[str, Any] = {"limit": limit}
        query.update((k, v) for k, v in (("status", status), ("handler", handler)) if v)
        if after is not None:
            query["after"] = after
        tasks, link = self._page("/tasks", query)
        return tasks, None if link is None else int(link)

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = []
        query: dict[str, Any] = {}
        while True:
            page, after = self._page("/workers", query)
            workers += page
            if after is None:
                return workers
            query = {"after": after}

    def retry(self, task_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.request("POST", f"/tasks/{quote(task_id)}/retry")
        return record

    def purge(self, status: str, before: float | None) -> int:
        query: dict[str, Any] = {"status": status}
        if before is not None:
            query["before"] = before
        purged: int = self.request("DELETE", "/tasks", query)["purged"]
        return purged

    def drain(self, worker_id: str, on: bool) -> dict[str, Any]:
        method = "POST" if on else "DELETE"
        record: dict[str, Any] = self.request(method, f"/workers/{quote(worker_id)}/drain")
        return record

    def stats(self) -> dict[str, Any]:
        found: dict[str, Any] = self.request("GET", "/stats")
        return found

    def _page(self, path: str, query: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """A listing's page and the ``after`` of its ``Link`` to the next one."""
        items, headers = self.exchange("GET", path, query)
        found = _next_after(headers.get("link", ""))
        return list(items), found

    def request(
        self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """The JSON of the answer; an error answer raised as its ``SchedulerError``."""
        return self.exchange(method, path, query, body)[0]

    def exchange(
        self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None
    ) -> tuple[Any, dict[str, str]]:
        """One request: the answer's JSON and headers (names in lower case)."""
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        hold = float((query or {}).get("wait", 0))
        status, payload, got = self._send(method, target, data, headers, hold)
        try:
            value = json.loads(payload) if payload else None
        except ValueError:
            value = None
        if status >= 400:
            title = value.get("title", "") if isinstance(value, dict) else ""
            description = value.get("description", "") if isinstance(value, dict) else ""
            raise SchedulerError.of(status, title, description or title or f"HTTP {status}")
        return value, got

    def _send(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str], hold: float
    ) -> tuple[int, bytes, dict[str, str]]:
        # A connection idle for a while may have been closed by the API: a new one then. A
        # read that a closed keep-alive connection cuts short is asked again, for a read.
        retry = method == "GET"
        while True:
            connection = self._connect(hold)
            try:
                connection.request(method, target, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop()
                if retry:
                    retry = False
                    continue
                raise Unavailable(f"the API at {self.where} closed the connection") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise Unavailable(f"the API at {self.where} is not reachable: {exc}") from None
            self._last_used = time.monotonic()
            got = {k.lower(): v for k, v in response.getheaders()}
            return response.status, payload, got

    def _connect(self, hold: float) -> http.client.HTTPConnection:
        if self._connection is not None and time.monotonic() - self._last_used > HTTP_IDLE:
            self._drop()
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = kind(self._netloc, timeout=self._timeout)
        self._connection.timeout = self._timeout + hold
        if self._connection.sock is not None:
            self._connection.sock.settimeout(self._timeout + hold)
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        self._drop()


def _json_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A task spec as ``POST /tasks`` takes it: ``args`` in base64."""
    if "args" not in spec:
        return spec
    return {**spec, "args": b64(spec["args"])}


def _parts(specs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The specs as the bodies of ``POST /tasks/batch``: at most ``HTTP_BATCH`` tasks and
    about ``HTTP_BATCH_BYTES`` each (a task larger than that goes alone)."""
    part: list[dict[str, Any]] = []
    size = 0
    for spec in specs:
        encoded = _json_spec(spec)
        length = len(json.dumps(encoded))
        if part and (len(part) >= min(HTTP_BATCH, MAX_BATCH) or size + length > HTTP_BATCH_BYTES):
            yield part
            part, size = [], 0
        part.append(encoded)
        size += length
    if part:
        yield part


def _next_after(link: str) -> str | None:
    """The ``after`` of a ``Link: <...?after=X>; rel="next"`` header, None without one."""
    if 'rel="next"' not in link:
        return None
    url = link.split("<", 1)[-1].split(">", 1)[0]
    values = parse_qs(urlsplit(url).query).get("after")
    return values[0] if values else None
