"""The Mastodon-compatible JSON API as a whole: authentication, the error format, unreadable or oversized bodies,
unknown paths, and ``GET /api/v2/instance``. Statuses, timelines, accounts and visibility rules have their own
``test_api_*.py`` files.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.feed.web.mastodon_checks import check_error, get_json, me, post_status, row_counts

pytestmark = pytest.mark.anyio

# Every endpoint that needs a user; (method, path) with {sid}/{aid} for a real status and account id.
NEEDS_USER = [
    ("GET", "/api/v1/accounts/verify_credentials"),
    ("GET", "/api/v1/accounts/relationships?id[]={aid}"),
    ("POST", "/api/v1/accounts/{aid}/follow"),
    ("POST", "/api/v1/accounts/{aid}/unfollow"),
    ("POST", "/api/v1/statuses"),
    ("PUT", "/api/v1/statuses/{sid}"),
    ("DELETE", "/api/v1/statuses/{sid}"),
    ("POST", "/api/v1/statuses/{sid}/favourite"),
    ("POST", "/api/v1/statuses/{sid}/unfavourite"),
    ("GET", "/api/v1/timelines/home"),
]
# Public endpoints: fine without a token, but a token that is sent must be valid.
PUBLIC = [
    ("GET", "/api/v1/statuses/{sid}"),
    ("GET", "/api/v1/statuses/{sid}/context"),
    ("GET", "/api/v1/timelines/public"),
    ("GET", "/api/v1/accounts/{aid}"),
    ("GET", "/api/v1/accounts/{aid}/statuses"),
    ("GET", "/api/v1/accounts/lookup?acct=alice"),
]
BAD_AUTHORIZATION = ["Bearer not-a-token", "Bearer ", "Basic YWxpY2U6cHc=", "Token abc", "bearer", "x" * 300]


@pytest.fixture
async def world(api: Any, app: Any) -> AsyncIterator[dict[str, Any]]:
    """alice with one public status (with a content warning), and the stored row counts before the test acts."""
    alice = await api("alice")
    status = await post_status(alice, "hello world", spoiler_text="cw")
    account = await me(alice)
    yield {"alice": alice, "sid": status["id"], "aid": account["id"], "counts": await row_counts(app)}


async def test_endpoints_that_need_a_user_refuse_anonymous_requests(api: Any, app: Any, world: dict[str, Any]) -> None:
    anonymous = await api()
    for method, path in NEEDS_USER:
        url = path.format(sid=world["sid"], aid=world["aid"])
        response = await anonymous.request(method, url, json={"status": "sneaky"})
        assert check_error(response, 401) == "The access token is invalid", url
    assert await row_counts(app) == world["counts"]
    status = await get_json(world["alice"], f"/api/v1/statuses/{world['sid']}")
    assert status["content"] == "<p>hello world</p>" and status["favourites_count"] == 0


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION)
async def test_a_bad_token_is_401_everywhere_even_on_public_endpoints(
    api: Any, app: Any, world: dict[str, Any], authorization: str
) -> None:
    client = await api()
    for method, path in NEEDS_USER + PUBLIC:
        url = path.format(sid=world["sid"], aid=world["aid"])
        response = await client.request(method, url, headers={"Authorization": authorization})
        assert check_error(response, 401) == "The access token is invalid", (url, authorization)
    assert await row_counts(app) == world["counts"]


async def test_public_endpoints_work_without_a_token(api: Any, world: dict[str, Any]) -> None:
    anonymous = await api()
    for method, path in PUBLIC:
        response = await anonymous.request(method, path.format(sid=world["sid"], aid=world["aid"]))
        assert response.status_code == 200, (path, response.text)


async def test_the_bearer_scheme_is_case_insensitive(api: Any, world: dict[str, Any]) -> None:
    alice = world["alice"]
    token = alice.headers["authorization"].split(" ", 1)[1]
    anonymous = await api()
    response = await anonymous.get("/api/v1/accounts/verify_credentials", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200 and response.json()["username"] == "alice"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "path", ["/api/v1/whatever", "/api/v2/nothing/here", "/api/v1/statuses/1/reblog", "/api/v1/instance/peers"]
)
async def test_unknown_api_paths_are_json_404(api: Any, world: dict[str, Any], method: str, path: str) -> None:
    response = await world["alice"].request(method, path)
    assert check_error(response, 404) == "Record not found"


async def test_a_wrong_method_on_a_known_path_is_a_json_error(api: Any, world: dict[str, Any]) -> None:
    alice = world["alice"]
    for method, path in [("DELETE", "/api/v1/timelines/home"), ("PATCH", f"/api/v1/statuses/{world['sid']}")]:
        response = await alice.request(method, path)
        assert response.status_code in (404, 405)
        check_error(response, response.status_code)
    assert (await get_json(alice, f"/api/v1/statuses/{world['sid']}"))["id"] == world["sid"]


async def test_api_responses_are_json_and_never_cached(api: Any, world: dict[str, Any]) -> None:
    response = await world["alice"].get(f"/api/v1/statuses/{world['sid']}")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"  # the body holds decrypted text


# -- bodies the API cannot read


async def test_a_body_over_the_limit_is_413_by_content_length(
    api: Any, app: Any, settings: Any, world: dict[str, Any]
) -> None:
    huge = "a" * settings.max_body_bytes
    response = await world["alice"].post("/api/v1/statuses", json={"status": huge})
    assert check_error(response, 413) == "Request body is too large"
    assert await row_counts(app) == world["counts"]


async def test_a_streamed_body_over_the_limit_is_413(api: Any, app: Any, settings: Any, world: dict[str, Any]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"status="
        for _ in range(settings.max_body_bytes // 1024 + 1):
            yield b"a" * 1024

    response = await world["alice"].post(
        "/api/v1/statuses", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    check_error(response, 413)
    assert await row_counts(app) == world["counts"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"status=%FF%FE"),  # percent-encoded bytes that are not UTF-8
        ("application/x-www-form-urlencoded", "status=h\u00e9llo".encode("latin-1")),  # raw non-ASCII
        ("application/json", b'{"status": "\xff\xfe"}'),
        ("application/json", b'{"status": "unterminated'),
        ("application/json", json.dumps({"status": "lone \ud800 surrogate"}).encode()),  # valid JSON, not text
        ("application/json", b'["a", "list"]'),
        ("application/json", b'"a string"'),
        ("application/json", b""),
        ("text/plain", b"status=hello"),
        ("application/xml", b"<status>hello</status>"),
    ],
)
async def test_an_unreadable_body_is_400_and_stores_nothing(
    api: Any, app: Any, world: dict[str, Any], content_type: str, body: bytes
) -> None:
    alice = world["alice"]
    response = await alice.post("/api/v1/statuses", content=body, headers={"Content-Type": content_type})
    check_error(response, 400)
    edit = await alice.put(f"/api/v1/statuses/{world['sid']}", content=body, headers={"Content-Type": content_type})
    check_error(edit, 400)
    assert await row_counts(app) == world["counts"]
    assert (await get_json(alice, f"/api/v1/statuses/{world['sid']}"))["content"] == "<p>hello world</p>"


async def test_deeply_nested_json_is_400_not_a_crash(api: Any, app: Any, world: dict[str, Any]) -> None:
    body = b"[" * 10_000 + b"]" * 10_000  # json.loads raises RecursionError, not ValueError, on this
    response = await world["alice"].post("/api/v1/statuses", content=body, headers={"Content-Type": "application/json"})
    check_error(response, 400)
    assert await row_counts(app) == world["counts"]


# -- the instance


async def test_instance_v2(api: Any) -> None:
    instance = await get_json(await api(), "/api/v2/instance")
    assert instance["domain"] == "testserver"
    for name in ("title", "version", "source_url", "description"):
        assert isinstance(instance[name], str), name
    assert instance["version"].startswith("4.")  # clients gate features on the Mastodon version
    assert type(instance["usage"]["users"]["active_month"]) is int
    assert instance["thumbnail"]["url"].startswith("http://testserver/")
    assert instance["languages"] == ["en"]
    config = instance["configuration"]
    assert config["statuses"] == {"max_characters": 500, "max_media_attachments": 4, "characters_reserved_per_url": 23}
    limits = config["media_attachments"]
    assert {"image/jpeg", "image/png", "image/webp", "image/gif"} <= set(limits["supported_mime_types"])
    assert (limits["image_size_limit"], limits["image_matrix_limit"]) == (16 * 1024 * 1024, 40_000_000)
    assert (limits["video_size_limit"], limits["description_limit"]) == (0, 1500)
    assert all(type(v) is int for v in config["polls"].values())
    assert config["translation"] == {"enabled": False}
    assert isinstance(config["urls"], dict)
    registrations = instance["registrations"]
    assert isinstance(registrations["enabled"], bool) and isinstance(registrations["approval_required"], bool)
    assert isinstance(instance["contact"]["email"], str) and instance["rules"] == []


async def test_instance_max_characters_is_the_real_limit(api: Any) -> None:
    alice = await api("alice")
    limit = (await get_json(alice, "/api/v2/instance"))["configuration"]["statuses"]["max_characters"]
    assert (await alice.post("/api/v1/statuses", json={"status": "x" * limit})).status_code == 200
    check_error(await alice.post("/api/v1/statuses", json={"status": "x" * (limit + 1)}), 422)


async def test_instance_v1_counts_users_and_statuses(api: Any) -> None:
    alice = await api("alice")
    await api("bob")
    await post_status(alice, "one")
    await post_status(alice, "two")
    instance = await get_json(await api(), "/api/v1/instance")
    assert instance["uri"] == "testserver"
    assert instance["stats"] == {"user_count": 2, "status_count": 2, "domain_count": 0}
    assert instance["configuration"]["statuses"]["max_characters"] == 500
    assert (await get_json(alice, "/api/v2/instance"))["usage"]["users"]["active_month"] == 1


# -- CORS: bearer-token API only, so any origin may call it


async def test_api_answers_cors_preflight_and_exposes_link(api: Any) -> None:
    alice = await api("alice")
    preflight = await alice.options(
        "/api/v1/timelines/home",
        headers={
            "Origin": "https://client.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    response = await alice.get("/api/v1/timelines/home", headers={"Origin": "https://client.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "Link" in response.headers["access-control-expose-headers"]
    assert "access-control-allow-credentials" not in response.headers


async def test_pages_get_no_cors_headers(make_browser: Any) -> None:
    browser = await make_browser()
    response = await browser.get("/public", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_an_expired_token_is_refused(api: Any, app: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from feed.storage import tables
    from tests.conftest import forget_cached

    alice = await api("alice")
    assert (await alice.get("/api/v1/accounts/verify_credentials")).status_code == 200
    async with app.state.engine.begin() as conn:
        await conn.execute(tables.api_tokens.update().values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    await forget_cached(app)  # the cached token record expires with its TTL the same way
    check_error(await alice.get("/api/v1/accounts/verify_credentials"), 401)
