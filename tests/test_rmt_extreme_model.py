"""rmt.extreme_model (M2): the 2 x 2 closed form and the exact order-statistic law of the batch max.

References: numpy's eigvalsh of the P x P rank-two matrix; brute-force enumeration of all batches
for a small N; Monte Carlo of batches drawn without replacement (numpy ``choice``), which must
reject the law for a wrong B or for draws with replacement.
"""

import itertools

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from rmt.extreme_model import (
    batch_max_probabilities,
    extreme_value_model,
    rank_two_top,
    weighted_quantile,
)
from rmt.samplers import haar_frame
from rmt.testing import seeds
from tests.tolerances import KS_PVALUE, SPECTRA_SUM_RTOL, Z_STAT, eig_atol


@given(seed=seeds, P=st.integers(2, 60))
def test_rank_two_top_equals_dense_eigvalsh(seed, P):
    rng = np.random.default_rng(seed)
    U = haar_frame(P, 2, rng=rng)
    theta, a = rng.uniform(0, 5, 2)
    v = U[:, 0]
    c = rng.uniform(-1, 1)
    u = c * v + np.sqrt(1 - c * c) * U[:, 1]
    M = theta * np.outer(v, v) + a * np.outer(u, u)
    top = np.linalg.eigvalsh(M)[-1]
    assert abs(rank_two_top(theta, a, c * c) - top) <= 2 * eig_atol(theta + a, P)


def _chi_square_pvalue(counts, probabilities):
    """Pearson chi-square p-value, cells with expected count < 5 pooled into one."""
    expected = probabilities * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return scipy.stats.chisquare(obs[keep], exp[keep] * obs.sum() / exp[keep].sum()).pvalue


def test_probabilities_equal_enumeration_of_all_batches():
    rng = np.random.default_rng(1)
    N, B = 9, 4
    kappa = rng.permutation(np.r_[rng.uniform(0, 1, N - 2), 0.5, 0.5])  # one tie
    exact = np.zeros(N)
    for batch in itertools.combinations(range(N), B):
        # the batch maximum: largest kappa, ties to the larger index
        exact[max(batch, key=lambda i: (kappa[i], i))] += 1
    exact /= exact.sum()
    p = batch_max_probabilities(kappa, B)
    np.testing.assert_allclose(p, exact, rtol=SPECTRA_SUM_RTOL, atol=SPECTRA_SUM_RTOL)


def test_law_matches_monte_carlo_and_rejects_wrong_batches():
    rng = np.random.default_rng(2)
    N, B, draws = 60, 8, 20_000
    kappa = rng.pareto(2.0, N) + 0.1
    counts = np.zeros(N)
    for _ in range(draws):
        batch = rng.choice(N, B, replace=False)
        counts[batch[np.argmax(kappa[batch])]] += 1
    assert _chi_square_pvalue(counts, batch_max_probabilities(kappa, B)) > KS_PVALUE
    # B off by one, and draws with replacement (P(max rank <= r) = (r / N)^B), must be rejected
    assert _chi_square_pvalue(counts, batch_max_probabilities(kappa, B + 1)) < KS_PVALUE
    rank = np.argsort(np.argsort(kappa)) + 1
    with_replacement = (rank / N) ** B - ((rank - 1) / N) ** B
    assert _chi_square_pvalue(counts, with_replacement) < KS_PVALUE


def test_model_moments_match_monte_carlo_of_the_model():
    rng = np.random.default_rng(3)
    N, B, theta, draws = 200, 16, 2.0, 20_000
    kappa = 5 * rng.pareto(1.5, N)
    c2 = rng.uniform(0, 1, N)
    model = extreme_value_model(theta, kappa, c2, B)
    values = np.empty(draws)
    for k in range(draws):
        batch = rng.choice(N, B, replace=False)
        j = batch[np.argmax(kappa[batch])]
        values[k] = rank_two_top(theta, kappa[j] / B, c2[j])
    se = values.std() / np.sqrt(draws)
    assert abs(values.mean() - model.mean) <= Z_STAT * se
    # the sd of a sample sd ~ sd sqrt((kurtosis - 1) / (4 n)) (TW1 entry of tolerances.py)
    kurt = scipy.stats.kurtosis(values, fisher=False)
    assert abs(values.std() - model.sd) <= Z_STAT * model.sd * np.sqrt((kurt - 1) / (4 * draws))
    # quantiles: the model's q lies within the binomial interval of the MC order statistics
    for q, value in ((0.1, model.q10), (0.5, model.q50), (0.9, model.q90)):
        half = Z_STAT * np.sqrt(q * (1 - q) / draws)
        lo, hi = np.quantile(values, [max(q - half, 0), min(q + half, 1)])
        assert lo <= value <= hi
    assert model.probabilities.sum() == pytest.approx(1.0, rel=SPECTRA_SUM_RTOL)


def test_spike_weight_rest_scales_theta():
    kappa, c2 = np.array([1.0, 2.0, 3.0]), np.array([0.2, 0.5, 0.1])
    full = extreme_value_model(2.0, kappa, c2, 2)
    rest = extreme_value_model(2.0, kappa, c2, 2, spike_weight="rest")
    np.testing.assert_allclose(rest.values, rank_two_top(1.0, kappa / 2, c2), rtol=1e-15)
    np.testing.assert_allclose(full.values, rank_two_top(2.0, kappa / 2, c2), rtol=1e-15)
    assert weighted_quantile([3.0, 1.0, 2.0], [0.2, 0.3, 0.5], 0.5) == 2.0
