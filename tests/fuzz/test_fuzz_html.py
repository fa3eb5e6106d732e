"""Fuzz ``html_to_text`` (lm.data.extract): markup soup, random bytes in any declared charset,
deep nesting, huge attributes.

Properties, for every input:

- it returns within the wall limit and never raises;
- the answer says what happened: ``None`` exactly when the bytes are judged binary
  (``looks_binary``: the extract stage counts it as failed ``undecodable``), else a ``str``
  (``""`` = no visible text, rejected ``empty_extraction``);
- a returned ``str`` is valid Unicode (no lone surrogates: it must encode to UTF-8, since
  every later stage writes it to Parquet) and holds no NUL;
- letters and digits placed in a plain ``<p>`` of a UTF-8 page come out unchanged.
"""

from __future__ import annotations

import pytest
from fuzzkit import call_with_timeout, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from lm.data.extract import html_to_text, looks_binary

CHARSETS = [
    "utf-8",
    "utf-16",
    "utf-16-le",
    "utf-32",
    "latin-1",
    "windows-1252",
    "windows-1251",
    "koi8-r",
    "shift_jis",
    "euc-jp",
    "iso-2022-jp",
    "gb2312",
    "gb18030",
    "big5",
    "euc-kr",
    "iso-8859-7",
    "cp437",
    "utf-7",
    "bogus-charset",
]
TAGS = [
    "html",
    "head",
    "body",
    "div",
    "p",
    "span",
    "a",
    "b",
    "i",
    "table",
    "tr",
    "td",
    "ul",
    "li",
    "pre",
    "code",
    "br",
    "img",
    "script",
    "style",
    "noscript",
    "textarea",
    "title",
    "meta",
    "iframe",
    "svg",
    "math",
    "template",
    "xmp",
    "plaintext",
    "nav",
    "footer",
    "header",
    "h1",
    "form",
    "input",
    "select",
    "option",
    "x-custom",
]


def _attr_value():
    return st.one_of(
        st.text(max_size=30),
        st.integers(1, 300_000).map(lambda n: "x" * n),
        st.just('"'),
        st.just("'"),
        st.just("javascript:alert(1)"),
    )


@st.composite
def _element(draw, depth: int) -> str:
    tag = draw(st.sampled_from(TAGS))
    attrs = "".join(
        f' {draw(st.sampled_from(["class", "id", "href", "style", "charset", "content", "x"]))}="{draw(_attr_value())}"'
        for _ in range(draw(st.integers(0, 2)))
    )
    inner = "".join(draw(st.lists(_node(depth + 1), max_size=3))) if depth < 4 else draw(st.text(max_size=20))
    close = draw(st.sampled_from([f"</{tag}>", "", f"</{tag}", "</>", f"</{tag.upper()}>"]))
    return f"<{tag}{attrs}>{inner}{close}"


def _node(depth: int):
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [
                "&amp;",
                "&#0;",
                "&#xD800;",
                "&#x110000;",
                "&#9999999999;",
                "&nbsp;",
                "&bogus;",
                "<!--",
                "-->",
                "<![CDATA[",
                "]]>",
                "<!DOCTYPE html>",
                "<?xml version='1.0'?>",
                "<",
                ">",
                "\x00",
                "\r",
                "\ufeff",
            ]
        ),
        _element(depth),
    )


@st.composite
def html_pages(draw) -> bytes:
    kind = draw(st.sampled_from(["soup", "soup", "bytes", "declared", "nested", "huge_attr"]))
    if kind == "bytes":
        return draw(st.binary(max_size=4096))
    if kind == "nested":
        n = draw(st.integers(1, 200_000))
        tag = draw(st.sampled_from(["div", "b", "table", "li", "p", "span"])).encode()
        return (
            b"<"
            + tag
            + b">" * 1
            + (b"<" + tag + b">") * (n - 1)
            + b"deep"
            + (b"</" + tag + b">") * draw(st.integers(0, n))
        )
    if kind == "huge_attr":
        return (
            b'<a href="' + b"\xe2\x80\x8b" * draw(st.integers(1, 400_000)) + b'">t</a>' + draw(st.binary(max_size=50))
        )
    body = "".join(draw(st.lists(_node(0), max_size=6)))
    charset = draw(st.sampled_from(CHARSETS))
    head = draw(
        st.sampled_from(
            [
                f'<meta charset="{charset}">',
                f'<meta http-equiv="Content-Type" content="text/html; charset={charset}">',
                "",
            ]
        )
    )
    page = f"<html><head>{head}</head><body>{body}</body></html>"
    if kind == "declared":  # random bytes under a declared charset
        return page.encode("utf-8", "surrogatepass")[: draw(st.integers(0, 200))] + draw(st.binary(max_size=2048))
    try:
        return page.encode(charset, "replace")
    except LookupError:
        return page.encode("utf-8", "surrogatepass")  # lone surrogates as raw (invalid) UTF-8


def _check(html: bytes) -> None:
    text = call_with_timeout(html_to_text, html)
    if looks_binary(html):
        assert text is None, f"binary input gave text {text[:80]!r}"
        return
    assert isinstance(text, str), f"text input gave {text!r}"
    text.encode("utf-8")  # raises on a lone surrogate
    assert "\x00" not in text


@fuzz_settings(ci_examples=500)
@given(html=html_pages())
def test_html_to_text_never_crashes_and_answers(html):
    _check(html)


@fuzz_settings(ci_examples=80)
@given(words=st.lists(st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12), min_size=1, max_size=8))
def test_paragraph_text_survives(words):
    """Visible text (any letters and digits) in a <p> of a UTF-8 page is extracted unchanged."""
    para = " ".join(words)
    page = b'<html><head><meta charset="utf-8"></head><body><p>' + para.encode() + b"</p></body></html>"
    text = call_with_timeout(html_to_text, page)
    assert para in text


@pytest.mark.parametrize(
    "html",
    [
        b"",
        b"\x00",
        b"<",
        b"<!--",
        b"<script>",
        b"\xff\xfe",
        b"\xfe\xff\xd8\x00",
        b"<meta charset=utf-16>\xff\xfe\x00\xd8",
        "<p>\ud800</p>".encode("utf-8", "surrogatepass"),
        b"<p>&#xD800;&#0;</p>",
        b"\x1b$B" + b"\xff" * 64,
    ],
)
def test_edge_inputs(html):
    _check(html)


@pytest.mark.parametrize("word", ["á", "naïve café", "Ελληνικά", "дом", "日本語"])
def test_short_utf8_page_is_not_read_as_another_encoding(word):
    """Found by test_paragraph_text_survives: a valid UTF-8 page holding only "á" came out as
    "รก" (uchardet guessed TIS-620 on so few bytes)."""
    page = f'<html><head><meta charset="utf-8"></head><body><p>{word}</p></body></html>'.encode()
    assert html_to_text(page) == word
