"""One style for the Prefect artifacts every stage publishes.

A stage publishes (1) a table of counts, (2) a markdown summary with a few sample rows and
(3) plots as images where a person would rather look than read. Keys are derived from the
stage name so the UI groups a stage's artifacts across runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import urllib.parse
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lm.data.shards import Manifest, read_manifest
from lm.markdown import markdown_table


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def counts_rows(manifest: Manifest) -> list[dict]:
    c, stage = manifest.counts, manifest.stage
    rows = [
        {"stage": stage, "count": "in", "value": c.num_in},
        {"stage": stage, "count": "kept", "value": c.kept},
    ]
    rows += [{"stage": stage, "count": f"rejected: {k}", "value": v} for k, v in c.rejected.items()]
    rows += [{"stage": stage, "count": f"failed: {k}", "value": v} for k, v in c.failed.items()]
    rows += [{"stage": stage, "count": k, "value": v} for k, v in c.extra.items() if isinstance(v, (int, float))]
    return rows


def sample_rows(manifest: Manifest, n: int = 3, kind: str = "shards", width: int = 400) -> list[dict]:
    out: list[dict] = []
    for table in manifest.iter_tables(kind):
        for row in table.slice(0, n - len(out)).to_pylist():
            out.append({k: (v[:width] + "…" if isinstance(v, str) and len(v) > width else v) for k, v in row.items()})
        if len(out) >= n:
            break
    return out


# Set by `lmpipe server` for its workers: where its read-only artifact file server listens.
FILES_URL_ENV = "LMPIPE_FILES_URL"


def link_key(auth: str) -> bytes:
    """The key artifact links are signed with, derived from the server's auth string (so a
    link proves it was made by someone holding it, and never reveals it)."""
    return hmac.new(auth.encode(), b"lmpipe artifact links v1", hashlib.sha256).digest()


def sign_path(key: bytes, path: str) -> str:
    return hmac.new(key, path.encode(), hashlib.sha256).hexdigest()[:32]


def files_url(path: str, base: str, key: bytes) -> str:
    return f"{base.rstrip('/')}/files{urllib.parse.quote(path)}?sig={sign_path(key, path)}"


def path_markdown(path: str | Path) -> str:
    """A local path as an absolute path in backticks, linked to the server's artifact file
    server when this run has one (`file://` links do not open from a browser); URLs as given."""
    s = str(path)
    if "://" in s:
        return f"`{s}`"
    s = str(Path(s).expanduser().resolve())
    base, auth = os.environ.get(FILES_URL_ENV), os.environ.get("PREFECT_API_AUTH_STRING")
    if not (base and auth):
        return f"`{s}`"
    return f"[{s}]({files_url(s, base, link_key(auth))})"  # no code span: the UI shows backticks inside link text


def image_markdown(png: str | Path, alt: str) -> str:
    """Embed a PNG as a data URI so the UI shows it without serving files."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})\n"


def publish_stage(
    manifest_path: str | Path, *, samples: int = 3, text_field: str | None = "text", extra_md: str = ""
) -> None:
    """Publish the counts table and a markdown summary (with sample rows) of a finished stage."""
    m = read_manifest(manifest_path)
    name = m.stage
    create_table_artifact(
        table=counts_rows(m),
        key=artifact_key(name, "counts"),
        description=f"{name}: records in / kept / rejected / failed",
    )
    md = [
        f"# {name}",
        f"Fingerprint `{m.fingerprint}` · directory {path_markdown(m.dir)} · {m.num_shards} shard(s)",
        "",
        markdown_table(counts_rows(m)),
    ]
    if m.inputs:
        md += ["**Inputs**", ""] + [f"- {i.stage} `{i.fingerprint}` ({path_markdown(i.path)})" for i in m.inputs] + [""]
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
        md.append(
            markdown_table(
                [{"id": r.get("id"), "reason": r.get("reason"), "text": r.get(text_field or "", "")} for r in rejects]
            )
        )
    if extra_md:
        md.append(extra_md)
    create_markdown_artifact(
        markdown="\n".join(md), key=artifact_key(name, "summary"), description=f"{name}: summary and samples"
    )
