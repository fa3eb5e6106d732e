import json
import math
import warnings

import numpy as np
import pytest

from lm.scaling.isoflop import fit_isoflop

BUDGETS = np.logspace(18, 21, 5)


def synthetic(noise: float = 0.0, seed: int = 0, points: int = 7):
    """IsoFLOP profiles from a known law: N_opt = 0.1·C^0.5, L_opt = 20·C^-0.05, D = C/(6N)."""
    rng = np.random.default_rng(seed)
    c, n, loss = [], [], []
    for budget in BUDGETS:
        n_opt = 0.1 * budget**0.5
        for x in np.linspace(-1.5, 1.5, points):
            c.append(budget)
            n.append(n_opt * math.exp(x))
            loss.append(20 * budget**-0.05 + 0.08 * x * x + rng.normal(0, noise))
    return np.array(c), np.array(n), np.array(loss)


def test_recovers_a_known_law():
    c, n, loss = synthetic(noise=0.0)
    fit = fit_isoflop(c, n, loss, num_bootstrap=50)
    assert fit.a == pytest.approx(0.5, abs=1e-9)
    assert math.exp(fit.n_law[0]) == pytest.approx(0.1, rel=1e-6)
    assert fit.b == pytest.approx(0.5, abs=1e-9)
    assert math.exp(fit.d_law[0]) == pytest.approx(1 / 0.6, rel=1e-6)
    assert fit.loss_law[1] == pytest.approx(-0.05, abs=1e-9)
    assert all(f.used for f in fit.budgets) and fit.notes == []


def test_recovers_a_known_law_through_noise_and_the_interval_covers_it():
    c, n, loss = synthetic(noise=0.004, seed=3)
    fit = fit_isoflop(c, n, loss, tokens=c / (6 * n), num_bootstrap=300, seed=1)
    assert fit.a == pytest.approx(0.5, abs=0.03)
    lo, hi = fit.interval(1)
    assert lo < 0.5 < hi and hi - lo < 0.1
    p = fit.predict(1e20)
    assert not p.extrapolation
    assert p.n_opt == pytest.approx(0.1 * 1e10, rel=0.15)
    assert p.n_opt_ci[0] <= p.n_opt <= p.n_opt_ci[1]
    assert p.d_opt == pytest.approx(1e20 / (6 * p.n_opt), rel=1e-6)  # D read off the runs' tokens
    assert fit.predict(1e23).extrapolation


def _independent_predictions(rows):
    """Approach 2 with plain numpy (log10 axes, dict grouping): the same estimator, written apart."""
    by_budget = {}
    for r in rows:
        by_budget.setdefault(r["compute_budget"], []).append(r)
    cs, ns, ls = [], [], []
    for budget, runs in sorted(by_budget.items()):
        x = np.log10([r["parameters"] for r in runs])
        p2, p1, p0 = np.polyfit(x, [r["final_loss"] for r in runs], 2)
        xv = -p1 / (2 * p2)
        cs.append(budget)
        ns.append(10**xv)
        ls.append(np.polyval([p2, p1, p0], xv))
    slope_n, icpt_n = np.polyfit(np.log10(cs), np.log10(ns), 1)
    slope_l, icpt_l = np.polyfit(np.log10(cs), np.log10(ls), 1)
    out = {}
    for target in (1e23, 1e24):
        n_opt = 10 ** (icpt_n + slope_n * math.log10(target))
        out[target] = (n_opt, target / (6 * n_opt), 10 ** (icpt_l + slope_l * math.log10(target)))
    return out


def test_isoflops_curves_predictions(reference):
    rows = json.loads((reference / "assignment3-scaling/data/isoflops_curves.json").read_text())
    fit = fit_isoflop(
        [r["compute_budget"] for r in rows],
        [r["parameters"] for r in rows],
        [r["final_loss"] for r in rows],
        num_bootstrap=200,
    )
    expected = _independent_predictions(rows)
    for target, (n_opt, d_opt, loss) in expected.items():
        p = fit.predict(target)
        assert p.extrapolation  # the data stop at 3e21 FLOPs
        assert p.n_opt == pytest.approx(n_opt, rel=1e-9)
        assert p.d_opt == pytest.approx(d_opt, rel=1e-9)
        assert p.loss == pytest.approx(loss, rel=1e-9)
        assert p.n_opt_ci[0] < p.n_opt < p.n_opt_ci[1]
    # the figures in the report (3 significant digits)
    assert f"{fit.predict(1e23).n_opt:.3g}" == "9.11e+10"
    assert f"{fit.predict(1e24).n_opt:.3g}" == "2.98e+11"
    assert f"{fit.a:.4f}" == "0.5146"


def test_too_few_points_and_unbracketed_budgets_are_named_and_left_out():
    c, n, loss = synthetic()
    # budget 1e21: only its 2 largest models; budget 1e18: only models above the optimum
    keep = ~((c == BUDGETS[-1]) & (n < 0.1 * BUDGETS[-1] ** 0.5 * 2)) & ~(
        (c == BUDGETS[0]) & (n < 0.1 * BUDGETS[0] ** 0.5 * 1.2)
    )
    with pytest.warns(UserWarning) as caught:
        fit = fit_isoflop(c[keep], n[keep], loss[keep], num_bootstrap=20)
    msgs = " ".join(str(w.message) for w in caught)
    assert "budget 1e+21: 2 distinct model size(s), need ≥ 3" in msgs
    assert "budget 1e+18" in msgs and "not bracketed; add smaller models" in msgs
    assert [f.budget for f in fit.budgets if f.used] == list(BUDGETS[1:-1])
    assert fit.a == pytest.approx(0.5, abs=1e-9)
    assert fit.budget_range == (BUDGETS[1], BUDGETS[-2])


def test_nan_losses_are_excluded_with_a_note():
    c, n, loss = synthetic()
    loss[3] = np.nan
    fit = fit_isoflop(c, n, loss, num_bootstrap=10)
    assert fit.notes == ["excluded 1 run(s) with NaN loss (diverged): indices [3]"]
    assert fit.a == pytest.approx(0.5, abs=1e-9)


def test_bad_values_fail_naming_them():
    c, n, loss = synthetic()
    n[5] = 0
    with pytest.raises(ValueError, match=r"params must be positive and finite; 1 value\(s\) are not: \[5\]=0.0"):
        fit_isoflop(c, n, loss)
    c2, n2, loss2 = synthetic()
    loss2[0] = -1
    with pytest.raises(ValueError, match="loss must be positive"):
        fit_isoflop(c2, n2, loss2)
    with pytest.raises(ValueError, match="same length"):
        fit_isoflop(c[:3], n2, synthetic()[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="needs ≥ 2 budgets"):
            fit_isoflop(c[:7], synthetic()[1][:7], synthetic()[2][:7])
