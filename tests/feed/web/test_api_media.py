"""Images through Mastodon's client API: uploaded (v2 answers 202, v1 once processed), polled (206 until ready),
described, attached to statuses on create and edit, and served to the readers of their status only."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from feed.services.media import VARIANTS
from feed.storage.tables import media as media_table
from tests.feed.test_media_images import assert_clean, color_at, halves, jpeg_with_gps_and_rotation
from tests.feed.web.mastodon_checks import check_error, check_status, follow, get_json, me, post_status

pytestmark = pytest.mark.anyio

ALT = "two halves, red and blue"


def encoded(kind: str, size: tuple[int, int] = (400, 300), **options: Any) -> bytes:
    out = io.BytesIO()
    halves(*size).save(out, kind, **options)
    return out.getvalue()


def gif() -> bytes:
    frames = [Image.new("RGB", (90, 60), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return out.getvalue()


async def upload(client: httpx.AsyncClient, data: bytes, version: str = "v2", **fields: str) -> httpx.Response:
    return await client.post(f"/api/{version}/media", files={"file": ("any.name", data, "text/plain")}, data=fields)


async def ready(client: httpx.AsyncClient, media_id: str, within: float = 30.0) -> dict[str, Any]:
    """Poll as clients do: 206 while processing, then 200 with the urls."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        answer = await client.get(f"/api/v1/media/{media_id}")
        if answer.status_code == 200:
            found: dict[str, Any] = answer.json()
            return found
        assert answer.status_code == 206, answer.text
        assert answer.json()["url"] is None
        assert asyncio.get_running_loop().time() < deadline, "the media job did not finish"
        await asyncio.sleep(0.05)


async def uploaded(client: httpx.AsyncClient, data: bytes, **fields: str) -> dict[str, Any]:
    answer = await upload(client, data, **fields)
    assert answer.status_code == 202, answer.text
    return await ready(client, answer.json()["id"])


def path(url: str) -> str:
    return url.removeprefix("http://testserver")


async def test_jpeg_png_webp_and_gif_upload_process_and_attach(api: Any) -> None:
    alice = await api("alice")
    photo = jpeg_with_gps_and_rotation(900, 500)
    answer = await upload(alice, photo, description=ALT, focus="0.5,-0.25")
    assert answer.status_code == 202, answer.text
    first = answer.json()
    assert (first["type"], first["url"], first["preview_url"], first["description"]) == ("image", None, None, ALT)
    done = await ready(alice, first["id"])
    assert done["meta"]["original"] == {"width": 500, "height": 900, "size": "500x900", "aspect": 500 / 900}
    assert done["meta"]["small"]["width"] == 267 and done["meta"]["focus"] == {"x": 0.5, "y": -0.25}
    assert done["blurhash"] and done["url"].endswith(f"/media/{done['id']}/large")
    shown = await alice.get(path(done["url"]))
    image = assert_clean(shown.content)  # no EXIF, no GPS, no maker or serial
    assert image.size == (500, 900)  # turned upright: the rotation tag applied, then dropped
    assert color_at(image, 0.5, 0.1)[0] > 150 and color_at(image, 0.5, 0.9)[2] > 150  # red on top, blue below

    others = [await uploaded(alice, data, description=f"picture {n}") for n, data in enumerate(
        (encoded("PNG"), encoded("WEBP"), gif()))]  # fmt: skip
    status = await post_status(alice, "", media_ids=[done["id"], *(o["id"] for o in others)])  # images alone
    check_status(status)
    attached = status["media_attachments"]
    assert [a["id"] for a in attached] == [done["id"], *(o["id"] for o in others)]
    assert [a["description"] for a in attached] == [ALT, "picture 0", "picture 1", "picture 2"]
    assert status["content"] == "" and attached[0] == done
    for item in attached:
        for url in (item["url"], item["preview_url"]):
            served = await alice.get(path(url))
            assert served.status_code == 200 and served.headers["content-type"] == "image/webp"
            assert_clean(served.content)
    animated = Image.open(io.BytesIO((await alice.get(path(attached[3]["url"]))).content))
    assert getattr(animated, "n_frames", 1) == 3
    home = await get_json(alice, "/api/v1/timelines/home")
    assert home[0]["media_attachments"] == attached
    assert (await get_json(alice, f"/api/v1/statuses/{status['id']}"))["media_attachments"] == attached
    # Attached: the API no longer changes or deletes it (a status edit does), as in Mastodon.
    for method in ("PUT", "DELETE"):
        answer = await alice.request(method, f"/api/v1/media/{done['id']}", data={"description": "new"})
        check_error(answer, 404)


async def test_v1_answers_once_processed_and_put_describes(api: Any) -> None:
    alice = await api("alice")
    answer = await upload(alice, encoded("PNG"), version="v1")
    assert answer.status_code == 200 and answer.json()["url"], answer.text
    media_id = answer.json()["id"]
    described = await alice.put(f"/api/v1/media/{media_id}", data={"description": ALT, "focus": "-1,1"})
    assert described.status_code == 200, described.text
    assert described.json()["description"] == ALT and described.json()["meta"]["focus"] == {"x": -1.0, "y": 1.0}
    status = await post_status(alice, "described", media_ids=[media_id])
    assert status["media_attachments"][0]["description"] == ALT
    await post_status(alice, "words alone")
    pictured = [status["id"]]
    assert [s["id"] for s in await get_json(alice, "/api/v1/timelines/public", only_media="true")] == pictured
    account = f"/api/v1/accounts/{status['account']['id']}/statuses"
    assert [s["id"] for s in await get_json(alice, account, only_media="true")] == pictured
    assert len(await get_json(alice, account)) == 2
    assert (await alice.put(f"/api/v1/media/{media_id}", json={"description": "x"})).status_code == 404
    loose = (await upload(alice, encoded("PNG"))).json()["id"]
    await ready(alice, loose)
    assert (await alice.delete(f"/api/v1/media/{loose}")).status_code == 200
    check_error(await alice.get(f"/api/v1/media/{loose}"), 404)


async def test_refusals_lose_nothing(api: Any, app: Any) -> None:
    alice, bob = await api("alice"), await api("bob")
    check_error(await upload(alice, b"GIF89a? no, text"), 422)
    check_error(await upload(alice, encoded("BMP")), 422)
    check_error(await alice.post("/api/v2/media", data={"description": "no file"}), 422)
    check_error(await alice.post("/api/v2/media", json={"file": "a string"}), 422)
    check_error(await upload(alice, encoded("PNG"), focus="2,0"), 422)
    check_error(await upload(alice, encoded("PNG"), description="d" * 1501), 422)
    too_big = await alice.post("/api/v2/media", files={"file": ("a", b"\0" * (16 * 1024 * 1024 + 65 * 1024))})
    assert too_big.status_code == 413
    for wrong in ("/api/v1/media/1", "/api/v1/media/x"):
        check_error(await alice.get(wrong), 404)
    five = [(await uploaded(alice, encoded("PNG", (40, 30))))["id"] for _ in range(5)]
    bobs = (await uploaded(bob, encoded("PNG", (40, 30))))["id"]
    check_error(await bob.get(f"/api/v1/media/{five[0]}"), 404)  # someone else's upload
    for media_ids, words in (
        (five, "at most 4"),
        ([five[0], five[0]], "twice"),
        ([bobs], "not found"),
        (["12345"], "not found"),
        (["nope"], "media_ids"),
    ):
        message = check_error(await alice.post("/api/v1/statuses", json={"status": "x", "media_ids": media_ids}), 422)
        assert words in message, message
    async with app.state.engine.begin() as conn:  # an upload whose job has not run yet
        await conn.execute(media_table.update().where(media_table.c.id == int(five[1])).values(state="processing"))
    message = check_error(await alice.post("/api/v1/statuses", json={"status": "x", "media_ids": [five[1]]}), 422)
    assert "still being processed" in message
    assert await get_json(alice, "/api/v1/timelines/home") == []
    # As a form, the way most clients send it; and a status of no text and no image is still refused.
    made = await alice.post("/api/v1/statuses", data={"status": "form", "media_ids[]": [five[2], five[3]]})
    assert made.status_code == 200 and [a["id"] for a in made.json()["media_attachments"]] == five[2:4]
    check_error(await alice.post("/api/v1/statuses", json={"status": "", "media_ids": []}), 422)
    taken = await alice.post("/api/v1/statuses", json={"status": "again", "media_ids": [five[2]]})
    assert "not found" in check_error(taken, 422)  # another status has it


async def test_edits_change_the_images_and_only_readers_of_the_status_see_them(api: Any) -> None:
    alice, bob, carol = await api("alice"), await api("bob"), await api("carol")
    nobody = await api()
    one, two = [(await uploaded(alice, encoded("JPEG", (600, 400))))["id"] for _ in range(2)]
    status = await post_status(alice, "for my followers", visibility="private", media_ids=[one, two])
    await follow(bob, (await me(alice))["id"])
    urls = [path(item[key]) for item in status["media_attachments"] for key in ("url", "preview_url")]
    urls += [f"/media/{one}/{variant}" for variant in VARIANTS]
    ranges: list[dict[str, str]] = [{}, {"Range": "bytes=0-9"}, {"Range": "bytes=-5"}]
    for who, allowed in ((alice, True), (bob, True), (carol, False), (nobody, False)):
        codes = {(await who.get(url, headers=h)).status_code for url in urls for h in ranges}
        assert codes == ({200, 206} if allowed else {404}), (who, codes)
    edited = await alice.put(f"/api/v1/statuses/{status['id']}", json={"media_ids": [two]})
    assert edited.status_code == 200 and [a["id"] for a in edited.json()["media_attachments"]] == [two]
    assert edited.json()["content"] == "<p>for my followers</p>"
    seen = await get_json(bob, f"/api/v1/statuses/{status['id']}")
    assert [a["id"] for a in seen["media_attachments"]] == [two]
    assert (await bob.get(f"/media/{one}/small")).status_code == 404  # let go: its owner's alone again
    assert (await alice.get(f"/media/{one}/small")).status_code == 200
    kept = await alice.put(f"/api/v1/statuses/{status['id']}", json={"status": "new words"})
    assert [a["id"] for a in kept.json()["media_attachments"]] == [two]  # not sent: kept
    check_error(await alice.put(f"/api/v1/statuses/{status['id']}", json={"status": "", "media_ids": []}), 422)
    await alice.delete(f"/api/v1/statuses/{status['id']}")
    assert (await bob.get(f"/media/{two}/small")).status_code == 404
