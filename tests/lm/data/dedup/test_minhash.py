import logging
import random
import re
import unicodedata

import numpy as np
import pytest

from lm.data import minhash_dedup
from lm.data.dedup.minhash import (
    Features,
    clusters,
    jaccard,
    normalize,
    shingle_hashes,
    shingle_sets,
    shingles,
    signatures,
    similarity,
)


def test_exact_duplicates(reference, tmp_path):
    inputs = sorted((reference / "assignment4-data/fixtures/documents_with_line_duplicates").iterdir())
    kept = minhash_dedup(inputs, tmp_path, num_hashes=100, num_bands=10, ngrams=5, threshold=0.8)
    names = sorted(p.name for p in kept)
    assert len(names) == 4
    assert ("doc1.txt" in names) != ("doc2.txt" in names)  # exactly one of the identical pair
    for p in kept:
        assert p.read_bytes() == next(i for i in inputs if i.name == p.name).read_bytes()


def test_fuzzy_duplicates(reference, tmp_path):
    inputs = sorted((reference / "assignment4-data/fixtures/documents_with_fuzzy_duplicates").iterdir())
    kept = {p.name for p in minhash_dedup(inputs, tmp_path, num_hashes=500, num_bands=50, ngrams=5, threshold=0.8)}
    assert len(kept) == 2
    assert "pytorch_license.txt" in kept
    assert len(kept & {"rails_mit_license.txt", "react_mit_license.txt"}) == 1


def test_normalization():
    assert normalize("  Café, RÉSUMÉ!\n\tnaïve  ") == "cafe resume naive"
    assert shingles("a b", 5) == {"a b"}
    assert shingles("", 5) == set()
    assert shingles("A, b; c d", 3) == {"a b c", "b c d"}


def test_clusters_keep_the_smallest_document():
    # Components {1, 3, 4} and {7, 8}; 3-4 is verified twice with different similarities.
    dropped, kept, best = clusters(np.array([1, 3, 7, 3]), np.array([3, 4, 8, 4]), np.array([0.9, 0.85, 0.95, 0.99]))
    assert dropped.tolist() == [3, 4, 8] and kept.tolist() == [1, 1, 7]
    assert best.tolist() == [0.99, 0.99, 0.95]
    assert [len(x) for x in clusters(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))] == [0, 0, 0]


def _reference_normalize(text: str) -> str:
    """The definition (what the string shingles of CS336 use), one character at a time."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def test_normalize_matches_its_definition_on_random_unicode():
    rng = random.Random(0)
    alphabet = [
        chr(c)
        for c in [
            *range(0x250),
            *range(0x300, 0x370),
            *range(0x1C, 0x20),
            0x85,
            0xA0,
            0x2028,
            0x3000,
            0x200B,
            0xFEFF,
            0x1E9E,
            0x130,
            0x4E00,
            0x627,
            0x664,
            0x1F600,
            0xFB01,
        ]
    ]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert normalize(text) == _reference_normalize(text), repr(text)


def test_shingle_hashes_are_the_shingles(reference):
    """Equal shingles hash equal, different shingles differ, one hash per window, across texts."""
    texts = [
        (reference / "assignment4-data/fixtures/moby_extracted.txt").read_text()[:20000],
        "a b",
        "",
        None,
        "Café, RÉSUMÉ naïve déjà vu x",
        "the same five word window " * 3,
    ]
    for n in (1, 3, 5):
        h, owner = shingle_hashes(texts, n)
        assert (np.diff(owner) >= 0).all()
        by_shingle: dict[str, int] = {}
        for i, text in enumerate(texts):
            words = normalize(text or "").split()
            windows = [" ".join(words[k : k + n]) for k in range(len(words) - n + 1)] or (
                [" ".join(words)] if words else []
            )
            mine = h[owner == i].tolist()
            assert len(mine) == len(windows)
            for w, x in zip(windows, mine):
                assert by_shingle.setdefault(w, x) == x
        assert len(set(by_shingle.values())) == len(by_shingle)


def test_similarity_exact_and_estimated(reference):
    words = (reference / "assignment4-data/fixtures/high_quality_wiki_reference.txt").read_text().split()
    rng = random.Random(1)
    docs = [" ".join(words[i : i + 200]) for i in range(0, 8000, 200)]
    edited = [" ".join(w if rng.random() > 0.04 else "zzz" for w in d.split()) for d in docs]
    texts = docs + edited
    a, b = np.arange(len(docs)), np.arange(len(docs)) + len(docs)
    values, offsets = shingle_sets(texts, 5)
    exact = similarity(
        Features(np.arange(len(texts)), values, offsets),
        a,
        Features(np.arange(len(texts)), values, offsets),
        b,
        max_elements=700,
    )  # several chunks
    truth = [jaccard(shingles(x, 5), shingles(y, 5)) for x, y in zip(docs, edited)]
    assert exact.tolist() == truth
    sig, count = signatures(texts, 256, 5)
    assert (count > 0).all() and sig.dtype == np.uint32
    est = similarity(Features(np.arange(len(texts)), sig), a, Features(np.arange(len(texts)), sig), b)
    assert abs(est - np.array(truth)).mean() < 0.04


def test_bounded_memory_path_spills_and_decides_the_same(reference, tmp_path, caplog):
    inputs = sorted((reference / "assignment4-data/fixtures/documents_with_fuzzy_duplicates").iterdir())
    kw = dict(num_hashes=500, num_bands=50, ngrams=5, threshold=0.8)
    roomy = {p.name for p in minhash_dedup(inputs, tmp_path / "a", **kw)}
    with caplog.at_level(logging.INFO, logger="lm.data.dedup.spill"):
        tight = {p.name for p in minhash_dedup(inputs, tmp_path / "b", memory_mb=0.001, spill_dir=tmp_path, **kw)}
    assert tight == roomy and len(roomy) == 2
    assert any("spilled" in r.message for r in caplog.records)
    assert not any(p.name.startswith("lmpipe-") for p in tmp_path.iterdir())  # the spill directory is gone


def test_verify_by_signature(reference, tmp_path):
    inputs = sorted((reference / "assignment4-data/fixtures/documents_with_fuzzy_duplicates").iterdir())
    kept = {
        p.name
        for p in minhash_dedup(
            inputs, tmp_path, num_hashes=500, num_bands=50, ngrams=5, threshold=0.8, verify="signature"
        )
    }
    assert "pytorch_license.txt" in kept and len(kept & {"rails_mit_license.txt", "react_mit_license.txt"}) == 1
    with pytest.raises(ValueError, match="verify"):
        minhash_dedup(inputs, tmp_path, num_hashes=500, num_bands=50, ngrams=5, threshold=0.8, verify="guess")


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(num_hashes=100, num_bands=7, ngrams=5, threshold=0.8), "num_bands"),
        (dict(num_hashes=100, num_bands=10, ngrams=0, threshold=0.8), "ngrams"),
        (dict(num_hashes=100, num_bands=10, ngrams=5, threshold=1.5), "threshold"),
    ],
)
def test_bad_parameters(tmp_path, kw, field):
    with pytest.raises(ValueError, match=field):
        minhash_dedup([], tmp_path, **kw)


def test_empty_documents_are_not_duplicates_of_each_other(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("")
    kept = minhash_dedup(
        [tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "out", num_hashes=20, num_bands=5, ngrams=2, threshold=0.8
    )
    assert len(kept) == 2
