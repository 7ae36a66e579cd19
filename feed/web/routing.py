"""Routing that tries only the routes a path can match.

Starlette's router tries its routes in order, each with a regular expression: a path near the end of our hundred and
twenty routes costs more to route than the page costs to serve. :class:`IndexedRouter` groups the routes by the first
segment of their path (a route whose first segment has a parameter is in every group) and tries the group of the
request's first segment, in the same order. A route outside the group cannot match, so the route found is the one
Starlette would find; whatever the group does not fully match (a 405, a slash redirect, a 404) is left to
Starlette's own loop over every route.
"""

from __future__ import annotations

from typing import Any

from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Host, Match, Mount, Router, WebSocketRoute
from starlette.routing import Route as PathRoute
from starlette.types import Receive, Scope, Send


def _first_segment(route: BaseRoute) -> str | None:
    """The literal first segment every path the route matches starts with (None: any)."""
    if isinstance(route, Host) or not isinstance(route, PathRoute | WebSocketRoute | Mount):
        return None
    path: str = route.path
    segment = path.split("/", 2)[1] if path.startswith("/") else ""
    return segment if segment and "{" not in segment else None


class IndexedRouter(Router):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._indexed: tuple[int, int] = (0, -1)  # (id, length) of the route list the index was made of
        self._groups: dict[str, list[BaseRoute]] = {}
        self._anywhere: list[BaseRoute] = []

    def _group(self, route_path: str) -> list[BaseRoute]:
        if self._indexed != (id(self.routes), len(self.routes)):  # routes added since: index again
            firsts = [(route, _first_segment(route)) for route in self.routes]
            names = {first for _, first in firsts if first is not None}
            self._groups = {name: [r for r, first in firsts if first in (name, None)] for name in names}
            self._anywhere = [route for route, first in firsts if first is None]
            self._indexed = (id(self.routes), len(self.routes))
        return self._groups.get(route_path.split("/", 2)[1] if route_path.startswith("/") else "", self._anywhere)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("router", self)
            for route in self._group(get_route_path(scope)):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)
