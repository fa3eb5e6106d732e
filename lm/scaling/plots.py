"""Plots of a sweep: IsoFLOP profiles with N_opt vs C (isoflop.png), and every run's training curve (curves.png)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lm.scaling.isoflop import fit_budget
from lm.scaling.report import SweepFits


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_run_curves(rows: list[dict], metrics: dict[str, Path], path: str | Path) -> Path:
    """Every run's training loss against tokens seen (one colour per budget), from its metrics.jsonl."""
    plt = _pyplot()
    budgets = sorted({r["budget"] for r in rows})
    colors = dict(zip(budgets, plt.cm.viridis(np.linspace(0, 0.9, max(len(budgets), 1)))))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labelled = set()
    for r in sorted(rows, key=lambda r: (r["budget"], r["params"])):
        p = Path(metrics.get(r["run_id"], ""))
        if not p.is_file():
            continue
        pts = []
        for line in p.read_text().splitlines():
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if m.get("kind") == "train" and isinstance(m.get("loss"), (int, float)):
                pts.append((m.get("tokens", m["step"]), m["loss"]))
        if pts:
            label = f"C={r['budget']:.2g}" if r["budget"] not in labelled else None
            labelled.add(r["budget"])
            ax.plot(*zip(*pts), color=colors[r["budget"]], lw=1, alpha=0.8, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("training loss")
    ax.set_title("Training curves of the sweep's runs")
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8)
    return _save(fig, path, dpi=90)


def plot_isoflop(rows: list[dict], fits: SweepFits, path: str | Path, fit_on: str = "val") -> Path:
    """IsoFLOP curves (loss vs N per budget, with parabolas) and N_opt vs C (with both laws)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    budgets = sorted({r["budget"] for r in rows})
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(budgets), 1)))
    if fits.isoflop is not None:
        per_budget = {b.budget: b for b in fits.isoflop.budgets}
    else:  # no law, but each profile's parabola still shows where its minimum lies
        per_budget = {}
        for budget in budgets:
            pts = [r for r in fits.used_runs if r["budget"] == budget]
            if pts:
                per_budget[budget] = fit_budget(
                    budget, np.log([r["params"] for r in pts]), np.array([r["loss"] for r in pts]), None
                )
    used_ids = {r.get("run_id") for r in fits.used_runs}
    for color, budget in zip(colors, budgets):
        pts = sorted((r for r in fits.used_runs if r["budget"] == budget), key=lambda r: r["params"])
        if pts:
            left.plot([r["params"] for r in pts], [r["loss"] for r in pts], "o", color=color, label=f"C={budget:.2g}")
        bad = [r for r in rows if r["budget"] == budget and r.get("run_id") not in used_ids]
        if bad:
            top = max((r["loss"] for r in pts), default=1.0)
            left.plot([r["params"] for r in bad], [top] * len(bad), "x", color=color)
        b = per_budget.get(budget)
        if b is not None and b.coeffs is not None and pts:
            xs = np.linspace(math.log(pts[0]["params"]), math.log(pts[-1]["params"]), 100)
            left.plot(np.exp(xs), np.polyval(b.coeffs, xs), "-", color=color, alpha=0.7)
            if b.used:
                left.plot([b.n_opt], [b.loss_opt], "*", color=color, markersize=12, markeredgecolor="k")
    left.set_xscale("log")
    left.set_xlabel("non-embedding parameters N")
    left.set_ylabel(f"final {fit_on} loss")
    left.set_title("IsoFLOP profiles (× = excluded run)")
    left.legend(fontsize=8)

    target = fits.recommendation.get("target_budget")
    lo_c = min(budgets) if budgets else 1.0
    hi_c = max([*budgets, target or 0.0]) if budgets else 10.0
    cs = np.logspace(math.log10(lo_c), math.log10(hi_c), 100)
    if fits.isoflop is not None:
        f = fits.isoflop
        used = [b for b in f.budgets if b.used]
        right.plot([b.budget for b in used], [b.n_opt for b in used], "ko", label="IsoFLOP minima")
        right.plot(cs, np.exp(f.n_law[0] + f.n_law[1] * np.log(cs)), "k-", label=f"approach 2: N ∝ C^{f.a:.3f}")
        reps = np.exp(f.boot[:, 0:1] + f.boot[:, 1:2] * np.log(cs)[None, :])
        q = (1 - f.confidence) / 2 * 100
        right.fill_between(cs, *np.percentile(reps, [q, 100 - q], axis=0), color="k", alpha=0.15)
    rec_par = fits.recommendation.get("parametric") or {}
    if fits.parametric is not None and "error" not in rec_par and rec_par:
        p = fits.parametric
        few = cs[::-5][::-1]  # 20 budgets ending at the target: each is a numeric search
        ns = [p.frontier(c, fits.flops_per_token)[0] for c in few]
        right.plot(few, ns, "C3--", label=f"approach 3: α={p.alpha:.2f}, β={p.beta:.2f}")
    for key, marker in (("isoflop", "ks"), ("parametric", "C3s")):
        r = fits.recommendation.get(key) or {}
        if "n_opt" in r:
            right.plot([target], [r["n_opt"]], marker, markersize=9, markerfacecolor="none")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("compute C (FLOPs)")
    right.set_ylabel("compute-optimal N")
    right.set_title("N_opt vs compute (□ = target budget)")
    right.legend(fontsize=8)
    return _save(fig, path, dpi=110)
