"""Erasure: ``cipherfeed users delete`` and the settings page crypto-shred an account; the purge job removes the rest.

The database copy below is what a thief of the database (and of the root key) would hold: every row, read directly.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

import pytest
import sqlalchemy as sa

from crypto import FieldContext, InvalidToken, RootKeyRing, open_field
from feed.cache import FRAMES, POSTS, redis_key
from feed.errors import Conflict, NotFound
from feed.services import accounts, erasure
from feed.services.jobs import run_maintenance
from feed.storage.tables import erasure_receipts, posts, sessions, user_keys, users
from jobs.registry import MAINTENANCE
from tests.conftest import PASSWORD, Browser, client_for
from tests.feed.test_cli import cipherfeed

pytestmark = pytest.mark.anyio

ALICE_TEXTS = ("alice public words", "alice followers words", "alice direct words", "alice reply words")


async def world(make_browser: Any) -> tuple[Browser, Browser, dict[str, int]]:
    """alice (to be erased) and bob follow each other, reply to, like and mention each other."""
    alice = await make_browser("alice", email="alice@example.org")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    await alice.post("/@bob/follow")
    ids = {"bob_post": await bob.compose("bob own words")}
    ids["alice_public"] = await alice.compose(ALICE_TEXTS[0], spoiler_text="alice warning")
    ids["alice_followers"] = await alice.compose(ALICE_TEXTS[1], visibility="followers")
    ids["alice_direct"] = await alice.compose(f"@bob {ALICE_TEXTS[2]}", visibility="direct")
    ids["alice_reply"] = await alice.compose(f"@bob {ALICE_TEXTS[3]}", in_reply_to_id=str(ids["bob_post"]))
    ids["bob_reply"] = await bob.compose("@alice bob reply words", in_reply_to_id=str(ids["alice_public"]))
    assert (await alice.post(f"/posts/{ids['bob_post']}/like")).status_code == 303
    assert (await bob.post(f"/posts/{ids['alice_public']}/like")).status_code == 303
    return alice, bob, ids


async def user_id(app: Any, name: str) -> int:
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(sa.select(users.c.id).where(users.c.username == name))).scalar_one())


async def database_copy(app: Any) -> dict[str, list[Any]]:
    async with app.state.engine.connect() as conn:
        return {
            "posts": (await conn.execute(sa.select(posts))).all(),
            "user_keys": (await conn.execute(sa.select(user_keys))).all(),
        }


def readable(copy: dict[str, list[Any]], ring: RootKeyRing) -> dict[int, str]:
    """Every post body that the rows and the root key open, trying every key in the copy on every post."""
    keys = [ring.unwrap_user_key(k.wrapped, user_id=k.user_id, version=k.version) for k in copy["user_keys"]]
    out = {}
    for post in copy["posts"]:
        for key in keys:
            try:
                out[post.id] = open_field(key, post.body, FieldContext("body", post.id, post.author_id, post.revision))
            except InvalidToken:
                continue
    return out


async def purge(app: Any) -> Any:
    return await run_maintenance(app.state.services, MAINTENANCE["purge_erased"])


async def test_users_delete_leaves_a_database_copy_and_the_root_key_unable_to_read_the_users_posts(
    make_browser: Any, app: Any, env: dict[str, str], root_key_json: str
) -> None:
    alice, bob, ids = await world(make_browser)
    alice_posts = [ids[k] for k in ids if k.startswith("alice_")]
    ring = RootKeyRing.from_json(root_key_json)
    assert set(alice_posts) <= set(readable(await database_copy(app), ring))  # the check can read them before
    for url in ("/", *(f"/posts/{i}" for i in ids.values())):  # their sealed records and frames get cached
        assert (await bob.get(url)).status_code == 200
    cache = app.state.cache
    assert all(cache.cached(POSTS, i) is not None for i in alice_posts)

    deleted = cipherfeed(env, "users", "delete", "alice")
    assert deleted.returncode == 0, deleted.stderr
    assert "erased @alice: 1 key(s) destroyed, 1 session(s)" in deleted.stdout

    # A copy of the database and the root key: no key of alice is left, and no other key opens her posts.
    copy = await database_copy(app)
    alice_id = await user_id(app, "alice")
    assert [k for k in copy["user_keys"] if k.user_id == alice_id] == []
    opened = readable(copy, ring)
    assert not set(alice_posts) & set(opened)
    assert {p.id for p in copy["posts"]} >= set(alice_posts)  # the dead ciphertext is still there, unreadable
    assert opened[ids["bob_post"]] == "bob own words" and "bob reply words" in opened[ids["bob_reply"]]
    assert [r.key_ids for r in await erasure.receipts_for(app.state.services, alice_id)] == ["v1@root1"]

    # Her profile is gone at once, her password opens nothing, other users' posts are intact.
    assert (await bob.get("/@alice")).status_code == 404
    stranger = Browser(client_for(app))
    await stranger.get("/login")
    assert (await stranger.post("/login", {"username": "alice", "password": PASSWORD})).status_code == 401
    await stranger.http.aclose()
    if app.state.cache.link is not None:
        # Scaled mode: the command's invalidations reached this process over the bus: her session is over, and
        # nothing of hers shows.
        for _ in range(100):
            if (await alice.get("/settings")).status_code == 303:
                break
            await asyncio.sleep(0.02)
        assert (await alice.get("/settings")).status_code == 303
        for url in ("/@bob", f"/posts/{ids['bob_post']}", f"/posts/{ids['bob_reply']}"):
            page = (await bob.get(url)).text
            assert "bob own words" in page or "bob reply words" in page, url
            assert not any(t in page for t in ALICE_TEXTS), url
    # (The embedded mode has no bus: a separate ``cipherfeed`` process cannot reach a running server's memory,
    # which forgets the keys within their 5-minute lifetime; the settings page erases in-process.)

    # The purge removes the dead ciphertext, the rows and every cached blob of her posts.
    link = cache.link
    if link is not None:
        assert await link.client.exists(redis_key(POSTS, ids["alice_public"]))
    run = await purge(app)
    assert run.changed["posts"] == len(alice_posts) and run.changed["users"] == 1
    copy = await database_copy(app)
    assert not {p.id for p in copy["posts"]} & set(alice_posts)
    for post_id in alice_posts:
        assert cache.cached(POSTS, post_id) is None and cache.cached(FRAMES, post_id) is None
        if link is not None:
            assert not await link.client.exists(redis_key(POSTS, post_id), redis_key(FRAMES, post_id))
    async with app.state.engine.connect() as conn:
        assert (await conn.execute(sa.select(users.c.id).where(users.c.id == alice_id))).first() is None
    assert (await bob.get(f"/posts/{ids['bob_post']}")).status_code == 200


async def test_pages_and_the_api_work_while_the_dead_posts_wait_for_the_purge(
    make_browser: Any, api: Any, app: Any
) -> None:
    _, bob, ids = await world(make_browser)
    svc = app.state.services
    alice_id, bob_id = await user_id(app, "alice"), await user_id(app, "bob")
    client = await api()
    client.headers["Authorization"] = f"Bearer {await accounts.create_token(svc, 'bob')}"
    for url in ("/", "/public", "/@bob", "/@alice"):
        assert (await bob.get(url)).status_code == 200

    receipt = await erasure.erase_user(svc, "alice")
    assert receipt.keys == ((1, 1),) and receipt.sessions == 1

    anonymous = Browser(client_for(app))
    for reader in (bob, anonymous):
        for url in ("/", "/public", "/@bob", "/@bob/followers", f"/posts/{ids['bob_post']}",
                    f"/posts/{ids['bob_reply']}"):  # fmt: skip
            page = await reader.get(url)
            assert page.status_code == 200, url
            assert not any(html.escape(t) in page.text for t in ALICE_TEXTS), url
        for url in ("/@alice", "/@alice/followers", f"/posts/{ids['alice_public']}", f"/posts/{ids['alice_reply']}"):
            assert (await reader.get(url)).status_code == 404, url
    assert 'href="/@alice"' not in (await bob.get("/@bob/followers")).text
    await anonymous.http.aclose()
    for url in ("/api/v1/timelines/home", "/api/v1/timelines/public", f"/api/v1/accounts/{bob_id}/statuses"):
        response = await client.get(url)
        assert response.status_code == 200, url
        assert not any(t in response.text for t in ALICE_TEXTS)
    context = await client.get(f"/api/v1/statuses/{ids['bob_reply']}/context")
    assert context.status_code == 200 and context.json()["ancestors"] == []
    for url in (f"/api/v1/statuses/{ids['alice_public']}", f"/api/v1/accounts/{alice_id}",
                f"/api/v1/accounts/{alice_id}/statuses", "/api/v1/accounts/lookup?acct=alice"):  # fmt: skip
        assert (await client.get(url)).status_code == 404, url
    assert (await client.get(f"/api/v1/accounts/relationships?id[]={alice_id}")).json() == []
    with pytest.raises(NotFound):
        await accounts.find_user(svc, "alice")
    with pytest.raises(Conflict):
        await erasure.erase(svc, alice_id)

    # After the purge: her like and her reply no longer count on bob's post, bob lost a follower, her name is free.
    run = await purge(app)
    # likes: bob's of her post, hers of bob's; mentions: of bob in two of her posts, of her in bob's reply
    assert run.changed == {"posts": 4, "likes": 2, "mentions": 3, "follows": 2, "users": 1}
    status = (await client.get(f"/api/v1/statuses/{ids['bob_post']}")).json()
    assert (status["favourites_count"], status["replies_count"]) == (0, 0)
    account = (await client.get(f"/api/v1/accounts/{bob_id}")).json()
    assert (account["followers_count"], account["following_count"]) == (0, 0)
    assert (await bob.get(f"/posts/{ids['bob_reply']}")).status_code == 200
    again = await accounts.register(svc, "alice", PASSWORD)
    assert again.id != alice_id
    assert (await bob.get("/@alice")).status_code == 200
    with pytest.raises(NotFound):
        await erasure.erase_user(svc, "nobody")


async def test_the_settings_page_deletes_the_account_with_the_password_and_a_csrf_token(
    make_browser: Any, app: Any
) -> None:
    svc = app.state.services
    alice = await make_browser("alice")
    other_device = await make_browser()
    await other_device.get("/login")
    assert (await other_device.post("/login", {"username": "alice", "password": PASSWORD})).status_code == 303
    token = await accounts.create_token(svc, "alice")
    await alice.compose("alice words")
    page = (await alice.get("/settings")).text
    assert 'action="/settings/delete"' in page and "cannot be undone" in page
    alice_id = await user_id(app, "alice")

    async def keys() -> int:
        async with app.state.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(user_keys).where(user_keys.c.user_id == alice_id)
            return int((await conn.execute(query)).scalar_one())

    forged = await alice.http.post(
        "/settings/delete", data={"password": PASSWORD}, headers={"Origin": "http://testserver"}
    )
    assert forged.status_code == 403
    wrong = await alice.post("/settings/delete", {"password": "not my password at all"})
    assert wrong.status_code == 422 and "That password is wrong" in wrong.text
    assert 'aria-describedby="delete_password-error"' in wrong.text
    assert (await alice.post("/settings/delete", {"password": ""})).status_code == 422
    assert await keys() == 1 and (await alice.get("/settings")).status_code == 200

    done = await alice.post("/settings/delete", {"password": PASSWORD})
    assert done.status_code == 200
    assert "Your account is deleted" in done.text and 'class="notice"' in done.text
    assert "Log out" not in done.text  # drawn for nobody
    assert 'cf_session=""' in done.headers["set-cookie"]
    assert await keys() == 0
    assert len(await erasure.receipts_for(svc, alice_id)) == 1
    for browser in (alice, other_device):
        assert (await browser.get("/settings")).status_code == 303
    assert await accounts.token_user(svc, token) is None
    async with app.state.engine.connect() as conn:
        left = await conn.execute(sa.select(sessions).where(sessions.c.user_id == alice_id))
        assert left.all() == []
        receipt = (await conn.execute(sa.select(erasure_receipts))).one()
    assert receipt.subject == erasure.subject(svc, alice_id) and len(receipt.subject) == 32
    assert str(alice_id) not in receipt.key_ids


async def test_an_erasure_drops_the_users_pending_jobs(redis_clean: Any) -> None:
    """Jobs about one user carry the key ``NAME:USER_ID``; erasing the user drops theirs, and only theirs."""
    svc = redis_clean.state.services
    alice = await accounts.register(svc, "alice", PASSWORD)
    bob = await accounts.register(svc, "bob", PASSWORD)
    for user in (alice, bob):  # deferred, so that the worker leaves them waiting
        assert await svc.queue.enqueue("rebuild_feed", user.id, key=f"rebuild_feed:{user.id}", delay=300)
    pool = svc.queue.pool

    receipt = await erasure.erase(svc, alice.id)
    assert receipt.jobs == 1
    waiting = [member.decode() for member in await pool.zrange(pool.default_queue_name, 0, -1)]
    assert waiting == [f"rebuild_feed:{bob.id}"]
    assert not await pool.exists(f"arq:job:rebuild_feed:{alice.id}")
    await pool.zrem(pool.default_queue_name, f"rebuild_feed:{bob.id}")
    await pool.delete(f"arq:job:rebuild_feed:{bob.id}")
