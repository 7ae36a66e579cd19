"""Who is asking: the session cookie for pages, a bearer token for the API; and the CSRF token tied to them."""

from __future__ import annotations

import base64
import hmac
import secrets
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from feed.errors import Forbidden, NeedsUser, SessionEnded, Unauthorized
from feed.services import accounts, notifications, oauth, throttle
from feed.services.accounts import Grant
from feed.services.context import Services
from feed.services.models import User

SESSION_COOKIE = "cf_session"
_ANON = "cf_anon"


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _https(request: Request) -> bool:
    return request.scope.get("scheme") == "https"  # request.url.scheme, without making the URL


def _cookie_name(request: Request, base: str) -> str:
    # Over HTTPS the __Host- prefix pins the cookie to this exact origin, Secure, path /.
    return f"__Host-{base}" if _https(request) else base


def session_token(request: Request) -> str | None:
    return request.cookies.get(_cookie_name(request, SESSION_COOKIE))


async def viewer(request: Request) -> User | None:
    """The logged-in user of this request, looked up once."""
    if "viewer" not in request.state._state:
        token = session_token(request)
        if not token:
            request.state.viewer = None
        elif request.method == "GET" and "hx-request" not in request.headers:
            # A whole page: its navigation shows how many notifications wait (cached per person, read with the user).
            svc = services(request)
            found, unread = await accounts.session_user_with(svc, token, partial(notifications.unread_request, svc))
            request.state.viewer, request.state.unread = found, notifications.unread_of(unread)
        else:
            request.state.viewer = await accounts.session_user(services(request), token)
    user: User | None = request.state.viewer
    return user


async def require_user(request: Request) -> User:
    user = await viewer(request)
    if user is None:
        raise Unauthorized("Your session has expired; log in again" if session_token(request) else "Log in to do that")
    return user


def _set_cookie(request: Request, response: Response, base: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        _cookie_name(request, base),
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=_https(request),
    )


def start_session(request: Request, response: Response, token: str, max_age: int) -> None:
    _set_cookie(request, response, SESSION_COOKIE, token, max_age)
    response.delete_cookie(_cookie_name(request, _ANON), path="/", secure=_https(request), httponly=True)


_DEVICE = "cf_device"
DEVICE_DAYS = 365


def device_tokens(request: Request) -> list[str]:
    """The browser's device cookie: tokens of the accounts it logged in to (``feed.services.throttle``)."""
    return throttle.device_tokens(request.cookies.get(_cookie_name(request, _DEVICE)))


def remember_device(request: Request, response: Response, token: str, replaced: str | None) -> None:
    """Keep ``token`` first in the device cookie, in place of the account's old one (``replaced``)."""
    kept = [t for t in device_tokens(request) if t != replaced][: throttle.MAX_DEVICES - 1]
    _set_cookie(request, response, _DEVICE, "~".join([token, *kept]), DEVICE_DAYS * 86400)


def end_session(request: Request, response: Response) -> None:
    response.delete_cookie(_cookie_name(request, SESSION_COOKIE), path="/", secure=_https(request), httponly=True)


# -- CSRF: the token is an HMAC of the cookie that identifies the browser (session, or an anonymous id).


def _csrf_base(request: Request) -> str | None:
    return session_token(request) or request.cookies.get(_cookie_name(request, _ANON))


def _mac(request: Request, base: str) -> str:
    return csrf_of(request.app.state.csrf_key, base)


def csrf_of(key: bytes, base: str) -> str:
    """The CSRF token of the browser whose session (or anonymous) cookie is ``base``."""
    return base64.urlsafe_b64encode(hmac.digest(key, base.encode(), "sha256")).decode().rstrip("=")


def csrf_token(request: Request) -> str:
    base = _csrf_base(request)
    if base is None:
        base = request.state._state.get("new_anon")
        if base is None:
            base = request.state.new_anon = secrets.token_urlsafe(24)
    return _mac(request, base)


def remember_anon(request: Request, response: Response) -> None:
    """Set the anonymous cookie if ``csrf_token`` had to invent one for this response."""
    new: Any = request.state._state.get("new_anon")
    if new:
        _set_cookie(request, response, _ANON, new, None)


def check_csrf(request: Request, submitted: str | None) -> None:
    base = _csrf_base(request)
    if base is None:
        raise SessionEnded("Your session has ended, or cookies are off; log in and try again")
    # Compared as bytes: compare_digest raises TypeError on str with non-ASCII characters.
    if not submitted or not hmac.compare_digest(submitted.encode(), _mac(request, base).encode()):
        if submitted and not session_token(request):  # drawn for a session that has ended since
            raise SessionEnded("Your session has ended; log in again and try again")
        raise Forbidden("The form was stale or forged (CSRF check failed); reload the page and try again")


# -- API bearer tokens

OUT_OF_SCOPE = "This action is outside the authorized scopes"


async def api_grant(request: Request, scope: str | tuple[str, ...] | None) -> Grant | None:
    """The request's bearer token, checked to hold ``scope`` (or one of several; None: any valid token will do);
    None without one.
    Kept on the request (``request.state.grant``) for what the handler makes (a status names its app)."""
    header = request.headers.get("authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The access token is invalid")
    grant = await accounts.token_grant(services(request), token.strip())
    if grant is None:
        raise Unauthorized("The access token is invalid")
    wanted = (scope,) if isinstance(scope, str) else scope
    if wanted is not None and not any(oauth.covers(grant.scopes, one) for one in wanted):
        raise Forbidden(OUT_OF_SCOPE)
    request.state.grant = grant
    return grant


async def api_user(request: Request, scope: str | tuple[str, ...], *, required: bool = True) -> User | None:
    """Who calls, by their bearer token, which must hold ``scope`` (Mastodon's granular scope the endpoint needs:
    403 otherwise). ``required``: 401 without a token, 422 with an app's own token (no account behind it);
    otherwise those read as a logged-out visitor, and a token, if sent, must still hold the scope."""
    grant = await api_grant(request, scope)
    if grant is None:
        if required:
            raise Unauthorized("The access token is invalid")
        return None
    if grant.user is None and required:
        raise NeedsUser("This method requires an authenticated user")
    return grant.user


async def session_state(request: Request) -> Response:
    """``GET /session``: who this browser is logged in as now, and the CSRF token of that session: a page whose
    session ended (logged out in another tab) takes it after its reader logged in again, keeping what they wrote."""
    user = await viewer(request)
    body = {"username": user.username, "csrf": csrf_token(request)} if user else {"username": None, "csrf": None}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
