"""Media through Mastodon's client API: ``POST /api/v2/media`` (and v1), ``GET``/``PUT``/``DELETE
/api/v1/media/:id``, and the browser's own upload (``POST /media``, the composer's).

An upload is answered at once: its file sealed and stored, its variants made by the ``process_media`` job. v2
answers 202 with ``url: null``, and ``GET`` answers 206 until the variants exist (then 200), as Mastodon does; v1
(which Mastodon answers only once processed) waits for the job for a while.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from feed.errors import Invalid
from feed.services import media
from feed.services.models import KEEP, Keep, Media
from feed.web import mastodon
from feed.web.auth import api_user, check_csrf, require_user, services
from feed.web.forms import BadRequest, Upload, path_id, read_body
from feed.web.openapi import BINARY, STRING, operation, ref

V1_WAIT = 30.0  # seconds v1 waits for an upload's variants
FILES = frozenset({"file", "thumbnail"})  # a thumbnail is for video and audio: taken and not used
UPLOAD_FORM = {"file": BINARY, "thumbnail": BINARY, "description": STRING, "focus": STRING}


def _entity(request: Request, found: Media) -> dict[str, Any]:
    return mastodon.media_attachment(str(request.base_url).rstrip("/"), found)


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or isinstance(value, str):
        return value
    raise Invalid(f"{name} must be a string", name)


async def _upload(request: Request, user: Any) -> Media:
    data = await read_body(request, FILES)
    file = data.get("file")
    if not isinstance(file, Upload):
        raise Invalid("Attach the image as the multipart field 'file'", "file")
    focus = media.parse_focus(_text(data, "focus"))
    return await media.upload(services(request), user, file.data, description=_text(data, "description"), focus=focus)


@operation("Upload an image (processed in the background)", ref("MediaAttachment"), scope="write:media",
           form=UPLOAD_FORM, required=("file",), multipart=True, codes=("202",))  # fmt: skip
async def upload_v2(request: Request) -> Response:
    user = await api_user(request, "write:media")
    found = await _upload(request, user)
    return JSONResponse(_entity(request, found), status_code=202)


@operation("Upload an image (answered once processed)", ref("MediaAttachment"), scope="write:media",
           form=UPLOAD_FORM, required=("file",), multipart=True, codes=("200", "202"))  # fmt: skip
async def upload_v1(request: Request) -> Response:
    user = await api_user(request, "write:media")
    assert user is not None
    found = await _upload(request, user)
    found = await media.settled(services(request), found.id, user, V1_WAIT)
    return _answer(request, found)


def _answer(request: Request, found: Media) -> Response:
    if found.state == "failed":
        raise Invalid("The image could not be processed", "file")
    return JSONResponse(_entity(request, found), status_code=206 if found.state == "processing" else 200)


@operation("One of your uploads (206 while it is processed)", ref("MediaAttachment"), scope="write:media",
           codes=("200", "206"))  # fmt: skip
async def get_media(request: Request) -> Response:
    user = await api_user(request, "write:media")
    assert user is not None
    return _answer(request, await media.get(services(request), path_id(request, "media_id"), user))


@operation("Describe an upload no status took yet", ref("MediaAttachment"), scope="write:media",
           form={"description": STRING, "focus": STRING, "thumbnail": BINARY}, multipart=True)  # fmt: skip
async def update_media(request: Request) -> Response:
    user = await api_user(request, "write:media")
    assert user is not None
    data = await read_body(request, FILES)
    description: str | Keep | None = _text(data, "description") if "description" in data else KEEP
    focus = media.parse_focus(_text(data, "focus"))
    found = await media.describe(services(request), user, path_id(request, "media_id"), description=description,
                                 focus=focus)  # fmt: skip
    return JSONResponse(_entity(request, found), status_code=206 if found.state == "processing" else 200)


@operation("Delete an upload no status took", ref("Empty"), scope="write:media")
async def delete_media(request: Request) -> Response:
    user = await api_user(request, "write:media")
    assert user is not None
    await media.discard(services(request), user, path_id(request, "media_id"))
    return JSONResponse({})


# -- the composer's


async def upload_page(request: Request) -> Response:
    """``POST /media``: the composer's upload (a multipart ``file`` and the CSRF token in ``X-CSRF-Token``)."""
    user = await require_user(request)
    data = await read_body(request, FILES)
    token = data.get("csrf_token") or request.headers.get("x-csrf-token")
    check_csrf(request, token if isinstance(token, str) else None)
    file = data.get("file")
    if not isinstance(file, Upload):
        raise BadRequest("Choose an image to attach")
    found = await media.upload(services(request), user, file.data)
    return JSONResponse(_state(found), status_code=202, headers={"Cache-Control": "no-store"})


async def state_page(request: Request) -> Response:
    """``GET /media/{id}``: how the composer's upload is doing (processing, ready or failed), with its preview."""
    user = await require_user(request)
    found = await media.get(services(request), path_id(request, "media_id"), user)
    return JSONResponse(_state(found), headers={"Cache-Control": "no-store"})


def _state(found: Media) -> dict[str, Any]:
    small = found.variants.get("small")
    return {
        "id": str(found.id),
        "state": found.state,
        "preview": f"/media/{found.id}/small" if found.state == "ready" else None,
        "width": small[0] if small else None,
        "height": small[1] if small else None,
    }
