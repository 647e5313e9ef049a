"""rmt.spacing: the mean ratio of consecutive spacings against exact and reference values.

Exact: i.i.d. uniform points give 2 ln 2 - 1 at every n; 3 x 3 GOE matrices give the surmise
4 - 2 sqrt(3). Reference: large GOE (P = 400) gives 0.5307 (Atas et al. 2013). Each mean is
compared within Z_STAT standard errors, and the other references must lie outside that band.
"""

import numpy as np

from rmt.samplers import sample_goe
from rmt.spacing import R_GOE, R_GOE_SURMISE, R_POISSON, mean_spacing_ratio, spacing_ratios
from tests.tolerances import Z_STAT


def test_poisson_points_give_2ln2_minus_1():
    rng = np.random.default_rng(0)
    result = mean_spacing_ratio([rng.uniform(0, 1, 1000) for _ in range(20)])
    assert abs(result.mean - R_POISSON) <= Z_STAT * result.se
    assert abs(result.mean - R_GOE) > Z_STAT * result.se


def test_three_by_three_goe_gives_the_surmise_exactly():
    rng = np.random.default_rng(1)
    n = 200_000
    G = rng.standard_normal((n, 3, 3))
    ev = np.linalg.eigvalsh(G + np.swapaxes(G, 1, 2))
    s = np.diff(ev, axis=1)
    r = s.min(axis=1) / s.max(axis=1)
    se = r.std() / np.sqrt(n)
    assert abs(r.mean() - R_GOE_SURMISE) <= Z_STAT * se
    assert abs(r.mean() - R_GOE) > Z_STAT * se  # the 3 x 3 value is not the large-n one
    # the module computes the same per-matrix ratio
    assert spacing_ratios(ev[0])[0] == r[0]


def test_large_goe_gives_0_5307_in_the_bulk():
    rng = np.random.default_rng(2)
    spectra = [np.linalg.eigvalsh(sample_goe(400, t=1.0, rng=rng)) for _ in range(30)]
    result = mean_spacing_ratio(spectra, bulk_fraction=0.1)
    # Atas et al. quote 0.5307(1): their uncertainty adds in quadrature (negligible here)
    assert abs(result.mean - R_GOE) <= Z_STAT * result.se
    assert abs(result.mean - R_POISSON) > Z_STAT * result.se
    assert result.counts.tolist() == [400 - 2 * 40 - 2] * 30


def test_bulk_fraction_and_degenerate_levels():
    x = np.array([0.0, 0.0, 0.0, 1.0, 3.0, 4.0, 10.0])
    # spacings 0, 0, 1, 2, 1, 6: the pair (0, 0) is undefined and dropped
    np.testing.assert_array_equal(spacing_ratios(x), [0.0, 0.5, 0.5, 1 / 6])
    # floor(0.15 * 7) = 1 level dropped at each end: spacings 0, 1, 2, 1
    np.testing.assert_array_equal(spacing_ratios(x, bulk_fraction=0.15), [0.0, 0.5, 0.5])
    assert np.isnan(mean_spacing_ratio([x]).se)
