"""Plaintext in stored bytes: canaries in every common encoding, and a guess at human-written text.

A canary is proof: a string the auditor wrote through the app, so any of its encodings found in a database row,
Redis value or log file is a leak. :func:`looks_like_text` is only a heuristic for values the canaries did not
reach. It reports suspicion, not proof: it misses short or unusual text (under a dozen characters, most non-English
text under about a hundred, text in encodings other than UTF-8) and may flag a value that merely reads like prose.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from urllib.parse import quote, quote_plus

MIN_PATTERN_SIZE = 6
"""Byte patterns shorter than this are not searched for: they occur by chance too often."""


@dataclass(frozen=True, slots=True)
class Needle:
    canary: str
    encoding: str
    pattern: bytes


@dataclass(frozen=True, slots=True)
class Hit:
    canary: str
    encoding: str
    offset: int


def needles(canaries: Iterable[str]) -> list[Needle]:
    """Every byte pattern under which each canary may be stored, at least :data:`MIN_PATTERN_SIZE` bytes long.

    A pattern that two encodings (or two canaries) share is kept once, under the first name: ``utf-8`` before
    ``json``, ``html`` or ``url``, which leave many canaries unchanged.
    """
    found: dict[bytes, Needle] = {}
    for canary in canaries:
        for encoding, pattern in _encodings(canary):
            if len(pattern) >= MIN_PATTERN_SIZE and pattern not in found:
                found[pattern] = Needle(canary, encoding, pattern)
    return list(found.values())


def _encodings(canary: str) -> Iterator[tuple[str, bytes]]:
    raw = canary.encode()
    yield "utf-8", raw
    yield "utf-16-le", canary.encode("utf-16-le")
    yield "utf-16-be", canary.encode("utf-16-be")
    for ensure_ascii in (True, False):
        yield "json", json.dumps(canary, ensure_ascii=ensure_ascii)[1:-1].encode()
    for escape_quotes in (True, False):
        yield "html", html.escape(canary, quote=escape_quotes).encode()
    yield "url", quote(canary, safe="").encode()
    yield "url", quote_plus(canary).encode()
    yield "hex", binascii.hexlify(raw)
    yield "hex", binascii.hexlify(raw).upper()
    for encoding, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        for pattern in _base64_cores(raw, encode):
            yield encoding, pattern


def _base64_cores(raw: bytes, encode: Callable[[bytes], bytes]) -> Iterator[bytes]:
    """For the canary at each offset (0, 1 or 2) in a 3-byte group, the base64 characters that depend on canary
    bits only: character ``i`` covers bits ``6i`` up to ``6i + 6`` (exclusive) of the group-aligned input."""
    for lead in range(3):
        encoded = encode(bytes(lead) + raw)
        first = -(-8 * lead // 6)
        end = 8 * (lead + len(raw)) // 6
        yield encoded[first:end]


def find_canaries(haystack: bytes, found_needles: Sequence[Needle]) -> list[Hit]:
    """The first occurrence of each needle in ``haystack``, in order of offset.

    One ``bytes.find`` per needle: CPython's substring search runs at memory speed, so 30 needles over 10 MB take
    a fraction of a second, much less than one regular expression of all of them would.
    """
    hits: list[Hit] = []
    for needle in found_needles:
        offset = haystack.find(needle.pattern)
        if offset >= 0:
            hits.append(Hit(needle.canary, needle.encoding, offset))
    hits.sort(key=lambda hit: hit.offset)
    return hits


# Frequent English words, leaving out those that name things in code, URLs and OAuth scopes ("read", "write",
# "follow", "public", "home", "new", "next", "time", "type") and single letters ("a", "i"), which occur in ids.
_COMMON_WORDS = frozenset(
    """
    the be to of and in that have it for not on with he as you do at this but his by from they we say her she or
    an will my one all would there their what so up out if about who get which go me when make can like no just
    him know take people into year your good some could them see other than then now look only come its over think
    also back after two how our work well way even want because any these give day most us is are was were been has
    had did does am very here where why should must may might shall let tell please thanks thank love today
    tomorrow tonight night morning evening meet bring send call talk going got much many too again still never
    always something nothing everything someone everyone really sorry yes hello dear friend friends family money
    house school week before under between through during without against around off down same each both few such
    own those while long great little right old big different small large early young important bad life world
    hand part place point problem fact ask feel try leave put mean keep begin seem help hear live believe happen
    said went came made told find found thing things man woman child children mother father city country story
    water food room car door book letter left yesterday soon later every wife husband sister brother wait
    """.split()
)
_VOWELS = frozenset("aeiouyàáâãäåæèéêëìíîïòóôõöøùúûüýÿœ")
_SAMPLE_SIZE = 1 << 16
"""Only the first 64 KiB of a value are judged."""
_MIN_CHARS = 12
_MIN_PRINTABLE = 0.9
_MIN_COMMON_WORDS = 2
_MIN_TOKENS = 6
_MIN_WORDLIKE_SHARE = 0.8
_VOWEL_SHARE = (0.25, 0.65)
_MAX_BITS_PER_CHAR = 4.6
_MAX_COMPRESSED_SHARE = 0.9

_CONTROL_BYTES = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# Two letters, white space (after optional punctuation) and two letters, as in every sentence. Starting with the
# white space lets the regex engine skip to candidates quickly.
_PHRASE = re.compile(r"\s(?:(?<=[^\W\d_]{2}\s)|(?<=[^\W\d_]{2}[,;:.!?]\s))\s*[^\W\d_]{2}")
_PUNCTUATION = "\"'()[]{}«»„“”\u2018\u2019¿¡.,;:!?"


def looks_like_text(value: bytes) -> str | None:
    """None if ``value`` does not look like human-written text, otherwise a short reason.

    Text is UTF-8 that is at least 90% printable characters or white space, at least 12 characters long after
    stripping, with two words separated by white space, and either:

    - two different common English words (from a list of about 240, each a whole white-space separated token), or
    - at least six white-space separated tokens, 80% of them words whose letters are 25-65% vowels, with at
      most 4.6 bits of entropy per character and a zlib size at most 90% of that of random base64 of the same
      length (zlib gains that much only from about a hundred characters on, so shorter non-English text is missed).

    Random bytes, sealed blobs, base64 and hex, UUIDs, numbers, timestamps, identifiers, URLs and JSON of ids and
    numbers fail the first tests, which are cheap; only the first 64 KiB of a value are judged.
    """
    value = value[:_SAMPLE_SIZE]
    if len(value) < _MIN_CHARS:
        return None
    bad = len(value) - len(value.translate(None, _CONTROL_BYTES))
    if bad > (1 - _MIN_PRINTABLE) * len(value):
        return None
    text = value.decode(errors="replace")
    if not text.isascii():
        bad += sum(1 for char in _NON_ASCII.findall(text) if char == "\ufffd" or not char.isprintable())
    if bad > (1 - _MIN_PRINTABLE) * len(text):
        return None
    text = text.strip()
    if len(text) < _MIN_CHARS or _PHRASE.search(text) is None:
        return None
    tokens = [token.strip(_PUNCTUATION) for token in text.split()]
    common = {
        word
        for token in set(tokens)
        if (word := token.lower()) in _COMMON_WORDS and (token.islower() or token.istitle())
    }
    if len(common) >= _MIN_COMMON_WORDS:
        return f"printable text, {len(common)} dictionary words"
    return _reads_like_prose(text, tokens)


def _reads_like_prose(text: str, tokens: list[str]) -> str | None:
    if len(tokens) < _MIN_TOKENS:
        return None
    # Letters, possibly joined by hyphens or apostrophes ("par-dessus", "s'enfuit").
    words = sum(map(str.isalpha, " ".join(tokens).replace("-", "").replace("'", "").replace("\u2019", "").split()))
    if words < _MIN_WORDLIKE_SHARE * len(tokens):
        return None
    counts = Counter(text)
    letters = sum(count for char, count in counts.items() if char.isalpha())
    vowels = sum(count for char, count in counts.items() if char.lower() in _VOWELS) / letters
    if not _VOWEL_SHARE[0] <= vowels <= _VOWEL_SHARE[1]:
        return None
    bits = -sum(count / len(text) * math.log2(count / len(text)) for count in counts.values())
    if bits > _MAX_BITS_PER_CHAR:
        return None
    data = text.encode()
    compressed = len(zlib.compress(data)) / _random_compressed_size(len(data))
    if compressed > _MAX_COMPRESSED_SHARE:
        return None
    return f"printable text, {words} words, {bits:.1f} bits/char, compresses to {compressed:.0%} of random"


@cache
def _random_base64() -> bytes:
    return base64.b64encode(hashlib.shake_256(b"cipherfeed audit baseline").digest(_SAMPLE_SIZE))


@lru_cache(maxsize=1024)
def _random_compressed_size(length: int) -> int:
    """The zlib size of ``length`` bytes of (fixed, pseudo-random) base64."""
    return len(zlib.compress(_random_base64()[:length]))
