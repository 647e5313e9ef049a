r"""Tail index of a heavy-tailed sample: Hill's estimator with its asymptotic interval.

numpy/scipy only. Used on the per-sample curvatures of a network (``nnhessian.curvature``), whose
top eigenvalues are heavy-tailed; the tail index says how heavy (a Pareto tail
``P(X > x) ~ x^(-alpha)`` has a finite mean only for ``alpha > 1``, a finite variance only for
``alpha > 2``).

Hill (1975, "A simple general approach to inference about the tail of a distribution", Ann.
Statist. 3, 1163-1174): with the order statistics ``X_(1) >= X_(2) >= ... >= X_(n)`` and the
``k`` largest,

    alpha_hat = k / sum_{j=1}^{k} log(X_(j) / X_(k+1)).

For an exact Pareto law the sum is Gamma(k, scale 1/alpha) (Renyi's representation of exponential
order statistics: ``log(X / x_m)`` is Exp(alpha)), so ``alpha / alpha_hat ~ Gamma(k, 1/k)``;
asymptotically ``sqrt(k) (alpha_hat - alpha) -> N(0, alpha^2)`` when ``k -> infinity`` and
``k / n -> 0`` (Hall 1982), which gives the standard error ``alpha_hat / sqrt(k)`` and the Wald
interval ``alpha_hat +- z se``.

The choice of k trades variance (small k) against bias (large k: the body of the law, where it is
not Pareto, enters the estimate). The default ``k = floor(sqrt(n))`` satisfies ``k -> infinity``
and ``k / n -> 0``; it is a conventional, not an optimal, choice (the optimal rate depends on the
second-order behaviour of the tail, Hall & Welsh 1985). A light tail (exponential, Gaussian) has no
finite tail index: Hill's estimate then grows like ``log(n / k)`` with n instead of settling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["HillEstimate", "default_hill_k", "hill_estimate"]

# Default level of the Wald interval: two-sided 95%.
HILL_LEVEL = 0.95


@dataclass(frozen=True)
class HillEstimate:
    """Hill's tail-index estimate from the ``k`` largest of ``n`` positive values."""

    alpha: float  # alpha_hat = k / sum_{j<=k} log(X_(j) / X_(k+1))
    se: float  # asymptotic standard error alpha_hat / sqrt(k)
    ci_low: float  # alpha_hat - z se, z the normal quantile of the level
    ci_high: float  # alpha_hat + z se
    k: int  # number of upper order statistics used
    n: int  # sample size
    threshold: float  # X_(k+1), the value above which the tail is fitted
    level: float  # two-sided level of [ci_low, ci_high]


def default_hill_k(n: int) -> int:
    """``floor(sqrt(n))``: k -> infinity and k / n -> 0 (module docstring)."""
    return math.isqrt(int(n))


def hill_estimate(values, k: int | None = None, *, level: float = HILL_LEVEL) -> HillEstimate:
    """Hill's estimate of the tail index of ``values`` (1-D, the k + 1 largest positive).

    ``k``: the number of upper order statistics, ``1 <= k <= n - 1``; default
    :func:`default_hill_k`. ``level``: the two-sided level of the Wald interval
    ``alpha_hat +- z alpha_hat / sqrt(k)`` (asymptotic normality, Hall 1982).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    n = x.shape[0]
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite")
    k = default_hill_k(n) if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise ValueError(f"k must be an integer in [1, n - 1] = [1, {n - 1}], got {k!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    k = int(k)
    top = -np.sort(-x)[: k + 1]  # X_(1) >= ... >= X_(k+1)
    threshold = float(top[k])
    if threshold <= 0.0:
        raise ValueError(
            f"the {k + 1} largest values must be positive (X_(k+1) = {threshold!r}); "
            "use a smaller k"
        )
    total = float(np.sum(np.log(top[:k] / threshold)))
    if total <= 0.0:
        raise ValueError(f"the {k + 1} largest values are all equal; the tail index is undefined")
    alpha = k / total
    se = alpha / math.sqrt(k)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    return HillEstimate(
        alpha=alpha,
        se=se,
        ci_low=alpha - z * se,
        ci_high=alpha + z * se,
        k=k,
        n=n,
        threshold=threshold,
        level=level,
    )
