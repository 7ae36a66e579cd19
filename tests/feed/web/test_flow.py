from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


async def test_register_post_follow_like_reply_edit_delete(make_browser):
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    post_id = await alice.compose("Hello from <alice> & friends")
    page = await alice.get("/")
    assert "Hello from &lt;alice&gt; &amp; friends" in page.text
    # bob does not follow alice yet: his home is empty, her profile shows the post
    assert "Hello from" not in (await bob.get("/")).text
    assert "Hello from" in (await bob.get("/@alice")).text
    assert (await bob.post("/@alice/follow")).status_code == 303
    assert "Hello from" in (await bob.get("/")).text
    assert (await bob.post(f"/posts/{post_id}/like")).status_code == 303
    thread = await bob.get(f"/posts/{post_id}")
    assert 'aria-pressed="true"' in thread.text
    reply_id = await bob.compose("@alice nice one", in_reply_to_id=str(post_id))
    thread = await alice.get(f"/posts/{post_id}")
    assert f"post-{reply_id}" in thread.text
    response = await alice.post(f"/posts/{post_id}/edit", {"status": "Edited words", "spoiler_text": ""})
    assert response.status_code == 303
    assert "Edited words" in (await bob.get(f"/posts/{post_id}")).text
    assert (await alice.post(f"/posts/{post_id}/delete")).status_code == 303
    assert (await bob.get(f"/posts/{post_id}")).status_code == 404
