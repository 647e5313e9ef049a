"""nnhessian.sigma2: each probe exact against dense per-sample Hessians, the finite-population
factors exact by enumeration, and the estimators unbiased within their standard errors.

The tiny problem (N = 12 samples, P = 39 parameters) makes the exact sigma^2 cheap:
sigma^2 = (1/(N P^2)) sum_i ||H_i - H_emp||_F^2 from dense per-sample Hessians.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

from nnhessian import reference
from nnhessian.models import build
from nnhessian.operators import HessianOperator
from nnhessian.sigma2 import (
    draw_partition,
    draw_probe,
    finite_population_factor,
    sigma2_partition,
    sigma2_per_sample,
    sigma2_two_batch,
    two_batch_factor,
)
from tests.helpers import F64, digits, exact_sigma2, gaussian_mlp
from tests.tolerances import EPS64, SIGMA2_PROBE_RTOL64, Z_STAT

pytestmark = pytest.mark.usefixtures("single_thread")
N, B = 12, 3


@functools.cache
def problem():
    """(full operator, per-sample Hessians (N, P, P), exact sigma^2) of a 5-4-3 tanh MLP."""
    model, data = gaussian_mlp(N)
    op = HessianOperator.full(model, data, batch_size=5, dtype=F64)
    H = reference.dense_per_sample_hessians(model, data, dtype=F64)
    return op, H, exact_sigma2(H)


def probe(seed: int, P: int, distribution: str = "gaussian"):
    g = torch.Generator().manual_seed(seed)
    return g, draw_probe(P, generator=g, distribution=distribution)


# ---- every probe value is the exact formula for its own draws -------------------------------


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_per_sample_probe_values_are_exact(distribution):
    op, H, _ = problem()
    P = op.dim
    est = sigma2_per_sample(
        op, probes=3, generator=torch.Generator().manual_seed(1), distribution=distribution
    )
    H_emp = H.mean(0)
    for seed, value in zip(est.seeds, est.per_probe, strict=True):
        _, v = probe(seed, P, distribution)
        exact = float((((H - H_emp) @ v) ** 2).sum()) / (N * P * P)
        assert abs(value - exact) <= SIGMA2_PROBE_RTOL64 * exact
    assert est.method == "per-sample" and est.factor == 1.0 and est.B is None
    assert (est.N, est.P, est.probes, est.distribution) == (N, P, 3, distribution)


@pytest.mark.parametrize("batch_size", [3, 5])  # K = 4 exact partition; K = 2 with 2 left over
def test_partition_probe_values_are_exact(batch_size):
    op, H, _ = problem()
    P = op.dim
    est = sigma2_partition(
        op, batch_size=batch_size, probes=3, generator=torch.Generator().manual_seed(2)
    )
    f = (N - batch_size) / (batch_size * (N - 1))
    assert est.factor == pytest.approx(f, rel=4 * EPS64)
    H_emp = H.mean(0)
    for seed, value in zip(est.seeds, est.per_probe, strict=True):
        g, v = probe(seed, P)
        batches, leftover = draw_partition(N, batch_size, generator=g)
        assert len(batches) == N // batch_size and leftover.numel() == N % batch_size
        raw = np.mean([float(((H[b].mean(0) - H_emp) @ v).square().sum()) for b in batches])
        exact = raw / (f * P * P)
        assert abs(value - exact) <= SIGMA2_PROBE_RTOL64 * exact


def test_two_batch_probe_values_are_exact():
    op, H, _ = problem()
    P = op.dim
    est = sigma2_two_batch(op, batch_size=B, probes=3, generator=torch.Generator().manual_seed(3))
    g_factor = 2 * N / (B * (N - 1))
    assert est.factor == pytest.approx(g_factor, rel=4 * EPS64)
    for seed, value in zip(est.seeds, est.per_probe, strict=True):
        g, v = probe(seed, P)
        perm = torch.randperm(N, generator=g)
        D = H[perm[:B]].mean(0) - H[perm[B : 2 * B]].mean(0)
        exact = float((D @ v).square().sum()) / (g_factor * P * P)
        assert abs(value - exact) <= SIGMA2_PROBE_RTOL64 * exact


def test_per_sample_on_digits_cnn_with_batchnorm_in_eval_mode():
    """vmap over per-sample products through Conv + BatchNorm (running statistics)."""
    data = digits(True).subset(range(10))
    model = build("cnn_bn", 10, width=2, generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        model(digits(True).X[:200].float())  # non-trivial running statistics
    op = HessianOperator.full(model, data, batch_size=4, dtype=F64)
    est = sigma2_per_sample(op, probes=2, generator=torch.Generator().manual_seed(4), chunk_size=3)
    H = reference.dense_per_sample_hessians(model, data, dtype=F64)
    P = op.dim
    for seed, value in zip(est.seeds, est.per_probe, strict=True):
        _, v = probe(seed, P)
        exact = float((((H - H.mean(0)) @ v) ** 2).sum()) / (10 * P * P)
        assert abs(value - exact) <= SIGMA2_PROBE_RTOL64 * exact
    assert op.per_sample().mode == "vmap"


# ---- the factors, exactly, by enumerating all batches ---------------------------------------


def _gram(H: torch.Tensor) -> np.ndarray:
    D = (H - H.mean(0)).reshape(H.shape[0], -1)
    return (D @ D.T).numpy()  # G_ij = <H_i - H_emp, H_j - H_emp>_F


@pytest.mark.parametrize("batch_size", [1, 3, 5, 6])
def test_finite_population_factor_by_enumeration(batch_size):
    """mean over all C(N, B) batches of ||H_b - H_emp||_F^2 = f (1/N) sum_i ||H_i - H_emp||_F^2."""
    _, H, sigma2 = problem()
    P = H.shape[1]
    G = _gram(H)
    S = np.trace(G) / N  # = P^2 sigma^2
    assert S == pytest.approx(P * P * sigma2, rel=100 * EPS64)
    vals = []
    for b in itertools.combinations(range(N), batch_size):
        e = np.zeros(N)
        e[list(b)] = 1 / batch_size
        vals.append(e @ G @ e)
    f = finite_population_factor(N, batch_size)
    assert np.mean(vals) == pytest.approx(f * S, rel=1e3 * EPS64)
    paper = (N - batch_size) / (batch_size * N)  # the printed factor is off by N/(N-1)
    assert abs(np.mean(vals) / (paper * S) - N / (N - 1)) <= 1e3 * EPS64


@pytest.mark.parametrize("batch_size", [1, 2, 3, 6])
def test_two_batch_factor_by_enumeration(batch_size):
    """mean over ordered disjoint (b1, b2) of ||H_b1 - H_b2||_F^2 = 2N/(B(N-1)) (1/N) sum ||.||^2,
    not twice the single-batch noise 2 (N-B)/(B(N-1)): the covariance term matters."""
    _, H, _ = problem()
    G = _gram(H)
    S = np.trace(G) / N
    total, count = 0.0, 0
    for b1 in itertools.combinations(range(N), batch_size):
        rest = [i for i in range(N) if i not in b1]
        for b2 in itertools.combinations(rest, batch_size):
            e = np.zeros(N)
            e[list(b1)] = 1 / batch_size
            e[list(b2)] = -1 / batch_size
            total += e @ G @ e
            count += 1
    mean = total / count
    assert mean == pytest.approx(two_batch_factor(N, batch_size) * S, rel=1e3 * EPS64)
    naive = 2 * finite_population_factor(N, batch_size) * S
    assert abs(mean / naive - N / (N - batch_size)) <= 1e3 * EPS64


# ---- unbiasedness, statistically ------------------------------------------------------------


def _assert_unbiased(est, exact):
    assert abs(est.estimate - exact) <= Z_STAT * est.standard_error
    assert est.standard_error > 0
    assert est.ci_low < est.estimate < est.ci_high


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_per_sample_estimator_unbiased(distribution):
    op, _, exact = problem()
    est = sigma2_per_sample(
        op, probes=200, generator=torch.Generator().manual_seed(5), distribution=distribution
    )
    _assert_unbiased(est, exact)


def test_partition_estimator_unbiased():
    op, _, exact = problem()
    est = sigma2_partition(op, batch_size=B, probes=300, generator=torch.Generator().manual_seed(6))
    _assert_unbiased(est, exact)


def test_two_batch_estimator_unbiased_and_the_naive_factor_detectably_biased():
    op, _, exact = problem()
    est = sigma2_two_batch(op, batch_size=B, probes=300, generator=torch.Generator().manual_seed(7))
    _assert_unbiased(est, exact)
    # with "twice the noise" (2f) every probe value would be N/(N-B) = 4/3 times larger: rejected
    scale = est.factor / (2 * finite_population_factor(N, B))
    assert scale == pytest.approx(N / (N - B), rel=1e-12)
    assert abs(est.estimate * scale - exact) > Z_STAT * est.standard_error * scale


def test_confidence_interval_is_the_t_interval():
    import scipy.stats

    op, _, _ = problem()
    est = sigma2_per_sample(
        op, probes=4, generator=torch.Generator().manual_seed(8), confidence=0.9
    )
    se = est.per_probe.std(ddof=1) / 2
    q = scipy.stats.t.ppf(0.95, df=3)
    assert est.standard_error == pytest.approx(se, rel=1e-12)
    assert est.ci_high - est.estimate == pytest.approx(q * se, rel=1e-12)
    assert len(est.seeds) == 4 and "1/N" in est.convention


def test_estimates_reproducible_from_the_generator():
    op, _, _ = problem()
    a = sigma2_two_batch(op, batch_size=B, probes=3, generator=torch.Generator().manual_seed(9))
    b = sigma2_two_batch(op, batch_size=B, probes=3, generator=torch.Generator().manual_seed(9))
    assert a.seeds == b.seeds and np.array_equal(a.per_probe, b.per_probe)


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "batch_size", "message"),
    [
        (sigma2_partition, N + 1, "exceeds the data set size"),
        (sigma2_partition, 0, "B must be >= 1"),
        (sigma2_partition, -2, "B must be >= 1"),
        (sigma2_partition, 7, "at least two batches"),
        (sigma2_two_batch, 7, "2 B <= N"),
        (sigma2_two_batch, 0, "B must be >= 1"),
    ],
)
def test_bad_batch_sizes(estimator, batch_size, message):
    op, _, _ = problem()
    with pytest.raises(ValueError, match=message):
        estimator(op, batch_size=batch_size, probes=2, generator=torch.Generator().manual_seed(0))


def test_bad_probes_operator_and_policy():
    op, _, _ = problem()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="probes must be an integer >= 2"):
        sigma2_per_sample(op, probes=1, generator=g)
    with pytest.raises(TypeError, match="torch.Generator"):
        sigma2_per_sample(op, probes=2, generator=0)
    with pytest.raises(ValueError, match="distribution"):
        sigma2_per_sample(op, probes=2, generator=g, distribution="uniform")
    with pytest.raises(ValueError, match="confidence"):
        sigma2_per_sample(op, probes=2, generator=g, confidence=1.5)
    with pytest.raises(ValueError, match="full-data HessianOperator"):
        sigma2_per_sample(op.batch_operator([0, 1]), probes=2, generator=g)
    data = digits(True).subset(range(8))
    bn = build("cnn_bn", 10, width=2, generator=torch.Generator().manual_seed(0))
    bs_op = HessianOperator.full(bn, data, batch_size=4, dtype=F64, policy="batch-stats")
    for est in (sigma2_per_sample, sigma2_partition, sigma2_two_batch):
        kwargs = {} if est is sigma2_per_sample else {"batch_size": 2}
        with pytest.raises(ValueError, match="batch-stats|batch statistics"):
            est(bs_op, probes=2, generator=g, **kwargs)
    loader_op = HessianOperator.full(op.model, list(op.dataset.batches(5)), dtype=F64)
    with pytest.raises(ValueError, match="InMemoryDataset"):
        sigma2_partition(loader_op, batch_size=3, probes=2, generator=g)
    # the per-sample estimator works from a loader
    est = sigma2_per_sample(loader_op, probes=2, generator=torch.Generator().manual_seed(1))
    ref = sigma2_per_sample(op, probes=2, generator=torch.Generator().manual_seed(1))
    assert np.allclose(est.per_probe, ref.per_probe, rtol=SIGMA2_PROBE_RTOL64, atol=0)
