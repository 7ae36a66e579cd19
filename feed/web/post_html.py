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
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import jinja2
from markupsafe import Markup

from feed.services.models import FrameStyle, PostView, User
from feed.web.times import reltime

SLOT = "\x00"  # no post text, name or count can hold it: normalisation refuses control characters
SLOTS = 4  # the article's extra class, the relative time, the reply count, the actions
_ID, _COUNT, _BOOSTS = "\x01id\x01", "\x01count\x01", "\x01boosts\x01"
# Constant placeholders handed to the templates as markup, so that autoescaping leaves them for us to find.
_SLOT_MARK, _ID_MARK, _COUNT_MARK, _BOOSTS_MARK = Markup(SLOT), Markup(_ID), Markup(_COUNT), Markup(_BOOSTS)  # noqa: S704
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
        self._csrf = csrf
        self._here = here
        self._now = datetime.now(UTC)
        self._variants: dict[tuple[bool, ...], str] = {}
        self._boosters: dict[int, str] = {}
        self._replies: str | None = None

    def __call__(self, post: PostView, is_focus: bool = False) -> Markup:
        pieces = post.frame or split_frame(render_frame(self._env, post))
        assert pieces is not None, "the frame template must have exactly four slots"
        # Pieces of our templates' output, and values we format (a time, counts): all markup already.
        return Markup(  # noqa: S704
            "".join(
                (
                    self._boosted_by(post),
                    pieces[0],
                    " thread-focus" if is_focus else "",
                    pieces[1],
                    reltime(post.created_at, self._now),
                    pieces[2],
                    self._reply_count(post.replies_count),
                    pieces[3],
                    self._actions(post),
                    pieces[4],
                )
            )
        )

    def items(self, posts: Sequence[PostView]) -> Markup:
        """Each post as a list item: one call for a whole page (a Jinja loop calling per post costs more than
        drawing the post does)."""
        return Markup("".join([f"<li>{self(post)}</li>\n" for post in posts]))  # noqa: S704 - our markup only

    def _boosted_by(self, post: PostView) -> str:
        """ "bob boosted", above a post that is in a home timeline through a boost."""
        if post.booster is None:
            return ""
        line = self._boosters.get(post.booster.id)
        if line is None:
            line = self._boosters[post.booster.id] = str(self._macros.boosted_by(post.booster))
        return line

    def _reply_count(self, count: int) -> str:
        if not count:
            return ""
        if self._replies is None:
            self._replies = str(self._macros.reply_count(_COUNT_MARK))
        return self._replies.replace(_COUNT, str(count))

    def _actions(self, post: PostView) -> str:
        own = self._viewer is not None and self._viewer.id == post.author.id
        boostable = post.visibility in BOOSTABLE
        which = (post.liked, post.bookmarked, own, post.reblogged, boostable)
        variant = self._variants.get(which)
        if variant is None:
            variant = self._variants[which] = str(
                self._macros.post_actions(
                    _ID_MARK,
                    _COUNT_MARK,
                    post.liked,
                    post.bookmarked,
                    own,
                    self._viewer,
                    self._csrf,
                    self._here,
                    _BOOSTS_MARK,
                    post.reblogged,
                    boostable,
                )
            )
        out = variant.replace(_ID, str(post.id)).replace(_COUNT, str(post.likes_count))
        return out.replace(_BOOSTS, str(post.reblogs_count)) if boostable else out
