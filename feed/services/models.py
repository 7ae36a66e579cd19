"""The values services hand to the web layer. Post text appears only in ``PostView``, in request memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from markupsafe import Markup

from feed.cache import FRAMES, Space
from feed.records import UserRecord
from feed.services.text import render_html
from feed.storage.posts import Page

__all__ = ["Content", "FrameStyle", "Marks", "Media", "Mention", "Page", "PostView", "Profile", "TimelinePage", "User"]


class Keep:
    """An edit leaves this field as it is."""


KEEP = Keep()


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    display_name: str
    bio: str
    created_at: datetime
    key_version: int
    locked: bool = False  # new followers need approval

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
            locked=bool(getattr(row, "locked", False)),
        )

    @classmethod
    def of(cls, record: UserRecord) -> User:
        """:meth:`from_row` for a cached record, made once per record (a page shows the same few people again and
        again); it goes when the record does."""
        user = record.user
        if user is None:
            user = cls.from_row(record)
            object.__setattr__(record, "user", user)  # the record is frozen for everything else
        return user  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Profile:
    user: User
    followers: int
    following: int
    posts: int
    last_post_at: datetime | None
    viewer_follows: bool = False
    follows_viewer: bool = False
    viewer_requested: bool = False  # the viewer asked to follow this locked account, and waits
    viewer_blocks: bool = False
    viewer_mutes: bool = False


@dataclass(slots=True)
class Marks:
    """Which posts (by id) one viewer marked, of those a page shows, and whom they keep out of sight."""

    liked: set[int] = field(default_factory=set)
    bookmarked: set[int] = field(default_factory=set)
    boosted: set[int] = field(default_factory=set)
    blocked: frozenset[int] = frozenset()  # people the viewer blocked or was blocked by: never shown
    muted: frozenset[int] = frozenset()  # people the viewer mutes: left out of their timelines

    def put_on(self, view: PostView) -> None:
        view.liked = view.id in self.liked
        view.bookmarked = view.id in self.bookmarked
        view.reblogged = view.id in self.boosted


@dataclass(frozen=True, slots=True)
class Media:
    """An image, as its owner and the readers of its post see it (alt text and blurhash opened)."""

    id: int
    user_id: int
    post_id: int | None
    state: str  # processing, ready or failed
    kind: str  # image or gifv
    width: int | None
    height: int | None
    variants: dict[str, tuple[int, int]]
    description: str | None
    blurhash: str | None
    focus: tuple[float, float]

    def __repr__(self) -> str:  # the alt text and the blurhash say what the picture shows: never in a log
        return f"Media(id={self.id}, state={self.state})"


@dataclass(frozen=True, slots=True)
class Mention:
    id: int
    username: str


class Content:
    """A post's text and content warning, opened when first asked for (a page drawn from cached frames never
    needs them)."""

    __slots__ = ("_cw", "_html", "_open", "_text")

    def __init__(self, open_fields: Callable[[], tuple[str, str | None]]) -> None:
        self._open: Callable[[], tuple[str, str | None]] | None = open_fields
        self._text = ""
        self._cw: str | None = None
        self._html: Markup | None = None

    @classmethod
    def plain(cls, text: str, cw: str | None = None) -> Content:
        return cls(lambda: (text, cw))

    def _opened(self) -> None:
        if self._open is not None:
            self._text, self._cw = self._open()
            self._open = None

    @property
    def text(self) -> str:
        self._opened()
        return self._text

    @property
    def cw(self) -> str | None:
        self._opened()
        return self._cw

    @property
    def html(self) -> Markup:
        if self._html is None:
            self._html = render_html(self.text)
        return self._html

    def __repr__(self) -> str:  # never show the text in a log or traceback
        return "Content(...)"


@dataclass(slots=True)
class PostView:
    id: int
    author: User
    visibility: str
    content: Content
    in_reply_to_id: int | None
    in_reply_to_author_id: int | None
    revision: int
    likes_count: int
    replies_count: int
    created_at: datetime
    edited_at: datetime | None
    liked: bool = False
    bookmarked: bool = False
    reblogged: bool = False  # the viewer boosted it
    reblogs_count: int = 0
    # In a home timeline through a boost: the boost's id (its place there) and who boosted it.
    boost_id: int = 0
    booster: User | None = None
    mentions: list[Mention] = field(default_factory=list)
    reply_to_username: str | None = None
    sensitive: bool = False
    language: str | None = None
    app_id: int = 0
    # Its images, opened (alt text, blurhash) when first asked for: a page drawn from cached frames never needs them.
    open_media: Callable[[], list[Media]] | None = None
    opened_media: list[Media] | None = None
    # The post's rendered frame in pieces (see ``feed.web.post_html``), when the page asked for frames.
    frame: tuple[str, ...] | None = None

    @property
    def text(self) -> str:
        return self.content.text

    @property
    def cw(self) -> str | None:
        return self.content.cw

    @property
    def html(self) -> Markup:
        return self.content.html

    @property
    def media(self) -> list[Media]:
        if self.opened_media is None:
            self.opened_media = self.open_media() if self.open_media is not None else []
        return self.opened_media

    def __repr__(self) -> str:  # never show the text in a log or traceback
        return f"PostView(id={self.id}, author={self.author.id}, revision={self.revision})"


@dataclass(frozen=True, slots=True)
class FrameStyle:
    """How the web layer draws a post's frame: the part of its HTML that is the same for every reader of one
    revision, cached sealed under the post's data key. ``render`` gives the frame with its slots marked,
    ``split`` its pieces (None if it does not split as expected), ``version`` changes with the template."""

    version: bytes
    render: Callable[[PostView], str]
    split: Callable[[str], tuple[str, ...] | None]
    space: Space = FRAMES  # where its frames are cached


@dataclass(frozen=True, slots=True)
class TimelinePage:
    posts: list[PostView]
    # Cursors for the next (older) and previous (newer) pages; None when there is nothing that way.
    next_max_id: int | None
    prev_min_id: int | None
