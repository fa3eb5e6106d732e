import math

import numpy as np
import pytest

from lm.scaling.flops import non_embedding_params, shape_for_params, tokens_for_budget, training_flops
from lm.scaling.parametric import law_loss
from lm.scaling.report import fit_runs, plot_isoflop, recommendation_markdown

TRUE = np.array([1.69, 406.4, 410.7, 0.34, 0.28])
SIZES = [53_000, 106_000, 213_000, 330_000, 660_000, 1_300_000, 2_600_000]
BUDGETS = [1e13, 3e13, 1e14]


def synthetic_table(noise=0.003, seed=0):
    """A runs table as the sweep writes it, losses drawn from a known L(N, D)."""
    rng = np.random.default_rng(seed)
    rows = []
    for budget in BUDGETS:
        for target in SIZES:
            shape = shape_for_params(target, aspect_ratio=32)
            n = non_embedding_params(shape)
            d = tokens_for_budget(shape, budget, 64, 257)
            loss = float(law_loss(TRUE, n, d)) * math.exp(rng.normal(0, noise))
            rows.append({"run_id": f"{budget:.0e}-{n}", "budget": budget, **shape.to_dict(), "params": n, "tokens": d,
                         "compute": training_flops(shape, d, 64, 257), "final_train_loss": loss, "final_val_loss": loss,
                         "status": "completed", "note": ""})
    return rows


def test_both_fits_and_the_recommendation_from_a_runs_table(tmp_path):
    rows = synthetic_table()
    rows.append({**rows[0], "run_id": "bad1", "final_val_loss": math.nan, "final_train_loss": math.nan, "status": "diverged",
                 "note": "loss went non-finite: excluded from the fits"})
    rows.append({**rows[1], "run_id": "bad2", "final_val_loss": math.nan, "status": "failed", "note": "RuntimeError: boom"})
    fits = fit_runs(rows, target_budget=1e16, context_length=64, vocab_size=257, aspect_ratio=32, num_bootstrap=40, num_starts=16)
    assert len(fits.used_runs) == len(BUDGETS) * len(SIZES)
    assert any(n.startswith("run bad1 (budget 1e+13, N=53,248) excluded: status diverged") for n in fits.notes)
    assert any("run bad2" in n and "RuntimeError: boom" in n for n in fits.notes)
    # approach 3 recovers the law it was drawn from
    assert fits.parametric.alpha == pytest.approx(0.34, abs=0.03)
    assert fits.parametric.beta == pytest.approx(0.28, abs=0.03)
    # approach 2 finds the same compute-optimal sizes as approach 3's frontier, inside the data
    rec_in = fit_runs(rows, target_budget=3e13, context_length=64, vocab_size=257, aspect_ratio=32,
                      num_bootstrap=40, num_starts=16).recommendation
    assert rec_in["isoflop"]["extrapolation"] is False
    assert rec_in["isoflop"]["n_opt"] == pytest.approx(rec_in["parametric"]["n_opt"], rel=0.25)
    rec = fits.recommendation
    assert rec["isoflop"]["extrapolation"] is True and rec["parametric"]["extrapolation"] is True
    shape = rec["isoflop"]["shape"]
    assert abs(rec["isoflop"]["shape_params"] / rec["isoflop"]["n_opt"] - 1) < 0.05 and shape["d_model"] % 32 == 0
    md = recommendation_markdown(fits)
    assert "**extrapolation**" in md and "## Notes" in md and "run bad1" in md
    laws = fits.law_rows()
    assert {r["approach"] for r in laws} == {"isoflop (2)", "parametric (3)"} and len(laws) == 6 + 5
    png = plot_isoflop(rows, fits, tmp_path / "isoflop.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    js = fits.to_json()
    assert js["runs_used"] == 21 and len(js["isoflop"]["budgets"]) == 3


def test_a_table_that_cannot_be_fitted_says_why():
    rows = [r for r in synthetic_table() if r["budget"] == BUDGETS[0]][:4]
    fits = fit_runs(rows, target_budget=1e14, context_length=64, vocab_size=257, num_bootstrap=5, num_starts=4)
    assert fits.isoflop is None and fits.parametric is None
    assert any(n.startswith("isoflop fit not possible") for n in fits.notes)
    assert any("needs ≥ 5 finite runs, got 4" in n for n in fits.notes)
    assert "isoflop" not in fits.recommendation
