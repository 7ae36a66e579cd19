"""The values services hand to the web layer. Post text appears only in ``PostView``, in request memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from markupsafe import Markup

from feed.storage.posts import Page

__all__ = ["Mention", "Page", "PostView", "Profile", "TimelinePage", "User"]


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    display_name: str
    bio: str
    created_at: datetime
    key_version: int

    @property
    def name(self) -> str:
        return self.display_name or self.username

    @classmethod
    def from_row(cls, row: Any) -> User:
        return cls(
            id=row.id,
            username=row.username,
            display_name=row.display_name,
            bio=row.bio,
            created_at=row.created_at,
            key_version=row.key_version,
        )


@dataclass(frozen=True, slots=True)
class Profile:
    user: User
    followers: int
    following: int
    posts: int
    last_post_at: datetime | None
    viewer_follows: bool = False
    follows_viewer: bool = False


@dataclass(frozen=True, slots=True)
class Mention:
    id: int
    username: str


@dataclass(slots=True)
class PostView:
    id: int
    author: User
    visibility: str
    text: str
    html: Markup
    cw: str | None
    in_reply_to_id: int | None
    in_reply_to_author_id: int | None
    revision: int
    likes_count: int
    replies_count: int
    created_at: datetime
    edited_at: datetime | None
    liked: bool = False
    mentions: list[Mention] = field(default_factory=list)
    reply_to_username: str | None = None

    def __repr__(self) -> str:  # never show the text in a log or traceback
        return f"PostView(id={self.id}, author={self.author.id}, revision={self.revision})"


@dataclass(frozen=True, slots=True)
class TimelinePage:
    posts: list[PostView]
    # Cursors for the next (older) and previous (newer) pages; None when there is nothing that way.
    next_max_id: int | None
    prev_min_id: int | None
