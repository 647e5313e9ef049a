r"""Which model explains the batch spectrum? lambda_max(H_B) over random batches against M0-M4.

Measured (per B): the K batch draws' Lanczos lambda_max (``NetworkResult.draw_extremes``;
exact to the Lanczos residual, ~1e-12 relative on the default network): mean +- SE, sd +- its
large-K SE ``s / sqrt(2 (K - 1))``, and the 10% and 90% quantiles with distribution-free 95%
intervals from order statistics (:func:`quantile_interval`).

Models, each predicting from full-data quantities unless marked:

* **M0** Theorem 2 (GOE noise; paper, section 3): ``theorem2`` with its one-draw fluctuation
  (Gaussian outlier, Tracy-Widom edge; quantiles from a Gaussian of that sd: an approximation at
  the edge);
* **M1** the GOE free convolution: the spike theta on the rest of the full-data SLQ measure
  boxplus semicircle(t) (:func:`validation.checks.network_extremes.free_convolution_extreme`);
* **M2** extreme values (:func:`rmt.extreme_model.extreme_value_model`): H_emp's spike plus the
  hardest sample of the batch, ``kappa_(1) / B``, with its measured overlap; its law over batches
  drawn without replacement is exact under the model (order statistics);
* **M3** free compound Poisson (:func:`rmt.free_poisson.fcp_batch_spectrum`): the noise as the
  free sum of B rescaled per-sample GGN pieces (centred), boxplus the full-data measure, with the
  spike theta; a free limit: no fluctuation predicted;
* **M4** generalised BBP with the measured noise law (Baskerville et al. 2022;
  :mod:`rmt.subordination`): the full-data measure boxplus the SLQ measure of N_B of draw 0 -- it
  uses a batch; it separates "the noise is not GOE" from "the noise is not free of H_emp".

Every row: check ``batch-model``, the verdict by the one rule (z rule for the mean and the sd;
the bound rule on both sides for a quantile against its interval). :func:`goal_summary` says per
model whether it reaches the issue's goal (mean within 10%, sd within 30% at every B, both
quantiles inside their intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from rmt.extreme_model import extreme_value_model
from rmt.free_poisson import fcp_batch_spectrum
from rmt.spectra import slq_resolution
from rmt.subordination import discrete_r_transform, subordination_edge, subordination_outliers
from validation.checks.network_extremes import (
    free_convolution_law,
    theorem2_law,
    without_extreme,
)
from validation.checks.rows import row
from validation.checks.verdict import NOT_APPLICABLE, interval_verdict
from validation.network.result import NetworkResult

MODELS = {
    "M0": "Theorem 2 (GOE)",
    "M1": "GOE free convolution",
    "M2": "extreme values",
    "M3": "free compound Poisson",
    "M4": "measured noise law (draw 0)",
}
QUANTILES = (0.1, 0.9)
GOAL = {"mean": 0.10, "sd": 0.30}  # the goal: relative errors at every B
Z90 = float(stats.norm.ppf(0.9))


@dataclass(frozen=True)
class Prediction:
    """One model's law of lambda_max(H_B) over batches (NaN where it predicts nothing)."""

    model: str
    mean: float
    sd: float
    q10: float
    q90: float


def quantile_interval(values, q: float, level: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the sample q-quantile and the distribution-free interval
    ``[x_(l), x_(u)]`` whose coverage is >= ``level`` (the number of draws below the true
    quantile is Binomial(K, q); Conover, *Practical Nonparametric Statistics*, 3.2). Ends beyond
    the sample are -inf / +inf."""
    x = np.sort(np.asarray(values, dtype=float))
    K = x.size
    alpha = 1.0 - level
    lo_rank = int(stats.binom.ppf(alpha / 2, K, q))  # x_(lo_rank) with 1-based ranks
    hi_rank = int(stats.binom.ppf(1 - alpha / 2, K, q)) + 1
    low = x[lo_rank - 1] if lo_rank >= 1 else -math.inf
    high = x[hi_rank - 1] if hi_rank <= K else math.inf
    return float(np.quantile(x, q)), float(low), float(high)


def _gaussian(model: str, mean: float, sd: float) -> Prediction:
    return Prediction(model, mean, sd, mean - Z90 * sd, mean + Z90 * sd)


def _goe_models(result: NetworkResult, B: int, t: float) -> list[Prediction]:
    """M0 and M1, with the one-draw fluctuations of validation.checks.network_extremes."""
    lam, _, lam_res = result.full.extreme("max")
    predicted, _, _, sd0 = theorem2_law(lam, lam_res, result, B, t, 0.0)
    out = [_gaussian("M0", predicted, sd0)]
    if t > 0 and result.steps >= 2:
        fc, _, sd1 = free_convolution_law(result, "max", lam, t)
        out.append(_gaussian("M1", fc, sd1))
    return out


def _free_models(result: NetworkResult, B: int) -> list[Prediction]:
    """M3 and M4: deterministic free limits (the top edge or the spike's outlier)."""
    stage = result.curvature
    theta = stage.full_top
    # rmt's solvers sort and validate the discrete measures themselves (check_measure)
    nodes, weights = without_extreme(result.full, "max")
    lo, hi = float(nodes.min()), float(nodes.max())
    eta = slq_resolution(result.full.nodes, result.full.weights)
    eta = eta if np.isfinite(eta) and eta > 0 else 1e-3 * (hi - lo)
    grid = np.linspace(lo, hi, 3)  # the density is not needed: edge and outlier
    fcp = fcp_batch_spectrum(nodes, weights, stage.table.eigenvalues, B, result.P, grid, eta,
                             spikes=(theta,))  # fmt: skip
    m3 = fcp.outliers[0] if np.isfinite(fcp.outliers[0]) else fcp.edge
    noise_nodes, noise_weights = result.noises[B].pooled()
    r_noise = discrete_r_transform(noise_nodes, noise_weights)
    edge, g_star = subordination_edge(nodes, weights, r_noise)
    outlier = subordination_outliers(nodes, weights, r_noise, g_star, [theta])[0]
    m4 = outlier if np.isfinite(outlier) else edge
    nan = float("nan")
    return [Prediction("M3", float(m3), nan, nan, nan), Prediction("M4", float(m4), nan, nan, nan)]


def predictions(result: NetworkResult, B: int, t: float) -> list[Prediction]:
    """Every model's prediction for batch size B (M2-M4 need the curvature stage)."""
    out = _goe_models(result, B, t)
    stage = result.curvature
    if stage is not None and stage.table.top_overlaps is not None and len(stage.table.top) >= B:
        table = stage.table
        # a sample with G_i = 0 has no top eigenvector (overlap NaN): its piece is 0 anyway
        overlaps = np.nan_to_num(table.top_overlaps, nan=0.0)
        m2 = extreme_value_model(stage.full_top, table.top, overlaps, B)
        out.append(Prediction("M2", m2.mean, m2.sd, m2.q10, m2.q90))
        if B < result.N and result.steps >= 2 and float(np.max(table.top)) > 0:
            out += _free_models(result, B)
    return out


def _rows_for(pred: Prediction, measured: dict, B: int, z: float) -> list[dict]:
    label = f"B={B} [{pred.model} {MODELS[pred.model]}]"
    mean, mean_se = measured["mean"], measured["mean_se"]
    rows = [row("batch-model", f"mean lambda_max {label}", pred.mean, mean, mean_se, "-", z)]
    sd, sd_se = measured["sd"], measured["sd_se"]
    if math.isfinite(pred.sd):
        rows.append(row("batch-model", f"sd of lambda_max {label}", pred.sd, sd, sd_se, "-", z))
    else:
        quantity = f"sd of lambda_max {label} [free limit: no fluctuation predicted]"
        rows.append(row("batch-model", quantity, pred.sd, sd, sd_se, "-", z, NOT_APPLICABLE))
    for q in QUANTILES:
        estimate, low, high = measured[f"q{round(100 * q)}"]
        predicted = pred.q10 if q == 0.1 else pred.q90
        quantity = (
            f"{round(100 * q)}% quantile of lambda_max {label} [95% interval {low:.4g}, {high:.4g}]"
        )
        verdict = interval_verdict(predicted, low, high)
        rows.append(row("batch-model", quantity, predicted, estimate, math.nan, "-", z, verdict))
    return rows


def measured_law(values) -> dict:
    """Mean, sd (with their SEs) and the 10%/90% quantiles with intervals of the K draws."""
    values = np.asarray(values, dtype=float)
    K = values.size
    sd = float(values.std(ddof=1)) if K > 1 else float("nan")
    law = {
        "K": K,
        "mean": float(values.mean()),
        "mean_se": sd / math.sqrt(K) if K > 1 else float("nan"),
        "sd": sd,
        "sd_se": sd / math.sqrt(2.0 * (K - 1)) if K > 1 else float("nan"),
    }
    for q in QUANTILES:
        law[f"q{round(100 * q)}"] = quantile_interval(values, q)
    return law


def batch_model_rows(result: NetworkResult, B: int, t: float):
    """``(rows, table rows)`` for batch size B: the tidy rows and one record per model with the
    predicted and measured law and the relative errors of mean and sd."""
    measured = measured_law(result.draw_extremes(B, "max")[0])
    rows, records = [], []
    for pred in predictions(result, B, t):
        rows += _rows_for(pred, measured, B, result.config.z_crit)
        records.append(_record(pred, measured, B))
    return rows, records


def _record(pred: Prediction, measured: dict, B: int) -> dict:
    q10, q90 = measured["q10"], measured["q90"]
    return {
        "B": B,
        "model": pred.model,
        "name": MODELS[pred.model],
        "predicted_mean": pred.mean,
        "predicted_sd": pred.sd,
        "predicted_q10": pred.q10,
        "predicted_q90": pred.q90,
        "draws": measured["K"],
        "measured_mean": measured["mean"],
        "measured_mean_se": measured["mean_se"],
        "measured_sd": measured["sd"],
        "measured_sd_se": measured["sd_se"],
        "measured_q10": q10[0],
        "measured_q10_low": q10[1],
        "measured_q10_high": q10[2],
        "measured_q90": q90[0],
        "measured_q90_low": q90[1],
        "measured_q90_high": q90[2],
        "mean_rel_error": pred.mean / measured["mean"] - 1.0,
        "sd_rel_error": pred.sd / measured["sd"] - 1.0 if measured["sd"] > 0 else float("nan"),
        "q10_inside": interval_verdict(pred.q10, q10[1], q10[2]) == "agrees",
        "q90_inside": interval_verdict(pred.q90, q90[1], q90[2]) == "agrees",
    }


def goal_summary(table) -> dict:
    """Per model, one plain sentence: does it reach the goal (mean within 10%, sd within 30% at
    every B, both quantiles inside their intervals), and where not, by how much."""
    sentences = {}
    for model, part in table.groupby("model", sort=True):
        worst_mean = part.loc[part.mean_rel_error.abs().idxmax()]
        parts = [f"mean off by up to {100 * abs(worst_mean.mean_rel_error):.0f}% "
                 f"(B={int(worst_mean.B)})"]  # fmt: skip
        ok = bool((part.mean_rel_error.abs() <= GOAL["mean"]).all())
        if part.sd_rel_error.notna().all():
            worst_sd = part.loc[part.sd_rel_error.abs().idxmax()]
            parts.append(
                f"sd off by up to {100 * abs(worst_sd.sd_rel_error):.0f}% (B={int(worst_sd.B)})"
            )
            ok &= bool((part.sd_rel_error.abs() <= GOAL["sd"]).all())
            inside = int(part.q10_inside.sum() + part.q90_inside.sum())
            parts.append(f"{inside} of {2 * len(part)} quantiles inside their intervals")
            ok &= inside == 2 * len(part)
        else:
            parts.append("no spread predicted (a free limit)")
            ok = False
        verdict = "reaches the goal" if ok else "misses the goal"
        sentences[model] = f"{model} {MODELS[model]} {verdict}: " + "; ".join(parts) + "."
    return sentences
