"""What each column of the schema holds, and why it may be there: the audit's list of declared metadata.

Every column of ``feed.storage.tables`` is here, with its kind and the reason it is stored as it is; a column or
table the database has and this list does not is itself a finding (``feed.audit.database``). The kinds:

- ``sealed``: a blob of ``crypto.Sealed`` (a post's text or content warning, an email address), whose key version
  must be one of its owner's;
- ``wrapped``: a user key wrapped by a root key version (``RootKeyRing.root_version_of`` reads its header);
- ``digest``: a keyed hash or a random token's hash, 32 bytes;
- ``number``, ``time``, ``flag``: no room for text;
- ``code``: short machine words (an enum, a language code, a job name, ids in JSON): they must not look like text;
- ``public``: text people publish as themselves (a display name, a bio, an app's name), searched for the canaries
  only, since it is text by design.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    kind: str
    why: str


def _c(kind: str, why: str) -> Column:
    return Column(kind, why)


ID = _c("number", "an id")
WHEN = _c("time", "when it happened")
USER = _c("number", "whose it is (a user id)")

DECLARED: dict[str, dict[str, Column]] = {
    "users": {
        "id": ID,
        "username": _c("public", "the public account name"),
        "username_lower": _c("public", "the account name, for unique lookups"),
        "display_name": _c("public", "shown on the profile, public by design"),
        "bio": _c("public", "shown on the profile, public by design"),
        "password_hash": _c("code", "an Argon2id hash"),
        "email_index": _c("digest", "an HMAC of the address keyed from the root key, for uniqueness and lookup"),
        "email_index_version": _c("number", "the root key version the email index is keyed from"),
        "email_sealed": _c("sealed", "the email address, sealed under the user's key"),
        "key_version": _c("number", "the user's current key version"),
        "created_at": WHEN,
        "updated_at": WHEN,
        "last_seen_at": _c("time", "when the account last opened its home, to an hour (idle feeds are dropped)"),
        "notify_off": _c("code", "the kinds of notification turned off"),
        "notify_only_following": _c("flag", "notifications only from people followed"),
        "locked": _c("flag", "new followers need approval"),
    },
    "user_keys": {
        "user_id": USER,
        "version": _c("number", "the key's version"),
        "root_version": _c("number", "the root key version that wraps it"),
        "wrapped": _c("wrapped", "the user key, wrapped by a root key"),
        "created_at": WHEN,
    },
    "posts": {
        "id": ID,
        "author_id": USER,
        "visibility": _c("code", "who may see it"),
        "in_reply_to_id": _c("number", "the post it replies to"),
        "in_reply_to_author_id": _c("number", "whom it replies to"),
        "revision": _c("number", "how many times it was written"),
        "key_version": _c("number", "the author's key version it is sealed under"),
        "body": _c("sealed", "the text"),
        "cw": _c("sealed", "the content warning"),
        "likes_count": _c("number", "a count"),
        "reblogs_count": _c("number", "a count"),
        "replies_count": _c("number", "a count"),
        "created_at": WHEN,
        "edited_at": WHEN,
        "sensitive": _c("flag", "marked sensitive by its author"),
        "language": _c("code", "the language its author declared"),
        "app_id": _c("number", "the app it was posted with"),
    },
    "post_revisions": {
        "post_id": ID,
        "revision": _c("number", "which revision"),
        "key_version": _c("number", "the key version it is sealed under"),
        "body": _c("sealed", "an earlier text"),
        "cw": _c("sealed", "an earlier content warning"),
        "sensitive": _c("flag", "marked sensitive"),
        "created_at": WHEN,
    },
    "mentions": {"post_id": ID, "user_id": _c("number", "who is mentioned")},
    "likes": {"post_id": ID, "user_id": _c("number", "who liked it"), "created_at": WHEN},
    "bookmarks": {"id": ID, "user_id": USER, "post_id": ID, "created_at": WHEN},
    "boosts": {"id": ID, "user_id": USER, "post_id": ID, "created_at": WHEN},
    "media": {
        "id": ID,
        "user_id": USER,
        "post_id": _c("number", "the post it is attached to (none while it waits for one)"),
        "position": _c("number", "its place among the post's attachments"),
        "state": _c("code", "processing, ready or failed"),
        "kind": _c("code", "image or gifv (an animation)"),
        "key_version": _c("number", "the user key version that wraps its files' data keys and its sealed fields"),
        "revision": _c("number", "the version of its alt text"),
        "description": _c("sealed", "the alt text"),
        "blurhash": _c("sealed", "a blurred sketch of the picture, shown while it loads"),
        "source_type": _c("code", "the format it was uploaded in, found from its bytes"),
        "width": _c("number", "its width in pixels"),
        "height": _c("number", "its height in pixels"),
        "variants": _c("code", "the pixel sizes of its variants, as JSON numbers"),
        "focus_x": _c("number", "the focal point for crops, -1 to 1"),
        "focus_y": _c("number", "the focal point for crops, -1 to 1"),
        "size_bytes": _c("number", "the size of the uploaded file"),
        "created_at": WHEN,
        "processed_at": _c("time", "when its variants were made"),
    },
    "follow_requests": {"id": ID, "follower_id": USER, "followee_id": USER, "created_at": WHEN},
    "blocks": {"id": ID, "blocker_id": USER, "blocked_id": USER, "created_at": WHEN},
    "mutes": {
        "id": ID,
        "muter_id": USER,
        "muted_id": USER,
        "notifications": _c("flag", "notifications muted too"),
        "expires_at": _c("time", "when the mute ends"),
        "created_at": WHEN,
    },
    "notifications": {
        "id": ID,
        "user_id": USER,
        "type": _c("code", "what happened: mention, favourite, follow ..."),
        "from_id": _c("number", "who did it"),
        "post_id": ID,
        "group_key": _c("code", "the kind, a post id and an hour number"),
        "created_at": WHEN,
    },
    "follows": {"follower_id": USER, "followee_id": _c("number", "whom they follow"), "created_at": WHEN},
    "sessions": {
        "id_hash": _c("digest", "the session cookie's keyed hash"),
        "user_id": USER,
        "created_at": WHEN,
        "expires_at": WHEN,
    },
    "api_tokens": {
        "token_hash": _c("digest", "the token's keyed hash"),
        "user_id": USER,
        "name": _c("public", "the label its owner or app gave it"),
        "created_at": WHEN,
        "expires_at": WHEN,
        "app_id": _c("number", "the app it was given to"),
        "scopes": _c("code", "what it may do"),
    },
    "oauth_apps": {
        "id": ID,
        "client_id": _c("code", "the app's public identifier (random)"),
        "secret_hash": _c("digest", "the client secret's keyed hash"),
        "name": _c("public", "the app's name, shown on the consent page"),
        "website": _c("public", "the app's website"),
        "redirect_uris": _c("code", "where the app is sent back to"),
        "scopes": _c("code", "what the app may ask for"),
        "created_at": WHEN,
    },
    "oauth_codes": {
        "code_hash": _c("digest", "the code's keyed hash"),
        "app_id": _c("number", "the app"),
        "user_id": USER,
        "redirect_uri": _c("code", "where the code goes"),
        "scopes": _c("code", "what it grants"),
        "challenge": _c("code", "the PKCE challenge (a hash)"),
        "challenge_method": _c("code", "S256"),
        "expires_at": WHEN,
    },
    "markers": {
        "user_id": USER,
        "timeline": _c("code", "home or notifications"),
        "last_read_id": ID,
        "version": _c("number", "a count"),
        "updated_at": WHEN,
    },
    "idempotency_keys": {
        "user_id": USER,
        "key_hash": _c("digest", "the client's key, hashed"),
        "post_id": ID,
        "created_at": WHEN,
    },
    "throttle": {
        "bucket": _c("code", "a keyed hash of the name or address prefix counted"),
        "count": _c("number", "a count"),
        "window_ends": WHEN,
        "blocked_until": WHEN,
    },
    "outbox": {
        "id": ID,
        "created_at": WHEN,
        "effects": _c("code", "what a write causes: ids and cache keys, as JSON"),
        "attempts": _c("number", "a count"),
    },
    "job_runs": {
        "id": ID,
        "name": _c("code", "the job"),
        "args": _c("code", "its arguments: ids"),
        "dry_run": _c("flag", "a dry run"),
        "state": _c("code", "running, done or failed"),
        "started_at": WHEN,
        "finished_at": WHEN,
        "done": _c("number", "progress"),
        "total": _c("number", "progress"),
        "changed": _c("code", "counts of what it changed, as JSON"),
        "error": _c("code", "the kind of error (never its message)"),
    },
    "job_cursors": {
        "name": _c("code", "the job's checkpoint name"),
        "cursor": _c("number", "where it stopped"),
        "updated_at": WHEN,
    },
    "erasure_receipts": {
        "id": ID,
        "subject": _c("digest", "a keyed hash of the erased account"),
        "key_ids": _c("code", "which key versions were destroyed"),
        "erased_at": WHEN,
    },
}
