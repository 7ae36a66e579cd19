from __future__ import annotations

import pytest

from feed.errors import Invalid
from feed.services.text import mentioned_usernames, normalize_cw, normalize_post, render_html


def test_normalisation_counts_code_points_after_nfc() -> None:
    assert normalize_post("  hi\r\nthere  ") == "hi\nthere"
    assert normalize_post("e\u0301" * 500) == "\u00e9" * 500  # 1000 code points in, 500 after NFC
    assert normalize_post("🐦" * 500) == "🐦" * 500
    with pytest.raises(Invalid, match="too long"):
        normalize_post("a" * 501)
    with pytest.raises(Invalid, match="blank"):
        normalize_post(" \n\t ")


@pytest.mark.parametrize("bad", ["a\x00b", "bell\x07", "esc\x1b[31m", "line\u2028sep", "\ud800"])
def test_control_characters_are_refused(bad: str) -> None:
    with pytest.raises(Invalid, match="control"):
        normalize_post(bad)


def test_content_warning_is_optional_and_single_line() -> None:
    assert normalize_cw(None) is None
    assert normalize_cw("   ") is None
    assert normalize_cw(" spoilers ") == "spoilers"
    with pytest.raises(Invalid):
        normalize_cw("two\nlines")


def test_rendering_escapes_everything_but_mentions_and_http_links() -> None:
    out = render_html('<script>alert(1)</script> @bob see https://example.org/a?b=1&c="2". javascript:alert(1)')
    assert "<script>" not in out
    assert "&lt;script&gt;" in out
    assert '<a href="/@bob" class="mention">@bob</a>' in out
    assert 'href="https://example.org/a?b=1&amp;c=&quot;2&quot;"' not in out  # quotes end the URL
    assert 'href="https://example.org/a?b=1&amp;c="' in out
    assert "javascript:alert(1)" in out and 'href="javascript' not in out
    assert render_html("one\ntwo\n\nthree") == "<p>one<br>two</p><p>three</p>"


def test_mentions_are_parsed_once_each_and_not_from_emails() -> None:
    assert mentioned_usernames("@Alice hi @bob and @alice, mail me at x@carol.org") == ["alice", "bob"]


def test_characters_newer_than_our_unicode_tables_are_accepted() -> None:
    # U+1FAE8 (shaking face, Unicode 15) is unassigned in Python 3.11's tables; people still type it.
    assert normalize_post("\U0001fae8 and private use \ue000") == "\U0001fae8 and private use \ue000"
