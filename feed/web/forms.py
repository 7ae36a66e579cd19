"""Request bodies: strict UTF-8 form and JSON parsing, and the CSRF check for every browser form."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from feed.errors import Invalid
from feed.web.auth import check_csrf

MAX_FIELDS = 50


class BadRequest(Invalid):
    """The body itself is unreadable (not the rules of a field)."""


def _decode_urlencoded(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form data is not valid UTF-8") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(name, value)
    return out


async def read_body(request: Request) -> dict[str, Any]:
    """The body as a flat dict: urlencoded, multipart (text fields only) or JSON."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        return _decode_urlencoded(await request.body())
    if ctype == "multipart/form-data":
        form = await request.form(max_fields=MAX_FIELDS, max_files=0)
        return {k: v for k, v in form.items() if isinstance(v, str)}
    if ctype == "application/json":
        try:
            data = json.loads(await request.body())
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("The body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("The JSON body must be an object")
        return data
    if not ctype and not await request.body():
        return {}
    raise BadRequest("Unsupported content type; send a form or JSON")


async def read_form(request: Request) -> dict[str, str]:
    """A browser form, after its CSRF token (field ``csrf_token`` or header ``X-CSRF-Token``) checks out."""
    data = await read_body(request)
    token = data.get("csrf_token") or request.headers.get("x-csrf-token")
    check_csrf(request, token if isinstance(token, str) else None)
    return {k: v if isinstance(v, str) else str(v) for k, v in data.items()}


def parse_id(raw: str | None, what: str = "id") -> int:
    """A positive 63-bit id from a path or form value; Invalid otherwise (never a 500)."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise Invalid(f"{what} must be a number")
    value = int(raw)
    if not 0 < value < 2**63:
        raise Invalid(f"{what} is out of range")
    return value
