"""Accounts: registration, login with throttling, sessions, API tokens, profile and password changes, deletion.

An erased account (``feed.services.erasure``) keeps a tombstone row until it is purged; every lookup here treats it
as absent.
"""

from __future__ import annotations

import hmac
import re
import secrets
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio.to_thread
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crypto import FieldContext, InvalidToken, open_field, seal_fields
from feed.cache import API_TOKENS, SESSIONS, USERS, Request
from feed.errors import Conflict, Invalid, NotFound, Unauthorized
from feed.ids import new_id
from feed.records import AccountCounts, Cacheable, SessionRecord, UserRecord
from feed.services import effects, erasure, lookup, throttle
from feed.services import email_index as emails
from feed.services.context import Services, now
from feed.services.models import Profile, User
from feed.services.text import USERNAME_RE, normalize_text
from feed.storage import follows as follow_store
from feed.storage import relations as relation_store
from feed.storage import users as store

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
LOGIN_ERROR = "Invalid username or password"
_EMAIL_TAKEN = "That email address is already registered"
_USERNAME_OR_EMAIL_TAKEN = "That username or email address is already registered"
_EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
_COMMON = frozenset(
    "password password1 password12 password123 1234567890 12345678910 qwertyuiop 1q2w3e4r5t iloveyou12 "
    "letmein123 qwerty1234 0987654321 passw0rd12 abcdefghij 1111111111 0000000000 trustno1234 "
    "football12 baseball12 superman12 welcome123 changeme12 administrator".split()
)
RESERVED = frozenset({"admin", "administrator", "root", "api", "cipherfeed", "settings", "login", "logout"})


@dataclass(frozen=True, slots=True)
class Session:
    """A fresh browser session: ``token`` goes in the cookie, only its hash is stored."""

    token: str = field(repr=False)
    user: User
    device: str = field(default="", repr=False)  # a new token for the browser's device cookie (feed.services.throttle)
    replaces: str | None = field(default=None, repr=False)  # the device token of this account it replaces


def token_hash(svc: Services, token: str) -> bytes:
    """What is stored for a session id or API token: keyed, so a database copy cannot even confirm one."""
    return hmac.digest(svc.secrets.token_key, token.encode(), "sha256")


async def _password_guess(svc: Services, user: User) -> list[tuple[str, int]]:
    """A guess at a signed-in user's own password (to change it, or to delete the account): slowed down per
    account, apart from logins (a stolen session is not a way to guess the password, nor to slow the owner's
    logins down)."""
    buckets = [(throttle.bucket(svc, "password", user.username.lower()), svc.throttle.per_account)]
    await throttle.attempt(svc, buckets, "Too many wrong passwords")
    return buckets


def check_username(raw: str) -> str:
    username = raw.strip().lstrip("@")
    if not username:
        raise Invalid("Username can't be blank", "username")
    if not USERNAME_RE.fullmatch(username):
        raise Invalid("Username must be 1 to 30 letters, digits or underscores", "username")
    if username.lower() in RESERVED:
        raise Invalid("That username is reserved", "username")
    return username


def _lookup_name(raw: str) -> str | None:
    """The ``username_lower`` to look up for what someone typed, or None if it cannot be a username.

    Checked before any query: PostgreSQL refuses NUL in text, and nothing else could match a row anyway.
    """
    name = raw.strip().lstrip("@").lower()
    return name if USERNAME_RE.fullmatch(name) else None


_TOO_EASY = "That password is too easy to guess"
PASSWORD_HINT = (
    f"At least {MIN_PASSWORD} characters, not containing your username and not a common password; "
    "a passphrase of a few words is best."
)


def check_password(password: str, username: str) -> None:
    if not password:
        raise Invalid("Password can't be blank", "password")
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"Password must be at least {MIN_PASSWORD} characters", "password")
    if len(password) > MAX_PASSWORD:
        raise Invalid(f"Password must be at most {MAX_PASSWORD} characters", "password")
    lowered = password.lower()
    # A short username ("jo") is a substring of too many good passphrases to count against them.
    if len(username) >= 4 and username.lower() in lowered:
        raise Invalid(f"{_TOO_EASY}: it must not contain your username", "password")
    if lowered in _COMMON:
        raise Invalid(f"{_TOO_EASY}: it is one of the most common passwords", "password")
    if len(set(password)) < 4:
        raise Invalid(f"{_TOO_EASY}: it repeats too few characters", "password")


def normalize_email(raw: str) -> str | None:
    email = raw.strip().lower()
    if not email:
        return None
    if len(email) > 254 or not _EMAIL_RE.fullmatch(email):
        raise Invalid("That is not an email address", "email")
    return email


async def _hash_password(svc: Services, password: str) -> str:
    return await anyio.to_thread.run_sync(svc.hasher.hash, password, limiter=svc.hash_slots)


async def _verify_password(svc: Services, stored: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return bool(svc.hasher.verify(stored, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await anyio.to_thread.run_sync(verify, limiter=svc.hash_slots)


async def register(svc: Services, username: str, password: str, email: str = "") -> User:
    username = check_username(username)
    check_password(password, username)
    address = normalize_email(email)
    password_hash = await _hash_password(svc, password)
    user_id = new_id()
    when = now()
    email_index, index_version = emails.index(svc, address) if address else (None, None)
    async with svc.db.begin() as session:
        if await store.username_taken(session, username.lower()):
            raise Conflict("That username is taken")
        if address and await emails.taken(svc, session, address):
            raise Conflict(_EMAIL_TAKEN)
        try:
            # Core statements run at once, so a concurrent sign-up that won the race fails right here.
            await store.insert_user(
                session,
                id=user_id,
                username=username,
                username_lower=username.lower(),
                display_name="",
                bio="",
                password_hash=password_hash,
                email_index=email_index,
                email_index_version=index_version,
                key_version=1,
                created_at=when,
                updated_at=when,
            )
        except IntegrityError:
            raise Conflict("That username is taken" if email_index is None else _USERNAME_OR_EMAIL_TAKEN) from None
        key = await svc.keys.create(session, user_id, 1, when)
        if address:
            sealed = seal_fields(key, {"email": address}, object_id=user_id, owner_id=user_id, revision=0)
            await store.update_user(session, user_id, email_sealed=sealed["email"].data)
    return User(id=user_id, username=username, display_name="", bio="", created_at=when, key_version=1)


async def login(svc: Services, username: str, password: str, ip: str, devices: Sequence[str] = ()) -> Session:
    """Check the password, slowed down by the login throttle (``feed.services.throttle``; ``devices``: the tokens
    of the browser's device cookie), and open a session. One error for an unknown user and a wrong password."""
    user_id, name, device = await _password_login(svc, username, password, ip, devices)
    async with svc.db.begin() as session:
        opened = await _new_session(svc, session, user_id)
    return Session(opened.token, opened.user, throttle.device_token(svc, name), device)


async def password_user(svc: Services, username: str, password: str, ip: str) -> User:
    """The account whose password this is, checked as the login form checks it (an app's password grant)."""
    user_id, _, _ = await _password_login(svc, username, password, ip, ())
    async with svc.db() as session:
        row = await store.get_user(session, user_id)
    if row is None:
        raise Unauthorized(LOGIN_ERROR)
    return User.from_row(row)


async def _password_login(
    svc: Services, username: str, password: str, ip: str, devices: Sequence[str]
) -> tuple[int, str, str | None]:
    """The user id, lookup name and known device of a right password (the throttle counts wrong ones)."""
    name = _lookup_name(username)
    key = name or "-"  # names that cannot exist share one account bucket
    device = throttle.known_device(svc, key, devices) if name else None
    buckets = throttle.login_buckets(svc, key, ip, device)
    await throttle.attempt(svc, buckets, "Too many failed logins")
    async with svc.db() as session:
        creds = await store.get_credentials(session, name) if name else None
    ok = False
    if creds is None:
        await _verify_password(svc, svc.dummy_hash, password)  # same work as a real check
    else:
        ok = await _verify_password(svc, creds.password_hash, password)
    if not ok or creds is None or name is None:
        raise Unauthorized(LOGIN_ERROR)
    # Hashed before the transaction, so no write lock is held through the slow part.
    new_hash = await _hash_password(svc, password) if svc.hasher.check_needs_rehash(creds.password_hash) else None
    async with svc.db.begin() as session:
        await throttle.succeeded(svc, buckets, session)
        if new_hash:
            await store.update_user(session, creds.id, password_hash=new_hash)
    return creds.id, name, device


async def open_session(svc: Services, user_id: int) -> Session:
    """A session for a user who has just proved who they are some other way (right after signing up), with a
    device token: the browser that made the account is one of its known devices."""
    async with svc.db.begin() as session:
        opened = await _new_session(svc, session, user_id)
    return Session(opened.token, opened.user, throttle.device_token(svc, opened.user.username.lower()))


def new_session_token(user_id: int) -> str:
    """A session cookie: 32 random bytes, after the user's id (in hex), so that the reads of a home page need not
    wait for the session's (``feed.web.hot_path``). The id is a hint, checked against the session's record read
    with them; it tells nobody anything the cookie's holder could not ask the server for."""
    return f"{user_id:x}.{secrets.token_urlsafe(32)}"


_HEX = frozenset("0123456789abcdef")


def session_hint(token: str) -> int | None:
    """The user id a session cookie of :func:`new_session_token` names (unchecked); None for one without."""
    head, dot, rest = token.partition(".")
    if not dot or not rest or not 0 < len(head) <= 16 or not _HEX.issuperset(head):
        return None
    user_id = int(head, 16)
    return user_id if user_id < 2**63 else None  # an id fits a signed 64-bit column


async def _new_session(svc: Services, session: AsyncSession, user_id: int) -> Session:
    token = new_session_token(user_id)
    when = now()
    await store.insert_session(
        session, id_hash=token_hash(svc, token), user_id=user_id, now=when, expires_at=when + svc.session_ttl
    )
    row = await store.get_user(session, user_id)
    assert row is not None
    return Session(token=token, user=User.from_row(row))


async def session_user(svc: Services, token: str) -> User | None:
    return (await session_user_with(svc, token))[0]


async def session_user_with(
    svc: Services,
    token: str,
    also: Callable[[int], Request] | None = None,
) -> tuple[User | None, Cacheable | None]:
    """The user of a session, and what the cache holds for ``also(their id)`` (a page's other per-person value),
    read in the same cache round trip as the user."""
    if not _may_be(token, SESSION_TOKEN_MOST):
        return None, None
    user, found, _ = await session_reads(svc, token, token_name(svc, token), [also], ())
    return user, found[0]


async def session_reads(
    svc: Services, token: str, name: str, per_user: Sequence[Callable[[int], Request] | None], raw: Sequence[str]
) -> tuple[User | None, list[Cacheable | None], dict[str, bytes | None] | None]:
    """The user of the session ``token`` (``name``: its :func:`token_name`), what the cache holds for each of
    ``per_user(their id)``, and the Redis strings ``raw`` (``Cache.get_multi_with``): :func:`session_owner_reads`,
    with the user's record."""

    def users(user_id: int) -> Request:
        return lookup.users_request(svc, [user_id])

    user_id, (found, *values), strings = await session_owner_reads(svc, token, name, [users, *per_user], raw)
    user = _person(found) if user_id is not None else None
    if user is None:
        return None, [None for _ in per_user], None
    return user, values, strings


async def session_owner_reads(
    svc: Services, token: str, name: str, per_user: Sequence[Callable[[int], Request] | None], raw: Sequence[str]
) -> tuple[int | None, list[Cacheable | None], dict[str, bytes | None] | None]:
    """The id of the user of the live session ``token`` (None: there is none), then what the cache holds for each
    of ``per_user(their id)`` and the Redis strings ``raw``, in the round trip after the session's: nothing of a
    user is read for a session not yet known to be theirs. (A session is ended with its user's erasure: a live one
    is a person's. ``feed.web.hot_path`` reads a home page in one round trip, with the id a cookie names.)"""
    nothing: list[Cacheable | None] = [None for _ in per_user]
    record = (await svc.cache.get_multi([lookup.session_request(svc, bytes.fromhex(name))]))[0].get(name)
    if not isinstance(record, SessionRecord) or not _live(record):
        return None, nothing, None
    user_id = record.user_id
    found, strings = await svc.cache.get_multi_with([ask(user_id) for ask in per_user if ask is not None], raw)
    values = iter(found)
    return user_id, [next(values).get(user_id) if ask is not None else None for ask in per_user], strings


def session_of(record: Cacheable | None, user_id: int) -> bool:
    """Whether ``record`` is a live session of ``user_id``'s."""
    return isinstance(record, SessionRecord) and _live(record) and record.user_id == user_id


def held_session_named(svc: Services, name: str) -> User | None:
    """:func:`session_user` of the token whose :func:`token_name` is ``name``, from this process's L1 alone,
    awaiting nothing (None also when L1 lacks a record, or holds one due for a refresh): for ``feed.web.hot_path``."""
    record = svc.cache.cached(SESSIONS, name)
    if not isinstance(record, SessionRecord) or not _live(record):
        return None
    return _person(svc.cache.cached(USERS, record.user_id))


def token_name(svc: Services, token: str) -> str:
    """What a session's or API token's record is cached under: its keyed hash, in hex."""
    return token_hash(svc, token).hex()


SESSION_TOKEN_MOST, API_TOKEN_MOST = 100, 200  # characters: anything longer is no token of ours


def _may_be(token: str, most: int) -> bool:
    return bool(token) and len(token) <= most


def may_be_session(token: str) -> bool:
    """Whether ``token`` may be a session cookie of ours, by its length (if not, it is not looked up)."""
    return _may_be(token, SESSION_TOKEN_MOST)


def may_be_api_token(token: str) -> bool:
    """Whether ``token`` may be an API token of ours, by its length (if not, it is not looked up)."""
    return _may_be(token, API_TOKEN_MOST)


def _live(record: SessionRecord | None) -> bool:
    return record is not None and record.expires_at > now()


def _person(found: object) -> User | None:
    """The person of a cached user record, unless it is missing or an erased account's."""
    return User.of(found) if isinstance(found, UserRecord) and not erasure.is_erased(found) else None


async def logout(svc: Services, token: str) -> None:
    id_hash = token_hash(svc, token)
    caused = effects.sessions_ended([id_hash])
    async with svc.db.begin() as session:
        await store.delete_session(session, id_hash)
        await effects.record(session, caused)
    await effects.committed(svc, caused)


CLI_SCOPES = "read write follow push"


async def create_token(svc: Services, username: str, name: str = "personal access token") -> str:
    if not 1 <= len(name) <= 100:
        raise Invalid("A token label is 1 to 100 characters", "label")
    token = secrets.token_urlsafe(32)
    async with svc.db.begin() as session:
        lookup = _lookup_name(username)
        row = await store.get_user_by_username(session, lookup) if lookup else None
        if row is None or erasure.is_erased(row):
            raise NotFound(f"no user named {username!r}")
        await store.insert_token(session, token_hash=token_hash(svc, token), user_id=row.id, name=name, now=now())
    return token


@dataclass(frozen=True, slots=True)
class Grant:
    """What a bearer token allows: whose account (None: the app's own token, client credentials), for which app
    (0: a token made with the CLI), with which scopes."""

    user: User | None
    app_id: int
    scopes: tuple[str, ...]


async def token_grant(svc: Services, token: str) -> Grant | None:
    """The token's grant; None if it is unknown, expired, revoked, or its account is gone."""
    if not _may_be(token, API_TOKEN_MOST):
        return None
    record = await lookup.api_token(svc, token_hash(svc, token))
    if record is None or not _live(record):
        return None
    if not record.user_id:
        return Grant(None, record.app_id, _scopes(record))
    user = _person(await lookup.user(svc, record.user_id))
    return None if user is None else Grant(user, record.app_id, _scopes(record))


def held_token_grant_named(svc: Services, name: str) -> Grant | None:
    """:func:`token_grant` of the token whose :func:`token_name` is ``name``, from this process's L1 alone, awaiting
    nothing (None also when L1 lacks a record, or holds one due for a refresh), and only for a token of a person:
    for ``feed.web.hot_path``."""
    record = svc.cache.cached(API_TOKENS, name)
    if not isinstance(record, SessionRecord) or not _live(record) or not record.user_id:
        return None
    user = _person(svc.cache.cached(USERS, record.user_id))
    return None if user is None else Grant(user, record.app_id, _scopes(record))


def _scopes(record: SessionRecord) -> tuple[str, ...]:
    return tuple((record.scopes or CLI_SCOPES).split())


async def token_user(svc: Services, token: str) -> User | None:
    grant = await token_grant(svc, token)
    return grant.user if grant is not None else None


async def update_profile(svc: Services, user: User, display_name: str, bio: str, email: str) -> User:
    display_name = normalize_text(
        display_name, field="display_name", label="Display name", max_chars=60, allow_empty=True, multiline=False
    )
    bio = normalize_text(bio, field="bio", label="Bio", max_chars=500, allow_empty=True)
    address = normalize_email(email)
    async with svc.db.begin() as session:
        values: dict[str, object] = {"display_name": display_name, "bio": bio, "updated_at": now()}
        if address:
            index, index_version = emails.index(svc, address)
            if await emails.taken(svc, session, address, except_user=user.id):
                raise Conflict(_EMAIL_TAKEN)
            version = await store.current_key_version(session, user.id)  # not the cached user's: see posts.create
            if not version:
                raise NotFound("No such user")
            key = await svc.keys.get(session, user.id, version)
            sealed = seal_fields(key, {"email": address}, object_id=user.id, owner_id=user.id, revision=0)
            values.update(email_index=index, email_index_version=index_version, email_sealed=sealed["email"].data)
        else:
            values.update(email_index=None, email_index_version=None, email_sealed=None)
        try:
            await store.update_user(session, user.id, **values)
        except IntegrityError:  # the same address was saved by another account at the same moment
            raise Conflict(_EMAIL_TAKEN) from None
        row = await store.get_user(session, user.id)
        await effects.record(session, effects.profile_changed(user.id))
    assert row is not None
    await effects.committed(svc, effects.profile_changed(user.id))
    return User.from_row(row)


async def email_of(svc: Services, user: User) -> str:
    async with svc.db() as session:
        row = await store.get_email_sealed(session, user.id)
        if row is None or row.email_sealed is None:
            return ""
        key = await svc.keys.get(session, user.id, row.key_version)
    try:
        return open_field(key, row.email_sealed, FieldContext("email", user.id, user.id, 0))
    except InvalidToken:
        return ""


async def change_password(svc: Services, user: User, current: str, new: str, keep_session: str | None) -> None:
    """Guesses at ``current`` are slowed down (:func:`_password_guess`)."""
    buckets = await _password_guess(svc, user)
    async with svc.db() as session:
        stored = await store.get_password_hash(session, user.id)
    if stored is None or not await _verify_password(svc, stored, current):
        raise Invalid("Current password is wrong", "current_password")
    check_password(new, user.username)
    new_hash = await _hash_password(svc, new)
    async with svc.db.begin() as session:
        await throttle.succeeded(svc, buckets, session)
        await store.update_user(session, user.id, password_hash=new_hash, updated_at=now())
        # Every other browser and device is signed out.
        keep = token_hash(svc, keep_session) if keep_session else None
        gone = await store.delete_other_sessions(session, user.id, keep)
        caused = effects.sessions_ended(gone)
        await effects.record(session, caused)
    await effects.committed(svc, caused)


async def find_user(svc: Services, username: str) -> User:
    name = _lookup_name(username)
    if name is None:
        raise NotFound("No such user")
    async with svc.db() as session:
        row = await store.get_user_by_username(session, name)
    if row is None or erasure.is_erased(row):
        raise NotFound("No such user")
    return User.from_row(row)


async def get_user(svc: Services, user_id: int) -> User:
    async with svc.db() as session:
        row = await store.get_user(session, user_id)
    if row is None or erasure.is_erased(row):
        raise NotFound("No such user")
    return User.from_row(row)


async def profile(svc: Services, user: User, viewer: User | None) -> Profile:
    counts = (await lookup.counts(svc, [user.id])).get(user.id) or AccountCounts(0, 0, 0, None)
    a_b = (False, False)
    requested = blocks = mutes = False
    if viewer is not None and viewer.id != user.id:
        async with svc.db() as session:
            a_b = await follow_store.follow_state(session, viewer.id, user.id)
            requested = (await relation_store.request_state(session, viewer.id, user.id))[0]
            blocks = (await relation_store.block_state(session, viewer.id, user.id))[0]
            mutes = await relation_store.mute_of(session, viewer.id, user.id, now()) is not None
    return Profile(
        user=user,
        followers=counts.followers,
        following=counts.following,
        posts=counts.posts,
        last_post_at=counts.last_post_at,
        viewer_follows=a_b[0],
        follows_viewer=a_b[1],
        viewer_requested=requested,
        viewer_blocks=blocks,
        viewer_mutes=mutes,
    )


async def follow_list(
    svc: Services,
    user: User,
    *,
    followers: bool,
    limit: int = 80,
    max_id: int | None = None,
    since_id: int | None = None,
) -> list[User]:
    """Who follows ``user`` (or whom ``user`` follows), newest account first; a page of them with ``max_id`` or
    ``since_id`` (account ids)."""
    async with svc.db() as session:
        ids = await follow_store.follow_list(
            session, user.id, followers=followers, limit=limit, max_id=max_id, since_id=since_id
        )
        rows = await store.get_users(session, ids)
    return [User.from_row(rows[i]) for i in ids if i in rows and not erasure.is_erased(rows[i])]


async def search(
    svc: Services,
    text: str,
    *,
    limit: int,
    offset: int = 0,
    followed_by: User | None = None,
    viewer: User | None = None,
) -> list[User]:
    """Accounts whose username or display name starts with ``text`` (a leading ``@`` and this server's ``@domain``
    are the caller's to strip), but those a block stands between with ``viewer``. Only names are searched: post
    text is sealed, and no index of its words exists."""
    prefix = unicodedata.normalize("NFC", text).strip()[:60]
    if not prefix or any(unicodedata.category(c).startswith("C") for c in prefix):
        return []  # nothing, or control characters no name can hold
    async with svc.db() as session:
        ids = await store.search(
            session, prefix, limit=limit, offset=offset, followed_by=followed_by.id if followed_by else None
        )
        rows = await store.get_users(session, ids)
    kept_out = await lookup.blocked(svc, viewer.id) if viewer else frozenset()
    return [User.from_row(rows[i]) for i in ids if i in rows and i not in kept_out]


async def profiles(svc: Services, users: list[User]) -> dict[int, Profile]:
    """Counts for several accounts at once (the API embeds them in every status), from the cache."""
    return profiles_of(users, await lookup.counts(svc, [u.id for u in users]))


def profiles_of(users: list[User], counts: Mapping[int, AccountCounts]) -> dict[int, Profile]:
    """:func:`profiles` of counts read already."""
    none = AccountCounts(0, 0, 0, None)
    return {
        u.id: Profile(u, c.followers, c.following, c.posts, c.last_post_at)
        for u in users
        for c in (counts.get(u.id, none),)
    }


async def delete_account(svc: Services, user: User, password: str) -> erasure.Receipt:
    """The account page's "delete my account": the password again (guesses slowed down as in
    :func:`_password_guess`), then :func:`feed.services.erasure.erase`."""
    if not password:
        raise Invalid("Enter your password to delete your account", "delete_password")
    buckets = await _password_guess(svc, user)
    async with svc.db() as session:
        stored = await store.get_password_hash(session, user.id)
    if stored is None or not await _verify_password(svc, stored, password):
        raise Invalid("That password is wrong; your account was not deleted", "delete_password")
    async with svc.db.begin() as session:
        await throttle.succeeded(svc, buckets, session)
    return await erasure.erase(svc, user.id)
