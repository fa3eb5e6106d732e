import datetime as dt

from lm.data.warc import iter_records
from lm.data.warc_write import html_folder_pages, write_warc


def test_written_warc_reads_back_with_offsets_and_stable_bytes(tmp_path):
    site = tmp_path / "site"
    (site / "en").mkdir(parents=True)
    (site / "en" / "a.html").write_bytes(b"<html><body><p>Hello world.</p></body></html>")
    (site / "en" / "b.html").write_text(
        "<html><body><p>Gr\u00fc\u00dfe aus K\u00f6ln.</p></body></html>", encoding="utf-8"
    )
    out = tmp_path / "pages.warc.gz"
    assert write_warc(out, html_folder_pages(site, "https://example.org/doc")) == 2
    records = list(iter_records(str(out)))
    assert [r.url for r in records] == ["https://example.org/doc/en/a.html", "https://example.org/doc/en/b.html"]
    assert all(r.error is None and r.record_type == "response" and r.http_status == 200 for r in records)
    assert records[0].payload.startswith(b"<html>")
    assert records[0].source.endswith(":0") and not records[1].source.endswith(":0")
    # same pages, same bytes: ids and dates come from the URL and the files
    again = tmp_path / "again.warc.gz"
    write_warc(again, html_folder_pages(site, "https://example.org/doc"))
    assert again.read_bytes() == out.read_bytes()


def test_dates_are_utc(tmp_path):
    out = tmp_path / "one.warc.gz"
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    write_warc(out, [("https://example.org/x", b"<p>x</p>", when)])
    (rec,) = list(iter_records(str(out)))
    assert rec.date == "2024-05-01T10:00:00Z"
