"""Property-based tests (hypothesis): whatever a client puts in any API parameter, JSON or form body field, path
segment or header we read, the answer is a clear 4xx or a success, never a 500 and never a stack trace.

The values are drawn from everything text can be (control characters, NUL, which PostgreSQL refuses, unpaired
marks, right-to-left text, emoji), numbers far past 64 bits, and JSON of any shape. Live streams are checked through
the functions that read their parameters (a stream's answer never ends, so it cannot be awaited whole here).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed.services import accounts
from feed.web.hub import parse_cursor
from feed.web.live import _ids
from tests.conftest import CSRF_RE, PASSWORD, client_for

pytestmark = pytest.mark.anyio

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

texts = st.text(max_size=300)
digits = st.integers(min_value=0, max_value=10**60).map(str) | st.from_regex(r"\A-?[0-9]{15,400}\Z")
values = texts | digits | st.sampled_from(["", "0", "-1", "true", "false", "null", "1e309", "NaN", "\x00", "😀"])
jsons: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def clear(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.request.url, response.text[:500])
    assert "Traceback" not in response.text


class World:
    def __init__(self, api: httpx.AsyncClient, page: httpx.AsyncClient, csrf: str, user_id: int, post: str) -> None:
        self.api, self.page, self.csrf, self.user_id, self.post = api, page, csrf, user_id, post

    async def form(self, url: str, data: dict[str, str]) -> httpx.Response:
        headers = {"Origin": "http://testserver"}
        return await self.page.post(url, data={"csrf_token": self.csrf, **data}, headers=headers)


@pytest.fixture
async def world(app: Any, clean: None) -> AsyncIterator[World]:
    svc = app.state.services
    user = await accounts.register(svc, "fuzzed", PASSWORD)
    token = await accounts.create_token(svc, "fuzzed")
    async with client_for(app, headers={"Authorization": f"Bearer {token}"}) as api, client_for(app) as page:
        found = CSRF_RE.search((await page.get("/login")).text)
        assert found
        login = {"csrf_token": found.group(1), "username": "fuzzed", "password": PASSWORD}
        assert (await page.post("/login", data=login, headers={"Origin": "http://testserver"})).status_code == 303
        found = CSRF_RE.search((await page.get("/")).text)
        assert found
        post = (await api.post("/api/v1/statuses", json={"status": "a post to aim at"})).json()["id"]
        yield World(api, page, found.group(1), user.id, post)


API_GETS = [
    ("/api/v1/timelines/home", ("limit", "max_id", "since_id", "min_id")),
    ("/api/v1/timelines/public", ("limit", "max_id", "since_id", "min_id", "local", "remote", "only_media")),
    ("/api/v1/accounts/{me}/statuses", ("limit", "max_id", "exclude_replies", "pinned", "only_media")),
    ("/api/v1/accounts/lookup", ("acct",)),
    ("/api/v1/accounts/relationships", ("id[]", "id")),
    ("/api/v1/markers", ("timeline[]", "timeline")),
    ("/api/v2/search", ("q", "type", "limit", "offset", "following", "resolve", "account_id")),
    ("/api/v1/accounts/search", ("q", "limit", "offset", "following", "resolve")),
    ("/api/v1/accounts/{me}/followers", ("limit", "max_id", "since_id")),
    ("/api/v1/accounts/{me}/following", ("limit", "max_id", "since_id")),
]


QUERY_NAMES = sorted({name for _, names in API_GETS for name in names})


@pytest.mark.parametrize("path", [path for path, _ in API_GETS])
@FUZZ
@given(params=st.dictionaries(st.sampled_from(QUERY_NAMES), values, max_size=4))
async def test_api_query_parameters(world: World, path: str, params: dict[str, str]) -> None:
    clear(await world.api.get(path.format(me=world.user_id), params=params))


@FUZZ
@given(segment=values, tail=st.sampled_from(["", "/statuses", "/context", "/favourite", "/unfavourite"]))
async def test_path_ids(world: World, segment: str, tail: str) -> None:
    quoted = quote(segment, safe="")
    for path in (f"/api/v1/statuses/{quoted}{tail}", f"/api/v1/accounts/{quoted}{tail}"):
        clear(await (world.api.post(path) if tail in ("/favourite", "/unfavourite") else world.api.get(path)))
    clear(await world.page.get(f"/posts/{quoted}"))
    clear(await world.page.get(f"/@{quoted}"))


# What a header can carry: text, but no control character and no lone surrogate (not encodable at all).
header_texts = st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f", exclude_categories=("Cs",)),
                       max_size=200)  # fmt: skip


@FUZZ
@given(body=st.dictionaries(st.sampled_from(
    ["status", "spoiler_text", "visibility", "in_reply_to_id", "sensitive", "language", "media_ids", "poll",
     "scheduled_at"]), jsons, max_size=6), key=st.none() | header_texts)  # fmt: skip
async def test_create_status_json(world: World, body: dict[str, Any], key: str | None) -> None:
    headers = {"Idempotency-Key": key.encode()} if key else {}
    clear(await world.api.post("/api/v1/statuses", content=json.dumps(body), headers={
        "Content-Type": "application/json", **headers}))  # fmt: skip
    clear(await world.api.put(f"/api/v1/statuses/{world.post}", json=body))


@FUZZ
@given(
    form=st.dictionaries(st.sampled_from(["home[last_read_id]", "notifications[last_read_id]"]), values, max_size=2),
    body=st.dictionaries(st.sampled_from(["home", "notifications"]), jsons),
)
async def test_markers(world: World, form: dict[str, str], body: dict[str, Any]) -> None:
    clear(await world.api.post("/api/v1/markers", data=form))
    clear(await world.api.post("/api/v1/markers", json=body))


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["status", "spoiler_text", "visibility", "in_reply_to_id"]), values,
                              max_size=4), raw=st.binary(max_size=200))  # fmt: skip
async def test_create_status_form_and_raw_bodies(world: World, fields: dict[str, str], raw: bytes) -> None:
    clear(await world.api.post("/api/v1/statuses", data=fields))
    for kind in ("application/json", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain"):
        clear(await world.api.post("/api/v1/statuses", content=raw, headers={"Content-Type": kind}))


FORMS = [
    ("/posts", ("status", "spoiler_text", "visibility", "in_reply_to_id", "idempotency_key")),
    ("/posts/{post}/edit", ("status", "spoiler_text", "revision")),
    ("/posts/{post}/like", ("next",)),
    ("/settings", ("display_name", "bio", "email")),
    ("/settings/password", ("current_password", "new_password", "new_password_confirm")),
    ("/settings/delete", ("password",)),
    ("/register", ("username", "password", "password_confirm", "email")),
]


FORM_NAMES = sorted({name for _, names in FORMS for name in names})


@pytest.mark.parametrize("path", [path for path, _ in FORMS])
@FUZZ
@given(fields=st.dictionaries(st.sampled_from(FORM_NAMES), values, max_size=5))
async def test_form_fields(world: World, path: str, fields: dict[str, str]) -> None:
    clear(await world.form(path.format(post=world.post), fields))


@FUZZ
@given(username=values, password=values, next_=values)
async def test_login_form(app: Any, username: str, password: str, next_: str) -> None:
    async with client_for(app) as http:
        found = CSRF_RE.search((await http.get("/login", params={"next": next_})).text)
        assert found
        form = {"csrf_token": found.group(1), "username": username, "password": password, "next": next_}
        clear(await http.post("/login", data=form, headers={"Origin": "http://testserver"}))


@FUZZ
@given(max_id=values, fragment=values, notice=values)
async def test_page_query_parameters(world: World, max_id: str, fragment: str, notice: str) -> None:
    for path in ("/", "/public", "/@fuzzed"):
        clear(await world.page.get(path, params={"max_id": max_id, "fragment": fragment, "notice": notice},
                                   headers={"HX-Request": "true"}))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(raw=st.none() | values)
def test_live_stream_parameters_are_read_without_failing(raw: str | None) -> None:
    parse_cursor(raw)
    _ids(raw or "")
