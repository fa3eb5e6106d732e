"""What a pipeline run produced: the lineage of every stage output it used (``lineage.json``,
the documents funnel plot, the summary markdown) and the plain warning when a stage's output is
too small for what follows to mean anything. ``flows.pipeline`` runs the stages and calls these.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lm.data.shards import atomic_write_json, fingerprint, manifest_dir, read_manifest

VERSION = "1"  # of the lineage directory's fingerprint


def too_small(name: str, manifest_path: str) -> str | None:
    """A plain warning when a stage's output is too small for what follows to mean anything.

    A pretraining run on a corpus with no validation split reports only its training loss
    (0.037 on 11 documents: memorized, not learned); say so where a person looks.
    """
    m = read_manifest(manifest_path)
    c = m.get("counts", {})
    if name == "tokenize" and not c.get("tokens_val"):
        return (
            f"tokenize wrote no validation tokens ({c.get('tokens_train', 0):,} "
            "train tokens): pretraining will report a "
            "training loss with no validation loss to judge it by. Add sources (the demo adds the debian-handbook WARC "
            "when that package is installed) or raise stages.tokenize.val_fraction."
        )
    if name == "pretrain" and m.get("final_val_loss") is None:
        return (
            f"pretrain has no validation loss (train loss {m.get('final_train_loss')}): the corpus had no validation "
            "split, so the training loss says nothing about what the model learned."
        )
    return None


# --------------------------------------------------------------------------- lineage


def lineage(final: Mapping[str, str], started_at: str, given: Mapping[str, str] | None = None) -> list[dict]:
    """Every manifest the given stage outputs descend from, upstream first.

    ``final``: pipeline stage name -> manifest path; ``given``: the same for stages that ran
    before this pipeline started (``manifests``), so their rows carry their own stage name.
    Each row says which pipeline stage it belongs to, whether it was written during this run
    (``ran``) or found (``reused``).
    """
    rows: dict[str, dict] = {}

    def visit(path: str, owner: str) -> None:
        m = read_manifest(path)
        key = m["_path"]
        if key in rows:
            return
        for inp in m.get("inputs", []):
            visit(inp["path"], owner)
        c = m.get("counts", {})
        committed = m.get("timings", {}).get("committed_at", "")
        rows[key] = {
            "pipeline_stage": owner,
            "stage": m["stage"],
            "fingerprint": m["fingerprint"],
            "status": "ran" if committed >= started_at else "reused",
            "in": c.get("in", 0),
            "kept": c.get("kept", 0),
            "rejected": sum(c.get("rejected", {}).values()),
            "failed": sum(c.get("failed", {}).values()),
            "shards": len(m.get("shards", [])),
            "bytes": sum(s.get("bytes", 0) for s in m.get("shards", [])),
            "directory": str(manifest_dir(m).resolve()),
            "documents": "text" in (m.get("schema") or {}),  # rows are documents (not lines, hashes, tokens)
        }

    for owner, path in [*(given or {}).items(), *final.items()]:
        visit(path, owner)
    return list(rows.values())


def lineage_plot(rows: list[dict], png: Path) -> Path | None:
    """Documents in and kept per data stage (the funnel from crawl to corpus), as a PNG.

    Only the data stages whose rows are documents: helper stages (line hashes, MinHash
    signatures) and later stages (tokens, steps, examples) count other things, which would
    share an axis with documents and mislead.
    """
    rows = [r for r in rows if r["pipeline_stage"] == "data" and r["documents"] and (r["in"] or r["kept"])]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    labels = [f"{r['stage']} ({r['status']})" for r in rows]
    y = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.6))
    ax.barh([i + 0.2 for i in y], [r["in"] for r in rows], height=0.4, label="in", color="#9db4d6")
    ax.barh([i - 0.2 for i in y], [r["kept"] for r in rows], height=0.4, label="kept", color="#2c6fbb")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()  # upstream at the top, like reading the pipeline
    ax.set_xlabel("documents")
    ax.set_title("Documents through the data stages")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def lineage_markdown(rows: list[dict], png: Path | None, out_dir: Path, warnings: list[str] = ()) -> str:
    from tasks.artifacts import image_markdown, markdown_table, path_markdown

    table = [
        {
            "pipeline stage": r["pipeline_stage"],
            "stage": r["stage"],
            "fingerprint": f"`{r['fingerprint']}`",
            "status": r["status"],
            "in": f"{r['in']:,}",
            "kept": f"{r['kept']:,}",
            "rejected": f"{r['rejected']:,}",
            "failed": f"{r['failed']:,}",
            "directory": path_markdown(r["directory"]),
        }
        for r in rows
    ]
    md = ["# Pipeline lineage", ""]
    if warnings:
        md += ["## ⚠ Warnings", ""] + [f"- **{w}**" for w in warnings] + [""]
    md += [f"{len(rows)} stage output(s); lineage written to `{out_dir / 'lineage.json'}`.", "", markdown_table(table)]
    if png is not None:
        md += ["", image_markdown(png, "documents in and kept per data stage")]
    md += ["", "Inspect a stage: `lmpipe inspect <directory>`."]
    return "\n".join(md)


def write_lineage(
    root: str,
    final: Mapping[str, str],
    started_at: str,
    given: Mapping[str, str] | None = None,
    warnings: list[str] = (),
) -> tuple[Path, list[dict], Path | None]:
    rows = lineage(final, started_at, given)
    fp = fingerprint("pipeline", VERSION, {}, [r["fingerprint"] for r in rows])
    out = Path(root) / "pipeline" / fp
    out.mkdir(parents=True, exist_ok=True)
    # A list, not a mapping: the JSON is written with sorted keys and the run order matters.
    stages = [{"stage": name, "manifest": path} for name, path in final.items()]
    atomic_write_json(
        out / "lineage.json", {"stages": stages, "lineage": rows, "started_at": started_at, "warnings": list(warnings)}
    )
    png = lineage_plot(rows, out / "lineage.png")
    return out, rows, png
