"""One style for the Prefect artifacts every stage publishes.

A stage publishes (1) a table of counts, (2) a markdown summary with a few sample rows and
(3) plots as images where a person would rather look than read. Keys are derived from the
stage name so the UI groups a stage's artifacts across runs.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lm.data.shards import iter_stage_tables, manifest_dir, read_manifest
from lm.markdown import markdown_table


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def counts_rows(manifest: Mapping) -> list[dict]:
    c = manifest["counts"]
    rows = [
        {"stage": manifest["stage"], "count": "in", "value": c["in"]},
        {"stage": manifest["stage"], "count": "kept", "value": c["kept"]},
    ]
    rows += [{"stage": manifest["stage"], "count": f"rejected: {k}", "value": v} for k, v in c["rejected"].items()]
    rows += [{"stage": manifest["stage"], "count": f"failed: {k}", "value": v} for k, v in c["failed"].items()]
    rows += [
        {"stage": manifest["stage"], "count": k, "value": v}
        for k, v in c.items()
        if k not in {"in", "kept", "rejected", "failed"} and isinstance(v, (int, float))
    ]
    return rows


def sample_rows(manifest: Mapping, n: int = 3, kind: str = "shards", width: int = 400) -> list[dict]:
    out: list[dict] = []
    for table in iter_stage_tables(manifest, kind=kind):
        for row in table.slice(0, n - len(out)).to_pylist():
            out.append({k: (v[:width] + "…" if isinstance(v, str) and len(v) > width else v) for k, v in row.items()})
        if len(out) >= n:
            break
    return out


def image_markdown(png: str | Path, alt: str) -> str:
    """Embed a PNG as a data URI so the UI shows it without serving files."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})\n"


def publish_stage(manifest_path: str | Path, *, samples: int = 3, text_field: str | None = "text", extra_md: str = "") -> None:
    """Publish the counts table and a markdown summary (with sample rows) of a finished stage."""
    m = read_manifest(manifest_path)
    name = m["stage"]
    create_table_artifact(table=counts_rows(m), key=artifact_key(name, "counts"), description=f"{name}: records in / kept / rejected / failed")
    md = [
        f"# {name}",
        f"Fingerprint `{m['fingerprint']}` · directory `{manifest_dir(m)}` · {len(m['shards'])} shard(s)",
        "",
        markdown_table(counts_rows(m)),
    ]
    if m.get("inputs"):
        md += ["**Inputs**", ""] + [f"- {i['stage']} `{i['fingerprint']}` ({i['path']})" for i in m["inputs"]] + [""]
    rows = sample_rows(m, samples)
    if rows:
        md.append("## Sample rows\n")
        for r in rows:
            body = r.pop(text_field, None) if text_field else None
            md.append("```json\n" + json.dumps(r, ensure_ascii=False, default=str) + "\n```")
            if body:
                md.append("> " + body.replace("\n", "\n> ") + "\n")
    rejects = sample_rows(m, samples, kind="rejects", width=200)
    if rejects:
        md.append("## Sample rejects\n")
        md.append(markdown_table([{"id": r.get("id"), "reason": r.get("reason"), "text": r.get(text_field or "", "")} for r in rejects]))
    if extra_md:
        md.append(extra_md)
    create_markdown_artifact(markdown="\n".join(md), key=artifact_key(name, "summary"), description=f"{name}: summary and samples")
