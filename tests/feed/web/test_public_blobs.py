"""A signed-in viewer's public timeline page as one sealed blob: the page the stack draws, drawn once, checked when
read against the public timeline it was drawn from (anyone's new post, edit or delete redraws it), and against the
viewer's own blocks, mutes and marks, as the home page's blob is."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from feed.bus import Invalidation
from feed.cache import BLOCKED, PAGES, PUBLIC_PAGES, PUBLIC_STATUS_PAGES, redis_key
from feed.records import SealedPage
from feed.services import accounts, erasure
from feed.web import page_blobs
from tests.conftest import client_for
from tests.feed.test_metrics import parse, series
from tests.feed.web.test_frames import article
from tests.feed.web.test_page_blobs import count_draws

pytestmark = pytest.mark.anyio
CANARY = "public-canary-7c2e"
MOMENT = re.compile(r'since=\d+|name="idempotency_key" value="[^"]+"|\d+[smhd]</time>|now</time>')


async def _ids(browser: Any) -> list[int]:
    page = await browser.get("/public")
    assert page.status_code == 200
    return [int(found) for found in re.findall(r'<article class="post[^"]*" id="post-(\d+)"', page.text)]


async def test_the_public_page_comes_from_the_viewers_blob_as_the_stack_draws_it(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    post = await alice.compose(f"{CANARY} and <b>markup</b>")
    drawn = (await bob.get("/public")).text
    bob_user = await accounts.find_user(redis_app.state.services, "bob")
    blob = redis_app.state.cache.cached(PUBLIC_PAGES, bob_user.id)
    assert isinstance(blob, SealedPage) and blob.posts[0][0] == post and blob.source
    assert CANARY.encode() not in blob.sealed.data and page_blobs.HOLE not in drawn

    draws = count_draws(monkeypatch, "public")
    for _ in range(5):
        served = (await bob.get("/public")).text
        assert MOMENT.sub("", served) == MOMENT.sub("", drawn)
    assert draws[0] == 0, f"drawn {draws[0]} times in 5 reads"

    # The stack's own page (no blob) is the same page.
    with monkeypatch.context() as patched:
        patched.setattr(page_blobs, "serve", _none)
        patched.setattr(page_blobs, "held", lambda *args, **kwargs: None)  # the hot path's
        stack = (await bob.get("/public")).text
    assert MOMENT.sub("", stack) == MOMENT.sub("", drawn)
    assert f"{CANARY} and &lt;b&gt;markup&lt;/b&gt;" in stack

    # Nobody signed in, an older page, a fragment: no blob, as before.
    anonymous = await client_for(redis_app).get("/public")
    assert anonymous.status_code == 200 and CANARY in anonymous.text
    assert (await bob.get(f"/public?max_id={post + 1}")).status_code == 200
    assert (await bob.get("/public", headers={"HX-Request": "true"})).status_code == 200
    assert draws[0] == 4  # the stack's page above, and these three


async def _none(*args: Any) -> None:
    return None


async def test_each_kind_of_change_reaches_the_public_blob(make_redis_browser: Any, redis_app: Any) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    carol = await make_redis_browser("carol")
    dave = await make_redis_browser("dave")
    first = await alice.compose("alice's first words")
    assert await _ids(bob) == [first]

    # Anyone's new public post (the blob is not bob's to drop: the public timeline's refs differ).
    second = await carol.compose("carol's public words")
    assert await _ids(bob) == [second, first]
    # A followers-only post is never on it; an unlisted one neither.
    await carol.compose("for carol's followers", visibility="followers")
    await carol.compose("unlisted words", visibility="unlisted")
    assert await _ids(bob) == [second, first]

    # An edit, by its text; a like by someone else, by its count; bob's own like, by its mark.
    edited = await alice.post(f"/posts/{first}/edit", {"status": "first words, edited", "revision": "1"})
    assert edited.status_code == 303
    assert "first words, edited" in (await bob.get("/public")).text
    await dave.post(f"/posts/{first}/like")
    assert '<span class="count">1</span>' in article((await bob.get("/public")).text, first)
    await bob.post(f"/posts/{first}/like")
    mine = article((await bob.get("/public")).text, first)
    assert 'aria-pressed="true"' in mine and '<span class="count">2</span>' in mine

    # A mute and a block by bob; a block of bob by someone.
    assert (await bob.post("/@carol/mute")).status_code == 303
    assert await _ids(bob) == [first]
    assert (await bob.post("/@carol/unmute")).status_code == 303
    assert await _ids(bob) == [second, first]
    assert (await alice.post("/@bob/block")).status_code == 303
    assert await _ids(bob) == [second]
    assert (await alice.post("/@bob/unblock")).status_code == 303
    assert await _ids(bob) == [second, first]

    # A delete; a renamed author.
    assert (await carol.post(f"/posts/{second}/delete", {"confirm": "yes"})).status_code == 303
    assert await _ids(bob) == [first]
    renamed = await alice.post("/settings", {"display_name": "Alice Renamed", "bio": "", "email": ""})
    assert renamed.status_code == 303
    assert "Alice Renamed" in (await bob.get("/public")).text

    # An erased author takes their posts away; an erased viewer's blob goes with them.
    svc, cache = redis_app.state.services, redis_app.state.cache
    bob_user = await accounts.find_user(svc, "bob")
    await erasure.erase_user(svc, "alice")
    assert cache.cached(PUBLIC_PAGES, bob_user.id) is None
    assert await _ids(bob) == []
    third = await dave.compose("dave's words")
    assert await _ids(bob) == [third] and cache.cached(PUBLIC_PAGES, bob_user.id) is not None
    await erasure.erase_user(svc, "bob")
    assert cache.cached(PUBLIC_PAGES, bob_user.id) is None


async def test_metrics_count_page_blobs_and_the_viewers_holding_them(make_redis_browser: Any, redis_app: Any) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    await alice.compose("counted words")
    token = await accounts.create_token(redis_app.state.services, "bob")
    async with client_for(redis_app, headers={"Authorization": f"Bearer {token}"}) as api:
        assert (await api.get("/api/v1/timelines/home")).status_code == 200
    for url in ("/", "/public"):
        assert (await bob.get(url)).status_code == 200
    assert (await alice.get("/public")).status_code == 200
    values = parse((await client_for(redis_app).get("/metrics")).text)
    assert values[series("cipherfeed_page_blobs")] == 4  # bob's three kinds, alice's public page
    assert values[series("cipherfeed_page_blob_viewers")] == 2


async def test_a_change_to_the_home_timeline_alone_keeps_the_public_blob(
    make_redis_browser: Any, redis_app: Any
) -> None:
    """The public page's posts are not chosen by the viewer's home or follows: a fan-out into bob's home (a
    followers-only post, which the public timeline never shows) leaves his public blob as it is."""
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    await alice.compose("public first")
    assert (await bob.post("/@alice/follow")).status_code == 303
    assert "public first" in (await bob.get("/public")).text
    bob_user = await accounts.find_user(redis_app.state.services, "bob")
    blob = redis_app.state.cache.cached(PUBLIC_PAGES, bob_user.id)
    assert isinstance(blob, SealedPage)
    await alice.compose("for followers only", visibility="followers")
    for _ in range(50):  # until the fan-out has reached bob's home
        if "for followers only" in (await bob.get("/")).text:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the followers-only post never reached bob's home")
    assert redis_app.state.cache.cached(PUBLIC_PAGES, bob_user.id) is blob
    assert "for followers only" not in (await bob.get("/public")).text
    # A mute drops both.
    assert (await bob.post("/@alice/mute")).status_code == 303
    assert redis_app.state.cache.cached(PUBLIC_PAGES, bob_user.id) is None


async def test_an_l1_only_blob_is_read_until_it_expires(make_redis_browser: Any, redis_app: Any) -> None:
    """Public and API blobs live in L1 only: nothing could refresh them early, so none is ever due for a refresh
    (which would send every read of its last fifth of life the slow way) while the home page's blob, in Redis too,
    is."""
    alice = await make_redis_browser("alice")
    await alice.compose("read to the end")
    for url in ("/", "/public"):
        assert (await alice.get(url)).status_code == 200
    cache, alice_user = redis_app.state.cache, await accounts.find_user(redis_app.state.services, "alice")
    assert cache.cached(PUBLIC_PAGES, alice_user.id) is not None and cache.cached(PAGES, alice_user.id) is not None

    def age(space: Any, seconds: float) -> None:  # as if the blob had been kept ``seconds`` earlier
        entry = cache._own[space.name].recent[redis_key(space, alice_user.id)]
        entry.expires -= seconds
        entry.refresh_at -= seconds

    for space in (PUBLIC_PAGES, PAGES):
        age(space, 0.9 * space.l1_ttl)
    assert cache.cached(PUBLIC_PAGES, alice_user.id) is not None
    assert cache.cached(PAGES, alice_user.id) is None, "due for a refresh from Redis"
    age(PUBLIC_PAGES, 0.2 * PUBLIC_PAGES.l1_ttl)
    assert cache.cached(PUBLIC_PAGES, alice_user.id) is None


async def test_a_public_page_drawn_counts_one_miss(make_redis_browser: Any, redis_app: Any) -> None:
    """The hot path's try of a blob in L1 only, which is not there, is no miss of its own: the draw's is the one."""
    alice = await make_redis_browser("alice")
    await alice.compose("missed once")

    async def misses() -> float:
        values = parse((await client_for(redis_app).get("/metrics")).text)
        return values.get(series("cipherfeed_cache_misses_total", space="q"), 0.0)

    before = await misses()
    assert "missed once" in (await alice.get("/public")).text
    assert await misses() == before + 1
    assert "missed once" in (await alice.get("/public")).text
    assert await misses() == before + 1


async def _status_ids(api: Any) -> list[int]:
    response = await api.get("/api/v1/timelines/public")
    assert response.status_code == 200, response.text
    return [int(status["id"]) for status in response.json()]


async def test_the_apps_public_timeline_comes_from_the_viewers_blob(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's public timeline, first page, for a viewer with a token: the JSON the stack writes, from a blob
    drawn once (in L1 only), redrawn by every kind of change the public page's blob follows; nobody else's and no
    other page is kept."""
    alice, carol = await make_redis_browser("alice"), await make_redis_browser("carol")
    await make_redis_browser("bob")
    svc, cache = redis_app.state.services, redis_app.state.cache
    first = await alice.compose(f"{CANARY} for the apps")
    bob_user = await accounts.find_user(svc, "bob")
    token = await accounts.create_token(svc, "bob")
    async with client_for(redis_app, headers={"Authorization": f"Bearer {token}"}) as api:
        drawn = await api.get("/api/v1/timelines/public")
        assert drawn.status_code == 200 and drawn.headers["access-control-allow-origin"] == "*"
        blob = cache.cached(PUBLIC_STATUS_PAGES, bob_user.id)
        assert isinstance(blob, SealedPage) and blob.posts[0][0] == first and blob.source
        assert CANARY.encode() not in blob.sealed.data
        assert not await cache.link.client.exists(redis_key(PUBLIC_STATUS_PAGES, bob_user.id))  # L1 only
        draws = count_draws(monkeypatch, "public")
        for _ in range(5):
            served = await api.get("/api/v1/timelines/public")
            assert served.json() == drawn.json() and served.headers.get("link") == drawn.headers.get("link")
        assert draws[0] == 0, f"drawn {draws[0]} times in 5 reads"
        with monkeypatch.context() as patched:  # the stack's own answer (no blob) is the same JSON
            patched.setattr(page_blobs, "serve_statuses", _none)
            patched.setattr(page_blobs, "held", lambda *args, **kwargs: None)  # the hot path's
            stack = await api.get("/api/v1/timelines/public")
        assert stack.json() == drawn.json() and stack.headers.get("link") == drawn.headers.get("link")
        assert f"{CANARY} for the apps" in stack.json()[0]["content"]

        # Anyone's new public post; not a followers-only one.
        second = await carol.compose("carol's public words")
        await carol.compose("for carol's followers", visibility="followers")
        assert await _status_ids(api) == [second, first]
        # A like by someone else, by its count; an edit; a mute and a block; a delete.
        await carol.post(f"/posts/{first}/like")
        assert (await api.get("/api/v1/timelines/public")).json()[1]["favourites_count"] == 1
        edited = await alice.post(f"/posts/{first}/edit", {"status": "edited for the apps", "revision": "1"})
        assert edited.status_code == 303
        assert "edited for the apps" in (await api.get("/api/v1/timelines/public")).json()[1]["content"]
        assert (
            await api.post(f"/api/v1/accounts/{(await accounts.find_user(svc, 'carol')).id}/mute")
        ).status_code == 200
        assert await _status_ids(api) == [first]
        assert (await alice.post("/@bob/block")).status_code == 303
        assert await _status_ids(api) == []
        assert (await alice.post("/@bob/unblock")).status_code == 303
        assert await _status_ids(api) == [first]
        assert (await alice.post(f"/posts/{first}/delete", {"confirm": "yes"})).status_code == 303
        assert await _status_ids(api) == []

        # Other pages and anonymous readers: drawn each time, no blob of theirs.
        cache.drop_space(PUBLIC_STATUS_PAGES)
        assert (await api.get("/api/v1/timelines/public?local=true")).status_code == 200
        assert (await client_for(redis_app).get("/api/v1/timelines/public")).status_code == 200
        assert not cache.l1_keys(PUBLIC_STATUS_PAGES)
        # The viewer's erasure takes their blob.
        await _status_ids(api)
        assert cache.cached(PUBLIC_STATUS_PAGES, bob_user.id) is not None
        await erasure.erase_user(svc, "bob")
        assert cache.cached(PUBLIC_STATUS_PAGES, bob_user.id) is None


async def test_a_block_from_a_process_that_knows_no_blob_spaces_still_drops_the_blobs(
    make_redis_browser: Any, redis_app: Any
) -> None:
    """An invalidation names the keys its sender knows: an older release relaying bob's block sends his block list's
    key alone. This process drops what that key derives (his page blobs) all the same."""
    alice = await make_redis_browser("alice")
    await make_redis_browser("bob")
    await alice.compose("seen before the block")
    svc, cache = redis_app.state.services, redis_app.state.cache
    bob_user = await accounts.find_user(svc, "bob")
    token = await accounts.create_token(svc, "bob")
    async with client_for(redis_app, headers={"Authorization": f"Bearer {token}"}) as api:
        assert (await api.get("/api/v1/timelines/public")).status_code == 200
    assert cache.cached(PUBLIC_STATUS_PAGES, bob_user.id) is not None
    for handler in redis_app.state.bus._handlers:  # as the bus hands a message from another process
        handler(Invalidation(keys=[redis_key(BLOCKED, bob_user.id)]))
    assert cache.cached(PUBLIC_STATUS_PAGES, bob_user.id) is None
