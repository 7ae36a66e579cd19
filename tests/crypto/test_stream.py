from __future__ import annotations

import copy
import os
import pickle

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto import FieldContext, InvalidToken, UserKey
from crypto.stream import (
    CHUNK_SIZE,
    ENVELOPE_SIZE,
    key_version_of,
    open_bytes,
    open_envelope,
    rewrap_header,
    seal_bytes,
    seal_stream,
)
from crypto.user_key import key_bytes

ALICE, BOB = 21, 22
MEDIA = 9001
SMALL = 16  # a chunk size that makes many chunks of little data
TAG = 16


def ctx(field: str = "media:original", media: int = MEDIA, owner: int = ALICE, revision: int = 0) -> FieldContext:
    return FieldContext(field, media, owner, revision)


@pytest.fixture
def alice() -> UserKey:
    return UserKey.generate(ALICE, 1)


def chunks_of(stored: bytes, size: int = SMALL) -> list[bytes]:
    body = stored[ENVELOPE_SIZE:]
    step = size + TAG
    return [body[i : i + step] for i in range(0, len(body), step)]


@pytest.mark.parametrize("length", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 3 * SMALL + 5])
def test_round_trip_of_every_length(alice: UserKey, length: int) -> None:
    data = os.urandom(length)
    stored = seal_bytes(alice, ctx(), data, chunk_size=SMALL)
    chunks = max(1, -(-length // SMALL))
    assert len(stored) == ENVELOPE_SIZE + length + TAG * chunks
    assert open_bytes(alice, ctx(), stored) == data
    opener = open_envelope(alice, ctx(), stored[:ENVELOPE_SIZE])
    assert opener.layout(len(stored)) == (length, chunks)


def test_sealing_takes_pieces_of_any_size_and_holds_no_plaintext(alice: UserKey) -> None:
    data = os.urandom(5 * CHUNK_SIZE + 123)
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    stored = b"".join(seal_stream(alice, ctx(), pieces))
    assert open_bytes(alice, ctx(), stored) == data
    assert data[:64] not in stored and data[-64:] not in stored
    assert key_version_of(stored) == 1


def test_each_stream_has_its_own_data_key(alice: UserKey) -> None:
    data = b"the same bytes twice" * 10
    first, second = seal_bytes(alice, ctx(), data), seal_bytes(alice, ctx(), data)
    assert first[ENVELOPE_SIZE:] != second[ENVELOPE_SIZE:]


def test_a_range_opens_from_its_chunks_alone(alice: UserKey) -> None:
    data = os.urandom(10 * SMALL + 7)
    stored = seal_bytes(alice, ctx(), data, chunk_size=SMALL)
    opener = open_envelope(alice, ctx(), stored[:ENVELOPE_SIZE])
    size, chunks = opener.layout(len(stored))
    for index in (0, 4, chunks - 1):
        offset, length = opener.span(index, chunks, size)
        plain = opener.open_chunk(index, stored[offset : offset + length], index == chunks - 1)
        assert plain == data[index * SMALL : (index + 1) * SMALL]


def test_a_changed_byte_anywhere_fails(alice: UserKey) -> None:
    stored = seal_bytes(alice, ctx(), os.urandom(3 * SMALL + 2), chunk_size=SMALL)
    for position in range(len(stored)):
        changed = bytearray(stored)
        changed[position] ^= 0x01
        with pytest.raises(InvalidToken):
            open_bytes(alice, ctx(), bytes(changed))


def test_reordered_chunks_fail(alice: UserKey) -> None:
    stored = seal_bytes(alice, ctx(), os.urandom(4 * SMALL), chunk_size=SMALL)
    chunks = chunks_of(stored)
    swapped = stored[:ENVELOPE_SIZE] + b"".join([chunks[1], chunks[0], *chunks[2:]])
    with pytest.raises(InvalidToken):
        open_bytes(alice, ctx(), swapped)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_a_stream_cut_at_a_chunk_boundary_fails(alice: UserKey, keep: int) -> None:
    stored = seal_bytes(alice, ctx(), os.urandom(4 * SMALL), chunk_size=SMALL)
    cut = stored[: ENVELOPE_SIZE + keep * (SMALL + TAG)]
    with pytest.raises(InvalidToken):
        open_bytes(alice, ctx(), cut)
    # and the chunk before the cut does not pass for a last one
    opener = open_envelope(alice, ctx(), cut[:ENVELOPE_SIZE])
    with pytest.raises(InvalidToken):
        opener.open_chunk(keep - 1, chunks_of(cut)[keep - 1], True)


@pytest.mark.parametrize("cut", [1, TAG - 1, TAG, SMALL + TAG + 3])
def test_a_stream_cut_anywhere_else_fails(alice: UserKey, cut: int) -> None:
    stored = seal_bytes(alice, ctx(), os.urandom(4 * SMALL), chunk_size=SMALL)
    with pytest.raises(InvalidToken):
        open_bytes(alice, ctx(), stored[:-cut])
    with pytest.raises(InvalidToken):
        open_bytes(alice, ctx(), stored[: ENVELOPE_SIZE - 1])


def test_a_chunk_moved_to_another_stream_fails(alice: UserKey) -> None:
    one = seal_bytes(alice, ctx(), os.urandom(3 * SMALL), chunk_size=SMALL)
    other = seal_bytes(alice, ctx(), os.urandom(3 * SMALL), chunk_size=SMALL)
    mixed = one[:ENVELOPE_SIZE] + b"".join([chunks_of(one)[0], chunks_of(other)[1], chunks_of(one)[2]])
    with pytest.raises(InvalidToken):
        open_bytes(alice, ctx(), mixed)


@pytest.mark.parametrize(
    "other", [ctx(field="media:small"), ctx(media=MEDIA + 1), ctx(revision=1)], ids=["field", "object", "revision"]
)
def test_a_stream_opens_in_its_own_context_only(alice: UserKey, other: FieldContext) -> None:
    stored = seal_bytes(alice, ctx(), b"picture bytes")
    with pytest.raises(InvalidToken):
        open_bytes(alice, other, stored)


def test_another_key_or_version_does_not_open_it(alice: UserKey) -> None:
    stored = seal_bytes(alice, ctx(), b"picture bytes")
    with pytest.raises(InvalidToken):
        open_bytes(UserKey.generate(ALICE, 1), ctx(), stored)
    with pytest.raises(InvalidToken):
        open_bytes(UserKey(ALICE, 2, key_bytes(alice)), ctx(), stored)
    with pytest.raises(ValueError, match="owner"):
        open_bytes(UserKey.generate(BOB, 1), ctx(), stored)


def test_a_changed_chunk_size_in_the_header_fails(alice: UserKey) -> None:
    stored = seal_bytes(alice, ctx(), os.urandom(4 * SMALL), chunk_size=SMALL)
    changed = stored[:8] + (2 * SMALL).to_bytes(4, "big") + stored[12:]
    with pytest.raises(InvalidToken):
        open_bytes(alice, ctx(), changed)


def test_rewrap_moves_a_stream_to_a_new_key_by_its_envelope_alone(alice: UserKey) -> None:
    data = os.urandom(3 * SMALL + 1)
    stored = seal_bytes(alice, ctx(), data, chunk_size=SMALL)
    new = UserKey.generate(ALICE, 2)
    envelope = rewrap_header(stored[:ENVELOPE_SIZE], ctx(), alice, new)
    assert len(envelope) == ENVELOPE_SIZE and key_version_of(envelope) == 2
    moved = envelope + stored[ENVELOPE_SIZE:]
    assert open_bytes(new, ctx(), moved) == data
    with pytest.raises(InvalidToken):
        open_bytes(alice, ctx(), moved)
    with pytest.raises(InvalidToken):
        rewrap_header(stored[:ENVELOPE_SIZE], ctx(media=1), alice, new)
    with pytest.raises(ValueError, match="same user"):
        rewrap_header(stored[:ENVELOPE_SIZE], ctx(), alice, UserKey.generate(BOB, 2))


def test_the_chunks_are_aes_gcm_under_the_stream_key_as_documented(alice: UserKey) -> None:
    """The layout in the module's doc, checked from the outside with the data key the rng gave."""
    draws = iter([b"\x07" * 32, b"\x09" * 12])
    stored = seal_bytes(alice, ctx(), b"x" * (SMALL + 3), chunk_size=SMALL, rng=lambda n: next(draws))
    from crypto.context import encode_context

    aead = AESGCM(b"\x07" * 32)
    first, last = chunks_of(stored)
    aad = stored[2:4] + encode_context(ctx())
    assert aead.decrypt(b"\x00" * 12, first, aad + (0).to_bytes(8, "big") + b"\x00") == b"x" * SMALL
    assert aead.decrypt(b"\x00" * 11 + b"\x01", last, aad + (1).to_bytes(8, "big") + b"\x01") == b"xxx"
    assert stored[12:24] == b"\x09" * 12


def test_an_opener_holds_its_key_in_this_process_only(alice: UserKey) -> None:
    stored = seal_bytes(alice, ctx(), b"picture bytes")
    opener = open_envelope(alice, ctx(), stored[:ENVELOPE_SIZE])
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            attempt(opener)
    assert "picture" not in repr(opener) and str(opener.chunk_size) in repr(opener)
