"""Where a sealed field belongs, and its canonical encoding as associated data."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._checks import U64_MAX, check_int, encode_utf8

MAX_FIELD_NAME_SIZE = 255
"""Bytes of UTF-8, inclusive."""

_NAME_LENGTH = struct.Struct(">H")
_NUMBERS = struct.Struct(">QQQ")


@dataclass(frozen=True, slots=True)
class FieldContext:
    """The row a sealed field belongs to. It is never stored in the blob but rebuilt from the row when
    opening, so a blob copied to another field, object, owner or revision does not open.

    ``field`` is a non-empty name of at most 255 UTF-8 bytes; the three numbers are in 0..2**64-1 (inclusive).
    """

    field: str
    object_id: int
    owner_id: int
    revision: int

    def __post_init__(self) -> None:
        if not isinstance(self.field, str):
            raise TypeError(f"field must be a str, not {type(self.field).__name__}")
        name = encode_utf8(self.field)
        if not name or len(name) > MAX_FIELD_NAME_SIZE:
            raise ValueError(f"field must be 1..{MAX_FIELD_NAME_SIZE} bytes of UTF-8, got {self.field!r}")
        check_int("object_id", self.object_id, 0, U64_MAX)
        check_int("owner_id", self.owner_id, 0, U64_MAX)
        check_int("revision", self.revision, 0, U64_MAX)


def encode_context(ctx: FieldContext) -> bytes:
    """u16 length || field name (UTF-8) || object_id u64 || owner_id u64 || revision u64, all big-endian.

    Injective: the length prefix and the fixed-width numbers leave one way to read any encoding.
    """
    name = ctx.field.encode("utf-8")  # checked encodable in __post_init__
    return _NAME_LENGTH.pack(len(name)) + name + _NUMBERS.pack(ctx.object_id, ctx.owner_id, ctx.revision)
