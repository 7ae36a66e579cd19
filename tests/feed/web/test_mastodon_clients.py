"""Issue 11's "Done when": two real, unmodified Mastodon client packages from PyPI (Mastodon.py and toot) sign in
through OAuth on a two-process deployment (the person answers the consent page over HTTP, as their browser would,
and pastes the out-of-band code), then post (one status with a picture, uploaded and processed first), read the home
timeline page by page, favourite, bookmark, boost, follow someone found through search, block and mute someone, list
followers and notifications, use the read markers, and revoke their token: the next call fails with 401 on every
process."""

from __future__ import annotations

import asyncio
import html
import io
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BACKEND
from tests.feed.processes import Account, Cluster

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "postgresql", reason="real processes, once, in the PostgreSQL pass"),
]


async def answer_consent(person: Account, where: str, url: str) -> str:
    """Open the consent page at ``url`` as the person's browser, press Authorise, and read the code shown."""
    browser = person.on[where]
    page = await browser.get(url, follow_redirects=True)
    assert page.status_code == 200, page.text
    fields = {k: html.unescape(v) for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">',
                                                           page.text)}  # fmt: skip
    answered = await browser.post("/oauth/authorize", data=fields | {"decision": "approve"})
    assert answered.status_code == 200, answered.text
    found = re.search(r'id="oauth-code">([^<]+)<', answered.text)
    assert found, answered.text
    return found.group(1)


def pattern_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (320, 200), (200, 120, 40)).save(out, "PNG")
    return out.getvalue()


async def everywhere_unauthorized(cluster: Cluster, token: str) -> None:
    for url in cluster.urls.values():
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            answer = await http.get("/api/v1/timelines/home")
            assert answer.status_code == 401, (url, answer.text)


async def test_mastodon_py_and_toot_sign_in_work_and_sign_out(cluster: Cluster, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    alice, bob = await cluster.account("alice"), await cluster.account("bob")
    await cluster.account("carol")  # whom alice blocks and mutes
    for n in range(5):  # something to page through once alice follows bob
        made = await bob.on["b"].post("/posts", data={"csrf_token": bob.csrf, "status": f"bob's post {n}"})
        assert made.status_code == 303
    followed = await bob.on["b"].post("/@alice/follow", data={"csrf_token": bob.csrf})
    assert followed.status_code == 303  # alice has a notification to read
    a, b = cluster.urls["a"], cluster.urls["b"]

    # -- Mastodon.py, against process A
    from mastodon import Mastodon, MastodonUnauthorizedError

    scopes = ["read", "write", "follow", "push"]
    client_id, client_secret = await asyncio.to_thread(
        Mastodon.create_app, "Mastodon.py test", scopes=scopes, api_base_url=a
    )
    mastodon = Mastodon(client_id=client_id, client_secret=client_secret, api_base_url=a)
    url = await asyncio.to_thread(mastodon.auth_request_url, scopes=scopes, allow_http=True)
    code = await answer_consent(alice, "a", url)

    def mastodon_py_session() -> dict[str, Any]:
        token = mastodon.log_in(code=code, scopes=scopes, allow_http=True)
        me = mastodon.account_verify_credentials()
        picture = mastodon.media_post(pattern_png(), mime_type="image/png", description="a test pattern",
                                      focus=(0.25, -0.5), file_name="pattern.png", synchronous=True)  # fmt: skip
        pictured = mastodon.status_post("with a picture", media_ids=[picture])
        shown = httpx.get(pictured["media_attachments"][0]["preview_url"])  # as an app's image loader: no token
        posted = mastodon.status_post("hello from Mastodon.py")
        found = mastodon.search_v2("bob", result_type="accounts")["accounts"]
        relationship = mastodon.account_follow(found[0]["id"])
        deadline = time.monotonic() + 10
        while len(mastodon.timeline_home(limit=40)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)  # bob's posts join alice's home feed in the background (the worker's fan-out)
        first = mastodon.timeline_home(limit=2)
        second = mastodon.fetch_next(first)
        liked = mastodon.status_favourite(first[0]["id"])
        kept = mastodon.status_bookmark(first[1]["id"])
        bobs = next(s for s in [*first, *second] if s["account"]["username"] == "bob")
        shared = mastodon.status_reblog(bobs["id"])
        notes = mastodon.notifications()
        bookmarks = mastodon.bookmarks()
        followers = mastodon.account_followers(found[0]["id"])
        mastodon.markers_set(["home", "notifications"], [first[0]["id"], first[1]["id"]])
        markers = mastodon.markers_get(["home", "notifications"])
        app = mastodon.app_verify_credentials()
        carol = mastodon.search_v2("carol", result_type="accounts")["accounts"][0]
        blocked = mastodon.account_block(carol["id"])
        muted = mastodon.account_mute(carol["id"], notifications=False, duration=3600)
        kept_out = (mastodon.blocks(), mastodon.mutes())
        mastodon.revoke_access_token(allow_http=True)
        try:
            mastodon.account_verify_credentials()
            after = "still signed in"
        except MastodonUnauthorizedError:
            after = "401"
        return {"token": token, "me": me, "posted": posted, "found": found, "relationship": relationship,
                "pages": (first, second), "liked": liked, "followers": followers, "markers": markers, "app": app,
                "after": after, "kept": kept, "bookmarks": bookmarks, "notes": notes, "blocked": blocked,
                "muted": muted, "kept_out": kept_out, "shared": shared, "bobs": bobs, "picture": picture,
                "pictured": pictured, "shown": shown}  # fmt: skip

    seen = await asyncio.to_thread(mastodon_py_session)
    attached = seen["pictured"]["media_attachments"]
    assert [m["id"] for m in attached] == [seen["picture"]["id"]] and seen["picture"]["url"] == attached[0]["url"]
    assert attached[0]["description"] == "a test pattern" and attached[0]["meta"]["focus"] == {"x": 0.25, "y": -0.5}
    assert attached[0]["meta"]["original"]["width"] == 320 and attached[0]["blurhash"]
    assert seen["shown"].status_code == 200 and seen["shown"].headers["content-type"] == "image/webp"
    assert seen["kept"]["bookmarked"] is True
    assert [s["id"] for s in seen["bookmarks"]] == [seen["pages"][0][1]["id"]] and seen["bookmarks"][0]["bookmarked"]
    assert seen["me"]["username"] == "alice" and seen["posted"]["content"] == "<p>hello from Mastodon.py</p>"
    assert seen["found"][0]["username"] == "bob" and seen["relationship"]["following"] is True
    first, second = seen["pages"]
    assert len(first) == 2 and len(second) == 2, "the home timeline pages with Link headers"
    assert {s["id"] for s in first}.isdisjoint({s["id"] for s in second})
    assert seen["liked"]["favourited"] is True and seen["liked"]["favourites_count"] == 1
    assert [(n["type"], n["account"]["username"]) for n in seen["notes"]] == [("follow", "bob")]
    assert seen["shared"]["reblog"]["id"] == seen["bobs"]["id"] and seen["shared"]["account"]["username"] == "alice"
    assert seen["shared"]["reblog"]["reblogs_count"] == 1 and seen["shared"]["reblogged"] is True
    assert seen["blocked"]["blocking"] is True
    assert seen["muted"]["muting"] is True and seen["muted"]["muting_notifications"] is False
    assert [[a["username"] for a in listed] for listed in seen["kept_out"]] == [["carol"], ["carol"]]
    assert [f["username"] for f in seen["followers"]] == ["alice"]
    assert str(seen["markers"]["home"]["last_read_id"]) == str(first[0]["id"])
    assert str(seen["markers"]["notifications"]["last_read_id"]) == str(first[1]["id"])
    assert seen["app"]["name"] == "Mastodon.py test"
    assert seen["after"] == "401"
    await everywhere_unauthorized(cluster, seen["token"])

    # -- toot, against process B (its configuration in a directory of the test's own)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    from toot import api as toot_api
    from toot import auth as toot_auth
    from toot import http as toot_http
    from toot.exceptions import ApiError

    host = b.removeprefix("http://")
    toot_app = await asyncio.to_thread(toot_auth.register_app, host, b)
    code = await answer_consent(bob, "b", toot_api.get_browser_login_url(toot_app))

    def toot_session() -> dict[str, Any]:
        user = toot_auth.login_auth_code(toot_app, code)
        posted = toot_api.post_status(toot_app, user, "hello from toot", visibility="public").json()
        alice_account = toot_api.find_account(toot_app, user, "alice")
        followed = toot_api.follow(toot_app, user, alice_account["id"]).json()
        pages = toot_api.home_timeline_generator(toot_app, user, limit=3)
        first, second = next(pages), next(pages)
        liked = toot_api.favourite(toot_app, user, seen["posted"]["id"]).json()
        followers = toot_api.followers(toot_app, user, alice_account["id"])
        notes = toot_api.get_notifications(toot_app, user).json()
        markers = toot_http.get(toot_app, user, "/api/v1/markers", {"timeline[]": "home"}).json()
        toot_http.anon_post(f"{b}/oauth/revoke", data={"client_id": toot_app.client_id, "token": user.access_token,
                                                         "client_secret": toot_app.client_secret})  # fmt: skip
        try:
            toot_api.verify_credentials(toot_app, user)
            after = "still signed in"
        except ApiError as exc:
            after = str(exc)
        return {"user": user, "posted": posted, "followed": followed, "pages": (first, second), "liked": liked,
                "followers": followers, "markers": markers, "after": after, "notes": notes}  # fmt: skip

    found = await asyncio.to_thread(toot_session)
    assert found["user"].username == "bob" and found["posted"]["content"] == "<p>hello from toot</p>"
    assert found["followed"]["following"] is True
    first, second = found["pages"]
    assert len(first) == 3 and len(second) == 3 and {s["id"] for s in first}.isdisjoint({s["id"] for s in second})
    assert found["liked"]["favourites_count"] == 2, "alice liked it too"
    assert [f["username"] for f in found["followers"]] == ["bob"]
    assert [(n["type"], n["account"]["username"]) for n in found["notes"]] == [("reblog", "alice"), ("follow", "alice")]
    assert found["notes"][0]["status"]["id"] == seen["bobs"]["id"]
    assert found["markers"] == {}, "bob has saved none"
    assert "401" in found["after"] or "invalid" in found["after"].lower()
    await everywhere_unauthorized(cluster, found["user"].access_token)
