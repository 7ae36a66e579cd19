"""OAuth 2 as Mastodon does it: registered apps, scopes, authorization codes and the tokens apps get.

Every secret (a client secret, a code, a token) is random, shown once, and stored as a keyed hash
(``accounts.token_hash``): a copy of the database cannot even confirm one. A code lives :data:`CODE_TTL` and is
taken by exactly one token request. Revoking a token invalidates it in every process through the outbox, so the
next call anywhere gets 401.

Scopes are Mastodon's: ``read``, ``write``, ``follow``, ``push``, ``profile`` and the granular ``read:…`` and
``write:…`` forms. An endpoint names the granular scope it needs (:func:`covers`); a token holding it, or the
top-level scope that includes it, may call it.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from feed.errors import Invalid, NotFound
from feed.ids import new_id
from feed.services import effects, throttle
from feed.services.accounts import token_hash
from feed.services.context import Services, now
from feed.services.models import User
from feed.storage import oauth as store

OOB = "urn:ietf:wg:oauth:2.0:oob"  # the code is shown on a page instead of sent to the app
CODE_TTL = timedelta(minutes=10)
MAX_REDIRECT_URIS = 10

READ = tuple(
    f"read:{part}"
    for part in "accounts blocks bookmarks favourites filters follows lists mutes notifications search statuses".split()
)
WRITE = tuple(
    f"write:{part}"
    for part in (
        "accounts blocks bookmarks conversations favourites filters follows lists media mutes notifications reports "
        "statuses"
    ).split()
)
FOLLOW = ("read:blocks", "write:blocks", "read:follows", "write:follows", "read:mutes", "write:mutes")
TOP_LEVEL: dict[str, tuple[str, ...]] = {"read": READ, "write": WRITE, "follow": FOLLOW, "push": (), "profile": ()}
SUPPORTED = (*TOP_LEVEL, *READ, *WRITE)
_KNOWN = frozenset(SUPPORTED)
DEFAULT_SCOPES = ("read",)

# What the consent page says each scope lets an app do.
DESCRIPTIONS = {
    "read": "read everything your account can see",
    "write": "post, edit, delete, favourite and change your account",
    "follow": "follow and unfollow people",
    "push": "receive push notifications",
    "profile": "see who you are (your profile only)",
}


def parse_scopes(raw: str | None, *, default: tuple[str, ...] = DEFAULT_SCOPES) -> tuple[str, ...]:
    """Scopes as a request gives them (space- or plus-separated), in order, once each; Invalid if one is unknown."""
    names = (raw or "").replace("+", " ").split()
    if not names:
        return default
    unknown = [name for name in names if name not in _KNOWN]
    if unknown:
        raise Invalid(f"Unknown scope: {unknown[0][:40]}", "scope")
    return tuple(dict.fromkeys(names))


def covers(granted: Iterable[str], wanted: str) -> bool:
    """Whether scopes ``granted`` include the scope ``wanted`` (a top-level one includes its granular forms)."""
    return any(scope == wanted or wanted in TOP_LEVEL.get(scope, ()) for scope in granted)


def within(requested: Iterable[str], allowed: Iterable[str]) -> bool:
    """Whether every requested scope is one the app registered (or part of one)."""
    allowed = tuple(allowed)
    return all(covers(allowed, scope) for scope in requested)


@dataclass(frozen=True, slots=True)
class App:
    id: int
    client_id: str
    name: str
    website: str | None
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    secret_hash: bytes


def _app(row: Any) -> App:
    return App(row.id, row.client_id, row.name, row.website, tuple(row.redirect_uris.split("\n")),
               tuple(row.scopes.split()), row.secret_hash)  # fmt: skip


def check_redirect_uri(uri: str) -> str:
    """A redirect URI an app may register: the out-of-band one, or an absolute URI without a fragment (apps on
    phones use their own schemes, ``myapp://oauth``)."""
    uri = uri.strip()
    if uri == OOB:
        return uri
    if not uri or len(uri) > 2000 or any(c.isspace() or ord(c) < 32 for c in uri):
        raise Invalid("redirect_uris must be absolute URIs", "redirect_uris")
    parts = urlsplit(uri)
    if not parts.scheme or parts.fragment or (parts.scheme in ("http", "https") and not parts.netloc):
        raise Invalid("redirect_uris must be absolute URIs without a fragment", "redirect_uris")
    if parts.scheme.lower() in ("javascript", "data", "vbscript", "file"):
        raise Invalid("redirect_uris may not use that scheme", "redirect_uris")
    return uri


async def register_app(
    svc: Services, name: str, redirect_uris: Iterable[str], scopes: str | None, website: str | None, ip: str
) -> tuple[App, str]:
    """A new app; its client secret, shown this once. Registrations from one client address ``ip`` (IPv6 by /64)
    are counted as logins are (``feed.services.throttle``): past ``apps_per_ip`` in a window, each further one must
    wait, or is refused (RateLimited) and stores nothing. A request refused for its fields is not counted."""
    name = (name or "").strip()
    if not 1 <= len(name) <= 200 or any(ord(c) < 32 for c in name):
        raise Invalid("client_name must be 1 to 200 characters", "client_name")
    uris = tuple(dict.fromkeys(check_redirect_uri(uri) for uri in redirect_uris if uri.strip()))
    if not uris:
        raise Invalid("redirect_uris can't be blank", "redirect_uris")
    if len(uris) > MAX_REDIRECT_URIS:
        raise Invalid(f"At most {MAX_REDIRECT_URIS} redirect_uris", "redirect_uris")
    granted = parse_scopes(scopes)
    website = (website or "").strip() or None
    if website is not None:
        parts = urlsplit(website)
        if len(website) > 500 or parts.scheme not in ("http", "https") or not parts.netloc:
            raise Invalid("website must be an http or https address", "website")
    bucket = throttle.bucket(svc, "app", throttle.ip_prefix(ip))
    await throttle.attempt(svc, [(bucket, svc.throttle.apps_per_ip)], "Too many apps registered from this address")
    secret = secrets.token_urlsafe(32)
    app = App(new_id(), secrets.token_urlsafe(32), name, website, uris, granted, token_hash(svc, secret))
    async with svc.db.begin() as session:
        await store.insert_app(
            session,
            id=app.id,
            client_id=app.client_id,
            secret_hash=app.secret_hash,
            name=app.name,
            website=app.website,
            redirect_uris="\n".join(app.redirect_uris),
            scopes=" ".join(app.scopes),
            created_at=now(),
        )
    return app, secret


async def app_by_client_id(svc: Services, client_id: str) -> App | None:
    if not client_id or len(client_id) > 64:
        return None
    async with svc.db() as session:
        row = await store.app_by_client_id(session, client_id)
    return _app(row) if row is not None else None


async def app_by_id(svc: Services, app_id: int) -> App | None:
    async with svc.db() as session:
        row = await store.app_by_id(session, app_id)
    return _app(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class Application:
    """What a status says of the app it was posted from."""

    name: str
    website: str | None


async def applications(svc: Services, app_ids: Iterable[int]) -> dict[int, Application]:
    """The apps of these ids that exist (kept in this process: an app's name and website never change)."""
    wanted = {app_id for app_id in app_ids if app_id}
    found = {app_id: svc.apps[app_id] for app_id in wanted if app_id in svc.apps}
    if missing := wanted - found.keys():
        async with svc.db() as session:
            for row in await store.app_names(session, missing):
                found[row.id] = svc.apps[row.id] = Application(row.name, row.website)
    return found


def secret_matches(svc: Services, app: App, secret: str) -> bool:
    return bool(secret) and len(secret) <= 200 and hmac.compare_digest(token_hash(svc, secret), app.secret_hash)


@dataclass(frozen=True, slots=True)
class Code:
    app_id: int
    user_id: int
    redirect_uri: str
    scopes: tuple[str, ...]
    challenge: str | None
    challenge_method: str | None
    expires_at: datetime


async def save_code(
    svc: Services,
    code: str,
    app: App,
    user: User,
    redirect_uri: str,
    scopes: Iterable[str],
    challenge: str | None,
    challenge_method: str | None,
) -> None:
    """Keep a new authorization code (its hash) for :data:`CODE_TTL`."""
    async with svc.db.begin() as session:
        await store.insert_code(
            session,
            code_hash=token_hash(svc, code),
            app_id=app.id,
            user_id=user.id,
            redirect_uri=redirect_uri,
            scopes=" ".join(scopes),
            challenge=challenge,
            challenge_method=challenge_method,
            expires_at=now() + CODE_TTL,
        )


async def redeem_code(svc: Services, code: str) -> Code | None:
    """The code's grant, once: it is gone after this (used, expired or not, a code is never good twice)."""
    if not code or len(code) > 200:
        return None
    async with svc.db.begin() as session:
        row = await store.take_code(session, token_hash(svc, code))
    if row is None or row.expires_at <= now():
        return None
    return Code(row.app_id, row.user_id, row.redirect_uri, tuple(row.scopes.split()), row.challenge,
                row.challenge_method, row.expires_at)  # fmt: skip


async def issue_token(svc: Services, app: App, user_id: int | None, scopes: Iterable[str]) -> str:
    """A bearer token of the app, for the user (None: for the app alone); shown this once."""
    token = secrets.token_urlsafe(32)
    async with svc.db.begin() as session:
        await store.insert_token(
            session,
            token_hash=token_hash(svc, token),
            user_id=user_id,
            app_id=app.id,
            name=app.name[:100],
            scopes=" ".join(scopes),
            now=now(),
        )
    return token


async def revoke_token(svc: Services, app: App, token: str) -> None:
    """The app gives a token of its own back (RFC 7009: a token that is not its, or unknown, is no error)."""
    if not token or len(token) > 200:
        return
    hashed = token_hash(svc, token)
    caused = effects.tokens_revoked([hashed])
    async with svc.db.begin() as session:
        if not await store.delete_token(session, hashed, app.id):
            return
        await effects.record(session, caused)
    await effects.committed(svc, caused)


@dataclass(frozen=True, slots=True)
class Authorised:
    """An app holding tokens of a person, for their settings page."""

    app_id: int
    name: str
    website: str | None
    scopes: tuple[str, ...]
    since: datetime


async def authorised_apps(svc: Services, user: User) -> list[Authorised]:
    async with svc.db() as session:
        rows = await store.authorised_apps(session, user.id)
    found: dict[int, Authorised] = {}
    for row in rows:
        before = found.get(row.id)
        scopes = tuple(dict.fromkeys((*(before.scopes if before else ()), *row.scopes.split())))
        since = before.since if before else row.created_at
        found[row.id] = Authorised(row.id, row.name, row.website, scopes, since)
    return list(found.values())


async def revoke_app(svc: Services, user: User, app_id: int) -> None:
    """Every token the person gave the app ends, on every process at once."""
    async with svc.db.begin() as session:
        gone = await store.delete_app_tokens(session, user.id, app_id)
        if not gone:
            raise NotFound("That app has no access to your account")
        caused = effects.tokens_revoked(gone)
        await effects.record(session, caused)
    await effects.committed(svc, caused)
