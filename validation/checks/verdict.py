"""The one verdict rule of the suite: every row of every check gets its verdict here.

A row compares a prediction with a measurement (``reports.schema.TIDY_COLUMNS``). Its verdict is
one of ``agrees``, ``disagrees`` or ``not applicable`` (:data:`VERDICTS`), optionally followed by
a reason in parentheses. Three rules decide the first word, each with the same false-alarm rate
where it is statistical:

* the **z rule** (:func:`z_verdict`): ``|measured - predicted| <= z_crit * uncertainty``, with the
  uncertainty one standard error of the comparison; ``z_crit = 4`` (the default of every
  subcommand) is a two-sided Gaussian tail of 6e-5. A distance against a resolution scale (a
  Wasserstein-1 distance whose prediction is 0) is the same rule;
* the **spread rule** (:func:`spread_verdict`): K draws with sample sd ``s`` against a predicted
  sd of one draw ``sd``: ``(K - 1) s^2 / sd^2`` is chi-square with K - 1 degrees of freedom under
  the prediction, and it must lie in the central interval whose two tails together have the
  probability of ``|Z| > z_crit`` -- the z rule's false-alarm rate;
* the **bound rule** (:func:`bound_verdict`, :func:`draws_bound_verdict`,
  :func:`interval_verdict`): an inequality the theory says holds always (Weyl) is applied
  strictly, to one value or to every draw; a prediction must lie inside a measured interval (a
  quantile's distribution-free confidence interval) on both sides.

A rule with a missing number (NaN, or an uncertainty that is not > 0) says ``not applicable``.
The report recomputes none of this: it reads the verdicts the runs stored.
"""

from __future__ import annotations

import math

import numpy as np

from reports.schema import VERDICTS

AGREES, DISAGREES, NOT_APPLICABLE = VERDICTS


def with_reason(verdict: str, reason: str | None) -> str:
    """``verdict (reason)``; the verdict alone when there is no reason."""
    return f"{verdict} ({reason})" if reason else verdict


def z_verdict(predicted: float, measured: float, uncertainty: float, z_crit: float) -> str:
    """The z rule: ``agrees`` when ``|measured - predicted| <= z_crit * uncertainty``."""
    values = np.array([predicted, measured, uncertainty], dtype=float)
    if not np.all(np.isfinite(values)) or uncertainty <= 0:
        return NOT_APPLICABLE
    return AGREES if abs(measured - predicted) <= z_crit * uncertainty else DISAGREES


def spread_interval(K: int, z_crit: float) -> tuple[float, float]:
    """The central interval of chi-square(K - 1) with the z rule's two-sided tail mass
    ``2 P(Z > z_crit)``: the acceptance region of :func:`spread_verdict`'s statistic."""
    from scipy import stats

    alpha = 2.0 * stats.norm.sf(z_crit)
    return float(stats.chi2.ppf(alpha / 2, K - 1)), float(stats.chi2.isf(alpha / 2, K - 1))


def spread_verdict(values, sd: float, z_crit: float) -> tuple[str, float, float]:
    """The spread rule for ``values`` (K draws) against a predicted sd of one draw.

    Returns ``(verdict, s, uncertainty)``: the verdict of ``(K - 1) s^2 / sd^2`` against
    :func:`spread_interval`, the sample sd ``s`` and its large-K standard error
    ``s / sqrt(2 (K - 1))``. Fewer than two draws, or a predicted sd that is not > 0:
    ``not applicable``.
    """
    values = np.asarray(values, dtype=float)
    K = values.size
    if K < 2:
        return NOT_APPLICABLE, float("nan"), float("nan")
    s = float(values.std(ddof=1))
    uncertainty = s / math.sqrt(2.0 * (K - 1))
    if not (np.isfinite(sd) and sd > 0 and np.isfinite(s)):
        return NOT_APPLICABLE, s, uncertainty
    lo, hi = spread_interval(K, z_crit)
    statistic = (K - 1) * s**2 / sd**2
    return (AGREES if lo <= statistic <= hi else DISAGREES), s, uncertainty


def bound_verdict(measured: float, bound: float) -> str:
    """The bound rule for one value: ``agrees`` when ``measured <= bound`` (strictly applied)."""
    if not (math.isfinite(measured) and math.isfinite(bound)):
        return NOT_APPLICABLE
    return AGREES if measured <= bound else DISAGREES


def draws_bound_verdict(holds, bound_label: str) -> str:
    """The bound rule over draws: ``agrees (all n draws)`` when the inequality held in every
    draw, else ``disagrees (k of n draws exceed <bound_label>)``."""
    holds = np.asarray(holds, dtype=bool)
    n, failed = holds.size, int(holds.size - holds.sum())
    if n == 0:
        return NOT_APPLICABLE
    if failed == 0:
        return with_reason(AGREES, f"all {n} draws")
    return with_reason(DISAGREES, f"{failed} of {n} draws exceed {bound_label}")


def interval_verdict(predicted: float, low: float, high: float) -> str:
    """The bound rule on both sides: ``agrees`` when ``low <= predicted <= high`` (an end may be
    infinite: a one-sided interval); NaN anywhere: ``not applicable``."""
    if any(math.isnan(v) for v in (predicted, low, high)):
        return NOT_APPLICABLE
    return AGREES if low <= predicted <= high else DISAGREES
