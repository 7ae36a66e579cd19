"""Posts as HTML, fast: a cached frame per post revision, and the parts that differ per reader drawn per request.

A post's frame (``post_frame`` in ``templates/_partials/posts.html``: author, time, body, content warning) is the
same for every reader of one revision. It is rendered once, sealed under the post's own data key and cached
(``feed.services.timelines.keep_frames``); a later page opens it (one AES-GCM decryption) instead of decrypting the
body, turning it into HTML and running the template again. The frame's slots are then filled per request: the
relative time, the reply count, and the like, bookmark and owner controls, whose few variants (liked or not,
bookmarked or not, own post or not) are rendered once per request with placeholder ids and counts, then filled by
string replacement.

Nothing here keeps HTML beyond the request: the only copy that outlives it is the sealed one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any

import jinja2
from markupsafe import Markup, escape

from feed.services.models import FrameStyle, PostView, User
from feed.web.times import reltime

SLOT = "\x00"  # no post text, name or count can hold it: normalisation refuses control characters
SLOTS = 4  # the article's extra class, the relative time, the reply count, the actions
_ID, _COUNT, _BOOSTS, _CSRF, _HERE = "\x01id\x01", "\x01count\x01", "\x01boosts\x01", "\x01csrf\x01", "\x01here\x01"
# Constant placeholders handed to the templates as markup, so that autoescaping leaves them for us to find.
_SLOT_MARK = Markup(SLOT)  # noqa: S704
_ACTION_FIELDS = (_ID, _COUNT, _BOOSTS, _CSRF, _HERE)  # the values a post's controls are filled with, in order
_ACTION_FIELD = re.compile("\x01(id|count|boosts|csrf|here)\x01")
BOOSTABLE = ("public", "unlisted")


def frame_version(env: jinja2.Environment) -> bytes:
    """Changes whenever the frame's template does, so that a deploy never serves frames of the old markup."""
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, "_partials/posts.html")
    return hashlib.blake2b(source.encode(), digest_size=8).digest()


def render_frame(env: jinja2.Environment, post: PostView) -> str:
    """The frame of ``post`` with its slots marked; this opens the post's text."""
    macro = env.get_template("_partials/posts.html").module.post_frame  # type: ignore[attr-defined]
    return str(macro(post, _SLOT_MARK))


def split_frame(html: str) -> tuple[str, ...] | None:
    pieces = tuple(html.split(SLOT))
    return pieces if len(pieces) == SLOTS + 1 else None


def make_frame_style(env: jinja2.Environment) -> FrameStyle:
    return FrameStyle(frame_version(env), partial(render_frame, env), split_frame)


class PostHtml:
    """Draws posts for one request (one reader, one moment)."""

    def __init__(self, env: jinja2.Environment, viewer: User | None, csrf: str, here: str) -> None:
        self._env = env
        self._macros: Any = env.get_template("_partials/posts.html").module
        self._viewer = viewer
        self._csrf = str(escape(csrf))  # both go into attributes of the actions' forms
        self._here = str(escape(here))
        self._now = datetime.now(UTC)
        self._boosters: dict[int, str] = {}

    def __call__(self, post: PostView, is_focus: bool = False) -> Markup:
        # Pieces of our templates' output, and values we format (a time, counts): all markup already.
        return Markup(self._html(post, is_focus))  # noqa: S704

    def items(self, posts: Sequence[PostView]) -> Markup:
        """Each post as a list item: one call for a whole page (a Jinja loop calling per post costs more than
        drawing the post does)."""
        return Markup("".join([f"<li>{self._html(post)}</li>\n" for post in posts]))  # noqa: S704 - our markup only

    def _pieces(self, post: PostView) -> tuple[str, ...]:
        pieces = post.frame or split_frame(render_frame(self._env, post))
        assert pieces is not None, "the frame template must have exactly four slots"
        return pieces

    def _html(self, post: PostView, is_focus: bool = False) -> str:
        pieces = self._pieces(post)
        return "".join(
            (
                self._boosted_by(post),
                pieces[0],
                " thread-focus" if is_focus else "",
                pieces[1],
                reltime(post.created_at, self._now),
                pieces[2],
                self.reply_count(post.replies_count),
                pieces[3],
                self._actions(post),
                pieces[4],
            )
        )

    def _boosted_by(self, post: PostView) -> str:
        """ "bob boosted", above a post that is in a home timeline through a boost."""
        if post.booster is None:
            return ""
        line = self._boosters.get(post.booster.id)
        if line is None:
            line = self._boosters[post.booster.id] = str(self._macros.boosted_by(post.booster))
        return line

    def reply_count(self, count: int) -> str:
        return reply_count_html(self._env, count)

    def _actions(self, post: PostView) -> str:
        return self.actions_of(post.id, post.author.id, post.visibility, post.likes_count, post.reblogs_count,
                               post.liked, post.bookmarked, post.reblogged)  # fmt: skip

    def actions_of(
        self,
        post_id: int,
        author_id: int,
        visibility: str,
        likes: int,
        reblogs: int,
        liked: bool,
        bookmarked: bool,
        reblogged: bool,
    ) -> str:
        """A post's controls, from its ids, counts and the viewer's marks (without a ``PostView``: a page blob's
        holes are filled from cached records)."""
        viewer = self._viewer
        which = (liked, bookmarked, viewer is not None and viewer.id == author_id, reblogged,
                 visibility in BOOSTABLE, viewer is not None)  # fmt: skip
        template, fields = actions_format(self._env, which)
        values = (str(post_id), str(likes), str(reblogs), self._csrf, self._here)
        return template % tuple([values[field] for field in fields])


@lru_cache(maxsize=1024)
def reply_count_html(env: jinja2.Environment, count: int) -> str:
    """A post's reply count as its frame shows it (nothing for none)."""
    if not count:
        return ""
    return str(env.get_template("_partials/posts.html").module.reply_count(count))  # type: ignore[attr-defined]


@lru_cache(maxsize=256)
def actions_format(
    env: jinja2.Environment, which: tuple[bool, bool, bool, bool, bool, bool]
) -> tuple[str, tuple[int, ...]]:
    """:func:`actions_parts` as one ``%`` template and which value goes in each ``%s`` (an index into the post's id,
    like count, boost count, CSRF token and way back): a post's controls in one ``%``."""
    literals, fields = actions_parts(env, which)
    return "%s".join(literal.replace("%", "%%") for literal in literals), fields


@lru_cache(maxsize=256)
def actions_parts(
    env: jinja2.Environment, which: tuple[bool, bool, bool, bool, bool, bool]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """One variant of a post's controls (liked or not, bookmarked or not, own or not, boosted or not, boostable or
    not, for someone logged in or not), drawn once per process with placeholders for the post's id, its like
    count, its boost count, the CSRF token and the way back: its literal pieces, and which of those values goes
    between each two (an index into that list). There are at most 64 variants; nothing in one is per reader."""
    liked, bookmarked, own, reblogged, boostable, logged_in = which
    marks = [Markup(field) for field in _ACTION_FIELDS]  # noqa: S704 - constant placeholders
    html = str(
        env.get_template("_partials/posts.html").module.post_actions(  # type: ignore[attr-defined]
            marks[0], marks[1], liked, bookmarked, own, logged_in, marks[3], marks[4], marks[2], reblogged, boostable
        )
    )
    pieces = re.split(_ACTION_FIELD, html)
    return tuple(pieces[0::2]), tuple(_ACTION_FIELDS.index(f"\x01{name}\x01") for name in pieces[1::2])
