"""Two outputs of one stage side by side: config diff, counts by reason, metrics, loss curves.

    lmpipe compare outputs/pretrain/<fp-a> pretrain@latest
    lmpipe compare outputs/pipeline/<fp-a>/lineage.json outputs/pipeline/<fp-b>/lineage.json

An output is a stage directory or its ``_manifest.json``; two pipeline runs are compared
through their ``lineage.json`` (stage by stage, by pipeline stage name). Loss curves come
from what training stages write: ``run/metrics.jsonl`` (pretrain: train loss per step,
val loss per eval) and ``history.json`` (SFT, DPO, GRPO: loss, held-out metrics, rewards).
The ``compare`` flow publishes the same as a Prefect artifact with the curves plotted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm.catalog import config_diff
from lm.data.stage_io import manifest_dir, read_manifest

Curve = list[tuple[float, float]]


@dataclass
class Comparison:
    """Outputs ``a`` and ``b`` of one stage."""

    stage: str
    a: dict  # manifest of a (with _path)
    b: dict
    config: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, a, b) that differ
    counts: list[tuple[str, Any, Any]] = field(default_factory=list)  # (count, a, b), every count of either
    metrics: list[tuple[str, Any, Any]] = field(default_factory=list)
    curves: dict[str, tuple[Curve, Curve]] = field(default_factory=dict)  # series -> (a, b)

    @property
    def same(self) -> bool:
        return self.a["fingerprint"] == self.b["fingerprint"]


def _flat_counts(c: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in c.items():
        if isinstance(v, dict):
            out.update({f"{k}: {r}": n for r, n in v.items()})
        else:
            out[k] = v
    return out


def _side_by_side(a: dict, b: dict, missing: Any = None) -> list[tuple[str, Any, Any]]:
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k, missing), b.get(k, missing)) for k in keys]


def _metrics(m: dict) -> dict[str, Any]:
    """Scalar results a training stage records: metrics (alignment), final losses (pretrain)."""
    out: dict[str, Any] = {}
    for key in ("metrics", "summary"):  # alignment/evaluate metrics; the tokenizer's summary (bytes/token, …)
        if isinstance(m.get(key), dict):  # (pretrain's `metrics` is the path of its metrics.jsonl)
            out.update({k: v for k, v in m[key].items() if isinstance(v, (int, float, str)) or v is None})
    for k in ("final_train_loss", "final_val_loss", "steps", "tokens_seen"):
        if k in m:
            out[k] = m[k]
    return out


def _points(xs: list, ys: list) -> Curve:
    return [(float(x), float(y)) for x, y in zip(xs, ys) if isinstance(y, (int, float)) and isinstance(x, (int, float))]


def loss_curves(manifest: dict) -> dict[str, Curve]:
    """Per-step series of a training stage (empty for data stages)."""
    d = Path(manifest_dir(manifest))
    curves: dict[str, Curve] = {}
    recorded = manifest.get("metrics")  # pretrain records where its trainer's metrics.jsonl is
    metrics = Path(recorded) if isinstance(recorded, str) else d / "run" / "metrics.jsonl"
    if metrics.is_file():  # pretrain (lm.train.trainer)
        train, val = [], []
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("kind") == "train" and isinstance(row.get("loss"), (int, float)):
                train.append((float(row["step"]), float(row["loss"])))
            elif row.get("kind") == "eval" and isinstance(row.get("val_loss"), (int, float)):
                val.append((float(row["step"]), float(row["val_loss"])))
        curves.update({k: v for k, v in (("train loss", train), ("val loss", val)) if v})
    history = d / "history.json"
    if history.is_file():  # sft / dpo / grpo (lm.align.stages)
        h = json.loads(history.read_text())
        for key, ys in h.items():
            if key in {"step", "eval_step"} or not isinstance(ys, list):
                continue
            xs = h.get("eval_step") if key.startswith("eval_") else h.get("step")
            if isinstance(xs, list) and len(xs) == len(ys) and (pts := _points(xs, ys)):
                curves[key.replace("_", " ")] = pts
    return curves


def _manifest(ref: str | os.PathLike | dict) -> dict:
    return ref if isinstance(ref, dict) else read_manifest(ref)


def compare_outputs(a: str | os.PathLike | dict, b: str | os.PathLike | dict) -> Comparison:
    """Compare two outputs of the same stage; ValueError when they are of different stages."""
    ma, mb = _manifest(a), _manifest(b)
    if ma["stage"] != mb["stage"]:
        raise ValueError(
            f"{ma['_path']} is a {ma['stage']!r} output and {mb['_path']} a {mb['stage']!r} output: "
            "compare two outputs of one stage"
        )
    cmp = Comparison(stage=ma["stage"], a=ma, b=mb)
    cmp.config = config_diff(ma.get("config") or {}, mb.get("config") or {})
    cmp.counts = _side_by_side(
        _flat_counts(ma.get("counts") or {}), _flat_counts(mb.get("counts") or {}), missing=0
    )  # a reason absent = 0
    cmp.metrics = _side_by_side(_metrics(ma), _metrics(mb))
    ca, cb = loss_curves(ma), loss_curves(mb)
    cmp.curves = {k: (ca.get(k, []), cb.get(k, [])) for k in list(ca) + [k for k in cb if k not in ca]}
    return cmp


def is_lineage(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.name == "lineage.json" or (p.is_dir() and (p / "lineage.json").is_file())


def compare_lineages(a: str | os.PathLike, b: str | os.PathLike) -> list[Comparison]:
    """Two pipeline runs, stage by stage (the stages both ran, in run order)."""

    def stages(p) -> dict[str, str]:
        p = Path(p)
        doc = json.loads((p / "lineage.json" if p.is_dir() else p).read_text())
        return {s["stage"]: s["manifest"] for s in doc["stages"]}

    sa, sb = stages(a), stages(b)
    common = [s for s in sa if s in sb]
    if not common:
        raise ValueError(f"pipeline runs {a} and {b} share no stage")
    return [compare_outputs(sa[s], sb[s]) for s in common]


def compare(a: str | os.PathLike, b: str | os.PathLike) -> list[Comparison]:
    """Stage outputs or pipeline runs (lineage.json), whichever ``a`` and ``b`` are."""
    if is_lineage(a) and is_lineage(b):
        return compare_lineages(a, b)
    if is_lineage(a) or is_lineage(b):
        raise ValueError(f"compare two pipeline runs (lineage.json) or two stage outputs, not one of each: {a}, {b}")
    return [compare_outputs(a, b)]


# --------------------------------------------------------------------------- rendering


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= 48 else text[:47] + "…"


def _delta(va: Any, vb: Any) -> str:
    if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool) and va != vb:
        d = vb - va
        return f"{'+' if d > 0 else ''}{_fmt(d)}"
    return ""


def comparison_rows(cmp: Comparison) -> dict[str, list[dict]]:
    """The comparison as tables (config, counts, metrics, curve ends) of plain rows."""
    a, b = f"a ({cmp.a['fingerprint']})", f"b ({cmp.b['fingerprint']})"
    tables = {
        "config": [{"key": k, a: _fmt(va), b: _fmt(vb)} for k, va, vb in cmp.config],
        "counts": [{"count": k, a: _fmt(va), b: _fmt(vb), "b - a": _delta(va, vb)} for k, va, vb in cmp.counts],
        "metrics": [{"metric": k, a: _fmt(va), b: _fmt(vb), "b - a": _delta(va, vb)} for k, va, vb in cmp.metrics],
        "curves": [
            {
                "series": k,
                f"{a} last": _fmt(ca[-1][1]) if ca else "",
                f"{b} last": _fmt(cb[-1][1]) if cb else "",
                "points": f"{len(ca)} / {len(cb)}",
            }
            for k, (ca, cb) in cmp.curves.items()
        ],
    }
    return {k: v for k, v in tables.items() if v}


def comparison_text(cmps: list[Comparison] | Comparison) -> str:
    cmps = [cmps] if isinstance(cmps, Comparison) else cmps
    lines: list[str] = []
    for cmp in cmps:
        lines.append(f"{cmp.stage}: a = {manifest_dir(cmp.a)}")
        lines.append(f"{' ' * len(cmp.stage)}  b = {manifest_dir(cmp.b)}")
        if cmp.same:
            lines += ["  same fingerprint: identical output", ""]
            continue
        if not cmp.config:
            lines.append("  config: no difference (the inputs or code version differ)")
        for title, rows in comparison_rows(cmp).items():
            cols = list(rows[0])
            widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in cols]
            lines.append(f"  {title}:")
            lines.append(("    " + "  ".join(f"{c:<{w}}" for c, w in zip(cols, widths))).rstrip())
            lines += [("    " + "  ".join(f"{str(r[c]):<{w}}" for c, w in zip(cols, widths))).rstrip() for r in rows]
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_curves(cmp: Comparison, png: str | os.PathLike) -> Path | None:
    """One panel per series, a and b overlaid; None when neither has curves."""
    if not cmp.curves:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    n = len(cmp.curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for ax, (name, (ca, cb)) in zip(axes[0], cmp.curves.items()):
        for pts, label, style in (
            (ca, f"a {cmp.a['fingerprint'][:8]}", "-"),
            (cb, f"b {cmp.b['fingerprint'][:8]}", "--"),
        ):
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    fig.suptitle(f"{cmp.stage}: a vs b")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return Path(png)
