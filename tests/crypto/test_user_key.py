from __future__ import annotations

import dataclasses

import pytest

from crypto import FieldContext, InvalidKeyMaterial, UserKey
from crypto.context import encode_context
from crypto.user_key import key_bytes


def test_generate() -> None:
    key = UserKey.generate(7, 2)
    assert (key.user_id, key.version) == (7, 2)
    assert len(key_bytes(key)) == 32 and key_bytes(key) != key_bytes(UserKey.generate(7, 2))
    assert key_bytes(UserKey.generate(7, 2, rng=lambda n: b"\x05" * n)) == b"\x05" * 32


def test_fields_are_read_only() -> None:
    key = UserKey.generate(7, 2)
    with pytest.raises(AttributeError):
        key.version = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        key.extra = 1  # type: ignore[attr-defined]


def test_checks() -> None:
    with pytest.raises(InvalidKeyMaterial):
        UserKey(7, 1, b"\x00" * 31)
    with pytest.raises(InvalidKeyMaterial):
        UserKey(7, 1, "00" * 32)  # type: ignore[arg-type]
    for user_id, version in [(-1, 1), (2**64, 1), (7, 0), (7, 2**32)]:
        with pytest.raises(ValueError):
            UserKey.generate(user_id, version)
    with pytest.raises(TypeError):
        UserKey.generate(7, True)
    assert UserKey.generate(0, 2**32 - 1).version == 2**32 - 1


def test_field_context_is_frozen_and_checked() -> None:
    ctx = FieldContext("body", 1, 2, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.revision = 4  # type: ignore[misc]
    out_of_range: list[tuple[str, int, int, int]] = [
        ("", 1, 2, 3),
        ("x" * 256, 1, 2, 3),
        ("\ud800", 1, 2, 3),
        ("body", -1, 2, 3),
        ("body", 1, 2**64, 3),
        ("body", 1, 2, -1),
    ]
    for args in out_of_range:
        with pytest.raises(ValueError):
            FieldContext(*args)
    wrong_type: list[tuple[object, ...]] = [
        (b"body", 1, 2, 3),
        (["body"], 1, 2, 3),
        ("body", 1.0, 2, 3),
        ("body", 1, True, 3),
    ]
    for bad in wrong_type:
        with pytest.raises(TypeError):
            FieldContext(*bad)  # type: ignore[arg-type]
    assert FieldContext("é" * 127, 0, 0, 0).field == "é" * 127


def test_context_encoding_is_unambiguous() -> None:
    assert encode_context(FieldContext("body", 1, 2, 3)) == (
        b"\x00\x04body" + (1).to_bytes(8, "big") + (2).to_bytes(8, "big") + (3).to_bytes(8, "big")
    )
    contexts = [
        FieldContext("body", 1, 2, 3),
        FieldContext("body", 2, 1, 3),
        FieldContext("body", 1, 3, 2),
        FieldContext("bod", 1, 2, 3),
        FieldContext("body\x00", 1, 2, 3),
        FieldContext("cw", 1, 2, 3),
    ]
    assert len({encode_context(ctx) for ctx in contexts}) == len(contexts)


def test_context_encoding_of_unusual_names_and_numbers() -> None:
    class Sneaky(str):
        # Equal to, and hashing like, every known name: must still be encoded as itself.
        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("body")

    class Number(int):
        pass

    FieldContext("body", 1, 2, 3)
    assert encode_context(FieldContext(Sneaky("cw"), 1, 2, 3)) == encode_context(FieldContext("cw", 1, 2, 3))
    numbered = FieldContext("body", Number(1), Number(2), Number(3))  # int subclasses were always accepted
    assert encode_context(numbered) == encode_context(FieldContext("body", 1, 2, 3))
    for i in range(200):  # more names than the encoder remembers
        name = f"field-{i}-é"
        raw = name.encode("utf-8")
        assert encode_context(FieldContext(name, i, 2, 3)) == (
            len(raw).to_bytes(2, "big") + raw + i.to_bytes(8, "big") + (2).to_bytes(8, "big") + (3).to_bytes(8, "big")
        )
    with pytest.raises(ValueError):
        FieldContext("x" * 256, 1, 2, 3)
