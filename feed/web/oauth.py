"""OAuth 2 for Mastodon apps, on Authlib's authorization server: app registration (``POST /api/v1/apps``), the
consent page (``/oauth/authorize``), the token endpoint (authorization code with optional PKCE S256, client
credentials, password), revocation, ``GET /api/v1/apps/verify_credentials`` and the RFC 8414 metadata.

Authlib's server is synchronous. Each OAuth request runs it in a worker thread of its own small pool
(:data:`THREADS`, apart from the pool password hashing uses, so that one cannot wait on the other), and its storage
callbacks come back to the event loop for the async services (``anyio.from_thread.run``). What it answers is
turned into a Starlette response here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import anyio.from_thread
import anyio.to_thread
from authlib.oauth2 import AuthorizationServer, OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.errors import InsecureTransportError, InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    ResourceOwnerPasswordCredentialsGrant,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from feed.errors import NotFound, RateLimited, Unauthorized
from feed.services import accounts, oauth
from feed.services.context import Services
from feed.services.models import User
from feed.web.auth import api_grant, services, viewer
from feed.web.forms import BadRequest, read_body, read_form
from feed.web.middleware import CSP
from feed.web.openapi import STRING, operation, ref
from feed.web.pages import see_other
from feed.web.templating import render

T = TypeVar("T")

AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
GRANT_TYPES = ("authorization_code", "password", "client_credentials")
# The parameters of an authorization request, carried from the consent page to its form.
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
                    "code_challenge_method")  # fmt: skip
THREADS = 4  # OAuth requests served at once (each holds a worker thread while it runs)
_limiter: anyio.CapacityLimiter | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What Authlib answered: status, body (a dict for JSON, or text) and headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Client(ClientMixin):
    """A registered app as Authlib sees it."""

    def __init__(self, svc: Services, app: oauth.App) -> None:
        self.svc = svc
        self.app = app

    def get_client_id(self) -> str:
        return self.app.client_id

    def get_default_redirect_uri(self) -> str:
        return self.app.redirect_uris[0]

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The scopes asked for (``read`` when none are), if the app registered them all; None otherwise."""
        try:
            wanted = oauth.parse_scopes(scope)
        except Exception:
            return None
        return " ".join(wanted) if oauth.within(wanted, self.app.scopes) else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.app.redirect_uris  # exactly as registered

    def check_client_secret(self, client_secret: str) -> bool:
        return oauth.secret_matches(self.svc, self.app, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


class Req(OAuth2Request):
    """An OAuth request made from the parameters Starlette parsed (the query of a GET, the body of a POST)."""

    def __init__(self, method: str, url: str, headers: Mapping[str, str], params: dict[str, str], ip: str) -> None:
        # Authlib refuses plain HTTP (InsecureTransportError) but on loopback addresses: behind a proxy, the proxy
        # must say the request came over TLS (uvicorn's --proxy-headers, see README).
        super().__init__(method, url, headers=headers)
        self.payload = BasicOAuth2Payload(params)
        self._params = params
        self.ip = ip  # for the password grant's throttle

    @property
    def args(self) -> dict[str, str]:
        return self._params

    @property
    def form(self) -> dict[str, str]:
        return self._params


@dataclass(frozen=True, slots=True)
class StoredCode:
    """An authorization code as the token endpoint checks it (already taken from storage: single use)."""

    code: oauth.Code

    def get_redirect_uri(self) -> str:
        return self.code.redirect_uri

    def get_scope(self) -> str:
        return " ".join(self.code.scopes)

    @property
    def code_challenge(self) -> str | None:
        return self.code.challenge

    @property
    def code_challenge_method(self) -> str | None:
        return self.code.challenge_method


@dataclass(frozen=True, slots=True)
class Presented:
    """A token an app asks to revoke (revoked only if it is that app's: see ``oauth.revoke_token``)."""

    token: str

    def check_client(self, client: Any) -> bool:
        return True


def _on_loop(func: Callable[..., Any], *args: Any) -> Any:
    """From Authlib's worker thread: run an async service call on the event loop and wait for it."""
    return anyio.from_thread.run(func, *args)


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def save_authorization_code(self, code: str, request: Req) -> None:
        client: Client = request.client
        user: User = request.user
        scope = client.get_allowed_scope(request.payload.scope) or ""
        data = request.payload.data
        _on_loop(oauth.save_code, client.svc, code, client.app, user, request.payload.redirect_uri
                 or client.get_default_redirect_uri(), scope.split(), data.get("code_challenge"),
                 data.get("code_challenge_method"))  # fmt: skip

    def query_authorization_code(self, code: str, client: Client) -> StoredCode | None:
        found: oauth.Code | None = _on_loop(oauth.redeem_code, client.svc, code)
        return StoredCode(found) if found is not None and found.app_id == client.app.id else None

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        pass  # taken from storage when it was queried

    def authenticate_user(self, authorization_code: StoredCode) -> User | None:
        svc = self.server.svc
        try:
            return _on_loop(accounts.get_user, svc, authorization_code.code.user_id)  # type: ignore[no-any-return]
        except NotFound:
            return None


class S256Only(CodeChallenge):
    """PKCE as Mastodon has it: optional, and S256 when a challenge is sent."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class PasswordGrant(ResourceOwnerPasswordCredentialsGrant):
    """Mastodon's password grant, throttled as the login form is (a wrong password counts there too)."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def authenticate_user(self, username: str, password: str) -> User | None:
        try:
            return _on_loop(accounts.password_user, self.server.svc, username, password,  # type: ignore[no-any-return]
                            self.request.ip)  # fmt: skip
        except Unauthorized:
            return None


class AppCredentialsGrant(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> Presented:
        return Presented(token_string)

    def revoke_token(self, token: Presented, request: Req) -> None:
        client: Client = request.client
        _on_loop(oauth.revoke_token, client.svc, client.app, token.token)


class Server(AuthorizationServer):
    def __init__(self, svc: Services) -> None:
        super().__init__(scopes_supported=None)  # each app's own scopes are checked (Client.get_allowed_scope)
        self.svc = svc
        self.register_token_generator("default", self._new_token)
        self.register_grant(CodeGrant, [S256Only(required=False)])
        self.register_grant(PasswordGrant)
        self.register_grant(AppCredentialsGrant)
        self.register_endpoint(Revocation)

    def query_client(self, client_id: str) -> Client | None:
        app: oauth.App | None = _on_loop(oauth.app_by_client_id, self.svc, client_id)
        return Client(self.svc, app) if app is not None else None

    def _new_token(self, grant_type: str, client: Client, user: User | None = None, scope: str | None = None,
                   expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:  # fmt: skip
        allowed = client.get_allowed_scope(scope)
        if allowed is None:
            raise InvalidScopeError()
        token = _on_loop(oauth.issue_token, self.svc, client.app, user.id if user else None, allowed.split())
        return {"access_token": token, "token_type": "Bearer", "scope": allowed, "created_at": int(time.time())}

    def save_token(self, token: dict[str, Any], request: Req) -> None:
        pass  # stored when it was made (``_new_token``)

    def create_oauth2_request(self, request: Req) -> Req:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Answer:
        return Answer(status, body, dict(headers or ()))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


def server(request: Request) -> Server:
    found: Server | None = getattr(request.app.state, "oauth", None)
    if found is None or found.svc is not services(request):
        found = request.app.state.oauth = Server(services(request))
    return found


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(THREADS)
    return await anyio.to_thread.run_sync(func, *args, limiter=_limiter)


def _req(request: Request, params: dict[str, str]) -> Req:
    try:  # (Starlette's headers: read-only, and found by any case, as Authlib asks for "Authorization")
        return Req(
            request.method, str(request.url), request.headers, params, request.client.host if request.client else ""
        )
    except InsecureTransportError:
        raise BadRequest("OAuth 2 needs HTTPS (plain HTTP only on a loopback address)") from None


def _json(answer: Answer) -> Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


# -- app registration


def _application(app: oauth.App, request: Request) -> dict[str, Any]:
    """Mastodon's Application entity."""
    return {
        "id": str(app.id),
        "name": app.name,
        "website": app.website,
        "scopes": list(app.scopes),
        "redirect_uri": "\n".join(app.redirect_uris),
        "redirect_uris": list(app.redirect_uris),
        "vapid_key": "",
    }


@operation(
    "Register an app",
    ref("Application"),
    public=True,
    form={"client_name": STRING, "redirect_uris": STRING, "scopes": STRING, "website": STRING},
    required=("client_name", "redirect_uris"),
)
async def create_app(request: Request) -> Response:
    data = await read_body(request)
    raw_uris = data.get("redirect_uris") or data.get("redirect_uris[]") or ""
    uris = [raw_uris] if isinstance(raw_uris, str) else raw_uris if isinstance(raw_uris, list) else []
    lines = [line for uri in uris if isinstance(uri, str) for line in uri.splitlines()]
    name, scopes, website = data.get("client_name"), data.get("scopes"), data.get("website")
    app, secret = await oauth.register_app(
        services(request),
        name if isinstance(name, str) else "",
        lines,
        scopes if isinstance(scopes, str) else None,
        website if isinstance(website, str) else None,
        request.client.host if request.client else "unknown",
    )
    body = _application(app, request) | {
        "client_id": app.client_id,
        "client_secret": secret,
        "client_secret_expires_at": 0,
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@operation("Verify the app's credentials", ref("Application"))
async def verify_app(request: Request) -> Response:
    grant = await api_grant(request, None)
    if grant is None:
        raise Unauthorized("The access token is invalid")
    app = await oauth.app_by_id(services(request), grant.app_id) if grant.app_id else None
    if app is None:
        raise NotFound("This token was made with the command line, not by an app")
    return JSONResponse(_application(app, request))


# -- the consent page


def _form_action(redirect_uri: str) -> str:
    """The CSP ``form-action`` of the consent page: the form posts here and is redirected to the app."""
    if redirect_uri == oauth.OOB:
        return "'self'"
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        return f"'self' {parts.scheme}://{parts.netloc}"
    return f"'self' {parts.scheme}:"


def _error_page(request: Request, error: OAuth2Error) -> Response:
    message = error.description or error.error.replace("_", " ")
    return render(request, "error.html", {"status": 400, "message": f"This app's sign-in request is not valid: "
                                                                   f"{message}"}, status=400)  # fmt: skip


async def authorize_page(request: Request) -> Response:
    """Shows the app, the scopes it asks for and where it goes next; logs the person in first if needed."""
    params = {k: v for k, v in request.query_params.items() if k in AUTHORIZE_PARAMS}
    user = await viewer(request)
    try:
        grant = await _in_thread(server(request).get_consent_grant, _req(request, params), user)
    except OAuth2Error as error:
        return _error_page(request, error)
    if user is None:
        here = request.url.path + "?" + request.url.query
        return see_other(f"/login?next={quote(here, safe='')}")
    client: Client = grant.request.client
    scopes = (client.get_allowed_scope(params.get("scope")) or "").split()
    redirect_uri = grant.redirect_uri
    response = render(
        request,
        "authorize.html",
        {
            "app": client.app,
            "scopes": [(scope, oauth.DESCRIPTIONS.get(scope, scope.replace(":", ": "))) for scope in scopes],
            "params": params,
            "out_of_band": redirect_uri == oauth.OOB,
            "target": urlsplit(redirect_uri).netloc or redirect_uri,
        },
    )
    response.headers["Content-Security-Policy"] = _csp(_form_action(redirect_uri))
    return response


def _csp(form_action: str) -> str:
    return CSP.replace("form-action 'self'", f"form-action {form_action}")


async def authorize(request: Request) -> Response:
    """The person's answer on the consent page: a code for the app (by redirect, or shown for out-of-band apps),
    or ``access_denied``."""
    form = await read_form(request)
    user = await viewer(request)
    if user is None:
        raise Unauthorized("Log in to authorise an app")
    params = {k: v for k, v in form.items() if k in AUTHORIZE_PARAMS}
    approved = form.get("decision") == "approve"
    oauth_server = server(request)

    def decide(req: Req) -> Answer:
        grant = oauth_server.get_consent_grant(req, user)
        answer: Answer = oauth_server.create_authorization_response(req, user if approved else None, grant)
        return answer

    try:
        answer = await _in_thread(decide, _req(request, params))
    except OAuth2Error as error:
        return _error_page(request, error)
    location = answer.headers.get("Location", "")
    if location.startswith(oauth.OOB):
        query = parse_qs(urlsplit(location).query)
        code = query.get("code", [""])[0]
        return render(request, "authorized.html", {"code": code, "denied": not code})
    if answer.status >= 400 or not location:
        return render(request, "error.html", {"status": answer.status, "message": "The app could not be authorised"},
                      status=answer.status)  # fmt: skip
    return RedirectResponse(location, status_code=303)


# -- token, revocation, metadata


async def token(request: Request) -> Response:
    data = await read_body(request)
    params = {k: str(v) for k, v in data.items() if isinstance(v, str | int) and not isinstance(v, bool)}
    try:
        answer = await _in_thread(server(request).create_token_response, _req(request, params))
    except RateLimited as exc:
        return JSONResponse({"error": "rate_limited", "error_description": exc.message}, status_code=429,
                            headers={"Retry-After": str(exc.retry_after)})  # fmt: skip
    return _json(answer)


async def revoke(request: Request) -> Response:
    data = await read_body(request)
    params = {k: v for k, v in data.items() if isinstance(v, str)}
    answer = await _in_thread(server(request).create_endpoint_response, "revocation", _req(request, params))
    return _json(answer)


def metadata(base: str) -> dict[str, Any]:
    """RFC 8414 authorization server metadata (with Mastodon's ``app_registration_endpoint``)."""
    return {
        "issuer": f"{base}/",
        "service_documentation": "https://docs.joinmastodon.org/",
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "app_registration_endpoint": f"{base}/api/v1/apps",
        "scopes_supported": list(oauth.SUPPORTED),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "code_challenge_methods_supported": ["S256"],
    }


async def server_metadata(request: Request) -> Response:
    return JSONResponse(metadata(str(request.base_url).rstrip("/")))
