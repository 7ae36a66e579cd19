"""``create_app(settings)``: routes, middleware and the error map as plain lists, resources opened in the lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from feed.bus import Invalidation
from feed.errors import (
    NOT_FOUND,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NeedsUser,
    NotFound,
    RateLimited,
    SessionEnded,
    Unauthorized,
)
from feed.keyfile import derive
from feed.logs import configure as configure_logs
from feed.logs import private_server_logs
from feed.resources import resource_path
from feed.runtime import Runtime, open_runtime
from feed.settings import Settings, load_settings
from feed.web import (
    account_pages,
    api,
    directory,
    live,
    media_api,
    notification_api,
    notification_pages,
    oauth,
    openapi,
    pages,
    people_pages,
    relations_api,
    startup,
    streaming,
)
from feed.web import (
    media as media_files,
)
from feed.web.auth import session_state
from feed.web.cors import ApiCors
from feed.web.crash import CatchAll
from feed.web.forms import BadRequest
from feed.web.hot_path import HotApp
from feed.web.hub import Hub
from feed.web.metrics import RequestMetrics, RouteTimings, metrics_endpoint, outbox_gauges
from feed.web.middleware import (
    ApiTrailingSlash,
    BodyLimit,
    CrossSiteGuard,
    DirectSend,
    ReadYourWrites,
    SecurityHeaders,
    cookieless,
)
from feed.web.post_html import make_frame_style
from feed.web.routing import IndexedRouter
from feed.web.templating import is_htmx, make_environment, render

log = logging.getLogger("feed")

STATUS: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (Forbidden, 403),
    (Unauthorized, 401),
    (Conflict, 409),
    (RateLimited, 429),
    (BadRequest, 400),
    (NeedsUser, 422),
    (Invalid, 422),
]


class CachedStatic(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=86400"
        return response


def _status_of(exc: DomainError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 400


SESSION_ENDED = "X-Session-Ended"  # on an htmx answer refused because the page's session is over


def _json_errors(request: Request) -> bool:
    """The API's paths, and a page's script that asks for JSON (the composer's upload)."""
    return cookieless(request.url.path) or request.headers.get("accept") == "application/json"


def _error_response(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if _json_errors(request):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return render(request, "error.html", {"status": status, "message": message}, status=status, headers=headers)


async def domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    status = _status_of(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    api_path = cookieless(request.url.path)
    if isinstance(exc, Unauthorized | SessionEnded) and not api_path and is_htmx(request):
        # The page stays (with what its reader wrote): static/js/app.js offers to log in again in another tab.
        return PlainTextResponse(exc.message, status_code=status, headers={SESSION_ENDED: "1"})
    if isinstance(exc, Unauthorized) and not _json_errors(request):
        return account_pages.login_redirect(request, expired="expired" in exc.message)
    message = exc.message
    if not api_path and isinstance(exc, NotFound) and message == NOT_FOUND:  # Mastodon's words, for the API
        message = "There is nothing here: it was deleted, or it is not visible to you."
    if api_path and isinstance(exc, Invalid) and not isinstance(exc, BadRequest):
        message = f"Validation failed: {message}"
    return _error_response(request, status, message, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Record not found" if request.url.path.startswith("/api/") else "Page not found"}
    return _error_response(request, exc.status_code, messages.get(exc.status_code, exc.detail), dict(exc.headers or {}))


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Ready while the database answers: a balancer stops sending traffic here during an outage. The body says how
    each replica and Redis server is (neither decides readiness: without them, the primary serves)."""
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        request.app.state.runtime.outage.down(exc)  # logged once per outage, not once per probe
        return PlainTextResponse("database unreachable", status_code=503, headers={"Retry-After": "5"})
    lines = ["ready"]
    replicas = request.app.state.services.db.replicas
    if replicas is not None:
        lines += replicas.state()
    link = request.app.state.runtime.link
    if link is not None:
        lines += [f"redis {name}: {'up' if up else 'down'}" for name, up in sorted(link.nodes.items())]
    return PlainTextResponse("\n".join(lines))


async def favicon(request: Request) -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=301)


def routes() -> list[BaseRoute]:
    v1 = "/api/v1"
    return [
        # The timelines first, pages and API: Starlette tries routes in order, and these are the busiest.
        Route("/", pages.home),
        Route("/public", pages.public),
        Route(f"{v1}/timelines/home", api.home_timeline),
        Route(f"{v1}/timelines/public", api.public_timeline),
        Route(f"{v1}/apps", oauth.create_app, methods=["POST"]),
        Route(f"{v1}/apps/verify_credentials", oauth.verify_app),
        Route(f"{v1}/accounts/verify_credentials", api.verify_credentials),
        Route(f"{v1}/accounts/lookup", api.lookup_account),
        Route(f"{v1}/accounts/relationships", api.relationships),
        Route(f"{v1}/accounts/search", directory.search_accounts),
        Route(f"{v1}/accounts/{{account_id}}/followers", directory.followers),
        Route(f"{v1}/accounts/{{account_id}}/following", directory.following),
        Route("/api/v2/search", directory.search_v2),
        Route(f"{v1}/accounts/{{account_id}}", api.get_account),
        Route(f"{v1}/accounts/{{account_id}}/statuses", api.account_statuses),
        Route(f"{v1}/accounts/{{account_id}}/follow", api.follow, methods=["POST"]),
        Route(f"{v1}/accounts/{{account_id}}/unfollow", api.unfollow, methods=["POST"]),
        Route(f"{v1}/accounts/{{account_id}}/block", relations_api.block, methods=["POST"]),
        Route(f"{v1}/accounts/{{account_id}}/unblock", relations_api.unblock, methods=["POST"]),
        Route(f"{v1}/accounts/{{account_id}}/mute", relations_api.mute, methods=["POST"]),
        Route(f"{v1}/accounts/{{account_id}}/unmute", relations_api.unmute, methods=["POST"]),
        Route(f"{v1}/statuses", api.create_status, methods=["POST"]),
        Route(f"{v1}/statuses/{{status_id}}", api.get_status, methods=["GET"]),
        Route(f"{v1}/statuses/{{status_id}}", api.edit_status, methods=["PUT"]),
        Route(f"{v1}/statuses/{{status_id}}", api.delete_status, methods=["DELETE"]),
        Route(f"{v1}/statuses/{{status_id}}/context", api.status_context),
        Route(f"{v1}/statuses/{{status_id}}/source", api.status_source),
        Route(f"{v1}/statuses/{{status_id}}/history", api.status_history),
        Route(f"{v1}/statuses/{{status_id}}/favourite", api.favourite, methods=["POST"]),
        Route(f"{v1}/statuses/{{status_id}}/unfavourite", api.unfavourite, methods=["POST"]),
        Route(f"{v1}/statuses/{{status_id}}/reblog", api.reblog, methods=["POST"]),
        Route(f"{v1}/statuses/{{status_id}}/unreblog", api.unreblog, methods=["POST"]),
        Route(f"{v1}/statuses/{{status_id}}/reblogged_by", api.reblogged_by),
        Route(f"{v1}/favourites", api.favourites),
        Route(f"{v1}/statuses/{{status_id}}/bookmark", api.bookmark, methods=["POST"]),
        Route(f"{v1}/statuses/{{status_id}}/unbookmark", api.unbookmark, methods=["POST"]),
        Route(f"{v1}/bookmarks", api.bookmarked),
        Route(f"{v1}/streaming/health", streaming.health),
        Route(f"{v1}/streaming/{{stream:path}}", streaming.events),
        WebSocketRoute(f"{v1}/streaming", streaming.websocket),
        Route(f"{v1}/instance", api.instance_v1),
        Route("/api/v2/instance", api.instance_v2),
        Route("/api/v2/media", media_api.upload_v2, methods=["POST"]),
        Route(f"{v1}/media", media_api.upload_v1, methods=["POST"]),
        Route(f"{v1}/media/{{media_id}}", media_api.get_media),
        Route(f"{v1}/media/{{media_id}}", media_api.update_media, methods=["PUT"]),
        Route(f"{v1}/media/{{media_id}}", media_api.delete_media, methods=["DELETE"]),
        Route(f"{v1}/preferences", startup.preferences),
        Route(f"{v1}/custom_emojis", startup.custom_emojis),
        Route(f"{v1}/markers", startup.get_markers, methods=["GET"]),
        Route(f"{v1}/markers", startup.save_markers, methods=["POST"]),
        Route(f"{v1}/filters", startup.nothing_yet("read:filters")),
        Route("/api/v2/filters", startup.nothing_yet("read:filters")),
        Route(f"{v1}/lists", startup.nothing_yet("read:lists")),
        Route(f"{v1}/follow_requests", relations_api.follow_requests),
        Route(f"{v1}/follow_requests/{{account_id}}/authorize", relations_api.authorize, methods=["POST"]),
        Route(f"{v1}/follow_requests/{{account_id}}/reject", relations_api.reject, methods=["POST"]),
        Route(f"{v1}/blocks", relations_api.blocked),
        Route(f"{v1}/mutes", relations_api.muted),
        Route(f"{v1}/notifications", notification_api.listing),
        Route(f"{v1}/notifications/clear", notification_api.clear, methods=["POST"]),
        Route(f"{v1}/notifications/unread_count", notification_api.unread_count),
        Route(f"{v1}/notifications/{{notification_id}}", notification_api.one),
        Route(f"{v1}/notifications/{{notification_id}}/dismiss", notification_api.dismiss, methods=["POST"]),
        Route("/api/v2/notifications", notification_api.grouped),
        Route("/api/v2/notifications/unread_count", notification_api.unread_count),
        Route("/api/v2/notifications/{group_key}/dismiss", notification_api.dismiss_group, methods=["POST"]),
        Route(f"{v1}/announcements", startup.nothing_yet("read")),
        Route("/api/openapi.json", openapi.openapi_json),
        Route("/api/{rest:path}", api.not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/@{username}", pages.profile),
        Route("/@{username}/followers", pages.follow_list),
        Route("/@{username}/following", pages.follow_list),
        Route("/@{username}/follow", pages.follow, methods=["POST"]),
        Route("/@{username}/unfollow", pages.unfollow, methods=["POST"]),
        Route("/@{username}/block", people_pages.block, methods=["POST"]),
        Route("/@{username}/unblock", people_pages.unblock, methods=["POST"]),
        Route("/@{username}/mute", people_pages.mute, methods=["POST"]),
        Route("/@{username}/unmute", people_pages.unmute, methods=["POST"]),
        Route("/blocks", people_pages.blocked),
        Route("/mutes", people_pages.muted),
        Route("/follow_requests", people_pages.follow_requests),
        Route("/follow_requests/{account_id}/authorize", people_pages.authorize, methods=["POST"]),
        Route("/follow_requests/{account_id}/reject", people_pages.reject, methods=["POST"]),
        Route("/posts", pages.create_post, methods=["POST"]),
        Route("/posts/{post_id}", pages.thread),
        Route("/posts/{post_id}/edit", pages.edit_form, methods=["GET"]),
        Route("/posts/{post_id}/edit", pages.edit_post, methods=["POST"]),
        Route("/posts/{post_id}/delete", pages.delete_post, methods=["POST"]),
        Route("/posts/{post_id}/like", pages.like, methods=["POST"]),
        Route("/posts/{post_id}/unlike", pages.unlike, methods=["POST"]),
        Route("/posts/{post_id}/boost", pages.boost, methods=["POST"]),
        Route("/posts/{post_id}/unboost", pages.unboost, methods=["POST"]),
        Route("/posts/{post_id}/bookmark", pages.bookmark, methods=["POST"]),
        Route("/posts/{post_id}/unbookmark", pages.unbookmark, methods=["POST"]),
        Route("/bookmarks", pages.bookmarked),
        Route("/notifications", notification_pages.page),
        Route("/settings/notifications", notification_pages.save_settings, methods=["POST"]),
        Route("/login", account_pages.login_form, methods=["GET"]),
        Route("/login", account_pages.login, methods=["POST"]),
        Route("/register", account_pages.register_form, methods=["GET"]),
        Route("/register", account_pages.register, methods=["POST"]),
        Route("/logout", account_pages.logout, methods=["POST"]),
        Route("/settings", account_pages.settings_page, methods=["GET"]),
        Route("/settings", account_pages.save_profile, methods=["POST"]),
        Route("/settings/password", account_pages.change_password, methods=["POST"]),
        Route("/settings/delete", account_pages.delete_account, methods=["POST"]),
        Route("/settings/apps/{app_id}/revoke", account_pages.revoke_app, methods=["POST"]),
        Route("/oauth/authorize", oauth.authorize_page, methods=["GET"]),
        Route("/oauth/authorize", oauth.authorize, methods=["POST"]),
        Route("/oauth/token", oauth.token, methods=["POST"]),
        Route("/oauth/revoke", oauth.revoke, methods=["POST"]),
        Route("/.well-known/oauth-authorization-server", oauth.server_metadata),
        Route("/media", media_api.upload_page, methods=["POST"]),
        Route("/media/{media_id}", media_api.state_page),
        Route("/media/{media_id}/{variant}", media_files.serve, methods=["GET", "HEAD"]),
        Route("/events", live.events),
        Route("/session", session_state),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/favicon.ico", favicon),
        Route("/.well-known/nodeinfo", startup.nodeinfo_links),
        Route("/nodeinfo/2.0", startup.nodeinfo),
        Mount("/static", CachedStatic(directory=resource_path("static")), name="static"),
    ]


def _connect_hub(runtime: Runtime, hub: Hub) -> None:
    """Live streams close when their session or token is invalidated, here or elsewhere, and are checked again
    when invalidations may have been lost."""
    publish = runtime.cache.on_invalidate

    async def close_then_publish(names: list[str]) -> None:
        hub.close_auth(names)
        if publish is not None:
            await publish(names)

    def apply(message: Invalidation) -> None:
        hub.close_auth(message.keys)

    def reset() -> None:
        asyncio.get_running_loop().create_task(hub.recheck_all())

    runtime.cache.on_invalidate = close_then_publish
    runtime.bus.on_message(apply)
    runtime.bus.on_reset(reset)


def _nothing() -> None:
    pass


def _close_streams_on_signal(hub: Hub) -> Callable[[], None]:
    """At SIGTERM or SIGINT, end every live stream at once, then let the server's own handler (uvicorn's) go on:
    the server waits for open responses before it stops, and a stream never ends by itself. Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.close_all)
        before = previous[signal.Signals(sig)]
        if callable(before):
            before(sig, frame)

    for sig in previous:
        signal.signal(sig, handle)

    def undo() -> None:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, before)

    return undo


def create_app(settings: Settings, *, role: str = "web") -> Starlette:
    """The app. ``role``: ``web`` (serves pages and live streams, relays the outbox), ``worker`` (relays the
    outbox, runs jobs) or ``cli`` (a command's services only)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_runtime(settings, role) as runtime:
            app.state.runtime = runtime
            app.state.metrics, app.state.engine = runtime.metrics, runtime.engine
            app.state.cache, app.state.bus, app.state.queue = runtime.cache, runtime.bus, runtime.queue
            app.state.services = svc = runtime.services
            app.state.outbox_gauges = outbox_gauges(runtime.metrics)
            app.state.templates = make_environment()
            app.state.frame_style = make_frame_style(app.state.templates)
            app.state.csrf_key = derive(runtime.secret, "csrf")
            streams = runtime.streams
            if role != "web" or streams is None:
                app.state.hub = None
                yield
                return
            hub = app.state.hub = Hub(svc, streams, metrics=runtime.metrics, queue_limit=settings.stream_queue,
                                      per_user=settings.streams_per_user)  # fmt: skip
            _connect_hub(runtime, hub)
            private_server_logs()
            await hub.start()
            await streams.start()
            undo_signals = _close_streams_on_signal(hub)
            # What start-up made lives as long as the process: the collector need not look at it again, so each
            # collection of what requests leave behind is shorter.
            gc.freeze()
            try:
                yield
            finally:
                undo_signals()
                await hub.stop()
                await streams.stop()

    timings = RouteTimings()
    middleware = [
        Middleware(DirectSend),  # live streams write their body chunks past the layers below (feed.web.sse)
        Middleware(ApiTrailingSlash),  # every layer below sees the path as routed
        # Outermost of ours but the hot path, so it also counts the 500s, 413s and 403s made below it.
        Middleware(RequestMetrics, timings=timings),
        Middleware(SecurityHeaders),
        Middleware(CatchAll),
        Middleware(ApiCors),
        # An upload: the image and its form (the image's own limit is checked when it is read).
        Middleware(BodyLimit, limit=settings.max_body_bytes, upload_limit=settings.media_max_bytes + 64 * 1024),
        Middleware(CrossSiteGuard),
    ]
    if settings.replica_urls:
        middleware.append(Middleware(ReadYourWrites))
    handlers: dict[Any, Any] = {DomainError: domain_error, HTTPException: http_error}
    # Home pages from their blobs, in front of every layer above (feed.web.hot_path).
    app = HotApp(middleware=middleware, exception_handlers=handlers, timings=timings)
    app.router = IndexedRouter(routes(), lifespan=lifespan)  # Starlette's, trying only the routes a path can match
    return app


def asgi_factory() -> Starlette:
    """For ``uvicorn --factory feed.app:asgi_factory``: settings from the environment."""
    settings = load_settings()
    configure_logs(settings.log_level)
    return create_app(settings)
