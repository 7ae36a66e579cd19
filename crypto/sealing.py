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
from .sealed import Sealed
from .user_key import UserKey, key_aead

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
    sealed = _parse(blob, ctx, user_key)
    parts = layout.split(sealed)
    context = encode_context(ctx)
    data_aead = _unwrap_dek(user_key, parts, context)
    if data_aead is None:
        raise InvalidToken
    text = _decrypt_text(data_aead, parts, context)
    if text is None:
        raise InvalidToken
    return text


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


def _parse(blob: Sealed | bytes, ctx: FieldContext, user_key: UserKey) -> Sealed:
    if not isinstance(ctx, FieldContext):
        raise TypeError(f"ctx must be a FieldContext, not {type(ctx).__name__}")
    sealed = blob if isinstance(blob, Sealed) else Sealed(blob)
    if sealed.key_version != user_key.version or ctx.owner_id != user_key.user_id:
        raise InvalidToken
    return sealed


def _wrap_aad(header: bytes, context: bytes) -> bytes:
    return header + _DEK_LABEL + context


def _data_aad(header: bytes, context: bytes) -> bytes:
    # Format version and algorithm id only: not the magic (constant) nor the user key version (module doc).
    return header[2:4] + context


# The helpers below return None instead of raising, and keep the DEK and the plaintext in their own frames, so
# that the frames of a raised InvalidToken hold neither (error reporters record local variables).


def _unwrap_dek(user_key: UserKey, parts: layout.Parts, context: bytes) -> AESGCM | None:
    dek = decrypt_or_none(key_aead(user_key), parts.wrap_nonce, parts.wrapped_dek, _wrap_aad(parts.header, context))
    return None if dek is None else AESGCM(dek)


def _decrypt_text(data_aead: AESGCM, parts: layout.Parts, context: bytes) -> str | None:
    plaintext = decrypt_or_none(data_aead, parts.data_nonce, parts.ciphertext, _data_aad(parts.header, context))
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
