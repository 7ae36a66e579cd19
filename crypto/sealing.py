"""Sealing and opening private fields (post body, content warning, email...) under a user key.

Envelope encryption: each :func:`seal_fields` call draws one fresh 256-bit data key (DEK), shared by the
fields of that call (one post revision, or one account update), and returns for each field a self-contained
blob (layout in :mod:`crypto.sealed`) in which:

* the DEK is encrypted under the user key with associated data ``header || b"dek" || context``;
* the text is encrypted under the DEK with associated data ``format version || algorithm id || context``.

``context`` is :func:`crypto.context.encode_context` of (field, object id, owner id, revision): it is
rebuilt from the row, never stored, so a blob moved to another field, object, owner or revision does not
open. The data part leaves out the user key version so that :func:`rewrap` can move a blob to a new user key
without touching its ciphertext; the wrapped DEK binds the header, key version included.

Opening remembers each unwrapped DEK in the user key (:class:`crypto._dek_cache.DataKeyCache`) under every
input the unwrap authenticated: the blob's bytes up to the end of the wrapped DEK, then ``context``. A repeat
open of the same blob in the same context skips the unwrap; any other blob or context unwraps again.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import sealed as layout
from ._aes import KEY_SIZE, NONCE_SIZE, decrypt_or_none
from ._checks import encode_utf8
from ._random import Rng, draw
from .context import FieldContext, encode_context
from .errors import InvalidToken
from .sealed import (
    CIPHERTEXT,
    DATA_NONCE,
    ENVELOPE,
    FORMAT_AND_ALGORITHM,
    HEADER,
    WRAP_NONCE,
    WRAPPED_DEK,
    Sealed,
)
from .user_key import UserKey, dek_cache, key_aead

_DEK_LABEL = b"dek"


def seal_fields(
    user_key: UserKey,
    fields: Mapping[str, str],
    *,
    object_id: int,
    owner_id: int,
    revision: int,
    rng: Rng | None = None,
) -> dict[str, Sealed]:
    """Seal each text of ``fields`` (name -> text) for object ``object_id`` of ``owner_id`` at ``revision``.

    ``owner_id`` must be ``user_key.user_id`` (ValueError otherwise). Randomness is drawn in this order: the
    DEK (32 bytes), then for each field in iteration order its wrap nonce and its data nonce (12 bytes each).
    An empty ``fields`` draws nothing and returns ``{}``.
    """
    if owner_id != user_key.user_id:
        raise ValueError("owner_id must be the user id of the sealing key")
    plaintexts: dict[str, tuple[FieldContext, bytes]] = {}
    for name, text in fields.items():
        ctx = FieldContext(name, object_id, owner_id, revision)
        if not isinstance(text, str):
            raise TypeError(f"field {name!r} must be a str, not {type(text).__name__}")
        encoded = encode_utf8(text)
        if encoded is None:
            raise ValueError(f"field {name!r} holds text that is not encodable as UTF-8")
        plaintexts[name] = (ctx, encoded)
    if not plaintexts:
        return {}

    header = layout.header(user_key.version)
    dek = draw(rng, KEY_SIZE)
    wrap_aead = key_aead(user_key)
    data_aead = AESGCM(dek)
    blobs: dict[str, Sealed] = {}
    for name, (ctx, plaintext) in plaintexts.items():
        context = encode_context(ctx)
        wrap_nonce = draw(rng, NONCE_SIZE)
        wrapped_dek = wrap_aead.encrypt(wrap_nonce, dek, _wrap_aad(header, context))
        data_nonce = draw(rng, NONCE_SIZE)
        ciphertext = data_aead.encrypt(data_nonce, plaintext, _data_aad(header, context))
        blobs[name] = layout.join(layout.Parts(header, wrap_nonce, wrapped_dek, data_nonce, ciphertext))
    return blobs


def open_field(user_key: UserKey, blob: Sealed | bytes, ctx: FieldContext) -> str:
    """The text sealed in ``blob`` for ``ctx``.

    Raises InvalidToken on any failure: malformed blob, a key of another user or version, another context,
    any changed byte, text that is not UTF-8.
    """
    data = _parse(blob, ctx, user_key).data
    context = encode_context(ctx)
    data_aead = _data_key(user_key, data, context)
    if data_aead is None:
        raise InvalidToken
    text = _decrypt_text(data_aead, data, context)
    if text is None:
        raise InvalidToken
    return text


def open_field_utf8(user_key: UserKey, blob: Sealed | bytes, ctx: FieldContext) -> bytes:
    """:func:`open_field`, but the text as the UTF-8 bytes it was sealed as (for a caller that sends it on as bytes:
    a page, where decoding and encoding again would cost more than opening it). Raises InvalidToken the same way,
    but for text that is not UTF-8, which only a sealing key's holder could have sealed."""
    data = _parse(blob, ctx, user_key).data
    context = encode_context(ctx)
    data_aead = _data_key(user_key, data, context)
    if data_aead is None:
        raise InvalidToken
    # A view, not a slice: a page is tens of kilobytes, and a slice would copy them once more.
    ciphertext = memoryview(data)[CIPHERTEXT]
    plaintext = decrypt_or_none(data_aead, data[DATA_NONCE], ciphertext, _data_aad(data, context))
    if plaintext is None:
        raise InvalidToken
    return plaintext


def open_fields(
    user_key: UserKey, blobs: Mapping[str, Sealed | bytes], *, object_id: int, owner_id: int, revision: int
) -> dict[str, str]:
    """:func:`open_field` for each blob of ``blobs`` (field name -> blob); InvalidToken if any fails."""
    return {
        name: open_field(user_key, blob, FieldContext(name, object_id, owner_id, revision))
        for name, blob in blobs.items()
    }


def rewrap(
    blob: Sealed | bytes, ctx: FieldContext, old_key: UserKey, new_key: UserKey, *, rng: Rng | None = None
) -> Sealed:
    """``blob`` with its DEK unwrapped by ``old_key`` and wrapped again by ``new_key``; draws one nonce.

    The data nonce and ciphertext are kept byte for byte; they are not decrypted here, so a damaged
    ciphertext is only detected when the result is opened. InvalidToken if ``old_key`` cannot unwrap the DEK
    for ``ctx``; ValueError if the two keys belong to different users.
    """
    if new_key.user_id != old_key.user_id:
        raise ValueError("rewrap moves a blob between keys of the same user only")
    parts = layout.split(_parse(blob, ctx, old_key))
    rewrapped = _rewrap_dek(parts, encode_context(ctx), old_key, new_key, rng)
    if rewrapped is None:
        raise InvalidToken
    return layout.join(rewrapped)


def seal_beside(
    user_key: UserKey,
    source: Sealed | bytes,
    source_ctx: FieldContext,
    text: str,
    ctx: FieldContext,
    *,
    rng: Rng | None = None,
) -> Sealed:
    """Seal ``text`` for ``ctx`` under the data key of ``source`` (a blob sealed for ``source_ctx``): a value
    derived from a field (a post's rendered HTML) then lives and dies with that field's key. Draws two nonces.

    ``ctx`` must name the same object, owner and revision as ``source_ctx`` (ValueError otherwise): a derived
    value belongs to one revision. InvalidToken if ``source`` does not open for ``source_ctx``.
    """
    if (ctx.object_id, ctx.owner_id, ctx.revision) != (source_ctx.object_id, source_ctx.owner_id, source_ctx.revision):
        raise ValueError("seal_beside keeps a value with its own object, owner and revision")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    plaintext = encode_utf8(text)
    if plaintext is None:
        raise ValueError("text is not encodable as UTF-8")
    parts = layout.split(_parse(source, source_ctx, user_key))
    sealed = _seal_with_dek_of(parts, encode_context(source_ctx), user_key, plaintext, encode_context(ctx), rng)
    if sealed is None:
        raise InvalidToken
    return sealed


def _parse(blob: Sealed | bytes, ctx: FieldContext, user_key: UserKey) -> Sealed:
    if type(ctx) is not FieldContext and not isinstance(ctx, FieldContext):
        raise TypeError(f"ctx must be a FieldContext, not {type(ctx).__name__}")
    sealed = blob if type(blob) is Sealed else Sealed(blob)  # Sealed is final
    if sealed.key_version != user_key.version or ctx.owner_id != user_key.user_id:
        raise InvalidToken
    return sealed


def _wrap_aad(header: bytes, context: bytes) -> bytes:
    return header + _DEK_LABEL + context


def _data_aad(header: bytes, context: bytes) -> bytes:
    """``header`` may also be a whole blob, which starts with its header."""
    # Format version and algorithm id only: not the magic (constant) nor the user key version (module doc).
    return header[FORMAT_AND_ALGORITHM] + context


# The helpers below return None instead of raising, and keep the DEK and the plaintext in their own frames, so
# that the frames of a raised InvalidToken hold neither (error reporters record local variables).


def _data_key(user_key: UserKey, data: bytes, context: bytes) -> AESGCM | None:
    """The DEK of blob ``data`` for ``context``, remembered by ``user_key`` or unwrapped (then remembered)."""
    # Every input of the unwrap but the user key, which owns the cache: header (also in the associated data),
    # wrap nonce, wrapped DEK, context. The first part has a fixed length, so the key is injective.
    unwrap_input = data[ENVELOPE] + context
    cache = dek_cache(user_key)
    data_aead = cache.get(unwrap_input)
    if data_aead is None:
        dek = decrypt_or_none(
            key_aead(user_key),
            data[WRAP_NONCE],
            data[WRAPPED_DEK],
            _wrap_aad(data[HEADER], context),
        )
        if dek is None:
            return None
        data_aead = AESGCM(dek)
        cache.put(unwrap_input, data_aead)
    return data_aead


def _decrypt_text(data_aead: AESGCM, data: bytes, context: bytes) -> str | None:
    plaintext = decrypt_or_none(
        data_aead,
        data[DATA_NONCE],
        data[CIPHERTEXT],
        _data_aad(data, context),
    )
    if plaintext is None:
        return None
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _rewrap_dek(
    parts: layout.Parts, context: bytes, old_key: UserKey, new_key: UserKey, rng: Rng | None
) -> layout.Parts | None:
    dek = decrypt_or_none(key_aead(old_key), parts.wrap_nonce, parts.wrapped_dek, _wrap_aad(parts.header, context))
    if dek is None:
        return None
    header = layout.header(new_key.version)
    wrap_nonce = draw(rng, NONCE_SIZE)
    wrapped_dek = key_aead(new_key).encrypt(wrap_nonce, dek, _wrap_aad(header, context))
    return parts._replace(header=header, wrap_nonce=wrap_nonce, wrapped_dek=wrapped_dek)


def _seal_with_dek_of(
    parts: layout.Parts, source_context: bytes, user_key: UserKey, plaintext: bytes, context: bytes, rng: Rng | None
) -> Sealed | None:
    wrap_aead = key_aead(user_key)
    dek = decrypt_or_none(wrap_aead, parts.wrap_nonce, parts.wrapped_dek, _wrap_aad(parts.header, source_context))
    if dek is None:
        return None
    header = layout.header(user_key.version)
    wrap_nonce = draw(rng, NONCE_SIZE)
    wrapped_dek = wrap_aead.encrypt(wrap_nonce, dek, _wrap_aad(header, context))
    data_nonce = draw(rng, NONCE_SIZE)
    ciphertext = AESGCM(dek).encrypt(data_nonce, plaintext, _data_aad(header, context))
    return layout.join(layout.Parts(header, wrap_nonce, wrapped_dek, data_nonce, ciphertext))
