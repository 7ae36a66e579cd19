"""Request bodies: strict UTF-8 form and JSON parsing, and the CSRF check for every browser form."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from feed.errors import Invalid, NotFound
from feed.web.auth import check_csrf

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELDS = 50


class BadRequest(Invalid):
    """The body itself is unreadable (not the rules of a field)."""


def _decode_urlencoded(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise BadRequest("The form data is not valid UTF-8") from None
    except ValueError:  # parse_qsl: more than max_num_fields
        raise BadRequest("The form has too many fields") from None
    return _collect(pairs)


def _collect(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Fields by name: the first of each, except that a name ending in ``[]`` (Rails' arrays, as Mastodon clients
    send ``media_ids[]``) collects all its values in a list."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name.endswith("[]"):
            out.setdefault(name, []).append(value)
        else:
            out.setdefault(name, value)
    return out


@dataclass(frozen=True, slots=True)
class Upload:
    """A file from a multipart form: its bytes only (the name and type its sender gave are not kept)."""

    data: bytes

    def __repr__(self) -> str:
        return f"Upload({len(self.data)} bytes)"


def _decode_multipart(content_type: str, body: bytes, files: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Fields of a multipart form, text decoded as strict UTF-8; a file only in the fields named in ``files`` (as
    an :class:`Upload`).

    Starlette's own parser falls back to Latin-1 for bytes that are not UTF-8, which would store mojibake.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("The multipart form has no boundary")
    if params.get(b"charset", b"utf-8").lower() not in (b"utf-8", b"utf8"):
        raise BadRequest("Send the form as UTF-8")
    fields: list[tuple[bytes, bytes]] = []
    uploads: dict[str, Upload] = {}
    header = [b"", b""]  # the name and value of the part header being read
    disposition = bytearray()
    data = bytearray()

    def on_part_begin() -> None:
        disposition.clear()
        data.clear()

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        header[0] += chunk[start:end]

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        header[1] += chunk[start:end]

    def on_header_end() -> None:
        if header[0].lower() == b"content-disposition":
            disposition[:] = header[1]
        header[:] = [b"", b""]

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        data.extend(chunk[start:end])

    def on_part_end() -> None:
        _, options = parse_options_header(bytes(disposition))
        if b"name" not in options:
            raise BadRequest("A part of the multipart form has no name")
        if b"filename" in options:
            name = options[b"name"].decode("utf-8", "replace")
            if name not in files:
                raise BadRequest("File uploads are not accepted here" if not files else f"No file is taken as {name!r}")
            uploads.setdefault(name, Upload(bytes(data)))
            return
        if len(fields) >= MAX_FIELDS:
            raise BadRequest("The form has too many fields")
        fields.append((options[b"name"], bytes(data)))

    callbacks: MultipartCallbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
        out = _collect([(name.decode("utf-8"), value.decode("utf-8")) for name, value in fields])
    except UnicodeDecodeError:
        raise BadRequest("The form data is not valid UTF-8") from None
    except FormParserError:
        raise BadRequest("The multipart form is malformed") from None
    return out | uploads


def _check_text(value: Any) -> None:
    """Refuse lone surrogates (JSON ``"\\ud800"``): they are not text and cannot be encoded in a response."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("The body is not valid UTF-8 text") from None


async def read_body(request: Request, files: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The body as a flat dict: urlencoded, multipart (files only in the fields named in ``files``) or JSON.
    Fields named ``name[]`` are lists."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        return _decode_urlencoded(await request.body())
    if ctype == "multipart/form-data":
        return _decode_multipart(request.headers["content-type"], await request.body(), files)
    if ctype == "application/json":
        try:
            data = json.loads(await request.body())
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise BadRequest("The body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("The JSON body must be an object")
        _check_text(data)
        return data
    if not ctype and not await request.body():
        return {}
    raise BadRequest("Unsupported content type; send a form or JSON")


async def read_form(request: Request) -> dict[str, str]:
    """A browser form, after its CSRF token (field ``csrf_token`` or header ``X-CSRF-Token``) checks out."""
    data = await read_body(request)
    token = data.get("csrf_token") or request.headers.get("x-csrf-token")
    check_csrf(request, token if isinstance(token, str) else None)
    form: dict[str, str] = {}
    for name, value in data.items():
        if value is None:  # a JSON null is an absent field, not the text "None"
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise BadRequest(f"The field {name!r} must be text")
        form[name] = str(value)
    return form


def parse_id(raw: str | None, what: str = "id") -> int:
    """A positive 63-bit id from a path or form value; Invalid otherwise (never a 500)."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise Invalid(f"{what} must be a number")
    value = int(raw)
    if not 0 < value < 2**63:
        raise Invalid(f"{what} is out of range")
    return value


def path_id(request: Request, name: str) -> int:
    """An id from the path; anything that is not one is simply a record that does not exist (404, not 422)."""
    try:
        return parse_id(request.path_params[name])
    except Invalid:
        raise NotFound() from None


def parse_count(raw: str, what: str, maximum: int) -> int:
    """A count such as ``limit`` from the query: digits only, clamped to 1..``maximum`` as Mastodon does; a number
    of more than 19 digits (past any 64-bit number) is refused before it is converted, however long it is."""
    if not (raw.isascii() and raw.isdigit()):  # str.isdigit() alone accepts "²", which int() refuses
        raise BadRequest(f"{what} must be a number")
    if len(raw) > 19:
        raise BadRequest(f"{what} is out of range")
    return max(1, min(maximum, int(raw)))
