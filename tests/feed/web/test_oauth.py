"""OAuth 2 as Mastodon apps use it: registration, the consent page, the code (with and without PKCE, redirected or
shown out of band), client credentials, the password grant, scopes on every endpoint, revocation and the settings
page's authorised apps."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from feed.app import create_app
from feed.settings import load_settings
from feed.storage.tables import oauth_apps, oauth_codes
from tests.conftest import PASSWORD, Browser, browser_factory, client_for, snapshot

pytestmark = pytest.mark.anyio


@pytest.fixture
async def make_browser(app: Any, clean: None) -> AsyncIterator[Any]:
    """Browsers over HTTPS: OAuth runs over TLS (or on a loopback address), as Authlib and RFC 6749 require."""
    clients: list[httpx.AsyncClient] = []
    yield browser_factory(app, clients, base_url="https://testserver")
    for http in clients:
        await http.aclose()


REDIRECT = "https://app.example/callback"
OOB = "urn:ietf:wg:oauth:2.0:oob"


async def register(http: httpx.AsyncClient, scopes: str = "read write follow", **extra: str) -> dict[str, Any]:
    response = await http.post(
        "/api/v1/apps",
        data={
            "client_name": "Tusky test",
            "redirect_uris": f"{REDIRECT}\n{OOB}",
            "scopes": scopes,
            "website": "https://app.example",
        }
        | extra,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def authorize_url(app: dict[str, Any], redirect: str = REDIRECT, scope: str = "read write", **extra: str) -> str:
    query = {"response_type": "code", "client_id": app["client_id"], "redirect_uri": redirect, "scope": scope}
    return "/oauth/authorize?" + urlencode(query | extra)


async def consent(browser: Browser, url: str, decision: str = "approve") -> httpx.Response:
    """Open the consent page as the browser would and press a button; the response to that press."""
    page = await browser.get(url)
    assert page.status_code == 200, page.text
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    fields.pop("csrf_token", None)
    return await browser.post(
        "/oauth/authorize", {k: html.unescape(v) for k, v in fields.items()} | {"decision": decision}
    )


async def code_from(response: httpx.Response, redirect: str = REDIRECT) -> str:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(redirect + "?")
    return parse_qs(urlsplit(location).query)["code"][0]


async def exchange(
    http: httpx.AsyncClient, app: dict[str, Any], code: str, redirect: str = REDIRECT, **extra: str
) -> httpx.Response:
    return await http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": app["client_id"],
            "client_secret": app["client_secret"],
            "redirect_uri": redirect,
        }
        | extra,
    )


def bearer(app_: Any, token: str) -> httpx.AsyncClient:
    return client_for(app_, base_url="https://testserver", headers={"Authorization": f"Bearer {token}"})


async def test_an_app_registers_is_authorised_and_acts_for_its_user(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    anonymous = await make_browser()
    registered = await register(anonymous.http)
    assert registered["name"] == "Tusky test" and registered["website"] == "https://app.example"
    assert registered["redirect_uris"] == [REDIRECT, OOB] and registered["redirect_uri"] == f"{REDIRECT}\n{OOB}"
    assert registered["scopes"] == ["read", "write", "follow"]
    assert registered["client_secret_expires_at"] == 0 and isinstance(registered["vapid_key"], str)
    assert len(registered["client_id"]) >= 32 and len(registered["client_secret"]) >= 32

    url = authorize_url(registered, state="xyz-123")
    away = await anonymous.get(url)  # not logged in: log in first, then come back here
    assert away.status_code == 303, away.text[-600:]
    assert away.headers["location"].startswith("/login?next=%2Foauth%2Fauthorize%3F")

    page = await alice.get(url)
    assert "Tusky test" in page.text and "@alice" in page.text and "app.example" in page.text
    assert "read everything your account can see" in page.text
    assert "form-action 'self' https://app.example" in page.headers["content-security-policy"]
    answer = await consent(alice, url)
    assert parse_qs(urlsplit(answer.headers["location"]).query)["state"] == ["xyz-123"]
    code = await code_from(answer)

    token = await exchange(anonymous.http, registered, code)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "read write" and isinstance(body["created_at"], int)
    assert token.headers["cache-control"] == "no-store"
    again = await exchange(anonymous.http, registered, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", "a code works once"

    async with bearer(app, body["access_token"]) as http:
        me = await http.get("/api/v1/accounts/verify_credentials")
        assert me.status_code == 200 and me.json()["username"] == "alice"
        posted = await http.post("/api/v1/statuses", data={"status": "from the app"})
        assert posted.status_code == 200
        mine = await http.get("/api/v1/apps/verify_credentials")
        assert mine.status_code == 200 and mine.json()["name"] == "Tusky test"
        assert "client_secret" not in mine.json()


async def test_codes_are_bound_to_their_app_redirect_and_time(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    first, second = await register(alice.http), await register(alice.http)
    code = await code_from(await consent(alice, authorize_url(first)))
    other_app = await exchange(alice.http, second, code)
    assert other_app.status_code == 400 and other_app.json()["error"] == "invalid_grant"
    code = await code_from(await consent(alice, authorize_url(first)))
    wrong_redirect = await exchange(alice.http, first, code, redirect=OOB)
    assert wrong_redirect.status_code == 400 and wrong_redirect.json()["error"] == "invalid_grant"
    code = await code_from(await consent(alice, authorize_url(first)))
    bad_secret = await exchange(alice.http, first | {"client_secret": "nope"}, code)
    assert bad_secret.status_code in (400, 401) and bad_secret.json()["error"] == "invalid_client"
    # An expired code is refused however it is presented.
    code = await code_from(await consent(alice, authorize_url(first)))
    async with app.state.engine.begin() as conn:
        await conn.execute(oauth_codes.update().values(expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
    expired = await exchange(alice.http, first, code)
    assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"


async def test_the_consent_page_refuses_bad_requests_without_redirecting(make_browser: Any) -> None:
    alice = await make_browser("alice")
    registered = await register(alice.http, scopes="read")
    for url in (
        authorize_url(registered, redirect="https://evil.example/cb"),  # not registered: never redirected to
        authorize_url(registered | {"client_id": "unknown"}),
        authorize_url(registered, scope="read write"),  # more than the app registered
        authorize_url(registered, scope="admin:read"),
        authorize_url(registered, code_challenge="x" * 43, code_challenge_method="plain"),
    ):
        page = await alice.get(url)
        assert page.status_code == 400, url
        assert "location" not in page.headers and "not valid" in page.text
    denied = await consent(alice, authorize_url(registered, scope="read", state="s"), decision="deny")
    assert denied.status_code == 303
    query = parse_qs(urlsplit(denied.headers["location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["s"] and "code" not in query


def oob_code(page: httpx.Response) -> str:
    found = re.search(r'id="oauth-code">([^<]+)<', page.text)
    assert found, page.text
    return found.group(1)


async def test_pkce_s256_and_the_out_of_band_code(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    registered = await register(alice.http)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    url = authorize_url(registered, redirect=OOB, code_challenge=challenge, code_challenge_method="S256")
    page = await consent(alice, url)
    assert page.status_code == 200 and "paste it into the app" in page.text
    code = oob_code(page)
    missing = await exchange(alice.http, registered, code, redirect=OOB)
    assert missing.status_code == 400, "a code made with a challenge needs its verifier"
    page = await consent(alice, url)
    code = oob_code(page)
    wrong = await exchange(alice.http, registered, code, redirect=OOB, code_verifier=secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    page = await consent(alice, url)
    code = oob_code(page)
    right = await exchange(alice.http, registered, code, redirect=OOB, code_verifier=verifier)
    assert right.status_code == 200, right.text
    denied = await consent(alice, url, decision="deny")
    assert denied.status_code == 200 and "Not authorised" in denied.text


async def test_client_credentials_and_password_grants(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    registered = await register(alice.http)
    creds = {"client_id": registered["client_id"], "client_secret": registered["client_secret"]}
    app_token = await alice.http.post("/oauth/token", data={"grant_type": "client_credentials"} | creds)
    assert app_token.status_code == 200 and app_token.json()["scope"] == "read"
    async with bearer(app, app_token.json()["access_token"]) as http:
        assert (await http.get("/api/v1/apps/verify_credentials")).json()["name"] == "Tusky test"
        assert (await http.get("/api/v1/timelines/public")).status_code == 200
        needs_user = await http.get("/api/v1/accounts/verify_credentials")
        assert needs_user.status_code == 422
        assert needs_user.json() == {"error": "This method requires an authenticated user"}
    basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
    by_header = await alice.http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
    )
    assert by_header.status_code == 200

    password = {"grant_type": "password", "username": "alice", "password": PASSWORD, "scope": "read write"}
    user_token = await alice.http.post("/oauth/token", data=password | creds)
    assert user_token.status_code == 200 and user_token.json()["scope"] == "read write"
    async with bearer(app, user_token.json()["access_token"]) as http:
        assert (await http.get("/api/v1/accounts/verify_credentials")).json()["username"] == "alice"
    wrong = await alice.http.post("/oauth/token", data=password | creds | {"password": "not it"})
    assert wrong.status_code == 400 and "access_token" not in wrong.json()
    too_much = await alice.http.post("/oauth/token", data=password | creds | {"scope": "push"})
    assert too_much.status_code == 400 and too_much.json()["error"] == "invalid_scope"


async def test_the_password_grant_is_throttled_like_the_login_form(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    registered = await register(alice.http)
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": "wrong password",
        "scope": "read",
        "client_id": registered["client_id"],
        "client_secret": registered["client_secret"],
    }
    statuses = [(await alice.http.post("/oauth/token", data=form)).status_code for _ in range(12)]
    assert statuses[0] == 400 and 429 in statuses, statuses
    limited = await alice.http.post("/oauth/token", data=form | {"password": PASSWORD})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0, "even the right password waits"


SCOPED = [  # (method, path, what a token needs) for endpoints that act for a user
    ("POST", "/api/v1/statuses", "write:statuses"),
    ("POST", "/api/v1/statuses/{post}/favourite", "write:favourites"),
    ("POST", "/api/v1/statuses/{post}/unfavourite", "write:favourites"),
    ("POST", "/api/v1/statuses/{post}/bookmark", "write:bookmarks"),
    ("POST", "/api/v1/statuses/{post}/unbookmark", "write:bookmarks"),
    ("GET", "/api/v1/bookmarks", "read:bookmarks"),
    ("PUT", "/api/v1/statuses/{post}", "write:statuses"),
    ("DELETE", "/api/v1/statuses/{post}", "write:statuses"),
    ("POST", "/api/v1/accounts/{bob}/follow", "write:follows"),
    ("POST", "/api/v1/accounts/{bob}/unfollow", "write:follows"),
    ("POST", "/api/v1/markers", "write:statuses"),
    ("GET", "/api/v1/timelines/home", "read:statuses"),
    ("GET", "/api/v1/timelines/public", "read:statuses"),
    ("GET", "/api/v1/statuses/{post}", "read:statuses"),
    ("GET", "/api/v1/statuses/{post}/context", "read:statuses"),
    ("GET", "/api/v1/statuses/{post}/source", "read:statuses"),
    ("GET", "/api/v1/accounts/{bob}", "read:accounts"),
    ("GET", "/api/v1/accounts/{bob}/statuses", "read:statuses"),
    ("GET", "/api/v1/accounts/{bob}/followers", "read:accounts"),
    ("GET", "/api/v1/accounts/{bob}/following", "read:accounts"),
    ("GET", "/api/v1/accounts/relationships?id={bob}", "read:follows"),
    ("GET", "/api/v1/accounts/search?q=bob", "read:accounts"),
    ("GET", "/api/v2/search?q=bob", "read:search"),
    ("GET", "/api/v1/accounts/lookup?acct=bob", "read:accounts"),
    ("GET", "/api/v1/preferences", "read:accounts"),
    ("GET", "/api/v1/markers?timeline[]=home", "read:statuses"),
    ("GET", "/api/v1/filters", "read:filters"),
    ("GET", "/api/v2/filters", "read:filters"),
    ("GET", "/api/v1/lists", "read:lists"),
    ("GET", "/api/v1/follow_requests", "read:follows"),
    ("GET", "/api/v1/blocks", "read:blocks"),
    ("GET", "/api/v1/mutes", "read:mutes"),
    ("POST", "/api/v1/accounts/{bob}/block", "write:blocks"),
    ("POST", "/api/v1/accounts/{bob}/unblock", "write:blocks"),
    ("POST", "/api/v1/accounts/{bob}/mute", "write:mutes"),
    ("POST", "/api/v1/accounts/{bob}/unmute", "write:mutes"),
    ("GET", "/api/v1/notifications", "read:notifications"),
    ("GET", "/api/v1/notifications/unread_count", "read:notifications"),
    ("GET", "/api/v2/notifications", "read:notifications"),
    ("POST", "/api/v1/notifications/clear", "write:notifications"),
    ("GET", "/api/v1/announcements", "read"),
]


async def _token(app: Any, browser: Browser, scope: str) -> str:
    registered = await register(browser.http, scopes=scope)
    code = await code_from(await consent(browser, authorize_url(registered, scope=scope)))
    answer = await exchange(browser.http, registered, code)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def test_every_endpoint_checks_the_scope_it_needs(app: Any, make_browser: Any) -> None:
    alice, bob = await make_browser("alice"), await make_browser("bob")
    post = await bob.compose("bob's post")
    bob_id = (await alice.http.get("/api/v1/accounts/lookup?acct=bob")).json()["id"]
    tokens = {scope: await _token(app, alice, scope) for scope in ("profile", "read", "write", "follow")}
    tokens["granular"] = await _token(app, alice, "read:accounts write:statuses")
    for method, template, needed in SCOPED:
        path = template.format(post=post, bob=bob_id)
        for name, token in tokens.items():
            granted = name.split() if name != "granular" else ["read:accounts", "write:statuses"]
            allowed = any(
                g == needed
                or needed.startswith(g + ":")
                or (g == "follow" and needed.partition(":")[2] in ("follows", "blocks", "mutes"))  # Mastodon's "follow"
                for g in granted
            )
            async with bearer(app, token) as http:
                answer = await http.request(method, path, data={"status": "x"} if method in ("POST", "PUT") else None)
            if allowed:
                assert answer.status_code != 403, (method, path, name, answer.text)
            else:
                assert answer.status_code == 403, (method, path, name, answer.status_code)
                assert answer.json() == {"error": "This action is outside the authorized scopes"}
    async with bearer(app, tokens["profile"]) as http:
        assert (await http.get("/api/v1/accounts/verify_credentials")).status_code == 200, "profile is for this"


async def test_revocation_ends_a_token_at_once(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    registered = await register(alice.http)
    code = await code_from(await consent(alice, authorize_url(registered)))
    token = (await exchange(alice.http, registered, code)).json()["access_token"]
    other = await register(alice.http)
    async with bearer(app, token) as http:
        assert (await http.get("/api/v1/timelines/home")).status_code == 200  # cached as valid now
        creds = {"client_id": other["client_id"], "client_secret": other["client_secret"], "token": token}
        assert (await alice.http.post("/oauth/revoke", data=creds)).status_code == 200
        assert (await http.get("/api/v1/timelines/home")).status_code == 200, "another app cannot revoke it"
        creds |= {"client_id": registered["client_id"], "client_secret": registered["client_secret"]}
        revoked = await alice.http.post("/oauth/revoke", data=creds)
        assert revoked.status_code == 200 and revoked.json() == {}
        gone = await http.get("/api/v1/timelines/home")
        assert gone.status_code == 401 and gone.json() == {"error": "The access token is invalid"}
        unknown = await alice.http.post("/oauth/revoke", data=creds | {"token": "never-issued"})
        assert unknown.status_code == 200, "RFC 7009: an unknown token is no error"
        bad_client = await alice.http.post("/oauth/revoke", data=creds | {"client_secret": "wrong"})
        assert bad_client.status_code in (400, 401) and bad_client.json()["error"] == "invalid_client"


async def test_the_settings_page_lists_authorised_apps_and_revokes_them(app: Any, make_browser: Any) -> None:
    alice, bob = await make_browser("alice"), await make_browser("bob")
    registered = await register(alice.http)
    token = await _token(app, alice, "read write")
    bob_token = await _token(app, bob, "read")
    settings = await alice.get("/settings")
    assert "Authorised apps" in settings.text and "Tusky test" in settings.text and "read, write" in settings.text
    app_ids = re.findall(r'action="/settings/apps/(\d+)/revoke"', settings.text)
    assert len(app_ids) == 1
    stranger = await bob.post(f"/settings/apps/{app_ids[0]}/revoke")
    assert stranger.status_code == 404, "bob's own tokens of another app are not this one"
    revoked = await alice.post(f"/settings/apps/{app_ids[0]}/revoke")
    assert revoked.status_code == 303 and revoked.headers["location"].startswith("/settings?notice=revoked")
    async with bearer(app, token) as http:
        assert (await http.get("/api/v1/timelines/home")).status_code == 401
    async with bearer(app, bob_token) as http:
        assert (await http.get("/api/v1/timelines/home")).status_code == 200, "bob's token of his app is his"
    assert "No app has access" in (await alice.get("/settings")).text
    assert registered["client_id"]


async def test_registration_rejects_bad_input(make_browser: Any) -> None:
    anonymous = await make_browser()
    cases = [
        ({"client_name": "", "redirect_uris": REDIRECT}, "client_name"),
        ({"client_name": "x", "redirect_uris": ""}, "redirect_uris"),
        ({"client_name": "x", "redirect_uris": "not a uri"}, "redirect_uris"),
        ({"client_name": "x", "redirect_uris": "https://a.example/cb#frag"}, "redirect_uris"),
        ({"client_name": "x", "redirect_uris": "javascript:alert(1)"}, "redirect_uris"),
        ({"client_name": "x", "redirect_uris": REDIRECT, "scopes": "read admin:write"}, "scope"),
        ({"client_name": "x", "redirect_uris": REDIRECT, "website": "ftp://a.example"}, "website"),
    ]
    for form, word in cases:
        answer = await anonymous.http.post("/api/v1/apps", data=form)
        assert answer.status_code == 422, (form, answer.text)
        assert word.split("_")[0] in answer.json()["error"].lower(), answer.json()
    json_app = await anonymous.http.post(
        "/api/v1/apps", json={"client_name": "json", "redirect_uris": [REDIRECT, OOB], "scopes": "read"}
    )
    assert json_app.status_code == 200 and json_app.json()["redirect_uris"] == [REDIRECT, OOB]
    assert (await anonymous.http.post("/oauth/token", data={"grant_type": "magic"})).status_code in (400, 401)


async def test_app_registrations_are_throttled_per_address(env: dict[str, str], clean: None) -> None:
    """Past CIPHERFEED_APPS_PER_IP registrations from one address in a window, the next waits (a 429 with
    Retry-After, and no app stored); another address is not slowed down, and a refused form is not counted."""
    application = create_app(load_settings({**env, "CIPHERFEED_APPS_PER_IP": "2"}))

    def client(ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=application, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="https://testserver")

    form = {"client_name": "spammy", "redirect_uris": REDIRECT}
    async with application.router.lifespan_context(application), client("203.0.113.7") as http:
        async with client("198.51.100.9") as elsewhere:
            assert (
                await http.post("/api/v1/apps", data={"client_name": "", "redirect_uris": REDIRECT})
            ).status_code == 422
            # Past the limit each further one waits 1, 2, 4 ... seconds after the one before: one comes too soon.
            taken = 0
            while (answer := await http.post("/api/v1/apps", data=form)).status_code == 200:
                taken += 1
                before = await app_count(application)
                assert taken < 6, "never slowed down"
            assert answer.status_code == 429 and taken >= 2, (answer.status_code, taken)  # the first two are not
            assert int(answer.headers["retry-after"]) > 0 and "Too many apps" in answer.json()["error"]
            assert await app_count(application) == before, "a refused registration stores nothing"
            assert (await elsewhere.post("/api/v1/apps", data=form)).status_code == 200


async def app_count(application: Any) -> int:
    async with application.state.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(oauth_apps))).scalar_one())


async def test_metadata_and_cross_origin_use(app: Any, make_browser: Any) -> None:
    anonymous = await make_browser()
    found = await anonymous.http.get("/.well-known/oauth-authorization-server")
    assert found.status_code == 200
    data = found.json()
    AuthorizationServerMetadata(data).validate()  # RFC 8414, checked by Authlib
    assert data["token_endpoint"].endswith("/oauth/token") and "S256" in data["code_challenge_methods_supported"]
    assert {"authorization_code", "password", "client_credentials"} <= set(data["grant_types_supported"])
    assert found.headers["access-control-allow-origin"] == "*"
    # A browser-based client on another origin can register and exchange codes (no cookie is involved).
    foreign = {"Origin": "https://elk.example", "Sec-Fetch-Site": "cross-site"}
    registered = await anonymous.http.post(
        "/api/v1/apps", data={"client_name": "web", "redirect_uris": REDIRECT}, headers=foreign
    )
    assert registered.status_code == 200
    creds = {"client_id": registered.json()["client_id"], "client_secret": registered.json()["client_secret"]}
    token = await anonymous.http.post(
        "/oauth/token", data={"grant_type": "client_credentials"} | creds, headers=foreign
    )
    assert token.status_code == 200 and token.headers["access-control-allow-origin"] == "*"
    # The consent form is a page: a cross-site post to it is refused.
    assert (await anonymous.http.post("/oauth/authorize", data={}, headers=foreign)).status_code == 403


async def test_secrets_are_stored_only_as_keyed_hashes(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    registered = await register(alice.http)
    code = await code_from(await consent(alice, authorize_url(registered)))
    pending = await code_from(await consent(alice, authorize_url(registered)))
    token = (await exchange(alice.http, registered, code)).json()["access_token"]
    dump = repr(await snapshot(app))
    for secret in (registered["client_secret"], pending, token):
        assert secret not in dump
