import math

import numpy as np
import pytest

from lm.scaling.parametric import fit_parametric, frontier, huber_objective, law_loss

TRUE = np.array([1.69, 406.4, 410.7, 0.34, 0.28])  # Chinchilla's E, A, B, alpha, beta
SMALL_GRID = {
    "alpha": [0.0, 0.5, 1.0],
    "beta": [0.0, 0.5, 1.0],
    "e": [-1.0, 0.0, 1.0],
    "a": [0.0, 5.0, 10.0],
    "b": [0.0, 5.0, 10.0],
}


def runs(noise: float, count: int = 60, seed: int = 1):
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(math.log(1e7), math.log(1e10), count))
    d = np.exp(rng.uniform(math.log(1e9), math.log(1e12), count))
    return n, d, law_loss(TRUE, n, d) * np.exp(rng.normal(0, noise, count))


def test_gradient_matches_finite_differences():
    n, d, loss = runs(0.01, 20)
    args = (np.log(n), np.log(d), np.log(loss), 0.01)  # a δ where some residuals are quadratic, some linear
    theta = np.array([6.0, 6.1, 0.5, 0.33, 0.29])
    _, grad = huber_objective(theta, *args)
    for i in range(5):
        h = np.zeros(5)
        h[i] = 1e-6
        fd = (huber_objective(theta + h, *args)[0] - huber_objective(theta - h, *args)[0]) / 2e-6
        assert grad[i] == pytest.approx(fd, rel=1e-4, abs=1e-10)


def test_recovers_a_known_law_exactly_without_noise():
    n, d, loss = runs(0.0, 30)
    grid = {"alpha": [0.0, 0.5], "beta": [0.0, 0.5], "e": [0.0, 1.0], "a": [0.0, 5.0], "b": [0.0, 5.0]}
    fit = fit_parametric(n, d, loss, grid=grid, num_starts=None, num_bootstrap=0)
    assert fit.num_starts == 32  # every grid point
    np.testing.assert_allclose(fit.params, TRUE, rtol=2e-3)


def test_recovers_a_known_law_through_noise_with_standard_errors():
    n, d, loss = runs(0.005)
    fit = fit_parametric(n, d, loss, num_starts=16, num_bootstrap=40)
    se = fit.standard_errors()
    for name, value, tol in [("E", 1.69, 0.05), ("alpha", 0.34, 0.02), ("beta", 0.28, 0.02)]:
        assert getattr(fit, name) == pytest.approx(value, abs=tol)
        assert 0 < se[name] < 5 * tol  # the bootstrap sees the noise, and not much more
    # the frontier of the fitted law lands near the true one
    n_true, d_true, l_true = frontier(TRUE, 1e21)
    pred = fit.predict(1e21)
    assert pred["n_opt"] == pytest.approx(n_true, rel=0.3)
    assert pred["loss"] == pytest.approx(l_true, rel=0.01)
    assert pred["n_opt_ci"][0] < pred["n_opt"] < pred["n_opt_ci"][1]
    assert not pred["extrapolation"] and fit.predict(1e25)["extrapolation"]


def test_huber_shrugs_off_an_outlier():
    n, d, loss = runs(0.0, 30)
    loss[4] *= 1.5
    fit = fit_parametric(n, d, loss, grid=SMALL_GRID, num_starts=20, num_bootstrap=0)
    assert fit.alpha == pytest.approx(0.34, abs=0.01) and fit.beta == pytest.approx(0.28, abs=0.01)


def test_frontier_closed_form_equals_the_numeric_search():
    for budget in (1e18, 1e21, 1e24):
        n1, d1, l1 = frontier(TRUE, budget)
        n2, d2, l2 = frontier(TRUE, budget, flops_per_token=lambda n: 6 * n)
        assert n2 == pytest.approx(n1, rel=1e-3) and l2 == pytest.approx(l1, rel=1e-9)
        assert 6 * n1 * d1 == pytest.approx(budget)
    # Chinchilla's published law: N_opt ∝ C^(β/(α+β)) = C^0.452
    n_a, _, _ = frontier(TRUE, 1e22)
    n_b, _, _ = frontier(TRUE, 1e23)
    assert math.log10(n_b / n_a) == pytest.approx(0.28 / 0.62, abs=1e-9)


def test_bad_input():
    n, d, loss = runs(0.0, 10)
    loss[2] = np.nan
    fit = fit_parametric(n, d, loss, grid=SMALL_GRID, num_starts=4, num_bootstrap=0)
    assert fit.notes[0] == "excluded 1 run(s) with NaN loss (diverged): indices [2]"
    d[0] = -3
    with pytest.raises(ValueError, match=r"tokens must be positive and finite; 1 value\(s\) are not: \[0\]=-3.0"):
        fit_parametric(n, d, loss)
    with pytest.raises(ValueError, match="needs ≥ 5 finite runs, got 3"):
        fit_parametric(n[1:5], d[1:5], loss[1:5])
