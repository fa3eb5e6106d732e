"""Seed corpora for the atheris harnesses, from the real fixtures (read in place, written to DIR).

    python tests/fuzz/atheris_seeds.py warc|html|tokenizer DIR

warc: each record of the Common Crawl samples, gzip member and plain (cut to 8 KB);
html: the HTML payloads of those responses (cut to 8 KB) and the CS336 moby.html;
tokenizer: a few lines of the CS336 tokenizer fixtures (multilingual text).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import zlib
from pathlib import Path

REFERENCE = Path(os.environ.get("LMPIPE_REFERENCE", Path(__file__).resolve().parents[3] / "shared" / "reference"))
MAX = 8192


def _members(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        body = d.decompress(data[pos:])
        if not d.eof:
            break
        out.append(body)
        pos = len(data) - len(d.unused_data)
    return out


def seeds(kind: str) -> list[bytes]:
    cc = REFERENCE / "commoncrawl"
    files = [
        "whirlwind.warc.gz",
        "whirlwind.warc.wet.gz",
        "whirlwind.warc.wat.gz",
        "block-sized-records.warc.gz",
        "warcfile.warc.gz",
    ]
    if kind == "warc":
        out = []
        for name in files:
            for rec in _members((cc / name).read_bytes())[:6]:
                out += [rec[:MAX], gzip.compress(rec[:MAX], mtime=0)]
        return out
    if kind == "html":
        out = [(REFERENCE / "assignment4-data/fixtures/moby.html").read_bytes()[:MAX]]
        for name in files:
            for rec in _members((cc / name).read_bytes()):
                i = rec.find(b"<")
                if b"text/html" in rec[:2000] and i > 0:
                    out.append(rec[i : i + MAX])
        return out[:30]
    if kind == "tokenizer":
        fx = REFERENCE / "assignment1-basics/fixtures"
        return [
            line.encode()
            for name in ("german.txt", "address.txt", "tinystories_sample.txt")
            for line in (fx / name).read_text(encoding="utf-8").splitlines()[:10]
            if line.strip()
        ]
    raise ValueError(f"kind {kind!r}: use warc, html or tokenizer")


def write_seeds(kind: str, directory: str | Path) -> int:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    items = seeds(kind)
    for b in items:
        (d / hashlib.sha1(b).hexdigest()).write_bytes(b)
    return len(items)


if __name__ == "__main__":
    print(write_seeds(sys.argv[1], sys.argv[2]), "seeds")
