"""Band model (rmt.band): entry laws, solver against dense eigh, the law of the extremes against a
dense sampler (with must-fail mutants), truncation, and Tracy-Widom at P = 1e6."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

import rmt.band as band
from rmt.band import (
    band_extremes,
    band_matrix,
    band_to_dense,
    count_eigenvalues_above,
    extreme_eigenpairs,
    truncation_check,
    truncation_rows,
)
from rmt.testing import (
    assert_matches_law,
    assert_same_law,
    assert_weyl,
    band_cases,
    noise_scales,
    seeds,
)
from rmt.types import ExtremeSample
from tests.tolerances import (
    EPS64,
    KS_PVALUE,
    TW1_KURTOSIS,
    TW1_MEAN,
    TW1_SD,
    Z_STAT,
    band_residual_atol,
    eig_atol,
    overlap_atol,
)

# ---- helpers --------------------------------------------------------------------------------


def _norm_inf(B):
    """||B||_inf >= ||B||_2 and >= the Gershgorin bound the solver scales its tolerance by."""
    return float(np.abs(B).sum(axis=1).max())


def _check_against_dense(ab, n, solver, sides=("top", "bottom")):
    """Eigenvalues, residuals, orthonormality and overlaps of the band solver against dense eigh
    of the same band (one eigh for both sides)."""
    B = band_to_dense(ab)
    L, kb = B.shape[0], ab.shape[0] - 1
    spectrum, V = np.linalg.eigh(B)
    norm = _norm_inf(B)
    solver_res = band_residual_atol(norm, L, kb) + eig_atol(norm, L)
    for side in sides:
        vals, vecs = extreme_eigenpairs(ab, n, side=side, solver=solver)
        order = np.arange(L)[::-1][:n] if side == "top" else np.arange(n)
        ref, ref_vecs = spectrum[order], V[:, order]
        res = np.linalg.norm(B @ vecs - vecs * vals, axis=0)
        assert np.all(res <= solver_res), (side, res, solver_res)
        # a residual r puts an eigenvalue within r; dense eigh is within eig_atol of the truth
        np.testing.assert_allclose(vals, ref, rtol=0, atol=solver_res + eig_atol(norm, L))
        np.testing.assert_allclose(vecs.T @ vecs, np.eye(n), rtol=0, atol=eig_atol(1.0, L))
        # overlaps (first coordinates squared) where the gap makes them well defined (Davis-Kahan
        # with the residuals of both computed vectors)
        ref_res = np.linalg.norm(B @ ref_vecs - ref_vecs * ref, axis=0)
        for i in range(n):
            gap = np.min(np.abs(np.delete(spectrum, order[i]) - ref[i]), initial=np.inf)
            if gap <= 2 * (res[i] + ref_res[i]):
                continue
            tol = overlap_atol(res[i] / (gap - res[i]) + ref_res[i] / (gap - ref_res[i]))
            if tol < 1:
                np.testing.assert_allclose(
                    vecs[:kb, i] ** 2, ref_vecs[:kb, i] ** 2, rtol=0, atol=tol + 4 * EPS64
                )


# ---- the model: storage and entry laws ------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 3])
def test_band_storage_layout(k):
    spikes = np.arange(1.0, k + 1.0)
    rows = 20
    ab = band_matrix(spikes, 2.0, 50, rows=rows, rng=0)
    kb = max(k, 1)
    assert ab.shape == (kb + 1, rows) and ab.dtype == np.float64
    for d in range(1, kb + 1):  # storage outside the block is zero
        assert np.all(ab[d, rows - d :] == 0)
    assert np.all(ab[kb, : rows - kb] > 0)  # the chi entries
    B = band_to_dense(ab)
    norm = _norm_inf(B)
    w = scipy.linalg.eig_banded(ab, lower=True, eigvals_only=True)  # LAPACK's reading of ab
    np.testing.assert_allclose(w, np.linalg.eigvalsh(B), rtol=0, atol=2 * eig_atol(norm, rows))


def test_entry_laws_by_distance_large_P():
    """One full band at P = 3000, k = 3: every distance class has its stated law."""
    P, k, t = 3000, 3, 2.0
    s = math.sqrt(t / P)
    ab = band_matrix([5.0, -1.0, 0.0], t, P, rows=P, rng=11)
    normal = scipy.stats.norm
    assert_matches_law(ab[0, k:], normal(0, s * math.sqrt(2)).cdf, alpha=KS_PVALUE)
    for d in range(1, k):
        assert_matches_law(ab[d, : P - d], normal(0, s).cdf, alpha=KS_PVALUE)
    c = np.arange(P - k)
    pit = scipy.stats.chi2.cdf((ab[k, : P - k] / s) ** 2, df=P - c - k)
    assert_matches_law(pit, scipy.stats.uniform.cdf, alpha=KS_PVALUE)


def test_entry_laws_small_P_every_position_and_both_chi_ends():
    """Many draws of a 9 x 9 band, k = 3: every entry's law, chi_{P-c-k} down to chi_1; a chi
    with the wrong degrees of freedom (P - c, the bug of forgetting the spike block) is rejected
    at every position by the same test."""
    P, k, t, n = 9, 3, 1.5, 3000
    s = math.sqrt(t / P)
    spikes = np.array([2.0, -1.0, 0.0])
    rng = np.random.default_rng(5)
    draws = np.stack([band_matrix(spikes, t, P, rows=P, rng=rng) for _ in range(n)])
    npos = (P - k) + P + sum(P - d for d in range(1, k))
    alpha = KS_PVALUE / npos  # Bonferroni over all positions
    for c in range(P):
        x = draws[:, 0, c] - (spikes[c] if c < k else 0.0)
        assert_matches_law(x, scipy.stats.norm(0, s * math.sqrt(2)).cdf, alpha=alpha)
    for d in range(1, k):
        for c in range(P - d):
            assert_matches_law(draws[:, d, c], scipy.stats.norm(0, s).cdf, alpha=alpha)
    for c in range(P - k):
        x = draws[:, k, c] / s
        assert_matches_law(x, scipy.stats.chi(P - c - k).cdf, alpha=alpha)
        with pytest.raises(AssertionError, match="KS test rejects"):  # must fail
            assert_matches_law(x, scipy.stats.chi(P - c).cdf, alpha=alpha)
    # zero beyond the band: storage has k + 1 rows, the block outside is zero
    assert np.all(draws[:, k, P - k :] == 0)


def test_chi_at_the_large_end():
    """At P = 1e6 the first chi has P - k degrees of freedom: (x / s)^2 has mean P - k and
    variance 2 (P - k); the sample mean is within Z_STAT standard errors."""
    P, k, t, n = 10**6, 4, 1.0, 4000
    s = math.sqrt(t / P)
    rng = np.random.default_rng(8)
    x = np.array([band_matrix(np.zeros(k), t, P, rows=k + 1, rng=rng)[k, 0] for _ in range(n)])
    q = (x / s) ** 2
    assert abs(q.mean() - (P - k)) <= Z_STAT * math.sqrt(2 * (P - k) / n)
    assert_matches_law(q, scipy.stats.chi2(P - k).cdf, alpha=KS_PVALUE)


def test_k1_is_dumitriu_edelman_and_k0_the_same_tridiagonal():
    """k = 1 with spike 0 and k = 0 draw the same tridiagonal from the same stream."""
    a1 = band_matrix([0.0], 1.0, 40, rows=40, rng=3)
    a0 = band_matrix([], 1.0, 40, rows=40, rng=3)
    assert a1.shape == a0.shape == (2, 40)
    np.testing.assert_array_equal(a1, a0)


# ---- the solvers against dense eigh ---------------------------------------------------------


@given(
    case=band_cases(dims=st.integers(6, 260)),
    n=st.integers(1, 4),
    solver=st.sampled_from(["krylov", "auto", "lapack"]),
)
def test_solver_matches_dense_eigh(case, n, solver):
    _check_against_dense(case.band, min(n, case.P), solver)


@pytest.mark.parametrize(
    "spikes",
    [
        [3.0, -2.0, 0.5],  # outliers both sides, a subcritical spike
        [2.0, 2.0, 2.0, -2.0],  # a degenerate spike triple
        [0.0] * 8,  # pure edge, bandwidth 8
        list(np.linspace(-4.0, 4.0, 8)),  # eight spikes, six outliers
    ],
)
def test_krylov_matches_dense_at_2000_rows_without_fallback(spikes, monkeypatch):
    """L = 2000 rows of the P = 1e6 band: the fast path certifies itself (no dsbevx fallback)."""

    def no_fallback(*args, **kwargs):
        raise AssertionError("the fast path failed to certify")

    monkeypatch.setattr(band, "_top_fallback", no_fallback)
    ab = band_matrix(spikes, 1.0, 10**6, rows=2000, rng=21)
    _check_against_dense(ab, 4, "krylov")


def test_tridiagonal_solver_matches_dense():
    ab = band_matrix([1.5], 1.0, 10**6, rows=800, rng=4)
    _check_against_dense(ab, 3, "tridiagonal")


@pytest.mark.parametrize(
    ("spikes", "t"),
    [
        ([1.0, 1.0, -1.0], 1e-20),  # clusters far narrower than the certificate margin: fallback
        ([0.0, 0.0], 1e-6),
        ([-3.0, -3.0, 2.0, 0.0], 0.3),
    ],
)
def test_near_degenerate_spectra_match_dense(spikes, t):
    ab = band_matrix(spikes, t, 500, rows=260, rng=2)
    _check_against_dense(ab, 3, "krylov")


def test_zero_noise_is_exact():
    s = band_extremes([3.0, -1.0, 0.0], 0.0, 50, n_extreme=2, rng=0)
    np.testing.assert_array_equal(s.top, [3.0, 0.0])
    np.testing.assert_array_equal(s.bottom, [-1.0, 0.0])
    np.testing.assert_array_equal(s.top_overlaps[0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(s.bottom_overlaps[0], [0.0, 1.0, 0.0])


@given(seed=seeds, P=st.integers(2, 120), k=st.integers(0, 5), t=noise_scales)
def test_block_sturm_count_matches_dense(seed, P, k, t):
    k = min(k, P)
    ab = band_matrix(np.linspace(-3, 3, k), t, P, rows=P, rng=seed)
    w = np.linalg.eigvalsh(band_to_dense(ab))
    shifts = np.concatenate([(w[1:] + w[:-1]) / 2, [w[0] - 1.0, w[-1] + 1.0]])
    shifts = shifts[np.min(np.abs(shifts[:, None] - w[None, :]), axis=1) > 1e-9]
    for x in shifts[:: max(1, len(shifts) // 12)]:
        assert count_eigenvalues_above(ab, x) == int(np.sum(w > x))


# ---- band_extremes: API, reproducibility, noise norm ----------------------------------------


def test_band_extremes_returns_an_extreme_sample():
    spikes = [0.5, 5.0, -3.0]
    s = band_extremes(spikes, 2.0, 5000, n_extreme=3, rng=1)
    assert isinstance(s, ExtremeSample) and s.method == "band" and s.P == 5000 and s.t == 2.0
    assert s.top.shape == s.bottom.shape == (3,)
    assert s.top_overlaps.shape == s.bottom_overlaps.shape == (3, 3)
    assert np.all(np.diff(s.top) <= 0) and np.all(np.diff(s.bottom) >= 0)
    assert math.isnan(s.noise_norm)
    # the overlap columns follow the order the spikes were given: 5.0 is column 1, -3.0 column 2
    assert s.top_overlaps[0, 1] > 0.8 and s.bottom_overlaps[0, 2] > 0.6
    assert np.all(s.top_overlaps.sum(axis=1) <= 1 + 1e-12)
    empty = band_extremes([], 1.0, 5000, n_extreme=2, rng=1)
    assert empty.top_overlaps.shape == (2, 0)


def test_band_extremes_reproducible_and_independent_of_global_state():
    np.random.seed(1)  # noqa: NPY002 -- the point: global state must not matter
    a = band_extremes([2.0, -1.0], 1.0, 10**5, rng=7)
    np.random.seed(2)  # noqa: NPY002
    b = band_extremes([2.0, -1.0], 1.0, 10**5, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.top, b.top)
    np.testing.assert_array_equal(a.bottom_overlaps, b.bottom_overlaps)
    assert not np.array_equal(a.top, band_extremes([2.0, -1.0], 1.0, 10**5, rng=8).top)


@pytest.mark.parametrize("spikes", [[2.5, -0.4], [0.0]])
def test_noise_norm_is_the_same_draws_norm_and_weyl_holds(spikes):
    """||W|| comes from the same entries -- the truncated band without its spike diagonal -- and
    Weyl's inequality holds draw by draw between the truncated M, A and W."""
    P = 2000
    L = truncation_rows(P, len(spikes), n_extreme=2)
    s = band_extremes(spikes, 1.0, P, n_extreme=2, noise_norm=True, rng=9)
    ab = band_matrix(spikes, 1.0, P, rows=L, rng=9)  # the same draw
    ab[0, : len(spikes)] -= spikes
    W = band_to_dense(ab)
    w = np.linalg.eigvalsh(W)
    atol = 2 * eig_atol(_norm_inf(W) + max(map(abs, spikes)), L)
    assert abs(s.noise_norm - max(abs(w[0]), abs(w[-1]))) <= atol
    low = np.sort(np.concatenate([spikes, np.zeros(L - len(spikes))]))
    assert_weyl(s.top, low[::-1][:2], s.noise_norm, atol=atol)
    assert_weyl(s.bottom, low[:2], s.noise_norm, atol=atol)


BAD_INPUTS = [
    (dict(P=0), "P must be an integer >= 1"),
    (dict(P=2.5), "P must be an integer >= 1"),
    (dict(t=-1.0), "noise scale t must be a finite number >= 0"),
    (dict(t=float("nan")), "noise scale t must be a finite number >= 0"),
    (dict(spikes=[1.0, float("inf")]), "spikes must be finite"),
    (
        dict(spikes=[1.0, 2.0, 3.0], P=2),
        "rank k = 3 (number of spikes) exceeds the dimension P = 2",
    ),
    (dict(n_extreme=0), "n_extreme must be an integer >= 1"),
    (dict(P=5, n_extreme=6), "n_extreme = 6 exceeds the 5 rows of the truncated band"),
    (dict(c_trunc=0.0), "c_trunc must be a finite number > 0"),
    (dict(solver="lobpcg"), "unknown solver 'lobpcg'"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_input_raises_one_clear_message(change, message):
    args = dict(spikes=[1.0], t=1.0, P=100, n_extreme=3, rng=0) | change
    with pytest.raises(ValueError, match=_escape(message)):
        band_extremes(args.pop("spikes"), args.pop("t"), args.pop("P"), **args)
    if "solver" not in change:
        args = dict(spikes=[1.0], t=1.0, P=100, n_extreme=3, rng=0) | change
        with pytest.raises(ValueError, match=_escape(message)):
            truncation_check(args.pop("spikes"), args.pop("t"), args.pop("P"), **args)


def test_bad_band_matrix_and_solver_arguments():
    with pytest.raises(ValueError, match="rows must be an integer between 1 and P = 10"):
        band_matrix([1.0], 1.0, 10, rows=11, rng=0)
    with pytest.raises(ValueError, match="rank k must be an integer >= 0"):
        truncation_rows(10, -1)
    ab = band_matrix([1.0, 2.0], 1.0, 10, rows=10, rng=0)
    with pytest.raises(ValueError, match="solver 'tridiagonal' needs bandwidth 1"):
        extreme_eigenpairs(ab, 1, solver="tridiagonal")
    with pytest.raises(ValueError, match="n = 11 eigenpairs requested from a 10 x 10 matrix"):
        extreme_eigenpairs(ab, 11)


def _escape(message):
    import re

    return re.escape(message)


# ---- the law of the extremes: band against a dense sampler ----------------------------------
# Statistics compared by two-sample KS, Bonferroni over the family (false alarm <= KS_PVALUE).
# P = 200 keeps the dense side cheap and the model errors below visible: a chi with P - c degrees
# of freedom moves the edge by k P^(-1/3) Tracy-Widom units, a diagonal variance s^2 instead of
# 2 s^2 changes the edge law (effective beta 4/3) and the outlier spread; at 1000 draws per side
# both are rejected with p <= 1e-5 on every seed tried (power study in the report).

LAW_P = 200
LAW_CONFIGS = {
    "k1": ([-1.8], 600),  # a negative outlier below, the edge on top
    "k3": ([3.0, -2.0, 0.5], 1000),  # outliers on both sides and a subcritical spike
}


def _dense_sample(spikes, t, P, rng):
    """Private dense sampler: GOE (G + G^T) / sqrt 2 scaled to off-diagonal variance t / P, plus
    U diag(spikes) U^T with U Haar (QR of a Gaussian, signs of diag R moved into Q). The two
    largest and two smallest eigenpairs by LAPACK syevx."""
    G = rng.standard_normal((P, P))
    W = (G + G.T) * math.sqrt(t / P / 2.0)
    Q, R = np.linalg.qr(rng.standard_normal((P, len(spikes))))
    U = Q * np.sign(np.diag(R))
    M = W + (U * np.asarray(spikes)) @ U.T
    lo, V_lo = scipy.linalg.eigh(M, subset_by_index=[0, 1], driver="evx")
    hi, V_hi = scipy.linalg.eigh(M, subset_by_index=[P - 2, P - 1], driver="evx")
    return hi[::-1], lo, ((V_hi.T @ U) ** 2)[::-1], (V_lo.T @ U) ** 2


def _statistics(top, bottom, top_ov, bottom_ov, spikes):
    j_hi, j_lo = int(np.argmax(spikes)), int(np.argmin(spikes))
    return {
        "top[0]": top[:, 0],
        "top[1]": top[:, 1],
        "bottom[0]": bottom[:, 0],
        "bottom[1]": bottom[:, 1],
        "overlap(top[0], max spike)": top_ov[:, 0, j_hi],
        "overlap(bottom[0], min spike)": bottom_ov[:, 0, j_lo],
    }


def _dense_statistics(spikes, n, seed, P=LAW_P):
    rows = [_dense_sample(spikes, 1.0, P, np.random.default_rng(c)) for c in _streams(seed, n)]
    top, bottom, top_ov, bottom_ov = (np.stack(x) for x in zip(*rows, strict=True))
    return _statistics(top, bottom, top_ov, bottom_ov, spikes)


def _band_statistics(spikes, n, seed, P=LAW_P):
    draws = [
        band_extremes(spikes, 1.0, P, n_extreme=2, rng=np.random.default_rng(c))
        for c in _streams(seed, n)
    ]
    return _statistics(
        np.stack([d.top for d in draws]),
        np.stack([d.bottom for d in draws]),
        np.stack([d.top_overlaps for d in draws]),
        np.stack([d.bottom_overlaps for d in draws]),
        spikes,
    )


def _streams(seed, n):
    return np.random.SeedSequence(seed).spawn(n)


@pytest.fixture(scope="module")
def dense_law():
    return {name: _dense_statistics(sp, n, seed=100) for name, (sp, n) in LAW_CONFIGS.items()}


@pytest.mark.parametrize("config", list(LAW_CONFIGS))
def test_band_law_matches_dense_law(config, dense_law):
    spikes, n = LAW_CONFIGS[config]
    assert truncation_rows(LAW_P, len(spikes), n_extreme=2) < LAW_P  # the truncated model
    assert_same_law(dense_law[config], _band_statistics(spikes, n, seed=200), alpha=KS_PVALUE)


def _wrong_chi_df(k, t, P, rows, rng):
    """The band with chi_{P-c} at distance k instead of chi_{P-c-k}."""
    ab = _correct_noise_band(k, t, P, rows, rng)
    kb = max(k, 1)
    c = np.arange(rows - kb)
    ab[kb, : rows - kb] = math.sqrt(t / P) * np.sqrt(rng.chisquare((P - c).astype(float)))
    return ab


def _wrong_diagonal_variance(k, t, P, rows, rng):
    """The band with diagonal variance s^2 instead of 2 s^2."""
    ab = _correct_noise_band(k, t, P, rows, rng)
    ab[0] /= math.sqrt(2.0)
    return ab


_correct_noise_band = band._noise_band


@pytest.mark.parametrize("mutant", [_wrong_chi_df, _wrong_diagonal_variance])
def test_law_test_rejects_a_wrong_band_model(mutant, dense_law, monkeypatch):
    """Same statistics, same sample sizes, same threshold: a wrong model is rejected."""
    monkeypatch.setattr(band, "_noise_band", mutant)
    spikes, n = LAW_CONFIGS["k3"]
    with pytest.raises(AssertionError, match="two-sample KS test rejects"):
        assert_same_law(dense_law["k3"], _band_statistics(spikes, n, seed=200), alpha=KS_PVALUE)


# ---- truncation -----------------------------------------------------------------------------


def _truncation_allowance(check, seed):
    """Eigenvalue and overlap tolerances of a TruncationCheck drawn with ``rng=seed``.

    The truncation error itself is ~ exp(-(4/3) 10^1.5) edge units (rmt.band docstring), so what
    remains is each solve's error: its residual allowance (krylov) or LAPACK's backward error
    (tridiagonal), on the short and on the reference block. Overlaps: Davis-Kahan with the gaps
    of the reference block's n + 1 extremes on each side.
    """
    rows = check.reference_rows
    ab = band_matrix(check.spikes, check.t, check.P, rows=rows, rng=seed)  # the same draw
    kb = ab.shape[0] - 1
    # ||B||_inf without forming B: max |diagonal| + twice the largest entry of each band row
    norm = float(np.max(np.abs(ab[0])) + 2 * np.sum(np.max(np.abs(ab[1:]), axis=1)))
    per_solve = band_residual_atol(norm, rows, kb) + eig_atol(norm, rows)
    gaps = []
    for side in ("top", "bottom"):
        vals, _ = extreme_eigenpairs(ab, check.n_extreme + 1, side=side)
        gaps.append(np.min(np.abs(np.diff(vals))))
    overlap_tol = overlap_atol(2 * per_solve / (min(gaps) - per_solve))
    return 2 * per_solve, overlap_tol


@pytest.mark.parametrize(
    "spikes",
    [[0.0], [1.02], [3.0, -2.0, 0.5, 0.0], [1.05, -1.03, 0.0, 0.0]],
    ids=["k1-edge", "k1-near-threshold", "k4-outliers", "k4-near-threshold"],
)
def test_truncation_error_is_rounding_at_P_1e6(spikes):
    P = 10**6
    for seed in (1, 2):
        check = truncation_check(spikes, 1.0, P, rng=seed)
        assert check.rows == truncation_rows(P, len(spikes)) < check.reference_rows
        eig_tol, overlap_tol = _truncation_allowance(check, seed)
        assert check.eigenvalue_diff <= eig_tol, (check.eigenvalue_diff, eig_tol)
        assert check.eigenvalue_diff_scaled <= eig_tol / check.edge_scale
        assert check.overlap_diff <= overlap_tol, (check.overlap_diff, overlap_tol)


def test_truncation_check_detects_a_short_block():
    """Must fail: a quarter of the default constant leaves an error far above the allowance."""
    check = truncation_check([0.0], 1.0, 10**6, c_trunc=2.5, rng=1)
    eig_tol, _ = _truncation_allowance(check, 1)
    assert check.eigenvalue_diff > 1e3 * eig_tol


# ---- Tracy-Widom at P = 1e6 -----------------------------------------------------------------


def test_top_eigenvalue_is_tracy_widom_at_P_1e6():
    """(lambda_max - 2 sqrt t) / (sqrt t P^(-2/3)) has the TW_1 mean and sd within Z_STAT se."""
    P, t, n = 10**6, 3.0, 2000
    x = np.array(
        [
            band_extremes([], t, P, n_extreme=1, rng=np.random.default_rng(c)).top[0]
            for c in _streams(77, n)
        ]
    )
    z = (x - 2 * math.sqrt(t)) / (math.sqrt(t) * P ** (-2 / 3))
    assert abs(z.mean() - TW1_MEAN) <= Z_STAT * TW1_SD / math.sqrt(n)
    se_sd = TW1_SD * math.sqrt((TW1_KURTOSIS - 1) / (4 * n))
    assert abs(z.std(ddof=1) - TW1_SD) <= Z_STAT * se_sd


# ---- scale --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 8])
def test_runs_at_the_papers_P_with_memory_independent_of_P(k):
    """P = 15,291,300 (VGG16, paper section 4): a draw holds O(k L) numbers, L ~ k P^(1/3)."""
    P = 15_291_300
    spikes = np.linspace(3.0, -3.0, k) if k > 1 else np.array([3.0])
    s = band_extremes(spikes, 1.0, P, rng=1)
    L = truncation_rows(P, k)
    assert L <= 80 * k * P ** (1 / 3)  # ~ k P^(1/3), not P
    # the top outlier of spike 3 sits at 3 + 1/3 with sd sqrt(2/P (1 - 1/9)) (Capitaine,
    # Donati-Martin & Feral 2009); its squared overlap at 1 - 1/9 with an O(1/sqrt P) sd whose
    # constant is O(1): 10 / sqrt(P) = 2.6e-3 allows a constant of 2.5 at Z_STAT = 4
    assert abs(s.top[0] - (3.0 + 1.0 / 3.0)) <= Z_STAT * math.sqrt(2 / P * (1 - 1 / 9))
    assert abs(s.top_overlaps[0, 0] - (1 - 1 / 9)) <= 10 / math.sqrt(P)


@pytest.mark.slow
def test_band_law_matches_dense_law_at_P_600():
    """The same KS comparison at P = 600, where the band is truncated to 254 rows and solved by
    the krylov path."""
    P, spikes, n = 600, [1.5, -0.5, 0.0], 400
    assert truncation_rows(P, len(spikes), n_extreme=2) == 254 > band.DIRECT_ROWS
    dense = _dense_statistics(spikes, n, seed=300, P=P)
    assert_same_law(dense, _band_statistics(spikes, n, seed=400, P=P), alpha=KS_PVALUE)
