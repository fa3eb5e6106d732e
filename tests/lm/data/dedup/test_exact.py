import numpy as np
import pytest

from lm.data import exact_line_dedup
from lm.data.dedup.exact import drop_lines, duplicate_hashes, line_hash_counts


def test_reproduces_cs336_reference(reference, tmp_path):
    fx = reference / "assignment4-data/fixtures"
    inputs = sorted((fx / "documents_with_line_duplicates").iterdir())
    written = exact_line_dedup(inputs, tmp_path)
    assert [p.name for p in written] == [p.name for p in inputs]
    for p in written:
        assert p.read_bytes() == (fx / "documents_line_deduplicated" / p.name).read_bytes(), p.name


def test_counts_merge_across_shards():
    a = line_hash_counts(["x\ny\n", "z"])
    b = line_hash_counts(["y\nw"])
    dups = duplicate_hashes([a, b])
    assert len(dups) == 1
    assert drop_lines("x\ny\nz", dups) == ("x\nz", 1)
    assert drop_lines("", dups) == ("", 0)
    assert drop_lines("x", np.empty(0, dtype=np.uint64)) == ("x", 0)


def test_line_endings_and_control_characters(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.txt").write_bytes(b"same\r\nunique a\x0bvt\r\n")
    (tmp_path / "in/b.txt").write_bytes(b"same\nunique b\x00")
    exact_line_dedup([tmp_path / "in/a.txt", tmp_path / "in/b.txt"], tmp_path / "out")
    assert (tmp_path / "out/a.txt").read_bytes() == b"unique a\x0bvt\r\n"
    assert (tmp_path / "out/b.txt").read_bytes() == b"unique b\x00"


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        exact_line_dedup([tmp_path / "missing.txt"], tmp_path / "out")


def test_fold_matches_a_global_count():
    import random
    from collections import Counter

    from lm.data.dedup.exact import line_hash

    rng = random.Random(0)
    shards = [[" ".join(rng.choice("abcdefgh") for _ in range(2)) for _ in range(rng.randint(0, 30))] for _ in range(7)]
    counts = Counter(line_hash(line) for shard in shards for line in shard)
    expected = sorted(h for h, c in counts.items() if c > 1)
    got = duplicate_hashes(line_hash_counts(["\n".join(s)]) for s in shards)
    assert got.tolist() == expected


def test_bounded_memory_path_spills_and_writes_the_same(reference, tmp_path, caplog):
    import logging

    inputs = sorted((reference / "assignment4-data/fixtures/documents_with_line_duplicates").iterdir())
    with caplog.at_level(logging.INFO, logger="lm.data.dedup.spill"):
        written = exact_line_dedup(inputs, tmp_path / "out", memory_mb=0.0001, spill_dir=tmp_path)
    assert any("spilled" in r.message for r in caplog.records)
    expected = reference / "assignment4-data/fixtures/documents_line_deduplicated"
    assert [p.read_bytes() for p in written] == [(expected / p.name).read_bytes() for p in written]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # spill files removed


def test_duplicate_hashes_spilled_match_in_memory(tmp_path):
    import random

    rng = random.Random(3)
    parts = [line_hash_counts(["\n".join(str(rng.randrange(400)) for _ in range(300))]) for _ in range(6)]
    assert duplicate_hashes(parts, memory_mb=0.001, spill_dir=tmp_path).tolist() == duplicate_hashes(parts).tolist()
