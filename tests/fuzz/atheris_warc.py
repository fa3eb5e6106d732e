"""atheris (libFuzzer) harness for the WARC/WET/ARC reader: coverage-guided, no crash, no hang.

    PYTHONPATH=. python tests/fuzz/atheris_warc.py -max_total_time=60 -timeout=20 CORPUS_DIR
    (seed CORPUS_DIR with real records: python tests/fuzz/atheris_seeds.py warc CORPUS_DIR)

Each input is read as a whole file (plain or gzip), with errors="record" semantics; the
properties are those of test_fuzz_warc.py that need no original to compare with: every error
is a documented kind, record offsets never go back, and nothing raises.
"""

import io
import sys

import atheris

with atheris.instrument_imports(include=["lm"]):
    from lm.data.gzstream import MemberStream
    from lm.data.warc import parse_stream

KINDS = {None, "truncated_gzip", "truncated_record", "corrupt_gzip", "not_warc", "bad_header", "bad_content_length"}


def TestOneInput(data: bytes) -> None:
    for chunk_size in (7, 1 << 16):  # small reads reach the member-boundary code
        recs = list(parse_stream(MemberStream(io.BytesIO(data), chunk_size=chunk_size), "fuzz"))
        offsets = [int(r.source.rsplit(":", 1)[1]) for r in recs]
        assert offsets == sorted(offsets), offsets
        assert {r.error for r in recs} <= KINDS, [r.error for r in recs]
        if data.strip() and data[:2] != b"\x1f\x8b":
            assert recs, "a non-blank plain input produced no record"


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
