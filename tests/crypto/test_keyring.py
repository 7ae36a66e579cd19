from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from crypto import InvalidKeyMaterial, InvalidToken, RootKeyRing, UserKey, blind_index
from crypto.user_key import key_bytes

K1, K2, K3 = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))


def _forms(key: bytes) -> list[str]:
    """Ways a key could show up in a message."""
    return [
        key.hex(),
        key.hex().upper(),
        base64.b64encode(key).decode().rstrip("="),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        repr(key)[2:-1],
    ]


def _assert_hidden(error: Exception, *keys: bytes) -> None:
    message = str(error) + repr(error)
    for key in keys:
        for form in _forms(key):
            assert form[:16] not in message
    # A chained exception could carry the key file (JSONDecodeError.doc, UnicodeDecodeError.object).
    assert error.__context__ is None and error.__cause__ is None


def test_json_round_trip() -> None:
    ring = RootKeyRing({2: K2, 1: K1}, primary=2)
    again = RootKeyRing.from_json(ring.to_json())
    assert (again.versions, again.primary) == ((1, 2), 2)
    assert again.to_json() == ring.to_json()
    assert RootKeyRing.from_json(ring.to_json().encode()).to_json() == ring.to_json()
    doc = json.loads(ring.to_json())
    assert doc == {
        "primary": 2,
        "keys": {"1": base64.urlsafe_b64encode(K1).decode(), "2": base64.urlsafe_b64encode(K2).decode()},
    }


@pytest.mark.parametrize(
    "text",
    [
        base64.urlsafe_b64encode(K3).decode(),
        base64.urlsafe_b64encode(K3).decode().rstrip("=") + "\n",
        " " + base64.b64encode(K3).decode() + "\r\n",
        json.dumps(base64.urlsafe_b64encode(K3).decode()),
    ],
    ids=["urlsafe", "unpadded with newline", "standard alphabet", "JSON string"],
)
def test_a_single_base64_key_means_version_1(text: str) -> None:
    ring = RootKeyRing.from_json(text)
    assert (ring.versions, ring.primary) == ((1,), 1)
    assert json.loads(ring.to_json())["keys"]["1"] == base64.urlsafe_b64encode(K3).decode()


def _ring_json(primary: object = 1, **keys: object) -> str:
    return json.dumps({"primary": primary, "keys": keys})


SHORT = base64.urlsafe_b64encode(K1[:31]).decode()
GOOD = base64.urlsafe_b64encode(K1).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "not base64!",
        "A" * 42 + "===",
        "A" * 41,
        SHORT,
        base64.urlsafe_b64encode(K1 + b"\x00").decode(),
        _ring_json(**{"1": SHORT}),
        _ring_json(**{"1": GOOD + "!"}),
        _ring_json(**{"1": 12}),
        _ring_json(primary=2, **{"1": GOOD}),
        _ring_json(primary="1", **{"1": GOOD}),
        _ring_json(primary=True, **{"1": GOOD}),
        _ring_json(),
        _ring_json(**{"01": GOOD}),
        _ring_json(**{"0": GOOD}),
        _ring_json(**{"-1": GOOD}),
        _ring_json(**{"4294967296": GOOD}),
        _ring_json(**{"1": GOOD, "2": GOOD}),
        f'{{"primary": 1, "keys": {{"1": "{GOOD}", "1": "{GOOD}"}}}}',
        f'{{"primary": 1, "keys": {{"1": "{GOOD}"}}, "extra": 0}}',
        f'{{"primary": 1, "keys": ["{GOOD}"]}}',
        f'["{GOOD}"]',
        b'\xff{"primary": 1}',
    ],
)
def test_bad_json_or_keys_raise_invalid_key_material_without_the_key(text: str | bytes) -> None:
    with pytest.raises(InvalidKeyMaterial) as excinfo:
        RootKeyRing.from_json(text)
    _assert_hidden(excinfo.value, K1)
    assert isinstance(excinfo.value, ValueError)


def test_constructor_checks() -> None:
    bad: list[tuple[object, object]] = [
        ({}, 1),
        ({1: K1[:31]}, 1),
        ({1: K1 + b"\x00"}, 1),
        ({1: K1.hex()}, 1),
        ({0: K1}, 0),
        ({2**32: K1}, 2**32),
        ({"1": K1}, 1),
        ({1: K1}, 2),
        ({1: K1}, True),
        ({1: K1, 2: K1}, 1),
        ([(1, K1)], 1),
    ]
    for keys, primary in bad:
        with pytest.raises(InvalidKeyMaterial) as excinfo:
            RootKeyRing(keys, primary)  # type: ignore[arg-type]
        _assert_hidden(excinfo.value, K1)
    assert RootKeyRing({2**32 - 1: K1}, primary=2**32 - 1).versions == (2**32 - 1,)


def test_generate() -> None:
    ring = RootKeyRing.generate()
    assert (ring.versions, ring.primary) == ((1,), 1)
    assert RootKeyRing.generate().to_json() != ring.to_json()


def test_rotation_steps() -> None:
    ring = RootKeyRing({1: K1}, primary=1)
    added = ring.with_new_version()
    assert (added.versions, added.primary) == ((1, 2), 1)
    assert (ring.versions, ring.primary) == ((1,), 1)  # rings are immutable
    promoted = added.promote(2)
    assert promoted.primary == 2
    retired = promoted.retire(1)
    assert (retired.versions, retired.primary) == ((2,), 2)
    assert RootKeyRing({1: K1, 5: K2}, primary=1).with_new_version().versions == (1, 5, 6)


def test_rotation_refusals() -> None:
    ring = RootKeyRing({1: K1, 2: K2}, primary=2)
    steps: list[Callable[[], RootKeyRing]] = [
        lambda: ring.retire(2),
        lambda: ring.retire(3),
        lambda: ring.promote(3),
    ]
    for step in steps:
        with pytest.raises(InvalidKeyMaterial) as excinfo:
            step()
        _assert_hidden(excinfo.value, K1, K2)
    with pytest.raises(InvalidKeyMaterial):
        RootKeyRing({2**32 - 1: K1}, primary=2**32 - 1).with_new_version()


def test_wrap_and_unwrap_a_user_key() -> None:
    ring = RootKeyRing({1: K1, 2: K2}, primary=2)
    user_key = UserKey.generate(7, 3)
    blob = ring.wrap_user_key(user_key)
    assert len(blob) == 68 and RootKeyRing.root_version_of(blob) == 2
    back = ring.unwrap_user_key(blob, user_id=7, version=3)
    assert (back.user_id, back.version, key_bytes(back)) == (7, 3, key_bytes(user_key))
    assert ring.wrap_user_key(user_key) != blob


def test_unwrap_fails_for_another_user_or_version() -> None:
    ring = RootKeyRing({1: K1}, primary=1)
    blob = ring.wrap_user_key(UserKey.generate(7, 3))
    for user_id, version in [(8, 3), (7, 2), (7, 4), (0, 3)]:
        with pytest.raises(InvalidToken):
            ring.unwrap_user_key(blob, user_id=user_id, version=version)


def test_unwrap_fails_after_tampering_truncation_or_under_another_ring() -> None:
    ring = RootKeyRing({1: K1}, primary=1)
    blob = ring.wrap_user_key(UserKey.generate(7, 3))
    for index in range(len(blob)):
        with pytest.raises(InvalidToken):
            ring.unwrap_user_key(blob[:index] + bytes([blob[index] ^ 1]) + blob[index + 1 :], user_id=7, version=3)
    for size in range(len(blob)):
        with pytest.raises(InvalidToken):
            ring.unwrap_user_key(blob[:size], user_id=7, version=3)
    with pytest.raises(InvalidToken):
        RootKeyRing({1: K2}, primary=1).unwrap_user_key(blob, user_id=7, version=3)


def test_old_versions_unwrap_until_retired() -> None:
    ring = RootKeyRing({1: K1}, primary=1)
    user_key = UserKey.generate(7, 1)
    old_blob = ring.wrap_user_key(user_key)
    rotated = ring.with_new_version().promote(2)
    new_blob = rotated.wrap_user_key(user_key)
    assert RootKeyRing.root_version_of(new_blob) == 2
    assert key_bytes(rotated.unwrap_user_key(old_blob, user_id=7, version=1)) == key_bytes(user_key)
    retired = rotated.retire(1)
    assert key_bytes(retired.unwrap_user_key(new_blob, user_id=7, version=1)) == key_bytes(user_key)
    with pytest.raises(InvalidToken):
        retired.unwrap_user_key(old_blob, user_id=7, version=1)
    with pytest.raises(InvalidToken):  # a version this ring never had
        RootKeyRing({3: K3}, primary=3).unwrap_user_key(new_blob, user_id=7, version=1)


def test_blind_indexes_are_keyed_per_root_version_and_purpose() -> None:
    ring = RootKeyRing({1: K1, 2: K2}, primary=2)
    value = "ida@example.com"
    under_primary = ring.blind_index("email", value)
    assert len(under_primary) == 32 and under_primary == ring.blind_index("email", value, version=2)
    assert ring.blind_indexes("email", value) == {1: ring.blind_index("email", value, version=1), 2: under_primary}
    assert len(set(ring.blind_indexes("email", value).values())) == 2  # each version its own key
    assert ring.blind_index("phone", value) != under_primary  # each purpose its own key
    assert ring.blind_index("email", "jo@example.com") != under_primary
    # The key is derived from the root key alone: another ring with the same key gives the same index.
    assert RootKeyRing({2: K2}, primary=2).blind_index("email", value) == under_primary
    assert blind_index(K2, value) != under_primary  # not the root key itself
    with pytest.raises(InvalidKeyMaterial):
        ring.blind_index("email", value, version=3)
    with pytest.raises(InvalidKeyMaterial):  # retired: its indexes can no longer be made
        ring.retire(1).blind_index("email", value, version=1)
    for purpose in ("", "Email", "e mail", "x" * 40):
        with pytest.raises(ValueError):
            ring.blind_index(purpose, value)


def test_blind_index_vector() -> None:
    """Fixed: a change of derivation would make every stored index unfindable. Computed by hand with hmac:
    HKDF-SHA256 (no salt, info "cipherfeed-blind-index-key-v1\\0email") of the root key, then HMAC-SHA256 of
    "cipherfeed-blind-index-v1\\0" + the value."""
    index = RootKeyRing({1: K1}, primary=1).blind_index("email", "ida@example.com")
    assert index.hex() == "0c1ff20121c4a9bb5ef12c9e7828a2f8941d6b2a7908f85f7eaf37fbca3bf9ff"


def test_root_version_of_rejects_malformed_blobs() -> None:
    blob = RootKeyRing({1: K1}, primary=1).wrap_user_key(UserKey.generate(7, 1))
    for bad in [
        b"",
        blob[:-1],
        blob + b"\x00",
        b"CF" + blob[2:],
        blob[:2] + b"\x02" + blob[3:],
        blob[:3] + b"\x02" + blob[4:],
        blob[:4] + b"\x00\x00\x00\x00" + blob[8:],
    ]:
        with pytest.raises(InvalidToken):
            RootKeyRing.root_version_of(bad)
