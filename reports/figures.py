"""Figures built from stored results. Each takes an ``ax`` and draws on it; nothing here computes
a number that is not already in the results, except theory curves from ``rmt.theory``.

Built on ``matplotlib.figure.Figure`` without pyplot (no global state, no display needed).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from rmt import theory

MEASURED = "#1f77b4"
PREDICTED = "#d62728"


def new_figure(ncols: int = 1, *, width: float = 5.5, height: float = 4.0):
    """A pyplot-free figure with ``ncols`` axes side by side; returns (fig, axes)."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def bbp_transition(ax, sweep, *, t: float, P: int):
    """Measured top eigenvalue (mean +- sd) against spike size, with Theorem 2 overlaid.

    ``sweep`` is a table with columns ``spike``, ``measured_mean``, ``measured_sd``.
    """
    root = float(np.sqrt(t))
    theta = np.linspace(0.0, float(sweep["spike"].max()) * 1.05 + 1e-12, 400)
    curve = np.where(theta > root, theory.bbp_outlier(np.maximum(theta, root), t), 2 * root)
    ax.plot(theta / root, curve / root, color=PREDICTED, label="Theorem 2 (BBP)")
    ax.errorbar(
        sweep["spike"] / root,
        sweep["measured_mean"] / root,
        yerr=sweep["measured_sd"] / root,
        fmt="o",
        ms=4,
        color=MEASURED,
        label=f"measured (P = {P:,}), mean +- sd",
    )
    ax.axvline(1.0, color="grey", ls=":", lw=1, label="threshold theta = sqrt(t)")
    ax.set_xlabel("spike theta / sqrt(t)")
    ax.set_ylabel("largest eigenvalue / sqrt(t)")
    ax.set_title("BBP transition")
    ax.legend(fontsize=8)


def spectrum_histogram(ax, eigenvalues, grid, density, *, label: str, outliers=(), bins=60):
    """Histogram of eigenvalues against a predicted density; predicted outliers as markers."""
    ax.hist(
        eigenvalues,
        bins=bins,
        density=True,
        color=MEASURED,
        alpha=0.5,
        label=f"eigenvalues ({len(eigenvalues):,})",
    )
    ax.plot(grid, density, color=PREDICTED, lw=1.5, label=label)
    for i, x in enumerate(outliers):
        ax.axvline(x, color=PREDICTED, ls="--", lw=1, label="predicted outlier" if i == 0 else None)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def weyl_slack(ax, weyl):
    """Per draw: the largest extreme-eigenvalue shift against ||W||_2 and the paper's eq. 7.

    ``weyl`` is a table with columns ``max_shift``, ``exact_bound``, ``paper_bound``.
    """
    draws = np.arange(len(weyl))
    ax.plot(
        draws, weyl["max_shift"], ".", color=MEASURED, label="max |lambda_i(A+W) - lambda_i(A)|"
    )
    ax.plot(draws, weyl["exact_bound"], "-", color=PREDICTED, lw=1, label="Weyl: ||W||_2")
    ax.plot(draws, weyl["paper_bound"], "--", color="black", lw=1, label="paper eq. 7: s^2")
    ax.set_yscale("log")
    ax.set_xlabel("draw")
    ax.set_ylabel("eigenvalue shift")
    ax.set_title("Weyl bounds per draw")
    ax.legend(fontsize=8)
