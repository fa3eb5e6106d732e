"""Chinchilla approach 3: fit L(N, D) = E + A/N^α + B/D^β to every run, then its frontier.

As in Hoffmann et al. (2022, §3.3 and appendix D.2): with a = ln A, b = ln B, e = ln E the
model is ln L̂ = LSE(a − α·ln N, b − β·ln D, e), and the fit minimizes

    Σ_i Huber_δ( LSE(a − α ln N_i, b − β ln D_i, e) − ln L_i ),   δ = 1e-3

with L-BFGS (scipy, analytic gradient) started from points of a grid — by default the
paper's: α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25} (4,500 points) —
keeping the best optimum. The paper starts from every grid point; that takes minutes here, so
by default the objective is evaluated at all 4,500 points at once and L-BFGS starts from
the 128 best (``num_starts=None`` restores the full search). Huber in log space makes the
fit robust to the odd outlier run.

Uncertainty: runs are resampled with replacement and refitted (warm-started at the full-data
optimum); standard errors are the replicates' standard deviations, intervals their
percentiles.

The compute-optimal frontier minimizes L(N, D) subject to a FLOPs budget. With C = 6·N·D it
has a closed form: N_opt = G·(C/6)^(β/(α+β)), D_opt = (C/6)/N_opt, G = (αA/(βB))^(1/(α+β)).
With any other FLOPs-per-token rule f(N) (ours adds lm_head and attention terms, see
lm.scaling.flops), D = C/f(N) and the minimum over N is found numerically.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from threadpoolctl import threadpool_limits

from lm.scaling._checks import as_positive, drop_nan_losses, same_length

HUBER_DELTA = 1e-3
FRONTIER_MIN_N = 1e3  # the numeric frontier search starts here: an optimum at it is a bound, not a result
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
CHINCHILLA_GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
}


def huber_objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float = HUBER_DELTA
) -> tuple[float, np.ndarray]:
    """Σ Huber_δ(ln L̂ − ln L) and its gradient in θ = (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, R)
    top = terms.max(axis=0)
    ex = np.exp(terms - top)  # (3, R), stable
    total = ex.sum(axis=0)
    r = top + np.log(total) - log_l  # (R,) residual of ln L̂
    w = ex / total  # ∂ LSE / ∂ terms (softmax)
    ar = np.abs(r)
    value = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum()
    dr = np.clip(r, -delta, delta)  # Huber'(r)
    grad = np.array(
        [
            (dr * w[0]).sum(),
            (dr * w[1]).sum(),
            (dr * w[2]).sum(),
            -(dr * w[0] * log_n).sum(),
            -(dr * w[1] * log_d).sum(),
        ]
    )
    return float(value), grad


@dataclass
class ParametricFit:
    """L(N, D) = E + A/N^α + B/D^β with bootstrap replicates of its parameters."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    compute_range: tuple[float, float]
    boot: np.ndarray  # (replicates, 5): E, A, B, alpha, beta
    confidence: float
    num_starts: int
    notes: list[str] = field(default_factory=list)

    @property
    def params(self) -> np.ndarray:
        return np.array([self.E, self.A, self.B, self.alpha, self.beta])

    def loss(self, n, d) -> np.ndarray:
        return law_loss(self.params, np.asarray(n, float), np.asarray(d, float))

    def standard_errors(self) -> dict[str, float]:
        """Bootstrap SE of each parameter (inf when a replicate ran off: A or B unconstrained)."""
        if len(self.boot) < 2:
            return {k: math.nan for k in PARAM_NAMES}
        with np.errstate(over="ignore", invalid="ignore"):
            return {k: float(s) for k, s in zip(PARAM_NAMES, self.boot.std(axis=0, ddof=1))}

    def frontier(
        self, budget: float, flops_per_token: Callable[[float], float] | None = None
    ) -> tuple[float, float, float]:
        """(N_opt, D_opt, loss) at ``budget`` FLOPs."""
        return frontier(self.params, budget, flops_per_token)

    def predict(self, budget: float, flops_per_token: Callable[[float], float] | None = None) -> dict:
        """Frontier point at ``budget`` with bootstrap SEs and percentile intervals."""
        (budget,) = as_positive("budget", [budget])
        n, d, loss = self.frontier(budget, flops_per_token)
        reps = (
            np.array([frontier(p, budget, flops_per_token) for p in self.boot]) if len(self.boot) else np.empty((0, 3))
        )
        out = {"budget": float(budget), "n_opt": n, "d_opt": d, "loss": loss}
        for j, key in enumerate(("n_opt", "d_opt", "loss")):
            col = reps[:, j] if len(reps) else np.array([out[key]])
            # sizes spread multiplicatively: their SE is reported in ln space
            out[f"{key}_se" if key == "loss" else f"ln_{key}_se"] = (
                float(np.std(col if key == "loss" else np.log(col), ddof=1)) if len(col) > 1 else math.nan
            )
            q = (1 - self.confidence) / 2 * 100
            out[f"{key}_ci"] = tuple(float(x) for x in np.percentile(col, [q, 100 - q]))
        lo, hi = self.compute_range
        out["extrapolation"] = not (lo * (1 - 1e-9) <= budget <= hi * (1 + 1e-9))
        return out

    def law_rows(self) -> list[dict]:
        se = self.standard_errors()
        q = (1 - self.confidence) / 2 * 100
        rows = []
        for j, name in enumerate(PARAM_NAMES):
            lo, hi = np.percentile(self.boot[:, j], [q, 100 - q]) if len(self.boot) else (math.nan, math.nan)
            rows.append(
                {
                    "approach": "parametric",
                    "parameter": name,
                    "value": float(self.params[j]),
                    "se": se[name],
                    "ci": (float(lo), float(hi)),
                }
            )
        return rows


def law_loss(p: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    E, A, B, alpha, beta = p
    with np.errstate(over="ignore"):  # a wild bootstrap replicate may overflow: inf loss, never chosen
        return E + A / np.power(n, alpha) + B / np.power(d, beta)


def frontier(
    p: np.ndarray, budget: float, flops_per_token: Callable[[float], float] | None = None
) -> tuple[float, float, float]:
    """Minimize L(N, D) over N with D = C / flops_per_token(N) (default 6·N)."""
    E, A, B, alpha, beta = p
    if flops_per_token is None:
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"frontier needs alpha, beta > 0, got alpha={alpha}, beta={beta}")
        g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        n = g * (budget / 6) ** (beta / (alpha + beta))
        d = budget / 6 / n
    else:

        def f(ln_n: float) -> float:
            n_ = math.exp(ln_n)
            return float(law_loss(p, n_, budget / flops_per_token(n_)))

        grid = np.linspace(
            math.log(FRONTIER_MIN_N), math.log(budget / 6) - math.log(10), 200
        )  # ≥ 10 tokens per param·6
        vals = [f(x) for x in grid]
        i = int(np.argmin(vals))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = minimize_scalar(f, bounds=(lo, hi), method="bounded") if hi > lo else None
        ln_n = res.x if res is not None and res.fun <= vals[i] else grid[i]
        n = math.exp(ln_n)
        d = budget / flops_per_token(n)
    return float(n), float(d), float(law_loss(p, n, d))


def _grid_objective(thetas: np.ndarray, log_n, log_d, log_l, delta) -> np.ndarray:
    """The Huber objective at every row of ``thetas`` (S, 5) at once: (S,)."""
    a, b, e, alpha, beta = (thetas[:, i : i + 1] for i in range(5))  # each (S, 1)
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(thetas), len(log_n)))])
    r = np.logaddexp.reduce(terms, axis=0) - log_l  # (S, R)
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum(axis=1)


def _minimize(start: np.ndarray, log_n, log_d, log_l, delta) -> tuple[float, np.ndarray]:
    # One BLAS thread: L-BFGS-B's tiny (5-dim) BLAS calls are 40× slower when OpenBLAS's
    # threads contend for busy cores (measured: 7 ms vs 0.2 ms per iteration).
    with threadpool_limits(limits=1, user_api="blas"):
        res = minimize(
            huber_objective,
            start,
            args=(log_n, log_d, log_l, delta),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12},
        )
    return float(res.fun), res.x


def _theta_to_params(theta: np.ndarray) -> np.ndarray:
    a, b, e, alpha, beta = theta
    with np.errstate(over="ignore"):  # a runaway replicate gives inf, dropped by the caller
        return np.array([np.exp(e), np.exp(a), np.exp(b), alpha, beta])


def fit_parametric(
    params,
    tokens,
    loss,
    compute=None,
    *,
    grid: dict[str, np.ndarray] | None = None,
    delta: float = HUBER_DELTA,
    num_starts: int | None = 128,
    num_bootstrap: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> ParametricFit:
    """Fit approach 3 to runs (non-embedding N, tokens D, final loss; C only for the range).

    ``grid``: initial points per coordinate (keys alpha, beta, e, a, b); Chinchilla's by default.
    ``num_starts``: run L-BFGS from this many grid points, those with the lowest objective
    (``None``: from every grid point, as in the paper).
    """
    n = as_positive("params", params)
    d = as_positive("tokens", tokens)
    lo = as_positive("loss", loss, allow_nan=True)
    c = as_positive("compute", compute) if compute is not None else 6 * n * d
    same_length(params=n, tokens=d, loss=lo, compute=c)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, (n, d, c), notes = drop_nan_losses(lo, n, d, c)
    if len(lo) < 5:
        raise ValueError(f"the parametric fit has 5 parameters and needs ≥ 5 finite runs, got {len(lo)}")
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(lo)
    g = {**CHINCHILLA_GRID, **(grid or {})}
    starts = np.array(
        [[a, b, e, al, be] for al, be, e, a, b in itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])]
    )
    if num_starts is not None and num_starts < len(starts):
        # screen the grid: L-BFGS from the starts that already fit best (all of them is ~minutes)
        starts = starts[np.argsort(_grid_objective(starts, log_n, log_d, log_l, delta))[:num_starts]]
    best = (math.inf, None)
    for s in starts:
        val, theta = _minimize(s, log_n, log_d, log_l, delta)
        if val < best[0]:
            best = (val, theta)
    obj, theta = best

    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(num_bootstrap):
        take = rng.integers(0, len(lo), size=len(lo))
        _, t = _minimize(theta, log_n[take], log_d[take], log_l[take], delta)
        reps.append(_theta_to_params(t))
    boot = np.array(reps).reshape(-1, 5)
    finite = np.isfinite(boot).all(axis=1)
    if not finite.all():
        notes.append(
            f"{int((~finite).sum())} of {num_bootstrap} bootstrap replicates ran off to infinity and were dropped"
        )
        boot = boot[finite]
    E, A, B, alpha, beta = _theta_to_params(theta)
    if alpha <= 0 or beta <= 0:
        notes.append(
            f"fitted exponents alpha={alpha:.3g}, beta={beta:.3g} are not both positive: "
            "the runs do not constrain one of the terms; the frontier is undefined"
        )
    return ParametricFit(
        E=E,
        A=A,
        B=B,
        alpha=float(alpha),
        beta=float(beta),
        objective=obj,
        compute_range=(float(c.min()), float(c.max())),
        boot=boot,
        confidence=confidence,
        num_starts=len(starts),
        notes=notes,
    )
