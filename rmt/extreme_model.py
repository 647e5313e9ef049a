r"""Model M2 of the batch lambda_max: the full-data spike plus the hardest sample in the batch.

Setting (issue 10): N samples, per-sample Hessians H_i, ``H_emp = mean_i H_i`` with top eigenpair
``(theta, v)``; per sample the top eigenvalue ``kappa_i`` of its Gauss-Newton piece G_i and the
squared overlap ``c_i^2 = <u_i, v>^2`` of G_i's top eigenvector with v; a batch of B samples drawn
without replacement, ``H_B = (1/B) sum_{i in B} H_i``.

Derivation. Let ``j`` be the sample of largest ``kappa`` in the batch. Then exactly
``H_B = (1/B) H_j + ((B - 1)/B) mean_{i in B, i != j} H_i``. Assume (i) the rest of the batch
averages to H_emp, (ii) H_emp acts as its top spike ``theta v v^T`` near lambda_max, and (iii)
``H_j`` acts as its dominant piece ``kappa_j u u^T``. With ``u = c v + s w`` (``w`` a unit
vector orthogonal to v, ``s^2 = 1 - c^2``) the matrix ``theta' v v^T + a u u^T``
(``a = kappa_j / B``) is zero off span{v, w}, where it is ``[[theta' + a c^2, a c s], [a c s,
a s^2]]`` with trace ``theta' + a`` and determinant ``theta' a s^2``, so

    lambda_max = (theta' + a)/2 + sqrt(((theta' - a)/2)^2 + theta' a c^2)

(:func:`rank_two_top`; for ``theta', a >= 0`` it is >= max(theta', a) >= 0, so it is also the top
eigenvalue of the P x P matrix). Assumption (i) gives ``theta' = (B - 1) theta / B``
(``spike_weight="rest"``); the issue's simpler combination keeps ``theta' = theta``
(``spike_weight="full"``, the default: H_emp plus the hardest piece / B). Both ignore the
fluctuation of the rest of the batch (that is M0/M1/M3) and every piece but the largest.

Law over batches (exact). Rank the N samples by kappa ascending, ties broken by index
(``r_i = 1..N``). Sample i is the batch maximum iff it is in the batch and the other B - 1 members
have lower rank: ``P(i is the maximum) = C(r_i - 1, B - 1) / C(N, B)`` (hypergeometric order
statistics; David & Nagaraja, *Order Statistics*, 3rd ed., 2003, section 2.4), computed in log space
with ``scipy.special.gammaln``. The model's lambda_max is the discrete law putting that mass on
``rank_two_top(theta', kappa_i / B, c_i^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.special

__all__ = [
    "ExtremeValueModel",
    "SPIKE_WEIGHTS",
    "batch_max_probabilities",
    "extreme_value_model",
    "rank_two_top",
    "weighted_quantile",
]

SPIKE_WEIGHTS = ("full", "rest")


def rank_two_top(theta, a, c2):
    """Top eigenvalue of ``theta v v^T + a u u^T`` with ``<u, v>^2 = c2`` (unit v, u).

    ``(theta + a)/2 + sqrt(((theta - a)/2)^2 + theta a c2)`` (module docstring). Vectorised.
    """
    theta, a, c2 = (np.asarray(x, dtype=np.float64) for x in (theta, a, c2))
    if np.any((c2 < 0) | (c2 > 1)):
        raise ValueError("squared overlaps c^2 must lie in [0, 1]")
    return 0.5 * (theta + a) + np.sqrt(0.25 * (theta - a) ** 2 + theta * a * c2)


def batch_max_probabilities(kappa, B):
    """``P(sample i is the maximum of a batch of B drawn without replacement)``, shape (N,).

    ``C(r_i - 1, B - 1) / C(N, B)`` with ranks ``r_i`` by kappa ascending, ties broken by index
    (a later index ranks higher); zero for ``r_i < B``. Log space: ``gammaln``.
    """
    kappa = np.asarray(kappa, dtype=np.float64).ravel()
    N = kappa.size
    if isinstance(B, bool) or not isinstance(B, int | np.integer) or not 1 <= B <= N:
        raise ValueError(f"B must be an integer in [1, N = {N}], got {B!r}")
    if not np.all(np.isfinite(kappa)):
        raise ValueError("kappa must be finite")
    order = np.lexsort((np.arange(N), kappa))
    rank = np.empty(N, dtype=np.int64)
    rank[order] = np.arange(1, N + 1)
    out = np.zeros(N)
    ok = rank >= B
    r = rank[ok].astype(np.float64)
    log_num = scipy.special.gammaln(r) - scipy.special.gammaln(B) - scipy.special.gammaln(r - B + 1)
    log_den = scipy.special.gammaln(N + 1) - scipy.special.gammaln(B + 1)
    log_den -= scipy.special.gammaln(N - B + 1)
    out[ok] = np.exp(log_num - log_den)
    return out


def weighted_quantile(values, probabilities, q):
    """Quantiles of the discrete law ``sum_i p_i delta_{values_i}``: the smallest value whose
    cumulative probability reaches ``q`` (the inverse CDF, left-continuous)."""
    values = np.asarray(values, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(p[order])
    cum /= cum[-1]
    idx = np.searchsorted(cum, np.asarray(q) - 1e-12, side="left")
    return values[order][np.minimum(idx, values.size - 1)]


@dataclass(frozen=True)
class ExtremeValueModel:
    """M2's law of lambda_max(H_B) over batches of B drawn without replacement."""

    mean: float
    sd: float
    q10: float
    q50: float
    q90: float
    values: np.ndarray  # (N,) model lambda_max when sample i is the batch maximum
    probabilities: np.ndarray  # (N,) P(sample i is the batch maximum), sums to 1
    theta: float  # top eigenvalue of H_emp
    B: int
    N: int
    spike_weight: str  # "full" (theta) or "rest" ((B - 1) theta / B)


def extreme_value_model(theta, kappa, c2, B, *, spike_weight="full") -> ExtremeValueModel:
    """M2: mean, sd and 10/50/90% quantiles of ``rank_two_top(theta', kappa_(1) / B, c^2)``.

    ``kappa`` (N,) top per-sample GGN eigenvalues, ``c2`` (N,) their squared overlaps with v;
    the law is exact under the model (module docstring).
    """
    if spike_weight not in SPIKE_WEIGHTS:
        raise ValueError(f"spike_weight must be one of {SPIKE_WEIGHTS}, got {spike_weight!r}")
    kappa = np.asarray(kappa, dtype=np.float64).ravel()
    c2 = np.asarray(c2, dtype=np.float64).ravel()
    if c2.shape != kappa.shape:
        raise ValueError(f"kappa and c2 differ in shape: {kappa.shape}, {c2.shape}")
    p = batch_max_probabilities(kappa, B)
    spike = float(theta) * ((B - 1) / B if spike_weight == "rest" else 1.0)
    values = rank_two_top(spike, kappa / B, c2)
    mean = float(p @ values)
    sd = float(np.sqrt(max(p @ (values - mean) ** 2, 0.0)))
    q10, q50, q90 = weighted_quantile(values, p, [0.1, 0.5, 0.9])
    return ExtremeValueModel(
        mean=mean,
        sd=sd,
        q10=float(q10),
        q50=float(q50),
        q90=float(q90),
        values=values,
        probabilities=p,
        theta=float(theta),
        B=int(B),
        N=int(kappa.size),
        spike_weight=spike_weight,
    )
