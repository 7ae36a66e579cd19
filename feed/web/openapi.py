"""The OpenAPI description of the API (``GET /api/openapi.json``), generated from the app's routes.

Each API endpoint says what it takes and gives with :func:`operation`, next to its code; :func:`document` walks the
routes and writes one OpenAPI 3.1 operation for each route and method, its path parameters taken from the route.
The entities are Mastodon's (https://docs.joinmastodon.org/entities/), as far as cipherfeed fills them: the fields
it always sends are required, and an entity may carry more (Mastodon adds fields between versions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__openapi__"
VERSION = "4.3.0"


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": required | (optional or {})}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


Schema = dict[str, Any]
STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
ID: Schema = {"type": "string", "pattern": "^[0-9]+$"}
WHEN: Schema = {"type": "string", "format": "date-time"}
BINARY: Schema = {"type": "string", "format": "binary"}  # a file in a multipart form
ANYTHING: dict[str, Any] = {}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _object({"error": STRING}, {"error_description": STRING}),
    "Account": _object(
        {
            "id": ID,
            "username": STRING,
            "acct": STRING,
            "display_name": STRING,
            "locked": BOOLEAN,
            "bot": BOOLEAN,
            "discoverable": BOOLEAN,
            "indexable": BOOLEAN,
            "noindex": BOOLEAN,
            "group": BOOLEAN,
            "created_at": WHEN,
            "note": STRING,
            "url": STRING,
            "uri": STRING,
            "avatar": STRING,
            "avatar_static": STRING,
            "header": STRING,
            "header_static": STRING,
            "followers_count": INTEGER,
            "following_count": INTEGER,
            "statuses_count": INTEGER,
            "last_status_at": _nullable("string", format="date"),
            "emojis": array(ANYTHING),
            "fields": array(ANYTHING),
        },
        {"source": {"type": "object"}, "memorial": BOOLEAN, "suspended": BOOLEAN, "limited": BOOLEAN},
    ),
    "Application": _object(
        {"name": STRING, "website": _nullable("string")},
        {
            "id": ID,
            "scopes": array(STRING),
            "redirect_uri": STRING,
            "redirect_uris": array(STRING),
            "vapid_key": STRING,
            "client_id": STRING,
            "client_secret": STRING,
            "client_secret_expires_at": INTEGER,
        },
    ),
    "MediaAttachment": _object(
        {
            "id": ID,
            "type": {"enum": ["image"]},
            "url": _nullable("string"),
            "preview_url": _nullable("string"),
            "remote_url": {"type": "null"},
            "meta": {"type": "object"},
            "description": _nullable("string"),
            "blurhash": _nullable("string"),
        },
        {"preview_remote_url": {"type": "null"}, "text_url": {"type": "null"}},
    ),
    "Mention": _object({"id": ID, "username": STRING, "acct": STRING, "url": STRING}),
    "Status": _object(
        {
            "id": ID,
            "uri": STRING,
            "url": _nullable("string"),
            "created_at": WHEN,
            "edited_at": _nullable("string", format="date-time"),
            "account": ref("Account"),
            "content": STRING,
            "visibility": {"enum": ["public", "unlisted", "private", "direct"]},
            "sensitive": BOOLEAN,
            "spoiler_text": STRING,
            "media_attachments": array(ref("MediaAttachment")),
            "application": {"oneOf": [ref("Application"), {"type": "null"}]},
            "mentions": array(ref("Mention")),
            "tags": array(ANYTHING),
            "emojis": array(ANYTHING),
            "reblogs_count": INTEGER,
            "favourites_count": INTEGER,
            "replies_count": INTEGER,
            "in_reply_to_id": _nullable("string"),
            "in_reply_to_account_id": _nullable("string"),
            "reblog": {"oneOf": [ref("Status"), {"type": "null"}]},  # a boost: the status it shares
            "poll": {"type": "null"},
            "card": {"type": "null"},
            "language": _nullable("string"),
            "favourited": BOOLEAN,
            "reblogged": BOOLEAN,
            "muted": BOOLEAN,
            "bookmarked": BOOLEAN,
            "pinned": BOOLEAN,
        },
        {"text": STRING, "filtered": array(ANYTHING)},
    ),
    "StatusEdit": _object(
        {
            "content": STRING,
            "spoiler_text": STRING,
            "sensitive": BOOLEAN,
            "created_at": WHEN,
            "account": ref("Account"),
            "media_attachments": array(ANYTHING),
            "emojis": array(ANYTHING),
        },
        {"poll": {"type": "null"}},
    ),
    "StatusSource": _object({"id": ID, "text": STRING, "spoiler_text": STRING}),
    "Context": _object({"ancestors": array(ref("Status")), "descendants": array(ref("Status"))}),
    "Relationship": _object(
        {
            "id": ID,
            "following": BOOLEAN,
            "followed_by": BOOLEAN,
            "blocking": BOOLEAN,
            "muting": BOOLEAN,
            "requested": BOOLEAN,
        }
    ),
    "Search": _object(
        {"accounts": array(ref("Account")), "statuses": array(ref("Status")), "hashtags": array(ANYTHING)}
    ),
    "Notification": _object(
        {"id": ID, "type": STRING, "group_key": STRING, "created_at": WHEN, "account": ref("Account")},
        {"status": ref("Status")},
    ),
    "NotificationGroup": _object(
        {
            "group_key": STRING,
            "notifications_count": INTEGER,
            "type": STRING,
            "most_recent_notification_id": ID,
            "sample_account_ids": array(ID),
        },
        {"status_id": ID, "page_min_id": ID, "page_max_id": ID, "latest_page_notification_at": WHEN},
    ),
    "GroupedNotificationsResults": _object(
        {
            "accounts": array(ref("Account")),
            "statuses": array(ref("Status")),
            "notification_groups": array(ref("NotificationGroup")),
        }
    ),
    "UnreadCount": _object({"count": INTEGER}),
    "Empty": {"type": "object"},
    "Marker": _object({"last_read_id": ID, "version": INTEGER, "updated_at": WHEN}),
    "Markers": {"type": "object", "additionalProperties": ref("Marker")},
    "Preferences": {"type": "object"},
    "InstanceV1": _object({"uri": STRING, "title": STRING, "version": STRING, "urls": {"type": "object"}}),
    "InstanceV2": _object({"domain": STRING, "title": STRING, "version": STRING, "configuration": {"type": "object"}}),
}

ERROR = {"application/json": {"schema": ref("Error")}}
SUCCESS = {"202": "Accepted: processed in the background", "206": "Still being processed"}
ERRORS = {
    "400": "Bad input",
    "401": "No token, or one not valid",
    "403": "Outside the token's scopes",
    "404": "Not found",
    "409": "Changed meanwhile",
    "422": "Not valid",
    "429": "Too many requests",
    "503": "The database is away",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    returns: dict[str, Any] | None  # the 2xx body's schema (None: not JSON)
    scope: str | None = None  # the OAuth scope a token must hold (None: none, or any token)
    public: bool = False  # answers without a token too
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    form: dict[str, dict[str, Any]] | None = None  # the request body's fields (a form or JSON)
    required: Sequence[str] = ()  # of ``form``
    multipart: bool = False  # the body is a multipart form only (it carries a file)
    codes: Sequence[str] = ("200",)  # the success statuses


def operation(
    summary: str,
    returns: dict[str, Any] | None,
    *,
    scope: str | None = None,
    public: bool = False,
    query: dict[str, dict[str, Any]] | None = None,
    form: dict[str, dict[str, Any]] | None = None,
    required: Sequence[str] = (),
    multipart: bool = False,
    codes: Sequence[str] = ("200",),
) -> Callable[[F], F]:
    """Describe the endpoint for the OpenAPI document."""
    described = Operation(summary, returns, scope, public, query or {}, form, tuple(required), multipart, tuple(codes))

    def attach(endpoint: F) -> F:
        setattr(endpoint, ATTRIBUTE, described)
        return endpoint

    return attach


PAGING: dict[str, Schema] = {
    "max_id": ID,
    "since_id": ID,
    "min_id": ID,
    "limit": {"type": "integer", "minimum": 1, "maximum": 40},
}

STATUS_FORM: dict[str, Schema] = {"status": STRING, "spoiler_text": STRING, "sensitive": BOOLEAN, "language": STRING}
VISIBILITY: Schema = {"enum": ["public", "unlisted", "private", "direct"]}
SEARCH_QUERY: dict[str, Schema] = {
    "q": STRING,
    "resolve": BOOLEAN,
    "following": BOOLEAN,
    "limit": {"type": "integer", "minimum": 1, "maximum": 40},
    "offset": {"type": "integer", "minimum": 0},
}

_PARAM = re.compile(r"{([a-z_]+)(?::[a-z]+)?}")


def _operation(path: str, method: str, op: Operation) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True, "schema": ID} for name in _PARAM.findall(path)] + [
        {"name": name, "in": "query", "required": False, "schema": schema} for name, schema in op.query.items()
    ]
    out: dict[str, Any] = {"summary": op.summary, "operationId": f"{method}{path}", "parameters": parameters}
    if op.form is not None:
        body = {"type": "object", "properties": op.form, "required": list(op.required)}
        content = {"multipart/form-data": {"schema": body}}
        if not op.multipart:
            content = {"application/x-www-form-urlencoded": {"schema": body}, "application/json": {"schema": body}}
        out["requestBody"] = {"required": bool(op.required), "content": content}
    responses: dict[str, Any] = {}
    for code in op.codes:
        responses[code] = {"description": SUCCESS.get(code, "OK")}
        if op.returns is not None:
            responses[code]["content"] = {"application/json": {"schema": op.returns}}
    for status, why in ERRORS.items():
        responses[status] = {"description": why, "content": ERROR}
    out["responses"] = responses
    if op.scope is not None:
        out["security"] = [{"OAuth2": [op.scope]}, *([{}] if op.public else [])]
    elif op.public:
        out["security"] = [{}]
    return out


def document(routes: Iterable[BaseRoute], base: str) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every described API route."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op = getattr(getattr(route, "endpoint", None), ATTRIBUTE, None)
        if not isinstance(route, Route) or op is None:
            continue
        path = _PARAM.sub(r"{\1}", route.path)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(path, method.lower(), op)
    from feed.services import oauth

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cipherfeed",
            "version": VERSION,
            "description": "Mastodon's client API, as cipherfeed has it",
        },
        "servers": [{"url": base}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "OAuth2": {
                    "type": "oauth2",
                    "flows": {
                        "authorizationCode": {
                            "authorizationUrl": f"{base}/oauth/authorize",
                            "tokenUrl": f"{base}/oauth/token",
                            "scopes": {scope: scope for scope in oauth.SUPPORTED},
                        }
                    },
                }
            },
        },
    }


@operation("This description", {"type": "object"}, public=True)
async def openapi_json(request: Request) -> Response:
    return JSONResponse(document(request.app.routes, str(request.base_url).rstrip("/")))
