"""Beyond the GOE: the per-sample curvature behind the batch spectrum, its local statistics, and
which model of lambda_max(H_B) holds (:mod:`validation.checks.batch_models`).

* per-sample table and summary: the top GGN eigenvalue of every sample, quantiles, Hill's tail
  index (:func:`rmt.tails.hill_estimate`) -- measurements, no verdict;
* the exact batch GGN (Gram route) against Lanczos on H_B of the same batch: lambda_max(G_B) <=
  lambda_max(H_B) + ||H_B - G_B|| -- reported with the residual share, no verdict;
* level spacings: the mean ratio of consecutive spacings <r~> (Atas et al., PRL 2013) of the dense
  spectra (H_emp, and per B the H_B and N_B of draw 0) in the bulk, against GOE 0.5307 and Poisson
  0.3863; one spectrum each, so no standard error is claimed (``not applicable``);
* the models M0-M4 per B (needs ``--batch-draws K >= 2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rmt.spacing import mean_spacing_ratio
from validation.checks.batch_models import batch_model_rows, goal_summary
from validation.checks.rows import row
from validation.checks.verdict import NOT_APPLICABLE
from validation.network.result import NetworkResult

GOE_SPACING, POISSON_SPACING = 0.5307, 2 * np.log(2) - 1
SPACING_BULK = 0.1  # fraction of levels dropped at each end (edges follow other laws)


@dataclass(frozen=True)
class BeyondGOE:
    """Rows and tables of the per-sample curvature and the batch-spectrum models."""

    rows: list  # tidy rows
    per_sample: pd.DataFrame  # index, label, loss, top_ggn, trace_ggn, top_overlap
    batch_models: pd.DataFrame  # one record per (B, model): validation.checks.batch_models
    goal: dict  # model -> one plain sentence
    summary: dict  # curvature summary for results.json


def per_sample_table(table) -> pd.DataFrame:
    """``per_sample.csv``: one row per measured sample."""
    overlaps = table.top_overlaps if table.top_overlaps is not None else np.nan
    return pd.DataFrame(
        {
            "index": table.indices,
            "label": table.labels,
            "loss": table.losses,
            "top_ggn": table.top,
            "trace_ggn": table.trace,
            "top_overlap": overlaps,
        }
    )


def curvature_record(result: NetworkResult) -> dict:
    """The curvature summary for ``results.json``."""
    stage = result.curvature
    s = stage.summary
    return {
        "samples": s.n,
        "subset_size": s.subset_size,
        "quantile_levels": list(s.quantile_levels),
        "top_ggn_quantiles": [float(v) for v in s.quantiles],
        "top_ggn_max": s.maximum,
        "top_ggn_mean": s.mean_top,
        "trace_ggn_mean": s.mean_trace,
        "hill_alpha": s.hill.alpha,
        "hill_interval": [s.hill.ci_low, s.hill.ci_high],
        "hill_k": s.hill.k,
        "full_top": stage.full_top,
        "residual_share": stage.residual_share,
        "batch_ggn_top": {str(B): float(ev[0]) for B, ev in stage.batch_ggn.items()},
    }


def spacing_rows(result: NetworkResult, z: float) -> list[dict]:
    """<r~> of every dense spectrum of the run (none without the exact check)."""
    spectra = [("H_emp", result.full.exact)]
    for B in sorted(result.batches):
        spectra += [(f"H_B B={B}", result.batches[B].exact), (f"N_B B={B}", result.noises[B].exact)]
    rows = []
    for label, eigs in spectra:
        if eigs is None or np.ptp(eigs) == 0:  # B = N: the noise is exactly zero
            continue
        r = mean_spacing_ratio([eigs], bulk_fraction=SPACING_BULK).mean
        quantity = (
            f"mean spacing ratio <r~> {label} [bulk; Poisson {POISSON_SPACING:.4f}; one spectrum: "
            "no standard error]"
        )
        rows.append(
            row("level-spacing", quantity, GOE_SPACING, r, np.nan, "bulk", z, NOT_APPLICABLE)
        )
    return rows


def ggn_rows(result: NetworkResult, z: float) -> list[dict]:
    """lambda_max of the exact batch GGN (Gram route) beside Lanczos' lambda_max(H_B)."""
    stage = result.curvature
    share = stage.residual_share
    note = f"residual share {share:.3g}" if share is not None else "residual not measured"
    rows = []
    for B, eigenvalues in sorted(stage.batch_ggn.items()):
        lanczos = result.batches[B].extreme("max")[0]
        quantity = f"lambda_max(G_B) Gram route vs lambda_max(H_B) Lanczos B={B} [{note}]"
        rows.append(
            row(
                "ggn-gram", quantity, float(eigenvalues[0]), lanczos, np.nan, "-", z, NOT_APPLICABLE
            )
        )
    return rows


def beyond_goe(result: NetworkResult, noise_scales: dict) -> BeyondGOE | None:
    """Everything of the module docstring; None with ``--curvature no``. ``noise_scales``: B ->
    t of the run (the same t the Theorem 2 rows use)."""
    if result.curvature is None:
        return None
    z = result.config.z_crit
    rows = ggn_rows(result, z) + spacing_rows(result, z)
    records = []
    if result.config.batch_draws > 1:
        for B in sorted(result.batches):
            new_rows, new_records = batch_model_rows(result, B, noise_scales[B])
            rows += new_rows
            records += new_records
    table = pd.DataFrame(records)
    goal = goal_summary(table) if len(table) else {}
    return BeyondGOE(
        rows, per_sample_table(result.curvature.table), table, goal, curvature_record(result)
    )
