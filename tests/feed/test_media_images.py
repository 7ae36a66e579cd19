"""What a media job makes of an upload: checked by reading every variant back with Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from feed.media.images import MAX_PIXELS, VARIANTS, BadImage, process, sniff

GPS_IFD, ORIENTATION, MAKE, SERIAL = 0x8825, 0x0112, 0x010F, 0xA431


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: which way is up shows after a rotation."""
    image = Image.new("RGB", (width, height), (220, 20, 20))
    image.paste((20, 20, 220), (width // 2, 0, width, height))
    return image


def jpeg_with_gps_and_rotation(width: int = 900, height: int = 500) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # shown turned 90 degrees clockwise
    exif[MAKE] = "SpyCam"
    exif[SERIAL] = "SERIAL-12345"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    out = io.BytesIO()
    halves(width, height).save(out, "JPEG", exif=exif, quality=90)
    return out.getvalue()


def webp_chunks(data: bytes) -> list[bytes]:
    """The kinds of the chunks of a WebP file (RIFF: a four-letter kind, a little-endian size, the payload)."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    kinds, offset = [], 12
    while offset + 8 <= len(data):
        kind, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        kinds.append(kind)
        offset += 8 + size + (size & 1)
    assert offset == len(data), "the chunks do not fill the file"
    return kinds


def assert_clean(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP"
    assert not image.info.get("exif") and not image.getexif()
    assert not image.info.get("icc_profile") and not image.info.get("xmp")
    assert not {b"EXIF", b"XMP ", b"ICCP"} & set(webp_chunks(data)), webp_chunks(data)
    for needle in (b"SpyCam", b"SERIAL-12345", b"secret comment"):  # long enough not to occur by chance
        assert needle not in data
    return image


def color_at(image: Image.Image, x: float, y: float) -> tuple[int, ...]:
    rgb = image.convert("RGB")
    return rgb.getpixel((int(x * (rgb.width - 1)), int(y * (rgb.height - 1))))  # type: ignore[return-value]


def test_a_photo_is_oriented_stripped_and_made_into_variants() -> None:
    data = jpeg_with_gps_and_rotation(3000, 2000)
    assert sniff(data) == "image/jpeg"
    done = process(data)
    assert (done.source_type, done.width, done.height, done.animated) == ("image/jpeg", 2000, 3000, False)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert reference is not None
    for name, longest in VARIANTS.items():
        variant = done.variants[name]
        image = assert_clean(variant.data)
        assert image.size == (variant.width, variant.height)
        assert max(image.size) == min(longest, 3000) and image.height > image.width  # portrait, as shown
        for x, y in ((0.5, 0.1), (0.5, 0.9)):  # the halves are now top and bottom
            want, got = color_at(reference, x, y), color_at(image, x, y)
            assert all(abs(a - b) < 40 for a, b in zip(want, got, strict=True)), (name, want, got)
    assert len(done.blurhash) == 28 and "SpyCam" not in repr(done) and done.blurhash not in repr(done)


def test_a_png_loses_its_text_chunks_and_colour_profile_and_keeps_transparency() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret comment")
    image = Image.new("RGBA", (300, 200), (10, 200, 10, 128))
    out = io.BytesIO()
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(out, "PNG", pnginfo=info, icc_profile=profile)
    done = process(out.getvalue())
    assert done.source_type == "image/png" and (done.width, done.height) == (300, 200)
    small = assert_clean(done.variants["small"].data)
    assert small.mode == "RGBA" and small.size == (300, 200)  # never enlarged
    assert abs(small.getpixel((5, 5))[3] - 128) < 10  # type: ignore[index]


def test_webp_and_avif_are_taken() -> None:
    for kind in ("WEBP", "AVIF"):
        out = io.BytesIO()
        halves(640, 480).save(out, kind)
        done = process(out.getvalue())
        assert done.source_type == f"image/{kind.lower()}" and done.variants["medium"].width == 640
        assert_clean(done.variants["large"].data)


def test_an_animated_gif_stays_animated_with_a_still_preview() -> None:
    frames = [Image.new("RGB", (120, 80), color) for color in ((250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=[50, 60, 70, 80], loop=0,
                   comment=b"secret comment")  # fmt: skip
    done = process(out.getvalue())
    assert done.animated and done.source_type == "image/gif"
    medium = assert_clean(done.variants["medium"].data)
    assert getattr(medium, "n_frames", 1) == 4
    assert getattr(assert_clean(done.variants["small"].data), "n_frames", 1) == 1


@pytest.mark.parametrize("kind", ["BMP", "TIFF", "ICO"])
def test_formats_outside_the_allowlist_are_refused(kind: str) -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, kind)
    assert sniff(out.getvalue()) is None
    with pytest.raises(BadImage, match="JPEG, PNG, WebP, GIF and AVIF"):
        process(out.getvalue())


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"<svg xmlns='http://www.w3.org/2000/svg'/>"])
def test_what_is_no_image_is_refused(data: bytes) -> None:
    assert sniff(data) is None
    with pytest.raises(BadImage):
        process(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.parametrize("size", [(50_000, 50_000), (8_000, 6_000)], ids=["past Pillow's limit", "past ours"])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(size: tuple[int, int]) -> None:
    """A PNG whose header claims more pixels than we take, in a few dozen bytes."""
    header = struct.pack(">IIBBBBB", *size, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 100))
    bomb += _chunk(b"IEND", b"")
    with pytest.raises(BadImage, match=f"{MAX_PIXELS // 1_000_000} million pixels"):
        process(bomb)


def test_a_truncated_image_is_refused() -> None:
    data = jpeg_with_gps_and_rotation()
    with pytest.raises(BadImage):
        process(data[: len(data) // 2])
