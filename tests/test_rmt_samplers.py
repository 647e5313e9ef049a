"""Dense samplers: entry laws, Haar frames, and the exact inequalities every draw obeys."""

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from rmt.bounds import low_rank_extremes, weyl_check
from rmt.samplers import dense_extremes, haar_frame, sample_goe, sample_low_rank, sample_spiked
from rmt.testing import (
    assert_matches_law,
    assert_rank_one_interlacing,
    assert_weyl,
    seeds,
    spike_sets,
    spiked_goe_cases,
)
from tests.tolerances import KS_PVALUE, Z_STAT, eig_atol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_goe_entry_variances(dtype):
    P, t = 400, 3.0
    W = sample_goe(P, t=t, rng=0, dtype=dtype)
    assert W.dtype == dtype
    np.testing.assert_array_equal(W, W.T)
    s2 = t / P
    off = W[np.triu_indices(P, 1)].astype(np.float64)
    diag = np.diag(W).astype(np.float64)
    # sample variance of n Gaussians: se = var * sqrt(2 / n)
    assert abs(off.var() - s2) <= Z_STAT * s2 * np.sqrt(2 / off.size)
    assert abs(diag.var() - 2 * s2) <= Z_STAT * 2 * s2 * np.sqrt(2 / diag.size)
    assert abs(off.mean()) <= Z_STAT * np.sqrt(s2 / off.size)


def test_goe_reproducible_from_seed_and_independent_of_global_state():
    np.random.seed(1)  # noqa: NPY002 -- the global state must not matter
    a = sample_goe(50, t=1.0, rng=7)
    np.random.seed(2)  # noqa: NPY002 -- the global state must not matter
    b = sample_goe(50, t=1.0, rng=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_goe(50, t=1.0, rng=8))


def test_haar_frame_is_orthonormal_and_uniform():
    P = 30
    U = haar_frame(P, 3, rng=0)
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-14)
    # A uniform unit vector has u_1^2 ~ Beta(1/2, (P - 1)/2); QR without the sign fix is not
    # uniform, and a fixed frame fails at once.
    rng = np.random.default_rng(1)
    first = np.array([haar_frame(P, 1, rng=rng)[0, 0] for _ in range(2_000)])
    assert_matches_law(first**2, scipy.stats.beta(0.5, (P - 1) / 2).cdf, alpha=KS_PVALUE)
    # signs are symmetric: mean of u_1 within Z se of 0 (se = sqrt(1/P / n))
    assert abs(first.mean()) <= Z_STAT * np.sqrt(1 / P / first.size)


@given(seed=seeds, P=st.integers(5, 60), spikes=spike_sets(max_rank=4))
def test_low_rank_has_exactly_the_prescribed_eigenvalues(seed, P, spikes):
    A, U = sample_low_rank(spikes, P, rng=seed)
    expected = np.sort(np.concatenate([spikes, np.zeros(P - len(spikes))]))
    scale = max(1.0, max(abs(s) for s in spikes))
    np.testing.assert_allclose(np.linalg.eigvalsh(A), expected, atol=eig_atol(scale, P))
    np.testing.assert_allclose(A @ U, U * np.asarray(spikes), atol=eig_atol(scale, P))


@given(case=spiked_goe_cases(dims=st.integers(5, 60)))
def test_weyl_inequalities_hold_on_every_draw(case):
    lam_m, lam_a = case.eigenvalues, np.linalg.eigvalsh(case.low_rank)
    norm = case.noise_norm
    tol = 2 * eig_atol(np.abs(lam_m).max() + norm, case.P)
    assert_weyl(lam_m, lam_a, norm, atol=tol)


RANK_ONE = st.one_of(st.floats(0.01, 10.0), st.floats(-10.0, -0.01)).map(lambda x: [x])


@given(case=spiked_goe_cases(dims=st.integers(3, 60), spikes=RANK_ONE))
def test_rank_one_interlacing(case):
    """Adding theta u u^T moves each eigenvalue by at most one slot, up for theta > 0 and down
    for theta < 0 (Weyl)."""
    theta = float(case.spikes[0])
    lo, hi = np.linalg.eigvalsh(case.noise), case.eigenvalues
    tol = 2 * eig_atol(np.abs(hi).max() + abs(theta), case.P)
    assert_rank_one_interlacing(lo, hi, sign=1 if theta > 0 else -1, atol=tol)


def test_dense_extremes_match_the_full_eigendecomposition():
    spikes, t, P = np.array([3.0, -2.0, 0.4]), 1.0, 150
    sample = dense_extremes(spikes, t, P, n_extreme=3, noise_norm=True, rng=5)
    M, U, W = sample_spiked(spikes, t, P, rng=5)
    values, vectors = np.linalg.eigh(M)
    tol = eig_atol(np.abs(values).max(), P)
    np.testing.assert_allclose(sample.top, values[::-1][:3], atol=tol)
    np.testing.assert_allclose(sample.bottom, values[:3], atol=tol)
    np.testing.assert_allclose(
        sample.top_overlaps, (vectors[:, ::-1][:, :3].T @ U) ** 2, atol=1e-10
    )
    np.testing.assert_allclose(sample.bottom_overlaps, (vectors[:, :3].T @ U) ** 2, atol=1e-10)
    assert sample.noise_norm == pytest.approx(np.abs(np.linalg.eigvalsh(W)).max(), abs=tol)
    assert np.all(sample.top_overlaps.sum(axis=1) <= 1 + 1e-12)


def test_weyl_check_reports_both_bounds():
    sample = dense_extremes([4.0, -3.0], 1.0, 200, noise_norm=True, rng=3)
    check = weyl_check(sample)
    a_top, a_bottom = low_rank_extremes([4.0, -3.0], 200, 3)
    np.testing.assert_array_equal(a_top, [4.0, 0.0, 0.0])
    np.testing.assert_array_equal(a_bottom, [-3.0, 0.0, 0.0])
    expected = np.abs(np.concatenate([sample.top - a_top, sample.bottom - a_bottom]))
    np.testing.assert_allclose(check.shifts, expected)
    assert check.exact_holds and check.exact_slack >= 0
    # eq. 7 read as printed is s^2 = t / P = 0.005, while the outlier alone moves by t / theta
    assert check.paper_bound == pytest.approx(1.0 / 200)
    assert not check.paper_holds
    assert check.paper_slack == pytest.approx(check.paper_bound - expected.max())


def test_weyl_check_needs_the_noise_norm():
    with pytest.raises(ValueError, match="noise_norm=True"):
        weyl_check(dense_extremes([1.0], 1.0, 20, rng=0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spikes": [1.0], "t": 1.0, "P": 0}, "P must be an integer"),
        ({"spikes": [1.0], "t": -1.0, "P": 10}, "t must be finite and >= 0"),
        ({"spikes": [np.nan], "t": 1.0, "P": 10}, "spikes must be finite"),
        ({"spikes": [1.0, 2.0, 3.0], "t": 1.0, "P": 2}, "exceeds the dimension"),
        ({"spikes": [1.0], "t": 1.0, "P": 10, "dtype": np.int64}, "float64 or float32"),
        ({"spikes": [1.0], "t": 1.0, "P": 10, "n_extreme": 11}, "n_extreme"),
    ],
)
def test_dense_extremes_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dense_extremes(rng=0, **kwargs)
