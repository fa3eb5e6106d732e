"""The out-of-core building blocks: KeySpill hands back every row once, in ascending key
ranges of at most the budget; lookups in a sorted file read it window by window."""

import numpy as np
import pytest

from lm.data.dedup.spill import KEY_SPACE, SPLIT_BYTES, KeySpill, key_ranges, member_of_sorted_file


def _collect(spill: KeySpill):
    groups = list(spill.groups())
    keys = [g["key"] for g in groups]
    for lo_group, hi_group in zip(keys, keys[1:]):
        assert lo_group.max() < hi_group.min()  # disjoint, ascending ranges
    return groups


@pytest.mark.parametrize("budget", [1 << 30, 16384, 2048])
def test_every_row_comes_back_once_within_the_budget(tmp_path, budget):
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**64, size=6000, dtype=np.uint64)
    keys[:500] = keys[500]  # a popular key
    payload = np.arange(len(keys), dtype=np.int64)
    with KeySpill(tmp_path / "s", {"key": np.uint64, "v": np.int64}, budget) as spill:
        for chunk in np.array_split(np.arange(len(keys)), 7):
            spill.add(key=keys[chunk], v=payload[chunk])
        groups = _collect(spill)
        spilled = spill.spilled_bytes
    got = np.concatenate([g["v"] for g in groups])
    assert sorted(got.tolist()) == payload.tolist()
    for g in groups:
        assert (keys[g["v"]] == g["key"]).all()
        # Only the popular key's group may exceed the budget (one key cannot be split).
        assert len(g["key"]) * 16 <= budget or len(np.unique(g["key"])) == 1
    assert (spilled > 0) == (budget < len(keys) * 16)
    assert not (tmp_path / "s").exists()  # spill files removed


def test_rows_kept_in_memory_come_back_a_key_range_at_a_time(tmp_path):
    """Past SPLIT_BYTES, unspilled rows are handed back per key range (each sorted on its own,
    so sorting needs a fraction of the memory), every row once; below it, as one group."""
    rng = np.random.default_rng(1)
    n = SPLIT_BYTES // 16 * 3
    keys = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    with KeySpill(tmp_path / "s", {"key": np.uint64, "v": np.int64}, 1 << 30) as spill:
        for chunk in np.array_split(np.arange(n), 5):
            spill.add(key=keys[chunk], v=chunk)
        groups = _collect(spill)
        assert spill.spilled_bytes == 0
    assert len(groups) == 16 and max(len(g["key"]) for g in groups) < n // 8
    got = np.concatenate([g["v"] for g in groups])
    assert np.array_equal(np.sort(got), np.arange(n)) and all((keys[g["v"]] == g["key"]).all() for g in groups)
    with KeySpill(tmp_path / "t", {"key": np.uint64, "v": np.int64}, 1 << 30) as small:
        small.add(key=keys[:1000], v=np.arange(1000))
        assert [len(g["key"]) for g in small.groups()] == [1000]


def test_narrow_key_ranges_split_again(tmp_path):
    keys = np.arange(1000, 3000, dtype=np.uint64)  # all in one sixteenth of the key space
    with KeySpill(tmp_path / "s", {"key": np.uint64}, 1024) as spill:
        spill.add(key=keys)
        groups = _collect(spill)
    assert np.concatenate([g["key"] for g in groups]).tolist() == keys.tolist()
    assert max(len(g["key"]) for g in groups) * 8 <= 1024


def test_keys_outside_the_range_are_refused(tmp_path):
    with (
        KeySpill(tmp_path / "s", {"key": np.uint64}, 1024, lo=10, hi=20) as spill,
        pytest.raises(ValueError, match=r"\[10, 20\)"),
    ):
        spill.add(key=np.array([5], dtype=np.uint64))


def test_key_ranges_cover_the_space():
    ranges = key_ranges(3)
    assert ranges[0][0] == 0 and ranges[-1][1] == KEY_SPACE
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_member_of_sorted_file_window_by_window(tmp_path):
    rng = np.random.default_rng(1)
    values = np.unique(rng.integers(0, 2**64, size=5000, dtype=np.uint64))
    path = tmp_path / "v.u64"
    values.astype("<u8").tofile(path)
    queries = np.concatenate([values[::7], rng.integers(0, 2**64, size=3000, dtype=np.uint64), values[:3]])
    want = np.isin(queries, values)
    for budget in (80, 800, 1 << 20):
        assert (member_of_sorted_file(path, len(values), queries, budget) == want).all()
    assert member_of_sorted_file(path, 0, queries, 800).sum() == 0
