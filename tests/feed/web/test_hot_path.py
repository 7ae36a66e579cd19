"""The hot path (``feed.web.hot_path``): a home page or an app's home timeline served from the blob this process
holds answers what the whole stack would, headers and all, and anything it cannot serve goes down the stack."""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from feed.cache import POSTS
from feed.services import accounts
from feed.services.context import now
from feed.storage import users as user_store
from feed.web import hot_path
from tests.conftest import client_for
from tests.feed.test_metrics import parse, series

pytestmark = pytest.mark.anyio
MOMENT = re.compile(rb'since=\d+|name="idempotency_key" value="[^"]+"|\d+[smhd]</time>|now</time>')
HOME = "/api/v1/timelines/home"


class Below:
    """Counts the requests that went past the hot path, down the rest of the stack."""

    def __init__(self, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        if app.middleware_stack is None:
            app.middleware_stack = app.build_middleware_stack()
        self.calls = 0
        inner = app.middleware_stack

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            self.calls += 1
            await inner(scope, receive, send)

        monkeypatch.setattr(app, "middleware_stack", counted)


async def _refuse(request: Any) -> None:
    raise AssertionError("the hot path awaited what this process holds")


def _headers(response: Any) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in response.headers.items() if k != "content-length")


async def test_a_home_page_from_the_hot_path_is_the_page_the_stack_serves(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    await bob.post("/@alice/follow")
    await alice.compose("100% hot <b>words</b>")
    below = Below(redis_app, monkeypatch)
    stack = await bob.get("/")  # draws the blob, down the stack
    assert below.calls == 1
    for _ in range(30):  # until the worker's fan-out (which drops bob's blob) has come and gone
        hot = await bob.get("/")
        if below.calls == 1:
            break
        below.calls = 1
    assert below.calls == 1, "the hot path never served the page"
    # From this process's memory alone: nothing awaited.
    monkeypatch.setitem(hot_path._HOT, "/", hot_path._HOT["/"]._replace(answer=_refuse))
    for _ in range(3):
        again = await bob.get("/")
        assert again.status_code == 200 and b"hot &lt;b&gt;words" in again.content
    assert below.calls == 1
    monkeypatch.undo()
    below = Below(redis_app, monkeypatch)
    below.calls = 1
    assert hot.status_code == stack.status_code == 200
    assert _headers(hot) == _headers(stack) and "no-store" in hot.headers["cache-control"]
    assert MOMENT.sub(b"", hot.content) == MOMENT.sub(b"", stack.content)
    assert b"100% hot &lt;b&gt;words&lt;/b&gt;" in hot.content

    # Counted by the request metrics as the route it stands for.
    text = (await client_for(redis_app).get("/metrics")).text
    assert parse(text)[series("cipherfeed_http_requests_total", method="GET", route="/", status="200")] >= 2

    # What it cannot serve goes down the stack: a fragment, a query, another method, no session.
    calls = below.calls
    assert (await bob.get("/", headers={"HX-Request": "true"})).status_code == 200
    assert (await bob.get("/?max_id=1")).status_code == 200
    assert (await bob.http.head("/")).status_code in (200, 405)
    welcome = await client_for(redis_app).get("/")
    assert welcome.status_code == 200 and "cf_anon" in welcome.headers.get("set-cookie", "")
    assert below.calls == calls + 4

    # A session that ended is never served from the blob still held: the stack answers with the welcome page.
    token = bob.http.cookies["cf_session"]
    assert (await bob.post("/logout")).status_code == 303
    calls = below.calls
    ended = await client_for(redis_app, cookies={"cf_session": token}).get("/")
    assert ended.status_code == 200 and b"hot &lt;b&gt;words" not in ended.content and below.calls == calls + 1


async def test_an_apps_home_timeline_from_the_hot_path_is_the_one_the_stack_serves(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_redis_browser("alice")
    for n in range(3):
        await alice.compose(f"post {n}")
    token = await accounts.create_token(redis_app.state.services, "alice")
    below = Below(redis_app, monkeypatch)
    bearer = {"Authorization": f"Bearer {token}"}
    async with client_for(redis_app, base_url="https://testserver", headers=bearer) as api:
        stack = await api.get(HOME)
        assert below.calls == 1
        hot = await api.get(HOME)
        assert below.calls == 1, "the hot path did not serve the timeline"
        with monkeypatch.context() as patched:  # from this process's memory alone
            patched.setitem(hot_path._HOT, HOME, hot_path._HOT[HOME]._replace(answer=_refuse))
            assert (await api.get(HOME)).content == hot.content and below.calls == 1
        assert hot.status_code == 200 and hot.content == stack.content and _headers(hot) == _headers(stack)
        assert hot.headers["access-control-allow-origin"] == "*" and "strict-transport-security" in hot.headers
        assert 'rel="prev"' in hot.headers["link"]

        # A bad token, a token without the scope, a body: the stack answers, as it always has.
        bad = await api.get(HOME, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]
        assert (await api.request("GET", HOME, content=b"x")).status_code == 200
        assert below.calls == 3


class Reads:
    """The names of each Redis read of the cache (one round trip each)."""

    def __init__(self, cache: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[list[str]] = []
        real = cache._l2_read

        async def counted(names: list[str]) -> Any:
            self.reads.append(names)
            return await real(names)

        monkeypatch.setattr(cache, "_l2_read", counted)


async def _cold(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Reads, Below]:
    """The home page, read until it comes from its blob, then once with L1 emptied: the page, the Redis reads of
    that last one, and the requests that went down the stack."""
    for _ in range(3):
        await client.get("/")
    cache = app.state.cache
    reads = Reads(cache, monkeypatch)
    cache.flush()
    below = Below(app, monkeypatch)
    return await client.get("/"), reads, below


async def test_with_l1_cold_a_home_page_is_one_redis_round_trip(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A home page from a blob in Redis only: the session (its cookie names its user), the viewer's unread count,
    their blob and the shown log in one round trip; the blob is good as drawn, as nothing on it changed since."""
    alice = await make_redis_browser("alice")
    await alice.compose("words")
    page, reads, below = await _cold(redis_app, alice.http, monkeypatch)
    assert page.status_code == 200 and "words" in page.text and below.calls == 0
    assert len(reads.reads) == 1, reads.reads
    spaces = {name.split(":")[1][1:] for name in reads.reads[0] if name.startswith("cf:{")}
    assert {"s", "n", "w", "shown}"} <= spaces, reads.reads


async def test_with_l1_cold_a_blob_showing_a_change_since_it_was_drawn_is_checked(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shown log names a post on the blob after the blob's mark: its record is read and the page is as fresh
    as ever (the edit's text); nothing names it: as drawn."""
    alice = await make_redis_browser("alice")
    post = await alice.compose("words as first written")
    for _ in range(3):
        await alice.get("/")
    cache = redis_app.state.cache
    await cache.note_shown([post + 1])  # another post: the blob is still good as drawn
    reads = Reads(cache, monkeypatch)
    cache.flush()
    assert "words as first written" in (await alice.get("/")).text
    assert len(reads.reads) == 1, reads.reads
    # The post changes behind the blob's back (its record in Redis, as an edit's invalidation and refill leave it),
    # and the log names it: the blob is checked against the record, and drawn again.
    record = (await cache.get_many(POSTS, [post], _nothing))[post]
    await cache.put(POSTS, {post: replace(record, revision=record.revision + 1)})
    await cache.note_shown([post])
    reads.reads.clear()
    cache.flush()
    below = Below(redis_app, monkeypatch)
    await alice.get("/")
    assert below.calls == 1, "a blob whose post changed since it was drawn is not served"
    assert any(name.startswith("cf:{p:") for read in reads.reads for name in read), reads.reads


async def _nothing(_: list[int]) -> dict[int, Any]:
    return {}


async def _session(svc: Any, token: str, user_id: int) -> None:
    """A session of ``user_id`` whose cookie is ``token``, as the server stores one."""
    async with svc.db.begin() as session:
        await user_store.insert_session(session, id_hash=accounts.token_hash(svc, token), user_id=user_id,
                                        now=now(), expires_at=now() + timedelta(days=1))  # fmt: skip


async def test_a_session_cookie_without_its_user_costs_one_more_round_trip(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions opened before cookies named their user go on working: the session first, then the rest."""
    alice = await make_redis_browser("alice")
    await alice.compose("still here")
    svc = redis_app.state.services
    token = secrets.token_urlsafe(32)
    assert accounts.session_hint(token) is None
    user = await accounts.find_user(svc, "alice")
    await _session(svc, token, user.id)
    page, reads, below = await _cold(redis_app, client_for(redis_app, cookies={"cf_session": token}), monkeypatch)
    assert page.status_code == 200 and "still here" in page.text and below.calls == 0
    assert len(reads.reads) == 2 and any(name.startswith("cf:{w:") for name in reads.reads[1]), reads.reads


async def test_a_session_cookie_naming_another_user_gets_its_own_users_page(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id in a cookie is checked against the session's record read with it: a session of alice's whose cookie
    names bob (the server never makes one) gets alice's home, never bob's blob; a cookie naming an id no account
    can have is a cookie of nobody's."""
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    await alice.compose("alice-own-words")
    await bob.compose("bob-own-words")
    for _ in range(3):
        await bob.get("/")  # bob's blob, in L1 and Redis
    svc = redis_app.state.services
    alices, bobs = await accounts.find_user(svc, "alice"), await accounts.find_user(svc, "bob")
    token = f"{bobs.id:x}.{secrets.token_urlsafe(32)}"
    await _session(svc, token, alices.id)
    odd = client_for(redis_app, cookies={"cf_session": token})
    for flush in (False, True):
        if flush:
            redis_app.state.cache.flush()
        page = (await odd.get("/")).text
        assert "alice-own-words" in page and "bob-own-words" not in page
    for made_up in (f"{'f' * 16}.{secrets.token_urlsafe(32)}", f"{bobs.id:x}.{secrets.token_urlsafe(32)}"):
        page = (await client_for(redis_app, cookies={"cf_session": made_up}).get("/")).text
        assert "Log in" in page and "own-words" not in page


async def test_only_live_tokens_are_remembered_and_a_remembered_one_still_needs_its_session(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path remembers a live token's keyed hashes (``_Tokens``): made-up cookies and tokens are not
    remembered, the oldest goes first when it is full, and a remembered token whose session ended gets no page."""
    alice = await make_redis_browser("alice")
    await alice.compose("remembered")
    tokens: Any = redis_app.tokens
    monkeypatch.setattr(tokens, "_seen", {})
    for _ in range(3):
        await alice.get("/")
    token = alice.http.cookies["cf_session"]
    assert token in tokens._seen

    monkeypatch.setattr(tokens, "most", 2)
    for n in range(5):  # made up: looked up, not remembered, nothing pushed out
        made_up = await client_for(redis_app, cookies={"cf_session": f"made-up-{n}"}).get("/")
        assert made_up.status_code == 200 and "remembered" not in made_up.text
        api = await client_for(redis_app, headers={"Authorization": f"Bearer made-up-{n}"}).get(HOME)
        assert api.status_code == 401
    assert list(tokens._seen) == [token]
    bearer = await accounts.create_token(redis_app.state.services, "alice")
    other = await make_redis_browser("bob")
    for client in (client_for(redis_app, headers={"Authorization": f"Bearer {bearer}"}), other.http):
        await client.get(HOME if client is not other.http else "/")
        await client.get(HOME if client is not other.http else "/")
    assert token not in tokens._seen and len(tokens._seen) == 2, "the oldest was not forgotten first"

    for _ in range(2):
        assert "remembered" in (await alice.get("/")).text
    assert token in tokens._seen
    assert (await alice.post("/logout")).status_code == 303
    ended = await client_for(redis_app, cookies={"cf_session": token}).get("/")
    assert ended.status_code == 200 and "remembered" not in ended.text
    assert token not in tokens._seen, "an ended session's cookie is forgotten"


async def test_a_public_page_from_the_hot_path_is_the_page_the_stack_serves(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    await alice.compose("public and hot")
    below = Below(redis_app, monkeypatch)
    stack = await bob.get("/public")  # draws the blob, down the stack
    assert below.calls == 1
    with monkeypatch.context() as patched:  # from this process's memory alone: nothing awaited
        patched.setitem(hot_path._HOT, "/public", hot_path._HOT["/public"]._replace(answer=_refuse))
        hot = await bob.get("/public")
    assert below.calls == 1, "the hot path did not serve the public page"
    assert hot.status_code == stack.status_code == 200 and _headers(hot) == _headers(stack)
    assert MOMENT.sub(b"", hot.content) == MOMENT.sub(b"", stack.content) and b"public and hot" in hot.content

    # A new public post by anyone: the blob held is stale, so the stack draws the page again.
    await alice.compose("newer public words")
    below.calls = 0
    fresh = await bob.get("/public")
    assert b"newer public words" in fresh.content and below.calls == 1
    # With L1 cold the blob is gone with it (it is kept in this process only): drawn again, down the stack.
    redis_app.state.cache.flush()
    assert b"newer public words" in (await bob.get("/public")).content and below.calls == 2
    assert b"newer public words" in (await bob.get("/public")).content and below.calls == 2


async def test_a_request_the_hot_path_tried_and_left_is_timed_from_when_it_came(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path runs before the request metrics: what it spent on a request it then leaves to the stack (a
    Redis round trip, a check) is still in that request's duration."""
    alice = await make_redis_browser("alice")
    monkeypatch.setitem(hot_path._HOT, "/", hot_path._HOT["/"]._replace(held=lambda *args: None, answer=_slow_none))

    async def seconds() -> float:
        values = parse((await client_for(redis_app).get("/metrics")).text)
        labels = {"method": "GET", "route": "/", "status": "200"}
        return values.get(series("cipherfeed_http_request_duration_seconds_sum", **labels), 0.0)

    before = await seconds()
    assert (await alice.get("/")).status_code == 200  # tried, left, answered by the stack
    assert await seconds() - before >= SLOW


SLOW = 0.2


async def _slow_none(request: Any, headers: Any = None) -> None:
    await asyncio.sleep(SLOW)
