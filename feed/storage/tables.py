"""The schema as SQLAlchemy Core tables. Alembic migrations are the source of truth; these mirror them.

Ids are 64-bit time-ordered integers made by the application (see ``feed.ids``), so cursor pagination by id is
pagination by time and the post id is known before its text is sealed (it is part of the associated data).
Sealed columns hold ciphertext only; everything else is declared metadata (see the threat model in README.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite keeps them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("username", sa.String(30), nullable=False),
    sa.Column("username_lower", sa.String(30), nullable=False, unique=True),
    sa.Column("display_name", sa.String(60), nullable=False, server_default=""),
    sa.Column("bio", sa.String(500), nullable=False, server_default=""),
    sa.Column("password_hash", sa.String(200), nullable=False),
    # Keyed HMAC of the normalised email, for uniqueness and lookup; the address itself is sealed. Its key is
    # derived from root key version ``email_index_version`` (NULL: from the server secret, as before 0008).
    sa.Column("email_index", sa.LargeBinary(32), nullable=True, unique=True),
    sa.Column("email_index_version", sa.Integer, nullable=True),
    sa.Column("email_sealed", sa.LargeBinary, nullable=True),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # When the user last opened their home timeline (roughly: updated at most hourly); feeds of users away for
    # long are dropped by a cleanup job and rebuilt when they come back.
    sa.Column("last_seen_at", UTCDateTime, nullable=True),
    # Notification settings: the kinds turned off (comma-separated names), and "only from people I follow".
    sa.Column("notify_off", sa.String(100), nullable=False, server_default=""),
    sa.Column("notify_only_following", sa.Boolean, nullable=False, server_default=sa.false()),
    # A locked account approves each new follower (``follow_requests``).
    sa.Column("locked", sa.Boolean, nullable=False, server_default=sa.false()),
)

# A user's keys, each wrapped by a root key version. Deleting these rows crypto-shreds the user.
user_keys = sa.Table(
    "user_keys",
    metadata,
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("root_version", sa.Integer, nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

posts = sa.Table(
    "posts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("author_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("visibility", sa.String(10), nullable=False),
    sa.Column("in_reply_to_id", BigId, nullable=True),
    sa.Column("in_reply_to_author_id", BigId, nullable=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("cw", sa.LargeBinary, nullable=True),
    sa.Column("likes_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("replies_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reblogs_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("edited_at", UTCDateTime, nullable=True),
    # Declared metadata, as the author set it: marked sensitive, the language they said it is in, the app it came from.
    sa.Column("sensitive", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("language", sa.String(16), nullable=True),
    sa.Column("app_id", BigId, nullable=True),  # no constraint: apps are not deleted (see migration 0007)
    sa.Index("ix_posts_author_id_id", "author_id", "id"),
    sa.Index("ix_posts_visibility_id", "visibility", "id"),
    sa.Index("ix_posts_in_reply_to_id", "in_reply_to_id"),
)

# The revisions a post had before its current one (which is in ``posts``), each sealed under its own key as it was:
# an edit moves the old one here. One whose user key version was destroyed no longer opens, and is left out.
post_revisions = sa.Table(
    "post_revisions",
    metadata,
    sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("cw", sa.LargeBinary, nullable=True),
    sa.Column("sensitive", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),  # when this revision was made
)

mentions = sa.Table(
    "mentions",
    metadata,
    sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_mentions_user_id_post_id", "user_id", "post_id"),
)

follows = sa.Table(
    "follows",
    metadata,
    sa.Column("follower_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("followee_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_follows_followee_id_follower_id", "followee_id", "follower_id"),
)

# Boosts: ``user_id`` shared ``post_id`` with their followers. ``id`` is the boost's place in their home timelines
# (and the id of the reblog status in the API).
boosts = sa.Table(
    "boosts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "post_id"),
)

# Media attachments: one row per upload, its files sealed streams in the media store (``feed.media.store``, named
# ``<id>/<variant>``). ``post_id`` is set when a post takes it (no foreign key: the cleanup job finds the media of
# deleted posts); ``description`` (alt text) and ``blurhash`` are sealed fields of object ``id`` at ``revision``.
media = sa.Table(
    "media",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("post_id", BigId, nullable=True, index=True),
    sa.Column("position", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("state", sa.String(12), nullable=False),  # processing, ready or failed
    sa.Column("kind", sa.String(8), nullable=False, server_default="image"),  # image or gifv (animated)
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("description", sa.LargeBinary, nullable=True),
    sa.Column("blurhash", sa.LargeBinary, nullable=True),
    sa.Column("source_type", sa.String(16), nullable=True),
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("variants", sa.String(200), nullable=True),  # JSON: {"small": [width, height], ...}
    sa.Column("focus_x", sa.Float, nullable=False, server_default="0"),
    sa.Column("focus_y", sa.Float, nullable=False, server_default="0"),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("processed_at", UTCDateTime, nullable=True),
)

# Follows waiting for a locked account's approval; ``id`` orders them by when they were asked.
follow_requests = sa.Table(
    "follow_requests",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("follower_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("followee_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("follower_id", "followee_id"),
    sa.Index("ix_follow_requests_followee_id_id", "followee_id", "id"),
)

# Blocks: neither person sees the other, or can follow, reply to, mention or like the other.
blocks = sa.Table(
    "blocks",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("blocker_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("blocked_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("blocker_id", "blocked_id"),
)

# Mutes: the muted person leaves the muter's timelines (and notifications, with ``notifications``), until
# ``expires_at`` if set; they are not told.
mutes = sa.Table(
    "mutes",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("muter_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("muted_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("notifications", sa.Boolean, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("muter_id", "muted_id"),
)

likes = sa.Table(
    "likes",
    metadata,
    sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_likes_user_id_post_id", "user_id", "post_id"),
)

# The posts a person keeps for later, private to them. ``id`` orders them by when they were kept (Mastodon pages
# bookmarks by it).
bookmarks = sa.Table(
    "bookmarks",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "post_id"),
)

# What happened that concerns a person: ``from_id`` did ``type`` (mention, favourite, follow, ...) to ``post_id`` (the
# post concerned, if any). Ids and a machine word only: the text of the post stays sealed in ``posts``. ``group_key``
# gathers likes of one post, or follows, made within hours of each other (Mastodon's grouped notifications).
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("type", sa.String(20), nullable=False),
    sa.Column("from_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), nullable=True, index=True),
    sa.Column("group_key", sa.String(60), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_notifications_user_id_id", "user_id", "id"),
)

# Browser sessions and API tokens are stored as SHA-256 of the random secret the client holds.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
)

# A client's Idempotency-Key (kept as a keyed hash) and the post it created, for an hour: a retry gets that post.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("post_id", BigId, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
)

# Where a person stopped reading a timeline (``home``, ``notifications``): a post id, and a version that counts saves.
markers = sa.Table(
    "markers",
    metadata,
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("timeline", sa.String(20), primary_key=True),
    sa.Column("last_read_id", BigId, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Apps registered for OAuth 2 (Mastodon's POST /api/v1/apps). The client secret is kept as a keyed hash only.
oauth_apps = sa.Table(
    "oauth_apps",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("client_id", sa.String(64), nullable=False, unique=True),
    sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("website", sa.String(500), nullable=True),
    sa.Column("redirect_uris", sa.Text, nullable=False),  # one per line, matched exactly
    sa.Column("scopes", sa.String(1000), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Authorization codes between the consent page and the token endpoint: single-use, short-lived, hashed.
oauth_codes = sa.Table(
    "oauth_codes",
    metadata,
    sa.Column("code_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("app_id", BigId, sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("scopes", sa.String(1000), nullable=False),
    sa.Column("challenge", sa.String(128), nullable=True),
    sa.Column("challenge_method", sa.String(10), nullable=True),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# Bearer tokens: made by the CLI (no app), or by OAuth for an app, for a user or (client credentials) for the app
# alone (user_id NULL).
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("app_id", BigId, sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"), nullable=True, index=True),
    sa.Column("scopes", sa.String(1000), nullable=False, server_default=sa.text("'read write follow push'")),
)

# Fixed-window counters for login throttling, shared by every process through the database.
throttle = sa.Table(
    "throttle",
    metadata,
    sa.Column("bucket", sa.String(100), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("window_ends", UTCDateTime, nullable=False, index=True),
    sa.Column("blocked_until", UTCDateTime, nullable=True),  # the next attempt is refused before this
)

# Background job runs (maintenance jobs, and failures of any job): what ``cipherfeed jobs status`` shows. Arguments
# are ids and numbers only; ``changed`` is "name=count" pairs; ``error`` an exception type and our own message.
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(60), nullable=False),
    sa.Column("args", sa.String(200), nullable=False, server_default=""),
    sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("state", sa.String(10), nullable=False, index=True),  # running, done, failed, cancelled
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total", sa.BigInteger, nullable=True),
    sa.Column("changed", sa.String(1000), nullable=False, server_default=""),
    sa.Column("error", sa.String(300), nullable=True),
    sa.Index("ix_job_runs_name_started_at", "name", "started_at"),
)

# Checkpoints of resumable jobs: the last id a job finished, so that a restarted run goes on from there.
job_cursors = sa.Table(
    "job_cursors",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("cursor", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Proof of crypto-shredding: a keyed hash of the erased user's id, which of their keys were destroyed, and when.
erasure_receipts = sa.Table(
    "erasure_receipts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("subject", sa.LargeBinary(32), nullable=False, index=True),
    sa.Column("key_ids", sa.String(500), nullable=False),
    sa.Column("erased_at", UTCDateTime, nullable=False),
)

# What committed writes cause and has not been relayed yet (``feed.relay``): cache keys to invalidate, jobs to queue
# and live events, as ids and names only (``feed.effects``). A row is written in the transaction of its write and
# deleted once relayed, so nothing a commit causes is lost when a process dies right after it.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("effects", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
)
