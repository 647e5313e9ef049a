"""rmt.spectra against exact references: closed-form W1, scipy's discrete W1, moments of known
laws (Gauss rules of the semicircle, two-point laws), the jackknife of a mean, and the old copy of
the W1 formula it replaces."""

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from rmt import spectra
from rmt.spectra import (
    jackknife,
    quadrature_moments,
    raw_moments,
    shape_statistics,
    slq_resolution,
    smooth_density,
    smoothing_width,
    wasserstein1_discrete,
    wasserstein1_measure_to_density,
    wasserstein1_to_density,
)
from rmt.testing import seeds
from tests.tolerances import EPS64, SPECTRA_SUM_RTOL, quadrature_moment_atol


def semicircle_gauss_rule(m: int, t: float = 1.0):
    """m-point Gauss rule of the semicircle of variance t: the Chebyshev rule of the second kind,
    nodes 2 sqrt(t) cos(j pi / (m + 1)), weights 2 / (m + 1) sin^2(j pi / (m + 1)), j = 1..m."""
    angle = np.arange(1, m + 1) * np.pi / (m + 1)
    return 2 * math.sqrt(t) * np.cos(angle), 2 / (m + 1) * np.sin(angle) ** 2


def semicircle_moment(k: int, t: float = 1.0) -> float:
    """k-th moment of the semicircle of variance t: Catalan(k / 2) t^(k / 2), 0 for odd k."""
    if k % 2:
        return 0.0
    j = k // 2
    return math.comb(2 * j, j) / (j + 1) * t**j


# ---- Wasserstein-1 ---------------------------------------------------------------------------


@given(a=st.floats(0.0, 1.0), points=st.integers(2, 50))
def test_w1_of_a_point_mass_against_the_uniform_density(a, points):
    """F_mu = 1[x >= a], F(x) = x on [0, 1]: W1 = int_0^a x dx + int_a^1 (1 - x) dx
    = a^2 / 2 + (1 - a)^2 / 2. The trapezoid CDF of a constant density is exact on any grid."""
    grid = np.linspace(0.0, 1.0, points)
    exact = a**2 / 2 + (1 - a) ** 2 / 2
    got = wasserstein1_to_density([a], grid, np.ones(points))
    assert got == pytest.approx(exact, rel=SPECTRA_SUM_RTOL, abs=EPS64)
    weighted = wasserstein1_measure_to_density([a], [0.3], grid, np.full(points, 7.0))
    assert weighted == pytest.approx(exact, rel=SPECTRA_SUM_RTOL, abs=EPS64)


def test_w1_where_the_cdf_difference_changes_sign_inside_a_grid_cell():
    """(delta_0.2 + delta_0.8) / 2 against U[0, 1]: F_mu - F changes sign at 0.5, inside the cell
    [1/3, 2/3] of a 4-point grid; W1 = 0.2^2/2 + 2 (0.3^2 / 2) + 0.2^2/2 = 0.13. Unequal weights
    (p at 0.2): W1 = 0.02 + int_0.2^p (p - x) + int_p^0.8 (x - p) + 0.02 for p in [0.2, 0.8]."""
    grid = np.linspace(0.0, 1.0, 4)
    uniform = np.ones(4)
    assert wasserstein1_to_density([0.8, 0.2], grid, uniform) == pytest.approx(
        0.13, rel=SPECTRA_SUM_RTOL
    )
    p = 0.7
    exact = 0.02 + (p - 0.2) ** 2 / 2 + (0.8 - p) ** 2 / 2 + 0.02
    got = wasserstein1_to_density([0.2, 0.8], grid, uniform, weights=[p, 1 - p])
    assert got == pytest.approx(exact, rel=SPECTRA_SUM_RTOL)


def old_synthetic_w1(samples, grid, density) -> float:
    """validation.synthetic.wasserstein1_to_density before the merge, verbatim: the reference
    the one W1 function must reproduce for equal weights."""
    samples = np.sort(np.asarray(samples, dtype=float))
    if samples[0] < grid[0] or samples[-1] > grid[-1]:
        raise ValueError("the grid must cover every sample")
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    x = np.union1d(grid, samples)
    F = np.interp(x, grid, cdf)
    level = np.searchsorted(samples, x[:-1], side="right") / samples.size
    g0, g1 = level - F[:-1], level - F[1:]
    length = np.diff(x)
    same_sign = g0 * g1 >= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = (g0**2 + g1**2) / (2.0 * (np.abs(g0) + np.abs(g1)))
    pieces = np.where(same_sign, 0.5 * (np.abs(g0) + np.abs(g1)), crossing)
    return float(np.sum(length * pieces))


@given(seed=seeds, n=st.integers(1, 300), points=st.integers(2, 400))
def test_one_w1_function_reproduces_the_old_synthetic_formula(seed, n, points):
    rng = np.random.default_rng(seed)
    samples = rng.normal(size=n)
    if rng.random() < 0.3:  # ties and samples on grid points
        samples = np.round(samples, 1)
    grid = np.linspace(min(samples.min(), -2.0), max(samples.max(), 2.0), points)
    density = np.clip(4 - grid**2, 0, None) + rng.uniform(0.0, 0.1, points)
    old = old_synthetic_w1(samples, grid, density)
    assert wasserstein1_to_density(samples, grid, density) == pytest.approx(
        old, rel=SPECTRA_SUM_RTOL, abs=EPS64
    )
    # the same measure with explicit equal weights 1 / n (cumulative levels rounded differently)
    explicit = wasserstein1_to_density(samples, grid, density, weights=np.full(n, 1.0 / n))
    assert explicit == pytest.approx(old, rel=SPECTRA_SUM_RTOL, abs=EPS64)


def test_w1_to_density_rejects_a_grid_that_misses_a_node():
    with pytest.raises(ValueError, match="the grid must cover every node"):
        wasserstein1_to_density([1.5], np.linspace(0, 1, 5), np.ones(5))


@given(seed=seeds, n1=st.integers(1, 40), n2=st.integers(1, 40))
def test_discrete_w1_against_scipy(seed, n1, n2):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n1), rng.normal(0.3, 2.0, size=n2)
    if rng.random() < 0.5:
        x2[: min(n1, n2)] = x1[: min(n1, n2)]  # shared atoms
    w1, w2 = rng.uniform(0.1, 1.0, n1), rng.uniform(0.1, 1.0, n2)
    ref = scipy.stats.wasserstein_distance(x1, x2, w1, w2)
    got = wasserstein1_discrete(x1, w1, x2, w2)
    assert got == pytest.approx(ref, rel=SPECTRA_SUM_RTOL, abs=4 * EPS64)


def test_discrete_w1_by_hand():
    # delta_0 against (delta_0 + delta_2) / 2: half the mass moves by 2
    assert wasserstein1_discrete([0.0], [1.0], [0.0, 2.0], [3.0, 3.0]) == 1.0
    assert wasserstein1_discrete([1.0, 2.0], [1, 1], [2.0, 1.0], [5, 5]) == 0.0


def test_slq_resolution_by_hand():
    nodes = np.array([[0.0, 1.0, np.nan], [0.0, 1.0, np.nan], [0.0, 1.0, np.nan]])
    weights = np.array([[0.5, 0.5, 0.0]] * 3)
    assert slq_resolution(nodes, weights) == 0.0  # identical probes
    assert math.isnan(slq_resolution(nodes[:1], weights[:1]))  # one probe: no split
    # two probes, point masses at 0 and at 1: W1 = 1, scale sqrt(2 (1 + 1)) = 2
    two = np.array([[0.0], [1.0]])
    assert slq_resolution(two, np.ones((2, 1))) == 0.5


# ---- moments and shape -----------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 5, 12])
def test_quadrature_moments_exact_up_to_degree_2m_minus_1(m):
    """The m-point Gauss rule of the semicircle integrates x^k exactly for k <= 2m - 1 and misses
    x^(2m) by prod beta_j^2 = 1 (t = 1)."""
    nodes, weights = semicircle_gauss_rule(m)
    ks = np.arange(2 * m + 1)
    got = quadrature_moments(nodes, weights, ks)
    assert got.shape == (ks.size,)
    for k in ks[:-1]:
        assert abs(got[k] - semicircle_moment(k)) <= quadrature_moment_atol(k, m, 2.0)
    assert got[-1] == pytest.approx(semicircle_moment(2 * m) - 1.0, rel=1e-12)
    # per-probe rows, NaN padding with zero weight ignored
    padded_nodes = np.stack([np.append(nodes, np.nan), np.append(nodes, 5.0)])
    padded_weights = np.stack([np.append(weights, 0.0)] * 2)
    rows = quadrature_moments(padded_nodes, padded_weights, ks)
    assert rows.shape == (2, ks.size)
    np.testing.assert_array_equal(rows[0], got)
    np.testing.assert_array_equal(rows[1], got)
    np.testing.assert_array_equal(
        raw_moments(padded_nodes, padded_weights),
        quadrature_moments(padded_nodes, padded_weights, [1, 2, 3, 4]),
    )


def test_shape_statistics_of_known_laws():
    # symmetric two-point law at mu +- c: skewness 0, kurtosis 1 (shift and scale invariant)
    m = quadrature_moments([0.5 - 2.0, 0.5 + 2.0], [0.5, 0.5], [1, 2, 3, 4])
    skew, kurt = shape_statistics(m)
    assert abs(skew) <= SPECTRA_SUM_RTOL and kurt == pytest.approx(1.0, rel=SPECTRA_SUM_RTOL)
    # the semicircle's 3-point Gauss rule has the semicircle's moments up to degree 5: 0 and 2
    nodes, weights = semicircle_gauss_rule(3, t=2.5)
    skew, kurt = shape_statistics(quadrature_moments(nodes, weights, [1, 2, 3, 4]))
    assert abs(skew) <= SPECTRA_SUM_RTOL and kurt == pytest.approx(2.0, rel=SPECTRA_SUM_RTOL)
    # Bernoulli(p) on (x0, x0 + d): skewness (1 - 2p) / sqrt(pq), kurtosis (1 - 3pq) / (pq)
    p, q = 0.2, 0.8
    skew, kurt = shape_statistics(quadrature_moments([-1.0, 2.0], [q, p], [1, 2, 3, 4]))
    assert skew == pytest.approx((1 - 2 * p) / math.sqrt(p * q), rel=SPECTRA_SUM_RTOL)
    assert kurt == pytest.approx((1 - 3 * p * q) / (p * q), rel=SPECTRA_SUM_RTOL)
    # a point mass has no spread: undefined
    assert all(math.isnan(v) for v in shape_statistics(np.array([3.0, 9.0, 27.0, 81.0])))


def test_jackknife_of_the_mean_is_the_standard_error():
    """Leave-one-out means deviate by -(x_i - mean) / (n - 1), so the jackknife variance
    (n - 1)/n sum (loo_i - loo_.)^2 = sum (x_i - mean)^2 / (n (n - 1)) = sd^2 / n."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 3)) * [1.0, 5.0, 0.1]
    value, se = jackknife(x, lambda v: v)
    np.testing.assert_allclose(value, x.mean(axis=0), rtol=SPECTRA_SUM_RTOL)
    np.testing.assert_allclose(se, x.std(axis=0, ddof=1) / 3.0, rtol=SPECTRA_SUM_RTOL)
    # a linear statistic scales it; one probe has no standard error
    _, se2 = jackknife(x, lambda v: -2.0 * v + 1.0)
    np.testing.assert_allclose(se2, 2.0 * se, rtol=SPECTRA_SUM_RTOL)
    value1, se1 = jackknife(x[:1], lambda v: v)
    np.testing.assert_array_equal(value1, x[0])
    assert np.isnan(se1).all()


# ---- densities -------------------------------------------------------------------------------


def test_smooth_density_is_the_probe_mean_of_gaussian_mixtures():
    grid = np.linspace(-3.0, 4.0, 71)
    nodes = np.array([[0.0, 1.0], [2.0, np.nan]])
    weights = np.array([[0.25, 0.75], [1.0, 0.0]])
    norm = scipy.stats.norm
    ref = 0.5 * (0.25 * norm.pdf(grid, 0.0, 0.3) + 0.75 * norm.pdf(grid, 1.0, 0.3))
    ref += 0.5 * norm.pdf(grid, 2.0, 0.3)
    np.testing.assert_allclose(smooth_density(nodes, weights, grid, 0.3), ref, rtol=1e-14)
    with pytest.raises(ValueError, match="width must be a positive number"):
        smooth_density(nodes, weights, grid, 0.0)


def test_smoothing_width_is_the_range_over_steps():
    arrays = [np.array([0.0, 1.0]), np.array([[np.nan, 3.0], [-1.0, 0.5]])]
    assert smoothing_width(arrays, 8) == 0.5
    assert smoothing_width([np.array([2.0, 2.0])], 10) == 1.0  # no range: unit width


def test_nnhessian_reexports_the_same_functions():
    pytest.importorskip("torch")
    import importlib

    nnhessian = importlib.import_module("nnhessian")
    module = importlib.import_module("nnhessian.lanczos")  # nnhessian.lanczos is the function
    for name in ("quadrature_moments", "smooth_density"):
        assert getattr(module, name) is getattr(spectra, name)
        assert getattr(nnhessian, name) is getattr(spectra, name)
