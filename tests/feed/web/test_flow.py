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
    assert (await alice.post(f"/posts/{post_id}/delete", {"confirm": "yes"})).status_code == 303
    assert (await bob.get(f"/posts/{post_id}")).status_code == 404


async def test_the_composer_remembers_the_last_audience_and_lands_home(make_browser):
    alice = await make_browser("alice")
    assert 'value="public" selected' in (await alice.get("/")).text  # nothing chosen yet
    response = await alice.post("/posts", {"status": "for my followers", "visibility": "followers"})
    assert response.status_code == 303 and response.headers["location"].startswith("/#post-"), response.headers
    post_id = int(response.headers["location"].rsplit("#post-", 1)[-1])
    home = (await alice.get("/")).text
    assert f'id="post-{post_id}"' in home and 'value="followers" selected' in home
    bob = await make_browser("bob")
    bobs = await bob.compose("hello, everyone")
    await alice.compose("@bob a reply, unlisted", in_reply_to_id=str(bobs), visibility="unlisted")
    assert 'value="followers" selected' in (await alice.get("/")).text  # a reply does not change it
    posted = await alice.htmx_post("/posts", {"status": "quietly", "visibility": "unlisted"})
    assert posted.status_code == 200 and 'value="unlisted" selected' in posted.text  # the fresh composer, too
    assert 'value="unlisted" selected' in (await alice.get("/")).text
    alice.http.cookies.set("cf_visibility", "everyone-and-their-dog")
    assert 'value="public" selected' in (await alice.get("/")).text


async def test_the_reply_composer_says_whom_it_answers(make_browser):
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    post = await alice.compose("a question for everyone")
    page = (await bob.get(f"/posts/{post}")).text
    assert 'Replying to <a href="/@alice">@alice</a>' in page and "Your reply to @alice" in page
    assert ">@alice </textarea>" in page  # and starts with the mention
    refused = await bob.post("/posts", {"status": "x" * 501, "in_reply_to_id": str(post)})
    assert refused.status_code == 422 and 'Replying to <a href="/@alice">@alice</a>' in refused.text
    assert "Replying to" not in (await bob.get("/")).text  # a new post answers nobody
