"""Uploads through the media service and its job (the embedded queue runs it in process): sealed in the store
from the start, made into clean variants, the upload then gone; nothing in clear in the store or the row."""

from __future__ import annotations

import asyncio
import io
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from crypto.stream import ENVELOPE_SIZE, key_version_of, open_bytes
from feed.errors import Invalid
from feed.services import accounts, erasure, media, rotation
from feed.services.context import now
from feed.services.jobs import Run, run_maintenance
from feed.services.media import ORIGINAL, VARIANTS, file_context, file_name
from feed.storage import keys as key_store
from feed.storage import media as media_store
from feed.storage.tables import media as media_table
from feed.storage.tables import user_keys
from jobs.registry import MAINTENANCE
from tests.conftest import forget_cached
from tests.feed.test_media_images import assert_clean, jpeg_with_gps_and_rotation

pytestmark = pytest.mark.anyio

ALT = "a flag, red above and blue below"


async def settled(svc: Any, media_id: int, user: Any, within: float = 30.0) -> media.Media:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = await media.get(svc, media_id, user)
        if found.state != "processing":
            return found
        assert asyncio.get_running_loop().time() < deadline, "the media job did not finish"
        await asyncio.sleep(0.05)


async def stored(svc: Any, name: str) -> bytes | None:
    size = await svc.media.size(name)
    return None if size is None else await svc.media.read(name, 0, size)


async def test_an_upload_becomes_sealed_clean_variants_and_the_upload_goes(app: Any, make_browser: Any) -> None:
    await make_browser("alice")
    svc = app.state.services
    alice = await accounts.find_user(svc, "alice")
    photo = jpeg_with_gps_and_rotation(1600, 1000)
    uploaded = await media.upload(svc, alice, photo, description=ALT)
    assert uploaded.state == "processing" and uploaded.description == ALT
    done = await settled(svc, uploaded.id, alice)
    assert (done.state, done.kind, done.width, done.height) == ("ready", "image", 1000, 1600)
    assert done.description == ALT and done.blurhash and len(done.blurhash) == 28
    assert set(done.variants) == set(VARIANTS) and done.variants["small"] == (300, 480)
    async with svc.db() as session:
        key = await svc.keys.get(session, alice.id, 1)
    for name in VARIANTS:
        raw = await stored(svc, file_name(done.id, name))
        assert raw is not None
        for needle in (b"SpyCam", b"SERIAL-12345", b"WEBPVP8"):  # long enough not to occur by chance
            assert needle not in raw, f"{needle!r} in clear in the {name} file"
        image = assert_clean(open_bytes(key, file_context(done.id, alice.id, name), raw))
        assert image.size == done.variants[name]
    assert await stored(svc, file_name(done.id, ORIGINAL)) is None
    async with app.state.engine.connect() as conn:
        row = (await conn.execute(sa.select(media_table).where(media_table.c.id == done.id))).one()
    assert ALT.encode() not in bytes(row.description) and done.blurhash.encode() not in bytes(row.blurhash)


async def test_what_is_no_image_is_refused_at_once_and_a_broken_one_fails_in_its_job(
    app: Any, make_browser: Any
) -> None:
    await make_browser("alice")
    svc = app.state.services
    alice = await accounts.find_user(svc, "alice")
    for data, words in ((b"", "empty"), (b"GIF89a-ish but not", "JPEG, PNG"), (b"x" * (svc.media_max_bytes + 1), "MB")):
        with pytest.raises(Invalid, match=words):
            await media.upload(svc, alice, data)
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, "BMP")
    with pytest.raises(Invalid, match="JPEG, PNG, WebP, GIF and AVIF"):
        await media.upload(svc, alice, bmp.getvalue())
    photo = jpeg_with_gps_and_rotation()
    broken = await media.upload(svc, alice, photo[: len(photo) // 2])  # its header reads well: the job finds out
    failed = await settled(svc, broken.id, alice)
    assert failed.state == "failed" and failed.variants == {}
    assert await stored(svc, file_name(broken.id, ORIGINAL)) is None


async def attach(app: Any, media_id: int, post_id: int) -> None:
    """Point the media's row at a post directly (a post taking it through the API is tested in test_api_media)."""
    async with app.state.engine.begin() as conn:
        await conn.execute(media_table.update().where(media_table.c.id == media_id).values(post_id=post_id))


async def ready_photo(app: Any, owner: Any) -> tuple[media.Media, dict[str, bytes]]:
    svc = app.state.services
    user = await accounts.find_user(svc, owner.username)
    noise = Image.frombytes("RGB", (1200, 800), os.urandom(1200 * 800 * 3))  # large files: several chunks
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=90)
    done = await settled(svc, (await media.upload(svc, user, out.getvalue())).id, user)
    full = {}
    for name in VARIANTS:
        response = await owner.http.get(f"/media/{done.id}/{name}")
        assert response.status_code == 200, response.text
        full[name] = response.content
    return done, full


async def test_a_variant_is_served_whole_or_by_ranges_with_our_headers(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    done, _ = await ready_photo(app, alice)
    url = f"/media/{done.id}/large"
    whole = await alice.http.get(url)
    assert whole.headers["content-type"] == "image/webp" and whole.headers["x-content-type-options"] == "nosniff"
    assert whole.headers["content-disposition"] == f'inline; filename="{done.id}-large.webp"'
    assert whole.headers["cache-control"] == "private, max-age=3600" and whole.headers["accept-ranges"] == "bytes"
    assert int(whole.headers["content-length"]) == len(whole.content) > 64 * 1024  # several chunks
    assert_clean(whole.content)
    size = len(whole.content)
    for header, (start, end) in {
        "bytes=0-99": (0, 100),
        "bytes=65530-65545": (65530, 65546),  # across a chunk boundary
        f"bytes={size - 10}-": (size - 10, size),
        "bytes=-25": (size - 25, size),
        f"bytes=100-{size + 500}": (100, size),
    }.items():
        part = await alice.http.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == whole.content[start:end], header
        assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
    for ignored in ("bytes=0-1,5-9", "items=0-9", "bytes=-"):
        assert (await alice.http.get(url, headers={"Range": ignored})).content == whole.content
    past = await alice.http.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    head = await alice.http.head(url)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(size)
    again = await alice.http.get(url, headers={"If-None-Match": whole.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    for wrong in (
        f"/media/{done.id}/original",
        f"/media/{done.id}/huge",
        f"/media/{done.id + 1}/large",
        "/media/x/large",
    ):
        assert (await alice.http.get(wrong)).status_code == 404, wrong


async def test_media_is_served_to_whoever_may_read_its_post_only(app: Any, make_browser: Any) -> None:
    alice, bob = await make_browser("alice"), await make_browser("bob")
    nobody = await make_browser()
    done, full = await ready_photo(app, alice)
    ranges = ({}, {"Range": "bytes=0-9"}, {"Range": "bytes=-5"})

    async def statuses(who: Any) -> set[int]:
        return {(await who.http.get(f"/media/{done.id}/{name}", headers=h)).status_code for name in VARIANTS
                for h in ranges}  # fmt: skip

    assert await statuses(bob) == await statuses(nobody) == {404}  # not attached: its owner's only
    private = await alice.compose("for my followers", visibility="followers")
    await attach(app, done.id, private)
    assert await statuses(bob) == await statuses(nobody) == {404}
    assert (await bob.post("/@alice/follow")).status_code == 303
    assert await statuses(bob) == {200, 206}
    shown = await bob.http.get(f"/media/{done.id}/medium")
    assert shown.content == full["medium"] and shown.headers["cache-control"] == "private, max-age=3600"
    assert (await alice.post("/@bob/block")).status_code == 303  # a block ends the follow, and more
    assert await statuses(bob) == {404}
    public = await alice.compose("for everyone")
    await attach(app, done.id, public)
    seen = await nobody.http.get(f"/media/{done.id}/small")
    assert seen.status_code == 200 and seen.headers["cache-control"] == "public, max-age=3600, s-maxage=60"
    assert await statuses(bob) == {404}  # blocked: not even a public post's picture


async def test_a_tampered_or_cut_file_is_not_served(app: Any, make_browser: Any) -> None:
    alice = await make_browser("alice")
    done, _ = await ready_photo(app, alice)
    svc = app.state.services
    name = file_name(done.id, "small")
    raw = await stored(svc, name)
    assert raw is not None
    changed = bytearray(raw)
    changed[-20] ^= 0x01
    await svc.media.put(name, bytes(changed))
    assert (await alice.http.get(f"/media/{done.id}/small")).status_code == 404
    big = file_name(done.id, "large")
    raw = await stored(svc, big)
    assert raw is not None and len(raw) > 2 * (64 * 1024 + 16)
    await svc.media.put(big, raw[: 72 + 64 * 1024 + 16])  # cut after its first chunk: the first chunk is no last one
    assert (await alice.http.get(f"/media/{done.id}/large")).status_code == 404


async def test_erasing_a_user_makes_their_media_unreadable_at_once_and_the_purge_removes_it(
    app: Any, make_browser: Any
) -> None:
    alice, bob = await make_browser("alice"), await make_browser("bob")
    done, _ = await ready_photo(app, alice)
    await attach(app, done.id, await alice.compose("a picture for everyone"))
    assert (await bob.http.get(f"/media/{done.id}/small")).status_code == 200
    svc = app.state.services
    files = [file_name(done.id, name) for name in VARIANTS]
    await erasure.erase_user(svc, "alice")
    for name in VARIANTS:  # at once: the key that wraps every file's data key is gone
        assert (await bob.http.get(f"/media/{done.id}/{name}")).status_code == 404
    assert all([await stored(svc, name) for name in files])  # still there, unreadable, until the purge
    run = await run_maintenance(svc, MAINTENANCE["purge_erased"])
    assert run.changed.get("media") == 1
    assert [await stored(svc, name) for name in files] == [None] * len(files)
    async with app.state.engine.connect() as conn:
        assert (await conn.execute(sa.select(media_table).where(media_table.c.id == done.id))).first() is None


async def test_purge_media_removes_unattached_uploads_media_of_deleted_posts_and_orphan_files(
    app: Any, make_browser: Any, settings: Any
) -> None:
    alice = await make_browser("alice")
    svc = app.state.services
    old, _ = await ready_photo(app, alice)  # never attached, and a day old
    kept, _ = await ready_photo(app, alice)  # attached to a post that stays
    on_deleted, _ = await ready_photo(app, alice)  # attached to a post then deleted
    fresh, _ = await ready_photo(app, alice)  # not attached yet, but new: its post may still come
    await attach(app, kept.id, await alice.compose("stays"))
    gone = await alice.compose("goes")
    await attach(app, on_deleted.id, gone)
    assert (await alice.post(f"/posts/{gone}/delete", {"confirm": "yes"})).status_code == 303
    async with app.state.engine.begin() as conn:
        day_ago = datetime.now(UTC) - timedelta(days=1, minutes=1)
        await conn.execute(media_table.update().where(media_table.c.id == old.id).values(created_at=day_ago))
    await svc.media.put("123456789/small", b"a file whose row never came")
    await svc.media.put("987654321/small", b"an upload getting its row right now")
    hour_ago = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    os.utime(settings.data_dir / "media" / "123456789" / "small", (hour_ago, hour_ago))

    dry = await run_maintenance(svc, MAINTENANCE["purge_media"], dry_run=True)
    assert (dry.changed.get("media"), dry.changed.get("files")) == (2, 1)
    assert await stored(svc, file_name(old.id, "small")) is not None  # a dry run changes nothing
    run = await run_maintenance(svc, MAINTENANCE["purge_media"])
    assert (run.changed.get("media"), run.changed.get("files")) == (2, 1)
    for removed in (old, on_deleted):
        assert [await stored(svc, file_name(removed.id, name)) for name in VARIANTS] == [None] * len(VARIANTS)
    for stays in (kept, fresh):
        assert (await alice.http.get(f"/media/{stays.id}/small")).status_code == 200
    assert await stored(svc, "123456789/small") is None
    assert await stored(svc, "987654321/small") is not None
    again = await run_maintenance(svc, MAINTENANCE["purge_media"])  # nothing more to do
    assert not again.changed.get("media") and not again.changed.get("files")
    await svc.media.delete("987654321/small")


async def test_a_user_key_rotation_rewraps_media_and_the_old_key_goes(app: Any, make_browser: Any) -> None:
    """Each file's data key and the alt text and blurhash are rewrapped under the new key version (a file rewrapped
    by a rotation that stopped before its row was is read by the version it says); then the old version, used by
    nothing, is destroyed, and the pictures and their alt text are as they were."""
    alice = await make_browser("alice")
    done, full = await ready_photo(app, alice)
    second, _ = await ready_photo(app, alice)
    post = await alice.compose("pictured", media_0=str(done.id), alt_0=ALT)
    assert ALT in (await alice.get(f"/posts/{post}")).text  # its record, with the sealed alt text, cached
    svc = app.state.services
    user = await accounts.find_user(svc, "alice")
    # A rotation cut short: alice has key version 2, and one image's files were rewrapped under it, not its row.
    async with svc.db.begin() as session:
        old, new = await svc.keys.get(session, user.id, 1), await svc.keys.create(session, user.id, 2, now())
        await key_store.set_current_key(session, user.id, from_version=1, version=2, email_sealed=None)
    async with svc.db() as session:
        row = await media_store.get(session, second.id)
    assert await media.rewrap_files(svc, row, {1: old}, new) == len(VARIANTS)
    for name in VARIANTS:
        assert key_version_of((await stored(svc, file_name(second.id, name)) or b"")[:ENVELOPE_SIZE]) == 2
    await forget_cached(app)
    assert (await alice.http.get(f"/media/{second.id}/small")).status_code == 200  # the row still says 1

    rotated = Run(svc, "rewrap_posts")  # the rotation's last step, run again
    await rotation.rewrap_posts(svc, rotated)
    assert rotated.changed["media_rewrapped"] == 2 and rotated.changed["media_files_rewrapped"] == 3, rotated.changed
    prune = Run(svc, "prune")
    await rotation.prune_user_keys(svc, prune, grace=timedelta(0))
    assert prune.changed.get("user_keys_destroyed") == 1  # version 1: no post, image or email uses it now
    async with app.state.engine.connect() as conn:
        kept = set((await conn.execute(sa.select(user_keys.c.version).where(user_keys.c.user_id == user.id))).scalars())
    assert kept == {2}
    await forget_cached(app)
    async with app.state.engine.connect() as conn:
        versions = set((await conn.execute(sa.select(media_table.c.key_version))).scalars())
    current = (await accounts.find_user(svc, "alice")).key_version
    assert versions == {current}
    for media_id in (done.id, second.id):
        for name in VARIANTS:
            raw = await stored(svc, file_name(media_id, name)) or b""
            assert key_version_of(raw[:ENVELOPE_SIZE]) == current
            assert (await alice.http.get(f"/media/{media_id}/{name}")).status_code == 200
    shown = await alice.http.get(f"/media/{done.id}/medium")
    assert shown.status_code == 200 and shown.content == full["medium"]
    assert (await media.get(svc, second.id, user)).blurhash == second.blurhash
    assert ALT in (await alice.get(f"/posts/{post}")).text
