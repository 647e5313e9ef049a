"""Monte-Carlo experiments: outlier laws within standard errors, and z-scores that can fail."""

import dataclasses

import numpy as np
import pytest

from rmt import theory
from rmt.experiments import (
    CRITICAL_WINDOW,
    expectations,
    extremes_table,
    spiked_extremes,
    weyl_table,
)
from tests.tolerances import Z_STAT


@pytest.fixture(scope="module")
def dense_run():
    # P = 400, 400 draws: outlier se of the mean ~ 0.003; the O(t / (theta P)) finite-P bias
    # of the outlier mean (~8e-4 here) stays below one se.
    return spiked_extremes([3.0, -2.0, 0.5], 1.0, 400, trials=400, method="dense", rng=11)


def test_outlier_mean_sd_and_overlap_follow_theory(dense_run):
    n = dense_run.trials
    for column, side, theta in ((0, "top", 3.0), (0, "bottom", -2.0)):
        values = (dense_run.top if side == "top" else dense_run.bottom)[:, column]
        j = list(dense_run.spikes).index(theta)
        overlaps = (dense_run.top_overlaps if side == "top" else dense_run.bottom_overlaps)[
            :, column, j
        ]
        mean, sd = values.mean(), values.std(ddof=1)
        expected_sd = theory.outlier_sd(theta, 1.0, 400)
        assert abs(mean - theory.bbp_outlier(theta, 1.0)) <= Z_STAT * sd / np.sqrt(n)
        # sd of n Gaussians: se(sd) = sd / sqrt(2 (n - 1))
        assert abs(sd - expected_sd) <= Z_STAT * expected_sd / np.sqrt(2 * (n - 1))
        se_overlap = overlaps.std(ddof=1) / np.sqrt(n)
        assert abs(overlaps.mean() - theory.bbp_overlap(theta, 1.0)) <= Z_STAT * se_overlap


def test_table_measures_and_does_not_judge(dense_run):
    table = extremes_table(dense_run)
    assert "verdict" not in table.columns  # verdicts are validation.checks' job
    assert len(table) == 4  # two outliers, the subcritical spike's edge row, one bottom edge row
    row = table[(table.side == "top") & (table["index"] == 1)].iloc[0]
    values = dense_run.top[:, 0]
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert row.measured_mean == values.mean() and row.measured_se == se
    assert row.predicted_mean == theory.bbp_outlier(3.0, 1.0)
    assert row.z_score == (values.mean() - theory.bbp_outlier(3.0, 1.0)) / se
    row = table[(table.side == "top") & (table["index"] == 2)].iloc[0]
    assert row.spike == 0.5 and row.regime == "edge"
    assert row.predicted == pytest.approx(2.0)
    assert row.overlap_predicted == 0.0 and row.overlap_measured < 0.05


def test_table_z_scores_small_for_the_true_model(dense_run):
    outliers = extremes_table(dense_run).query("regime == 'outlier'")
    assert len(outliers) == 2 and (outliers.z_score.abs() <= Z_STAT).all()


def test_table_z_scores_detect_a_wrong_noise_scale(dense_run):
    """The same draws scored against a 10% wrong t must stand out (z of about 10)."""
    wrong = dataclasses.replace(dense_run, t=1.1)
    outliers = extremes_table(wrong).query("regime == 'outlier'")
    assert (outliers.z_score.abs() > Z_STAT).any()


def test_expectations_match_spikes_to_sides_in_order():
    rows = expectations([-0.5, 3.0, 5.0, -4.0, -3.5], 1.0, 10_000, 3)
    top = [(e.index, e.regime, e.spike_index) for e in rows if e.side == "top"]
    bottom = [(e.index, e.regime, e.spike_index) for e in rows if e.side == "bottom"]
    assert top == [(1, "outlier", 2), (2, "outlier", 1), (3, "edge", -1)]
    # -4 and -3.5 are outliers; -0.5 is subcritical and takes the first edge slot
    assert bottom == [(1, "outlier", 3), (2, "outlier", 4), (3, "edge", 0)]
    deep = expectations([0.5, 0.3], 1.0, 10_000, 3)
    assert [e.regime for e in deep if e.side == "top"] == ["edge", "edge (order 2)"]
    assert np.isnan([e.predicted_mean for e in deep if e.side == "top"][1])


def test_edge_row_uses_tracy_widom_mean_and_sd():
    (row,) = [e for e in expectations([], 4.0, 1_000, 1) if e.side == "top"]
    assert row.predicted == 4.0
    assert row.predicted_mean == pytest.approx(4.0 + theory.TW1_MEAN * 2.0 / 100.0)
    assert row.predicted_sd == pytest.approx(theory.TW1_SD * 2.0 / 100.0)


def test_weyl_table_exact_bound_always_holds(dense_run):
    weyl = weyl_table(dense_run)
    assert len(weyl) == dense_run.trials
    assert weyl.exact_holds.all()
    assert (weyl.exact_slack >= 0).all()


def test_trials_are_reproducible_and_independent():
    a = spiked_extremes([2.0], 1.0, 50, trials=3, rng=4)
    b = spiked_extremes([2.0], 1.0, 50, trials=3, rng=4)
    np.testing.assert_array_equal(a.top, b.top)
    assert a.seed == b.seed
    assert len(set(a.top[:, 0])) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"method": "qr"}, "unknown method"), ({"trials": 0}, "trials must be")],
)
def test_bad_experiment_arguments(kwargs, message):
    args = {"trials": 2, "method": "dense"} | kwargs
    with pytest.raises(ValueError, match=message):
        spiked_extremes([1.0], 1.0, 20, rng=0, **args)


def test_spike_in_the_bbp_crossover_window_is_not_judged_by_a_limit_law():
    t, P = 4.0, 1_000_000
    half = CRITICAL_WINDOW * P ** (-1 / 3)  # 0.03 in units of sqrt(t)
    inside, outside = 2.0 * (1 + 0.9 * half), 2.0 * (1 + 1.1 * half)
    (top_in,) = [e for e in expectations([inside], t, P, 1) if e.side == "top"]
    assert top_in.regime == "critical" and np.isnan(top_in.predicted_mean)
    assert top_in.predicted == 4.0  # the asymptotic position, 2 sqrt(t)
    (top_out,) = [e for e in expectations([outside], t, P, 1) if e.side == "top"]
    assert top_out.regime == "outlier" and top_out.predicted == outside + t / outside
    (below,) = [e for e in expectations([-2.0 * (1 + 0.9 * half)], t, P, 1) if e.side == "bottom"]
    assert below.regime == "critical"
