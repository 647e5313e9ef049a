"""rmt.freeconv against exact references, invariants of free convolution, and dense Monte Carlo.

References, none of which uses Biane's parametrisation that the module implements:

* mu = delta_a: the semicircle of variance t centred at a, and the BBP outlier formulas;
* mu = (delta_{-a} + delta_a) / 2: Pastur's equation is a cubic in G, solved by numpy.roots;
* semicircle(s) (Gauss-discretised) boxplus semicircle(t) = semicircle(s + t);
* Pastur's equation G(z) = G_mu(z - t G(z)) off the real axis, by a contracting fixed point,
  against the Cauchy transform of the computed density (quadrature);
* free cumulants add: mass, mean, variance + t, third and fourth cumulants (the fourth separates
  free from classical convolution, which shares the first three);
* dense GOE matrices: the empirical spectral distribution and a spiked outlier.
"""

import numpy as np
import pytest
import scipy.linalg
from hypothesis import assume, example, given
from hypothesis import strategies as st

import rmt.freeconv as fc
from rmt.freeconv import (
    FreeConvolutionOutliers,
    free_convolution_density,
    free_convolution_outliers,
    free_convolution_support,
)
from rmt.testing import kolmogorov_distance, noise_scales, seeds, spike_sets
from tests.tolerances import (
    EPS64,
    FREECONV_EDGE_RTOL,
    FREECONV_FORMULA_RTOL,
    FREECONV_KS_RIGIDITY,
    FREECONV_OUTLIER_BIAS,
    FREECONV_QUAD_ATOL,
    FREECONV_QUAD_NODES,
    Z_STAT,
    freeconv_density_atol,
)

# ---- independent references and helpers ------------------------------------------------------


def _semicircle(x, t, centre=0.0):
    """Semicircle density of variance t centred at ``centre``: sqrt(4t - y^2) / (2 pi t)."""
    y = np.asarray(x, dtype=np.float64) - centre
    return np.sqrt(np.maximum(4 * t - y * y, 0.0)) / (2 * np.pi * t)


def _goe(P, t, rng):
    """GOE of noise scale t: off-diagonal variance t / P, diagonal 2 t / P."""
    G = rng.standard_normal((P, P))
    return (G + G.T) * np.sqrt(t / (2 * P))


def _nodes(a, w, t, m=FREECONV_QUAD_NODES):
    """Quadrature nodes and weights for integrals against the density, on the computed support.

    On each support interval [L, R], x = (L + R)/2 - (R - L)/2 cos(theta) and the midpoint rule in
    theta. The density has square-root edges, so rho(x(theta)) sin(theta) extends to a smooth even
    periodic function and the rule converges geometrically (trapezoid rule for periodic functions).
    Returns (x, q, rho(x)) with sum(q * rho * f(x)) ~ int f d(mu boxplus sigma_t).
    """
    xs, qs = [], []
    theta = (np.arange(m) + 0.5) * np.pi / m
    for left, right in free_convolution_support(a, w, t):
        half = 0.5 * (right - left)
        xs.append(0.5 * (left + right) - half * np.cos(theta))
        qs.append(half * np.sin(theta) * np.pi / m)
    x, q = np.concatenate(xs), np.concatenate(qs)
    return x, q, free_convolution_density(a, w, t, x)


def _integrate(a, w, t, f):
    """int f d(mu boxplus sigma_t) with m and m/2 nodes: (value, |difference|) as error estimate."""
    out = []
    for m in (FREECONV_QUAD_NODES, FREECONV_QUAD_NODES // 2):
        x, q, rho = _nodes(a, w, t, m)
        out.append(np.sum(q * rho * f(x), axis=-1))
    return out[0], np.abs(out[0] - out[1])


def _pastur_fixed_point(a, w, t, z, iterations=80):
    """Solve G = G_mu(z - t G) by iteration; a contraction with factor t / Im(z)^2 (< 1/4 here).

    G -> G_mu(z - t G) maps the lower half-plane into itself with Im(z - t G) >= Im z, and
    |G_mu'(omega)| <= 1 / Im(omega)^2, so the Lipschitz constant is <= t / Im(z)^2.
    """
    G = 1.0 / z
    for _ in range(iterations):
        omega = z - t * G
        G = (w / (omega[:, None] - a)).sum(axis=1)
    return G


def _gap_criticality(a, w, t):
    """t * min F between consecutive atoms, on a dense grid (an upper bound of the true min)."""
    out = []
    for lo, hi in zip(a[:-1], a[1:], strict=True):
        if hi - lo <= 0:
            continue
        u = np.linspace(lo, hi, 4002)[1:-1]
        out.append(t * (w / (u[:, None] - a) ** 2).sum(axis=1).min())
    return np.array(out)


@st.composite
def measures(draw, max_atoms=6):
    """(atoms, weights, t): atoms in [-scale, scale] (ties allowed), Dirichlet weights.

    t / scale^2 spans 0.008 to 5 on a log scale (gaps between most atoms at the low end, one
    interval at the high end); the generator jitters it so that no special value is hit.
    """
    seed = draw(seeds)
    n = draw(st.sampled_from([*range(2, max_atoms + 1), 1]))  # n = 1: the point-mass tests
    scale = draw(st.sampled_from([0.5, 1.0, 3.0]))
    ratio = draw(st.sampled_from([0.01, 0.03, 0.1, 0.3, 1.0, 4.0]))
    rng = np.random.default_rng(seed)
    t = scale**2 * ratio * rng.uniform(0.8, 1.25)
    a = rng.uniform(-scale, scale, n)
    if draw(st.booleans()):
        a = np.round(a / scale, 1) * scale  # repeated atoms must merge
    w = rng.dirichlet(np.ones(n))
    return a, w, t


def _exclude_near_critical_gaps(a, w, t):
    """Skip draws with t min F in (0.8, 1.25) between two atoms: a gap just opening or closing.

    There the density has a narrow dip (or a narrow gap) that the fixed quadrature rule does not
    resolve (512 and 1024 nodes differ by up to 6e-5); the two-atom test covers t min F = 1 +- 2%
    pointwise, without quadrature.
    """
    crit = _gap_criticality(np.sort(a), w[np.argsort(a)], t)
    assume(not np.any((crit > 0.8) & (crit < 1.25)))


# ---- exact references -----------------------------------------------------------------------


@given(t=noise_scales, centre=st.floats(-5, 5), seed=seeds)
@example(t=1.0, centre=0.0, seed=0)  # root-finder starts exactly on the edge preimage
@example(t=4.0, centre=0.0, seed=0)
@example(t=0.25, centre=1.0, seed=0)
def test_point_mass_gives_the_semicircle(t, centre, seed):
    r = np.sqrt(t)
    rng = np.random.default_rng(seed)
    near_edge = 2 * r * (1 - np.logspace(-15, -1, 15))
    x = centre + np.concatenate([rng.uniform(-3 * r, 3 * r, 300), near_edge, -near_edge, [0.0]])
    rho = free_convolution_density([centre], [1.0], t, x)
    ref = _semicircle(x, t, centre)
    np.testing.assert_array_less(np.abs(rho - ref), freeconv_density_atol(x, t, ref))
    [(left, right)] = free_convolution_support([centre], [1.0], t)
    edge_tol = FREECONV_EDGE_RTOL * (abs(centre) + r)
    assert abs(left - (centre - 2 * r)) <= edge_tol
    assert abs(right - (centre + 2 * r)) <= edge_tol


@given(t=noise_scales, spikes=spike_sets(max_rank=6, bound=10.0))
@example(t=4.0, spikes=[2.0, -2.0, 0.0, 3.0])  # exactly at the threshold: absorbed
def test_point_mass_outliers_are_bbp(t, spikes):
    theta = np.array(spikes)
    out = free_convolution_outliers([0.0], [1.0], theta, t)
    assert isinstance(out, FreeConvolutionOutliers)
    assert out.t == t
    np.testing.assert_array_equal(out.spikes, theta)
    above = np.abs(theta) > np.sqrt(t)
    # the flag is 1 - t / theta^2 > 0 in floating point: compare it away from a rounding's width of
    # the threshold (the example puts spikes exactly on it, where 1 - 4 / 2^2 == 0 exactly)
    clear = np.abs(theta * theta - t) > 4 * EPS64 * t
    np.testing.assert_array_equal(out.is_outlier[clear], above[clear])
    above &= out.is_outlier
    # theta + t/theta and 1 - t/theta^2: a few roundings each (FREECONV_FORMULA_RTOL covers 4 eps)
    with np.errstate(divide="ignore", over="ignore"):
        loc = theta + t / theta
        ov = 1 - t / theta**2
    np.testing.assert_allclose(out.location[above], loc[above], rtol=FREECONV_FORMULA_RTOL)
    np.testing.assert_allclose(out.overlap[above], ov[above], rtol=0, atol=4 * EPS64)
    assert np.all(np.isnan(out.location[~out.is_outlier]))
    assert np.all(out.overlap[~out.is_outlier] == 0)
    # an outlier never sits inside the bulk [-2 sqrt t, 2 sqrt t] (AM-GM)
    assert np.all(np.abs(out.location[above]) >= 2 * np.sqrt(t) * (1 - FREECONV_FORMULA_RTOL))


def _pastur_cubic(x, alpha, t):
    """G(x + i0) for mu = (delta_{-alpha} + delta_alpha)/2 from Pastur's equation, independently.

    G_mu(z) = z / (z^2 - alpha^2); G = G_mu(z - t G) gives
    t^2 G^3 - 2 x t G^2 + (x^2 - alpha^2 + t) G - x = 0. Returns the root with the most negative
    imaginary part (Im G(x + i0) <= 0) after two Newton polishing steps, and an error bound for it:
    Horner's evaluation error 6 eps sum |p_k| |G|^k over |p'(G)| (first-order root perturbation),
    doubled.
    """
    G = np.empty(x.size, dtype=complex)
    err = np.empty(x.size)
    for i, xi in enumerate(x):
        p = np.array([t * t, -2 * xi * t, xi * xi - alpha * alpha + t, -xi], dtype=complex)
        dp = np.polyder(p)
        roots = np.roots(p)
        for _ in range(2):
            roots = roots - np.polyval(p, roots) / np.polyval(dp, roots)
        k = np.argmin(roots.imag)
        g = roots[k]
        G[i] = g
        size = np.polyval(np.abs(p), abs(g))
        err[i] = 2 * 6 * EPS64 * size / max(abs(np.polyval(dp, g)), 1e-300)
    return G, err


@pytest.mark.parametrize(
    ("alpha", "t"),
    [
        (1.0, 0.3),  # wide gap: alpha^2 > t
        (1.0, 0.98),  # narrow gap: t min F = t / alpha^2 = 0.98
        (1.0, 1.02),  # dip, no gap
        (1.0, 3.0),  # one interval
        (2.5, 0.1),  # far atoms, small noise
    ],
)
def test_two_atoms_match_pastur_cubic(alpha, t):
    a, w = np.array([-alpha, alpha]), np.array([0.5, 0.5])
    r = np.sqrt(t)
    x = np.linspace(-alpha - 3 * r, alpha + 3 * r, 1201)
    rho = free_convolution_density(a, w, t, x)
    G, err = _pastur_cubic(x, alpha, t)
    ref = np.maximum(-G.imag / np.pi, 0.0)
    tol = err / np.pi + freeconv_density_atol(x, t, ref)
    np.testing.assert_array_less(np.abs(rho - ref), tol)
    assert np.max(ref) > 0.05  # the comparison is not between two zeros

    support = free_convolution_support(a, w, t)
    assert len(support) == (2 if alpha**2 > t else 1)
    # every edge is a real root of the cubic's discriminant in x (a double root G of Pastur's cubic)
    X = np.polynomial.Polynomial([0, 1])
    A, B, C, D = t * t, -2 * t * X, X * X - alpha**2 + t, -X
    disc = 18 * A * B * C * D - 4 * B**3 * D + B * B * C * C - 4 * A * C**3 - 27 * A * A * D * D
    real_roots = disc.roots()  # companion-matrix eigenvalues: backward stable
    real_roots = real_roots[np.abs(real_roots.imag) < 1e-6].real  # real ones carry ~eps imag parts
    # first-order root perturbation: |dx| <= (backward error ~ degree * eps * sum |p_k| |x|^k) /
    # |p'(x)|; 64 eps covers degree 6 with a margin of ~10
    for edge in np.ravel(support):
        cond = np.polyval(np.abs(disc.coef[::-1]), abs(edge)) / abs(disc.deriv()(edge))
        assert np.min(np.abs(real_roots - edge)) <= 64 * EPS64 * cond + FREECONV_EDGE_RTOL * (
            alpha + r
        )
    # symmetry of the measure
    np.testing.assert_allclose(np.ravel(support), -np.ravel(support)[::-1], rtol=4 * EPS64)


def test_discretised_semicircle_convolves_to_the_semicircle():
    """sigma_s boxplus sigma_t = sigma_{s+t}, with sigma_s replaced by its n-point Gauss rule.

    The Gauss rule (Chebyshev nodes of the second kind) matches the moments of sigma_s up to order
    2n - 1, and G_{mu_n}(omega) - G_{sigma_s}(omega) decays like rho^(-2n) for omega off the
    support of sigma_s (Bernstein ellipse); at n = 300, s = 1, t = 0.5 this is far below the
    float64 rounding of the density, so the float64 tolerance alone applies.
    """
    s, t, n = 1.0, 0.5, 300
    k = np.arange(1, n + 1)
    a = 2 * np.sqrt(s) * np.cos(k * np.pi / (n + 1))
    w = 2 / (n + 1) * np.sin(k * np.pi / (n + 1)) ** 2
    r = np.sqrt(s + t)
    x = np.linspace(-2.4 * r, 2.4 * r, 801)
    rho = free_convolution_density(a, w, t, x)
    ref = _semicircle(x, s + t)
    np.testing.assert_array_less(np.abs(rho - ref), freeconv_density_atol(x, t, ref))
    [(left, right)] = free_convolution_support(a, w, t)
    np.testing.assert_allclose([left, right], [-2 * r, 2 * r], rtol=FREECONV_EDGE_RTOL)


# ---- invariants of free convolution (hypothesis) ---------------------------------------------


@given(measures())
def test_free_cumulants_add(measure):
    a, w, t = measure
    _exclude_near_critical_gaps(a, w, t)
    mean = w @ a
    c2, c3, c4 = (w @ (a - mean) ** k for k in (2, 3, 4))
    # free cumulants kappa_1, kappa_2 add (semicircle: kappa_2 = t, others 0); kappa_3 = c3 and
    # kappa_4 = c4 - 2 c2^2 in terms of central moments, so the result's central moments are
    expected = [1.0, mean, c2 + t, c3, c4 - 2 * c2**2 + 2 * (c2 + t) ** 2]
    unit = np.abs(a).max() + np.sqrt(t)  # moments of order k scale like unit^k
    centred = [
        lambda x: np.ones_like(x),
        lambda x: x,
        lambda x: (x - mean) ** 2,
        lambda x: (x - mean) ** 3,
        lambda x: (x - mean) ** 4,
    ]
    for k, (f, exp) in enumerate(zip(centred, expected, strict=True)):
        val, est = _integrate(a, w, t, f)
        tol = FREECONV_QUAD_ATOL * unit**k
        assert est <= tol, f"quadrature not resolved for moment {k}: {est}"
        assert abs(val - exp) <= tol, f"moment {k}: {val} != {exp}"


@given(measure=measures(), c=st.sampled_from([-3.0, -1.0, 0.25, 2.0]), b=st.floats(-3, 3))
def test_affine_equivariance(measure, c, b):
    """For Y = c X + b: density_{c a + b, c^2 t}(c x + b) = density_{a, t}(x) / |c|."""
    a, w, t = measure
    x, _, rho = _nodes(a, w, t, 64)
    x = np.concatenate([x, np.linspace(a.min() - 3 * np.sqrt(t), a.max() + 3 * np.sqrt(t), 101)])
    rho = free_convolution_density(a, w, t, x)
    y = c * x + b
    rho_y = free_convolution_density(c * a + b, w, c * c * t, y)
    tol = freeconv_density_atol(x, t, rho) + freeconv_density_atol(y, c * c * t, rho_y) * abs(c)
    np.testing.assert_array_less(np.abs(rho_y * abs(c) - rho), tol)
    edges = np.ravel(free_convolution_support(a, w, t))
    edges_y = np.sort(np.ravel(free_convolution_support(c * a + b, w, c * c * t)))
    unit = abs(c) * (np.abs(a).max() + np.sqrt(t)) + abs(b)
    np.testing.assert_allclose(edges_y, np.sort(c * edges + b), rtol=0, atol=8 * EPS64 * unit)


@given(measures(max_atoms=8))
def test_density_positive_exactly_on_the_support(measure):
    a, w, t = measure
    support = np.array(free_convolution_support(a, w, t))
    assert np.all(support[:, 0] < support[:, 1])
    assert np.all(support[1:, 0] > support[:-1, 1])  # disjoint, sorted
    r = np.sqrt(t)
    x = np.linspace(a.min() - 3 * r, a.max() + 3 * r, 2001)
    rho = free_convolution_density(a, w, t, x)
    assert np.all(rho >= 0) and rho.dtype == np.float64
    unit = np.abs(a).max() + r
    dist = np.min(np.abs(x[:, None] - support.ravel()), axis=1)
    clear = dist > 1e-9 * unit  # x is separated from every edge
    inside = np.any((x[:, None] > support[:, 0]) & (x[:, None] < support[:, 1]), axis=1)
    assert np.all(rho[clear & inside] > 0)
    assert np.all(rho[clear & ~inside] == 0)
    # the outer edges are psi(u) with u within sqrt(t) of the extreme atoms and |psi(u) - u| <=
    # sqrt(t): the support lies in [min a - 2 sqrt(t), max a + 2 sqrt(t)]
    assert support[0, 0] >= a.min() - 2 * r - 8 * EPS64 * unit
    assert support[-1, 1] <= a.max() + 2 * r + 8 * EPS64 * unit


@given(measure=measures(), x0=st.floats(-1.0, 1.0))
def test_pastur_equation_off_the_real_axis(measure, x0):
    """G(z) = int rho(x) / (z - x) dx solves G = G_mu(z - t G) at Im z = 2 sqrt(t)."""
    a, w, t = measure
    _exclude_near_critical_gaps(a, w, t)
    unit = np.abs(a).max() + np.sqrt(t)
    z = unit * x0 + np.linspace(-2.0, 2.0, 9) * unit + 2j * np.sqrt(t)
    G_ref = _pastur_fixed_point(a, w, t, z)
    G, est = _integrate(a, w, t, lambda x: 1.0 / (z[:, None] - x))
    # |G| <= 1 / Im z: the quadrature tolerance is relative to that size
    size = 1.0 / (2 * np.sqrt(t))
    assert np.all(est <= FREECONV_QUAD_ATOL * size)
    np.testing.assert_array_less(np.abs(G - G_ref), FREECONV_QUAD_ATOL * size)


@given(measure=measures(), theta=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=5))
def test_outliers_obey_subordination(measure, theta):
    """An outlier lambda = psi(theta) satisfies omega(lambda) = lambda - t G(lambda) = theta, and
    its squared overlap is 1 / omega'(lambda) = 1 / (1 + t int rho(x) / (lambda - x)^2 dx), with G
    the Cauchy transform of the computed density (quadrature): no Biane formula is reused."""
    a, w, t = measure
    _exclude_near_critical_gaps(a, w, t)
    unit = np.abs(a).max() + np.sqrt(t)
    spikes = 2.5 * unit * np.array(theta)
    out = free_convolution_outliers(a, w, spikes, t)
    # flags from the definition: F(theta) < 1/t
    with np.errstate(divide="ignore", over="ignore"):
        F = (w / (spikes[:, None] - a) ** 2).sum(axis=1)
    np.testing.assert_array_equal(out.is_outlier, t * F < 1)
    support = np.array(free_convolution_support(a, w, t))
    # outliers away from the bulk (overlap >= 0.2) keep the Cauchy kernel smooth on the support
    check = out.is_outlier & (out.overlap >= 0.2)
    for theta_i, lam, ov in zip(
        spikes[check], out.location[check], out.overlap[check], strict=True
    ):
        assert not np.any((lam >= support[:, 0]) & (lam <= support[:, 1]))
        G, est_g = _integrate(a, w, t, lambda x, lam=lam: 1.0 / (lam - x))
        G1, est_1 = _integrate(a, w, t, lambda x, lam=lam: 1.0 / (lam - x) ** 2)
        tol = FREECONV_QUAD_ATOL * unit
        assert est_g * t <= tol and est_1 * t <= tol
        assert abs(lam - t * G - theta_i) <= tol
        assert abs(ov * (1 + t * G1) - 1) <= FREECONV_QUAD_ATOL * (1 + t * G1)


# ---- numerics ---------------------------------------------------------------------------------


def test_chunking_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(11)
    a, w = rng.standard_normal(300), rng.dirichlet(np.ones(300))
    x = np.linspace(-4, 4, 257)
    whole = free_convolution_density(a, w, 0.2, x)
    support = free_convolution_support(a, w, 0.002)
    monkeypatch.setattr(fc, "_CHUNK", 7)  # 1 row per chunk
    np.testing.assert_array_equal(free_convolution_density(a, w, 0.2, x), whole)
    assert free_convolution_support(a, w, 0.002) == support


def test_grid_shape_is_kept_and_atoms_may_coincide_with_grid_points():
    a, w = np.array([-1.0, 0.0, 2.0]), np.array([0.2, 0.5, 0.3])
    grid = np.array([[-1.0, 0.0], [2.0, 7.0]])
    rho = free_convolution_density(a, w, 0.5, grid)
    assert rho.shape == (2, 2)
    assert np.all(rho[grid != 7.0] > 0) and rho[1, 1] == 0.0
    # repeated atoms are merged; zero-weight atoms are ignored
    a2, w2 = np.array([0.0, -1.0, 2.0, 0.0, 5.0]), np.array([0.25, 0.2, 0.3, 0.25, 0.0])
    np.testing.assert_array_equal(free_convolution_density(a2, w2, 0.5, grid), rho)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0.0, 1.0], [1.5, -0.5], 1.0), "weights must be >= 0"),
        (([0.0, np.nan], [0.5, 0.5], 1.0), "eigenvalues must be finite"),
        (([0.0, 1.0], [0.5, np.nan], 1.0), "weights must be finite"),
        (([0.0, 1.0], [0.5, 0.6], 1.0), "must sum to 1"),
        (([0.0, 1.0], [0.5, 0.5 - 1e-5], 1.0), "must sum to 1"),
        (([0.0, 1.0], [1.0], 1.0), "same shape"),
        (([[0.0, 1.0]], [[0.5, 0.5]], 1.0), "1-D"),
        (([], [], 1.0), "must not be empty"),
        (([0.0], [1.0], 0.0), "t must be a positive"),
        (([0.0], [1.0], -1.0), "t must be a positive"),
        (([0.0], [1.0], np.inf), "t must be a positive"),
        (([0.0], [1.0], None), "t must be a positive"),
    ],
)
def test_bad_input_raises(args, match):
    for call in (
        lambda: free_convolution_density(*args, [0.0]),
        lambda: free_convolution_support(*args),
        lambda: free_convolution_outliers(*args[:2], [3.0], args[2]),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_bad_grid_or_spikes_raise():
    with pytest.raises(ValueError, match="grid must be finite"):
        free_convolution_density([0.0], [1.0], 1.0, [0.0, np.nan])
    with pytest.raises(ValueError, match="spikes must be finite"):
        free_convolution_outliers([0.0], [1.0], [np.inf], 1.0)


def test_weights_within_tolerance_are_used_as_a_probability_measure():
    w = np.array([0.5, 0.5 + 5e-7])
    rho = free_convolution_density([-1.0, 1.0], w, 0.5, np.array([0.0, 1.0]))
    ref = free_convolution_density([-1.0, 1.0], w / w.sum(), 0.5, np.array([0.0, 1.0]))
    np.testing.assert_allclose(rho, ref, rtol=4 * EPS64)


# ---- dense Monte Carlo ------------------------------------------------------------------------


def _predicted_cdf(a, w, t, m=4000):
    """CDF of mu boxplus sigma_t: cumulative trapezoid in theta on each support interval.

    Error O((pi/m)^2) ~ 1e-6 in the CDF, 1000 times below the Monte-Carlo tolerance.
    """
    pieces, base = [], 0.0
    theta = np.linspace(0.0, np.pi, m + 1)
    for left, right in free_convolution_support(a, w, t):
        half = 0.5 * (right - left)
        x = 0.5 * (left + right) - half * np.cos(theta)
        g = free_convolution_density(a, w, t, x) * half * np.sin(theta)
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(theta))])
        pieces.append((left, right, cum + base))
        base += cum[-1]

    def cdf(y):
        out = np.zeros_like(y)
        for left, right, cum in pieces:
            out = np.where(y >= right, cum[-1], out)
            ins = (y > left) & (y < right)
            th = np.arccos(np.clip((0.5 * (left + right) - y[ins]) / (0.5 * (right - left)), -1, 1))
            out[ins] = np.interp(th, theta, cum)
        return out

    return cdf


def _normal_mixture_cdf(a, w, t):
    """Classical convolution with N(0, t): same mean and variance, different law."""
    from scipy.stats import norm

    return lambda y: sum(wj * norm.cdf((y - aj) / np.sqrt(t)) for aj, wj in zip(a, w, strict=True))


def test_dense_goe_spectrum_matches_the_free_convolution():
    """diag(atoms) + GOE(t) at P = 2000: spectral CDF and the eigenvalue count per component.

    Rigidity of deformed Wigner matrices (Lee & Schnelli 2013; Erdos, Yau & Yin 2012): eigenvalues
    sit within O(log(P)^c / P) in CDF units of their classical locations, and the mean density
    differs from its limit by O(1/P); so KS(ESD, prediction) <= K log(P) / P with the K of
    FREECONV_KS_RIGIDITY. Three draws are pooled (pooling cannot increase the KS distance beyond
    the largest per-draw one). Exact separation: no eigenvalue crosses a gap of the limit, so each
    component holds exactly P w_j eigenvalues.
    """
    a, w, t, P = np.array([-1.0, 0.5, 2.0]), np.array([0.3, 0.5, 0.2]), 0.3, 2000
    counts = np.round(P * w).astype(int)
    diag = np.repeat(a, counts)
    support = np.array(free_convolution_support(a, w, t))
    assert len(support) == 3
    cuts = 0.5 * (support[1:, 0] + support[:-1, 1])
    rng = np.random.default_rng(np.random.SeedSequence(20240601))
    eigs = []
    for _ in range(3):
        M = _goe(P, t, rng)
        M[np.diag_indices(P)] += diag
        ev = scipy.linalg.eigvalsh(M, overwrite_a=True, check_finite=False)
        np.testing.assert_array_equal(np.bincount(np.searchsorted(cuts, ev), minlength=3), counts)
        eigs.append(ev)
    eigs = np.concatenate(eigs)
    tol = FREECONV_KS_RIGIDITY * np.log(P) / P
    assert kolmogorov_distance(eigs, _predicted_cdf(a, w, t)) <= tol
    # power: the same eigenvalues reject a 10% error in t and the classical convolution
    assert kolmogorov_distance(eigs, _predicted_cdf(a, w, 1.1 * t)) > tol
    assert kolmogorov_distance(eigs, _predicted_cdf(a, w, 0.9 * t)) > tol
    assert kolmogorov_distance(eigs, _normal_mixture_cdf(a, w, t)) > 5 * tol


def test_dense_outlier_location_and_overlap():
    """Spike theta = 2.5 on the bulk (delta_{-1.2} + delta_{1.2})/2 plus GOE(1) at P = 1001.

    The outlier is Gaussian with sd O(P^(-1/2)) (Capitaine, Donati-Martin & Feral 2009), its mean
    and the mean squared overlap carry an O(1/P) bias (FREECONV_OUTLIER_BIAS); 20 draws give
    standard errors ~0.01. The naive point-mass prediction theta + t/theta = 2.9, overlap 0.84, is
    more than 10 standard errors away, so the test sees the bulk's effect.
    """
    alpha, t, theta, P, draws = 1.2, 1.0, 2.5, 1001, 20
    pred = free_convolution_outliers([-alpha, alpha], [0.5, 0.5], [theta, -1.5], t)
    assert list(pred.is_outlier) == [True, False]  # F(-1.5) > 1/t: absorbed
    diag = np.concatenate([np.repeat([-alpha, alpha], (P - 1) // 2), [theta]])
    rng = np.random.default_rng(np.random.SeedSequence(5))
    top, overlap = np.empty(draws), np.empty(draws)
    for i in range(draws):
        M = _goe(P, t, rng)
        M[np.diag_indices(P)] += diag
        lam, vec = scipy.linalg.eigh(
            M, subset_by_index=[P - 1, P - 1], overwrite_a=True, check_finite=False, driver="evr"
        )
        top[i], overlap[i] = lam[0], vec[-1, 0] ** 2
    for measured, predicted, naive in (
        (top, pred.location[0], theta + t / theta),
        (overlap, pred.overlap[0], 1 - t / theta**2),
    ):
        se = measured.std(ddof=1) / np.sqrt(draws)
        tol = Z_STAT * se + FREECONV_OUTLIER_BIAS / P
        assert abs(measured.mean() - predicted) <= tol
        assert abs(measured.mean() - naive) > 2 * tol
