"""A human summary of a finished stage (what ``lmpipe inspect <stage dir>`` prints).

It reads only through :class:`lm.data.manifest.Manifest`, so a manifest that is damaged, not
signed with its root's key, or that names a file outside its stage directory is refused with
an error, and the sample rows come from sha256-verified shards.
"""

from __future__ import annotations

import json
import os

from lm.data.manifest import Manifest


def describe(stage_dir: str | os.PathLike, num_samples: int = 3, width: int = 300) -> str:
    """Counts, lineage, shards and a few sample rows of the stage at ``stage_dir``."""
    m = Manifest.read(stage_dir)
    c = m.counts
    lines = [
        f"stage       {m.stage}  (fingerprint {m.fingerprint}, version {m.version})",
        f"directory   {m.dir}",
        f"committed   {m.timings.get('committed_at')}",
        f"records     in {c.num_in:,}  kept {c.kept:,}  rejected {c.num_rejected:,}  failed {c.num_failed:,}",
    ]
    lines += [f"  rejected  {reason}: {n:,}" for reason, n in c.rejected.items()]
    lines += [f"  failed    {kind}: {n:,}" for kind, n in c.failed.items()]
    lines += [f"  {k}: {v}" for k, v in c.extra.items()]
    lines += [f"input       {i.stage} {i.fingerprint}  {i.path}" for i in m.inputs]
    lines += [f"source      {s}" for s in m.sources[:5]]
    for kind, what in m.declared.items():
        lines.append(f"declared    {kind}: {json.dumps(what, sort_keys=True)[:width]}")
    lines.append(f"shards      {m.num_shards} ({sum(s.num_bytes or 0 for s in m.shards):,} bytes)")
    if m.config:
        lines.append(f"config      {json.dumps(m.config, sort_keys=True)[:width]}")
    shown = 0
    # Sample rows from Parquet shards only (a token stage's shards are raw .bin arrays).
    for i, s in enumerate(m.shards):
        if shown >= num_samples:
            break
        if not s.name.endswith(".parquet"):
            continue
        for row in m.read_shard(i).slice(0, num_samples - shown).to_pylist():
            shown += 1
            text = {k: (v[:width] + "…" if isinstance(v, str) and len(v) > width else v) for k, v in row.items()}
            lines.append(f"sample {shown}:  {json.dumps(text, ensure_ascii=False, default=str)}")
    return "\n".join(lines)
