"""Sign-up, login, sessions, settings and login throttling, through real HTTP requests to the app."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crypto import blind_index
from feed.app import create_app
from feed.services.accounts import LOGIN_ERROR
from feed.settings import load_settings
from feed.storage import tables
from tests.conftest import CSRF_RE, PASSWORD, snapshot

pytestmark = pytest.mark.anyio

ORIGIN = {"Origin": "http://testserver"}


async def count(app: Any, table: sa.Table) -> int:
    async with app.state.engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def user_row(app: Any, username: str) -> Any:
    async with app.state.engine.connect() as conn:
        query = sa.select(tables.users).where(tables.users.c.username_lower == username.lower())
        return (await conn.execute(query)).first()


def session_cookie(browser: Any, name: str = "cf_session") -> str:
    value = browser.http.cookies.get(name)
    assert value, f"no {name} cookie"
    return str(value)


def set_cookie_headers(response: httpx.Response, name: str) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]


async def register(browser: Any, username: str, password: str = PASSWORD, **fields: str) -> httpx.Response:
    data = {"username": username, "password": password, "password_confirm": password, "email": "", **fields}
    return await browser.post("/register", data)


async def login(browser: Any, username: str, password: str = PASSWORD) -> httpx.Response:
    if not browser.csrf:
        await browser.get("/login")
    return await browser.post("/login", {"username": username, "password": password})


async def is_logged_in(browser: Any) -> bool:
    response = await browser.http.get("/settings")
    if response.status_code == 200:
        return True
    assert response.status_code == 303 and response.headers["location"].startswith("/login"), response
    return False


# -- registration


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("", "Username can&#39;t be blank"),
        ("a" * 31, "Username must be 1 to 30 letters, digits or underscores"),
        ("al ice", "Username must be 1 to 30 letters, digits or underscores"),
        ("al-ice", "Username must be 1 to 30 letters, digits or underscores"),
        ("ålice", "Username must be 1 to 30 letters, digits or underscores"),
        ("\uff41lice", "Username must be 1 to 30 letters, digits or underscores"),  # fullwidth a
        ("al\x00ice", "Username must be 1 to 30 letters, digits or underscores"),
        ("admin", "That username is reserved"),
        ("Root", "That username is reserved"),
        ("settings", "That username is reserved"),
    ],
)
async def test_register_refuses_bad_usernames(make_browser, app, username, message):
    browser = await make_browser()
    await browser.get("/register")
    response = await register(browser, username)
    assert response.status_code == 422
    assert message in response.text
    assert 'aria-invalid="true"' in response.text
    assert await count(app, tables.users) == 0
    assert await count(app, tables.sessions) == 0


async def test_register_accepts_usernames_of_1_and_30_characters(make_browser, app):
    for name in ("q", "Z_9" * 10):
        browser = await make_browser()
        await browser.get("/register")
        response = await register(browser, name)
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/?notice=welcome"
        home = await browser.get("/")
        assert f'href="/@{name}"' in home.text
    assert await count(app, tables.users) == 2


async def test_username_is_unique_case_insensitively(make_browser, app):
    await make_browser("alice")
    before = await snapshot(app)
    browser = await make_browser()
    await browser.get("/register")
    response = await register(browser, "Alice")
    assert response.status_code == 422
    assert "That username is taken" in response.text
    assert 'value="Alice"' in response.text  # the form keeps what was typed
    assert PASSWORD not in response.text  # but never echoes the password
    assert await snapshot(app) == before
    assert "cf_session" not in browser.http.cookies


@pytest.mark.parametrize(
    ("password", "confirm", "message"),
    [
        ("", "", "Password can&#39;t be blank"),
        ("short pw", "short pw", "Password must be at least 10 characters"),
        ("x" * 1025, "x" * 1025, "Password must be at most 1024 characters"),
        ("password123", "password123", "That password is too easy to guess: it is one of the most common"),
        ("ababababababab", "ababababababab", "That password is too easy to guess: it repeats too few characters"),
        ("dorothea-1990-rules", "dorothea-1990-rules", "too easy to guess: it must not contain your username"),
        (PASSWORD, PASSWORD + "!", "The two passwords differ"),
        (PASSWORD, "", "The two passwords differ"),
    ],
)
async def test_register_refuses_weak_missing_and_mismatched_passwords(make_browser, app, password, confirm, message):
    browser = await make_browser()
    await browser.get("/register")
    response = await register(browser, "dorothea", password, password_confirm=confirm)
    assert response.status_code == 422
    assert message in response.text
    assert 'value="dorothea"' in response.text
    if password:
        assert password not in response.text
    for table in (tables.users, tables.user_keys, tables.sessions):
        assert await count(app, table) == 0


async def test_email_is_sealed_with_a_blind_index(make_browser, app):
    alice = await make_browser("alice", email="  Alice.Person@Example.COM ")
    row = await user_row(app, "alice")
    assert row.email_sealed is not None
    for plain in (b"Alice.Person@Example.COM", b"alice.person@example.com", b"alice.person", b"example.com"):
        assert plain not in row.email_sealed
        assert plain.decode() not in repr(tuple(row))
    assert isinstance(row.email_index, bytes) and len(row.email_index) == 32
    svc = app.state.services
    assert row.email_index == svc.keys.ring.blind_index("email", "alice.person@example.com")  # from the root key
    assert row.email_index_version == svc.keys.ring.primary
    assert row.email_index != blind_index(svc.secrets.secret_index_key, "alice.person@example.com")
    assert row.email_index != hashlib.sha256(b"alice.person@example.com").digest()  # keyed, not a bare hash
    settings = await alice.get("/settings")
    assert 'value="alice.person@example.com"' in settings.text

    await make_browser("bob")
    row = await user_row(app, "bob")
    assert row.email_sealed is None and row.email_index is None


async def test_duplicate_email_is_refused_case_insensitively(make_browser, app):
    await make_browser("alice", email="alice@example.com")
    before = await snapshot(app)
    browser = await make_browser()
    await browser.get("/register")
    response = await register(browser, "bob", email="ALICE@Example.com")
    assert response.status_code == 422
    assert "That email address is already registered" in response.text
    assert 'value="bob"' in response.text
    assert await snapshot(app) == before

    bob = await make_browser("bob", email="bob@example.com")
    before = await snapshot(app)
    response = await bob.post("/settings", {"display_name": "", "bio": "", "email": "Alice@EXAMPLE.com"})
    assert response.status_code == 422
    assert "That email address is already registered" in response.text
    assert await snapshot(app) == before


async def test_register_refuses_a_malformed_email(make_browser, app):
    browser = await make_browser()
    await browser.get("/register")
    response = await register(browser, "carol", email="not-an-address")
    assert response.status_code == 422
    assert "That is not an email address" in response.text
    assert await count(app, tables.users) == 0


# -- login, logout and the session cookie


async def test_login_and_logout(make_browser, app):
    await make_browser("alice")
    browser = await make_browser()
    await browser.get("/login")
    assert not await is_logged_in(browser)
    response = await login(browser, "alice", "not the password")
    assert response.status_code == 401
    assert LOGIN_ERROR in response.text
    assert not await is_logged_in(browser)

    response = await browser.post("/login", {"username": "ALICE", "password": PASSWORD, "next": "/public"})
    assert response.status_code == 303
    assert response.headers["location"] == "/public"
    assert await is_logged_in(browser)
    assert '<form method="post" action="/logout"' in (await browser.get("/")).text

    response = await browser.post("/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?notice=loggedout"
    assert not await is_logged_in(browser)
    assert "Create an account" in (await browser.get("/")).text


async def test_login_refuses_an_offsite_next(make_browser):
    await make_browser("alice")
    browser = await make_browser()
    await browser.get("/login")
    response = await browser.post("/login", {"username": "alice", "password": PASSWORD, "next": "//evil.example/"})
    assert response.status_code == 303
    assert response.headers["location"] == "/"


async def test_session_cookie_flags_over_http(make_browser):
    await make_browser("alice")
    browser = await make_browser()
    await browser.get("/login")
    response = await login(browser, "alice")
    assert response.status_code == 303
    [cookie] = set_cookie_headers(response, "cf_session")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert "httponly" in attributes
    assert re.search(r";\s*samesite=lax", cookie, re.IGNORECASE)
    assert re.search(r";\s*path=/(;|$)", cookie, re.IGNORECASE)
    assert "secure" not in attributes
    assert "domain" not in attributes
    assert not set_cookie_headers(response, "__Host-cf_session")


async def test_session_cookie_over_https_is_host_prefixed_and_secure(app, clean):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver") as http:
        page = await http.get("/register")
        [anon] = set_cookie_headers(page, "__Host-cf_anon")
        assert re.search(r";\s*secure", anon, re.IGNORECASE)
        assert "Strict-Transport-Security" in page.headers
        csrf = CSRF_RE.search(page.text)
        assert csrf
        form = {"csrf_token": csrf.group(1), "username": "alice", "password": PASSWORD, "password_confirm": PASSWORD}
        response = await http.post("/register", data=form, headers={"Origin": "https://testserver"})
        assert response.status_code == 303, response.text
        [cookie] = set_cookie_headers(response, "__Host-cf_session")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly"} <= attributes
        assert "domain" not in attributes
        assert re.search(r";\s*samesite=lax", cookie, re.IGNORECASE)
        assert re.search(r";\s*path=/(;|$)", cookie, re.IGNORECASE)
        assert not set_cookie_headers(response, "cf_session")
        assert (await http.get("/settings")).status_code == 200
        # An http-only (non-prefixed) cookie is not honoured over https.
        token = http.cookies.get("__Host-cf_session")
        assert token
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver") as other:
        other.cookies.set("cf_session", token)
        assert (await other.get("/settings")).status_code == 303


async def test_only_the_hash_of_the_session_cookie_is_stored(make_browser, app):
    alice = await make_browser("alice")
    token = session_cookie(alice)
    async with app.state.engine.connect() as conn:
        hashes = (await conn.execute(sa.select(tables.sessions.c.id_hash))).scalars().all()
    key = app.state.services.secrets.token_key
    assert hashes == [hmac.new(key, token.encode(), hashlib.sha256).digest()]  # keyed: a copy cannot test guesses
    assert hashes != [hashlib.sha256(token.encode()).digest()]
    dump = repr(await snapshot(app))
    assert token not in dump
    assert repr(token.encode()) not in dump


async def test_session_id_is_rotated_at_login(make_browser, app):
    alice = await make_browser("alice")
    first = session_cookie(alice)
    response = await login(alice, "alice")
    assert response.status_code == 303
    second = session_cookie(alice)
    assert second != first
    assert await is_logged_in(alice)
    # The session this browser had before is over, not left alive beside the new one.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as replay:
        replay.cookies.set("cf_session", first)
        assert (await replay.get("/settings")).status_code == 303
    assert await count(app, tables.sessions) == 1

    # A cookie planted before login (session fixation) is never adopted.
    browser = await make_browser()
    browser.http.cookies.set("cf_session", "planted-by-someone-else", domain="testserver.local")
    await browser.get("/login")
    response = await login(browser, "alice")
    assert response.status_code == 303
    assert session_cookie(browser) not in ("planted-by-someone-else", first, second)
    assert await is_logged_in(browser)


async def test_logout_deletes_the_server_side_session(make_browser, app):
    alice = await make_browser("alice")
    token = session_cookie(alice)
    digest = hashlib.sha256(token.encode()).digest()
    response = await alice.post("/logout")
    assert response.status_code == 303
    assert any("cf_session=" in h and "max-age=0" in h.lower() for h in response.headers.get_list("set-cookie"))
    async with app.state.engine.connect() as conn:
        left = await conn.scalar(sa.select(sa.func.count()).where(tables.sessions.c.id_hash == digest))
    assert left == 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as replay:
        replay.cookies.set("cf_session", token)
        response = await replay.get("/settings")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")
        assert "Create an account" in (await replay.get("/")).text


async def test_pages_that_need_a_login_redirect_to_it(make_browser):
    browser = await make_browser()
    response = await browser.get("/settings")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/settings"
    assert "expired" not in response.headers["location"]


# -- settings


async def test_settings_saves_display_name_bio_and_email(make_browser, app):
    alice = await make_browser("alice", email="old@example.com")
    old_index = (await user_row(app, "alice")).email_index
    response = await alice.post(
        "/settings", {"display_name": "Alice Liddell", "bio": "Down the\nrabbit hole", "email": "New@Example.com"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/settings?notice=saved"
    page = await alice.get("/settings?notice=saved")
    assert "Your profile is saved." in page.text
    assert 'value="Alice Liddell"' in page.text
    assert ">Down the\nrabbit hole</textarea>" in page.text
    assert 'value="new@example.com"' in page.text
    row = await user_row(app, "alice")
    assert (row.display_name, row.bio) == ("Alice Liddell", "Down the\nrabbit hole")
    assert row.email_index == app.state.services.keys.ring.blind_index("email", "new@example.com") != old_index
    assert b"new@example.com" not in row.email_sealed
    profile = await alice.get("/@alice")
    assert "Alice Liddell" in profile.text
    assert "Down the<br>rabbit hole" in profile.text

    response = await alice.post("/settings", {"display_name": "", "bio": "", "email": ""})
    assert response.status_code == 303
    row = await user_row(app, "alice")
    assert (row.display_name, row.bio, row.email_index, row.email_sealed) == ("", "", None, None)


async def test_settings_refuses_bad_values_and_keeps_them(make_browser, app):
    alice = await make_browser("alice")
    before = await snapshot(app)
    cases = [
        ({"display_name": "x" * 61}, "Display name is too long"),
        ({"display_name": "two\nlines"}, "Display name contains control characters"),
        ({"bio": "b" * 501}, "Bio is too long"),
        ({"email": "nope"}, "That is not an email address"),
    ]
    for fields, message in cases:
        data = {"display_name": "Kept", "bio": "", "email": "", **fields}
        response = await alice.post("/settings", data)
        assert response.status_code == 422, fields
        assert message in response.text
        assert 'aria-invalid="true"' in response.text
    assert await snapshot(app) == before


async def test_change_password_logs_out_other_sessions_only(make_browser, app):
    alice = await make_browser("alice")
    phone = await make_browser()
    await phone.get("/login")
    assert (await login(phone, "alice")).status_code == 303
    assert await count(app, tables.sessions) == 2
    new_password = "a completely different passphrase"

    before = await snapshot(app)
    response = await alice.post(
        "/settings/password",
        {"current_password": "wrong wrong wrong", "new_password": new_password, "new_password_confirm": new_password},
    )
    assert response.status_code == 422
    assert "Current password is wrong" in response.text
    response = await alice.post(
        "/settings/password",
        {"current_password": PASSWORD, "new_password": new_password, "new_password_confirm": new_password + "x"},
    )
    assert response.status_code == 422
    assert "The two new passwords differ" in response.text
    response = await alice.post(
        "/settings/password",
        {"current_password": PASSWORD, "new_password": "short", "new_password_confirm": "short"},
    )
    assert response.status_code == 422
    assert "Password must be at least 10 characters" in response.text
    after = await snapshot(app)
    live = [row for row in after.pop("throttle") if "', 0, " not in row]  # released (successful) attempts
    assert len(live) == 1  # the wrong guess counts against the account
    before.pop("throttle")
    assert after == before
    assert await is_logged_in(phone)

    response = await alice.post(
        "/settings/password",
        {"current_password": PASSWORD, "new_password": new_password, "new_password_confirm": new_password},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/settings?notice=password"
    assert await is_logged_in(alice)
    assert not await is_logged_in(phone)
    assert await count(app, tables.sessions) == 1

    browser = await make_browser()
    await browser.get("/login")
    assert (await login(browser, "alice", PASSWORD)).status_code == 401
    assert (await login(browser, "alice", new_password)).status_code == 303


# -- throttling


async def test_unknown_user_and_wrong_password_look_the_same(make_browser, app):
    await make_browser("alice")
    browser = await make_browser()
    await browser.get("/login")
    unknown = await login(browser, "nobody", "some password here")
    wrong = await login(browser, "alice", "some password here")
    assert unknown.status_code == wrong.status_code == 401
    assert LOGIN_ERROR in unknown.text
    assert unknown.text.replace('value="nobody"', 'value="?"') == wrong.text.replace('value="alice"', 'value="?"')
    assert unknown.headers.get("retry-after") is None and wrong.headers.get("retry-after") is None


async def test_login_is_throttled_per_account(make_browser, settings):
    await make_browser("alice")
    browser = await make_browser()
    await browser.get("/login")
    limit = settings.login_attempts_per_account
    for _ in range(limit):
        response = await login(browser, "alice", "wrong password!")
        assert response.status_code == 401
    response = await login(browser, "alice", PASSWORD)
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert "Too many failed logins" in response.text
    assert not await is_logged_in(browser)
    # Another account from the same address is not locked by alice's failures.
    assert (await login(browser, "bob", "wrong password!")).status_code == 401


@pytest.fixture
async def strict_ip_app(env: dict[str, str], migrated: None) -> AsyncIterator[Any]:
    application = create_app(load_settings({**env, "CIPHERFEED_LOGIN_ATTEMPTS_PER_IP": "3"}))
    async with application.router.lifespan_context(application):
        yield application


async def test_login_is_throttled_per_ip(make_browser, strict_ip_app):
    await make_browser("alice")

    def client(ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=strict_ip_app, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=ORIGIN)

    async def attempt(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
        page = await http.get("/login")
        found = CSRF_RE.search(page.text)
        assert found
        return await http.post(
            "/login", data={"csrf_token": found.group(1), "username": username, "password": password}
        )

    async with client("203.0.113.7") as http, client("198.51.100.9") as elsewhere:
        for name in ("mallory1", "mallory2", "mallory3"):
            assert (await attempt(http, name, "guess guess guess")).status_code == 401
        response = await attempt(http, "alice", PASSWORD)
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) > 0
        assert "Too many failed logins" in response.text
        assert (await attempt(elsewhere, "alice", PASSWORD)).status_code == 303


async def test_a_sign_up_that_loses_a_race_is_a_conflict_not_a_500(make_browser, app, monkeypatch):
    """Two sign-ups for one name (or address) can both pass the early check; the unique index decides."""
    from feed.storage import users as user_store

    await make_browser("alice", email="alice@example.com")

    async def never_taken(*args: Any, **kwargs: Any) -> bool:
        return False

    monkeypatch.setattr(user_store, "username_taken", never_taken)
    monkeypatch.setattr(user_store, "email_taken", never_taken)
    before = await snapshot(app)
    browser = await make_browser()
    await browser.get("/register")
    response = await register(browser, "ALICE")
    assert response.status_code == 422
    assert "That username is taken" in response.text
    response = await register(browser, "bob", email="Alice@example.com")
    assert response.status_code == 422
    assert "already registered" in response.text
    assert await snapshot(app) == before
    bob = await make_browser("bob")
    before = await snapshot(app)
    response = await bob.post("/settings", {"display_name": "", "bio": "", "email": "alice@example.com"})
    assert response.status_code == 422
    assert "That email address is already registered" in response.text
    assert await snapshot(app) == before


async def test_guessing_the_current_password_is_throttled(make_browser, settings):
    alice = await make_browser("alice")
    new_password = "a completely different passphrase"
    form = {"new_password": new_password, "new_password_confirm": new_password}
    for _ in range(settings.login_attempts_per_account):
        response = await alice.post("/settings/password", {**form, "current_password": "a wrong guess"})
        assert response.status_code == 422
    response = await alice.post("/settings/password", {**form, "current_password": PASSWORD})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert "Too many wrong passwords" in response.text
    browser = await make_browser()
    await browser.get("/login")
    # Guesses through a (stolen) session do not slow the owner's logins down.
    assert (await login(browser, "alice", PASSWORD)).status_code == 303
