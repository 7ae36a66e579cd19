"""What a committed write causes, as data: cache keys to drop, jobs to queue and live events, with ids, counts and
names only (never text, which could leak through the outbox table, a Redis stream or a pub/sub message).

A writer builds an :class:`Effects` value next to its write (``feed.services.effects``), records it in the outbox in
the same transaction, and the relay (``feed.relay``) carries it out. Live events come in two kinds:

- :class:`Event`, about one post (a new post, an edit, a deletion), with the post's declared metadata: author,
  visibility, mentioned ids. Each web process decides per viewer, at render time, who may see it.
- :class:`Event` of kind :data:`NOTE`: a notification for one user (its id only; the notification names who did
  what to which post, as ids, in its table).
- counts: "the like or reply count of these posts changed"; the relay reads the counts when it publishes, so that
  what it sends is never older than the last commit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Event kinds: a new post (of the shared posts stream), its edit and deletion, "this post joined your home
# timeline" (of a user's own stream, written by the post's fan-out), and "you have a new notification" (of a user's
# own stream, written by the relay: ``post`` is the notification's id and ``author`` the user it is for), and "this
# post was boosted by someone whose boosts no fan-out brings" (of the shared posts stream, written by the boost's
# fan-out job: ``boost`` is the boost's id and ``booster`` who boosted).
NEW, EDIT, DELETE, HOME, NOTE, BOOST = "new", "edit", "delete", "home", "note", "boost"
KINDS = frozenset({NEW, EDIT, DELETE, HOME, NOTE, BOOST})
USER_KINDS = frozenset({HOME, NOTE})  # the kinds of a user's own stream
VISIBILITY_CODES = {"public": "p", "unlisted": "u", "followers": "f", "direct": "d"}
VISIBILITIES = {code: name for name, code in VISIBILITY_CODES.items()}
_NAME = re.compile(r"[A-Za-z0-9_:.-]{1,100}")


class BadEffect(TypeError):
    """Something that is not an id, a count or one of our own names was about to leave the request."""


def _ints(values: Iterable[Any], what: str) -> tuple[int, ...]:
    out = tuple(values)
    for value in out:
        if type(value) is not int:
            raise BadEffect(f"{what} must be ints, not {type(value).__name__}")
    return out


def check_name(value: Any, what: str) -> str:
    """A job name, a cache space or key: our own identifiers, never free text."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadEffect(f"{what} must be a short identifier")
    return value


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    post: int
    author: int
    visibility: str  # public, unlisted, followers or direct
    mentions: tuple[int, ...] = ()
    reply_to: int = 0
    committed_ms: int = 0  # when the write that caused it committed (for the delivery-lag metric)
    boost: int = 0  # HOME: the post joined the home timeline through this boost (its id) ...
    booster: int = 0  # ... by this person

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadEffect(f"unknown event kind {self.kind!r}")
        if self.visibility not in VISIBILITY_CODES:
            raise BadEffect("unknown visibility")
        _ints((self.post, self.author, self.reply_to, self.committed_ms, self.boost, self.booster), "event ids")
        _ints(self.mentions, "mentioned ids")

    def fields(self) -> dict[str, str]:
        """As the fields of a stream entry or a message (every value a decimal number or a one-letter code)."""
        out = {"k": self.kind, "p": str(self.post), "a": str(self.author), "v": VISIBILITY_CODES[self.visibility]}
        if self.mentions:
            out["m"] = ",".join(map(str, self.mentions))
        if self.reply_to:
            out["r"] = str(self.reply_to)
        if self.committed_ms:
            out["c"] = str(self.committed_ms)
        if self.boost:
            out["b"], out["bb"] = str(self.boost), str(self.booster)
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> Event:
        """Back from :meth:`fields` (keys and values as str or bytes); raises BadEffect or ValueError if malformed."""
        data = {_text(k): _text(v) for k, v in raw.items()}
        mentions = tuple(int(m) for m in data["m"].split(",")) if data.get("m") else ()
        return cls(
            kind=data["k"],
            post=int(data["p"]),
            author=int(data["a"]),
            visibility=VISIBILITIES[data["v"]],
            mentions=mentions,
            reply_to=int(data.get("r", 0)),
            committed_ms=int(data.get("c", 0)),
            boost=int(data.get("b", 0)),
            booster=int(data.get("bb", 0)),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    args: tuple[int, ...]
    key: str | None = None  # with a key, not queued again while one of that key waits

    def __post_init__(self) -> None:
        check_name(self.name, "a job name")
        _ints(self.args, "job arguments")
        if self.key is not None:
            check_name(self.key, "a job key")


@dataclass(frozen=True, slots=True)
class Effects:
    """Everything one write causes. ``invalidate`` names cache keys as (space name, key)."""

    invalidate: tuple[tuple[str, int | str], ...] = ()
    forget_users: tuple[int, ...] = ()  # users whose unwrapped keys every process must drop
    jobs: tuple[Job, ...] = ()
    events: tuple[Event, ...] = ()
    counts: tuple[int, ...] = ()  # posts whose like or reply count changed
    shown: tuple[int, ...] = ()  # posts and people that look different on a page now (feed.cache.shown)

    def __post_init__(self) -> None:
        for space, key in self.invalidate:
            check_name(space, "a cache space")
            if type(key) is not int:
                check_name(key, "a cache key")
        _ints(self.forget_users, "user ids")
        _ints(self.counts, "post ids")
        _ints(self.shown, "ids")

    def __bool__(self) -> bool:
        return bool(self.invalidate or self.forget_users or self.jobs or self.events or self.counts or self.shown)

    def __add__(self, other: Effects) -> Effects:
        return Effects(
            invalidate=tuple(dict.fromkeys(self.invalidate + other.invalidate)),
            forget_users=tuple(dict.fromkeys(self.forget_users + other.forget_users)),
            jobs=self.jobs + other.jobs,
            events=self.events + other.events,
            counts=tuple(dict.fromkeys(self.counts + other.counts)),
            shown=tuple(dict.fromkeys(self.shown + other.shown)),
        )

    def encode(self) -> str:
        """The outbox row's text: JSON of ids and names."""
        data: dict[str, Any] = {}
        if self.invalidate:
            data["i"] = [list(pair) for pair in self.invalidate]
        if self.forget_users:
            data["f"] = list(self.forget_users)
        if self.jobs:
            data["j"] = [[job.name, list(job.args), job.key] for job in self.jobs]
        if self.events:
            data["e"] = [event.fields() for event in self.events]
        if self.counts:
            data["c"] = list(self.counts)
        if self.shown:
            data["s"] = list(self.shown)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Effects:
        data = json.loads(text)
        return cls(
            invalidate=tuple((space, key) for space, key in data.get("i", ())),
            forget_users=tuple(data.get("f", ())),
            jobs=tuple(Job(name, tuple(args), key) for name, args, key in data.get("j", ())),
            events=tuple(Event.from_fields(fields) for fields in data.get("e", ())),
            counts=tuple(data.get("c", ())),
            shown=tuple(data.get("s", ())),
        )


def merge(parts: Sequence[Effects]) -> Effects:
    out = Effects()
    for part in parts:
        out = out + part
    return out
