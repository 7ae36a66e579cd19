"""Where a sealed field belongs, and its canonical encoding as associated data."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._checks import U64_MAX, check_int, encode_utf8

MAX_FIELD_NAME_SIZE = 255
"""Bytes of UTF-8, inclusive."""

_NAME_LENGTH = struct.Struct(">H")
_NUMBERS = struct.Struct(">QQQ")

_NAME_PREFIXES: dict[str, bytes] = {}
"""Checked field names (exact str instances) -> u16 length || UTF-8 name. Field names are a handful of
constants ("body", "cw", "email"); past :data:`_MAX_NAME_PREFIXES` names nothing more is remembered."""
_MAX_NAME_PREFIXES = 64


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
        # Built once per opened field: the common case (a known name, plain ints) takes the short path.
        if type(self.field) is not str or self.field not in _NAME_PREFIXES:
            _name_prefix(self.field)
        object_id, owner_id, revision = self.object_id, self.owner_id, self.revision
        if not (
            type(object_id) is int
            and type(owner_id) is int
            and type(revision) is int
            and 0 <= object_id <= U64_MAX
            and 0 <= owner_id <= U64_MAX
            and 0 <= revision <= U64_MAX
        ):
            check_int("object_id", object_id, 0, U64_MAX)
            check_int("owner_id", owner_id, 0, U64_MAX)
            check_int("revision", revision, 0, U64_MAX)


def encode_context(ctx: FieldContext) -> bytes:
    """u16 length || field name (UTF-8) || object_id u64 || owner_id u64 || revision u64, all big-endian.

    Injective: the length prefix and the fixed-width numbers leave one way to read any encoding.
    """
    field = ctx.field
    prefix = _NAME_PREFIXES.get(field) if type(field) is str else None
    if prefix is None:
        prefix = _name_prefix(field)
    return prefix + _NUMBERS.pack(ctx.object_id, ctx.owner_id, ctx.revision)


def _name_prefix(field: object) -> bytes:
    """u16 length || UTF-8 of ``field``, checked; remembered if ``field`` is an exact str."""
    if not isinstance(field, str):
        raise TypeError(f"field must be a str, not {type(field).__name__}")
    name = encode_utf8(field)
    if not name or len(name) > MAX_FIELD_NAME_SIZE:
        raise ValueError(f"field must be 1..{MAX_FIELD_NAME_SIZE} bytes of UTF-8, got {field!r}")
    prefix = _NAME_LENGTH.pack(len(name)) + name
    if type(field) is str and len(_NAME_PREFIXES) < _MAX_NAME_PREFIXES:
        _NAME_PREFIXES[field] = prefix
    return prefix
