"""Post text rules: normalisation, validation, mention parsing and safe HTML rendering.

Rendering escapes everything and then turns only ``@mentions`` and http(s) links into anchors, so a post, bio
or display name can never inject markup.
"""

from __future__ import annotations

import re
import unicodedata
from html import escape

from markupsafe import Markup

from feed.errors import Invalid

MAX_POST_CHARS = 500
MAX_CW_CHARS = 200
USERNAME_RE = re.compile(r"[A-Za-z0-9_]{1,30}")
MENTION_RE = re.compile(r"(?<![\w@/])@([A-Za-z0-9_]{1,30})(?![\w@])")
_URL_RE = re.compile(r"\bhttps?://[^\s<>\"']+", re.IGNORECASE)
_TOKEN_RE = re.compile(rf"{_URL_RE.pattern}|{MENTION_RE.pattern}", re.IGNORECASE)
_TRAILING_PUNCT = ".,;:!?)]}'\""


def _has_control(text: str, allow_newlines: bool) -> bool:
    """Control codes, lone surrogates, line/paragraph separators and noncharacters.

    Unassigned code points are allowed on purpose: this Python's Unicode tables are older than the emoji people
    type today, and a character we do not know yet is escaped like any other.
    """
    for ch in text:
        if ch in "\n\t" and allow_newlines:
            continue
        code = ord(ch)
        if (
            unicodedata.category(ch) in ("Cc", "Cs")
            or ch in "\u2028\u2029"
            or 0xFDD0 <= code <= 0xFDEF
            or code & 0xFFFE == 0xFFFE
        ):
            return True
    return False


def counted(raw: str) -> str:
    """The text as its length is counted: NFC, LF line ends, trimmed."""
    return unicodedata.normalize("NFC", raw.replace("\r\n", "\n").replace("\r", "\n")).strip()


def chars_left(raw: str, max_chars: int) -> int:
    """What a counter beside a field shows: characters left (negative past the limit)."""
    return max_chars - len(counted(raw))


def normalize_text(
    raw: str, *, field: str, label: str, max_chars: int, allow_empty: bool = False, multiline: bool = True
) -> str:
    """NFC, LF line ends, trimmed; then 1..``max_chars`` code points (inclusive) and no control characters."""
    text = counted(raw)
    if _has_control(text, allow_newlines=multiline):
        raise Invalid(f"{label} contains control characters", field)
    if not text and not allow_empty:
        raise Invalid(f"{label} can't be blank", field)
    if len(text) > max_chars:
        raise Invalid(f"{label} is too long ({len(text)} characters, at most {max_chars})", field)
    return text


def normalize_post(raw: str, *, allow_empty: bool = False) -> str:
    """A post's text; empty only when allowed (a post of images alone)."""
    return normalize_text(raw, field="status", label="Text", max_chars=MAX_POST_CHARS, allow_empty=allow_empty)


def normalize_cw(raw: str | None) -> str | None:
    if raw is None:
        return None
    text = normalize_text(
        raw, field="spoiler_text", label="Content warning", max_chars=MAX_CW_CHARS, allow_empty=True, multiline=False
    )
    return text or None


def mentioned_usernames(text: str) -> list[str]:
    """Lower-cased usernames mentioned in ``text``, first occurrence order, no repeats."""
    seen: dict[str, None] = {}
    for match in MENTION_RE.finditer(text):
        seen.setdefault(match.group(1).lower(), None)
    return list(seen)


def _link(url: str) -> str:
    trail = ""
    while url and url[-1] in _TRAILING_PUNCT:
        trail = url[-1] + trail
        url = url[:-1]
    shown = url.split("://", 1)[1]
    if len(shown) > 40:
        shown = shown[:39] + "…"
    href = escape(url, quote=True)
    return f'<a href="{href}" rel="nofollow noopener noreferrer ugc" target="_blank">{escape(shown)}</a>{escape(trail)}'


def _inline(text: str) -> str:
    out: list[str] = []
    pos = 0
    for match in _TOKEN_RE.finditer(text):
        out.append(escape(text[pos : match.start()]))
        token = match.group(0)
        if token.startswith("@"):
            name = token[1:]
            out.append(f'<a href="/@{escape(name)}" class="mention">@{escape(name)}</a>')
        else:
            out.append(_link(token))
        pos = match.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def render_html(text: str) -> Markup:
    """Paragraphs on blank lines, ``<br>`` on single newlines, mentions and links as anchors, all else escaped."""
    paragraphs = [p for p in re.split(r"\n{2,}", text) if p.strip()]
    # Safe: _inline escapes every piece of the text and adds only the anchors it builds itself.
    return Markup(  # noqa: S704
        "".join("<p>" + "<br>".join(_inline(line) for line in p.split("\n")) + "</p>" for p in paragraphs)
    )
