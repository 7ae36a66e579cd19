"""The indexed router finds, for every path, the route Starlette's own loop over all routes would find."""

from __future__ import annotations

import re

from starlette.routing import Match, Router

from feed.app import routes
from feed.web.routing import IndexedRouter


def _scope(path: str, method: str = "GET", kind: str = "http") -> dict[str, object]:
    return {"type": kind, "path": path, "root_path": "", "method": method, "headers": [], "query_string": b""}


def _first_full(candidates: list, scope: dict[str, object]) -> object:  # type: ignore[type-arg]
    return next((route for route in candidates if route.matches(scope)[0] is Match.FULL), None)


def test_each_path_finds_the_route_starlette_finds() -> None:
    every = routes()
    indexed = IndexedRouter(every)
    paths = {re.sub(r"\{[^}]*\}", "1", getattr(route, "path", "")) or "/" for route in every}
    paths |= {"/", "/@alice", "/@alice/follow", "/static/js/app.js", "/nowhere", "/api/v1/nowhere",
              "/api/v1/statuses/x", "/.well-known/webfinger", ""}  # fmt: skip
    assert len(paths) > 100
    for path in sorted(paths):
        for method in ("GET", "POST", "DELETE"):
            for kind in ("http", "websocket"):
                scope = _scope(path, method, kind)
                wanted = _first_full(Router(every).routes, scope)
                found = _first_full(indexed._group(path), scope)
                assert found is wanted, (path, method, kind)


def test_a_route_added_later_is_found() -> None:
    from starlette.routing import Route

    indexed = IndexedRouter(routes())
    assert _first_full(indexed._group("/late"), _scope("/late")) is None
    late = Route("/late", lambda request: None)
    indexed.routes.append(late)
    assert _first_full(indexed._group("/late"), _scope("/late")) is late
