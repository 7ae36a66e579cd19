"""The OpenAPI description at /api/openapi.json (issue 11): generated from the routes, it covers every API endpoint
with the scope each one enforces, and a real server answers as it says, under requests schemathesis makes up from it:
never a 500, never a response (status, type, body) the description does not allow."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from feed.app import routes
from feed.web import openapi
from tests.conftest import BACKEND
from tests.feed.processes import AppProcess
from tests.feed.test_cli import cipherfeed
from tests.feed.web.test_oauth import SCOPED

# Not described: the streams (server-sent events and a WebSocket, not JSON) and the catch-all 404.
UNDESCRIBED = {"/api/v1/streaming/{stream:path}", "/api/v1/streaming", "/api/{rest:path}"}

POSTS: list[str] = []
ACCOUNTS: list[str] = []
TURN = itertools.count()
SCHEMA = schemathesis.openapi.from_dict(openapi.document(routes(), "http://127.0.0.1"))


def test_every_api_route_is_described_with_the_scope_it_enforces() -> None:
    document = openapi.document(routes(), "http://127.0.0.1")
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    for route in routes():
        if not route.path.startswith("/api/") or route.path in UNDESCRIBED:  # type: ignore[attr-defined]
            continue
        assert isinstance(route, Route)
        path = route.path.replace(":path", "")
        for method in (route.methods or {"GET"}) - {"HEAD"}:
            assert (path, method.lower()) in described, f"{method} {path} is not described"
    for method, template, needed in SCOPED:  # what the scope test enforces is what the description says
        path = template.split("?")[0].replace("{post}", "{status_id}").replace("{bob}", "{account_id}")
        security = document["paths"][path][method.lower()]["security"]
        assert {"OAuth2": [needed]} in security, (method, path, security)


@pytest.fixture(scope="module")
def server(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppProcess, str]]:
    """A server of its own (a fresh SQLite database) with a user who has a token of every scope."""
    workdir = tmp_path_factory.mktemp("openapi")
    own = env | {
        "CIPHERFEED_DATABASE_URL": f"sqlite:///{workdir / 'api.db'}",
        "CIPHERFEED_DATA_DIR": str(workdir / "data"),
        "CIPHERFEED_LOGIN_ATTEMPTS_PER_IP": "100000",
        "CIPHERFEED_APPS_PER_IP": "100000",
    }
    own = {k: v for k, v in own.items() if k != "CIPHERFEED_REDIS_URL"}
    for name in ("alice", "bob"):
        made = cipherfeed(own, "users", "create", name, "--password-stdin", stdin="correct horse battery staple\n")
        assert made.returncode == 0, made.stderr
    token = cipherfeed(own, "users", "token", "alice").stdout.strip()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
    proc = AppProcess("openapi", inherited | own, Path(workdir))
    proc.wait_ready()
    auth = {"Authorization": f"Bearer {token}"}
    for n in range(40):  # something for the reads (and the edits and deletes) to find
        made = httpx.post(f"{proc.url}/api/v1/statuses", data={"status": f"post {n}"}, headers=auth)
        assert made.status_code == 200
        POSTS.append(made.json()["id"])
    ACCOUNTS.extend(httpx.get(f"{proc.url}/api/v1/accounts/lookup?acct={n}").json()["id"] for n in ("alice", "bob"))
    yield proc, token
    proc.stop()
    assert "Traceback" not in proc.output(), proc.output()


@pytest.mark.skipif(BACKEND != "sqlite", reason="a server of its own, once, in the SQLite pass")
@SCHEMA.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_server_answers_as_described(case: Any, server: tuple[AppProcess, str]) -> None:
    proc, token = server
    # Made-up ids find nothing: most cases name a post or an account that exists.
    for name, known in (("status_id", POSTS), ("account_id", ACCOUNTS)):
        if name in (case.path_parameters or {}) and next(TURN) % 4:
            case.path_parameters[name] = known[next(TURN) % len(known)]
    case.call_and_validate(
        base_url=proc.url,
        headers={"Authorization": f"Bearer {token}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        timeout=10,
    )
