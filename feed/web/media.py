"""``/media/{id}/{variant}``: an attachment's variant, opened as it is sent, to whoever may see its post.

- **Who:** the owner of an upload not yet attached; once attached, whoever may read the post (its visibility, and
  no block between them), known by their session or, for apps, their bearer token. Anyone else gets the same 404
  as for media that does not exist. (Media of public and unlisted posts needs no one; an app that loads images
  without its token shows those only.)
- **What:** the bytes of our own WebP variant, so ``Content-Type`` is ours, never the uploader's; ``nosniff`` (every
  response has it) and ``Content-Disposition: inline`` with a name made of ids.
- **Ranges:** one ``bytes=`` range is answered with a 206 and only the chunks it spans are read and opened; several
  ranges, or a malformed header, get the whole file (as HTTP allows); a range past the end is a 416.
- **Caching, by the threat model:** a variant never changes (a new picture is a new id), but who may see it can
  (a block, a deleted post, an erased account). Media of public and unlisted posts may sit in shared caches for a
  minute (``s-maxage=60``: the nginx recipe's cache, so that a burst of readers costs one fill) and in browsers for
  an hour; anything else is ``private`` (the reader's own browser only) and revalidated after an hour. An erasure
  or a deletion therefore reaches a shared cache within a minute, and never reaches a copy a reader already has.
"""

from __future__ import annotations

import logging
import re

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from crypto import InvalidToken
from feed.errors import DomainError, NotFound
from feed.services import media
from feed.services.models import User
from feed.web.auth import api_user, services, viewer
from feed.web.forms import path_id

log = logging.getLogger(__name__)

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
PUBLIC_CACHE = "public, max-age=3600, s-maxage=60"
PRIVATE_CACHE = "private, max-age=3600"


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single satisfiable ``Range``; None for the whole file. ValueError: past the end."""
    if not header:
        return None
    found = _RANGE.fullmatch(header.strip())
    if found is None or (not found[1] and not found[2]):
        return None  # several ranges, or not bytes: the whole file
    if not found[1]:  # the last N bytes
        length = int(found[2])
        if length == 0:
            raise ValueError("an empty suffix")
        return max(0, size - length), size
    start = int(found[1])
    end = min(size, int(found[2]) + 1) if found[2] else size
    if start >= size or end <= start:
        raise ValueError("past the end")
    return start, end


async def reader(request: Request) -> User | None:
    """Who asks: an app by its bearer token (one that may read statuses, or upload), else a browser by its session.
    A token that is not good is the same 404 as no right to see."""
    if "authorization" not in request.headers:
        return await viewer(request)
    try:
        return await api_user(request, ("read:statuses", "write:media"), required=False)
    except DomainError:
        raise NotFound() from None


async def serve(request: Request) -> Response:
    variant = request.path_params["variant"]
    media_id = path_id(request, "media_id")
    try:
        opened = await media.open_variant(services(request), media_id, variant, await reader(request))
    except InvalidToken:
        log.warning("media %s (%s) does not open: left unserved", media_id, variant)
        raise NotFound() from None
    etag = f'"{media_id}-{variant}"'
    headers = {
        "Content-Type": "image/webp",
        "Content-Disposition": f'inline; filename="{media_id}-{variant}.webp"',
        "Cache-Control": PUBLIC_CACHE if opened.public else PRIVATE_CACHE,
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Vary": "Cookie, Authorization",
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
    try:
        wanted = byte_range(request.headers.get("range"), opened.size)
    except ValueError:
        return Response(
            status_code=416, headers={"Content-Range": f"bytes */{opened.size}", "Cache-Control": "no-store"}
        )
    start, end = wanted or (0, opened.size)
    headers["Content-Length"] = str(end - start)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{opened.size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return StreamingResponse(opened.read(start, end), status_code=status, headers=headers)
