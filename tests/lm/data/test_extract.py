import gzip

from lm.data.extract import decode_text, html_to_text, looks_binary, text_similarity
from lm.data.warc import iter_records

CC = "commoncrawl"


def test_moby_byte_exact(reference):
    fx = reference / "assignment4-data" / "fixtures"
    text = html_to_text((fx / "moby.html").read_bytes())
    assert text.encode("utf-8") == (fx / "moby_extracted.txt").read_bytes()


def test_whirlwind_matches_common_crawl_wet(reference):
    """Our extraction of the WARC response vs Common Crawl's own WET text of the same capture."""
    (resp,) = [r for r in iter_records(str(reference / CC / "whirlwind.warc.gz")) if r.record_type == "response"]
    (wet,) = [r for r in iter_records(str(reference / CC / "whirlwind.warc.wet.gz")) if r.record_type == "conversion"]
    assert wet.headers["WARC-Refers-To"] == resp.headers["WARC-Record-ID"]  # the same capture
    ours, theirs = html_to_text(resp.payload), decode_text(wet.payload)
    sim = text_similarity(ours, theirs)
    print(f"whirlwind: token similarity ours vs CC WET = {sim:.3f} ({len(ours)} vs {len(theirs)} chars)")
    # Measured 0.865: the same words; CC's extractor repeats some navigation labels, ours
    # renders list items with bullets. A broken decode or extractor scores far lower.
    assert 0.85 <= sim < 1.0
    assert "Escopete" in ours and "Escopete" in theirs


def test_encodings_are_detected(reference):
    recs = [r for r in iter_records(str(reference / CC / "clueweb-quirk.warc.gz")) if r.record_type == "response"]
    text = html_to_text(recs[0].payload)  # EUC-JP page
    assert "ヘッドポーター" in text
    # every page of the two real WARCs decodes without replacement characters
    for name in ("warcfile.warc.gz", "clueweb-quirk.warc.gz"):
        for r in iter_records(str(reference / CC / name)):
            if r.record_type == "response" and r.mime == "text/html":
                t = html_to_text(r.payload)
                assert t is not None and t.count("\ufffd") < 5, r.url


def test_binary_and_empty_payloads():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    assert looks_binary(png) and html_to_text(png) is None
    assert html_to_text(bytes(range(32)) * 100) is None
    assert html_to_text(gzip.compress(b"<html>hello</html>")) is None  # still-compressed body
    assert html_to_text(b"") == ""
    assert html_to_text(b"<html><script>var x=1;</script></html>") == ""
    assert html_to_text("<p>caf\u00e9</p>".encode("utf-16")) == "caf\u00e9"


def test_text_similarity_bounds():
    assert text_similarity("a b c", "a  b\nc") == 1.0
    assert text_similarity("a b c", "x y z") == 0.0
