"""Batch-encrypt jobs: root key rotation, user key rotation and re-encryption to the current Sealed format.

Every job here is a maintenance job (``feed.services.jobs``): it takes ids and numbers only, works in chunks of
:data:`CHUNK` rows with a checkpoint after each committed chunk (a run stopped half way goes on from there), reports
progress, changes nothing in a dry run, and finds nothing to do when run again after it finished. Each row is
written with a compare-and-set on what the job read (id, revision, key version and the blob itself), so a
concurrent edit, delete or erasure wins and the row is skipped; the stale cache keys of the rows written are
dropped after each chunk's commit. Decrypted text exists only while :func:`reencrypt_posts` re-seals a post, in
this process's memory.

The modules: :mod:`.root` (root key rotation, ``cipherfeed keys rotate``), :mod:`.user_keys` (user key rotation),
:mod:`.rewrap` (posts and emails rewrapped under their author's current key, superseded user keys destroyed),
:mod:`.emails` (email indexes recomputed under the primary root key), :mod:`.reencrypt` (format re-encryption),
:mod:`.usage` (what ``keys status`` shows of posts) and :mod:`.batch` (chunk size and passes). Their queries are in
``feed.storage.keys``.
"""

from __future__ import annotations

from feed.services.jobs import Maintenance
from feed.services.rotation import batch, rewrap, root
from feed.services.rotation.emails import reindex_emails
from feed.services.rotation.reencrypt import reencrypt_posts
from feed.services.rotation.rewrap import prune_user_keys, rewrap_posts, rewrap_posts_of
from feed.services.rotation.root import next_ring, not_under, rewrap_user_keys, root_version_use
from feed.services.rotation.usage import PostKeyUse, post_key_use
from feed.services.rotation.user_keys import new_user_rotation, rotate_user, rotate_user_keys, user_rotation

__all__ = [
    "JOBS",
    "SCHEDULED",
    "PostKeyUse",
    "batch",
    "new_user_rotation",
    "next_ring",
    "not_under",
    "post_key_use",
    "prune_user_keys",
    "reencrypt_posts",
    "reindex_emails",
    "rewrap",
    "rewrap_posts",
    "rewrap_posts_of",
    "rewrap_user_keys",
    "root",
    "root_version_use",
    "rotate_user",
    "rotate_user_keys",
    "user_rotation",
]

JOBS = (
    Maintenance(
        "rewrap_user_keys",
        "rewrap every user key, and recompute every email index, under the root key ring's primary",
        rewrap_user_keys,
    ),
    Maintenance("rotate_user_keys", "a new key for every user, their posts rewrapped under it", rotate_user_keys),
    Maintenance(
        "rewrap_posts",
        "rewrap posts under their author's current key; destroy superseded user keys",
        rewrap_posts,
    ),
    Maintenance("reencrypt_posts", "re-encrypt posts sealed in an older format", reencrypt_posts),
)
"""By hand only (``cipherfeed jobs run NAME``, ``cipherfeed keys ...``): a rotation is an operator's decision."""

SCHEDULED = (
    Maintenance(
        "reindex_emails",
        "recompute the email indexes not keyed from the root key ring's primary (rows from before the index moved "
        "to the root key ring, or written by a process that had not heard of a promotion)",
        reindex_emails,
        minute=frozenset({25}),
        hour=frozenset({3}),
    ),
)
