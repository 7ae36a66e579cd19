"""Jinja2 rendering for pages and htmx fragments."""

from __future__ import annotations

import base64
import os
from functools import lru_cache
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from feed.resources import resource_path
from feed.services.accounts import PASSWORD_HINT
from feed.services.models import FrameStyle, Media
from feed.services.text import chars_left, render_html
from feed.web.auth import csrf_token, remember_anon
from feed.web.post_html import PostHtml
from feed.web.times import fulltime, isotime, reltime

# Notices are chosen by code (``?notice=saved``), never echoed from the URL, so a link cannot put words in our mouth.
NOTICES = {
    "welcome": "Welcome to cipherfeed! Follow people to fill your home timeline.",
    "saved": "Your profile is saved.",
    "password": "Password changed. Every other session was logged out.",
    "deleted": "The post was deleted.",
    "loggedout": "You are logged out.",
    "edited": "The post was updated.",
    "revoked": "The app no longer has access to your account.",
    "notifications": "Your notification settings are saved.",
    "back": "You are logged in again. If you were writing in another tab, go back to it: what you wrote is there.",
}


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_path("templates")),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
    )
    env.filters.update(reltime=reltime, isotime=isotime, fulltime=fulltime, bio=render_html, chars_left=chars_left,
                       srcset=srcset)  # fmt: skip
    env.globals["draft_key"] = draft_key  # the composer's idempotency key: a new one for each new draft
    env.globals["password_hint"] = PASSWORD_HINT
    env.globals["unread_badge"] = unread_badge
    env.globals["chosen"] = chosen
    return env


@lru_cache(maxsize=128)
def unread_badge(unread: int) -> Markup:
    """The number of unread notifications in the navigation (hidden at 0; a page blob fills it per request)."""
    shown = "99+" if unread > 99 else str(unread)
    return Markup(  # noqa: S704 - digits only
        f'<span class="unread-count" id="unread-count"{"" if unread else " hidden"}><span class="visually-hidden">, '
        f'</span>{shown}<span class="visually-hidden"> unread</span></span>'
    )


def chosen(current: str, value: str) -> Markup:
    """`` selected`` for the option of a select whose value is the current one."""
    return Markup(" selected" if current == value else "")  # noqa: S704 - a constant


def srcset(media: Media) -> str:
    """An image's variants for ``srcset``, by width (an image smaller than a variant's bound is the same width in
    each: listed once)."""
    by_width: dict[int, str] = {}
    for name, (width, _) in sorted(media.variants.items(), key=lambda item: item[1][0]):
        by_width.setdefault(width, f"/media/{media.id}/{name} {width}w")
    return ", ".join(by_width.values())


def draft_key() -> str:
    """A new draft's idempotency key: 16 random bytes, URL-safe base64 (as ``secrets.token_urlsafe(16)``)."""
    return base64.urlsafe_b64encode(_random.take(16)).rstrip(b"=").decode()


class _Randomness:
    """Random bytes from the operating system, read 4 KiB at a time: a home page asks for a draft key each time, and
    one system call per page would be most of what the key costs."""

    def __init__(self, batch: int = 4096) -> None:
        self.batch = batch
        self.forget()

    def forget(self) -> None:
        self._left = memoryview(b"")

    def take(self, size: int) -> bytes:
        if len(self._left) < size:
            self._left = memoryview(os.urandom(self.batch))
        taken, self._left = self._left[:size], self._left[size:]
        return taken.tobytes()


_random = _Randomness()
os.register_at_fork(after_in_child=_random.forget)  # a forked child never hands out its parent's bytes


def frame_style(request: Request) -> FrameStyle:
    """How this app draws post frames (made once, with the environment)."""
    style: FrameStyle = request.app.state.frame_style
    return style


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    env: jinja2.Environment = request.app.state.templates
    viewer = request.state._state.get("viewer")
    csrf = csrf_token(request)
    # Where a no-JS form in a post brings the reader back to: this page, an older page (?max_id=) included.
    max_id = request.query_params.get("max_id", "")
    here = request.url.path + (f"?max_id={max_id}" if max_id.isdigit() else "")
    ctx = {
        "request": request,
        "viewer": viewer,
        "unread": request.state._state.get("unread", 0),
        "csrf": csrf,
        "path": request.url.path,
        "here": here,
        "notice": NOTICES.get(request.query_params.get("notice", ""), ""),
        "render_post": PostHtml(env, viewer, csrf, here),
    }
    if context:
        ctx.update(context)
    response = HTMLResponse(env.get_template(template).render(ctx), status_code=status, headers=headers)
    remember_anon(request, response)
    return response
