"""Corpora for ``bench/scale.py``: N web pages of real text, packed into WARC files.

How a corpus is made (deterministic for a seed):

* **Sentence pool** (real text, no generated words): the Python language reference that
  ships with CPython (``pydoc_data``), docstrings of the packages installed in this
  environment (numpy, scipy, pyarrow, pydantic, prefect, torch, …; parsed with ``ast``), the
  GSM8K, MMLU and AlpacaEval texts and the Wikipedia-like article of ``../shared/reference``,
  and the Debian changelogs and copyright notices under ``/usr/share/doc``. Paragraphs are cut
  into sentences; a sentence is kept when it has 6-60 words, starts with a capital, ends with
  . ! or ?, is mostly letters and holds no braces (code). Each distinct sentence once.
* **Pages**: a page belongs to one of N/50 sites; it has the site's navigation and footer
  (repeated on every page of the site: exact line dedup removes them), a title and 3-7
  paragraphs of 2-5 sentences drawn at random from the pool (one paragraph per ``<p>``,
  so one line of extracted text; a repeated paragraph is practically impossible).
* **Planted duplicates** (listed in ``truth.jsonl``): ``exact`` (3%): a copy of an earlier
  page under another site's URL and boilerplate; ``near`` (6%): a copy on another site whose
  words are edited (substitutions, insertions, deletions at a rate drawn from 0-5% per page;
  a paragraph the edits miss stays a repeated line, which line dedup removes from both),
  which puts the true Jaccard similarity on both sides of the 0.8 threshold.
* **Low-quality pages** (12%): link lists, one-word lines, lorem ipsum, code listings, and
  pages in other languages (the ``debian-handbook`` package's HTML in 25 languages when it
  is installed, else the German fixture of ``../shared/reference``).

Pages are written with ``lm/data/warc_write.py`` (one gzip member per record, WARC/1.1),
10,000 per file: ``<out>/warc/part-NNNNN.warc.gz``; ``<out>/truth.jsonl`` has one line per
planted page: ``{"url", "of", "kind"}``. The pages' text (navigation, title, paragraphs,
footer: one line each, as extraction gives it) is also written as a stage under
``<out>/text/docs/`` (the input of ``scale.py --dedup-only``, which skips extract and filters).

    PYTHONPATH=. python bench/scale_corpus.py --docs 100000 --out /tmp/lmpipe-scale/100k
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import gzip
import html
import json
import random
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa

from lm.data.classifier_data import reference_dir, reference_texts
from lm.data.shards import Stage
from lm.data.warc_write import write_warc

PER_FILE = 10_000
TEXT_SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("text", pa.string())])
DOCSTRING_PACKAGES = (
    "numpy",
    "scipy",
    "pyarrow",
    "pydantic",
    "prefect",
    "torch",
    "sqlalchemy",
    "fsspec",
    "httpx",
    "jinja2",
    "click",
    "rich",
    "fastapi",
    "starlette",
    "matplotlib",
    "dask",
    "distributed",
    "ray",
)
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_GOOD_END = re.compile(r"[A-Za-z0-9)\"'][.!?]$")
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo."
)


# --------------------------------------------------------------------------- sentence pool


def _paragraphs() -> Iterator[str]:
    yield from reference_texts()
    ref = reference_dir()
    if ref:
        yield from (ref / "assignment4-data/fixtures/high_quality_wiki_reference.txt").read_text().split("\n")
        data = ref / "assignment5-alignment/data"
        for name in ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "alpaca_eval/alpaca_eval.jsonl"):
            for line in (data / name).read_text().splitlines():
                row = json.loads(line)
                for key in ("question", "answer", "instruction", "output"):
                    if isinstance(row.get(key), str):
                        yield re.sub(r"<<[^>]*>>|####.*", "", row[key]).replace("\n", " ")
        for csv in sorted((data / "mmlu").rglob("*.csv")):
            yield from (line.split(",")[0].strip('"') for line in csv.read_text(errors="replace").splitlines())
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
        yield from path.read_text(errors="replace").split("\n\n")
    for path in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz")):
        yield from gzip.decompress(path.read_bytes()).decode(errors="replace").split("\n  *")
    yield from _docstrings()


def _docstrings() -> Iterator[str]:
    for root in {Path(sysconfig.get_paths()["purelib"]), *(Path(p) for p in sys.path if p.endswith("site-packages"))}:
        for package in DOCSTRING_PACKAGES:
            for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
                if path.stat().st_size > 400_000 or "test" in path.parts[-2]:
                    continue
                try:
                    tree = ast.parse(path.read_text(errors="replace"))
                except (SyntaxError, ValueError):
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                        doc = ast.get_docstring(node)
                        if doc:
                            yield from (" ".join(p.split()) for p in doc.split("\n\n"))


def _good(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 60 or not sentence[0].isupper() or not _GOOD_END.search(sentence):
        return False
    if any(c in sentence for c in "{}[]<>|`=_\\#@$^~*"):
        return False
    alpha = sum(w.strip(".,;:!?()\"'").isalpha() for w in words)
    return alpha >= 0.85 * len(words) and sentence.isascii()


def sentence_pool(limit: int = 400_000) -> list[str]:
    """Distinct real sentences (see the module docstring), at most ``limit``, in a fixed order."""
    seen: dict[str, None] = {}
    for para in _paragraphs():
        for s in _SENT_SPLIT.split(" ".join(para.split())):
            if _good(s):
                seen.setdefault(s, None)
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)


def foreign_paragraphs() -> list[str]:
    """Non-English paragraphs: debian-handbook's pages (other than English) or the German fixture."""
    out = []
    book = Path("/usr/share/doc/debian-handbook/html")
    for page in sorted(book.glob("*/*.html")) if book.is_dir() else []:
        if page.parent.name.startswith("en"):
            continue
        for p in re.findall(r"<p[^>]*>(.*?)</p>", page.read_text(errors="replace"), flags=re.S):
            text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", p)).split())
            if len(text.split()) >= 15:
                out.append(text)
    ref = reference_dir()
    if not out and ref:
        out = [p for p in (ref / "assignment1-basics/fixtures/german.txt").read_text().split("\n") if p.strip()]
    return out


# --------------------------------------------------------------------------- pages


class PageMaker:
    def __init__(self, pool: list[str], foreign: list[str], num_sites: int, rng: random.Random):
        self.pool, self.foreign, self.rng = pool, foreign, rng
        self.vocab = sorted({w for s in pool[:20000] for w in s.split() if w.isalpha()})
        self.sites = [self._site(i) for i in range(num_sites)]

    def _site(self, i: int) -> dict:
        rng = self.rng
        name = f"site{i:06d}.example"
        sections = rng.sample(
            [
                "Home",
                "About us",
                "Products",
                "Blog",
                "News",
                "Contact",
                "Careers",
                "Support",
                "Pricing",
                "Documentation",
                "Community",
                "Events",
                "Press",
                "Partners",
                "Shop",
            ],
            6,
        )
        return {
            "name": name,
            "nav": [f"{s} of {name}" for s in sections],
            "footer": [f"Copyright 2024 {name}. All rights reserved.", f"Privacy policy and terms of use of {name}."],
        }

    def content(self) -> tuple[str, list[str]]:
        rng = self.rng
        title = rng.choice(self.pool)
        paras = [" ".join(rng.choice(self.pool) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(3, 7))]
        return title, paras

    def edit(self, paras: list[str]) -> list[str]:
        """The paragraphs with words substituted, inserted or deleted at one rate drawn from 0-5%
        for the page (a paragraph left unchanged is a repeated line: line dedup removes it)."""
        rng, rate = self.rng, self.rng.uniform(0.0, 0.05)
        out = []
        for p in paras:
            new = []
            for w in p.split():
                r = rng.random()
                new += (
                    [w]
                    if r >= rate
                    else [rng.choice(self.vocab)]
                    if r < rate / 3
                    else [w, rng.choice(self.vocab)]
                    if r < 2 * rate / 3
                    else []
                )
            out.append(" ".join(new))
        return out

    def low_quality(self) -> tuple[str, list[str]]:
        rng = self.rng
        kind = rng.choice(["links", "words", "lorem", "code", "foreign", "foreign"])
        if kind == "links":
            return "Links", [f"{rng.choice(self.vocab)} {rng.choice(self.vocab)}" for _ in range(rng.randint(20, 60))]
        if kind == "words":
            return "Tags", [rng.choice(self.vocab) for _ in range(rng.randint(30, 80))]
        if kind == "lorem":
            return "Lorem", [LOREM] * 3 + [rng.choice(self.pool)]
        if kind == "code":
            return "Code", [
                f"def {rng.choice(self.vocab).lower()}(x): return {{'{rng.choice(self.vocab)}': x}}"
                for _ in range(rng.randint(10, 30))
            ]
        if self.foreign:
            return "Page", [rng.choice(self.foreign) for _ in range(rng.randint(3, 7))]
        return "Page", [LOREM]

    @staticmethod
    def html(site: dict, title: str, paras: list[str]) -> bytes:
        nav = "".join(f'<li><a href="/{i}">{html.escape(s)}</a></li>' for i, s in enumerate(site["nav"]))
        body = "".join(f"<p>{html.escape(p)}</p>\n" for p in paras)
        foot = "".join(f"<p>{html.escape(s)}</p>" for s in site["footer"])
        return (
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head><body>'
            f"<nav><ul>{nav}</ul></nav><h1>{html.escape(title)}</h1>\n<main>{body}</main><footer>{foot}</footer>"
            "</body></html>"
        ).encode()


def build(num_docs: int, out: Path, seed: int = 0, exact: float = 0.03, near: float = 0.06, low: float = 0.12) -> dict:
    """Write ``num_docs`` pages to ``out/warc/*.warc.gz`` and the planted pairs to ``out/truth.jsonl``."""
    rng = random.Random(seed)
    cache = out.parent / "pool.json.gz"  # the pool takes minutes to gather: shared by the sizes
    if not cache.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(gzip.compress(json.dumps([sentence_pool(), foreign_paragraphs()]).encode()))
    pool, foreign = json.loads(gzip.decompress(cache.read_bytes()))
    maker = PageMaker(pool, foreign, max(1, num_docs // 50), rng)
    (out / "warc").mkdir(parents=True, exist_ok=True)
    date = _dt.datetime(2024, 5, 1, tzinfo=_dt.UTC)
    originals: list[tuple[str, str, list[str]]] = []  # (url, title, paragraphs) of recent normal pages
    truth = []
    counts = {"normal": 0, "exact": 0, "near": 0, "low": 0}

    def pages(lo: int, hi: int):
        for i in range(lo, hi):
            site = rng.choice(maker.sites)
            url = f"https://{site['name']}/page/{i}"
            r = rng.random()
            if r < exact + near and originals:
                of_url, title, paras = rng.choice(originals)
                kind = "exact" if r < exact else "near"
                if kind == "near":
                    paras = maker.edit(paras)
                truth.append({"url": url, "of": of_url, "kind": kind})
            elif r < exact + near + low:
                kind, (title, paras) = "low", maker.low_quality()
            else:
                kind, (title, paras) = "normal", maker.content()
                originals.append((url, title, paras))
                if len(originals) > 20_000:  # copies of recent pages: bounded memory
                    originals.pop(rng.randrange(len(originals)))
            counts[kind] += 1
            texts.append(
                {"id": f"{i:08d}", "url": url, "text": "\n".join([*site["nav"], title, *paras, *site["footer"]])}
            )
            yield url, maker.html(site, title, paras), date

    # The pages' text as extraction gives it, as a stage: the input of ``scale.py --dedup-only``.
    text_stage = Stage(out / "text", "docs", version="1", config={"docs": num_docs, "seed": seed})
    for f, lo in enumerate(range(0, num_docs, PER_FILE)):
        texts: list[dict] = []
        write_warc(out / "warc" / f"part-{f:05d}.warc.gz", pages(lo, min(num_docs, lo + PER_FILE)))
        with text_stage.open_shard(f, schema=TEXT_SCHEMA) as w:
            w.count_in(len(texts))
            w.write_table(pa.Table.from_pylist(texts, schema=TEXT_SCHEMA))
    text_stage.commit(num_shards=-(-num_docs // PER_FILE))
    with open(out / "truth.jsonl", "w") as fh:
        fh.writelines(json.dumps(t) + "\n" for t in truth)
    info = {
        "docs": num_docs,
        "seed": seed,
        "pool_sentences": len(pool),
        "foreign_paragraphs": len(foreign),
        **counts,
        "warc_bytes": sum(p.stat().st_size for p in (out / "warc").iterdir()),
    }
    (out / "corpus.json").write_text(json.dumps(info, indent=2))
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(json.dumps(build(a.docs, a.out, a.seed)))


if __name__ == "__main__":
    main()
