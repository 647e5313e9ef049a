"""The extreme eigenvalues of H_B against Theorem 2 (paper, section 3) and its free-probability
refinement, and their spread over batches against the theory's fluctuation of one draw."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rmt import theory
from validation.checks.rows import eps_of, quad, row
from validation.checks.verdict import NOT_APPLICABLE as NA
from validation.checks.verdict import spread_verdict
from validation.network.result import NetworkResult, Spectrum


def without_extreme(spectrum: Spectrum, side: str) -> tuple[np.ndarray, np.ndarray]:
    """The pooled SLQ measure of H_emp without each probe's extreme node on ``side``."""
    nodes, weights = [], []
    for x, w in zip(spectrum.nodes, spectrum.weights, strict=True):
        k = np.flatnonzero(np.isfinite(x))
        k = k[:-1] if side == "max" else k[1:]
        nodes.append(x[k])
        weights.append(w[k])
    nodes, weights = np.concatenate(nodes), np.concatenate(weights)
    return nodes, weights / weights.sum()


def free_convolution_extreme(bulk_nodes, bulk_weights, theta: float, t: float, side: str):
    """The extreme eigenvalue of (bulk + spike theta) + GOE(t) in the large-P limit.

    The spike gives an outlier at ``theta + t G_mu(theta)`` when ``1 - t F(theta) > 0``; otherwise
    it is absorbed and the extreme sits at the support edge of ``mu boxplus semicircle(t)``.
    Returns (value, "outlier" or "edge", squared overlap).
    """
    from rmt.freeconv import free_convolution_outliers, free_convolution_support

    out = free_convolution_outliers(bulk_nodes, bulk_weights, [theta], t)
    support = free_convolution_support(bulk_nodes, bulk_weights, t)
    edge = support[-1][1] if side == "max" else support[0][0]
    if out.is_outlier[0]:
        beyond = out.location[0] > edge if side == "max" else out.location[0] < edge
        if beyond:
            return float(out.location[0]), "outlier", float(out.overlap[0])
    return float(edge), "edge", 0.0


@dataclass(frozen=True)
class _Measured:
    """The measured extreme of H_B on one side: draw 0's (K = 1) or the mean over K draws."""

    value: float
    uncertainty: float  # the measurement's: probe SE or Lanczos residual, with rounding
    draw_se: float  # standard error over the K draws (NaN for K = 1)
    values: np.ndarray | None  # (K,) the draws' extremes (None for K = 1)

    def draw_term(self, sd: float, K: int) -> float:
        """The batch-draw fluctuation of the measured value, from the theory's sd of one
        draw: that sd (K = 1), else the larger of sd / sqrt(K) and the SE over draws."""
        return sd if K == 1 else max(sd / math.sqrt(K), self.draw_se)


def _measured(result: NetworkResult, B: int, side: str, rounding: float) -> _Measured:
    K = result.config.batch_draws
    if K == 1:
        value, se, res = result.batches[B].extreme(side)
        unc = quad(max(v for v in (se, res, 0.0) if np.isfinite(v)), rounding)
        return _Measured(value, unc, float("nan"), None)
    values, errors = result.draw_extremes(B, side)
    draw_se = float(values.std(ddof=1) / math.sqrt(K))
    return _Measured(float(values.mean()), quad(float(errors.mean()), rounding), draw_se, values)


def theorem2_law(lam: float, lam_res: float, result: NetworkResult, B: int, t: float, t_se: float):
    """Theorem 2's prediction from theta = ``lam``: (value, regime, its standard error from t and
    theta's residual, the theory's sd of one draw)."""
    c, P = result.config, result.P
    pred = theory.theorem2(
        lam, result.sigma2["per-sample"].estimate, P, result.N, B, factor=c.factor
    )
    predicted, regime = float(pred.predicted), str(pred.regime)
    if regime == "outlier":  # theta + t / theta
        d_dt, d_dlam = 1.0 / lam, 1.0 - t / lam**2
        fluct = float(theory.outlier_sd(lam, t, P))
    else:  # sign(theta) 2 sqrt(t)
        d_dt, d_dlam = (np.sign(lam) / math.sqrt(t) if t > 0 else 0.0), 0.0
        fluct = float(theory.edge_scale(t, P)) * theory.TW1_SD
    return predicted, regime, quad(abs(d_dt) * t_se, abs(d_dlam) * lam_res), fluct


def free_convolution_law(result: NetworkResult, side: str, lam: float, t: float, bulk=None):
    """The free-convolution refinement from theta = ``lam`` on the rest ``bulk`` of the
    full-data SLQ measure (default: without each probe's extreme node on ``side``): (value,
    regime, the sd of one draw -- Gaussian outlier ``sqrt(2 t / P overlap)`` or Tracy-Widom
    edge)."""
    P = result.P
    if bulk is None:
        bulk = without_extreme(result.full, side)
    fc, regime, overlap = free_convolution_extreme(*bulk, lam, t, side)
    if regime == "outlier":
        return fc, regime, math.sqrt(2.0 * t / P * overlap)
    return fc, regime, float(theory.edge_scale(t, P)) * theory.TW1_SD


def _free_convolution_row(result, side, lam, t, t_se, quantity, m: _Measured):
    """The spike theta on the rest of the full-data SLQ measure: (row, value, regime)."""
    z = result.config.z_crit
    if result.steps < 2:  # one Ritz value per probe: no rest of the measure
        quantity = f"{quantity} (needs --steps >= 2)"
        na = row("free-convolution-outlier", quantity, math.nan, m.value, math.nan, "-", z, NA)
        return na, float("nan"), "-"
    bulk = without_extreme(result.full, side)
    fc, fc_regime, fc_fluct = free_convolution_law(result, side, lam, t, bulk)
    lo, hi = max(t - t_se, t * 1e-3), t + t_se
    fc_lo = free_convolution_extreme(*bulk, lam, lo, side)[0]
    fc_hi = free_convolution_extreme(*bulk, lam, hi, side)[0]
    fc_se = abs(fc_hi - fc_lo) / (hi - lo) * t_se
    unc = quad(fc_se, m.draw_term(fc_fluct, result.config.batch_draws), m.uncertainty)
    return row("free-convolution-outlier", quantity, fc, m.value, unc, fc_regime, z), fc, fc_regime


def extreme_rows(result: NetworkResult, B: int, t: float, t_se: float):
    """Theorem 2 and its free-convolution refinement for lambda_max and lambda_min of H_B.

    Returns (rows, sweep columns). The predictions start from the Lanczos extremes theta of
    H_emp; the uncertainty combines the prediction's standard error (sigma^2 through t, and
    theta's residual), the batch-draw fluctuation and the measurement's (probe standard error or
    Lanczos residual, the larger). With one draw (K = 1) the batch-draw term is the theory's
    fluctuation of one draw (Gaussian outlier of sd ``sqrt(2 s^2 overlap)``, Tracy-Widom edge of
    sd ``TW1_SD sqrt(t) P^(-2/3)``); with K > 1 the measured value is the mean over the draws
    and the term is the larger of the theory's fluctuation of a K-draw mean (that sd /
    sqrt(K)) and the standard error over the draws (both estimate the same spread, so they are
    not added; the larger guards a small K whose sample spread came out small), and the
    measurement term is the mean of the draws' (Lanczos errors are one-sided, so they do not
    average out).
    """
    c, z, K = result.config, result.config.z_crit, result.config.batch_draws
    batch = result.batches[B]
    # rounding floor: HVPs of the batch and of the full data sum in different orders
    scale = max(abs(result.full.extreme("max")[0]), abs(result.full.extreme("min")[0]))
    rounding = 10.0 * result.P * eps_of(c.dtype) * scale
    rows, columns = [], {}
    for side in ("max", "min"):
        lam, _, lam_res = result.full.extreme(side)
        predicted, regime, pred_se, fluct = theorem2_law(lam, lam_res, result, B, t, t_se)
        m = _measured(result, B, side, rounding)
        quantity = f"lambda_{side} batch B={B}"
        unc = quad(pred_se, m.draw_term(fluct, K), m.uncertainty)
        rows.append(row("theorem2", quantity, predicted, m.value, unc, regime, z))
        if K > 1:
            rows.append(spread_row(m.values, fluct, f"sd over batches of {quantity}", regime, z))
        fc, fc_regime = float("nan"), "-"
        if t > 0:
            fc_row, fc, fc_regime = _free_convolution_row(result, side, lam, t, t_se, quantity, m)
            rows.append(fc_row)
        exact = float("nan")
        if batch.exact is not None:
            exact = float(batch.exact[-1] if side == "max" else batch.exact[0])
        columns.update(
            {
                f"lambda_full_{side}": lam,
                f"regime_{side}": regime,
                f"predicted_{side}": predicted,
                f"predicted_{side}_se": pred_se,
                f"fc_predicted_{side}": fc,
                f"fc_regime_{side}": fc_regime,
                f"measured_{side}": m.value,
                f"measured_{side}_se": m.uncertainty,
                f"exact_{side}": exact,
            }
        )
        if K > 1:  # measured_* is the mean over draws, its se the draw SE with the Lanczos error
            columns[f"measured_{side}_se"] = quad(m.draw_se, m.uncertainty)
            columns[f"measured_{side}_draw_se"] = m.draw_se
    if K > 1:
        columns["batch_draws"] = K
    return rows, columns


def spread_row(values, sd: float, quantity: str, regime: str, z_crit: float) -> dict:
    """The batch-to-batch spread of an extreme eigenvalue against the theory's sd of one draw,
    by the spread rule (:func:`validation.checks.verdict.spread_verdict`): under the theory the K
    draws are independent with sd ``sd``, so ``(K - 1) s^2 / sd^2`` is chi-square with K - 1
    degrees of freedom. The uncertainty is the large-K standard error of s."""
    verdict, s, uncertainty = spread_verdict(values, sd, z_crit)
    return row("batch-spread", quantity, sd, s, uncertainty, regime, z_crit, verdict)
