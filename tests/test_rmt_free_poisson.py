"""rmt.free_poisson (M3) against Monte Carlo of its own assumptions and exact cumulant identities.

Monte Carlo: the sum of B pieces (U_i diag(kappa_i / B) U_i^T, U_i Haar P x C, independent), the
batch made of each of N sample types B / N times, so that the batch's own R-transform is the
population mean the model uses (no mixture over batch compositions), minus its mean. The model's
CDF (the eta-smoothed density integrated on a grid) is compared by the Kolmogorov distance with
the rigidity threshold FREECONV_KS_RIGIDITY log(P) / P, which a wrong B or a wrong rank C exceeds.
Cumulants: moments of the computed measure by a contour integral of G (trapezoid rule on a circle,
geometric convergence), against k_1 and k_2 added (free cumulants add).
"""

import numpy as np
import pytest

from rmt.free_poisson import fcp_batch_spectrum, fcp_cumulants, fcp_law, fcp_r_transform
from rmt.samplers import haar_frame
from rmt.subordination import cauchy_transform, solve_fixed_point
from rmt.testing import kolmogorov_distance
from tests.tolerances import FCP_CONTOUR_RTOL, FCP_EDGE_TW_UNITS, FREECONV_KS_RIGIDITY, Z_STAT

P, B, C, N = 300, 110, 4, 5  # B C / P = 1.47: no atom at the bottom


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(0)
    kappa = rng.uniform(0.5, 2, (N, C)) * rng.lognormal(0, 0.5, (N, 1)) * B
    draws = []
    for _ in range(6):
        S = np.zeros((P, P))
        for i in range(B):
            U = haar_frame(P, C, rng=rng)
            S += (U * kappa[i % N] / B) @ U.T
        draws.append(np.linalg.eigvalsh(S) - kappa.sum() / (N * P))
    return kappa, np.array(draws)


def _cdf(model):
    x, d = model.grid, model.density
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(x))])
    return lambda y: np.interp(y, x, cum / cum[-1])


GRID = np.linspace(-3.0, 9.0, 2401)


def test_law_matches_monte_carlo_and_wrong_b_or_rank_fail(population):
    kappa, ev = population
    threshold = FREECONV_KS_RIGIDITY * np.log(P) / P

    def distance(k, b):
        return kolmogorov_distance(ev.ravel(), _cdf(fcp_law(k, b, P, GRID, 2e-3, centred=True)))

    assert distance(kappa, B) <= threshold
    for b in (B - 20, B + 20):  # the same kappa, a wrong batch size
        assert distance(kappa * b / B, b) > threshold
    assert distance(np.repeat(kappa, 2, axis=1) / 2, B) > threshold  # rank 2C, same trace


def test_top_eigenvalue_at_the_edge_within_tracy_widom_scale(population):
    kappa, ev = population
    model = fcp_law(kappa, B, P, GRID, 2e-3, centred=True)
    # square-root edge rho ~ s sqrt(edge - x): Tracy-Widom scale (pi s P)^(-2/3)
    h = 1e-3 * np.sqrt(model.cumulants[1])
    s = fcp_law(kappa, B, P, [model.edge - h], 1e-7 * h, centred=True).density[0] / np.sqrt(h)
    sigma = (np.pi * s * P) ** (-2 / 3)
    top = ev[:, -1]
    allowance = FCP_EDGE_TW_UNITS * sigma + Z_STAT * top.std(ddof=1) / np.sqrt(top.size)
    assert abs(top.mean() - model.edge) <= allowance


def _contour_moments(a1, w1, r, orders, radius, M=256):
    """m_k = (1/2 pi i) oint z^k G(z) dz on |z| = radius (upper half solved, lower by symmetry)."""
    phi = (np.arange(M // 2) + 0.5) * 2 * np.pi / M
    z = radius * np.exp(1j * phi)

    def T(w, idx):
        G1, dG1 = cauchy_transform(a1, w1, w)
        R, dR = r(G1)
        return z[idx] - R, -dR * dG1

    omega, ok = solve_fixed_point(T, z, z.copy())
    assert ok.all()
    G = cauchy_transform(a1, w1, omega)[0]
    return np.array([np.mean((z**k * G * z).real) for k in orders])


def test_free_cumulants_add(population):
    kappa, _ = population
    rng = np.random.default_rng(5)
    nodes, weights = rng.normal(1.0, 2.0, 12), rng.dirichlet(np.ones(12))
    for centred in (True, False):
        r = fcp_r_transform(kappa, B, P, centred=centred)
        m0, m1, m2 = _contour_moments(nodes, weights, r, [0, 1, 2], radius=40.0)
        k1, k2 = fcp_cumulants(kappa, B, P, [1, 2], centred=centred)
        mean, var = weights @ nodes, weights @ nodes**2 - (weights @ nodes) ** 2
        np.testing.assert_allclose(
            [m0, m1, m2 - m1**2], [1, mean + k1, var + k2], rtol=FCP_CONTOUR_RTOL
        )
    assert k1 == pytest.approx(kappa.sum() / (N * P), rel=1e-14)


def test_spike_outlier_formula_and_wrong_input():
    kappa = np.array([[2.0, 1.0], [3.0, 0.0]])
    model = fcp_batch_spectrum([0.0], [1.0], kappa, 4, 10, [0.0], 0.1, spikes=[5.0, 0.01])
    R = fcp_r_transform(kappa, 4, 10)(np.array([1 / 5.0]))[0][0]
    assert model.outliers[0] == pytest.approx(5.0 + R, rel=1e-14)
    assert np.isnan(model.outliers[1])
    with pytest.raises(ValueError, match="B must be an integer"):
        fcp_law(kappa, 0, 10, [0.0], 0.1)
