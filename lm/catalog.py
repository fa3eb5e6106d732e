"""What an artifact root holds: its stages, each stage's fingerprints, the latest of each.

    <root>/<stage>/<fingerprint>/_manifest.json        (the stage contract, lm/data/shards.py)

A fingerprint directory is ``complete`` when its manifest reads and matches its checksum,
``corrupt`` when the manifest is there but broken, and ``incomplete`` while a run is writing
it (or was killed): no manifest yet, some shards finished. The *latest* output of a stage is
its complete fingerprint with the newest commit time; configs and the CLI name it
``stage@latest`` (under the config's root), ``<stage folder>@latest`` or
``<stage folder>/latest``. Nothing is written: resolution reads the manifests, so a stage
that a rerun reuses (skipped by fingerprint) keeps its original commit time.

Local roots only (an object-store root has no cheap directory listing here).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm.data.manifest import read_manifest
from lm.data.stage_io import MANIFEST_NAME, ShardCorruptError

LATEST = "latest"
_MARKER_SUFFIX = ".done.json"  # a finished shard's marker: part-NNNNN.done.json


@dataclass
class StageOutput:
    """One fingerprint directory of a stage."""

    stage: str
    fingerprint: str
    path: Path
    status: str  # complete | corrupt | incomplete | other (not a stage output: no manifest, no shard marker)
    committed_at: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    shards: int = 0
    bytes: int = 0
    shards_done: int = 0  # incomplete: shards with a completion marker
    problem: str | None = None  # corrupt: why

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_NAME

    def age(self, now: dt.datetime | None = None) -> str:
        """How long ago it was committed (or last written, when incomplete), e.g. ``3h 12m``."""
        if self.committed_at:
            when = dt.datetime.fromisoformat(self.committed_at)
        else:
            when = dt.datetime.fromtimestamp(self.path.stat().st_mtime, dt.UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return human_age(((now or dt.datetime.now(dt.UTC)) - when).total_seconds())


def human_age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // sub_size}{sub}"
    return f"{s}s"


def _output(stage_dir: Path, fp_dir: Path) -> StageOutput:
    out = StageOutput(stage=stage_dir.name, fingerprint=fp_dir.name, path=fp_dir, status="incomplete")
    if not (fp_dir / MANIFEST_NAME).exists():
        names = [p.name for p in fp_dir.iterdir()]
        out.shards_done = sum(1 for n in names if n.endswith(_MARKER_SUFFIX) and not n.startswith("."))
        if not out.shards_done and any(not n.startswith(".") for n in names):
            out.status = "other"  # files but no manifest or shard marker: a report folder (funnel, pipeline lineage)
        return out
    try:
        m = read_manifest(fp_dir / MANIFEST_NAME)
    except (ShardCorruptError, OSError) as e:
        out.status, out.problem = "corrupt", str(e)
        return out
    out.status = "complete"
    out.committed_at = (m.get("timings") or {}).get("committed_at")
    out.counts = dict(m.get("counts") or {})
    out.config = dict(m.get("config") or {})
    out.shards = len(m.get("shards") or [])
    out.bytes = sum(int(s.get("bytes", 0)) for s in m.get("shards") or [])
    return out


def is_stage_dir(path: str | os.PathLike) -> bool:
    """A stage folder: fingerprint directories inside, no manifest of its own."""
    p = Path(path)
    return (
        p.is_dir()
        and not (p / MANIFEST_NAME).exists()
        and any(c.is_dir() and not c.name.startswith(".") for c in p.iterdir())
    )


def stage_outputs(stage_dir: str | os.PathLike) -> list[StageOutput]:
    """Every fingerprint directory of a stage folder, newest first (incomplete ones on top)."""
    d = Path(stage_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"no stage folder at {d}")
    outs = [_output(d, c) for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return _newest_first(outs)


def _newest_first(outs: list[StageOutput]) -> list[StageOutput]:
    def when(o: StageOutput) -> tuple[str, int]:
        # commit time (seconds), then the manifest's (or, while incomplete, the folder's) mtime
        stamp = (o.manifest if o.manifest.exists() else o.path).stat()
        iso = o.committed_at or dt.datetime.fromtimestamp(stamp.st_mtime, dt.UTC).isoformat(timespec="seconds")
        return iso, stamp.st_mtime_ns

    return sorted(outs, key=when, reverse=True)


def root_stages(root: str | os.PathLike) -> dict[str, list[StageOutput]]:
    """Every stage folder under ``root`` with its outputs (folders without fingerprints are skipped)."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"artifact root {r} does not exist")
    stages = {
        d.name: stage_outputs(d)
        for d in sorted(r.iterdir())
        if d.is_dir() and not d.name.startswith(".") and is_stage_dir(d)
    }
    return {name: outs for name, outs in stages.items() if any(o.status != "other" for o in outs)}


def is_latest_ref(value: str) -> bool:
    """``stage@latest``, ``<path>/<stage>@latest`` or ``<path>/<stage>/latest`` (that does not exist as a directory)."""
    v = value.rstrip("/")
    if v.endswith("@" + LATEST):
        return True
    return Path(v).name == LATEST and "://" not in v and not Path(v).exists()


def latest(stage_dir: str | os.PathLike) -> StageOutput:
    """The complete output of a stage folder with the newest commit time."""
    d = Path(stage_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"no stage folder at {d}: that stage has not run under this root")
    done = [o for o in stage_outputs(d) if o.status == "complete"]
    if not done:
        raise FileNotFoundError(
            f"stage folder {d} has no finished output yet (its runs are incomplete or corrupt): "
            f"see `lmpipe inspect {d}`"
        )
    return done[0]


def resolve_latest(ref: str, root: str | os.PathLike = "outputs") -> str:
    """The manifest path a ``…@latest`` / ``…/latest`` reference names (see the module docstring)."""
    v = ref.rstrip("/")
    base = v[: -len("@" + LATEST)] if v.endswith("@" + LATEST) else str(Path(v).parent)
    if "://" in str(root) and "/" not in base:
        raise ValueError(f"{ref!r}: `@latest` needs a local artifact root, not {root}; give the stage's manifest path")
    stage_dir = Path(root) / base if "/" not in base and os.sep not in base else Path(base)
    return str(latest(stage_dir.expanduser()).manifest)


def config_diff(a: dict, b: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every leaf that differs; ``<unset>`` where absent."""
    rows = []
    for k in sorted(set(a) | set(b), key=str):
        key = f"{prefix}{k}"
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if isinstance(va, dict) and isinstance(vb, dict):
            rows += config_diff(va, vb, key + ".")
        elif json.dumps(va, sort_keys=True, default=str) != json.dumps(vb, sort_keys=True, default=str):
            rows.append((key, va, vb))
    return rows


# --------------------------------------------------------------------------- listings


def _counts_text(o: StageOutput) -> str:
    c = o.counts
    if not c:
        return ""
    parts = [f"in {c.get('in', 0):,}", f"kept {c.get('kept', 0):,}"]
    rejected = sum((c.get("rejected") or {}).values())
    failed = sum((c.get("failed") or {}).values())
    if rejected:
        parts.append(f"rejected {rejected:,}")
    if failed:
        parts.append(f"failed {failed:,}")
    return ", ".join(parts)


def _short(v: Any, width: int = 40) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_stage_folder(stage_dir: str | os.PathLike, max_diffs: int = 12) -> str:
    """A stage folder's fingerprints, newest first: status, counts, shards, age, and what
    changed in the config from each output to the next newer one."""
    outs = stage_outputs(stage_dir)
    d = Path(stage_dir)
    if not outs:
        return f"stage folder {d}: no outputs yet"
    done = [o for o in outs if o.status == "complete"]
    lines = [f"stage {d.name}: {len(outs)} output(s) in {d}" + (f"; latest = {done[0].fingerprint}" if done else "")]
    lines.append(f"  {'fingerprint':<20} {'status':<11} {'age':>8}  {'shards':>6}  counts")
    for o in outs:
        what = {
            "complete": _counts_text(o),
            "incomplete": f"{o.shards_done} shard(s) finished so far",
            "other": "no manifest: not a stage output",
        }.get(o.status, (o.problem or "")[:100])
        shards = str(o.shards) if o.status == "complete" else "-"
        lines.append(f"  {o.fingerprint:<20} {o.status:<11} {o.age():>8}  {shards:>6}  {what}")
    for newer, older in zip(done, done[1:]):
        diff = config_diff(older.config, newer.config)
        same = " no difference in config (the inputs differ)" if not diff else ""
        lines.append(f"config {older.fingerprint} -> {newer.fingerprint}:{same}")
        for key, va, vb in diff[:max_diffs]:
            lines.append(f"  {key}: {_short(va)} -> {_short(vb)}")
        if len(diff) > max_diffs:
            lines.append(f"  … {len(diff) - max_diffs} more")
    return "\n".join(lines)


def describe_root(root: str | os.PathLike) -> str:
    """Every stage under ``root``: how many outputs, the latest one, its age and counts."""
    stages = root_stages(root)
    if not stages:
        return f"no stage outputs under {root}"
    lines = [f"{'stage':<22} {'outputs':>7}  {'latest':<20} {'age':>8}  counts"]
    for name, outs in stages.items():
        done = [o for o in outs if o.status == "complete"]
        if done:
            o = done[0]
            lines.append(f"{name:<22} {len(outs):>7}  {o.fingerprint:<20} {o.age():>8}  {_counts_text(o)}")
        else:
            lines.append(f"{name:<22} {len(outs):>7}  {'(none finished)':<20}")
    lines.append(f"\none stage's outputs: lmpipe ls STAGE --root {root}    the newest output of a stage: STAGE@latest")
    return "\n".join(lines)
