"""rmt.subordination (M4): free convolution of two discrete measures, edges and outliers.

References: the semicircle (Gauss-Chebyshev rule of the second kind, exact Gauss rule of the
semicircle) boxplus another is the semicircle of the summed variance (closed-form G); the
generalised BBP root with GOE noise is theta + t / theta above sqrt(t) and the edge 2 sqrt(t)
below (rmt.theory); outliers on a bulk against rmt.freeconv (Biane's independent method); Monte
Carlo of A + O B O^T with O Haar.
"""

import numpy as np
import pytest

from rmt import free_convolution_outliers, haar_frame, theory
from rmt.subordination import (
    density_edge,
    discrete_r_transform,
    free_sum_cauchy,
    free_sum_spectrum,
    generalised_bbp_outlier,
    resolution_threshold,
    subordination_edge,
    subordination_outliers,
)
from rmt.testing import kolmogorov_distance
from tests.tolerances import (
    FCP_EDGE_TW_UNITS,
    FREECONV_KS_RIGIDITY,
    SUBORDINATION_GAUSS_ATOL,
    Z_STAT,
)


def gauss_semicircle(n, t):
    """n-point Gauss rule of the semicircle of variance t: 2 sqrt(t) cos(j pi / (n + 1)),
    weights 2 sin^2(j pi / (n + 1)) / (n + 1) (Chebyshev polynomials of the second kind)."""
    th = np.arange(1, n + 1) * np.pi / (n + 1)
    return 2 * np.sqrt(t) * np.cos(th), 2 * np.sin(th) ** 2 / (n + 1)


def semicircle_cauchy(z, t):
    """G of the semicircle of variance t (branch G ~ 1/z): (z - sqrt(z - r) sqrt(z + r)) / 2t."""
    r = 2 * np.sqrt(t)
    return (z - np.sqrt(z - r) * np.sqrt(z + r)) / (2 * t)


def test_two_semicircles_give_a_semicircle():
    a1, w1 = gauss_semicircle(400, 1.0)
    a2, w2 = gauss_semicircle(400, 0.5)
    x = np.linspace(-3, 3, 301)
    G = free_sum_cauchy(a1, w1, a2, w2, x, 0.05)
    assert np.abs(G - semicircle_cauchy(x + 0.05j, 1.5)).max() <= SUBORDINATION_GAUSS_ATOL
    edge, g_star = subordination_edge(a1, w1, discrete_r_transform(a2, w2))
    assert edge == pytest.approx(theory.semicircle_edge(1.5), abs=SUBORDINATION_GAUSS_ATOL)
    assert g_star == pytest.approx(1 / np.sqrt(1.5), abs=SUBORDINATION_GAUSS_ATOL)
    wrong, _ = subordination_edge(a1, w1, discrete_r_transform(*gauss_semicircle(400, 0.4)))
    assert abs(wrong - theory.semicircle_edge(1.5)) > 100 * SUBORDINATION_GAUSS_ATOL


def test_generalised_bbp_with_goe_noise():
    t, n = 0.7, 2000
    atoms, weights = gauss_semicircle(n, t)
    above = np.array([1.5, 3.0]) * np.sqrt(t)
    np.testing.assert_allclose(
        generalised_bbp_outlier(above, atoms, weights),
        theory.bbp_outlier(above, t),
        atol=SUBORDINATION_GAUSS_ATOL,
    )
    # below the threshold the root sits between the top Gauss node and the edge 2 sqrt(t)
    below = generalised_bbp_outlier(np.array([0.5, 0.9]) * np.sqrt(t), atoms, weights)
    assert np.all((below > atoms.max()) & (below <= theory.semicircle_edge(t)))


def test_outliers_on_a_bulk_agree_with_biane():
    rng = np.random.default_rng(3)
    bulk, bulk_w = rng.uniform(-1, 1, 8), rng.dirichlet(np.ones(8))
    t = 0.3
    spikes = np.array([1.2, 2.0, 4.0])
    atoms, weights = gauss_semicircle(2000, t)
    r2 = discrete_r_transform(atoms, weights)
    _, g_star = subordination_edge(bulk, bulk_w, r2)
    ours = subordination_outliers(bulk, bulk_w, r2, g_star, spikes)
    ref = free_convolution_outliers(bulk, bulk_w, spikes, t)
    np.testing.assert_array_equal(np.isnan(ours), ~ref.is_outlier)
    keep = ref.is_outlier
    np.testing.assert_allclose(ours[keep], ref.location[keep], atol=SUBORDINATION_GAUSS_ATOL)


def test_monte_carlo_of_a_plus_rotated_b():
    rng = np.random.default_rng(4)
    P = 300
    a = np.sort(np.r_[rng.uniform(0, 1, P // 2), rng.uniform(2, 3, P - P // 2)])
    b = np.sort(rng.normal(0, 0.7, P))
    draws = []
    for _ in range(4):
        rot = haar_frame(P, P, rng=rng)
        draws.append(np.linalg.eigvalsh(np.diag(a) + (rot * b) @ rot.T))
    ev = np.array(draws)
    w = np.full(P, 1.0 / P)
    grid = np.linspace(-4, 7, 2201)
    model = free_sum_spectrum(a, w, b, w, grid, 2e-3)
    cum = np.concatenate([[0], np.cumsum(0.5 * (model.density[1:] + model.density[:-1]) * 5e-3)])
    D = kolmogorov_distance(ev.ravel(), lambda y: np.interp(y, grid, cum / cum[-1]))
    assert D <= FREECONV_KS_RIGIDITY * np.log(P) / P
    wrong = free_sum_spectrum(a, w, 1.3 * b, w, grid, 2e-3)
    cum = np.concatenate([[0], np.cumsum(0.5 * (wrong.density[1:] + wrong.density[:-1]) * 5e-3)])
    D = kolmogorov_distance(ev.ravel(), lambda y: np.interp(y, grid, cum / cum[-1]))
    assert D > FREECONV_KS_RIGIDITY * np.log(P) / P
    # top eigenvalue: Tracy-Widom scale from the model's square-root edge, as for M3
    h = 1e-3
    s = free_sum_spectrum(a, w, b, w, [model.edge - h], 1e-7).density[0] / np.sqrt(h)
    sigma = (np.pi * s * P) ** (-2 / 3)
    top = ev[:, -1]
    allowance = FCP_EDGE_TW_UNITS * sigma + Z_STAT * top.std(ddof=1) / np.sqrt(top.size)
    assert abs(top.mean() - model.edge) <= allowance


def test_density_edge_at_resolution():
    grid = np.linspace(0, 4, 401)
    density = np.clip(1 - grid / 2, 0, None)
    assert density_edge(grid, density, 0.5) == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(density_edge(grid, density, 2.0))
    assert resolution_threshold(0.01, k=10) == pytest.approx(1 / (np.pi * 100 * 0.01))
