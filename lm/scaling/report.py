"""From a runs table to scaling laws: both fits, the recommendation, the IsoFLOP plot.

Input is the sweep's runs table (rows with budget, params, tokens, compute, final losses,
status; see lm.scaling.sweep), so everything here is testable on synthetic tables. Runs
that failed, diverged or have no loss are left out with a note naming them.

A fit can succeed numerically and still say nothing: an IsoFLOP law needs ≥ 2 budgets whose
profile brackets a minimum, and a parametric fit whose E ran to 0, whose exponents are not
positive or whose frontier sits at the edge of its search has fitted the noise. ``judge``
names these problems; such an approach gives no recommendation, and the report says why.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from lm.markdown import markdown_table
from lm.scaling.flops import (
    family_flops_per_token,
    flops_per_token,
    non_embedding_params,
    shape_for_params,
    tokens_for_budget,
)
from lm.scaling.isoflop import IsoFlopFit, fit_isoflop
from lm.scaling.parametric import FRONTIER_MIN_N, ParametricFit, fit_parametric


@dataclass
class SweepFits:
    """Both approaches fitted to one runs table (either may be None, with the reason in notes)."""

    isoflop: IsoFlopFit | None
    parametric: ParametricFit | None
    used_runs: list[dict]
    notes: list[str] = field(default_factory=list)
    recommendation: dict = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)  # per approach: {"ok": bool, "problems": [...]}; see judge()
    min_loss: float = math.nan  # lowest loss among the used runs (E above it is impossible, near 0 implausible)
    flops_rule: tuple[int, int, float] = (1, 1, 1.0)  # (context_length, vocab_size, aspect_ratio) of the sweep

    def flops_per_token(self, n: float) -> float:
        """The sweep's FLOPs per token as a smooth function of N (for the approach-3 frontier)."""
        return family_flops_per_token(n, *self.flops_rule)

    def law_rows(self) -> list[dict]:
        """The fitted-law table: one row per fitted quantity, value and interval."""
        rows = []
        trust = {k: "ok" if v.get("ok") else "NOT A RESULT" for k, v in self.verdict.items()}
        if self.isoflop is not None:
            for r in self.isoflop.law_rows():
                rows.append(
                    {
                        "approach": "isoflop (2)",
                        "quantity": r["law"].replace("k·C^e", "k·C^e: exponent e"),
                        "value": _g(r["exponent"]),
                        "interval": _ci(r["exponent_ci"]),
                        "se": "",
                        "trust": trust.get("isoflop", ""),
                    }
                )
                rows.append(
                    {
                        "approach": "isoflop (2)",
                        "quantity": r["law"].replace("k·C^e", "k·C^e: coefficient k"),
                        "value": _g(r["coefficient"]),
                        "interval": _ci(r["coefficient_ci"]),
                        "se": "",
                        "trust": trust.get("isoflop", ""),
                    }
                )
        if self.parametric is not None:
            for r in self.parametric.law_rows():
                rows.append(
                    {
                        "approach": "parametric (3)",
                        "quantity": f"L = E + A/N^alpha + B/D^beta: {r['parameter']}",
                        "value": _g(r["value"]),
                        "interval": _ci(r["ci"]),
                        "se": _g(r["se"]),
                        "trust": trust.get("parametric", ""),
                    }
                )
        return rows

    def to_json(self) -> dict:
        out: dict = {
            "notes": self.notes,
            "recommendation": self.recommendation,
            "runs_used": len(self.used_runs),
            "verdict": self.verdict,
        }
        if self.isoflop is not None:
            f = self.isoflop
            out["isoflop"] = {
                "n_opt_exponent": f.a,
                "n_opt_exponent_ci": f.interval(1),
                "d_opt_exponent": f.b,
                "d_opt_exponent_ci": f.interval(3),
                "loss_exponent": f.loss_law[1],
                "budget_range": f.budget_range,
                "bootstrap_replicates_used": len(f.boot),
                "budgets": [
                    {
                        "budget": b.budget,
                        "points": b.num_points,
                        "n_opt": b.n_opt,
                        "d_opt": b.d_opt,
                        "loss_opt": b.loss_opt,
                        "used": b.used,
                        "note": b.note,
                    }
                    for b in f.budgets
                ],
            }
        if self.parametric is not None:
            p = self.parametric
            out["parametric"] = {
                "E": p.E,
                "A": p.A,
                "B": p.B,
                "alpha": p.alpha,
                "beta": p.beta,
                "se": p.standard_errors(),
                "objective": p.objective,
                "starts": p.num_starts,
            }
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
            par = fit_parametric(
                n,
                d,
                loss,
                compute=[r["compute"] for r in used],
                num_bootstrap=num_bootstrap,
                confidence=confidence,
                seed=seed,
                num_starts=num_starts,
            )
            notes += par.notes
        except ValueError as e:
            notes.append(f"parametric fit not possible: {e}")
    else:
        notes.append("no usable runs: nothing to fit")
    fits = SweepFits(
        iso,
        par,
        used,
        notes,
        flops_rule=(context_length, vocab_size, aspect_ratio),
        min_loss=min((r["loss"] for r in used), default=math.nan),
    )
    fits.recommendation = recommend(fits, target_budget)
    fits.verdict = judge(fits)
    for key, v in fits.verdict.items():
        if key in fits.recommendation and not v["ok"]:
            fits.recommendation[key]["not_a_result"] = v["problems"]
    return fits


def judge(fits: SweepFits) -> dict:
    """Per approach: ``{"ok": bool, "problems": [plain sentences]}``; "ok" only for a law that says something."""
    iso, par = _isoflop_problems(fits), _parametric_problems(fits)
    return {"isoflop": {"ok": not iso, "problems": iso}, "parametric": {"ok": not par, "problems": par}}


def _not_fitted(fits: SweepFits, approach: str) -> str:
    why = next(
        (n.split(": ", 1)[1] for n in fits.notes if n.startswith(f"{approach} fit not possible")), "no usable runs"
    )
    return f"no {approach} fit: {why}"


def _isoflop_problems(fits: SweepFits) -> list[str]:
    f = fits.isoflop
    if f is None:
        return [_not_fitted(fits, "isoflop")]
    out = []
    bracketed = sum(b.used for b in f.budgets)
    if bracketed < 2:
        out.append(f"only {bracketed} budget(s) bracket a minimum; a law needs ≥ 2")
    for name, e in (("N_opt", f.a), ("D_opt", f.b)):
        if not 0 < e < 1:
            out.append(
                f"{name} ∝ C^{e:.3g}: the exponent must lie in (0, 1) (both grow with compute, each slower than it)"
            )
    if f.loss_law[1] >= 0:
        out.append(f"L_opt ∝ C^{f.loss_law[1]:.3g}: the loss does not fall with compute")
    return out


def _parametric_problems(fits: SweepFits) -> list[str]:
    p = fits.parametric
    if p is None:
        return [_not_fitted(fits, "parametric")]
    out = []
    if p.alpha <= 0 or p.beta <= 0:
        out.append(
            f"exponents alpha={p.alpha:.3g}, beta={p.beta:.3g} are "
            "not both positive: the loss would not fall with N or D"
        )
    if max(p.alpha, p.beta) > 3:
        out.append(
            f"exponents alpha={p.alpha:.3g}, beta={p.beta:.3g}: steeper than 3 is not a law, the optimizer ran off"
        )
    if math.isfinite(fits.min_loss) and p.E < 0.01 * fits.min_loss:
        out.append(
            f"E={p.E:.3g}: the irreducible loss ran down to its bound, 0 "
            "(under 1% of the lowest loss): the runs do not constrain it"
        )
    if max(p.A, p.B) > 1e12:
        out.append(f"A={p.A:.3g}, B={p.B:.3g}: a coefficient ran off to its bound")
    rec = fits.recommendation.get("parametric") or {}
    if "n_opt" in rec and rec["n_opt"] <= FRONTIER_MIN_N * 1.01:
        out.append(
            f"the compute-optimal N ({rec['n_opt']:.3g}) sits at the "
            f"lower edge of the frontier search ({FRONTIER_MIN_N:g})"
        )
    if "error" in rec:
        out.append(rec["error"])
    return out


def verdict_short(fits_json: dict) -> str:
    """A few words for a summary table, from fits.json: the recommended N and D, or why there is none."""
    verdict, rec = fits_json.get("verdict", {}), fits_json.get("recommendation", {})
    ok = [k for k, v in verdict.items() if v.get("ok")]
    if not ok:
        iso = " ".join(verdict.get("isoflop", {}).get("problems", []))
        why = [
            "too few budgets bracket a minimum" if "bracket" in iso else "isoflop fit degenerate",
            "parametric fit degenerate",
        ]
        return "⚠ no scaling law: " + "; ".join(why) + " (laws.md)"
    r = rec[ok[0]]
    return f"{ok[0]}: N_opt {r['n_opt']:.3g}, D_opt {r['d_opt']:.3g} at C={rec['target_budget']:.3g}" + (
        " (extrapolation)" if r.get("extrapolation") else ""
    )


def verdict_message(verdict: dict) -> str:
    """One plain sentence for the top of a report: what, if anything, this sweep can be trusted for."""
    ok = [k for k, v in verdict.items() if v["ok"]]
    if not verdict:
        return ""
    if not ok:
        return (
            "**No scaling law from this sweep.** Neither fit is a result: "
            + "; ".join(p for v in verdict.values() for p in v["problems"])
            + "."
        )
    bad = [k for k in verdict if k not in ok]
    if bad:
        return (
            f"Only the {ok[0]} fit is a result; the {bad[0]} fit is not: "
            + "; ".join(verdict[bad[0]]["problems"])
            + "."
        )
    return "Both fits are usable (check the intervals and the extrapolation flag)."


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
    return {
        "shape": shape.to_dict(),
        "shape_params": non_embedding_params(shape),
        "shape_tokens": tokens_for_budget(shape, budget, ctx, vocab),
        "shape_flops_per_token": flops_per_token(shape, ctx, vocab),
    }


def recommendation_markdown(fits: SweepFits, laws: list[dict] | None = None) -> str:
    """laws.md: the verdict, the fitted-law table, then what each approach recommends (or why it cannot)."""
    rec = fits.recommendation
    lines = []
    message = verdict_message(fits.verdict)
    if message:
        lines += [("> ⚠ " if not all(v["ok"] for v in fits.verdict.values()) else "> ") + message, ""]
    if laws is not None:
        lines += ["# Fitted laws", "", markdown_table(laws)]
    lines += [f"# Recommendation for C = {rec['target_budget']:.3g} FLOPs", ""]
    for key, title in (("isoflop", "IsoFLOP profiles (approach 2)"), ("parametric", "Parametric L(N, D) (approach 3)")):
        r = rec.get(key)
        if r is None:
            continue
        lines.append(f"## {title}")
        if r.get("not_a_result"):
            lines += ["**Not a result** — this fit is degenerate, so it recommends nothing:", ""]
            lines += [f"- {p}" for p in r["not_a_result"]] + [""]
            continue
        if "error" in r:
            lines += [r["error"], ""]
            continue
        flag = " — **extrapolation** beyond the fitted budgets" if r.get("extrapolation") else ""
        lines.append(f"- N_opt = {r['n_opt']:.4g} non-embedding params (interval {_ci(r['n_opt_ci'])}){flag}")
        lines.append(f"- D_opt = {r['d_opt']:.4g} tokens (interval {_ci(r['d_opt_ci'])})")
        lines.append(f"- predicted loss = {r['loss']:.4g} (interval {_ci(r['loss_ci'])})")
        if r.get("shape"):
            s = r["shape"]
            lines.append(
                f"- shape: d_model={s['d_model']}, num_layers={s['num_layers']}, num_heads={s['num_heads']}, "
                f"d_ff={s['d_ff']} (N={r['shape_params']:,}), train on {r['shape_tokens']:,} tokens"
            )
        elif r.get("shape_note"):
            lines.append(f"- no shape: {r['shape_note']}")
        lines.append("")
    if fits.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in fits.notes]
    return "\n".join(lines) + "\n"


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
