"""Sealed streams: files (media originals and variants) sealed in chunks under a user key, opened chunk by chunk.

Envelope encryption as for fields (:mod:`crypto.sealing`), with the data part cut into chunks so that a file is
sealed and opened without holding it whole, and a byte range is opened by reading only the chunks it spans. Each
stream draws its own 256-bit data key (DEK); nothing else is ever sealed under it.

Layout, format version 1 (all integers big-endian)::

    offset  size  content
         0     2  magic b"CS"
         2     1  format version (1)
         3     1  algorithm id (1 = AES-256-GCM in chunks)
         4     4  version of the user key that wrapped the data key (u32, >= 1)
         8     4  plaintext bytes per chunk (u32, 1..16 MiB); every chunk but the last holds exactly that many
        12    12  wrap nonce
        24    48  data key encrypted under the user key (32 bytes + 16-byte tag)
        72     -  chunks: each its ciphertext (as long as its plaintext) and a 16-byte tag

Bytes 0..11 are the header. What each part authenticates:

* the DEK is wrapped with associated data ``header || b"stream-dek" || context``: a changed header (key version,
  chunk size) or a header moved to another file does not unwrap;
* chunk ``i`` is encrypted under the DEK with nonce ``u32 0 || u64 i`` and associated data
  ``format version || algorithm id || context || u64 i || final``, where ``final`` is 1 for the last chunk and 0
  for the others. Reordered chunks fail (the index is in the nonce and the data), a chunk moved to another file
  fails (another DEK, another context), and a stream cut at a chunk boundary fails: its new last chunk was sealed
  with ``final`` 0. A stream always has at least one chunk (an empty file is one empty final chunk).

The nonces are counters: safe because each DEK seals one stream only, once. ``context`` is
:func:`crypto.context.encode_context` of (field, object id, owner id, revision), rebuilt from the row, never
stored. As for fields, the chunks leave out the user key version, so that :func:`rewrap_header` moves a stream
to a new user key by rewriting its 72-byte header alone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._aes import KEY_SIZE, NONCE_SIZE, TAG_SIZE, decrypt_or_none
from ._random import Rng, draw
from ._unpicklable import Unpicklable
from .context import FieldContext, encode_context
from .errors import InvalidToken
from .user_key import UserKey, key_aead

MAGIC = b"CS"
FORMAT_VERSION = 1
ALG_AES_256_GCM_CHUNKED = 1
CHUNK_SIZE = 64 * 1024
"""Plaintext bytes per chunk of a new stream: small enough for a range request to read little more than it asks."""
MAX_CHUNK_SIZE = 16 * 1024 * 1024

_HEADER = struct.Struct(">2sBBII")
_HEADER_SIZE = _HEADER.size
_WRAP_NONCE_END = _HEADER_SIZE + NONCE_SIZE
ENVELOPE_SIZE = _WRAP_NONCE_END + KEY_SIZE + TAG_SIZE
"""The stored bytes before the first chunk: header, wrap nonce, wrapped data key."""
_DEK_LABEL = b"stream-dek"
_INDEX = struct.Struct(">Q")
_ZERO = b"\x00\x00\x00\x00"


def _check_context(ctx: FieldContext, user_key: UserKey) -> bytes:
    if not isinstance(ctx, FieldContext):
        raise TypeError(f"ctx must be a FieldContext, not {type(ctx).__name__}")
    if ctx.owner_id != user_key.user_id:
        raise ValueError("the context's owner must be the user of the key")
    return encode_context(ctx)


def _nonce(index: int) -> bytes:
    return _ZERO + _INDEX.pack(index)


def _chunk_aad(format_and_alg: bytes, context: bytes, index: int, final: bool) -> bytes:
    return format_and_alg + context + _INDEX.pack(index) + (b"\x01" if final else b"\x00")


def _rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``pieces`` as chunks of exactly ``size`` bytes but the last, which is shorter or full, and empty only when
    there are no bytes at all (one empty chunk)."""
    buffer = bytearray()
    sent = False
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
            sent = True
    if buffer or not sent:
        yield bytes(buffer)


def seal_stream(
    user_key: UserKey,
    ctx: FieldContext,
    pieces: Iterable[bytes],
    *,
    chunk_size: int = CHUNK_SIZE,
    rng: Rng | None = None,
) -> Iterator[bytes]:
    """The sealed stream of the bytes of ``pieces`` (any sizes), for ``ctx``: first the envelope
    (:data:`ENVELOPE_SIZE` bytes), then each sealed chunk. Draws the DEK (32 bytes) and the wrap nonce (12).

    A chunk is sealed when the next one has begun (the last one is known to be last only at the end), so at most
    two chunks of plaintext are held at a time."""
    context = _check_context(ctx, user_key)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}")
    header = _header(user_key.version, chunk_size)
    dek = draw(rng, KEY_SIZE)
    wrap_nonce = draw(rng, NONCE_SIZE)
    wrapped = key_aead(user_key).encrypt(wrap_nonce, dek, header + _DEK_LABEL + context)
    data_aead = AESGCM(dek)
    del dek
    yield header + wrap_nonce + wrapped
    format_and_alg = header[2:4]
    index = 0
    pending: bytes | None = None
    for chunk in _rechunk(pieces, chunk_size):
        if pending is not None:
            yield data_aead.encrypt(_nonce(index), pending, _chunk_aad(format_and_alg, context, index, False))
            index += 1
        pending = chunk
    assert pending is not None  # _rechunk yields at least once
    yield data_aead.encrypt(_nonce(index), pending, _chunk_aad(format_and_alg, context, index, True))


def seal_bytes(
    user_key: UserKey, ctx: FieldContext, data: bytes, *, chunk_size: int = CHUNK_SIZE, rng: Rng | None = None
) -> bytes:
    """:func:`seal_stream` of ``data``, joined."""
    return b"".join(seal_stream(user_key, ctx, [data], chunk_size=chunk_size, rng=rng))


def key_version_of(envelope: bytes) -> int:
    """The version of the user key a stream's data key is wrapped by (InvalidToken if it is no stream)."""
    return _fields(envelope)[0]


def _header(key_version: int, chunk_size: int) -> bytes:
    return _HEADER.pack(MAGIC, FORMAT_VERSION, ALG_AES_256_GCM_CHUNKED, key_version, chunk_size)


def _fields(envelope: bytes) -> tuple[int, int]:
    """(user key version, chunk size) of a well-formed envelope; InvalidToken otherwise."""
    if len(envelope) < ENVELOPE_SIZE:
        raise InvalidToken
    magic, version, alg, key_version, chunk_size = _HEADER.unpack_from(envelope)
    if (
        magic != MAGIC
        or version != FORMAT_VERSION
        or alg != ALG_AES_256_GCM_CHUNKED
        or key_version == 0
        or not 1 <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise InvalidToken
    return key_version, chunk_size


def _parse_header(envelope: bytes, user_key: UserKey) -> int:
    """The chunk size of an envelope wrapped by ``user_key``'s version; InvalidToken otherwise."""
    key_version, chunk_size = _fields(envelope)
    if key_version != user_key.version:
        raise InvalidToken
    return chunk_size


# Like the helpers of crypto.sealing, this returns None instead of raising, so that the frame of a raised
# InvalidToken never holds the data key.


def _unwrap(user_key: UserKey, envelope: bytes, context: bytes) -> bytes | None:
    """The data key of a stream whose envelope was checked by :func:`_parse_header`, or None if it does not unwrap."""
    return decrypt_or_none(
        key_aead(user_key),
        envelope[_HEADER_SIZE:_WRAP_NONCE_END],
        envelope[_WRAP_NONCE_END:ENVELOPE_SIZE],
        envelope[:_HEADER_SIZE] + _DEK_LABEL + context,
    )


class StreamOpener(Unpicklable):
    """Opens the chunks of one sealed stream whose envelope (its first :data:`ENVELOPE_SIZE` bytes) unwrapped.

    Built by :func:`open_envelope`. It holds the stream's data key: it cannot be pickled or copied, and is meant to
    live for one read of the stream."""

    __slots__ = ("_aead", "_context", "_format_and_alg", "chunk_size")

    def __init__(self, aead: AESGCM, context: bytes, format_and_alg: bytes, chunk_size: int) -> None:
        self._aead = aead
        self._context = context
        self._format_and_alg = format_and_alg
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"StreamOpener(chunk_size={self.chunk_size})"

    def layout(self, stored_size: int) -> tuple[int, int]:
        """(plaintext size, number of chunks) of a stream of ``stored_size`` bytes; InvalidToken if no stream of
        this chunk size has that size. Only opening its last chunk proves the size (see :meth:`open_chunk`)."""
        body = stored_size - ENVELOPE_SIZE
        step = self.chunk_size + TAG_SIZE
        if body < TAG_SIZE:
            raise InvalidToken
        chunks = -(-body // step)
        if body - (chunks - 1) * step < TAG_SIZE + (chunks > 1):  # the last chunk: its tag, and a byte unless alone
            raise InvalidToken
        return body - chunks * TAG_SIZE, chunks

    def span(self, index: int, chunks: int, plaintext_size: int) -> tuple[int, int]:
        """(offset, length) in the stored stream of sealed chunk ``index`` of ``chunks``."""
        offset = ENVELOPE_SIZE + index * (self.chunk_size + TAG_SIZE)
        if index < chunks - 1:
            return offset, self.chunk_size + TAG_SIZE
        return offset, plaintext_size - index * self.chunk_size + TAG_SIZE

    def open_chunk(self, index: int, sealed: bytes, final: bool) -> bytes:
        """The plaintext of chunk ``index``, ``final`` if it is the stream's last; InvalidToken if it does not open
        as that (tampered, moved, reordered, or a stream cut short)."""
        plaintext = decrypt_or_none(
            self._aead, _nonce(index), sealed, _chunk_aad(self._format_and_alg, self._context, index, final)
        )
        if plaintext is None:
            raise InvalidToken
        return plaintext


def open_envelope(user_key: UserKey, ctx: FieldContext, envelope: bytes) -> StreamOpener:
    """The opener of the stream whose first :data:`ENVELOPE_SIZE` bytes are ``envelope``, sealed for ``ctx``;
    InvalidToken for another key, context or a changed envelope."""
    context = _check_context(ctx, user_key)
    chunk_size = _parse_header(envelope, user_key)
    dek = _unwrap(user_key, envelope, context)
    if dek is None:
        raise InvalidToken
    opener = StreamOpener(AESGCM(dek), context, envelope[2:4], chunk_size)
    del dek
    return opener


def open_bytes(user_key: UserKey, ctx: FieldContext, stored: bytes) -> bytes:
    """The whole plaintext of a sealed stream held in memory; InvalidToken on any failure, truncation included."""
    opener = open_envelope(user_key, ctx, stored[:ENVELOPE_SIZE])
    size, chunks = opener.layout(len(stored))
    out = []
    for index in range(chunks):
        offset, length = opener.span(index, chunks, size)
        out.append(opener.open_chunk(index, stored[offset : offset + length], index == chunks - 1))
    return b"".join(out)


def rewrap_header(
    envelope: bytes, ctx: FieldContext, old_key: UserKey, new_key: UserKey, *, rng: Rng | None = None
) -> bytes:
    """The envelope of the same stream with its data key wrapped by ``new_key`` instead (the chunks stay as they
    are: write it over the first :data:`ENVELOPE_SIZE` bytes). Draws one nonce. InvalidToken if ``old_key`` cannot
    unwrap it for ``ctx``; ValueError if the keys are of different users."""
    if new_key.user_id != old_key.user_id:
        raise ValueError("rewrap_header moves a stream between keys of the same user only")
    context = _check_context(ctx, old_key)
    chunk_size = _parse_header(envelope, old_key)
    dek = _unwrap(old_key, envelope, context)
    if dek is None:
        raise InvalidToken
    new_header = _header(new_key.version, chunk_size)
    wrap_nonce = draw(rng, NONCE_SIZE)
    wrapped = key_aead(new_key).encrypt(wrap_nonce, dek, new_header + _DEK_LABEL + context)
    del dek
    return new_header + wrap_nonce + wrapped
