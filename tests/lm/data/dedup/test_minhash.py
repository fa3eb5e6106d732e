import pytest

from lm.data import minhash_dedup
from lm.data.dedup.minhash import UnionFind, normalize, shingles


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


def test_union_find_keeps_smallest():
    uf = UnionFind()
    uf.union(3, 1)
    uf.union(4, 3)
    uf.union(7, 8)
    assert uf.find(4) == 1 and uf.find(8) == 7


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
    kept = minhash_dedup([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "out", num_hashes=20, num_bands=5, ngrams=2, threshold=0.8)
    assert len(kept) == 2
