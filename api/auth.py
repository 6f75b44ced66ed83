"""Who may call what on the REST API: bearer tokens, and one table of rules by route.

Every request but those to an ``OPEN`` path carries ``Authorization: Bearer TOKEN``; a
request without one, or with a token not in the tokens file (``common.tokens``), is a 401
with ``WWW-Authenticate: Bearer``. The caller's role then has to be granted the route
and method in ``RULES``, or the request is a 403: a route with no rule is refused to
every role, admin included, so a route added without a rule is closed, never open.

A worker's token (role ``worker:ID``) acts as worker ID alone: the rules that grant it
name where the worker id of the request is, the path's ``{worker_id}`` or the body's
``id`` (registering). This module must never log a token or put one in an answer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import falcon

from api import parse
from common.tokens import ADMIN, CLIENT, Caller, Tokens

#: The scheme of the ``Authorization`` header, and the challenge a 401 sends.
SCHEME = "Bearer"


class Grant(StrEnum):
    """Who a rule lets in."""

    #: A token of role ``admin``.
    ADMIN = ADMIN
    #: A token of role ``client``.
    CLIENT = CLIENT
    #: The token of the worker the path names (``{worker_id}``).
    WORKER_IN_PATH = "worker in path"
    #: The token of the worker the body names (``"id"``): an HTTP worker registering.
    WORKER_IN_BODY = "worker in body"


#: Paths anyone may call, with no token: a probe's health check, the API's description.
OPEN = frozenset({"/health", "/openapi.json"})

_CLIENTS = frozenset({Grant.ADMIN, Grant.CLIENT})
_ADMINS = frozenset({Grant.ADMIN})
_THE_WORKER = frozenset({Grant.ADMIN, Grant.WORKER_IN_PATH})

#: Who may call each route (its template, as ``api.app.create_app`` adds it) with each
#: method; ``HEAD`` is granted to whoever may ``GET``.
_RULES: dict[tuple[str, str], frozenset[Grant]] = {
    ("/tasks", "POST"): _CLIENTS,
    ("/tasks", "GET"): _CLIENTS,
    ("/tasks/batch", "POST"): _CLIENTS,
    ("/tasks/{task_id}", "GET"): _CLIENTS,
    ("/tasks/{task_id}", "DELETE"): _CLIENTS,
    ("/tasks/{task_id}/retry", "POST"): _CLIENTS,
    ("/tasks", "DELETE"): _ADMINS,
    ("/workers/{worker_id}/drain", "POST"): _ADMINS,
    ("/workers/{worker_id}/drain", "DELETE"): _ADMINS,
    ("/stats", "GET"): _CLIENTS,
    ("/workers", "GET"): _CLIENTS,
    ("/workers", "POST"): frozenset({Grant.ADMIN, Grant.WORKER_IN_BODY}),
    ("/workers/{worker_id}", "GET"): _CLIENTS | {Grant.WORKER_IN_PATH},
    ("/workers/{worker_id}/heartbeat", "PUT"): _THE_WORKER,
    ("/workers/{worker_id}/tasks/next", "POST"): _THE_WORKER,
    ("/workers/{worker_id}/tasks/{task_id}/complete", "POST"): _THE_WORKER,
}
RULES: dict[tuple[str, str], frozenset[Grant]] = {
    **_RULES,
    **{(route, "HEAD"): grants for (route, method), grants in _RULES.items() if method == "GET"},
}


def unauthorized(description: str) -> falcon.HTTPUnauthorized:
    return falcon.HTTPUnauthorized(
        title="Unauthorized", description=description, challenges=[SCHEME]
    )


def forbidden(description: str) -> falcon.HTTPForbidden:
    return falcon.HTTPForbidden(title="Forbidden", description=description)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization`` header; a 401 when there is none."""
    if not header or not header.strip():
        raise unauthorized(f"this request needs an Authorization: {SCHEME} TOKEN header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != SCHEME.lower() or not token.strip():
        raise unauthorized(f"the Authorization header must be {SCHEME} TOKEN")
    return token.strip()


class Authorization:
    """Falcon middleware: the caller from the token (``process_request``, for every
    request), then the rule of the route it was routed to (``process_resource``)."""

    def __init__(self, tokens: Tokens, max_body: int) -> None:
        self.tokens = tokens
        #: For reading the body of a registration, whose ``id`` a worker's token must match.
        self.max_body = max_body

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in OPEN:
            return
        caller = self.tokens.caller(bearer_token(req.get_header("Authorization")))
        if caller is None:
            raise unauthorized("the token is not one this API knows")
        req.context.caller = caller

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]
    ) -> None:
        if req.path in OPEN:
            return
        caller: Caller = req.context.caller
        route = req.uri_template or req.path
        grants = RULES.get((route, req.method), frozenset())
        if not grants:
            raise forbidden(f"no role may call {req.method} {route}")
        if caller.role in grants:  # admin and client are grants of their own name
            return
        worker_id = caller.worker_id
        if worker_id is not None and Grant.WORKER_IN_PATH in grants:
            if params.get("worker_id") == worker_id:
                return
            raise forbidden(f"the token of worker {worker_id!r} acts as that worker only")
        if worker_id is not None and Grant.WORKER_IN_BODY in grants:
            # Read here, and left for the responder in req.context.body (the stream is
            # read once): the worker registers itself, no other.
            body = req.context.body = parse.read_object(req, self.max_body)
            if body.get("id") == worker_id:
                return
            raise forbidden(f"the token of worker {worker_id!r} registers that worker only")
        raise forbidden(f"role {caller.role} may not call {req.method} {route}")
