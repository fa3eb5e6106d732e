"""Disk full while a dedup reduction spills (the unprivileged mechanism of test_disk_full.py:
``RLIMIT_FSIZE`` in a child process, so a write past the limit fails with EFBIG).

The reductions are run with a tiny ``memory_mb``, so their keys go to spill files; the limit
lies between the size of what the step keeps (its shard, marker) and the size a spill file
reaches, so the spill is what fails. Survived means: a DiskFullError naming the spill file
and the limit; nothing partial visible in the stage directory (no shard, marker or manifest
of the failed step, no spill directory, no temporary); and once the limit is lifted a rerun
writes exactly what a run that had room wrote.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from lm.data.dedup.stages import MinHashConfig, line_counts_shard, line_counts_stage, signatures_shard, signatures_stage
from lm.data.shards import Stage

REPO = Path(__file__).resolve().parents[2]
DOC_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])
STEPS = {
    # step: (the call the child makes, the stage directory it writes)
    "line_duplicates": (
        (
            "S.line_duplicates_partition(root, S.ExactDedupConfig(memory_mb=0.05), inp, 1, 0); "
            "S.line_duplicates_finish(root, inp, 1)"
        ),
        "line_duplicates",
    ),
    "minhash_buckets": (
        (
            "S.buckets_partition(root, S.MinHashConfig(memory_mb=0.05), inp, 1, 0); "
            "S.buckets_stage(root, S.MinHashConfig(), inp, 1).commit(num_shards=1)"
        ),
        "minhash_buckets",
    ),
}
CHILD = textwrap.dedent("""
    import resource, signal, sys
    from lm.data.dedup import stages as S
    from lm.data.shards import DiskFullError
    root, inp, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        {call}
    except DiskFullError as e:
        print("DiskFullError:", e)
        sys.exit(7)
""")


def make_docs(root: Path) -> str:
    """3 shards of documents whose lines are (nearly) all distinct, 10 near-duplicate pairs."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    texts = ["\n".join(" ".join(rng.choice(vocab) for _ in range(8)) for _ in range(12)) for _ in range(900)]
    texts += [t.replace("w", "v", 1) for t in texts[:10]]
    st = Stage(root, "docs", version="test", config={})
    for i in range(3):
        part = texts[i::3]
        with st.open_shard(i, schema=DOC_SCHEMA) as w:
            w.count_in(len(part))
            w.write_table(pa.table({"id": [f"d{i}-{k}" for k in range(len(part))], "text": part}, schema=DOC_SCHEMA))
    return str(st.commit(num_shards=3))


def step_input(step: str, root: Path) -> str:
    docs = make_docs(root)
    if step == "line_duplicates":
        for i in range(3):
            line_counts_shard(str(root), docs, i)
        return str(line_counts_stage(str(root), docs).commit(num_shards=3))
    cfg = MinHashConfig()
    for i in range(3):
        signatures_shard(str(root), cfg, docs, i)
    return str(signatures_stage(str(root), cfg, docs).commit(num_shards=3))


def run_child(step: str, root: Path, inp: str, limit: int) -> subprocess.CompletedProcess:
    code = CHILD.replace("{call}", STEPS[step][0])
    return subprocess.run(
        [sys.executable, "-c", code, str(root), inp, str(limit)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def outputs(stage_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stage_dir.iterdir()) if p.suffix in (".parquet", ".u64")}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_disk_full_during_a_spill(step, tmp_path, trials, chaos_record):
    roomy = tmp_path / "roomy"
    inp = step_input(step, roomy)
    ref = run_child(step, roomy, inp, 0)
    assert ref.returncode == 0, ref.stderr
    (want,) = (roomy / STEPS[step][1]).iterdir()
    kept = max(p.stat().st_size for p in want.iterdir())  # the biggest file the step keeps
    survived, notes = 0, []
    for trial in range(trials):
        root = tmp_path / f"limited-{trial}"
        inp = step_input(step, root)
        limit = kept + 512 + random.Random(trial).randrange(512)
        proc = run_child(step, root, inp, limit)
        stage_dir = root / STEPS[step][1] / want.name
        names = sorted(p.name for p in stage_dir.iterdir()) if stage_dir.exists() else []
        leftovers = [
            n for n in names if n.startswith(".") or n.endswith((".done.json", ".parquet")) or n == "_manifest.json"
        ]
        msg = proc.stdout
        bad = (
            None
            if (
                proc.returncode == 7
                and "file size limit exceeded while writing" in msg
                and ".spill-" in msg
                and "RLIMIT_FSIZE" in msg
            )
            else f"exit {proc.returncode}: {msg[-300:]} {proc.stderr[-300:]}"
        )
        again = run_child(step, root, inp, 0)
        same = again.returncode == 0 and outputs(stage_dir) == outputs(want)
        ok = not bad and not leftovers and same
        survived += ok
        if not ok:
            notes.append(f"trial {trial} (limit {limit} B): {bad}; left {leftovers}; same after rerun {same}")
    chaos_record(
        "file size limit (RLIMIT_FSIZE) during a spill",
        f"{step} (memory_mb=0.05)",
        trials,
        survived,
        note="; ".join(notes) or "DiskFullError names the spill file; nothing partial visible; rerun identical",
    )
    assert survived == trials, notes
