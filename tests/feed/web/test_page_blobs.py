"""A viewer's home page as one sealed blob: served from it, filled per request, readable by its viewer's key only,
never holding text in clear, and gone with an erasure."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

import pytest

from crypto import FieldContext, InvalidToken, open_field
from feed.cache import PAGES, STATUS_PAGES, redis_key
from feed.records import SealedPage
from feed.services import accounts, erasure, timelines
from feed.web import page_blobs
from tests.conftest import client_for
from tests.feed.web.test_frames import article

pytestmark = pytest.mark.anyio
CANARY = "blob-canary-5e1d"
MOMENT = re.compile(r'since=\d+|name="idempotency_key" value="[^"]+"')


def count_draws(monkeypatch: pytest.MonkeyPatch, timeline: str = "home") -> list[int]:
    """How many times a page of ``timeline`` is drawn from here on (the one item of the list returned)."""
    draws = [0]
    real = getattr(timelines, timeline)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        draws[0] += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(timelines, timeline, counted)
    return draws


async def _user(app: Any, name: str) -> Any:
    return await accounts.find_user(app.state.services, name)


async def _key(app: Any, user: Any) -> Any:
    svc = app.state.services
    async with svc.db() as session:
        return await svc.keys.get(session, user.id, user.key_version)


async def test_the_home_page_comes_from_the_viewers_sealed_blob(make_redis_browser: Any, redis_app: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    await bob.post("/@alice/follow")
    post = await alice.compose(f"{CANARY} and <b>markup</b>")
    bob_user = await _user(redis_app, "bob")
    blob = None
    for _ in range(50):  # until the worker's fan-out (which drops bob's blob) has run
        drawn = (await bob.get("/")).text
        if blob is not None and redis_app.state.cache.cached(PAGES, bob_user.id) is blob:
            break
        blob = redis_app.state.cache.cached(PAGES, bob_user.id)
        await asyncio.sleep(0.1)
    assert f"{CANARY} and &lt;b&gt;markup&lt;/b&gt;" in drawn and page_blobs.HOLE not in drawn
    assert isinstance(blob, SealedPage) and blob.posts[0][0] == post
    assert CANARY.encode() not in blob.sealed.data
    stored = await redis_app.state.cache.link.client.get(redis_key(PAGES, bob_user.id))
    assert stored and CANARY.encode() not in stored and b"markup" not in stored

    draws = count_draws(monkeypatch)
    for _ in range(10):
        served = (await bob.get("/")).text
        assert MOMENT.sub("", served) == MOMENT.sub("", drawn)
    assert draws[0] <= 1, f"the page was drawn {draws[0]} times in 10 reads"  # once if the worker's fan-out came late

    # The holes follow each request: a like and a reply by others, bob's own like, the time.
    await alice.post(f"/posts/{post}/like")
    await alice.compose("a reply", in_reply_to_id=str(post))
    await bob.post(f"/posts/{post}/like")
    mine = article((await bob.get("/")).text, post)
    assert 'aria-pressed="true"' in mine and '<span class="count">2</span>' in mine
    assert 'Reply <span class="count">1</span>' in mine


async def test_no_other_viewers_key_opens_a_blob(make_redis_browser: Any, redis_app: Any) -> None:
    alice = await make_redis_browser("alice")
    await make_redis_browser("bob")
    await alice.compose(f"{CANARY} for alice's eyes")
    await alice.get("/")
    alice_user, bob_user = await _user(redis_app, "alice"), await _user(redis_app, "bob")
    blob = redis_app.state.cache.cached(PAGES, alice_user.id)
    assert isinstance(blob, SealedPage)
    alice_key, bob_key = await _key(redis_app, alice_user), await _key(redis_app, bob_user)
    digest = blob.header_digest()
    assert CANARY in open_field(alice_key, blob.sealed, FieldContext("page:home", alice_user.id, alice_user.id, digest))
    for owner in (alice_user.id, bob_user.id):
        with pytest.raises(InvalidToken):
            open_field(bob_key, blob.sealed, FieldContext("page:home", owner, owner, digest))
    # The sealed text opens only beside the clear fields it was drawn with: another page's posts, names, holes or
    # expiry put beside it (by whoever can write to Redis) do not open.
    for changed in (replace(blob, posts=()), replace(blob, expires=blob.expires + 60), replace(blob, holes="")):
        with pytest.raises(InvalidToken):
            open_field(alice_key, blob.sealed, FieldContext("page:home", alice_user.id, alice_user.id,
                                                            changed.header_digest()))  # fmt: skip


async def test_two_browsers_with_different_audiences_share_one_blob(
    make_redis_browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The composer starts with each browser's last audience (a cookie): a hole of the blob, not a blob each."""
    alice = await make_redis_browser("alice")
    await alice.compose("for everyone", visibility="followers")  # this browser's last audience: followers
    await alice.get("/")
    draws = count_draws(monkeypatch)
    for cookie in ("public", "followers", "direct", "followers"):
        alice.http.cookies.delete("cf_visibility")
        alice.http.cookies.set("cf_visibility", cookie)
        page = (await alice.get("/")).text
        assert re.findall(r'<option value="(\w+)" selected>', page) == [cookie]
    assert draws[0] <= 1  # once if the worker's fan-out of the post came late


async def test_an_erasure_leaves_no_blob_behind(make_redis_browser: Any, redis_app: Any) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    carol = await make_redis_browser("carol")
    await bob.post("/@alice/follow")
    await alice.compose(f"{CANARY} by alice")
    await carol.compose("carol's own")
    bob_api = await _api_client(redis_app, "bob")
    carol_api = await _api_client(redis_app, "carol")
    for reader, api in ((bob, bob_api), (carol, carol_api)):
        await reader.get("/")
        await api.get("/api/v1/timelines/home")
    cache, svc = redis_app.state.cache, redis_app.state.services
    bob_user, carol_user = await _user(redis_app, "bob"), await _user(redis_app, "carol")
    redis = cache.link.client
    assert await redis.exists(redis_key(PAGES, bob_user.id), redis_key(PAGES, carol_user.id)) == 2
    assert cache.cached(STATUS_PAGES, bob_user.id) and cache.cached(STATUS_PAGES, carol_user.id)

    # Erasing a viewer: their blobs go (and their key, so no copy of them anywhere could be opened).
    await erasure.erase_user(svc, "carol")
    assert cache.cached(PAGES, carol_user.id) is None and cache.cached(STATUS_PAGES, carol_user.id) is None
    assert not await redis.exists(redis_key(PAGES, carol_user.id))

    # Erasing an author: their words may be in anyone's blob, so every blob goes.
    await erasure.erase_user(svc, "alice")
    assert cache.cached(PAGES, bob_user.id) is None and cache.cached(STATUS_PAGES, bob_user.id) is None
    assert not await redis.exists(redis_key(PAGES, bob_user.id))
    page = (await bob.get("/")).text
    assert CANARY not in page
    assert CANARY not in (await bob_api.get("/api/v1/timelines/home")).text
    await bob_api.aclose()
    await carol_api.aclose()


async def _api_client(app: Any, username: str) -> Any:
    token = await accounts.create_token(app.state.services, username)
    return client_for(app, headers={"Authorization": f"Bearer {token}"})


async def _blob_settled(app: Any, read: Any, space: Any, user_id: int) -> Any:
    """What ``read()`` answers once the viewer's blob stays (the worker's fan-out, which drops it, has run)."""
    blob = None
    for _ in range(50):
        answer = await read()
        if blob is not None and app.state.cache.cached(space, user_id) is blob:
            return answer
        blob = app.state.cache.cached(space, user_id)
        await asyncio.sleep(0.1)
    raise AssertionError("the blob never settled")


async def test_the_api_home_timeline_comes_from_the_viewers_sealed_blob(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    carol = await make_redis_browser("carol")
    await bob.post("/@alice/follow")
    carols = await carol.compose("carol's, boosted by alice")
    await alice.post(f"/posts/{carols}/boost")
    post = await alice.compose(f"{CANARY} with 100% <b>markup</b>")
    await alice.compose("a reply to it", in_reply_to_id=str(post))
    bob_user = await _user(redis_app, "bob")
    async with await _api_client(redis_app, "bob") as api:
        home = "/api/v1/timelines/home"
        served = await _blob_settled(redis_app, lambda: api.get(home), STATUS_PAGES, bob_user.id)
        blob = redis_app.state.cache.cached(STATUS_PAGES, bob_user.id)
        assert isinstance(blob, SealedPage) and blob.posts[0][0] != carols
        assert CANARY.encode() not in blob.sealed.data and b"markup" not in blob.sealed.data
        assert not await redis_app.state.cache.link.client.exists(redis_key(STATUS_PAGES, bob_user.id))  # L1 only

        # The same JSON and Link header as the timeline written the ordinary way.
        async def ordinary() -> Any:
            with monkeypatch.context() as patched:
                patched.setattr(page_blobs, "serve_statuses", _none)
                return await api.get(home)

        def same(answer: Any, wanted: Any) -> None:
            assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
            assert answer.json() == wanted.json() and answer.headers.get("link") == wanted.headers.get("link")

        same(served, await ordinary())
        statuses = served.json()
        assert [s["reblog"]["id"] if s["reblog"] else s["id"] for s in statuses][1:3] == [str(post), str(carols)]
        assert statuses[1]["content"].count(CANARY) == 1 and statuses[2]["account"]["username"] == "alice"
        assert 'rel="next"' not in served.headers.get("link", "") or "max_id" in served.headers["link"]

        # Counts and accounts are holes: others' likes, follows and replies show without drawing the blob again.
        draws = count_draws(monkeypatch)
        await carol.post("/@alice/follow")  # alice's account counts, and nothing else
        answer = await api.get(home)
        assert [s["account"]["followers_count"] for s in answer.json()][1:3] == [2, 2]
        await carol.post(f"/posts/{post}/like")
        await carol.compose("another reply", in_reply_to_id=str(post))
        answer = await api.get(home)
        mine = next(s for s in answer.json() if s["id"] == str(post))
        assert (mine["favourites_count"], mine["replies_count"], mine["account"]["followers_count"]) == (1, 2, 2)
        assert mine["favourited"] is False
        assert draws[0] == 0, "a count changed the blob"
        same(answer, await ordinary())

        # The viewer's own like is drawn in: it draws the blob again.
        await bob.post(f"/posts/{post}/like")
        mine = next(s for s in (await api.get(home)).json() if s["id"] == str(post))
        assert (mine["favourited"], mine["favourites_count"]) == (True, 2)

        # Another viewer's key opens none of it.
        blob = redis_app.state.cache.cached(STATUS_PAGES, bob_user.id)
        alice_user = await _user(redis_app, "alice")
        bob_key, alice_key = await _key(redis_app, bob_user), await _key(redis_app, alice_user)
        context = FieldContext("page:api:home", bob_user.id, bob_user.id, blob.header_digest())
        assert CANARY in open_field(bob_key, blob.sealed, context)
        with pytest.raises(InvalidToken):
            open_field(alice_key, blob.sealed, context)


async def _none(*args: Any) -> None:
    return None


async def test_an_api_blob_follows_the_host_and_the_limit(make_redis_browser: Any, redis_app: Any) -> None:
    """Statuses link to the address they were asked at, and a page holds as many as asked: each its own blob."""
    alice = await make_redis_browser("alice")
    for n in range(3):
        await alice.compose(f"post {n}")
    async with await _api_client(redis_app, "alice") as api:
        first = (await api.get("/api/v1/timelines/home")).json()
        other = (await api.get("/api/v1/timelines/home", headers={"Host": "other.example"})).json()
        assert first[0]["url"].startswith("http://testserver/") and other[0]["url"].startswith("http://other.example/")
        two = await api.get("/api/v1/timelines/home?limit=2")
        assert len(two.json()) == 2 and "limit=2" in two.headers["link"]
        assert len((await api.get("/api/v1/timelines/home")).json()) == 3


async def test_a_burst_of_reads_after_a_change_checks_the_blob_once(
    make_redis_browser: Any, redis_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a change the blob's kept check no longer stands: the reads that come together wait for one check of it,
    not one each, and all of them get the page with the change."""
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    await bob.post("/@alice/follow")
    post = await alice.compose("checked once")
    bob_user = await _user(redis_app, "bob")
    for _ in range(50):  # until the fan-out has come and bob's blob is held and checked
        await bob.get("/")
        blob = redis_app.state.cache.cached(PAGES, bob_user.id)
        if isinstance(blob, SealedPage) and blob.checked is not None:
            break
        await asyncio.sleep(0.05)
    checks = [0]
    real = page_blobs._check

    async def slow(*args: Any) -> Any:
        checks[0] += 1
        await asyncio.sleep(0.05)  # long enough for every read of the burst to arrive meanwhile
        return await real(*args)

    monkeypatch.setattr(page_blobs, "_check", slow)
    await alice.post(f"/posts/{post}/like")  # the posts' stamp moves: the kept check no longer stands
    pages = await asyncio.gather(*(bob.get("/") for _ in range(8)))
    assert all('<span class="count">1</span>' in article(page.text, post) for page in pages)
    assert checks[0] == 1, f"{checks[0]} checks for one burst"
    assert redis_app.state.cache.cached(PAGES, bob_user.id) is blob and blob.checking is None
