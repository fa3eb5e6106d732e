"""From a runs table to scaling laws: both fits, the recommendation, the IsoFLOP plot.

Input is the sweep's runs table (rows with budget, params, tokens, compute, final losses,
status; see lm.scaling.sweep), so everything here is testable on synthetic tables. Runs
that failed, diverged or have no loss are left out with a note naming them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lm.scaling.flops import family_flops_per_token, flops_per_token, non_embedding_params, shape_for_params, tokens_for_budget
from lm.scaling.isoflop import IsoFlopFit, fit_budget, fit_isoflop
from lm.scaling.parametric import ParametricFit, fit_parametric


@dataclass
class SweepFits:
    """Both approaches fitted to one runs table (either may be None, with the reason in notes)."""

    isoflop: IsoFlopFit | None
    parametric: ParametricFit | None
    used_runs: list[dict]
    notes: list[str] = field(default_factory=list)
    recommendation: dict = field(default_factory=dict)
    flops_rule: tuple[int, int, float] = (1, 1, 1.0)  # (context_length, vocab_size, aspect_ratio) of the sweep

    def flops_per_token(self, n: float) -> float:
        """The sweep's FLOPs per token as a smooth function of N (for the approach-3 frontier)."""
        return family_flops_per_token(n, *self.flops_rule)

    def law_rows(self) -> list[dict]:
        """The fitted-law table: one row per fitted quantity, value and interval."""
        rows = []
        if self.isoflop is not None:
            for r in self.isoflop.law_rows():
                rows.append({"approach": "isoflop (2)", "quantity": r["law"].replace("k·C^e", "k·C^e: exponent e"),
                             "value": _g(r["exponent"]), "interval": _ci(r["exponent_ci"]), "se": ""})
                rows.append({"approach": "isoflop (2)", "quantity": r["law"].replace("k·C^e", "k·C^e: coefficient k"),
                             "value": _g(r["coefficient"]), "interval": _ci(r["coefficient_ci"]), "se": ""})
        if self.parametric is not None:
            for r in self.parametric.law_rows():
                rows.append({"approach": "parametric (3)", "quantity": f"L = E + A/N^alpha + B/D^beta: {r['parameter']}",
                             "value": _g(r["value"]), "interval": _ci(r["ci"]), "se": _g(r["se"])})
        return rows

    def to_json(self) -> dict:
        out: dict = {"notes": self.notes, "recommendation": self.recommendation, "runs_used": len(self.used_runs)}
        if self.isoflop is not None:
            f = self.isoflop
            out["isoflop"] = {
                "n_opt_exponent": f.a, "n_opt_exponent_ci": f.interval(1),
                "d_opt_exponent": f.b, "d_opt_exponent_ci": f.interval(3),
                "loss_exponent": f.loss_law[1], "budget_range": f.budget_range,
                "bootstrap_replicates_used": len(f.boot),
                "budgets": [{"budget": b.budget, "points": b.num_points, "n_opt": b.n_opt, "d_opt": b.d_opt,
                             "loss_opt": b.loss_opt, "used": b.used, "note": b.note} for b in f.budgets],
            }
        if self.parametric is not None:
            p = self.parametric
            out["parametric"] = {"E": p.E, "A": p.A, "B": p.B, "alpha": p.alpha, "beta": p.beta,
                                 "se": p.standard_errors(), "objective": p.objective, "starts": p.num_starts}
        return _plain(out)


def usable_runs(rows: list[dict], fit_on: str = "val") -> tuple[list[dict], list[str]]:
    """Runs with a finite loss and status completed, and notes naming the others."""
    key = f"final_{fit_on}_loss"
    used, notes = [], []
    for r in rows:
        loss = r.get(key)
        what = f"run {r.get('run_id', '?')} (budget {r['budget']:.3g}, N={int(r['params']):,})"
        if r.get("status") != "completed":
            notes.append(f"{what} excluded: status {r.get('status')}" + (f" ({r['note']})" if r.get("note") else ""))
        elif loss is None or not math.isfinite(loss):
            notes.append(f"{what} excluded: {fit_on} loss is {loss} (diverged)")
        else:
            used.append({**r, "loss": float(loss)})
    return used, notes


def fit_runs(
    rows: list[dict],
    *,
    target_budget: float,
    context_length: int,
    vocab_size: int,
    aspect_ratio: float = 32.0,
    fit_on: str = "val",
    num_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    num_starts: int | None = 128,
) -> SweepFits:
    """Fit approach 2 and 3 to a runs table and recommend a shape and token count for the target."""
    used, notes = usable_runs(rows, fit_on)
    iso = par = None
    if used:
        c = [r["budget"] for r in used]
        n = [r["params"] for r in used]
        d = [r["tokens"] for r in used]
        loss = [r["loss"] for r in used]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the notes carry the same messages to the artifacts
            try:
                iso = fit_isoflop(c, n, loss, tokens=d, num_bootstrap=num_bootstrap, confidence=confidence, seed=seed)
                notes += iso.notes
            except ValueError as e:
                notes.append(f"isoflop fit not possible: {e}")
        try:
            par = fit_parametric(n, d, loss, compute=[r["compute"] for r in used], num_bootstrap=num_bootstrap,
                                 confidence=confidence, seed=seed, num_starts=num_starts)
            notes += par.notes
        except ValueError as e:
            notes.append(f"parametric fit not possible: {e}")
    else:
        notes.append("no usable runs: nothing to fit")
    fits = SweepFits(iso, par, used, notes, flops_rule=(context_length, vocab_size, aspect_ratio))
    fits.recommendation = recommend(fits, target_budget)
    return fits


def recommend(fits: SweepFits, budget: float) -> dict:
    """N, D, loss (with intervals) at ``budget`` from each approach, and a concrete shape for each."""
    context_length, vocab_size, aspect_ratio = fits.flops_rule
    out: dict = {"target_budget": budget}
    if fits.isoflop is not None:
        p = fits.isoflop.predict(budget)
        out["isoflop"] = {**p.to_dict(), **_concrete(p.n_opt, budget, context_length, vocab_size, aspect_ratio)}
    if fits.parametric is not None:
        try:
            p = fits.parametric.predict(budget, flops_per_token=fits.flops_per_token)
            out["parametric"] = {**p, **_concrete(p["n_opt"], budget, context_length, vocab_size, aspect_ratio)}
        except (ValueError, OverflowError, ZeroDivisionError) as e:
            out["parametric"] = {"error": f"no frontier from the fitted law: {e}"}
    return _plain(out)


def _concrete(n_opt: float, budget: float, ctx: int, vocab: int, aspect: float) -> dict:
    try:
        shape = shape_for_params(n_opt, aspect_ratio=aspect)
    except ValueError as e:
        return {"shape": None, "shape_note": str(e)}
    return {"shape": shape.to_dict(), "shape_params": non_embedding_params(shape),
            "shape_tokens": tokens_for_budget(shape, budget, ctx, vocab), "shape_flops_per_token": flops_per_token(shape, ctx, vocab)}


def recommendation_markdown(fits: SweepFits) -> str:
    rec = fits.recommendation
    lines = [f"# Recommendation for C = {rec['target_budget']:.3g} FLOPs", ""]
    for key, title in (("isoflop", "IsoFLOP profiles (approach 2)"), ("parametric", "Parametric L(N, D) (approach 3)")):
        r = rec.get(key)
        if r is None:
            continue
        lines.append(f"## {title}")
        if "error" in r:
            lines += [r["error"], ""]
            continue
        flag = " — **extrapolation** beyond the fitted budgets" if r.get("extrapolation") else ""
        lines.append(f"- N_opt = {r['n_opt']:.4g} non-embedding params (interval {_ci(r['n_opt_ci'])}){flag}")
        lines.append(f"- D_opt = {r['d_opt']:.4g} tokens (interval {_ci(r['d_opt_ci'])})")
        lines.append(f"- predicted loss = {r['loss']:.4g} (interval {_ci(r['loss_ci'])})")
        if r.get("shape"):
            s = r["shape"]
            lines.append(f"- shape: d_model={s['d_model']}, num_layers={s['num_layers']}, num_heads={s['num_heads']}, "
                         f"d_ff={s['d_ff']} (N={r['shape_params']:,}), train on {r['shape_tokens']:,} tokens")
        elif r.get("shape_note"):
            lines.append(f"- no shape: {r['shape_note']}")
        lines.append("")
    if fits.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in fits.notes]
    return "\n".join(lines) + "\n"


def plot_isoflop(rows: list[dict], fits: SweepFits, path: str | Path, fit_on: str = "val") -> Path:
    """IsoFLOP curves (loss vs N per budget, with parabolas) and N_opt vs C (with both laws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                per_budget[budget] = fit_budget(budget, np.log([r["params"] for r in pts]), np.array([r["loss"] for r in pts]), None)
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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _g(x) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def _ci(ci) -> str:
    return f"[{_g(ci[0])}, {_g(ci[1])}]"


def _plain(obj):
    """JSON-ready: numpy scalars to floats, tuples to lists."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
