"""Uploads through the media service and its job (the embedded queue runs it in process): sealed in the store
from the start, made into clean variants, the upload then gone; nothing in clear in the store or the row."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from crypto.stream import open_bytes
from feed.errors import Invalid
from feed.services import accounts, media
from feed.services.media import ORIGINAL, VARIANTS, file_context, file_name
from feed.storage.tables import media as media_table
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
        for needle in (b"SpyCam", b"SERIAL-12345", b"Exif", b"WEBP", b"RIFF"):
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
