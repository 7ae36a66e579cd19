"""The only kinds of value the caches hold, and their byte encoding for Redis.

A cache put checks the value's type against :data:`CACHEABLE`: sealed blobs, wrapped keys, and records of
declared metadata (ids, counts, times, names that are public anyway). A plain ``str`` or ``bytes`` is refused, so
no code path can cache a decrypted post by mistake.

The encoding is our own (a tag byte, a JSON header of metadata, then length-prefixed blobs), never pickle: a value
read back from Redis is data, not code.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crypto import Sealed


class NotCacheable(TypeError):
    """A value of a type the caches do not accept (for example a plain string)."""


class CorruptValue(ValueError):
    """Bytes from Redis that do not decode; treated as a miss."""


def _when(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1_000_000)


def _from_when(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1_000_000, UTC)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A post's image as stored: ids, sizes and focus, with its alt text and blurhash sealed (under its owner's key
    at ``key_version``; the description at ``revision``, the blurhash at 0)."""

    id: int
    kind: str  # image or gifv
    width: int
    height: int
    variants: tuple[tuple[str, int, int], ...]  # (name, width, height) of each stored variant
    focus: tuple[float, float]
    key_version: int
    revision: int
    description: Sealed | None
    blurhash: Sealed | None

    def head(self) -> list[Any]:
        return [self.id, self.kind, self.width, self.height, [list(v) for v in self.variants], list(self.focus),
                self.key_version, self.revision]  # fmt: skip

    @classmethod
    def of(cls, head: list[Any], description: bytes | None, blurhash: bytes | None) -> Attachment:
        media_id, kind, width, height, variants, (fx, fy), version, revision = head
        return cls(int(media_id), str(kind), int(width), int(height),
                   tuple((str(n), int(w), int(h)) for n, w, h in variants), (float(fx), float(fy)), int(version),
                   int(revision), Sealed(description) if description is not None else None,
                   Sealed(blurhash) if blurhash is not None else None)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PostRecord:
    """A post as stored: metadata plus its sealed fields. Never holds text."""

    id: int
    author_id: int
    visibility: str
    in_reply_to_id: int | None
    in_reply_to_author_id: int | None
    revision: int
    key_version: int
    likes_count: int
    replies_count: int
    created_at: datetime
    edited_at: datetime | None
    body: Sealed
    cw: Sealed | None
    mentions: tuple[tuple[int, str], ...]  # (user id, username) of each mentioned account
    sensitive: bool = False  # declared by the author (a content warning makes a post sensitive anyway)
    language: str | None = None  # as the author's app declared it
    app_id: int = 0  # the app it was posted from (0: the web, or a token made with the CLI)
    reblogs_count: int = 0
    media: tuple[Attachment, ...] = ()  # its images, in their order

    @property
    def size(self) -> int:
        size = 200 + len(self.body) + (len(self.cw) if self.cw else 0) + 40 * len(self.mentions)
        return size + sum(300 + len(a.description or b"") for a in self.media)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """Public profile metadata of an account (what every page shows beside a post)."""

    id: int
    username: str
    display_name: str
    bio: str
    key_version: int
    created_at: datetime
    locked: bool = False  # new followers need approval
    # The services' view of this record (``feed.services.models.User.of``), made when first asked for: it lives and
    # goes with the record (a cache entry), never beside it.
    user: Any = field(default=None, init=False, compare=False, repr=False)

    @property
    def size(self) -> int:
        return 120 + len(self.username) + 4 * (len(self.display_name) + len(self.bio))


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A live browser session or API token: whose it is and until when (the secret is not here, only its hash in
    the key); for a token, the app it was given to (0: none, a CLI token) and its scopes. ``user_id`` 0: a token of
    the app alone (client credentials)."""

    user_id: int
    expires_at: datetime
    app_id: int = 0
    scopes: str = ""

    @property
    def size(self) -> int:
        return 80


@dataclass(frozen=True, slots=True)
class AccountCounts:
    """An account's follower, following and post counts and when it last posted."""

    followers: int
    following: int
    posts: int
    last_post_at: datetime | None

    @property
    def size(self) -> int:
        return 96


@dataclass(frozen=True, slots=True)
class Tally:
    """A number kept for one key (how many notifications a person has not read)."""

    value: int

    @property
    def size(self) -> int:
        return 40


@dataclass(frozen=True, slots=True)
class IdList:
    """An ordered list of ids (a timeline page, the accounts someone follows)."""

    ids: tuple[int, ...]

    @property
    def size(self) -> int:
        return 56 + 8 * len(self.ids)


@dataclass(frozen=True, slots=True)
class IdSet:
    """A set of ids known completely from ``floor`` up (0: completely): an id at or above ``floor`` that is not
    in ``ids`` is not in the set; below it, nobody knows here."""

    ids: frozenset[int]
    floor: int = 0

    @property
    def size(self) -> int:
        return 120 + 40 * len(self.ids)


@dataclass(frozen=True, slots=True)
class RefList:
    """A timeline page as post refs, newest first: (post id, author id, key version, id of the author replied to
    or 0), enough to fetch the posts, their authors and their keys in one cache round trip; a boost's ref has two
    more: (..., the boost's id, who boosted)."""

    refs: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return 56 + 40 * len(self.refs)


@dataclass(frozen=True, slots=True)
class SealedFrame:
    """A post's rendered frame (HTML), sealed under the post's own data key: good for one revision of the post
    and one ``stamp`` (a hash of the template version and the names the frame shows)."""

    revision: int
    stamp: int
    sealed: Sealed

    @property
    def size(self) -> int:
        return 80 + len(self.sealed)


def page_digest(*fields: Any) -> int:
    """:meth:`SealedPage.header_digest` of a page's clear fields, in their order."""
    head = json.dumps(list(fields), separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(head.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class SealedPage:
    """A viewer's first page of a timeline, drawn whole with holes for what differs per request, and sealed under the
    viewer's own key (``feed.web.page_blobs``). Beside the sealed text, ids only, and the names the page shows (as
    public as a ``UserRecord``): what it must be checked against when read."""

    variant: str  # what it was drawn for: the timeline, the templates' version, the composer's audience
    key_version: int  # the version of the viewer's key that sealed it
    expires: int  # epoch seconds: drawn again from then on (a mute that ends by itself)
    posts: tuple[tuple[int, int, int], ...]  # (post id, revision, booster id or 0) of each entry, in order
    people: tuple[tuple[int, str, str], ...]  # (id, username, display name) of each person whose name it shows
    holes: str  # what fills each of its holes, in order: one letter each
    drawn_ms: int  # when it was drawn (epoch milliseconds): where its live stream starts
    sealed: Sealed
    source: str = ""  # a digest of the shared list it was drawn from ("" if none): the public timeline's refs
    created: tuple[int, ...] = ()  # when each entry's post was made (epoch seconds): its age, filled per request
    # Each hole's filling as drawn (counts, when drawn; nothing where each request fills it), NUL between: what a
    # read vouched for by the shown log fills (feed.cache.shown).
    filled: bytes = b""
    mark: str = ""  # the shown log's mark when it was drawn ("" if none: feed.cache.shown)
    # A digest of everything above, made when first asked for (feed.web.page_blobs binds the seal to it).
    digest: Any = field(default=None, init=False, compare=False, repr=False)
    # This process's last check of it against the posts and people it shows (feed.web.page_blobs), never stored.
    checked: Any = field(default=None, init=False, compare=False, repr=False)
    # The check under way, if one is (its stamp and its outcome to come): reads at that stamp wait for it.
    checking: Any = field(default=None, init=False, compare=False, repr=False)

    def header_digest(self) -> int:
        """A 64-bit digest of every field but the sealed text (of :func:`page_clear`, as stored): the seal's context
        holds it, so that a sealed page never opens under another page's ids, names, holes or expiry."""
        if self.digest is None:
            clear = page_clear(self.variant, self.key_version, self.expires, self.posts, self.people, self.holes,
                               self.drawn_ms, self.source, self.created, self.filled, self.mark)  # fmt: skip
            object.__setattr__(self, "digest", clear_digest(clear))
        return int(self.digest)

    @property
    def size(self) -> int:
        size = 120 + len(self.variant) + len(self.holes) + len(self.sealed) + len(self.filled) + len(self.mark)
        return size + 80 * len(self.posts) + 60 * len(self.people)


_POST = struct.Struct(">qqq")  # a page's entry: post id, revision, booster id
_POST_MADE = struct.Struct(">qqqq")  # the same, and when the post was made


def page_clear(variant: str, key_version: int, expires: int, posts: tuple[tuple[int, int, int], ...],
               people: tuple[tuple[int, str, str], ...], holes: str, drawn_ms: int, source: str = "",
               created: tuple[int, ...] = (), filled: bytes = b"", mark: str = "") -> bytes:  # fmt: skip
    """A page's clear fields as stored, before its sealed text: a header of names and numbers, then its entries,
    the ids of its people (packed: read at every read of a blob from Redis, and packed ints are read at once) and
    its fillings as drawn."""
    header: dict[str, Any] = {"v": variant, "k": key_version, "x": expires, "h": holes, "d": drawn_ms,
                              "u": [name for _, username, shown in people for name in (username, shown)]}  # fmt: skip
    if source:
        header["s"] = source
    if mark:
        header["m"] = mark
    if created and len(created) == len(posts):
        header["c"] = 1
        entries = b"".join(_POST_MADE.pack(*post, made) for post, made in zip(posts, created, strict=True))
    else:
        if created:  # not one time per entry (no page is drawn so): kept as they are
            header["t"] = list(created)
        entries = b"".join(_POST.pack(*post) for post in posts)
    ids = struct.pack(f">{len(people)}q", *(person[0] for person in people))
    return _pack(b"G", header, entries, ids, filled)


def clear_digest(clear: bytes) -> int:
    """:meth:`SealedPage.header_digest` of a page's :func:`page_clear`."""
    return int.from_bytes(hashlib.blake2b(clear, digest_size=8).digest(), "big")


def _page(h: dict[str, Any], blobs: list[bytes | None], data: bytes) -> SealedPage:
    entries, ids, filled, sealed = blobs
    assert entries is not None and ids is not None and filled is not None and sealed is not None
    made = bool(h.get("c"))
    rows = list((_POST_MADE if made else _POST).iter_unpack(entries))
    names = h["u"]
    people_ids = struct.unpack(f">{len(ids) // 8}q", ids)
    if len(names) != 2 * len(people_ids) or not all(isinstance(name, str) for name in names):
        raise CorruptValue
    page = SealedPage(
        str(h["v"]),
        int(h["k"]),
        int(h["x"]),
        tuple(row[:3] for row in rows) if made else tuple(rows),
        tuple(zip(people_ids, names[0::2], names[1::2], strict=True)),
        str(h["h"]),
        int(h["d"]),
        Sealed(sealed),
        str(h.get("s", "")),
        tuple(row[3] for row in rows) if made else tuple(int(t) for t in h.get("t", ())),
        filled,
        str(h.get("m", "")),
    )
    object.__setattr__(page, "digest", clear_digest(data[: len(data) - 4 - len(sealed)]))  # as page_clear made it
    return page


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A user key as stored: wrapped by a root key version. Useless without the root key."""

    blob: bytes

    @property
    def size(self) -> int:
        return 40 + len(self.blob)


CACHEABLE = (
    PostRecord,
    UserRecord,
    SessionRecord,
    AccountCounts,
    Tally,
    IdList,
    IdSet,
    RefList,
    SealedFrame,
    SealedPage,
    WrappedKey,
)
Cacheable = (
    PostRecord
    | UserRecord
    | SessionRecord
    | AccountCounts
    | Tally
    | IdList
    | IdSet
    | RefList
    | SealedFrame
    | SealedPage
    | WrappedKey
)

_LEN = struct.Struct(">I")


def check(value: object) -> Cacheable:
    if not isinstance(value, CACHEABLE):
        raise NotCacheable(f"the caches do not take {type(value).__name__} values")
    return value


def _pack(tag: bytes, header: dict[str, Any], *blobs: bytes | None) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [tag, _LEN.pack(len(head)), head]
    for blob in blobs:
        if blob is None:
            parts.append(_LEN.pack(0xFFFFFFFF))
        else:
            parts += [_LEN.pack(len(blob)), blob]
    return b"".join(parts)


def _unpack(data: bytes) -> tuple[bytes, dict[str, Any], list[bytes | None]]:
    tag = data[:1]
    (size,) = _LEN.unpack_from(data, 1)
    pos = 5 + size
    header = json.loads(data[5:pos])
    blobs: list[bytes | None] = []
    while pos < len(data):
        (size,) = _LEN.unpack_from(data, pos)
        pos += 4
        if size == 0xFFFFFFFF:
            blobs.append(None)
            continue
        blobs.append(data[pos : pos + size])
        pos += size
    if pos != len(data):
        raise CorruptValue
    return tag, header, blobs


def encode(value: Cacheable) -> bytes:
    check(value)
    if isinstance(value, PostRecord):
        header = {
            "i": value.id,
            "a": value.author_id,
            "v": value.visibility,
            "r": value.in_reply_to_id,
            "ra": value.in_reply_to_author_id,
            "rev": value.revision,
            "k": value.key_version,
            "l": value.likes_count,
            "rc": value.replies_count,
            "c": _when(value.created_at),
            "e": _when(value.edited_at),
            "m": [list(m) for m in value.mentions],
        }
        if value.sensitive or value.language or value.app_id:
            header |= {"s": value.sensitive, "lg": value.language, "ap": value.app_id}
        if value.reblogs_count:
            header["rb"] = value.reblogs_count
        sealed: list[bytes | None] = []
        if value.media:
            header["md"] = [a.head() for a in value.media]
            for a in value.media:
                sealed += [a.description.data if a.description else None, a.blurhash.data if a.blurhash else None]
        return _pack(b"P", header, value.body.data, value.cw.data if value.cw else None, *sealed)
    if isinstance(value, UserRecord):
        header = {
            "i": value.id,
            "u": value.username,
            "d": value.display_name,
            "b": value.bio,
            "k": value.key_version,
            "c": _when(value.created_at),
        }
        if value.locked:
            header["l"] = True
        return _pack(b"U", header)
    if isinstance(value, SessionRecord):
        header = {"u": value.user_id, "x": _when(value.expires_at)}
        if value.app_id or value.scopes:
            header |= {"a": value.app_id, "s": value.scopes}
        return _pack(b"S", header)
    if isinstance(value, AccountCounts):
        counts = [value.followers, value.following, value.posts, _when(value.last_post_at)]
        return _pack(b"C", {"n": counts})
    if isinstance(value, Tally):
        return _pack(b"N", {"n": value.value})
    if isinstance(value, IdList):
        return _pack(b"I", {"i": list(value.ids)})
    if isinstance(value, IdSet):
        return _pack(b"D", {"i": sorted(value.ids), "f": value.floor})
    if isinstance(value, RefList):
        return _pack(b"R", {"r": [list(ref) for ref in value.refs]})
    if isinstance(value, SealedFrame):
        return _pack(b"F", {"r": value.revision, "s": value.stamp}, value.sealed.data)
    if isinstance(value, SealedPage):
        clear = page_clear(value.variant, value.key_version, value.expires, value.posts, value.people, value.holes,
                           value.drawn_ms, value.source, value.created, value.filled, value.mark)  # fmt: skip
        return b"".join((clear, _LEN.pack(len(value.sealed.data)), value.sealed.data))  # the sealed text last
    return _pack(b"K", {}, value.blob)


def decode(data: bytes) -> Cacheable:
    try:
        return _decode(data)
    except CorruptValue:
        raise
    except Exception:
        raise CorruptValue from None


def _decode(data: bytes) -> Cacheable:
    tag, h, blobs = _unpack(data)
    if tag == b"P":
        body, cw, *attached = blobs
        heads = h.get("md", ())
        if len(attached) != 2 * len(heads):
            raise CorruptValue
        assert body is not None
        created = _from_when(h["c"])
        assert created is not None
        return PostRecord(
            id=h["i"],
            author_id=h["a"],
            visibility=h["v"],
            in_reply_to_id=h["r"],
            in_reply_to_author_id=h["ra"],
            revision=h["rev"],
            key_version=h["k"],
            likes_count=h["l"],
            replies_count=h["rc"],
            created_at=created,
            edited_at=_from_when(h["e"]),
            body=Sealed(body),
            cw=Sealed(cw) if cw is not None else None,
            mentions=tuple((int(i), str(n)) for i, n in h["m"]),
            sensitive=bool(h.get("s", False)),
            language=h.get("lg"),
            app_id=int(h.get("ap", 0)),
            reblogs_count=int(h.get("rb", 0)),
            media=tuple(Attachment.of(head, *attached[2 * i : 2 * i + 2]) for i, head in enumerate(heads)),
        )
    if tag == b"U":
        created = _from_when(h["c"])
        assert created is not None
        return UserRecord(h["i"], h["u"], h["d"], h["b"], h["k"], created, bool(h.get("l", False)))
    if tag == b"S":
        expires = _from_when(h["x"])
        assert expires is not None
        return SessionRecord(h["u"], expires, int(h.get("a", 0)), str(h.get("s", "")))
    if tag == b"C":
        followers, following, post_count, last = h["n"]
        return AccountCounts(int(followers), int(following), int(post_count), _from_when(last))
    if tag == b"N":
        return Tally(int(h["n"]))
    if tag == b"I":
        return IdList(tuple(int(i) for i in h["i"]))
    if tag == b"D":
        return IdSet(frozenset(int(i) for i in h["i"]), int(h["f"]))
    if tag == b"R":
        return RefList(tuple(tuple(int(x) for x in ref) for ref in h["r"] if len(ref) in (4, 6)))
    if tag == b"F":
        (sealed,) = blobs
        assert sealed is not None
        return SealedFrame(int(h["r"]), int(h["s"]), Sealed(sealed))
    if tag == b"G":
        return _page(h, blobs, data)
    if tag == b"K":
        (blob,) = blobs
        assert blob is not None
        return WrappedKey(blob)
    raise CorruptValue
