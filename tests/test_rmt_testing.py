"""rmt.testing: the strategies build what they say from their seeds, and every assertion passes
on correct input and fails on wrong input (a wrong law at the stated alpha, a violated Weyl bound,
broken interlacing)."""

import re
import textwrap

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import rmt.testing
from rmt.band import band_matrix
from rmt.samplers import sample_goe, sample_spiked
from rmt.testing import (
    BandCase,
    SpikedGOECase,
    assert_matches_law,
    assert_rank_one_interlacing,
    assert_same_law,
    assert_weyl,
    band_cases,
    kolmogorov_distance,
    populations,
    spike_sets,
    spiked_goe_cases,
)
from tests.tolerances import EPS64, Z_STAT, eig_atol

# ---- strategies ------------------------------------------------------------------------------


@settings(max_examples=10)
@given(case=spiked_goe_cases(dims=st.integers(3, 30)))
def test_spiked_goe_case_is_the_samplers_draw_of_its_seed(case):
    assert isinstance(case, SpikedGOECase)
    M, U, W = sample_spiked(case.spikes, case.t, case.P, rng=case.seed)
    np.testing.assert_array_equal(case.matrix, M)
    np.testing.assert_array_equal(case.frame, U)
    np.testing.assert_array_equal(case.noise, W)
    np.testing.assert_array_equal(case.low_rank + case.noise, case.matrix)  # the exact split
    assert 1 <= case.spikes.size <= min(4, case.P)
    assert case.noise_norm == np.abs(np.linalg.eigvalsh(W)).max()


@settings(max_examples=10)
@given(case=band_cases(dims=st.integers(6, 40), rows=lambda P: st.integers(1, P)))
def test_band_case_is_the_band_models_draw_of_its_seed(case):
    assert isinstance(case, BandCase)
    ab = band_matrix(case.spikes, case.t, case.P, rows=case.rows, rng=case.seed)
    np.testing.assert_array_equal(case.band, ab)
    assert case.dense.shape == (case.rows, case.rows)
    assert 1 <= case.rows <= case.P


@given(pop=populations, spikes=spike_sets(max_rank=3, bound=2.0))
def test_parameter_strategies_stay_in_range(pop, spikes):
    N, B = pop
    assert 1 <= B <= N
    assert 1 <= len(spikes) <= 3 and all(abs(s) <= 2.0 for s in spikes)


# ---- Weyl ------------------------------------------------------------------------------------


def test_weyl_passes_within_the_bound_and_names_the_violated_index():
    base = np.array([0.0, 1.0, 2.0])
    assert_weyl([0.1, 1.2, 1.9], base, 0.2)
    with pytest.raises(AssertionError, match=r"index 1 \(1 of 3 indices\).*by 0\.3"):
        assert_weyl([0.1, 1.5, 2.0], base, 0.2)
    assert_weyl([0.1, 1.5, 2.0], base, 0.2, atol=0.31)
    assert_weyl([2.1, 1.1], [2.0, 1.0], 0.1 + 2 * EPS64)  # descending pairs (top eigenvalues)
    with pytest.raises(ValueError, match="must both be sorted ascending, or both descending"):
        assert_weyl([0.0, 1.0], [1.0, 0.0], 5.0)


def test_weyl_holds_on_a_draw_and_fails_with_half_the_norm():
    """A = 0 (a zero spike), so lambda_max(M) - lambda_max(A) = ||W||_2 when the top eigenvalue
    of W is its largest in modulus: Weyl is tight there and half the norm must be rejected."""
    P, t = 60, 1.0
    W = sample_goe(P, t=t, rng=4)
    w = np.linalg.eigvalsh(W)
    norm = float(np.abs(w).max())
    atol = 2 * eig_atol(norm, P)
    assert_weyl(w, np.zeros(P), norm, atol=atol)
    with pytest.raises(AssertionError, match="Weyl's inequality violated at index"):
        assert_weyl(w, np.zeros(P), norm / 2, atol=atol)


# ---- rank-one interlacing --------------------------------------------------------------------


def test_interlacing_passes_on_interlaced_values_and_names_the_violation():
    base = np.array([0.0, 1.0, 2.0])
    assert_rank_one_interlacing(base, [0.5, 1.5, 3.0])
    with pytest.raises(AssertionError, match=r"index 1: perturbed\[1\] = 2\.5 > base\[2\] = 2\.0"):
        assert_rank_one_interlacing(base, [0.5, 2.5, 3.0])
    with pytest.raises(AssertionError, match=r"index 0: base\[0\] = 0\.0 > perturbed\[0\]"):
        assert_rank_one_interlacing(base, [-0.1, 1.5, 3.0])
    assert_rank_one_interlacing(base, [-1.0, 0.5, 1.5], sign=-1)
    with pytest.raises(AssertionError, match=r"index 2: perturbed\[2\] = 2\.5 > base\[2\]"):
        assert_rank_one_interlacing(base, [-1.0, 0.5, 2.5], sign=-1)
    with pytest.raises(AssertionError, match=r"index 1: base\[0\] = 0\.0 > perturbed\[1\]"):
        assert_rank_one_interlacing(base, [-1.0, -0.5, 1.5], sign=-1)
    with pytest.raises(ValueError, match="sorted ascending"):
        assert_rank_one_interlacing(base[::-1], [3.0, 1.5, 0.5])


@settings(max_examples=10)
@given(case=spiked_goe_cases(dims=st.integers(3, 40), spikes=st.just([-2.0])))
def test_interlacing_of_a_negative_update_holds_and_the_wrong_sign_fails(case):
    lo, hi = np.linalg.eigvalsh(case.noise), case.eigenvalues
    atol = 2 * eig_atol(np.abs(hi).max() + 2.0, case.P)
    assert_rank_one_interlacing(lo, hi, sign=-1, atol=atol)
    with pytest.raises(AssertionError, match="positive update"):
        assert_rank_one_interlacing(lo, hi, sign=1, atol=atol)


# ---- laws ------------------------------------------------------------------------------------


def test_kolmogorov_distance_is_scipys_statistic():
    x = np.random.default_rng(0).normal(size=257)
    ref = scipy.stats.kstest(x, "norm").statistic
    assert kolmogorov_distance(x, scipy.stats.norm) == pytest.approx(ref, rel=4 * EPS64)
    assert kolmogorov_distance(x, scipy.stats.norm.cdf) == pytest.approx(ref, rel=4 * EPS64)


def test_matches_law_decides_as_scipys_kstest_and_rejects_at_rate_alpha():
    """400 seeds, n = 100, alpha = 0.05. Under the true law the number of rejections is
    Binomial(400, 0.05): within Z_STAT sd of 20. A law off by 1 sd in location (CDF error
    2 Phi(1/2) - 1 = 0.38, three times the critical value 0.134) is rejected on every seed.
    Each decision equals scipy's p-value < alpha."""
    alpha, n, seeds = 0.05, 100, 400
    rejected = {"true": 0, "wrong": 0}
    for seed in range(seeds):
        x = np.random.default_rng(seed).normal(size=n)
        for name, law in (("true", scipy.stats.norm(0, 1)), ("wrong", scipy.stats.norm(1, 1))):
            try:
                assert_matches_law(x, law.cdf, alpha=alpha)
                ok = True
            except AssertionError:
                ok = False
                rejected[name] += 1
            assert ok == (scipy.stats.kstest(x, law.cdf).pvalue >= alpha)
    expected = seeds * alpha
    assert abs(rejected["true"] - expected) <= Z_STAT * np.sqrt(seeds * alpha * (1 - alpha))
    assert rejected["wrong"] == seeds


def test_matches_law_message_and_bad_alpha():
    x = np.linspace(0.01, 0.99, 99)
    pvalue = assert_matches_law(x, scipy.stats.uniform.cdf)
    assert pvalue == pytest.approx(scipy.stats.kstest(x, "uniform").pvalue, rel=1e-10)
    with pytest.raises(AssertionError, match=r"KS test rejects the law at alpha = 0\.001: D = "):
        assert_matches_law(x**2, scipy.stats.uniform.cdf, alpha=1e-3)
    with pytest.raises(ValueError, match="alpha must lie in"):
        assert_matches_law(x, scipy.stats.uniform.cdf, alpha=1.0)


def test_same_law_passes_for_one_sampler_and_rejects_a_shift_with_bonferroni():
    rng = np.random.default_rng(7)
    a = {"top": rng.normal(size=500), "gap": rng.exponential(size=500)}
    b = {"top": rng.normal(size=500), "gap": rng.exponential(size=500)}
    pvalues = assert_same_law(a, b, alpha=1e-3)
    for name in a:
        assert pvalues[name] == scipy.stats.ks_2samp(a[name], b[name]).pvalue
    shifted = {"top": b["top"] + 0.5, "gap": b["gap"]}
    with pytest.raises(AssertionError, match=r"each of 2 at 0\.0005\): top \(p = "):
        assert_same_law(a, shifted, alpha=1e-3)
    assert set(assert_same_law(a["top"], b["top"])) == {"sample"}
    with pytest.raises(ValueError, match="the statistics differ"):
        assert_same_law(a, {"top": b["top"]})


# ---- the module docstring's example runs -----------------------------------------------------


def test_docstring_example_runs_and_passes():
    block = re.search(r"::\n\n((?:    .*\n|\n)+)", rmt.testing.__doc__).group(1)
    namespace = {}
    exec(textwrap.dedent(block), namespace)  # noqa: S102 -- our own docstring
    namespace["test_weyl"]()
    namespace["test_outlier_law"]()
