"""All comparisons of a network run with theory: pure functions of the raw result
(:class:`validation.network.result.NetworkResult`), no Hessian-vector product, no torch.

:func:`compare` gathers the rows of every check -- sigma^2 estimators against each other, Lanczos
against the dense eigenvalues, Theorem 2 and free convolution for the extremes
(:mod:`validation.checks.network_extremes`), assumption 3 for the noise
(:mod:`validation.checks.network_noise`), the densities (:mod:`validation.checks.network_density`)
-- and the raw tables written beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.schema import tidy_frame
from rmt import theory
from rmt.spectra import slq_resolution, smooth_density, smoothing_width, wasserstein1_discrete
from validation.checks.curvature import BeyondGOE, beyond_goe
from validation.checks.network_density import density_rows
from validation.checks.network_extremes import extreme_rows
from validation.checks.network_noise import noise_checks
from validation.checks.rows import eps_of, quad, row
from validation.network.config import DENSITY_POINTS
from validation.network.result import NetworkResult, Spectrum


@dataclass(frozen=True)
class Tables:
    """The comparison tables written to the result folder."""

    summary: pd.DataFrame  # tidy rows (reports.schema.TIDY_COLUMNS), source "network"
    sweep: pd.DataFrame  # one row per B
    ritz: pd.DataFrame  # operator, B, probe, value, weight
    density: pd.DataFrame  # curve, B, x, density
    sigma2: pd.DataFrame  # estimator, value, ci_low, ci_high, probes
    assumption3: dict  # B -> verdict and its numbers
    sweep_law: dict  # which growth law lambda_max(B) follows
    batch_draws: pd.DataFrame  # B, draw, lambda_max, lambda_min: Lanczos extremes of each H_B
    # per-sample curvature and the batch-spectrum models (None with --curvature no)
    beyond_goe: BeyondGOE | None = None


def sigma2_rows(result: NetworkResult) -> list[dict]:
    """The cheap sigma^2 estimators against the per-sample one (paper eq. 9)."""
    ref = result.sigma2["per-sample"]
    return [
        row(
            "sigma2",
            f"sigma^2 {name} (B={result.sigma2_batch}) vs per-sample",
            ref.estimate,
            e.estimate,
            quad(ref.standard_error, e.standard_error),
            "-",
            result.config.z_crit,
        )
        for name, e in result.sigma2.items()
        if name != "per-sample"
    ]


def exact_rows(spec: Spectrum, label: str, *, eps: float, z: float) -> list[dict]:
    """Lanczos extremes and the SLQ measure against the dense eigenvalues (none without them).

    Uncertainty of an extreme: its Lanczos residual (some eigenvalue lies within it) and the
    rounding allowance 10 P eps ||H|| of the dense eigensolver and of the HVPs
    (tests/tolerances.py); of the measure: its SLQ resolution (:func:`slq_resolution`).
    """
    if spec.exact is None:
        return []
    P = spec.exact.size
    rounding = 10.0 * P * eps * float(np.max(np.abs(spec.exact)))
    rows = []
    for side in ("max", "min"):
        value, _, resid = spec.extreme(side)
        truth = spec.exact[-1] if side == "max" else spec.exact[0]
        unc = quad(resid, rounding)
        rows.append(row("lanczos-exact", f"lambda_{side} {label}", truth, value, unc, "-", z))
    w1 = wasserstein1_discrete(*spec.pooled(), spec.exact, np.full(P, 1.0 / P))
    resolution = slq_resolution(spec.nodes, spec.weights)
    quantity = f"W1(SLQ measure, exact eigenvalues) {label}"
    rows.append(row("slq-exact", quantity, 0.0, w1, resolution, "bulk", z))
    return rows


def compare(result: NetworkResult) -> Tables:
    """All comparisons of theory with measurement (pure: no Hessian-vector products)."""
    c, P, N, z = result.config, result.P, result.N, result.config.z_crit
    eps = eps_of(c.dtype)
    s2 = result.sigma2["per-sample"]
    rows = sigma2_rows(result) + exact_rows(result.full, "full", eps=eps, z=z)
    sizes = sorted(result.batches)
    width = smoothing_width(
        [s.nodes for s in (result.full, *result.batches.values())], result.steps
    )
    sweep, frames, assumption3 = [], [], {}
    for B in sizes:
        rows += exact_rows(result.batches[B], f"batch B={B}", eps=eps, z=z)
        rows += exact_rows(result.noises[B], f"noise B={B}", eps=eps, z=z)
        f = float(theory.FACTORS[c.factor](N, B))
        t = float(theory.noise_scale(s2.estimate, P, N, B, factor=c.factor))
        t_se = P * f * s2.standard_error  # t is linear in sigma^2
        entry = {"B": B, "f": f, "t": t, "t_se": t_se, "threshold": math.sqrt(t)}
        new_rows, columns = extreme_rows(result, B, t, t_se)
        rows += new_rows
        entry.update(columns)
        new_rows, columns, assumption3[B] = noise_checks(
            result.noises[B],
            t,
            t_se,
            P,
            B,
            N,
            z,
            extra_m2=result.extra_noise_m2.get(B, ()),
            exact_factor=float(theory.FACTORS["exact"](N, B)) / f if f > 0 else 1.0,
        )
        rows += new_rows
        entry.update(columns)
        new_rows, curves, columns = density_rows(result, B, t, width)
        rows += new_rows
        frames += curves
        entry.update(columns)
        sweep.append(entry)

    sweep = pd.DataFrame(sweep)
    sweep_law = growth_law(sweep, s2.estimate, P)
    if "edge_law_max" in sweep_law:
        sweep["edge_law_max"] = sweep_law.pop("edge_law_max")
        sweep["outlier_law_max"] = sweep_law.pop("outlier_law_max")
    nodes = result.full.nodes[result.full.weights > 0]
    grid = np.linspace(nodes.min() - 5 * width, nodes.max() + 5 * width, DENSITY_POINTS)
    full_curve = smooth_density(result.full.nodes, result.full.weights, grid, width)
    frames.insert(0, pd.DataFrame({"curve": "full", "B": pd.NA, "x": grid, "density": full_curve}))
    density = pd.concat(frames, ignore_index=True)
    density["B"] = density["B"].astype("Int64")
    beyond = beyond_goe(result, dict(zip(sweep["B"], sweep["t"], strict=True)))
    if beyond is not None:
        rows += beyond.rows
    return Tables(
        summary=tidy_frame(rows),
        sweep=sweep,
        ritz=ritz_table(result),
        density=density,
        sigma2=sigma2_table(result.sigma2),
        assumption3=assumption3,
        sweep_law=sweep_law,
        batch_draws=batch_draws_table(result),
        beyond_goe=beyond,
    )


def batch_draws_table(result: NetworkResult) -> pd.DataFrame:
    """``batch_draws.csv``: the Lanczos extremes of H_B for every B and draw (draw 0: the batch
    of ritz.csv, best over its probes; draws 1..K-1: one probe each)."""
    rows = []
    for B in sorted(result.batches):
        top, _ = result.draw_extremes(B, "max")
        bottom, _ = result.draw_extremes(B, "min")
        for draw, (hi, lo) in enumerate(zip(top, bottom, strict=True)):
            rows.append({"B": B, "draw": draw, "lambda_max": float(hi), "lambda_min": float(lo)})
    return pd.DataFrame(rows, columns=["B", "draw", "lambda_max", "lambda_min"])


def growth_law(sweep: pd.DataFrame, sigma2: float, P: int) -> dict:
    """Which law lambda_max(B) follows across the batch sizes, by least squares.

    Edge law: ``lambda_max = c_e sqrt(f)`` (Theorem 2 below the threshold, c_e = 2 sqrt(P
    sigma^2); ~ B^(-1/2) for B << N). Outlier law: ``lambda_max = theta + c_o f`` (above it,
    c_o = P sigma^2 / theta; saturates at theta as B grows). Each has one free constant; the law
    with the smaller residual sum of squares is named. Also the log-log slope of lambda_max
    against f (edge: 1/2, saturating: -> 0) over the batch sizes with B < N and lambda_max > 0
    (NaN with fewer than two). Needs two batch sizes.
    """
    if len(sweep) < 2:
        return {"law": "not applicable (one batch size)"}
    f = sweep["f"].to_numpy()
    lam = sweep["measured_max"].to_numpy()
    theta = float(sweep["lambda_full_max"].iloc[0])
    root = np.sqrt(f)
    c_edge = float(root @ lam / (root @ root))
    c_out = float(f @ (lam - theta) / (f @ f))
    edge_fit, out_fit = c_edge * root, theta + c_out * f
    rss_edge = float(np.sum((lam - edge_fit) ** 2))
    rss_out = float(np.sum((lam - out_fit) ** 2))
    logs = (f > 0) & (lam > 0)  # B = N has f = 0: no noise, no point on the log-log line
    fit = logs.sum() >= 2
    slope = float(np.polyfit(np.log(f[logs]), np.log(lam[logs]), 1)[0]) if fit else math.nan
    law = "edge law (~ B^-1/2)" if rss_edge < rss_out else "saturates toward the outlier"
    return {
        "law": law,
        "rss_edge": rss_edge,
        "rss_outlier": rss_out,
        "edge_constant_fitted": c_edge,
        "edge_constant_predicted": 2.0 * math.sqrt(P * sigma2),
        "outlier_constant_fitted": c_out,
        "outlier_constant_predicted": P * sigma2 / theta if theta != 0 else float("nan"),
        "loglog_slope_vs_f": slope,
        "edge_law_max": edge_fit,
        "outlier_law_max": out_fit,
    }


def ritz_table(result: NetworkResult) -> pd.DataFrame:
    """Raw Ritz values and Gauss weights: operator, B (empty for full), probe, value, weight."""
    frames = []
    for spec in [result.full, *result.batches.values(), *result.noises.values()]:
        probes, steps = spec.nodes.shape
        keep = np.isfinite(spec.nodes)  # every Ritz value; NaN pads runs that broke down early
        probe = np.repeat(np.arange(probes), steps).reshape(probes, steps)
        frames.append(
            pd.DataFrame(
                {
                    "operator": spec.operator,
                    "B": spec.B if spec.B is not None else pd.NA,
                    "probe": probe[keep],
                    "value": spec.nodes[keep],
                    "weight": spec.weights[keep],
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table["B"] = table["B"].astype("Int64")
    return table


def sigma2_table(estimates: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "estimator": name,
                "value": e.estimate,
                "ci_low": e.ci_low,
                "ci_high": e.ci_high,
                "probes": e.probes,
            }
            for name, e in estimates.items()
        ],
        columns=["estimator", "value", "ci_low", "ci_high", "probes"],
    )
