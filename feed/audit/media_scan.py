"""The media store, file by file: each must be a sealed stream (``crypto.stream``) named by ids, and hold no canary
and no image or metadata bytes in clear."""

from __future__ import annotations

import re
from collections.abc import Sequence

from crypto import InvalidToken
from crypto.stream import ENVELOPE_SIZE, key_version_of
from feed.audit.detect import Needle, find_canaries
from feed.audit.report import Progress, Report
from feed.media.store import MediaStore

_NAME = re.compile(r"\d{1,20}/[a-z]{1,16}")
# What a picture or its metadata carries when it is not sealed: patterns of 6 bytes or more, which random
# ciphertext holds by chance about once in 2**48 positions. A JPEG's 3-byte start is checked at the start only.
_IN_CLEAR = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"GIF87a": "a GIF image",
    b"GIF89a": "a GIF image",
    b"WEBPVP8": "a WebP image",
    b"ftypavif": "an AVIF image",
    b"Exif\x00\x00": "an EXIF block",
    b"http://ns.adobe.com/xap/": "an XMP block",
}


async def scan_media(store: MediaStore, needles: Sequence[Needle], report: Report, progress: Progress) -> None:
    place = report.place("media")
    place.note = store.describe
    async for name in store.names():
        size = await store.size(name)
        if size is None:  # deleted while we listed
            continue
        data = await store.read(name, 0, size)
        place.items += 1
        place.bytes += size
        if not _NAME.fullmatch(name):
            report.find("media", name, "unexpected file", "not named <media id>/<variant>")
        try:
            key_version_of(data[:ENVELOPE_SIZE])
        except InvalidToken:
            report.find("media", name, "not sealed", "no valid sealed-stream header")
        if data.startswith(b"\xff\xd8\xff"):
            report.find("media", name, "image data in clear", "a JPEG image")
        for pattern, what in _IN_CLEAR.items():
            if (offset := data.find(pattern)) >= 0:
                report.find("media", f"{name} byte {offset}", "image data in clear", what)
        for hit in find_canaries(data, needles):
            report.find("media", f"{name} byte {hit.offset}", "canary", hit.encoding)
        progress.update("media", place.items)
    progress.done("media", place.items)
