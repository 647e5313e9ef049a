"""rmt.stability: the exact mean-square threshold of SGD on a linear least-squares model."""

import math

import numpy as np
import pytest

from rmt import stability as st
from tests.tolerances import STABILITY_MC_REL, STABILITY_MOMENT_ATOL, STABILITY_THRESHOLD_STEP

# A noise-dominated problem (one large sample): the finite-population factor matters.
X_NOISY = np.array([[3.0, 0.2], [0.1, 1.0], [0.3, -0.2], [-0.2, 0.5], [0.2, 0.1], [1.0, -1.0]])


def random_problem(seed):
    rng = np.random.default_rng(seed)
    N, P = int(rng.integers(4, 8)), int(rng.integers(2, 4))
    X = rng.standard_normal((N, P)) * rng.exponential(1.0, (N, 1))
    return X, int(rng.integers(1, N))


@pytest.mark.parametrize("seed", range(6))
def test_closed_form_moment_equals_enumeration(seed):
    X, B = random_problem(seed)
    H_i = st.per_sample_hessians(X)
    exact = st.enumerated_batch_moment(H_i, B)
    assert np.abs(st.closed_form_batch_moment(H_i, B) - exact).max() < STABILITY_MOMENT_ATOL
    if 1 < B < len(X):  # the wrong factors give another E[H_B (x) H_B]
        for wrong in ("paper", "with-replacement"):
            moved = np.abs(st.closed_form_batch_moment(H_i, B, factor=wrong) - exact).max()
            assert moved > 1e3 * STABILITY_MOMENT_ATOL


@pytest.mark.parametrize("seed", range(6))
def test_threshold_is_where_the_enumerated_map_reaches_one(seed):
    X, B = random_problem(seed)
    H_i = st.per_sample_hessians(X)
    H, C = H_i.mean(axis=0), st.enumerated_batch_moment(H_i, B)
    eta = st.exact_threshold(H_i, B).eta
    below = st.spectral_radius(st.second_moment_map(H, C, eta * (1 - STABILITY_THRESHOLD_STEP)))
    above = st.spectral_radius(st.second_moment_map(H, C, eta * (1 + STABILITY_THRESHOLD_STEP)))
    assert below <= 1.0 < above


def test_gradient_descent_threshold_is_two_over_lambda_max():
    H_i = st.per_sample_hessians(X_NOISY)
    lam = np.linalg.eigvalsh(H_i.mean(axis=0))[-1]
    result = st.exact_threshold(H_i, len(X_NOISY))
    assert result.eta == pytest.approx(2.0 / lam, rel=1e-12)
    assert result.gd == pytest.approx(2.0 / lam, rel=1e-12)
    assert st.gd_threshold(lam, 0.9) == pytest.approx(3.8 / lam, rel=1e-15)


@pytest.mark.parametrize("B", [2, 3])
def test_sgd_runs_find_the_exact_threshold(B):
    """Measured eta_max within [eta*, run-length eta] widened by the bisection resolution and
    the Monte-Carlo allowance; the wrong factors' thresholds fall outside that window."""
    H_i = st.per_sample_hessians(X_NOISY)
    steps, factor, rel = 50, 10.0, 0.01
    exact = st.exact_threshold(H_i, B).eta
    lo, hi = st.measured_eta_max(X_NOISY, B, steps=steps, runs=4000, factor=factor, rel=rel,
                                 lo=exact / 4, hi=exact * 4, rng=1)  # fmt: skip
    window_low = exact / (1 + STABILITY_MC_REL)
    window_high = st.run_length_eta(H_i, B, steps, factor) * (1 + STABILITY_MC_REL)
    assert window_low <= lo and hi <= window_high * (1 + rel)
    for wrong in ("paper", "with-replacement"):
        eta = st.exact_threshold(H_i, B, factor=wrong).eta
        assert not window_low / (1 + rel) <= eta <= window_high * (1 + rel), wrong


def test_wu_ma_e_exact_when_shared_eigenvectors_and_top_direction_unstable():
    """Every x_i on a coordinate axis: the H_i share H's eigenvectors, T keeps diagonal matrices,
    eta* = min_j 2 a_j / (a_j^2 + f s_j^2); here the top direction is the minimiser."""
    X = np.array([[2.0, 0], [1.0, 0], [1.5, 0], [0, 0.5], [0, 0.6], [0, 0.4]])
    H_i = st.per_sample_hessians(X)
    for B in (1, 2, 3, 5):
        result = st.exact_threshold(H_i, B)
        assert result.wu_ma_e == pytest.approx(result.eta, rel=1e-10)
        wrong = st.wu_ma_e_threshold(result.sharpness, result.nonuniformity, 6, B, factor="paper")
        if B in (2, 3):  # a wrong factor misses eta* by several percent
            assert abs(wrong / result.eta - 1) > 0.02


def test_wu_ma_e_strictly_looser_when_a_lower_direction_carries_the_instability():
    """Shared eigenvectors, but direction 2 (smaller curvature, larger spread) is the unstable
    one: Wu-Ma-E along the top eigenvector is necessary and strictly above eta*."""
    X = np.array([[1.3, 0], [1.3, 0], [1.3, 0], [0, 2.0], [0, 0.1], [0, 0.1]])
    H_i = st.per_sample_hessians(X)
    result = st.exact_threshold(H_i, 2)
    a = np.linalg.eigvalsh(H_i.mean(axis=0))
    assert result.sharpness == pytest.approx(a[-1])
    assert result.wu_ma_e > 1.2 * result.eta
    per_direction = []
    for j in range(2):
        q = X[:, j] ** 2
        per_direction.append(st.wu_ma_e_threshold(q.mean(), q.var(), 6, 2))
    assert result.eta == pytest.approx(min(per_direction), rel=1e-10)


@pytest.mark.parametrize("seed", range(20))
def test_necessary_and_sufficient_brackets(seed):
    """eta_suff <= eta* <= eta_Rayleigh always; Wu-Ma-E's ||H_i v||^2 form lies in the same
    bracket but on either side of eta* (it is necessary only when v carries the instability)."""
    X, B = random_problem(seed + 100)
    H_i = st.per_sample_hessians(X)
    result = st.exact_threshold(H_i, B)
    low, high = st.sufficient_threshold(H_i, B), st.rayleigh_threshold(H_i, B)
    assert low <= result.eta * (1 + 1e-9) and result.eta <= high * (1 + 1e-9)
    assert low <= result.wu_ma_e * (1 + 1e-9) and result.wu_ma_e <= high * (1 + 1e-9)


def test_wu_ma_e_with_norms_is_not_necessary_in_general():
    """A general (non-commuting) case where Wu-Ma-E's condition with ||H_i v||^2 is stricter
    than the exact threshold: SGD is mean-square stable at an eta it forbids."""
    X, B = random_problem(100)
    H_i = st.per_sample_hessians(X)
    result = st.exact_threshold(H_i, B)
    assert result.wu_ma_e < result.eta * (1 - 1e-3)
    eta = math.sqrt(result.wu_ma_e * result.eta)
    C = st.closed_form_batch_moment(H_i, B)
    assert st.spectral_radius(st.second_moment_map(H_i.mean(axis=0), C, eta)) < 1.0


def test_bad_batch_size_is_refused():
    H_i = st.per_sample_hessians(X_NOISY)
    with pytest.raises(ValueError, match="B must be an integer"):
        st.exact_threshold(H_i, 7)
