"""The 7 dedup stages from plain Python: no Prefect, the decisions of the v1 stages on the
funnel fixture, the same bytes whatever the memory budget (spilling forced) or the number
of hash-range tasks, and a clean rerun."""

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lm.data.dedup.stages import STAGE_NAMES, ExactDedupConfig, MinHashConfig, run_exact_dedup, run_minhash
from lm.data.shards import accounted, iter_rows, manifest_dir, read_manifest

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "tests"))
from funnel_inputs import make_extract

MH = dict(num_hashes=100, num_bands=20, threshold=0.8, num_bucket_tasks=2)
AUTO_TASKS = {k: v for k, v in MH.items() if k != "num_bucket_tasks"}
# What the v1 stages (datasketch signatures, in-memory reductions) decided on this input.
EXACT_REJECTS = {
    "wiki://1": "empty_after_line_dedup",
    "wiki://1-copy": "empty_after_line_dedup",
    "bad://empty": "empty_after_line_dedup",
}
NEAR_DUPLICATES = {"wiki://0-edited", "bad://huge-line", "fixture://rails_mit_license.txt"}


def run_both(root: Path, extract: str, memory_mb: float = 512, **kw) -> tuple[str, str]:
    exact = run_exact_dedup(
        str(root), ExactDedupConfig(memory_mb=memory_mb, num_partitions=kw.pop("num_partitions", None)), extract
    )
    return exact, run_minhash(str(root), MinHashConfig(memory_mb=memory_mb, **MH, **kw), exact)


def stage_files(root: Path) -> dict[str, dict[str, bytes]]:
    """Every Parquet file and the lookup file of every dedup stage, by stage."""
    out = {}
    for name in STAGE_NAMES:
        (d,) = [p for p in (root / name).iterdir() if p.is_dir()]
        out[name] = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.suffix in (".parquet", ".u64")}
        assert not [p.name for p in d.iterdir() if p.name.startswith(".") or p.name == "work"], f"{name}: leftovers"
    return out


@pytest.fixture(scope="module")
def roomy(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("roomy")
    extract = make_extract(root, reference)
    return root, extract, run_both(root, extract)


def test_runs_without_prefect_and_keeps_the_v1_decisions(reference, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from pathlib import Path
        from funnel_inputs import make_extract
        from lm.data.dedup.stages import ExactDedupConfig, MinHashConfig, run_exact_dedup, run_minhash
        root = Path(sys.argv[1])
        exact = run_exact_dedup(str(root), ExactDedupConfig(), make_extract(root, Path(sys.argv[2])))
        final = run_minhash(str(root), MinHashConfig(**{AUTO_TASKS!r}), exact)  # bucket tasks by corpus size
        assert "prefect" not in sys.modules, "the dedup stages imported prefect"
        print(exact); print(final)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(reference)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    exact, final = proc.stdout.split()
    assert {r["url"]: r["reason"] for r in iter_rows(exact, kind="rejects")} == EXACT_REJECTS
    assert {r["url"] for r in iter_rows(final, kind="rejects")} == NEAR_DUPLICATES
    assert {r["reason"] for r in iter_rows(final, kind="rejects")} == {"near_duplicate"}
    for m in (exact, final):
        assert accounted(read_manifest(m))
    # The clusters table names the document each dropped one duplicates.
    clusters = read_manifest(read_manifest(final)["inputs"][1]["path"])
    rows = list(iter_rows(clusters))
    by_id = {r["id"]: r["url"] for r in iter_rows(exact)}
    assert {by_id[r["id"]]: by_id[r["duplicate_of_id"]] for r in rows}["wiki://0-edited"] == "wiki://0"
    assert all(r["jaccard"] >= 0.8 for r in rows) and len(clusters["shards"]) == len(read_manifest(exact)["shards"])


def test_same_bytes_whatever_the_memory_budget(roomy, reference, tmp_path, caplog):
    root, _, _ = roomy
    with caplog.at_level(logging.INFO, logger="lm.data.dedup.spill"):
        run_both(tmp_path, make_extract(tmp_path, reference), memory_mb=0.002, num_partitions=3)
    assert sum("spilled" in r.message for r in caplog.records) >= 3  # counts, band keys and pairs went to disk
    want, got = stage_files(root), stage_files(tmp_path)
    for name in STAGE_NAMES:
        if name == "line_duplicates":  # 3 hash ranges instead of 1: the same hashes in 3 shards
            assert got[name]["duplicates.u64"] == want[name]["duplicates.u64"] and len(got[name]) == 3 + 1
            continue
        assert got[name] == want[name], name


def test_rerun_finds_every_stage_complete(roomy):
    root, extract, (exact, final) = roomy
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("_manifest.json")}
    assert run_both(root, extract) == (exact, final)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("_manifest.json")} == mtimes


def test_a_damaged_shard_is_recomputed(roomy):
    root, extract, (exact, final) = roomy
    clusters = Path(read_manifest(final)["inputs"][1]["path"]).parent
    shard = clusters / "part-00001.parquet"
    good = shard.read_bytes()
    shard.write_bytes(good[:-10])
    final_dir = manifest_dir(read_manifest(final))
    (final_dir / "_manifest.json").unlink()  # the next stage must reread it
    assert run_both(root, extract)[1] == final
    assert shard.read_bytes() == good


def test_verify_by_signature_estimate(roomy, tmp_path):
    _, extract, (exact, _) = roomy
    final = run_minhash(str(tmp_path), MinHashConfig(**MH, verify="signature"), exact)
    assert {r["url"] for r in iter_rows(final, kind="rejects")} == NEAR_DUPLICATES
    assert read_manifest(final)["config"]["verify"] == "signature"


def test_a_range_read_refuses_a_changed_file(reference, tmp_path):
    """Reductions read parts of their input's shards (size-checked: the stage's sha256 was
    verified by is_complete before); a file changed since then fails loudly."""
    from lm.data.dedup.stages import line_duplicates_partition
    from lm.data.shards import ShardCorruptError

    counts = run_exact_dedup(
        str(tmp_path), ExactDedupConfig(), make_extract(tmp_path, reference), stop_after="line_counts"
    )
    with open(Path(counts).parent / "part-00001.parquet", "ab") as f:
        f.write(b"junk")
    with pytest.raises(ShardCorruptError, match="part-00001.parquet"):
        line_duplicates_partition(str(tmp_path), ExactDedupConfig(), counts, 1, 0)
    with pytest.raises(ValueError, match="stop_after='minhash'"):
        run_exact_dedup(str(tmp_path), ExactDedupConfig(), counts, stop_after="minhash")
