"""What ``keys status`` shows of posts: which user key versions and Sealed formats they are under."""

from __future__ import annotations

from dataclasses import dataclass

from feed.services.context import Services
from feed.storage import keys as store


@dataclass(frozen=True, slots=True)
class PostKeyUse:
    by_key_version: dict[int, int]  # posts by the user key version that wraps their data key
    behind: int  # posts not under their author's current key version
    fields_by_format: dict[int, int]  # sealed post fields (bodies and content warnings) by Sealed format version
    user_keys_by_version: dict[int, int]
    superseded: int  # user key versions older than their user's current one (destroyed by prune_user_keys)


async def post_key_use(svc: Services) -> PostKeyUse:
    async with svc.db() as session:
        by_version = await store.posts_by_key_version(session)
        behind = await store.count_posts_behind(session, None)
        formats = await store.sealed_fields_by_format(session)
        key_versions = await store.user_keys_by_version(session)
        superseded = await store.count_superseded_keys(session)
    return PostKeyUse(by_version, behind, formats, key_versions, superseded)
