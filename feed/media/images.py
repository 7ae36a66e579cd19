"""Images in, clean variants out: what a media job does to an upload (never the request), with Pillow.

* **Only what we allow:** JPEG, PNG, WebP, GIF and AVIF, recognised from the bytes (never from a name or a type the
  uploader sent); anything else, or anything Pillow cannot decode, is refused.
* **No decompression bombs:** the pixel count (times the frames, for an animation) is checked from the header,
  before a single pixel is decoded.
* **Oriented, then stripped:** the EXIF orientation is applied to the pixels, colours are converted to sRGB from an
  embedded ICC profile, and only the pixels go on: every variant is a new WebP image of a copy whose ``info`` is
  emptied, saved with empty EXIF, XMP and ICC blocks, so no EXIF (GPS, camera serials, the thumbnail inside it),
  XMP, ICC or comment block survives. Each smaller variant is resized from the next larger one.
* **Variants:** WebP at a few sizes (the longest side at most :data:`VARIANTS`' size, never larger than the
  image), and a blurhash placeholder. An animated GIF or WebP keeps its animation in the ``medium`` and ``large``
  variants (animated WebP, frames and timing kept); its ``small`` preview is the first frame, still.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import blurhash  # type: ignore[import-untyped]
from PIL import Image, ImageCms, ImageOps, ImageSequence, UnidentifiedImageError

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "AVIF": "image/avif"}
"""The formats we decode, by Pillow's name, with their media type."""
VARIANTS = {"small": 480, "medium": 1280, "large": 2560}
"""Each variant's longest side at most, in pixels."""
QUALITY = {"small": 70, "medium": 80, "large": 85}
MAX_PIXELS = 40_000_000
"""The most pixels an upload may have (a 12-megapixel photo is well within it)."""
MAX_FRAMES = 400
MAX_ANIMATION_PIXELS = 200_000_000
"""Width x height x frames, at most, for an animation."""


class BadImage(ValueError):
    """An upload that is not an image we take; the message says why, in words for its uploader."""


@dataclass(frozen=True, slots=True)
class Variant:
    data: bytes  # WebP
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Processed:
    """An upload made safe: its original format, its size (after orientation), whether it moves, its variants and
    its blurhash."""

    source_type: str
    width: int
    height: int
    animated: bool
    variants: dict[str, Variant]
    blurhash: str

    def __repr__(self) -> str:  # the blurhash is a sketch of the picture: never in a log
        return f"Processed({self.source_type}, {self.width}x{self.height}, variants={sorted(self.variants)})"


def sniff(data: bytes) -> str | None:
    """The media type of ``data`` if it is one of :data:`FORMATS`, from its header only (cheap, for the request)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return FORMATS.get(image.format or "")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def process(data: bytes) -> Processed:
    """The variants and blurhash of an upload; :class:`BadImage` if it is not an image we take."""
    too_big = f"An image may have at most {MAX_PIXELS // 1_000_000} million pixels"
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours, refused at the header
        raise BadImage(too_big) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadImage("This file is not an image we can read (JPEG, PNG, WebP, GIF or AVIF)") from None
    with image:
        kind = FORMATS.get(image.format or "")
        if kind is None:
            raise BadImage("Only JPEG, PNG, WebP, GIF and AVIF images can be attached")
        width, height = image.size
        frames = getattr(image, "n_frames", 1)
        if width < 1 or height < 1 or width * height > MAX_PIXELS:
            raise BadImage(too_big)
        animated = frames > 1 and kind in ("image/gif", "image/webp")
        if animated and (frames > MAX_FRAMES or width * height * frames > MAX_ANIMATION_PIXELS):
            raise BadImage(f"An animation may have at most {MAX_FRAMES} frames and a modest size")
        try:
            if animated:
                return _animation(image, kind)
            return _still(image, kind)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise BadImage("This image is damaged or cut short") from None


def _clean(image: Image.Image) -> Image.Image:
    """The pixels of ``image`` (one frame), oriented, in sRGB, as a new image that carries nothing else."""
    image = ImageOps.exif_transpose(image) or image
    profile = image.info.get("icc_profile")
    mode = "RGBA" if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else "RGB"
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(
                image.convert(mode), source, ImageCms.createProfile("sRGB"), outputMode=mode
            )
            if converted is not None:
                image = converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unreadable profile: its colours as they are
    clean = image.convert(mode)  # a new image: its pixels, and only what ``info`` carries over, cleared next
    clean.info = {}
    return clean


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _webp(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "WEBP", quality=quality, method=4, exif=b"", xmp=b"", icc_profile=b"")
    return out.getvalue()


def _still(image: Image.Image, kind: str) -> Processed:
    clean = _clean(image)
    variants = {}
    source = clean
    for name, longest in sorted(VARIANTS.items(), key=lambda item: -item[1]):  # each from the next larger one
        size = _fit(clean.size, longest)
        if size != source.size:
            source = source.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        variants[name] = Variant(_webp(source, QUALITY[name]), *size)
    return Processed(kind, *clean.size, False, {name: variants[name] for name in VARIANTS}, _blurhash(source))


def _animation(image: Image.Image, kind: str) -> Processed:
    frames, durations = [], []
    for frame in ImageSequence.Iterator(image):
        frames.append(_clean(frame.convert("RGBA")))
        durations.append(int(frame.info.get("duration", 100)) or 100)
    first = frames[0]
    variants = {}
    for name, longest in VARIANTS.items():
        size = _fit(first.size, longest)
        if name == "small":  # the preview is the first frame, still
            still = first if size == first.size else first.resize(size, Image.Resampling.LANCZOS)
            variants[name] = Variant(_webp(still, QUALITY[name]), *size)
            continue
        resized = [f if size == f.size else f.resize(size, Image.Resampling.LANCZOS) for f in frames]
        out = io.BytesIO()
        resized[0].save(
            out,
            "WEBP",
            save_all=True,
            append_images=resized[1:],
            duration=durations,
            loop=int(image.info.get("loop", 0)),
            quality=QUALITY[name],
            method=4,
            exif=b"",
            xmp=b"",
            icc_profile=b"",
        )
        variants[name] = Variant(out.getvalue(), *size)
    return Processed(kind, *first.size, True, variants, _blurhash(first))


def _blurhash(image: Image.Image) -> str:
    """A 4x3 blurhash of the image (from a thumbnail of at most 32 pixels a side)."""
    small = image.convert("RGB")
    small.thumbnail((32, 32))
    width, height = small.size
    pixels = list(small.tobytes())
    rows = [[pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3] for x in range(width)] for y in range(height)]
    x_components, y_components = (4, 3) if width >= height else (3, 4)
    return str(blurhash.encode(rows, components_x=x_components, components_y=y_components))
