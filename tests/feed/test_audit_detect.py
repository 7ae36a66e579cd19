"""Canaries are found in every encoding and context a leak could take; the text heuristic flags sentences and none
of the values the app stores on purpose."""

from __future__ import annotations

import base64
import binascii
import html
import json
import random
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import UserKey, seal_fields
from feed.audit.detect import MIN_PATTERN_SIZE, Hit, Needle, find_canaries, looks_like_text, needles

ZURICH = "canary-3f9a1c-Zürich text"
SHARP_S = "canary-Zürich-ß-7f3a"
MARKUP = "CANARY<b>&\"'9c1e</b>"
PLAIN = "canaryplain5d2e81"
CANARIES = [ZURICH, SHARP_S, MARKUP, PLAIN]
URLSAFE = "canary~~~???>>>-Zürich"
"""Its base64 has "+" and "/" at every alignment, so base64url differs from base64 at each."""

SENTENCE = "meet me at the station at noon, bring the documents"
FRENCH = (
    "Le renard brun rapide saute par-dessus le chien paresseux et s'enfuit dans la forêt. Le lendemain matin, il "
    "revient et dort sous le grand arbre à côté de la maison de la famille."
)


def noise(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sealed_blob(text: str) -> bytes:
    key = UserKey.generate(7, 1)
    return seal_fields(key, {"body": text}, object_id=1, owner_id=7, revision=1)["body"].data


def found(haystack: bytes, canaries: list[str]) -> set[tuple[str, str]]:
    return {(hit.canary, hit.encoding) for hit in find_canaries(haystack, needles(canaries))}


def test_needles_cover_every_encoding_once() -> None:
    made = needles([URLSAFE, MARKUP])
    assert {n.encoding for n in made if n.canary == URLSAFE} == {
        "utf-8",
        "utf-16-le",
        "utf-16-be",
        "json",
        "html",
        "url",
        "hex",
        "base64",
        "base64url",
    }
    assert [n.encoding for n in made if n.canary == URLSAFE].count("base64url") == 3
    assert [n.encoding for n in made if n.canary == MARKUP].count("html") == 2
    assert len({n.pattern for n in made}) == len(made)
    assert all(len(n.pattern) >= MIN_PATTERN_SIZE for n in made)


def test_identical_patterns_keep_the_first_name() -> None:
    made = needles([PLAIN, PLAIN])
    assert [n.encoding for n in made if n.pattern == PLAIN.encode()] == ["utf-8"]
    assert {n.encoding for n in made} == {"utf-8", "utf-16-le", "utf-16-be", "hex", "base64"}
    assert Needle(PLAIN, "hex", PLAIN.encode().hex().upper().encode()) in made


def test_short_patterns_are_skipped() -> None:
    made = needles(["abc"])
    assert made
    assert all(len(n.pattern) >= MIN_PATTERN_SIZE for n in made)
    assert "utf-8" not in {n.encoding for n in made}


def test_each_needle_is_found_at_its_offset_in_noise() -> None:
    for number, needle in enumerate(needles(CANARIES)):
        prefix = noise(1000 + number, seed=number)
        haystack = prefix + needle.pattern + noise(500, seed=-number)
        assert Hit(needle.canary, needle.encoding, len(prefix)) in find_canaries(haystack, [needle])


@pytest.mark.parametrize("canary", CANARIES)
@pytest.mark.parametrize("lead", [0, 1, 2])
def test_base64_inside_a_larger_blob_at_each_alignment(canary: str, lead: int) -> None:
    blob = noise(30 + lead) + canary.encode() + noise(40, seed=1)
    assert (canary, "base64") in found(base64.b64encode(blob), CANARIES)
    assert (canary, "base64") in found(b"data=" + base64.b64encode(blob) + b"\n", CANARIES)


@pytest.mark.parametrize("lead", [0, 1, 2])
def test_base64url_inside_a_larger_blob_at_each_alignment(lead: int) -> None:
    blob = noise(30 + lead) + URLSAFE.encode() + noise(40, seed=1)
    assert found(base64.urlsafe_b64encode(blob), [URLSAFE]) == {(URLSAFE, "base64url")}
    assert found(base64.b64encode(blob), [URLSAFE]) == {(URLSAFE, "base64")}


def expected(encoding: str, encoded: str, canary: str) -> str:
    """The name a hit carries: an encoding that leaves the canary unchanged shares the UTF-8 needle."""
    return encoding if encoded != canary else "utf-8"


@pytest.mark.parametrize("canary", CANARIES)
def test_text_encodings_in_their_usual_contexts(canary: str) -> None:
    raw = canary.encode()
    assert found(noise(5000) + raw + noise(5000, seed=1), CANARIES) == {(canary, "utf-8")}
    for codec in ("utf-16-le", "utf-16-be"):
        document = f"Subject: hello\r\nBody: {canary} and more\r\n".encode(codec)
        assert (canary, codec) in found(noise(99) + document, CANARIES)
    log_line = b"DEBUG payload=" + binascii.hexlify(noise(9) + raw) + b" done\n"
    assert (canary, "hex") in found(log_line, CANARIES)
    assert (canary, "hex") in found(log_line.upper(), CANARIES)


@pytest.mark.parametrize("canary", CANARIES)
def test_escaped_forms_in_json_urls_and_html(canary: str) -> None:
    for ensure_ascii in (True, False):
        document = json.dumps({"id": 7, "text": canary, "tags": ["a", "b"]}, ensure_ascii=ensure_ascii)
        escaped = json.dumps(canary, ensure_ascii=ensure_ascii)[1:-1]
        assert (canary, expected("json", escaped, canary)) in found(document.encode(), CANARIES)
    for quoted in (quote_plus(canary), quote(canary, safe="")):
        url = f"GET https://app.example/search?page=2&q={quoted}&lang=en HTTP/1.1"
        assert (canary, expected("url", quoted, canary)) in found(url.encode(), CANARIES)
    for escape_quotes in (True, False):
        escaped = html.escape(canary, quote=escape_quotes)
        page = f'<!doctype html><html><body><p class="post">{escaped}</p></body></html>'
        assert (canary, expected("html", escaped, canary)) in found(page.encode(), CANARIES)


def test_every_hit_is_reported_in_order_of_offset() -> None:
    haystack = b"x" * 10 + MARKUP.encode("utf-16-be") + b"y" * 10 + html.escape(MARKUP).encode() + ZURICH.encode()
    hits = find_canaries(haystack, needles(CANARIES))
    assert [(hit.canary, hit.encoding) for hit in hits] == [(MARKUP, "utf-16-be"), (MARKUP, "html"), (ZURICH, "utf-8")]
    assert [hit.offset for hit in hits] == sorted(hit.offset for hit in hits)
    assert hits[0].offset == 10


RANDOM_VALUES = [
    noise(1 << 20),
    base64.b64encode(noise(1 << 20, seed=1)),
    base64.urlsafe_b64encode(noise(1 << 19, seed=2)),
    base64.encodebytes(noise(1 << 19, seed=3)),
    noise(1 << 19, seed=4).hex().encode(),
]

MUST_NOT_FLAG = [
    b"",
    b"alice_2",
    b"bob",
    str(uuid.UUID(int=0x3F9A1C2B_7E4D_4A5B_9C8D_0123456789AB)).encode(),
    b"12345678901234567890",
    b"3.14159265358979",
    b"2024-05-01T12:34:56.789+00:00",
    b"2024-05-01 12:34:56",
    b'{"i":12345,"a":678,"v":"public","r":null,"m":[[1,"bob"]]}',
    b"https://app.example/callback",
    b"https://app.example/oauth/authorize?client_id=abc123&response_type=code&scope=read+write",
    b"read write follow push",
    b"read write follow push profile email openid",
    b"de ad be ef 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff",
    b"cipherfeed:home:12345:v7",
    noise(64),
    base64.b64encode(noise(96)),
    noise(32).hex().encode(),
    sealed_blob(SENTENCE),
    sealed_blob(""),
    sealed_blob(SENTENCE)[:40],
    base64.b64encode(sealed_blob(SENTENCE)),
]


def test_random_data_has_no_canaries() -> None:
    made = needles([*CANARIES, URLSAFE])
    for value in RANDOM_VALUES:
        assert find_canaries(value, made) == []


def test_random_data_does_not_look_like_text() -> None:
    for value in RANDOM_VALUES:
        for start in range(0, len(value), len(value) // 64):
            assert looks_like_text(value[start : start + 1024]) is None
        assert looks_like_text(value) is None


@pytest.mark.parametrize("value", MUST_NOT_FLAG, ids=range(len(MUST_NOT_FLAG)))
def test_values_stored_on_purpose_are_not_flagged(value: bytes) -> None:
    assert looks_like_text(value) is None
    assert find_canaries(value, needles(CANARIES)) == []


def test_sealed_text_is_neither_text_nor_a_canary() -> None:
    for canary in CANARIES:
        blob = sealed_blob(f"{SENTENCE} {canary}")
        assert looks_like_text(blob) is None
        assert find_canaries(blob, needles(CANARIES)) == []


@pytest.mark.parametrize(
    "sentence",
    [
        SENTENCE,
        "Happy birthday! Hope you have a great day, see you tonight.",
        "I can't make it to the meeting tomorrow, sorry.",
        "<p>We are going to the lake this weekend with the kids</p>",
        '{"text": "the keys are under the mat, call me when you get here"}',
        "  The quick brown fox jumps over the lazy dog.\n",
        f"{SENTENCE}\n" * 200,
        FRENCH,
    ],
)
def test_sentences_are_flagged(sentence: str) -> None:
    reason = looks_like_text(sentence.encode())
    assert reason is not None
    assert reason.startswith("printable text, ")


def test_the_reason_names_the_sign() -> None:
    assert looks_like_text(SENTENCE.encode()) == "printable text, 5 dictionary words"
    reason = looks_like_text(FRENCH.encode())
    assert reason is not None
    assert "bits/char" in reason


def test_mostly_binary_values_are_not_text_even_with_words_inside() -> None:
    value = noise(200) + SENTENCE.encode() + noise(200, seed=1)
    assert looks_like_text(value) is None
    assert looks_like_text(SENTENCE.encode() + b"\x00" * 3) is not None


def test_finding_30_needles_in_10_mb_is_fast() -> None:
    canaries = [f"canary-{n:02d}-{noise(4, seed=n).hex()}-Zürich text" for n in range(3)]
    made = needles(canaries)[:30]
    assert len(made) == 30
    haystack = noise(10_000_000) + made[-1].pattern
    started = time.perf_counter()
    hits = find_canaries(haystack, made)
    elapsed = time.perf_counter() - started
    assert hits == [Hit(made[-1].canary, made[-1].encoding, 10_000_000)]
    assert elapsed < 2.0


def test_judging_a_kilobyte_is_fast() -> None:
    values = [
        (SENTENCE.encode() + b" ") * 20,
        noise(1024),
        base64.b64encode(noise(768)),
        json.dumps([{"id": n, "acct": f"user{n}"} for n in range(40)]).encode(),
        FRENCH.encode() * 6,
    ]
    values = [value[:1024] for value in values]
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        for value in values:
            looks_like_text(value)
    mean = (time.perf_counter() - started) / (rounds * len(values))
    assert mean < 500e-6


printable_canaries = st.text(
    st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S"], include_characters=" "),
    min_size=8,
    max_size=40,
).filter(str.isprintable)


@settings(max_examples=300, deadline=None, database=None)
@given(canary=printable_canaries, prefix=st.binary(max_size=300), suffix=st.binary(max_size=300), data=st.data())
def test_any_needle_anywhere_in_noise_is_found(canary: str, prefix: bytes, suffix: bytes, data: st.DataObject) -> None:
    needle = data.draw(st.sampled_from(needles([canary])))
    haystack = prefix + needle.pattern + suffix
    assert Hit(canary, needle.encoding, haystack.find(needle.pattern)) in find_canaries(haystack, needles([canary]))


ENCODERS: dict[str, Callable[[str, bytes, bytes], bytes]] = {
    "utf-8": lambda text, head, tail: head + text.encode() + tail,
    "utf-16-le": lambda text, head, tail: head + text.encode("utf-16-le") + tail,
    "utf-16-be": lambda text, head, tail: head + text.encode("utf-16-be") + tail,
    "base64": lambda text, head, tail: base64.b64encode(head + text.encode() + tail),
    "base64url": lambda text, head, tail: base64.urlsafe_b64encode(head + text.encode() + tail),
    "hex": lambda text, head, tail: binascii.hexlify(head + text.encode() + tail),
    "HEX": lambda text, head, tail: binascii.hexlify(head + text.encode() + tail).upper(),
    "url": lambda text, head, tail: head + quote(text, safe="").encode() + tail,
    "url+": lambda text, head, tail: head + b"?q=" + quote_plus(text).encode() + tail,
    "html": lambda text, head, tail: head + html.escape(text).encode() + tail,
    "html-noquote": lambda text, head, tail: head + html.escape(text, quote=False).encode() + tail,
    "json": lambda text, head, tail: head + json.dumps({"t": text}).encode() + tail,
    "json-utf8": lambda text, head, tail: head + json.dumps({"t": text}, ensure_ascii=False).encode() + tail,
}


@settings(max_examples=300, deadline=None, database=None)
@given(
    canary=printable_canaries,
    prefix=st.binary(max_size=300),
    suffix=st.binary(max_size=300),
    encoder=st.sampled_from(sorted(ENCODERS)),
)
def test_any_canary_written_by_a_real_encoder_is_found(canary: str, prefix: bytes, suffix: bytes, encoder: str) -> None:
    haystack = ENCODERS[encoder](canary, prefix, suffix)
    assert canary in {hit.canary for hit in find_canaries(haystack, needles([canary]))}
