"""The noise matrix N_B = H_B - H_emp against the paper's assumption 3 (GOE of noise scale t):
edges, asymmetry, skewness and kurtosis of its spectrum, and the law-free identity
E tr(N_B^2)/P = t behind the noise scale."""

from __future__ import annotations

import math

import numpy as np

from rmt import theory
from rmt.spectra import jackknife, raw_moments, shape_statistics
from validation.checks.rows import quad, row
from validation.checks.verdict import NOT_APPLICABLE as NA
from validation.network.result import Spectrum


def _goe_rows(noise: Spectrum, t: float, t_se: float, P: int, z: float, label: str):
    """The noise spectrum's edges, asymmetry, skewness and kurtosis against GOE's:
    (rows, (asymmetry, skewness, kurtosis), per-probe raw moments)."""
    nmax, nmax_se, nmax_res = noise.extreme("max")
    nmin, nmin_se, nmin_res = noise.extreme("min")
    edge = 2.0 * math.sqrt(t)
    tw = float(theory.edge_scale(t, P)) * theory.TW1_SD
    edge_se = t_se / math.sqrt(t)
    rows = []
    for side, value, se, res, target in (
        ("max", nmax, nmax_se, nmax_res, edge),
        ("min", nmin, nmin_se, nmin_res, -edge),
    ):
        unc = quad(edge_se, tw, max(v for v in (se, res, 0.0) if np.isfinite(v)))
        rows.append(row("noise-edge", f"lambda_{side} {label}", target, value, unc, "edge", z))
    width = nmax - nmin
    asym = (nmax + nmin) / width
    # GOE: each edge fluctuates by tw independently, so (d_max + d_min) / width has sd
    # sqrt(2) tw / width; the probes' spread of the extremes adds in quadrature.
    spread = quad(nmax_se, nmin_se, nmax_res, nmin_res) / width
    quantity = f"(lambda_max + lambda_min) / (lambda_max - lambda_min) {label}"
    unc = quad(math.sqrt(2.0) * tw / width, spread)
    rows.append(row("noise-asymmetry", quantity, 0.0, asym, unc, "-", z))
    per_probe = raw_moments(noise.nodes, noise.weights)
    (skew, kurt), (skew_se, kurt_se) = jackknife(per_probe, shape_statistics)
    rows.append(
        row("noise-skewness", f"third standardised moment {label}", 0.0, skew, skew_se, "-", z)
    )
    rows.append(
        row("noise-kurtosis", f"fourth standardised moment {label}", 2.0, kurt, kurt_se, "-", z)
    )
    return rows, (asym, float(skew), float(kurt)), per_probe


def _variance_row(m2: float, extra_m2, t_var: float, t_var_se: float, z: float, label: str):
    """The mean of tr(N_B^2)/P over the K draws against t (law-free): (row, draws)."""
    draws = np.array([m2, *(float(np.mean(x)) for x in extra_m2)])
    K = draws.size
    quantity = f"tr(N^2)/P, mean of {K} batch draw{'s' if K > 1 else ''} {label}"
    if K > 1:
        se = quad(float(draws.std(ddof=1) / math.sqrt(K)), t_var_se)
        return row("noise-variance", quantity, t_var, float(draws.mean()), se, "-", z), draws
    # one batch: its deviation from the mean over batches is not estimated
    return row("noise-variance", quantity, t_var, m2, math.nan, "-", z, verdict=NA), draws


def noise_checks(
    noise: Spectrum,
    t: float,
    t_se: float,
    P: int,
    B: int,
    N: int,
    z: float,
    *,
    extra_m2=(),
    exact_factor: float = 1.0,
):
    """Rows testing the paper's assumption 3 (N_B is GOE of noise scale t) on the noise spectrum.

    Returns (rows, sweep columns, verdict): the verdict is "holds" when the edges, the asymmetry,
    the skewness and the kurtosis all agree with GOE, else "violated" with the numbers.

    Also the law-free identity behind t: over batches drawn without replacement,
    ``E tr(N_B^2) / P = f(N, B) (1/N) sum_i ||H_i - H_emp||_F^2 / P = P f sigma^2 = t`` (exact
    finite-population factor; sigma^2 as paper eq. 9). Its row compares the mean of
    tr(N_B^2)/P over the K batch draws (draw 0: SLQ's quadrature; ``extra_m2``: draws 1..K-1,
    the same probes' ``||N_B q||^2``) with t times ``exact_factor`` (the exact factor over the
    one t was computed with; 1 for ``--factor exact``); the standard error is the spread over
    draws (batch and probe variation) / sqrt(K), with t's own in quadrature. One draw: no verdict.
    """
    label = f"noise B={B}"
    nmax, nmin = noise.extreme("max")[0], noise.extreme("min")[0]
    edge = 2.0 * math.sqrt(t)
    columns = {"noise_max": nmax, "noise_min": nmin, "goe_edge": edge}
    if B == N or t == 0:  # no noise at all: nothing to compare
        return [], columns, {}
    rows, (asym, skew, kurt), per_probe = _goe_rows(noise, t, t_se, P, z, label)
    failed = sorted({r["check"] for r in rows if r["verdict"].startswith("disagrees")})
    m2 = float(per_probe[:, 1].mean())
    variance, draws = _variance_row(m2, extra_m2, t * exact_factor, t_se * exact_factor, z, label)
    rows.append(variance)
    ratio_max, ratio_min = nmax / edge, -nmin / edge
    verdict = "violated" if failed else "holds"
    numbers = (
        f"edges {ratio_max:.3g}x / {ratio_min:.3g}x the GOE edge 2 sqrt(t), asymmetry "
        f"{asym:+.3g}, skewness {skew:+.3g}, kurtosis {kurt:.3g} (GOE: 1x, 0, 0, 2)"
    )
    columns.update(
        noise_asymmetry=asym,
        noise_skewness=skew,
        noise_kurtosis=kurt,
        noise_m2=m2,
        noise_m2_mean=float(draws.mean()),
    )
    return (
        rows,
        columns,
        {
            "verdict": verdict,
            "failed_checks": failed,
            "edge_ratio_max": ratio_max,
            "edge_ratio_min": ratio_min,
            # the edges in units of the batch's own semicircle edge 2 sqrt(tr(N^2)/P): shape only
            "edge_ratio_max_own_scale": nmax / (2.0 * math.sqrt(m2)),
            "edge_ratio_min_own_scale": -nmin / (2.0 * math.sqrt(m2)),
            "asymmetry": asym,
            "skewness": skew,
            "kurtosis": kurt,
            "second_moment_over_t": m2 / t,
            "summary": f"assumption 3 {verdict} at B={B}: {numbers}",
        },
    )
