"""validation.checks.batch_models: the measured law of lambda_max over batches (quantile intervals
from order statistics) and the goal sentences, against hand-computed cases."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from validation.checks.batch_models import goal_summary, measured_law, quantile_interval


@pytest.mark.parametrize(("K", "q"), [(16, 0.1), (16, 0.9), (50, 0.1), (200, 0.9), (40, 0.5)])
def test_quantile_interval_covers_with_at_least_the_level(K, q):
    """[x_(l), x_(u)] contains the true q-quantile iff l <= #(draws below it) < u, and that
    count is Binomial(K, q): the coverage computed exactly from its ranks is >= 95%."""
    x = np.arange(1.0, K + 1)  # the sample's values are their ranks
    _, low, high = quantile_interval(x, q)
    lo_rank = 0 if np.isinf(low) else int(low)
    hi_rank = K + 1 if np.isinf(high) else int(high)
    coverage = stats.binom.cdf(hi_rank - 1, K, q) - stats.binom.cdf(lo_rank - 1, K, q)
    assert coverage >= 0.95
    # and it is the narrowest such equal-tailed choice: one rank less on either side undercovers
    # a tail by more than 2.5%
    if lo_rank >= 1:
        assert stats.binom.cdf(lo_rank - 1, K, q) <= 0.025


def test_quantile_interval_is_one_sided_for_few_draws():
    """With 16 draws no order statistic has >= 97.5% probability of lying below the 10% quantile:
    the lower end is -inf."""
    _, low, high = quantile_interval(np.arange(16.0), 0.1)
    assert low == -np.inf and np.isfinite(high)


def test_measured_law_by_hand():
    law = measured_law([1.0, 2.0, 3.0, 6.0])
    assert law["mean"] == 3.0 and law["sd"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    assert law["mean_se"] == pytest.approx(law["sd"] / 2)
    assert law["sd_se"] == pytest.approx(law["sd"] / np.sqrt(6))


def test_goal_summary_says_which_model_reaches_the_goal():
    rows = []
    for B, good in ((32, 1.05), (64, 0.95)):
        base = dict(B=B, q10_inside=True, q90_inside=True)
        rows.append({**base, "model": "M2", "mean_rel_error": good - 1, "sd_rel_error": 0.2})
        rows.append({**base, "model": "M0", "mean_rel_error": -0.6, "sd_rel_error": -0.99})
    rows.append({"B": 32, "model": "M3", "mean_rel_error": 0.01, "sd_rel_error": np.nan,
                 "q10_inside": False, "q90_inside": False})  # fmt: skip
    sentences = goal_summary(pd.DataFrame(rows))
    assert "reaches the goal" in sentences["M2"]
    assert "misses the goal" in sentences["M0"] and "60%" in sentences["M0"]
    assert "misses the goal" in sentences["M3"] and "no spread predicted" in sentences["M3"]
