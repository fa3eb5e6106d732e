"""Disk full during a write: a stage whose output does not fit.

Two real mechanisms:

* a small tmpfs as the artifact root (``mount -t tmpfs -o size=…``; needs root/CAP_SYS_ADMIN,
  detected: where mount is refused those tests skip, saying so). Writes fail with ENOSPC.
  "Freeing space" is ``mount -o remount,size=…``.
* unprivileged: ``RLIMIT_FSIZE`` in a subprocess (with SIGXFSZ ignored, a write past the
  limit fails with EFBIG, as it does under ``ulimit -f``). This runs everywhere, CI included.

Survived means: the run fails with a DiskFullError that says what ran out, where, how much is
free and what to do; no partial output is visible (no final-named file without its done
marker, no marker or manifest for the shard that failed, no temporary left to eat space);
and once there is room a rerun completes with output identical to a run that had room.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from flows.data import DataConfig, data_flow
from lm.data.shards import DiskFullError, Stage, read_manifest
from lm.data.stagekey import KEY_NAME, root_key
from lm.tokenizer.stages import (
    commit_tokenize,
    load_stage_tokenizer,
    tokenize_shard,
    tokenize_stage,
    train_tokenizer_stage,
)
from lm.train.trainer import TrainConfig, list_checkpoints, train

REPO = Path(__file__).resolve().parents[2]
NAMES = ["warcfile.warc.gz", "clueweb-quirk.warc.gz"]


@contextlib.contextmanager
def tmpfs(path: Path, size: int):
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
            "the RLIMIT_FSIZE test covers disk full"
        )
    try:
        yield lambda new_size: subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def visible_state(stage_dir: Path) -> tuple[list[str], list[str]]:
    """(problems, leftover temporaries): final-named data files without a done marker, a
    manifest next to missing shards, and hidden temporaries."""
    if not stage_dir.exists():
        return [], []
    names = {p.name for p in stage_dir.iterdir()}
    problems = []
    for n in sorted(names):
        if n.startswith(("part-", "rejects-", "train-", "val-")) and not n.endswith(".done.json"):
            index = n.split("-")[1].split(".")[0]
            if f"part-{index}.done.json" not in names:
                problems.append(f"{n} visible without its done marker")
    if "_manifest.json" in names:
        problems.append("_manifest.json written although the stage did not finish")
    temps = sorted(n for n in names if n.startswith("."))
    return problems, temps


def files_of(d: Path, suffixes=(".parquet", ".bin", ".safetensors")) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.suffix in suffixes}


def check_message(e: BaseException, root: Path) -> str | None:
    msg = str(e)
    want = [
        "no space left on device while writing",
        str(root),
        "free on the filesystem",
        "free space or set root to a larger disk",
    ]
    missing = [w for w in want if w not in msg]
    return f"message lacks {missing}: {msg}" if missing else None


# --------------------------------------------------------------------------- tmpfs


def test_extract_stage_on_a_full_tmpfs(prefect_harness, reference, tmp_path, trials, chaos_record):
    sources = [str(reference / "commoncrawl" / n) for n in NAMES]
    cfg = lambda root: DataConfig(sources=sources, root=str(root), max_workers=1, filters=None)
    want = Path(data_flow(config=cfg(tmp_path / "roomy"))["extract"]).parent
    need = sum(p.stat().st_size for p in want.iterdir())
    survived, notes = 0, []
    for trial in range(trials):
        rng = random.Random(trial)
        root = tmp_path / f"tmpfs-{trial}"
        size = rng.randrange(need // 4, need * 3 // 4) // 4096 * 4096 + 4096
        with tmpfs(root, size) as remount:
            err = None
            try:
                data_flow(config=cfg(root))
            except DiskFullError as e:
                err = e
            stage_dir = root / "extract" / want.name
            problems, temps = visible_state(stage_dir)
            bad = check_message(err, root) if err else "no DiskFullError"
            remount(need * 4)
            got = Path(data_flow(config=cfg(root))["extract"]).parent
            same = files_of(got) == files_of(want) and read_manifest(got)["counts"] == read_manifest(want)["counts"]
            ok = not bad and not problems and not temps and same
            survived += ok
            if not ok:
                notes.append(
                    f"trial {trial} (tmpfs {size} B): {bad}; visible "
                    f"{problems}; temporaries {temps}; same after rerun {same}"
                )
    chaos_record(
        "disk full (tmpfs) during write",
        "extract (Parquet shards)",
        trials,
        survived,
        note="; ".join(notes) or "DiskFullError names path + free space; nothing partial visible; rerun identical",
    )
    assert survived == trials, notes


def test_tokenize_and_checkpoint_on_a_full_tmpfs(prefect_harness, reference, tmp_path, chaos_record):
    """Token shards and checkpoints: the same promises through their own writers."""
    sources = [str(reference / "commoncrawl" / n) for n in NAMES]
    roomy = tmp_path / "roomy"
    corpus = data_flow(config=DataConfig(sources=sources, root=str(roomy), max_workers=1, filters=None))["extract"]
    tdir = Path(
        train_tokenizer_stage(
            roomy, corpus, vocab_size=300, special_tokens=["<|endoftext|>"], sample_bytes=100_000, num_workers=1
        )
    ).parent
    tok = load_stage_tokenizer(tdir)
    n = len(read_manifest(corpus)["shards"])

    def tokenize(root: Path) -> Path:
        stage = tokenize_stage(root, corpus, tdir, val_fraction=0.1, text_field="text")
        for i in range(n):
            tokenize_shard(stage, corpus, tok, i, val_fraction=0.1, text_field="text", num_threads=1)
        commit_tokenize(stage, n, tdir, tok)
        return stage.path

    want_tokens = tokenize(roomy)
    need = sum(p.stat().st_size for p in want_tokens.glob("*.bin"))
    notes = []
    root = tmp_path / "tmpfs-tokens"
    with tmpfs(root, max(4096, need // 2 // 4096 * 4096)) as remount:
        with pytest.raises(DiskFullError) as ei:
            tokenize(root)
        stage_dir = root / "tokenize" / want_tokens.name
        problems, temps = visible_state(stage_dir)
        if (bad := check_message(ei.value, root)) or problems or temps:
            notes.append(f"tokenize: {bad}; visible {problems}; temporaries {temps}")
        remount(need * 4)
        if files_of(tokenize(root)) != files_of(want_tokens):
            notes.append("tokenize: rerun differs from a run with room")

    model = dict(vocab_size=300, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=96)
    cfg = lambda out: TrainConfig.model_validate(
        dict(
            model=model,
            data=str(want_tokens),
            out_dir=str(out),
            batch_size=4,
            max_steps=8,
            lr=3e-3,
            warmup_steps=2,
            eval_interval=8,
            eval_batches=1,
            checkpoint_interval=4,
            keep_last=3,
            log_interval=8,
            device="cpu",
        )
    )
    want_ck = Path(train(cfg(tmp_path / "run"))["checkpoint"])
    ck_bytes = sum(p.stat().st_size for p in want_ck.iterdir())
    out = tmp_path / "tmpfs-run"
    # room for one checkpoint and the metrics, not for the second
    with tmpfs(out, (ck_bytes * 3 // 2) // 4096 * 4096) as remount:
        with pytest.raises(DiskFullError) as ei:
            train(cfg(out))
        finished = [p.name for p in list_checkpoints(out)]
        leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
        if (bad := check_message(ei.value, out)) or finished != ["step-0000004"] or leftovers:
            notes.append(f"checkpoint: {bad}; finished {finished}; temporaries {leftovers}")
        remount(ck_bytes * 8)
        got = Path(train(cfg(out))["checkpoint"])  # resumes from step 4
        if files_of(got) != files_of(want_ck):
            notes.append("checkpoint: resumed run's final weights differ from a run with room")
    chaos_record(
        "disk full (tmpfs) during write",
        "tokenize + pretrain checkpoint",
        1,
        int(not notes),
        note="; ".join(notes) or "DiskFullError; no partial shard/checkpoint; rerun identical",
    )
    assert not notes, notes


def test_the_roots_key_on_a_full_tmpfs(tmp_path):
    """The root's signing key is the first file a new root gets; a disk with no room for it
    fails the shard before any data is written, with the same DiskFullError as every writer."""
    root = tmp_path / "tmpfs-key"
    with tmpfs(root, 8192) as remount:
        with contextlib.suppress(OSError), open(root / "filler", "wb") as f:
            while True:
                f.write(b"x" * 4096)
                f.flush()
        stage = Stage(root, "extract", version="1", config={})
        with pytest.raises(DiskFullError) as direct:  # as when a marker is the first file to be signed
            root_key(stage.path, create=True)
        assert check_message(direct.value, root) is None
        with pytest.raises(DiskFullError) as ei, stage.open_shard(0, schema=pa.schema([("text", pa.string())])) as w:
            w.write({"text": "never reaches the disk"})
        assert check_message(ei.value, root) is None
        assert str(root / KEY_NAME) in str(ei.value)
        assert sorted(p.name for p in root.rglob("*") if p.is_file() and p.name != "filler") == []
        (root / "filler").unlink()
        remount(1 << 20)
        with stage.open_shard(0, schema=pa.schema([("text", pa.string())])) as w:
            w.write({"text": "room now"})
        assert stage.shard_done(0) and (root / KEY_NAME).stat().st_size == 65


# --------------------------------------------------------------------------- RLIMIT_FSIZE (unprivileged)

# The extract stage without Prefect (lm.data.stages, what tasks/extract.py wraps) in a child
# process whose file size limit is argv[3] bytes (0 = unlimited).
CHILD = textwrap.dedent("""
    import resource, signal, sys
    from lm.data.shards import DiskFullError
    from lm.data.stages import run_extract

    root, sources, limit = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        print(run_extract(root, sources))
    except DiskFullError as e:
        print("DiskFullError:", e)
        sys.exit(7)
""")


def run_child(root: Path, sources: list[str], limit: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(root), ",".join(sources), str(limit)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_file_size_limit_unprivileged(reference, tmp_path, trials, chaos_record):
    sources = [str(reference / "commoncrawl" / n) for n in NAMES]
    ref = run_child(tmp_path / "roomy", sources, 0)
    assert ref.returncode == 0, ref.stderr
    want = Path(ref.stdout.strip().splitlines()[-1]).parent
    biggest = max(p.stat().st_size for p in want.glob("*.parquet"))
    survived, notes = 0, []
    for trial in range(trials):
        rng = random.Random(trial)
        root = tmp_path / f"limited-{trial}"
        limit = rng.randrange(biggest // 4, biggest * 9 // 10)
        proc = run_child(root, sources, limit)
        stage_dir = root / "extract" / want.name
        problems, temps = visible_state(stage_dir)
        msg = proc.stdout
        bad = (
            None
            if (
                proc.returncode == 7
                and "file size limit exceeded while writing" in msg
                and str(root) in msg
                and "RLIMIT_FSIZE" in msg
            )
            else f"exit {proc.returncode}: {msg[-300:]} {proc.stderr[-300:]}"
        )
        again = run_child(root, sources, 0)  # the limit lifted: the rerun finishes the stage
        same = again.returncode == 0 and files_of(stage_dir) == files_of(want)
        ok = not bad and not problems and not temps and same
        survived += ok
        if not ok:
            notes.append(
                f"trial {trial} (limit {limit} B): {bad}; visible "
                f"{problems}; temporaries {temps}; same after rerun {same}"
            )
    chaos_record(
        "file size limit (RLIMIT_FSIZE) during write",
        "extract (Parquet shards, lm level)",
        trials,
        survived,
        note="; ".join(notes) or "DiskFullError (EFBIG); nothing partial visible; rerun identical",
    )
    assert survived == trials, notes
