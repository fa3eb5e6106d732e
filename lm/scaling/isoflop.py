"""Chinchilla approach 2: IsoFLOP profiles → compute-optimal N and D as power laws of C.

For each compute budget C (a group of runs that each spent ~C FLOPs with a different model
size N), fit the final loss as a parabola in ln N and take its vertex: N_opt(C) and the loss
there, L_opt(C). Then fit, by least squares in log space,

    N_opt = k_N · C^a        D_opt = k_D · C^b        L_opt = k_L · C^c

D_opt at a budget comes from the runs' own token counts (ln D is linear in ln N within a
budget: exact for C = 6·N·D, near-exact with our attention/lm_head terms), or C / (6·N_opt)
when the runs carry no token counts (as in isoflops_curves.json). The loss law is a pure
power law: fine inside the fitted range, optimistic far outside it (it has no irreducible
term; use approach 3, lm.scaling.parametric, for loss extrapolation).

Uncertainty: a nonparametric bootstrap. Runs are resampled with replacement within each
budget, the whole fit is redone, and percentile intervals are read off the replicates. A
budget whose resample no longer brackets a minimum is left out of that replicate (a
replicate needs ≥ 2 budgets), and the number of replicates used is reported.

Checks: a budget with fewer than 3 runs, or whose parabola has no minimum inside its runs'
range of N (not bracketed: the sweep should extend towards the vertex), is left out with a
warning naming it. Non-positive N, C or loss raise ValueError naming them. NaN losses
(diverged runs) are excluded with a note. A prediction outside the fitted budgets is flagged
as an extrapolation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from lm.scaling._checks import as_positive, drop_nan_losses, same_length

MIN_POINTS = 3


@dataclass
class BudgetFit:
    """The parabola fitted to one IsoFLOP profile and what was read off it."""

    budget: float
    num_points: int
    coeffs: tuple[float, float, float] | None  # loss = c2·(ln N)² + c1·ln N + c0
    n_opt: float | None
    d_opt: float | None
    loss_opt: float | None
    used: bool
    note: str = ""


@dataclass
class Prediction:
    budget: float
    n_opt: float
    d_opt: float
    loss: float
    n_opt_ci: tuple[float, float]
    d_opt_ci: tuple[float, float]
    loss_ci: tuple[float, float]
    extrapolation: bool

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class IsoFlopFit:
    """Power laws fitted to the per-budget optima, with bootstrap replicates of them."""

    budgets: list[BudgetFit]
    n_law: tuple[float, float]  # (ln k_N, a)
    d_law: tuple[float, float]  # (ln k_D, b)
    loss_law: tuple[float, float]  # (ln k_L, c)
    budget_range: tuple[float, float]
    boot: np.ndarray  # (num_replicates_used, 6): ln k_N, a, ln k_D, b, ln k_L, c
    num_bootstrap: int
    confidence: float
    notes: list[str] = field(default_factory=list)

    @property
    def a(self) -> float:
        return self.n_law[1]

    @property
    def b(self) -> float:
        return self.d_law[1]

    def interval(self, column: int) -> tuple[float, float]:
        return _percentiles(self.boot[:, column], self.confidence)

    def predict(self, budget: float) -> Prediction:
        (budget,) = as_positive("budget", [budget])
        lc = math.log(budget)
        lo, hi = self.budget_range
        laws = [self.n_law, self.d_law, self.loss_law]
        point = [math.exp(k + e * lc) for k, e in laws]
        cis = []
        for j in range(3):
            reps = np.exp(self.boot[:, 2 * j] + self.boot[:, 2 * j + 1] * lc)
            cis.append(_percentiles(reps, self.confidence))
        return Prediction(
            budget=float(budget),
            n_opt=point[0],
            d_opt=point[1],
            loss=point[2],
            n_opt_ci=cis[0],
            d_opt_ci=cis[1],
            loss_ci=cis[2],
            extrapolation=not (lo * (1 - 1e-9) <= budget <= hi * (1 + 1e-9)),
        )

    def law_rows(self) -> list[dict]:
        """One row per fitted quantity: exponent and coefficient with their intervals."""
        rows = []
        for j, (name, law) in enumerate([("N_opt", self.n_law), ("D_opt", self.d_law), ("L_opt", self.loss_law)]):
            k_lo, k_hi = self.interval(2 * j)
            e_lo, e_hi = self.interval(2 * j + 1)
            rows.append(
                {
                    "approach": "isoflop",
                    "law": f"{name} = k·C^e",
                    "exponent": law[1],
                    "exponent_ci": (e_lo, e_hi),
                    "coefficient": math.exp(law[0]),
                    "coefficient_ci": (math.exp(k_lo), math.exp(k_hi)),
                }
            )
        return rows


def fit_budget(budget: float, log_n: np.ndarray, loss: np.ndarray, log_d: np.ndarray | None) -> BudgetFit:
    """Fit one IsoFLOP profile; ``used=False`` with a note when it cannot give an optimum."""
    n_unique = len(np.unique(log_n))
    if n_unique < MIN_POINTS:
        return BudgetFit(
            budget,
            len(log_n),
            None,
            None,
            None,
            None,
            False,
            f"budget {budget:.3g}: {n_unique} distinct model size(s), need ≥ {MIN_POINTS} for a parabola",
        )
    c2, c1, c0 = np.polyfit(log_n, loss, 2)
    if c2 <= 0:
        return BudgetFit(
            budget,
            len(log_n),
            (c2, c1, c0),
            None,
            None,
            None,
            False,
            f"budget {budget:.3g}: loss is not convex in ln N (no minimum); add smaller and larger models",
        )
    x = -c1 / (2 * c2)
    loss_opt = c0 - c1 * c1 / (4 * c2)
    if log_d is not None:
        d1, d0 = np.polyfit(log_n, log_d, 1)
        d_opt = math.exp(d0 + d1 * x)
    else:
        d_opt = budget / (6 * math.exp(x))
    fit = BudgetFit(budget, len(log_n), (c2, c1, c0), math.exp(x), d_opt, loss_opt, True)
    if not log_n.min() <= x <= log_n.max():
        side = "larger" if x > log_n.max() else "smaller"
        fit.used = False
        fit.note = (
            f"budget {budget:.3g}: the minimum (N≈{math.exp(x):.3g}) is outside the runs' N range "
            f"[{math.exp(log_n.min()):.3g}, {math.exp(log_n.max()):.3g}]: not bracketed; add {side} models"
        )
    return fit


def _fit_laws(fits: list[BudgetFit]) -> np.ndarray:
    """ln k and exponent of N_opt, D_opt, L_opt against C (least squares in log space)."""
    lc = np.log([f.budget for f in fits])
    out = []
    for ys in ([f.n_opt for f in fits], [f.d_opt for f in fits], [f.loss_opt for f in fits]):
        e, k = np.polyfit(lc, np.log(ys), 1)
        out += [k, e]
    return np.array(out)


def fit_isoflop(
    compute,
    params,
    loss,
    tokens=None,
    *,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> IsoFlopFit:
    """Fit approach 2 to runs given as parallel arrays (budget C, non-embedding N, final loss, D).

    Runs are grouped by their exact ``compute`` value (the nominal budget of the sweep).
    """
    c = as_positive("compute", compute)
    n = as_positive("params", params)
    lo = as_positive("loss", loss, allow_nan=True)
    d = as_positive("tokens", tokens) if tokens is not None else None
    same_length(compute=c, params=n, loss=lo, **({"tokens": d} if d is not None else {}))
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, rest, notes = drop_nan_losses(lo, c, n, *([d] if d is not None else []))
    c, n = rest[0], rest[1]
    d = rest[2] if d is not None else None

    groups = [np.flatnonzero(c == b) for b in np.unique(c)]
    fits = []
    for idx in groups:
        f = fit_budget(float(c[idx[0]]), np.log(n[idx]), lo[idx], np.log(d[idx]) if d is not None else None)
        fits.append(f)
        if not f.used:
            warnings.warn(f.note, stacklevel=2)
            notes.append(f.note)
    used = [f for f in fits if f.used]
    if len(used) < 2:
        raise ValueError(
            f"IsoFLOP fit needs ≥ 2 budgets with a bracketed minimum, got {len(used)} of {len(fits)}: "
            + "; ".join(f.note for f in fits if f.note)
        )
    laws = _fit_laws(used)

    rng = np.random.default_rng(seed)
    used_groups = [g for g, f in zip(groups, fits) if f.used]
    reps = []
    for _ in range(num_bootstrap):
        rfits = []
        for f, idx in zip(used, used_groups):
            take = rng.choice(idx, size=len(idx), replace=True)
            rf = fit_budget(f.budget, np.log(n[take]), lo[take], np.log(d[take]) if d is not None else None)
            if rf.used:
                rfits.append(rf)
        if len(rfits) >= 2:
            reps.append(_fit_laws(rfits))
    boot = np.array(reps).reshape(-1, 6)
    if num_bootstrap and len(boot) < num_bootstrap / 2:
        notes.append(
            f"only {len(boot)} of {num_bootstrap} bootstrap replicates had ≥ 2 bracketed budgets: intervals are rough"
        )
    if len(boot) == 0:
        boot = laws[None, :]  # no replicates: degenerate intervals at the point estimate
    budgets_used = [f.budget for f in used]
    return IsoFlopFit(
        budgets=fits,
        n_law=(laws[0], laws[1]),
        d_law=(laws[2], laws[3]),
        loss_law=(laws[4], laws[5]),
        budget_range=(min(budgets_used), max(budgets_used)),
        boot=boot,
        num_bootstrap=num_bootstrap,
        confidence=confidence,
        notes=notes,
    )


def _percentiles(x: np.ndarray, confidence: float) -> tuple[float, float]:
    q = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(x, [q, 100 - q])
    return float(lo), float(hi)
