"""HTML to plain text with resiliparse, and text similarity for checking extraction.

``html_to_text`` detects the encoding of the raw bytes (the HTTP charset is often missing or
wrong), decodes them, and runs resiliparse's ``extract_plain_text``. It returns None for a
payload that is not text at all (images or other binaries served as text/html), so a stage can
count those as failed (``undecodable``) and tell them apart from pages that merely have no
visible text (empty string: rejected as ``empty_extraction``).
"""

from __future__ import annotations

import difflib
import re

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding

# Control bytes other than \t \n \f \r and ESC (used by ISO-2022 encodings) mean binary data.
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27))
_BINARY_SAMPLE = 4096
_BINARY_FRACTION = 0.05
_BINARY_MAGIC = (
    b"\x89PNG",
    b"GIF8",
    b"\xff\xd8\xff",
    b"%PDF",
    b"PK\x03\x04",
    b"\x1f\x8b",
    b"RIFF",
    b"\x00\x00\x01\x00",
)


def looks_binary(data: bytes) -> bool:
    """True for payloads that are clearly not text: known binary signatures or many control bytes."""
    if data.startswith(_BINARY_MAGIC):
        return True
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 BOM: text with many NULs
        return False
    sample = data[:_BINARY_SAMPLE]
    bad = len(sample) - len(sample.translate(None, _CONTROL))
    return bad > _BINARY_FRACTION * len(sample)


def decode_html(html: bytes) -> str | None:
    """Decode HTML bytes with the detected encoding; None if they are binary."""
    if looks_binary(html):
        return None
    if not html.isascii():
        # Valid UTF-8 with non-ASCII bytes is UTF-8: other encodings almost never form valid
        # multi-byte sequences by chance, while uchardet misjudges short pages (one "á" was
        # read as TIS-620 "รก"). Pure ASCII goes to detection (ISO-2022-JP is 7-bit).
        try:
            return html.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            pass
    enc = detect_encoding(html)
    try:
        text = html.decode(enc)
    except (UnicodeDecodeError, LookupError):
        text = bytes_to_str(html, enc)  # falls back to other encodings, replaces what is left
    return text.removeprefix("\ufeff")  # a byte-order mark is not page text


def html_to_text(html: bytes, *, main_content: bool = False) -> str | None:
    """Plain text of an HTML page (resiliparse), or None if the bytes are not text.

    ``main_content=True`` drops navigation, headers and footers (resiliparse's heuristic);
    the default keeps everything, as the CS336 reference extraction does.
    """
    if not html:
        return ""
    text = decode_html(html)
    if text is None:
        return None
    return extract_plain_text(text, main_content=main_content)


def decode_text(data: bytes) -> str | None:
    """Decode a plain-text payload (a WET conversion record); None if it is binary."""
    if looks_binary(data):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return bytes_to_str(data, detect_encoding(data))


_WS = re.compile(r"\s+")


def text_similarity(a: str, b: str) -> float:
    """Similarity of two extractions in [0, 1]: difflib's ratio over whitespace-separated
    tokens (so line breaking and spacing differences do not count)."""
    ta, tb = _WS.split(a.strip()), _WS.split(b.strip())
    return difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio()
