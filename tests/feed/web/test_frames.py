"""Post frames: drawn once per revision, cached only sealed under the post's data key, and filled per reader."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from feed.cache import FRAMES
from feed.records import SealedFrame

pytestmark = pytest.mark.anyio


def article(page: str, post_id: int) -> str:
    found = re.search(rf'<article[^>]*id="post-{post_id}".*?</article>', page, re.S)
    assert found, f"post {post_id} is not on the page"
    return found.group(0)


async def test_a_page_from_cached_frames_is_the_page_drawn_afresh(make_browser: Any, app: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    ids = [await alice.compose(f"frame number {i} with <b>markup</b> & @bob", spoiler_text="cw") for i in range(3)]
    drawn = (await bob.get("/")).text
    cache = app.state.cache
    frames = {i: cache.cached(FRAMES, i) for i in ids}
    assert all(isinstance(f, SealedFrame) for f in frames.values()), "each post's frame is cached, sealed"
    assert all(b"frame number" not in f.sealed.data for f in frames.values())
    opened = (await bob.get("/")).text
    # The live stream's address names the moment the page was drawn; the composer has a new draft's key each time.
    moment = re.compile(r'since=\d+|name="idempotency_key" value="[^"]+"')
    assert moment.sub("", opened) == moment.sub("", drawn)
    assert "frame number 2 with &lt;b&gt;markup&lt;/b&gt; &amp; " in opened


async def test_the_parts_of_a_shared_frame_follow_each_reader(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    post = await alice.compose("one frame, two readers")
    await bob.post(f"/posts/{post}/like")
    await alice.post(f"/posts/{await alice.compose('a reply', in_reply_to_id=str(post))}/like")
    for _ in range(2):  # drawn, then from the cache
        mine = article((await alice.get("/@alice")).text, post)
        theirs = article((await bob.get("/@alice")).text, post)
        anonymous = article((await (await make_browser()).get("/@alice")).text, post)
        assert "Delete" in mine and 'aria-pressed="false"' in mine
        assert "Delete" not in theirs and 'aria-pressed="true"' in theirs
        assert "Log in to like" in anonymous and "csrf_token" not in anonymous
        for html in (mine, theirs, anonymous):
            assert 'Reply <span class="count">1</span>' in html and '<span class="count">1</span>' in html


async def test_a_new_display_name_or_an_edit_draws_the_frame_again(make_browser: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    post = await alice.compose("before")
    assert "before" in article((await bob.get("/")).text, post)
    await alice.post("/settings", {"display_name": "Alice Renamed", "bio": "", "email": ""})
    assert "Alice Renamed" in article((await bob.get("/")).text, post)
    await alice.post(f"/posts/{post}/edit", {"status": "after"})
    shown = article((await bob.get("/")).text, post)
    assert "after" in shown and "before" not in shown and "edited" in shown


async def test_a_frame_moved_to_another_post_does_not_open(make_browser: Any, app: Any) -> None:
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    first = await alice.compose("the first post")
    second = await alice.compose("the second post")
    await bob.get("/")
    cache = app.state.cache
    frame = cache.cached(FRAMES, first)
    target = cache.cached(FRAMES, second)
    assert isinstance(frame, SealedFrame) and isinstance(target, SealedFrame)
    await cache.put(FRAMES, {second: replace(target, sealed=frame.sealed)})  # same revision and stamp, wrong post
    shown = article((await bob.get("/")).text, second)
    assert "the second post" in shown and "the first post" not in shown
