"""Who may call what: the rule table against the app's routes, and every role on every route,
through the app in this process with the real scheduler behind it (``broker.local``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon
import falcon.inspect
import falcon.testing
import pytest

from api.app import create_app
from api.auth import OPEN, RULES, Grant
from broker.local import LocalClient
from common.settings import Settings
from common.tokens import Tokens

#: A token of each role, by role.
TOKENS = {
    "admin": "admin-token-0123456789abcdef",
    "client": "client-token-0123456789abcdef",
    "worker:w1": "worker-1-token-0123456789abcdef",
    "worker:w2": "worker-2-token-0123456789abcdef",
}
#: Every call of the API, as (method, path, body), and the roles besides admin allowed it.
CALLS: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/tasks", {"handler": "echo"}, {"client"}),
    ("POST", "/tasks/batch", {"tasks": [{"handler": "echo"}]}, {"client"}),
    ("GET", "/tasks", None, {"client"}),
    ("HEAD", "/tasks", None, {"client"}),
    ("GET", "/tasks/t1", None, {"client"}),
    ("HEAD", "/tasks/t1", None, {"client"}),
    ("DELETE", "/tasks/t1", None, {"client"}),
    ("GET", "/workers", None, {"client"}),
    ("HEAD", "/workers", None, {"client"}),
    ("POST", "/workers", {"id": "w1", "capabilities": ["echo"]}, {"worker:w1"}),
    ("GET", "/workers/w1", None, {"client", "worker:w1"}),
    ("HEAD", "/workers/w1", None, {"client", "worker:w1"}),
    ("PUT", "/workers/w1/heartbeat", None, {"worker:w1"}),
    ("POST", "/workers/w1/tasks/next", None, {"worker:w1"}),
    ("POST", "/workers/w1/tasks/t1/complete", {"status": "completed"}, {"worker:w1"}),
]


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def make_app(settings: Settings | None = None) -> falcon.App[falcon.Request, falcon.Response]:
    local = LocalClient(now=1_800_000_000.0)
    tokens = Tokens({token: role for role, token in TOKENS.items()})
    return create_app(client=lambda: local, settings=settings or Settings(), tokens=tokens)


@pytest.fixture
def http() -> falcon.testing.TestClient:
    return falcon.testing.TestClient(make_app())


def call(
    http: falcon.testing.TestClient,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> falcon.testing.Result:
    data = None if body is None else json.dumps(body)
    return http.simulate_request(method, path, body=data, headers=headers)


def test_every_route_and_method_of_the_app_has_a_rule_and_every_rule_a_route() -> None:
    app = make_app()
    info = falcon.inspect.inspect_app(app)
    routed = {
        (route.path, m.method)
        for route in info.routes
        for m in route.methods
        if not m.internal and route.path not in OPEN
    }

    assert routed == set(RULES)
    # Nothing is served past the router's rules: no sink, no static route.
    assert not info.sinks and not info.static_routes
    # An open path is a fixed one, compared with the request's path as it is.
    assert all("{" not in path for path in OPEN)


def test_admin_is_granted_everything_and_a_worker_only_through_its_own_id() -> None:
    for (route, _method), grants in RULES.items():
        assert Grant.ADMIN in grants
        assert Grant.WORKER_IN_PATH not in grants or "{worker_id}" in route
    assert RULES[("/workers", "POST")] == {Grant.ADMIN, Grant.WORKER_IN_BODY}


def test_a_route_added_without_a_rule_is_refused_to_every_role() -> None:
    class New:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"reached": True}

    app = make_app()
    app.add_route("/new", New())
    http = falcon.testing.TestClient(app)

    for role in TOKENS:
        result = http.simulate_get("/new", headers=bearer(role))
        assert result.status_code == 403, (role, result.text)
        assert "no role may call GET /new" in result.json["description"]
    assert http.simulate_get("/new").status_code == 401


@pytest.mark.parametrize(("method", "path", "body", "allowed"), CALLS)
def test_each_role_is_let_in_where_the_table_says_and_refused_elsewhere(
    http: falcon.testing.TestClient, method: str, path: str, body: Any, allowed: set[str]
) -> None:
    unauthenticated = call(http, method, path, body)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"] == "Bearer"

    for role in TOKENS:
        result = call(http, method, path, body, bearer(role))
        if role == "admin" or role in allowed:
            assert result.status_code not in (401, 403), (role, result.text)
        else:
            assert result.status_code == 403, (role, result.text)
            if method != "HEAD":
                assert result.json["title"] == "Forbidden"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer not-a-known-token-at-all",
        "Bearer",
        "Bearer   ",
        f"Basic {TOKENS['admin']}",
        TOKENS["admin"],
        f"Bearer {TOKENS['admin']}x",
    ],
)
def test_a_bad_or_unknown_token_is_a_401_that_does_not_repeat_it(
    http: falcon.testing.TestClient, header: str
) -> None:
    result = http.simulate_get("/tasks", headers={"Authorization": header})

    assert result.status_code == 401
    assert result.headers["www-authenticate"] == "Bearer"
    assert result.json["title"] == "Unauthorized" and result.json["description"]
    assert "token" in result.json["description"].lower()
    assert "not-a-known" not in result.text and TOKENS["admin"] not in result.text


def test_the_scheme_is_case_insensitive(http: falcon.testing.TestClient) -> None:
    result = http.simulate_get("/tasks", headers={"Authorization": f"bearer {TOKENS['client']}"})
    assert result.status_code == 200


def test_a_worker_token_registers_that_worker_only(http: falcon.testing.TestClient) -> None:
    other = call(
        http, "POST", "/workers", {"id": "w2", "capabilities": ["echo"]}, bearer("worker:w1")
    )
    assert other.status_code == 403
    assert "'w1'" in other.json["description"]
    no_id = call(http, "POST", "/workers", {"capabilities": ["echo"]}, bearer("worker:w1"))
    assert no_id.status_code == 403
    not_json = http.simulate_post("/workers", body="{", headers=bearer("worker:w1"))
    assert not_json.status_code == 400

    own = call(
        http, "POST", "/workers", {"id": "w1", "capabilities": ["echo"]}, bearer("worker:w1")
    )
    assert own.status_code == 201, own.text
    assert own.json["id"] == "w1"


def test_health_is_open_and_an_unknown_path_needs_a_token(http: falcon.testing.TestClient) -> None:
    assert http.simulate_get("/health").status_code == 200
    assert http.simulate_head("/health").status_code == 200
    assert http.simulate_get("/health/").status_code == 200
    assert http.simulate_get("/nowhere").status_code == 401
    assert http.simulate_get("/nowhere", headers=bearer("client")).status_code == 404


def test_without_tokens_the_api_is_open_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    local = LocalClient(now=1_800_000_000.0)
    with caplog.at_level(logging.WARNING, logger="api.app"):
        app = create_app(client=lambda: local, settings=Settings())

    assert falcon.testing.TestClient(app).simulate_get("/tasks").status_code == 200
    assert any("the API is open" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("listen", [":8080", "0.0.0.0:8080", "10.1.2.3:80", "example.com:80"])
def test_an_open_api_beyond_loopback_needs_insecure(listen: str) -> None:
    local = LocalClient(now=1_800_000_000.0)
    with pytest.raises(ValueError, match="--insecure"):
        create_app(client=lambda: local, settings=Settings(listen=listen))

    create_app(client=lambda: local, settings=Settings(listen=listen, insecure=True))
    make_app(Settings(listen=listen))  # with tokens


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.8.9.10:1", "localhost:80", "[::1]:80"])
def test_an_open_api_on_loopback_needs_nothing(listen: str) -> None:
    local = LocalClient(now=1_800_000_000.0)
    create_app(client=lambda: local, settings=Settings(listen=listen))
