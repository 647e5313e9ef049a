"""rmt.tails: Hill's tail-index estimator against exact Pareto laws, a wrong k and light tails."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rmt.tails import default_hill_k, hill_estimate
from tests.tolerances import HILL_SUM_RTOL, KS_PVALUE, Z_STAT


def pareto(alpha: float, n: int, rng) -> np.ndarray:
    """n draws of the Pareto law P(X > x) = x^(-alpha), x >= 1 (numpy's Lomax + 1)."""
    return rng.pareto(alpha, n) + 1.0


def test_hill_formula_on_a_hand_sample():
    """k / sum_{j<=k} log(X_(j) / X_(k+1)) on an unsorted sample with a known answer."""
    x = np.array([1.0, math.e**2, 0.5, math.e, math.e**3])  # sorted: e^3, e^2, e, 1, 0.5
    h = hill_estimate(x, k=3)  # threshold X_(4) = 1: logs 3, 2, 1 -> alpha = 3 / 6
    assert h.threshold == 1.0 and h.k == 3 and h.n == 5
    assert math.isclose(h.alpha, 0.5, rel_tol=HILL_SUM_RTOL)
    assert math.isclose(h.se, 0.5 / math.sqrt(3), rel_tol=HILL_SUM_RTOL)
    z = stats.norm.ppf(0.975)
    assert math.isclose(h.ci_low, 0.5 - z * h.se, rel_tol=HILL_SUM_RTOL)
    assert math.isclose(h.ci_high, 0.5 + z * h.se, rel_tol=HILL_SUM_RTOL)


def test_default_k_is_floor_sqrt_n():
    assert [default_hill_k(n) for n in (2, 15, 16, 17, 1797)] == [1, 3, 4, 4, 42]
    assert hill_estimate(np.arange(1.0, 1798.0)).k == 42


def test_exact_law_of_the_log_sum_on_pareto_draws():
    """Renyi: alpha * sum_{j<=k} log(X_(j)/X_(k+1)) ~ Gamma(k, 1) exactly for a Pareto law, so
    k / alpha_hat * alpha is Gamma(k, 1) over seeded replicates (KS test); the same statistic
    with the threshold X_(k) instead of X_(k+1) (an off-by-one) is rejected."""
    alpha, n, k, reps = 1.5, 400, 20, 600
    rng = np.random.default_rng(11)
    right, off_by_one = [], []
    for _ in range(reps):
        x = pareto(alpha, n, rng)
        right.append(k / hill_estimate(x, k).alpha * alpha)
        top = -np.sort(-x)[:k]
        off_by_one.append(alpha * np.sum(np.log(top / top[k - 1])))
    assert stats.kstest(right, stats.gamma(k).cdf).pvalue > KS_PVALUE
    assert stats.kstest(off_by_one, stats.gamma(k).cdf).pvalue < KS_PVALUE


def test_interval_coverage_matches_its_exact_value():
    """The Wald interval covers alpha iff k (1 - z/sqrt k) <= G <= k (1 + z/sqrt k) with
    G ~ Gamma(k, 1) (exact for Pareto): the observed coverage over seeded replicates is within
    Z_STAT binomial standard errors of that value (not of the nominal 95%)."""
    alpha, n, k, reps = 0.8, 300, 17, 2000
    z = stats.norm.ppf(0.975)
    exact = stats.gamma(k).cdf(k * (1 + z / math.sqrt(k))) - stats.gamma(k).cdf(
        k * (1 - z / math.sqrt(k))
    )
    rng = np.random.default_rng(12)
    hits = 0
    for _ in range(reps):
        h = hill_estimate(pareto(alpha, n, rng), k)
        hits += h.ci_low <= alpha <= h.ci_high
    se = math.sqrt(exact * (1 - exact) / reps)
    assert abs(hits / reps - exact) <= Z_STAT * se, (hits / reps, exact)


@pytest.mark.parametrize("alpha", [0.7, 1.5, 3.0])
def test_recovers_a_pareto_index_within_its_interval(alpha):
    h = hill_estimate(pareto(alpha, 50_000, np.random.default_rng(13)))
    assert h.k == 223 and h.level == 0.95
    assert h.ci_low <= alpha <= h.ci_high, h


def test_a_wrong_k_is_distinguishable():
    """|Student t_3| has tail index 3 but is not Pareto in its body: k = sqrt(n) covers 3, while
    k = n / 4 reaches into the body and its interval excludes 3 (second-order bias)."""
    x = np.abs(np.random.default_rng(14).standard_t(3.0, 20_000))
    good = hill_estimate(x)
    bad = hill_estimate(x, k=5_000)
    assert good.ci_low <= 3.0 <= good.ci_high, good
    assert bad.ci_high < 3.0, bad


def test_a_light_tail_is_distinguishable():
    """An exponential sample has no tail index: its Hill estimate grows like log(n / k) =
    log(sqrt n), so the intervals at n = 2,000 and n = 200,000 are disjoint, whereas for a
    Pareto law both cover the true index."""
    rng = np.random.default_rng(15)
    small, large = (
        hill_estimate(rng.exponential(size=2_000)),
        hill_estimate(rng.exponential(size=200_000)),
    )
    assert small.ci_high < large.ci_low, (small, large)
    for n in (2_000, 200_000):
        h = hill_estimate(pareto(2.0, n, rng))
        assert h.ci_low <= 2.0 <= h.ci_high, h


@pytest.mark.parametrize(
    ("values", "k", "message"),
    [
        (np.ones((3, 3)), None, "1-D"),
        (np.array([1.0, np.inf, 2.0]), None, "finite"),
        (np.arange(1.0, 5.0), 4, "k must be"),
        (np.arange(1.0, 5.0), 0, "k must be"),
        (np.array([3.0, 2.0, 0.0, -1.0]), 2, "positive"),
        (np.array([2.0, 2.0, 2.0, 1.0]), 2, "all equal"),
    ],
)
def test_bad_input_is_refused(values, k, message):
    with pytest.raises(ValueError, match=message):
        hill_estimate(values, k)


def test_tails_imports_without_torch():
    """rmt never imports torch (DESIGN.md): importing rmt.tails leaves torch unloaded."""
    code = "import sys, rmt.tails; assert 'torch' not in sys.modules, 'torch loaded'; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
