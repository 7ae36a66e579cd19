"""Images through the pages: the composer's upload (``POST /media``, then its state polled), a post with its images
and their alt text, and how a timeline draws them (sized, lazy, srcset, blurhash placeholder, a link to the largest
variant) from the post's cached frame."""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import pytest

from feed.cache import FRAMES
from tests.feed.test_media_images import assert_clean, jpeg_with_gps_and_rotation
from tests.feed.web.test_api_media import encoded, gif

pytestmark = pytest.mark.anyio

ALT = "a red half above a blue half"


async def attach(browser: Any, data: bytes) -> str:
    """Upload as the composer's script does, and wait for the image to be ready; returns its id."""
    answer = await browser.http.post("/media", files={"file": ("x.jpg", data, "image/jpeg")},
                                     headers={"X-CSRF-Token": browser.csrf, "Accept": "application/json"})  # fmt: skip
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["state"] == "processing" and body["preview"] is None
    for _ in range(600):
        state = (await browser.http.get(f"/media/{body['id']}")).json()
        if state["state"] != "processing":
            break
        await asyncio.sleep(0.05)
    assert state["state"] == "ready" and state["preview"] == f"/media/{body['id']}/small", state
    return str(body["id"])


async def test_a_post_with_images_from_the_composer_is_drawn_lazy_sized_and_placeheld(
    app: Any, make_browser: Any
) -> None:
    alice, bob = await make_browser("alice"), await make_browser("bob")
    home = await alice.get("/")
    assert 'class="attach-button button" hidden' in home.text and "/static/js/media.js" in home.text
    photo = await attach(alice, jpeg_with_gps_and_rotation(1600, 900))
    moving = await attach(alice, gif())
    png, webp = await attach(alice, encoded("PNG")), await attach(alice, encoded("WEBP"))
    post_id = await alice.compose("", media_0=photo, alt_0=ALT, media_1=moving, alt_1="three colours, one by one",
                                  media_2=png, alt_2="a png", media_3=webp, alt_3="a webp")  # fmt: skip
    page = (await bob.get(f"/posts/{post_id}")).text
    images = re.findall(r'<a class="media-item"[^>]*>.*?</a>', page, re.S)
    assert len(images) == 4 and 'class="post-media count-4"' in page, page
    for media_id in (moving, png, webp):
        for variant in ("small", "medium", "large"):
            assert_clean((await bob.http.get(f"/media/{media_id}/{variant}")).content)
    first = images[0]
    assert f'href="/media/{photo}/large"' in first and "data-lightbox" in first and 'data-blurhash="' in first
    assert f'src="/media/{photo}/medium"' in first and 'loading="lazy"' in first and 'decoding="async"' in first
    assert 'width="720" height="1280"' in first  # upright: the rotation applied
    assert f"/media/{photo}/small 270w, /media/{photo}/medium 720w, /media/{photo}/large 900w" in first
    assert f'alt="{html.escape(ALT)}"' in first and "ALT</span>" in first
    assert "GIF</span>" in images[1]
    assert 'class="post-body"' not in page.split(f'id="post-{post_id}"')[1].split("</article>")[0]  # no text
    for url in re.findall(r"(/media/\d+/\w+)", first):
        assert_clean((await bob.http.get(url)).content)
    # The frame cache holds the post with its images: the next page is drawn from it, the same.
    svc = app.state.services
    assert await svc.cache.get_many(FRAMES, [post_id], lambda missing: _none())
    again = (await bob.get(f"/posts/{post_id}")).text
    assert re.findall(r'<a class="media-item"[^>]*>.*?</a>', again, re.S) == images


async def _none() -> dict[int, Any]:
    return {}


async def test_the_composer_asks_for_alt_text_and_keeps_what_was_written(make_browser: Any) -> None:
    alice = await make_browser("alice")
    await alice.get("/")
    photo = await attach(alice, encoded("PNG"))
    refused = await alice.post("/posts", {"status": "words", "media_0": photo, "alt_0": "  "})
    assert refused.status_code == 422 and "Describe each image" in refused.text
    assert f'name="media_0" value="{photo}"' in refused.text and "words" in refused.text  # nothing lost
    five = [photo, *[await attach(alice, encoded("PNG", (40, 30))) for _ in range(4)]]
    form = {f"media_{n}": i for n, i in enumerate(five)} | {f"alt_{n}": "x" for n in range(5)}
    too_many = await alice.post("/posts", {"status": "many", **form})
    assert too_many.status_code == 422 and "at most 4 images" in too_many.text
    post_id = await alice.compose("", media_0=photo, alt_0="described")
    assert (await alice.get(f"/posts/{post_id}")).status_code == 200
    empty = await alice.post("/posts", {"status": ""})
    assert empty.status_code == 422  # no text and no image


async def test_the_upload_path_takes_images_and_refuses_the_rest(make_browser: Any) -> None:
    alice = await make_browser("alice")
    await alice.get("/")
    json_headers = {"X-CSRF-Token": alice.csrf, "Accept": "application/json"}
    forged = await alice.http.post(
        "/media", files={"file": ("x", encoded("PNG"))}, headers={"Accept": "application/json"}
    )
    assert forged.status_code == 403 and "CSRF" in forged.json()["error"]
    text = await alice.http.post("/media", files={"file": ("x", b"hello")}, headers=json_headers)
    assert text.status_code == 422 and "JPEG, PNG" in text.json()["error"]
    nobody = await make_browser()
    assert (
        await nobody.http.post("/media", files={"file": ("x", encoded("PNG"))}, headers=json_headers)
    ).status_code in (401, 403)
    photo = await attach(alice, encoded("PNG"))
    assert (await nobody.http.get(f"/media/{photo}", headers={"Accept": "application/json"})).status_code == 401


async def test_the_edit_page_keeps_or_removes_images(make_browser: Any) -> None:
    alice = await make_browser("alice")
    await alice.get("/")
    one, two = await attach(alice, encoded("PNG")), await attach(alice, encoded("WEBP"))
    post_id = await alice.compose("", media_0=one, alt_0="first", media_1=two, alt_1="second")
    form = (await alice.get(f"/posts/{post_id}/edit")).text
    assert f'name="keep_{one}" value="1" checked' in form and f'name="keep_{two}" value="1" checked' in form
    assert 'data-max="500" required' not in form  # images alone may stay a post
    refused = await alice.post(f"/posts/{post_id}/edit", {"status": "", "media_listed": "1"})
    assert refused.status_code == 422 and "blank" in refused.text
    assert f'name="keep_{one}" value="1">' in refused.text  # unticked, as it was sent
    saved = await alice.post(f"/posts/{post_id}/edit", {"status": "now with words", "media_listed": "1",
                                                        f"keep_{two}": "1"})  # fmt: skip
    assert saved.status_code == 303
    page = (await alice.get(f"/posts/{post_id}")).text
    assert f"/media/{two}/large" in page and f"/media/{one}/large" not in page and "now with words" in page
    kept = await alice.post(f"/posts/{post_id}/edit", {"status": "no list sent"})  # a form without the list
    assert kept.status_code == 303 and f"/media/{two}/large" in (await alice.get(f"/posts/{post_id}")).text
