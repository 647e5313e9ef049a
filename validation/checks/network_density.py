"""Spectral densities: the batch SLQ measure against (full-data measure) boxplus semicircle(t)
(Pastur's equation, ``rmt.freeconv``), and the noise measure against the semicircle of the paper's
assumption 3, each by the Wasserstein-1 distance against the SLQ resolution (the z rule with a
prediction of 0)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rmt import theory
from rmt.freeconv import free_convolution_density, free_convolution_support
from rmt.spectra import (
    slq_resolution,
    smooth_density,
    smoothing_width,
    wasserstein1_measure_to_density,
)
from validation.checks.rows import quad, row
from validation.network.config import DENSITY_POINTS
from validation.network.result import NetworkResult


def density_rows(result: NetworkResult, B: int, t: float, width: float):
    """Batch density against (full-data SLQ measure) boxplus semicircle(t), and the noise
    density against the semicircle, on shared grids of ``DENSITY_POINTS`` points.

    Returns (rows, curves as long frames, sweep columns). The W1 distances are between the raw
    SLQ measures and the predicted densities; their reference scale is the SLQ resolution of
    the measured measure (and of the full-data one, which the prediction inherits: free
    convolution with a fixed measure does not increase W1).
    """
    z = result.config.z_crit
    full, batch, noise = result.full, result.batches[B], result.noises[B]
    full_nodes, full_weights = full.pooled()
    batch_nodes, batch_weights = batch.pooled()
    lo = min(full_nodes.min(), batch_nodes.min())
    hi = max(full_nodes.max(), batch_nodes.max())
    if t > 0:
        support = free_convolution_support(full_nodes, full_weights, t)
        lo, hi = min(lo, support[0][0]), max(hi, support[-1][1])
    grid = np.linspace(lo - 5 * width, hi + 5 * width, DENSITY_POINTS)
    curves = {"batch measured": smooth_density(batch.nodes, batch.weights, grid, width)}
    rows, columns = [], {}
    if t > 0:
        curves["batch predicted"] = free_convolution_density(full_nodes, full_weights, t, grid)
        w1 = wasserstein1_measure_to_density(
            batch_nodes, batch_weights, grid, curves["batch predicted"]
        )
        reference = quad(
            slq_resolution(batch.nodes, batch.weights), slq_resolution(full.nodes, full.weights)
        )
        quantity = f"W1(batch SLQ measure, full boxplus semicircle) B={B}"
        rows.append(row("free-convolution", quantity, 0.0, w1, reference, "bulk", z))
        columns.update(density_w1=w1, density_w1_reference=reference)
    frames = [
        pd.DataFrame({"curve": k, "B": B, "x": grid, "density": v}) for k, v in curves.items()
    ]

    edge = 2.0 * math.sqrt(t)
    nodes = noise.nodes[noise.weights > 0]
    n_width = smoothing_width([noise.nodes], result.steps)
    lo, hi = min(float(nodes.min()), -edge), max(float(nodes.max()), edge)
    grid = np.linspace(lo - 5 * n_width, hi + 5 * n_width, DENSITY_POINTS)
    curves = {"noise measured": smooth_density(noise.nodes, noise.weights, grid, n_width)}
    if t > 0:
        curves["noise semicircle"] = theory.semicircle_density(grid, t)
        w1 = wasserstein1_measure_to_density(*noise.pooled(), grid, curves["noise semicircle"])
        reference = slq_resolution(noise.nodes, noise.weights)
        quantity = f"W1(noise SLQ measure, semicircle(t)) B={B}"
        rows.append(row("noise-semicircle", quantity, 0.0, w1, reference, "bulk", z))
    frames += [
        pd.DataFrame({"curve": k, "B": B, "x": grid, "density": v}) for k, v in curves.items()
    ]
    return rows, frames, columns
