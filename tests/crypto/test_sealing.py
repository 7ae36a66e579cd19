from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto import (
    FieldContext,
    InvalidToken,
    Sealed,
    UserKey,
    open_field,
    open_fields,
    rewrap,
    seal_beside,
    seal_fields,
)
from crypto.context import encode_context
from crypto.sealed import HEADER, WRAP_NONCE, WRAPPED_DEK
from crypto.user_key import key_bytes

ALICE, BOB = 11, 12
POST = 500
BODY = "<p>Hello & welcome — café 🐍</p>"
CW = "politics"


class RecordingRng:
    """Counts the sizes asked for and returns distinct bytes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.outputs: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        self.sizes.append(n)
        out = bytes([len(self.sizes)]) * n
        self.outputs.append(out)
        return out


def _seal(key: UserKey, *, object_id: int = POST, revision: int = 1) -> dict[str, Sealed]:
    return seal_fields(key, {"body": BODY, "cw": CW}, object_id=object_id, owner_id=key.user_id, revision=revision)


def _ctx(field: str = "body", object_id: int = POST, owner_id: int = ALICE, revision: int = 1) -> FieldContext:
    return FieldContext(field, object_id, owner_id, revision)


def _flipped(data: bytes, index: int, mask: int) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def test_seal_then_open_each_field() -> None:
    key = UserKey.generate(ALICE, 1)
    blobs = _seal(key)
    assert open_field(key, blobs["body"], _ctx("body")) == BODY
    assert open_field(key, blobs["cw"].data, _ctx("cw")) == CW
    assert open_fields(key, blobs, object_id=POST, owner_id=ALICE, revision=1) == {"body": BODY, "cw": CW}


def test_empty_text_and_empty_mapping() -> None:
    key = UserKey.generate(ALICE, 1)
    blob = seal_fields(key, {"cw": ""}, object_id=POST, owner_id=ALICE, revision=1)["cw"]
    assert open_field(key, blob, _ctx("cw")) == ""
    rng = RecordingRng()
    assert seal_fields(key, {}, object_id=POST, owner_id=ALICE, revision=1, rng=rng) == {}
    assert rng.sizes == []


def test_one_fresh_data_key_per_call_and_fresh_nonces_per_field() -> None:
    key = UserKey.generate(ALICE, 1)
    rng = RecordingRng()
    blobs = seal_fields(key, {"body": BODY, "cw": CW}, object_id=POST, owner_id=ALICE, revision=1, rng=rng)
    assert rng.sizes == [32, 12, 12, 12, 12]
    _dek, body_wrap_nonce, body_data_nonce, cw_wrap_nonce, cw_data_nonce = rng.outputs
    assert blobs["body"].data[8:20] == body_wrap_nonce and blobs["body"].data[68:80] == body_data_nonce
    assert blobs["cw"].data[8:20] == cw_wrap_nonce and blobs["cw"].data[68:80] == cw_data_nonce
    first, second = _seal(key), _seal(key)
    assert first["body"] != second["body"]


def test_owner_must_be_the_key_owner() -> None:
    with pytest.raises(ValueError, match="owner_id"):
        seal_fields(UserKey.generate(ALICE, 1), {"body": BODY}, object_id=POST, owner_id=BOB, revision=1)


def test_texts_must_be_str_and_encodable() -> None:
    key = UserKey.generate(ALICE, 1)
    with pytest.raises(TypeError):
        seal_fields(key, {"body": b"bytes"}, object_id=POST, owner_id=ALICE, revision=1)  # type: ignore[dict-item]
    with pytest.raises(ValueError) as excinfo:
        seal_fields(key, {"body": "secret \ud800 text"}, object_id=POST, owner_id=ALICE, revision=1)
    assert "secret" not in str(excinfo.value)
    assert excinfo.value.__context__ is None and excinfo.value.__cause__ is None


@pytest.mark.parametrize(
    "ctx",
    [
        _ctx(object_id=POST + 1),
        _ctx(field="cw"),
        _ctx(field="email"),
        _ctx(owner_id=BOB),
        _ctx(revision=2),
        _ctx(revision=0),
    ],
    ids=["other post", "other field", "account field", "other owner", "newer revision", "older revision"],
)
def test_a_blob_opens_only_in_its_own_context(ctx: FieldContext) -> None:
    key = UserKey.generate(ALICE, 1)
    with pytest.raises(InvalidToken):
        open_field(key, _seal(key)["body"], ctx)


def test_a_blob_moved_to_another_author_does_not_open_with_their_key() -> None:
    alice, bob = UserKey.generate(ALICE, 1), UserKey.generate(BOB, 1)
    with pytest.raises(InvalidToken):
        open_field(bob, _seal(alice)["body"], _ctx(owner_id=BOB))


def test_an_old_revision_replayed_under_a_newer_revision_number_fails() -> None:
    key = UserKey.generate(ALICE, 1)
    old, new = _seal(key, revision=1), _seal(key, revision=2)
    assert open_field(key, new["body"], _ctx(revision=2)) == BODY
    with pytest.raises(InvalidToken):
        open_field(key, old["body"], _ctx(revision=2))


def test_every_single_byte_flip_fails() -> None:
    key = UserKey.generate(ALICE, 1)
    data = _seal(key)["body"].data
    for index in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            with pytest.raises(InvalidToken):
                open_field(key, _flipped(data, index, mask), _ctx())


def test_every_header_bit_flip_fails_even_with_a_key_of_the_flipped_version() -> None:
    # Same secret under the version the flipped header names: only the authenticated header can catch it.
    key = UserKey.generate(ALICE, 1)
    data = _seal(key)["body"].data
    for index in range(8):
        for bit in range(8):
            tampered = _flipped(data, index, 1 << bit)
            version = struct.unpack(">I", tampered[4:8])[0]
            keys = [key]
            if index >= 4 and version:
                keys.append(UserKey(ALICE, version, key_bytes(key)))
            for candidate in keys:
                with pytest.raises(InvalidToken):
                    open_field(candidate, tampered, _ctx())


def test_truncated_or_extended_blobs_fail() -> None:
    key = UserKey.generate(ALICE, 1)
    data = _seal(key)["body"].data
    for size in range(len(data)):
        with pytest.raises(InvalidToken):
            open_field(key, data[:size], _ctx())
    with pytest.raises(InvalidToken):
        open_field(key, data + b"\x00", _ctx())


def test_wrong_user_key_version_or_secret_fails() -> None:
    key = UserKey.generate(ALICE, 1)
    blob = _seal(key)["body"]
    with pytest.raises(InvalidToken):
        open_field(UserKey(ALICE, 2, key_bytes(key)), blob, _ctx())
    with pytest.raises(InvalidToken):
        open_field(UserKey.generate(ALICE, 1), blob, _ctx())


def test_parts_spliced_between_blobs_fail() -> None:
    key = UserKey.generate(ALICE, 1)
    one, two = _seal(key), _seal(key, object_id=POST + 1)
    # The wrapped data key of another post, with this post's ciphertext.
    with pytest.raises(InvalidToken):
        open_field(key, two["body"].data[:68] + one["body"].data[68:], _ctx())
    # Body and cw share a data key: the cw ciphertext under the body's wrapped key still fails (field in AAD).
    with pytest.raises(InvalidToken):
        open_field(key, one["body"].data[:68] + one["cw"].data[68:], _ctx("body"))


def test_text_that_is_not_utf8_fails() -> None:
    key = UserKey.generate(ALICE, 1)
    rng = RecordingRng()
    blob = seal_fields(key, {"body": "x"}, object_id=POST, owner_id=ALICE, revision=1, rng=rng)["body"].data
    dek = rng.outputs[0]
    nonce = blob[68:80]
    bad = AESGCM(dek).encrypt(nonce, b"\xff\xfe not utf-8", b"\x01\x01" + encode_context(_ctx()))
    with pytest.raises(InvalidToken):
        open_field(key, blob[:80] + bad, _ctx())


def test_rewrap_keeps_the_text_and_ciphertext_and_changes_the_key_version() -> None:
    old, new = UserKey.generate(ALICE, 1), UserKey.generate(ALICE, 2)
    blob = _seal(old)["body"]
    moved = rewrap(blob, _ctx(), old, new)
    assert (blob.key_version, moved.key_version) == (1, 2)
    assert moved.data[68:] == blob.data[68:]
    assert open_field(new, moved, _ctx()) == BODY
    with pytest.raises(InvalidToken):
        open_field(old, moved, _ctx())
    with pytest.raises(InvalidToken):  # the old key under the new version number
        open_field(UserKey(ALICE, 2, key_bytes(old)), moved, _ctx())


def test_rewrap_fails_with_the_wrong_key_or_context() -> None:
    old, new = UserKey.generate(ALICE, 1), UserKey.generate(ALICE, 2)
    blob = _seal(old)["body"]
    with pytest.raises(InvalidToken):
        rewrap(blob, _ctx(), UserKey.generate(ALICE, 1), new)
    with pytest.raises(InvalidToken):
        rewrap(blob, _ctx(revision=2), old, new)
    with pytest.raises(InvalidToken):
        rewrap(blob, _ctx(), new, old)
    with pytest.raises(ValueError):
        rewrap(blob, _ctx(), old, UserKey.generate(BOB, 2))


def test_rewrap_draws_one_nonce() -> None:
    old, new = UserKey.generate(ALICE, 1), UserKey.generate(ALICE, 2)
    rng = RecordingRng()
    moved = rewrap(_seal(old)["body"], _ctx(), old, new, rng=rng)
    assert rng.sizes == [12] and moved.data[8:20] == rng.outputs[0]


def test_the_default_randomness_goes_through_the_one_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    import crypto._random

    rng = RecordingRng()
    monkeypatch.setattr(crypto._random, "random_bytes", rng)
    key = UserKey.generate(ALICE, 1)
    _seal(key)
    assert rng.sizes == [32, 32, 12, 12, 12, 12]


def test_a_short_rng_is_refused() -> None:
    with pytest.raises(ValueError):
        UserKey.generate(ALICE, 1, rng=lambda n: b"\x00" * (n - 1))


def test_seal_beside_shares_the_data_key_of_its_source() -> None:
    key = UserKey.generate(ALICE, 1)
    body = _seal(key)["body"]
    frame = seal_beside(key, body, _ctx("body"), "<article>derived</article>", _ctx("frame"))
    assert open_field(key, frame, _ctx("frame")) == "<article>derived</article>"
    for wrong in (_ctx("body"), _ctx("frame", revision=2), _ctx("frame", object_id=POST + 1)):
        with pytest.raises(InvalidToken):
            open_field(key, frame, wrong)
    # One data key: the frame's wrapped copy of it unwraps to the body's.
    wrap = AESGCM(key_bytes(key))

    def dek(blob: Sealed, field: str) -> bytes:
        data = blob.data
        aad = data[HEADER] + b"dek" + encode_context(_ctx(field))
        return wrap.decrypt(data[WRAP_NONCE], data[WRAPPED_DEK], aad)

    assert dek(frame, "frame") == dek(body, "body")


def test_seal_beside_refuses_another_revision_and_a_source_that_does_not_open() -> None:
    key = UserKey.generate(ALICE, 1)
    body = _seal(key)["body"]
    with pytest.raises(ValueError, match="its own object"):
        seal_beside(key, body, _ctx("body"), "x", _ctx("frame", revision=2))
    with pytest.raises(InvalidToken):
        seal_beside(key, _flipped(body.data, 20, 1), _ctx("body"), "x", _ctx("frame"))
    with pytest.raises(InvalidToken):  # another key of the same user and version
        seal_beside(UserKey.generate(ALICE, 1), body, _ctx("body"), "x", _ctx("frame"))
