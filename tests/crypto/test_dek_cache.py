"""The data keys a user key remembers: repeat opens skip the unwrap, and nothing else changes."""

from __future__ import annotations

import copy
import pickle

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import crypto.sealing
from crypto import FieldContext, InvalidToken, Sealed, UserKey, open_field, rewrap, seal_fields
from crypto._dek_cache import DEK_CACHE_SIZE, DataKeyCache
from crypto.context import encode_context
from crypto.user_key import dek_cache, key_bytes

ALICE = 11
POST = 500
BODY = "<p>cached café 🐍</p>"
CW = "spoilers"


class CountingRng:
    def __init__(self) -> None:
        self.outputs: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = bytes([len(self.outputs) + 1]) * n
        self.outputs.append(out)
        return out


def _ctx(field: str = "body", object_id: int = POST, revision: int = 1) -> FieldContext:
    return FieldContext(field, object_id, ALICE, revision)


def _seal(key: UserKey, *, object_id: int = POST, revision: int = 1) -> dict[str, Sealed]:
    return seal_fields(key, {"body": BODY, "cw": CW}, object_id=object_id, owner_id=ALICE, revision=revision)


def _flipped(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.fixture
def unwraps(monkeypatch: pytest.MonkeyPatch) -> list[UserKey]:
    """The user keys whose AES-GCM object crypto.sealing asked for: once per unwrap when opening (sealing asks
    too, so tests empty the list after sealing)."""
    seen: list[UserKey] = []
    real = crypto.sealing.key_aead

    def counting(key: UserKey) -> AESGCM:
        seen.append(key)
        return real(key)

    monkeypatch.setattr(crypto.sealing, "key_aead", counting)
    return seen


def test_a_repeat_open_skips_the_unwrap_and_gives_the_same_text(unwraps: list[UserKey]) -> None:
    key = UserKey.generate(ALICE, 1)
    blobs = _seal(key)
    unwraps.clear()
    assert len(dek_cache(key)) == 0  # sealing remembers nothing
    assert open_field(key, blobs["body"], _ctx()) == BODY
    assert (len(unwraps), len(dek_cache(key))) == (1, 1)
    for _ in range(3):
        assert open_field(key, blobs["body"], _ctx()) == BODY
        assert open_field(key, blobs["body"].data, _ctx()) == BODY  # bytes or Sealed alike
    assert (len(unwraps), len(dek_cache(key))) == (1, 1)
    # The cw shares the body's DEK but has its own wrap nonce and context: its own entry.
    assert open_field(key, blobs["cw"], _ctx("cw")) == CW
    assert open_field(key, blobs["cw"], _ctx("cw")) == CW
    assert (len(unwraps), len(dek_cache(key))) == (2, 2)


def test_every_changed_byte_still_fails_when_the_data_key_is_cached(unwraps: list[UserKey]) -> None:
    key = UserKey.generate(ALICE, 1)
    data = _seal(key)["body"].data
    unwraps.clear()
    assert open_field(key, data, _ctx()) == BODY
    for index in range(len(data)):
        with pytest.raises(InvalidToken):
            open_field(key, _flipped(data, index), _ctx())
    with pytest.raises(InvalidToken):
        open_field(key, data + b"\x00", _ctx())
    with pytest.raises(InvalidToken):
        open_field(key, data[:-1], _ctx())
    # A change after the wrapped DEK hits the cache and is caught by the field's own tag; a change before it
    # misses, fails to unwrap, and leaves nothing in the cache.
    assert len(dek_cache(key)) == 1
    assert len(unwraps) == 1 + 68 - 8  # a changed header byte (0..7) is refused before any unwrap
    assert open_field(key, data, _ctx()) == BODY


@pytest.mark.parametrize(
    "moved",
    [_ctx(object_id=POST + 1), _ctx("cw"), _ctx("email"), _ctx(revision=2), _ctx(revision=0)],
    ids=["other post", "other field", "account field", "newer revision", "older revision"],
)
def test_a_moved_blob_fails_when_its_data_key_is_cached(moved: FieldContext, unwraps: list[UserKey]) -> None:
    key = UserKey.generate(ALICE, 1)
    blob = _seal(key)["body"]
    assert open_field(key, blob, _ctx()) == BODY
    unwraps.clear()
    with pytest.raises(InvalidToken):
        open_field(key, blob, moved)
    assert len(unwraps) == 1  # another context misses the cache: the unwrap itself refuses it
    assert len(dek_cache(key)) == 1


@pytest.mark.parametrize(
    "moved",
    [_ctx(object_id=POST + 1), _ctx("cw"), _ctx(revision=2)],
    ids=["other post", "other field", "newer revision"],
)
def test_the_field_tag_binds_the_context_even_if_the_cache_handed_out_the_data_key(moved: FieldContext) -> None:
    # The cache key includes the context, so this cannot happen through open_field; plant the entry by hand to
    # check the second line of defence: the field's associated data.
    key = UserKey.generate(ALICE, 1)
    rng = CountingRng()
    blob = seal_fields(key, {"body": BODY}, object_id=POST, owner_id=ALICE, revision=1, rng=rng)["body"]
    dek = rng.outputs[0]
    dek_cache(key).put(blob.data[:68] + encode_context(moved), AESGCM(dek))
    with pytest.raises(InvalidToken):
        open_field(key, blob, moved)
    assert open_field(key, blob, _ctx()) == BODY


def test_a_cached_data_key_belongs_to_one_user_key_object() -> None:
    key = UserKey.generate(ALICE, 1)
    blob = _seal(key)["body"]
    assert open_field(key, blob, _ctx()) == BODY
    impostor = UserKey(ALICE, 1, bytes(32))
    with pytest.raises(InvalidToken):
        open_field(impostor, blob, _ctx())
    assert len(dek_cache(impostor)) == 0
    same = UserKey(ALICE, 1, key_bytes(key))  # same secret, new object: unwraps on its own
    assert open_field(same, blob, _ctx()) == BODY and len(dek_cache(same)) == 1


def test_rewrapped_blobs_open_with_the_new_key_only() -> None:
    old, new = UserKey.generate(ALICE, 1), UserKey.generate(ALICE, 2)
    blob = _seal(old)["body"]
    assert open_field(old, blob, _ctx()) == BODY
    moved = rewrap(blob, _ctx(), old, new)
    assert open_field(new, moved, _ctx()) == BODY
    with pytest.raises(InvalidToken):
        open_field(old, moved, _ctx())
    with pytest.raises(InvalidToken):
        open_field(UserKey(ALICE, 2, key_bytes(old)), moved, _ctx())


def test_the_cache_of_a_user_key_is_bounded() -> None:
    key = UserKey.generate(ALICE, 1)
    blobs = [
        seal_fields(key, {"body": f"post {i}"}, object_id=i, owner_id=ALICE, revision=1)["body"]
        for i in range(DEK_CACHE_SIZE + 5)
    ]
    for i, blob in enumerate(blobs):
        assert open_field(key, blob, _ctx(object_id=i)) == f"post {i}"
        assert len(dek_cache(key)) == min(i + 1, DEK_CACHE_SIZE)
    for i, blob in enumerate(blobs):  # the dropped ones unwrap again
        assert open_field(key, blob, _ctx(object_id=i)) == f"post {i}"
    assert len(dek_cache(key)) == DEK_CACHE_SIZE


def test_least_recently_used_goes_first() -> None:
    cache = DataKeyCache(size=3)
    aeads = {name: AESGCM(AESGCM.generate_key(bit_length=256)) for name in (b"a", b"b", b"c", b"d", b"e")}
    for name in (b"a", b"b", b"c"):
        cache.put(name, aeads[name])
    assert cache.get(b"a") is aeads[b"a"]  # now the most recent
    cache.put(b"d", aeads[b"d"])
    assert cache.get(b"b") is None and len(cache) == 3
    assert cache.get(b"a") is aeads[b"a"] and cache.get(b"c") is aeads[b"c"] and cache.get(b"d") is aeads[b"d"]
    cache.put(b"e", aeads[b"e"])
    assert cache.get(b"a") is None and len(cache) == 3
    cache.clear()
    assert len(cache) == 0 and cache.get(b"e") is None
    with pytest.raises(ValueError):
        DataKeyCache(size=0)


def test_a_user_key_with_cached_data_keys_still_cannot_be_pickled_or_copied() -> None:
    key = UserKey.generate(ALICE, 1)
    assert open_field(key, _seal(key)["body"], _ctx()) == BODY
    cache = dek_cache(key)
    assert len(cache) == 1
    for holder in (key, cache, {"nested": [key]}):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError):
                pickle.dumps(holder, protocol=protocol)
        with pytest.raises(TypeError):
            copy.deepcopy(holder)
    for holder in (key, cache):
        with pytest.raises(TypeError):
            copy.copy(holder)
        assert not hasattr(holder, "__dict__")
    assert repr(key) == "UserKey(user_id=11, version=1)"
    assert repr(cache) == f"DataKeyCache(1 of {DEK_CACHE_SIZE} entries)"
