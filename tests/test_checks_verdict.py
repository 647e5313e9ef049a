"""The one verdict rule (``validation.checks.verdict``) against hand-computed cases, ends
included: |z| exactly z_crit agrees, the chi-square interval's ends, NaN is not applicable."""

import math

import numpy as np
import pandas as pd
import pytest

from reports.schema import TIDY_COLUMNS
from tests.tolerances import CHI2_QUANTILE_RTOL
from validation.checks.synthetic import synthetic_rows
from validation.checks.verdict import (
    bound_verdict,
    draws_bound_verdict,
    spread_interval,
    spread_verdict,
    with_reason,
    z_verdict,
)

NAN, INF = float("nan"), float("inf")


# ---- z rule: |measured - predicted| <= z_crit * uncertainty -----------------------------------


def test_z_rule_at_its_boundary():
    # 1.5 - 1.0 = 0.5 = 4 * 0.125 exactly in binary: |z| == z_crit agrees
    assert z_verdict(1.0, 1.5, 0.125, 4.0) == "agrees"
    assert z_verdict(1.0, 0.5, 0.125, 4.0) == "agrees"
    # |measured - predicted| one ulp of 0.5 beyond 0.5, on either side: disagrees
    assert z_verdict(1.0, 1.5 + 2.0**-52, 0.125, 4.0) == "disagrees"
    assert z_verdict(1.0, 0.5 - 2.0**-53, 0.125, 4.0) == "disagrees"


def test_z_rule_uses_the_given_threshold():
    # |3 - 0| / 1 = 3
    assert z_verdict(0.0, 3.0, 1.0, 2.9) == "disagrees"
    assert z_verdict(0.0, 3.0, 1.0, 3.0) == "agrees"
    # a distance whose prediction is 0 (the W1 check): measured <= z_crit * reference
    assert z_verdict(0.0, 0.08, 0.02, 4.0) == "agrees"
    assert z_verdict(0.0, 0.09, 0.02, 4.0) == "disagrees"


@pytest.mark.parametrize(
    ("predicted", "measured", "uncertainty"),
    [
        (NAN, 1.0, 0.1),
        (1.0, NAN, 0.1),
        (1.0, 1.0, NAN),
        (1.0, INF, 0.1),
        (1.0, 1.0, 0.0),  # no spread: no standard error
        (1.0, 1.0, -0.1),
    ],
)
def test_z_rule_without_a_usable_number_is_not_applicable(predicted, measured, uncertainty):
    assert z_verdict(predicted, measured, uncertainty, 4.0) == "not applicable"


# ---- spread rule: (K - 1) s^2 / sd^2 in the central chi-square(K - 1) interval ----------------


@pytest.mark.parametrize("z_crit", [1.0, 2.0, 4.0])
def test_spread_interval_ends_match_the_chi_square_2_closed_form(z_crit):
    # chi-square(2) has CDF 1 - exp(-x / 2); the two tails together hold alpha = 2 P(Z > z_crit)
    alpha = math.erfc(z_crit / math.sqrt(2.0))
    lo, hi = spread_interval(3, z_crit)
    assert lo == pytest.approx(-2.0 * math.log1p(-alpha / 2), rel=CHI2_QUANTILE_RTOL)
    assert hi == pytest.approx(-2.0 * math.log(alpha / 2), rel=CHI2_QUANTILE_RTOL)


def test_spread_rule_at_the_interval_ends():
    # values -1, 0, 1: s = 1 exactly, statistic 2 / sd^2; se of s = 1 / sqrt(2 * 2) = 0.5
    values = [-1.0, 0.0, 1.0]
    lo, hi = spread_interval(3, 4.0)
    for end, inside, outside in ((lo, 1 + 1e-9, 1 - 1e-9), (hi, 1 - 1e-9, 1 + 1e-9)):
        assert spread_verdict(values, math.sqrt(2.0 / (end * inside)), 4.0) == ("agrees", 1.0, 0.5)
        assert spread_verdict(values, math.sqrt(2.0 / (end * outside)), 4.0)[0] == "disagrees"
    # the predicted sd itself (statistic 2, the chi-square(2) mean) agrees
    assert spread_verdict(values, 1.0, 4.0) == ("agrees", 1.0, 0.5)


def test_spread_rule_without_a_usable_number_is_not_applicable():
    verdict, s, se = spread_verdict([1.0], 1.0, 4.0)  # one draw has no spread
    assert verdict == "not applicable" and math.isnan(s) and math.isnan(se)
    for sd in (0.0, -1.0, NAN, INF):
        assert spread_verdict([-1.0, 0.0, 1.0], sd, 4.0) == ("not applicable", 1.0, 0.5)
    assert spread_verdict([-1.0, NAN, 1.0], 1.0, 4.0)[0] == "not applicable"


# ---- bound rule: an inequality that always holds, applied strictly ----------------------------


def test_bound_rule_for_one_value():
    assert bound_verdict(1.0, 1.0) == "agrees"  # equality holds
    assert bound_verdict(np.nextafter(1.0, 2.0), 1.0) == "disagrees"
    assert bound_verdict(-5.0, 1.0) == "agrees"
    for measured, bound in ((NAN, 1.0), (1.0, NAN), (INF, 1.0), (1.0, INF)):
        assert bound_verdict(measured, bound) == "not applicable"


def test_bound_rule_over_draws_counts_the_failures():
    assert draws_bound_verdict([True] * 5, "||W||_2") == "agrees (all 5 draws)"
    assert draws_bound_verdict(np.array([True, False, False]), "eq. 7 (s^2)") == (
        "disagrees (2 of 3 draws exceed eq. 7 (s^2))"
    )
    assert draws_bound_verdict([False], "x") == "disagrees (1 of 1 draws exceed x)"
    assert draws_bound_verdict([], "x") == "not applicable"


def test_reason_follows_the_word_in_brackets():
    assert with_reason("agrees", None) == "agrees"
    assert with_reason("agrees", "") == "agrees"
    assert with_reason("disagrees", "inside the edge") == "disagrees (inside the edge)"


# ---- the synthetic checks decide with these rules (hand-made raw tables) ----------------------


def _extremes():
    common = {"P": 1000, "t": 1.0, "spikes": "3 0.5 -1"}
    rows = [
        # outlier: |1.5 - 1| = 4 * 0.125 and |0.75 - 0.5| = 4 * 0.0625: both on the boundary
        ("top", 1, 3.0, "outlier", 1.0, 1.5, 0.125, 0.5, 0.75, 0.0625),
        # edge: one ulp of 0.5 beyond 4 se; its overlap has no finite-P law
        ("top", 2, 0.5, "edge", 2.0, 2.5 + 2.0**-51, 0.125, 0.0, 0.01, 0.001),
        # critical window: no predicted mean
        ("bottom", 1, -1.0, "critical", NAN, -2.0, 0.1, NAN, 0.3, 0.01),
        # an edge without a spike: no overlap row
        ("bottom", 2, NAN, "edge", -2.0, -2.1, 0.05, NAN, NAN, NAN),
    ]
    names = (
        "side", "index", "spike", "regime", "predicted_mean", "measured_mean", "measured_se",
        "overlap_predicted", "overlap_measured", "overlap_se",
    )  # fmt: skip
    return pd.DataFrame([common | dict(zip(names, r, strict=True)) for r in rows])


def test_synthetic_checks_by_hand():
    weyl = pd.DataFrame(
        {"P": 1000, "t": 1.0, "spikes": "3 0.5 -1", "trial": [0, 1, 2],
         "exact_holds": [True, True, True], "paper_holds": [True, False, True]}
    )  # fmt: skip
    sweep = pd.DataFrame(
        [{"P": 1000, "t": 4.0, "spike": 3.0, "regime": "outlier", "predicted_mean": 4.0 + 1 / 3,
          "measured_mean": 4.0 + 1 / 3 + 0.3, "measured_se": 0.1}]
    )  # fmt: skip
    free = pd.DataFrame(
        [{"P": 100, "t": 1.0, "quantity": "W1", "predicted": 0.0, "measured": 0.25,
          "uncertainty": 0.0625}]
    )  # fmt: skip
    rows = synthetic_rows(_extremes(), sweep, weyl, free, z_crit=4.0)
    assert list(rows.columns) == list(TIDY_COLUMNS) and set(rows.source) == {"synthetic"}
    where = "P=1,000, t=1, spikes=(3 0.5 -1)"
    got = [(r.check, r.quantity, r.verdict) for r in rows.itertuples()]
    assert got == [
        ("theorem2", f"top eigenvalue 1 (spike 3), {where}", "agrees"),
        ("overlap", f"squared overlap, top eigenvalue 1 (spike 3), {where}", "agrees"),
        ("theorem2", f"top eigenvalue 2 (spike 0.5), {where}", "disagrees"),
        (
            "overlap",
            f"squared overlap, top eigenvalue 2 (spike 0.5), {where}"
            " [below threshold: the limit 0 holds only as P -> infinity]",
            "not applicable",
        ),
        ("theorem2", f"bottom eigenvalue 1 (spike -1), {where}", "not applicable"),
        (
            "overlap",
            f"squared overlap, bottom eigenvalue 1 (spike -1), {where}"
            " [BBP crossover window: no limit law at this P]",
            "not applicable",
        ),
        ("theorem2", f"bottom eigenvalue 2, {where}", "agrees"),
        # |0.3| <= 4 * 0.1
        ("bbp-sweep", "top eigenvalue, spike 3 = 1.50 sqrt(t), P=1,000, t=4", "agrees"),
        ("weyl", f"fraction of draws with max shift <= ||W||_2, {where}", "agrees (all 3 draws)"),
        (
            "weyl-eq7",
            f"fraction of draws with max shift <= eq. 7 (s^2), {where}",
            "disagrees (1 of 3 draws exceed eq. 7 (s^2))",
        ),
        ("free-convolution", "W1, P=100, t=1", "agrees"),  # 0.25 == 4 * 0.0625
    ]
    assert rows.set_index("check").loc["weyl-eq7", "measured"] == pytest.approx(2 / 3)
    tighter = synthetic_rows(_extremes(), sweep, weyl, free, z_crit=2.9)
    assert list(tighter.verdict[tighter.check == "bbp-sweep"]) == ["disagrees"]
    assert list(tighter.verdict[tighter.check == "free-convolution"]) == ["disagrees"]


def test_interval_rule_by_hand():
    """The bound rule on both sides: ends included, an infinite end one-sided, NaN n/a."""
    from validation.checks.verdict import interval_verdict

    assert interval_verdict(1.0, 1.0, 2.0) == "agrees" == interval_verdict(2.0, 1.0, 2.0)
    assert interval_verdict(np.nextafter(2.0, 3.0), 1.0, 2.0) == "disagrees"
    assert interval_verdict(np.nextafter(1.0, 0.0), 1.0, 2.0) == "disagrees"
    assert interval_verdict(-1e300, -np.inf, 2.0) == "agrees"
    assert interval_verdict(3.0, -np.inf, 2.0) == "disagrees"
    assert interval_verdict(np.nan, 1.0, 2.0) == "not applicable"
