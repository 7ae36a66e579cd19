from __future__ import annotations

import copy
import pickle

import pytest

from crypto import InvalidToken, Sealed, UserKey, seal_fields


def _blob(version: int = 3) -> Sealed:
    key = UserKey.generate(1, version)
    return seal_fields(key, {"body": "hello"}, object_id=2, owner_id=1, revision=0)["body"]


def test_properties_and_dunders() -> None:
    blob = _blob()
    assert blob.key_version == 3 and blob.format_version == 1
    assert bytes(blob) == blob.data and len(blob) == len(blob.data) == 80 + 5 + 16
    assert repr(blob) == str(blob) == f"Sealed({len(blob)} bytes, key_version=3)"
    again = Sealed(bytearray(blob.data))  # type: ignore[arg-type]  # bytes-like is accepted
    assert again == blob and hash(again) == hash(blob) and type(again.data) is bytes
    assert blob != _blob() and blob != blob.data
    assert Sealed(memoryview(blob.data)) == blob  # type: ignore[arg-type]


def test_is_immutable() -> None:
    blob = _blob()
    with pytest.raises(AttributeError):
        blob._data = b"x" * 200
    with pytest.raises(AttributeError):
        del blob._key_version
    with pytest.raises(AttributeError):
        blob.other = 1


def test_pickles_and_copies_through_validation() -> None:
    blob = _blob()
    assert pickle.loads(pickle.dumps(blob)) == blob
    assert copy.copy(blob) == blob and copy.deepcopy(blob) == blob


@pytest.mark.parametrize(
    ("offset", "value"),
    [(0, ord("X")), (1, ord("X")), (2, 0), (2, 2), (3, 0), (3, 2)],
    ids=["magic 0", "magic 1", "format 0", "format 2", "alg 0", "alg 2"],
)
def test_rejects_an_unknown_header(offset: int, value: int) -> None:
    data = bytearray(_blob().data)
    data[offset] = value
    with pytest.raises(InvalidToken):
        Sealed(bytes(data))


def test_rejects_key_version_zero_short_blobs_and_other_types() -> None:
    data = _blob().data
    with pytest.raises(InvalidToken):
        Sealed(data[:4] + b"\x00\x00\x00\x00" + data[8:])
    for size in range(96):
        with pytest.raises(InvalidToken):
            Sealed(data[:size])
    assert len(Sealed(data[:96])) == 96  # the empty string's size parses (whether it opens is another matter)
    with pytest.raises(TypeError):
        Sealed(data.hex())  # type: ignore[arg-type]
