"""OAuth 2: registered apps, authorization codes, and the tokens issued to apps (``api_tokens`` rows with an app)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.tables import api_tokens, oauth_apps, oauth_codes

APP_COLUMNS = (
    oauth_apps.c.id,
    oauth_apps.c.client_id,
    oauth_apps.c.secret_hash,
    oauth_apps.c.name,
    oauth_apps.c.website,
    oauth_apps.c.redirect_uris,
    oauth_apps.c.scopes,
    oauth_apps.c.created_at,
)


async def insert_app(session: AsyncSession, **values: Any) -> None:
    await session.execute(oauth_apps.insert().values(**values))


async def app_by_client_id(session: AsyncSession, client_id: str) -> Record | None:
    return (await session.execute(sa.select(*APP_COLUMNS).where(oauth_apps.c.client_id == client_id))).first()


async def app_by_id(session: AsyncSession, app_id: int) -> Record | None:
    return (await session.execute(sa.select(*APP_COLUMNS).where(oauth_apps.c.id == app_id))).first()


async def app_names(session: AsyncSession, app_ids: Iterable[int]) -> list[Record]:
    query = sa.select(oauth_apps.c.id, oauth_apps.c.name, oauth_apps.c.website)
    return list((await session.execute(query.where(oauth_apps.c.id.in_(list(app_ids))))).all())


async def insert_code(session: AsyncSession, **values: Any) -> None:
    await session.execute(oauth_codes.insert().values(**values))


async def take_code(session: AsyncSession, code_hash: bytes) -> Record | None:
    """The code's row, deleted in the same statement: of two requests with one code, one gets it."""
    query = oauth_codes.delete().where(oauth_codes.c.code_hash == code_hash).returning(*oauth_codes.c)
    return (await session.execute(query)).first()


async def count_expired_codes(session: AsyncSession, now: datetime) -> int:
    query = sa.select(sa.func.count()).select_from(oauth_codes).where(oauth_codes.c.expires_at <= now)
    return int((await session.execute(query)).scalar_one())


async def delete_expired_codes(session: AsyncSession, now: datetime) -> int:
    result = await session.execute(oauth_codes.delete().where(oauth_codes.c.expires_at <= now))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def insert_token(
    session: AsyncSession,
    *,
    token_hash: bytes,
    user_id: int | None,
    app_id: int | None,
    name: str,
    scopes: str,
    now: datetime,
) -> None:
    await session.execute(
        api_tokens.insert().values(
            token_hash=token_hash, user_id=user_id, app_id=app_id, name=name, scopes=scopes, created_at=now
        )
    )


async def delete_token(session: AsyncSession, token_hash: bytes, app_id: int) -> bool:
    """Revoke one token of the app; whether it existed."""
    query = api_tokens.delete().where(api_tokens.c.token_hash == token_hash, api_tokens.c.app_id == app_id)
    return bool((await session.execute(query.returning(api_tokens.c.token_hash))).first())


async def delete_app_tokens(session: AsyncSession, user_id: int, app_id: int) -> list[bytes]:
    """Every token the user gave the app (the app loses its access); their hashes."""
    query = api_tokens.delete().where(api_tokens.c.user_id == user_id, api_tokens.c.app_id == app_id)
    return list((await session.execute(query.returning(api_tokens.c.token_hash))).scalars())


async def authorised_apps(session: AsyncSession, user_id: int) -> list[Record]:
    """The apps holding a token of the user: id, name, website, the scopes of all their tokens, when first given."""
    query = (
        sa.select(
            oauth_apps.c.id,
            oauth_apps.c.name,
            oauth_apps.c.website,
            api_tokens.c.scopes,
            api_tokens.c.created_at,
        )
        .join(api_tokens, api_tokens.c.app_id == oauth_apps.c.id)
        .where(api_tokens.c.user_id == user_id)
        .order_by(api_tokens.c.created_at)
    )
    return list((await session.execute(query)).all())
