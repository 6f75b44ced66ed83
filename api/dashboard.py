"""The dashboard's page (``GET /``) and its script and style sheet: static files.

The files are package data (``api/static``), read once when the app is built and served
as they are: no build step, nothing from another site. They hold no data, so anyone may
fetch them (``api.auth.OPEN``); the page reads everything it shows from the API with the
token its user gives it (``/events``, ``/tasks``, ``/workers``).

This module must never ask the broker anything.
"""

from __future__ import annotations

from importlib import resources

import falcon

#: Each path the dashboard serves, with its file in ``api/static`` and its media type.
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}

#: What the browser may load and run: this API's own files and requests, nothing else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class StaticFile:
    """One file of ``api/static``, read once."""

    def __init__(self, name: str, media_type: str) -> None:
        self.body = (resources.files("api") / "static" / name).read_bytes()
        self.media_type = media_type

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.media_type
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.data = self.body

    on_head = on_get


def add_routes(app: falcon.App[falcon.Request, falcon.Response]) -> None:
    for path, (name, media_type) in FILES.items():
        app.add_route(path, StaticFile(name, media_type))
