"""A viewer's home page as one sealed blob: served from it, filled per request, readable by its viewer's key only,
never holding text in clear, and gone with an erasure."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from crypto import FieldContext, InvalidToken, open_field
from feed.cache import PAGES, redis_key
from feed.records import SealedPage
from feed.services import accounts, erasure, timelines
from feed.web import page_blobs
from tests.feed.web.test_frames import article

pytestmark = pytest.mark.anyio
CANARY = "blob-canary-5e1d"
MOMENT = re.compile(r'since=\d+|name="idempotency_key" value="[^"]+"')


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

    draws = 0
    real_home = timelines.home

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal draws
        draws += 1
        return await real_home(*args, **kwargs)

    monkeypatch.setattr(timelines, "home", counted)
    for _ in range(10):
        served = (await bob.get("/")).text
        assert MOMENT.sub("", served) == MOMENT.sub("", drawn)
    assert draws <= 1, f"the page was drawn {draws} times in 10 reads"  # once if the worker's fan-out came late

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
    opened = open_field(await _key(redis_app, alice_user), blob.sealed,
                        FieldContext("page:home", alice_user.id, alice_user.id, 0))  # fmt: skip
    assert CANARY in opened
    bob_key = await _key(redis_app, bob_user)
    for owner in (alice_user.id, bob_user.id):
        with pytest.raises(InvalidToken):
            open_field(bob_key, blob.sealed, FieldContext("page:home", owner, owner, 0))


async def test_an_erasure_leaves_no_blob_behind(make_redis_browser: Any, redis_app: Any) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    carol = await make_redis_browser("carol")
    await bob.post("/@alice/follow")
    await alice.compose(f"{CANARY} by alice")
    await carol.compose("carol's own")
    for reader in (bob, carol):
        await reader.get("/")
    cache, svc = redis_app.state.cache, redis_app.state.services
    bob_user, carol_user = await _user(redis_app, "bob"), await _user(redis_app, "carol")
    redis = cache.link.client
    assert await redis.exists(redis_key(PAGES, bob_user.id), redis_key(PAGES, carol_user.id)) == 2

    # Erasing a viewer: their blob goes (and their key, so no copy of it anywhere could be opened).
    await erasure.erase_user(svc, "carol")
    assert cache.cached(PAGES, carol_user.id) is None
    assert not await redis.exists(redis_key(PAGES, carol_user.id))

    # Erasing an author: their words may be in anyone's blob, so every blob goes.
    await erasure.erase_user(svc, "alice")
    assert cache.cached(PAGES, bob_user.id) is None
    assert not await redis.exists(redis_key(PAGES, bob_user.id))
    page = (await bob.get("/")).text
    assert CANARY not in page
