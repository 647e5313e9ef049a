"""The predicted batch spectrum (full-data spectrum boxplus semicircle(t)) against dense
Monte-Carlo batch Hessians of a synthetic "network" whose per-sample Hessians are known.

Per-sample Hessians ``H_i = A + sigma G_i`` (i = 1..N, G_i independent GOE with unit off-diagonal
variance) with ``A`` a two-atom bulk (-1.5, +1.5) plus one spike at 5. Everything the network run
uses is computed exactly from the dense ``H_i``: ``H_emp`` (its eigenvalues are the "full-data
spectrum"), sigma^2 by paper eq. 9 (1/N convention), and ``t = P f(N, B) sigma^2`` with the exact
finite-population factor. Two fixed batches of B drawn without replacement give two measured batch
spectra; their mutual Wasserstein-1 distance is the Monte-Carlo reference scale. The prediction
must be within ``Z_STAT`` reference scales of each measured spectrum, and the same prediction
with t halved or multiplied by 1.5 must not be.
"""

import numpy as np
import pytest

from rmt.freeconv import (
    free_convolution_density,
    free_convolution_outliers,
    free_convolution_support,
)
from rmt.spectra import wasserstein1_to_density
from rmt.theory import exact_factor
from tests.tolerances import Z_STAT

P, N, B = 400, 1_000, 50
SPIKE = 5.0
CHUNK = 50


@pytest.fixture(scope="module")
def network():
    rng = np.random.default_rng(20261128)
    f = exact_factor(N, B)
    sigma = np.sqrt(1.0 / (P * f))  # t about 1
    A = np.diag(np.concatenate([np.full(P // 2, -1.5), np.full(P // 2 - 1, 1.5), [SPIKE]]))
    batches = [rng.permutation(N)[:B] for _ in range(2)]
    total, squares = np.zeros((P, P)), 0.0
    batch_sums = [np.zeros((P, P)) for _ in batches]
    for start in range(0, N, CHUNK):
        X = rng.standard_normal((CHUNK, P, P))
        H = A + sigma * (X + X.transpose(0, 2, 1)) / np.sqrt(2.0)
        total += H.sum(axis=0)
        squares += float(np.einsum("ijk,ijk->", H, H))
        for acc, idx in zip(batch_sums, batches, strict=True):
            acc += H[idx[(idx >= start) & (idx < start + CHUNK)] - start].sum(axis=0)
    H_emp = total / N
    sigma2 = (squares / N - float(np.sum(H_emp**2))) / P**2  # paper eq. 9, 1/N convention
    return {
        "full": np.linalg.eigvalsh(H_emp),
        "batches": [np.linalg.eigvalsh(acc / B) for acc in batch_sums],
        "t": P * f * sigma2,
        "sigma2": sigma2,
        "sigma2_true": sigma**2,
    }


def _bulk_prediction(full, t):
    bulk = full[:-1]  # the top eigenvalue is the spike's
    weights = np.full(bulk.size, 1.0 / bulk.size)
    support = free_convolution_support(bulk, weights, t)
    grid = np.linspace(support[0][0] - 0.5, support[-1][1] + 0.5, 4001)
    return grid, free_convolution_density(bulk, weights, t, grid)


def test_sigma2_from_the_per_sample_hessians_is_the_entry_variance(network):
    # GOE per-sample noise: off-diagonal variance sigma^2, diagonal 2 sigma^2, so the mean over
    # P^2 entries is sigma^2 (1 + 1/P); centring at the sample mean with the 1/N convention
    # takes (N - 1)/N of it. Relative standard error about sqrt(2 / (N P^2)), doubled for the
    # diagonal and the symmetric pairs.
    expected = network["sigma2_true"] * (1 + 1 / P) * (N - 1) / N
    se = expected * np.sqrt(2.0 / (N * P**2)) * np.sqrt(2.0)
    assert abs(network["sigma2"] - expected) <= Z_STAT * se


def test_batch_bulk_density_is_the_free_convolution_of_the_full_spectrum(network):
    grid, density = _bulk_prediction(network["full"], network["t"])
    first, second = (b[:-1] for b in network["batches"])
    reference = float(np.mean(np.abs(first - second)))  # W1 between two batch spectra
    for measured in (first, second):
        assert wasserstein1_to_density(measured, grid, density) <= Z_STAT * reference
    for wrong in (0.5, 1.5):  # a wrong noise scale is detected
        grid_w, density_w = _bulk_prediction(network["full"], wrong * network["t"])
        for measured in (first, second):
            assert wasserstein1_to_density(measured, grid_w, density_w) > Z_STAT * reference


def test_batch_outlier_is_theta_plus_t_G(network):
    full, t = network["full"], network["t"]
    bulk = full[:-1]
    outliers = free_convolution_outliers(bulk, np.full(bulk.size, 1 / bulk.size), [full[-1]], t)
    assert outliers.is_outlier.all()
    # Gaussian fluctuation of an outlier: sd <= sqrt(2 t / P) (overlap <= 1; rmt.theory.outlier_sd)
    sd = np.sqrt(2.0 * t / P)
    for spectrum in network["batches"]:
        assert abs(spectrum[-1] - outliers.location[0]) <= Z_STAT * sd
