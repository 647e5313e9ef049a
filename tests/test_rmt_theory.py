"""rmt.theory against hand-computed values and the properties Theorem 2 must have."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmt import theory
from rmt.testing import noise_scales, populations
from tests.tolerances import THEORY_RTOL


def sigma2_for(t, P, N, B, factor="paper"):
    """The sigma^2 that gives noise scale t (inverse of rmt.theory.noise_scale)."""
    f = (N - B) / (B * N) if factor == "paper" else (N - B) / (B * (N - 1))
    return t / (P * f)


def test_finite_population_factors_by_hand():
    # N = 50,000, B = 128 (the paper's CIFAR-100 setting)
    assert theory.paper_factor(50_000, 128) == pytest.approx(49_872 / 6_400_000, rel=THEORY_RTOL)
    assert theory.exact_factor(50_000, 128) == pytest.approx(
        49_872 / (128 * 49_999), rel=THEORY_RTOL
    )
    # B = N: no noise; B = 1 with the exact factor: the per-sample variance itself (times N/(N-1))
    assert theory.paper_factor(10, 10) == 0.0
    assert theory.exact_factor(10, 1) == pytest.approx(9 / 9, rel=THEORY_RTOL)


def test_theorem2_by_hand_both_regimes():
    P, N, B = 15_291_300, 50_000, 128
    sigma2 = sigma2_for(100.0, P, N, B)  # t = 100, threshold 10, edge 20
    pred = theorem = theory.theorem2([12.5, -12.5, 8.0, -8.0], sigma2, P, N, B)
    np.testing.assert_allclose(pred.t, 100.0, rtol=1e-12)
    np.testing.assert_allclose(
        theorem.predicted, [12.5 + 8.0, -12.5 - 8.0, 20.0, -20.0], rtol=1e-12
    )
    assert list(pred.regime) == ["outlier", "outlier", "edge", "edge"]
    np.testing.assert_allclose(pred.overlap, [1 - 100 / 156.25, 1 - 100 / 156.25, 0, 0])
    assert pred.factor == "paper"


def test_theorem2_exact_factor_is_larger_by_n_over_n_minus_1():
    P, N, B = 1_000, 50, 10
    paper = theory.theorem2(0.0, 1.0, P, N, B)
    exact = theory.theorem2(0.0, 1.0, P, N, B, factor="exact")
    np.testing.assert_allclose(exact.t / paper.t, N / (N - 1), rtol=THEORY_RTOL)


@given(lam=st.floats(-1e3, 1e3), t=noise_scales, pop=populations)
def test_theorem2_sign_symmetry(lam, t, pop):
    N, B = pop
    if B == N:
        return  # no noise: t = 0 whatever sigma^2
    P = 1_000
    sigma2 = sigma2_for(t, P, N, B)
    plus = theory.theorem2(lam, sigma2, P, N, B)
    minus = theory.theorem2(-lam, sigma2, P, N, B)
    if lam != 0:
        np.testing.assert_allclose(minus.predicted, -plus.predicted, rtol=THEORY_RTOL)
        assert minus.regime == plus.regime


@given(t=noise_scales, side=st.sampled_from([-1.0, 1.0]))
def test_theorem2_continuous_at_threshold_and_never_inside_edge(t, side):
    P, N, B = 10_000, 1_000, 100
    sigma2 = sigma2_for(t, P, N, B)
    root = np.sqrt(t)
    eps = 1e-9
    lam = side * root * np.array([1 - eps, 1 + eps, 0.3, 2.0, 50.0])
    pred = theory.theorem2(lam, sigma2, P, N, B)
    # continuity: both sides of the threshold give 2 sqrt(t) up to O(eps^2) * sqrt(t)
    np.testing.assert_allclose(pred.predicted[:2], side * 2 * root, rtol=1e-12)
    # AM-GM: |lam + t / lam| >= 2 sqrt(t): the batch extreme is never inside the edge
    assert np.all(np.abs(pred.predicted) >= 2 * root * (1 - THEORY_RTOL))
    assert np.all(np.sign(pred.predicted) == side)
    # monotone in |lam| above the threshold
    assert np.all(np.diff(np.abs(pred.predicted[[1, 3, 4]])) > 0)


def test_bbp_helpers_by_hand():
    t = 4.0
    assert theory.bbp_threshold(t) == 2.0
    assert theory.semicircle_edge(t) == 4.0
    assert theory.bbp_outlier(3.0, t) == pytest.approx(3 + 4 / 3, rel=THEORY_RTOL)
    np.testing.assert_allclose(theory.bbp_overlap([3.0, -3.0, 1.0], t), [5 / 9, 5 / 9, 0.0])
    assert theory.edge_scale(t, 1_000) == pytest.approx(2.0 / 100.0, rel=1e-12)
    assert theory.outlier_sd(3.0, t, 100) == pytest.approx(np.sqrt(2 * 0.04 * 5 / 9), rel=1e-12)


def test_semicircle_density_integrates_to_one_with_variance_t():
    t = 2.5
    x = np.linspace(-2 * np.sqrt(t), 2 * np.sqrt(t), 200_001)
    rho = theory.semicircle_density(x, t)
    h = x[1] - x[0]
    # trapezoid on a square-root edge: error O(h^1.5) = 1e-7 here
    assert np.sum(rho) * h == pytest.approx(1.0, abs=1e-6)
    assert np.sum(rho * x**2) * h == pytest.approx(t, rel=1e-6)


def test_weyl_paper_bound_is_the_element_variance():
    N, B, sigma2 = 1_000, 100, 3.0
    assert theory.weyl_paper_bound(sigma2, N, B) == pytest.approx(
        (N - B) / (B * N) * sigma2, rel=THEORY_RTOL
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.0, 1.0, 100, 10, 20), "B must be <= N"),
        ((1.0, 1.0, 100, 10, 0), "B must be >= 1"),
        ((1.0, -1.0, 100, 10, 5), "sigma"),
        ((np.nan, 1.0, 100, 10, 5), "lambda"),
        ((1.0, np.inf, 100, 10, 5), "sigma"),
        ((1.0, 1.0, 0, 10, 5), "P must be"),
    ],
)
def test_theorem2_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        theory.theorem2(*args)


def test_unknown_factor_is_rejected():
    with pytest.raises(ValueError, match="accepted: paper, exact"):
        theory.theorem2(1.0, 1.0, 100, 10, 5, factor="bessel")


@pytest.mark.parametrize(("N", "B"), [(6, 1), (6, 2), (7, 3), (7, 7)])
def test_noise_scale_is_the_mean_second_moment_of_the_batch_noise(N, B):
    """The identity behind t and the network's noise-variance row: over all C(N, B) batches
    drawn without replacement, mean tr(N_B^2) / P = t = P f_exact(N, B) sigma^2, with
    sigma^2 = sum_i ||H_i - H_emp||_F^2 / (N P^2) (paper eq. 9, 1/N convention). Exact
    enumeration on random symmetric per-sample matrices."""
    from itertools import combinations

    P = 5
    rng = np.random.default_rng(N * 10 + B)
    A = rng.standard_normal((N, P, P))
    H = (A + A.transpose(0, 2, 1)) / 2
    D = H - H.mean(axis=0)
    sigma2 = float((D**2).sum()) / (N * P * P)
    second = [float((D[list(b)].mean(axis=0) ** 2).sum()) / P for b in combinations(range(N), B)]
    t = float(theory.noise_scale(sigma2, P, N, B, factor="exact"))
    # sums of <= C(7, 3) = 35 batch means of P^2 = 25 entries: a few hundred roundings of
    # numbers <= the total sum of squares; 64 THEORY_RTOL = 512 eps of it
    assert abs(np.mean(second) - t) <= 64 * THEORY_RTOL * max(t, float((D**2).sum()) / P)
