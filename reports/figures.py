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


# ---------------------------------------------------------------------------------------------
# report figures (reports.report): drawn from values stored in results.json, nothing recomputed


def sigma2_over_epochs(ax, table):
    """sigma^2 (paper, eq. 9) against the training epoch, one line per series, with its interval.

    ``table`` has columns ``series`` (e.g. "vgg16 / cifar100, hutchinson"), ``epoch``, ``value``,
    ``ci_low`` and ``ci_high`` (NaN where a run stored no interval); one point per network run.
    """
    for series, group in table.groupby("series", sort=False):
        group = group.sort_values("epoch")
        epochs = group["epoch"].to_numpy(dtype=float)
        value = group["value"].to_numpy(dtype=float)
        low = group["ci_low"].to_numpy(dtype=float)
        high = group["ci_high"].to_numpy(dtype=float)
        has_ci = np.isfinite(low) & np.isfinite(high)
        (line,) = ax.plot(epochs, value, "o-", ms=4, label=str(series))
        if has_ci.any():
            ax.errorbar(
                epochs[has_ci],
                value[has_ci],
                yerr=np.vstack([value[has_ci] - low[has_ci], high[has_ci] - value[has_ci]]),
                fmt="none",
                ecolor=line.get_color(),
                capsize=3,
            )
    ax.set_xlabel("training epoch")
    ax.set_ylabel("sigma^2 (paper, eq. 9)")
    ax.set_title("sigma^2 over epochs (bars: stored confidence interval)")
    ax.legend(fontsize=8)


# ---------------------------------------------------------------------------------------------
# network runs (validation.network): drawn from ritz.csv, density.csv and sweep.csv as stored


NETWORK_FULL = "#7f7f7f"


def ritz_full_vs_batch(ax, ritz, *, B: int):
    """Weighted Ritz values of H_emp and of H_B (the paper's Figures 1 and 2, overlaid).

    ``ritz`` has columns ``operator`` ("full", "batch", "noise"), ``B`` (empty for full),
    ``probe``, ``value`` and ``weight``: each Ritz value of each probe is drawn at its Gauss
    weight (log scale), so converged outliers sit on top and the bulk spreads below.
    """
    full = ritz[ritz["operator"] == "full"]
    batch = ritz[(ritz["operator"] == "batch") & (ritz["B"] == B)]
    for frame, color, label, marker in (
        (full, NETWORK_FULL, "full data H_emp", "o"),
        (batch, MEASURED, f"batch H_B, B = {B}", "x"),
    ):
        value = frame["value"].to_numpy(dtype=float)
        weight = frame["weight"].to_numpy(dtype=float)
        keep = weight > 0
        ax.vlines(value[keep], weight[keep].min(), weight[keep], color=color, lw=0.4, alpha=0.5)
        ax.plot(value[keep], weight[keep], marker, ms=3, color=color, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("Ritz value (eigenvalue of the Hessian)")
    ax.set_ylabel("Gauss weight")
    ax.set_title(f"weighted Ritz values, B = {B}")
    ax.legend(fontsize=8)


def _curve(density, name, B=None):
    rows = density[density["curve"] == name]
    if B is not None:
        rows = rows[rows["B"] == B]
    return rows["x"].to_numpy(dtype=float), rows["density"].to_numpy(dtype=float)


def _log_density_axis(ax, *curves):
    top = max((float(np.max(y)) for _, y in curves if len(y)), default=1.0)
    ax.set_yscale("log")
    ax.set_ylim(max(top, 1e-300) * 1e-6, top * 3)


def batch_density(ax, density, *, B: int):
    """Measured batch density (smoothed SLQ) against the free-convolution prediction.

    ``density`` has columns ``curve``, ``B``, ``x``, ``density``; the prediction is
    (full-data SLQ measure) boxplus semicircle(t), the full-data density is shown for reference.
    """
    full = _curve(density, "full")
    measured = _curve(density, "batch measured", B)
    predicted = _curve(density, "batch predicted", B)
    ax.plot(*full, color=NETWORK_FULL, lw=1, label="full data (SLQ, smoothed)")
    ax.plot(*measured, color=MEASURED, lw=1.5, label=f"batch B = {B} (SLQ, smoothed)")
    if len(predicted[0]):
        ax.plot(
            *predicted, color=PREDICTED, lw=1.2, ls="--", label="predicted: full boxplus semicircle"
        )
    _log_density_axis(ax, full, measured, predicted)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("spectral density (log scale)")
    ax.set_title(f"batch spectrum, B = {B}")
    ax.legend(fontsize=8)


def noise_spectrum(ax, density, *, B: int, t: float):
    """Density of the noise N_B = H_B - H_emp (smoothed SLQ) against the semicircle of variance
    t (the paper's assumption 3), with the GOE edges +-2 sqrt(t) marked."""
    measured = _curve(density, "noise measured", B)
    semicircle = _curve(density, "noise semicircle", B)
    ax.plot(*measured, color=MEASURED, lw=1.5, label=f"noise, B = {B} (SLQ, smoothed)")
    if len(semicircle[0]):
        ax.plot(*semicircle, color=PREDICTED, lw=1.2, ls="--", label=f"semicircle, t = {t:.3g}")
    if t > 0:
        edge = float(theory.semicircle_edge(t))
        for x in (-edge, edge):
            ax.axvline(x, color=PREDICTED, ls=":", lw=1)
    _log_density_axis(ax, measured, semicircle)
    ax.set_xlabel("eigenvalue of H_B - H_emp")
    ax.set_ylabel("spectral density (log scale)")
    ax.set_title(f"noise spectrum vs GOE, B = {B}")
    ax.legend(fontsize=8)


def batch_sweep(ax, sweep):
    """lambda_max(H_B) against B: Lanczos, exact, Theorem 2 (+- se), free convolution, laws.

    ``sweep`` has columns ``B``, ``measured_max``, ``predicted_max``, ``predicted_max_se``,
    ``lambda_full_max`` and, when present, ``exact_max``, ``fc_predicted_max``,
    ``edge_law_max`` and ``outlier_law_max`` (least-squares fits of c sqrt(f) and theta + c f).
    With several batch draws per B (``batch_draws`` and ``measured_max_draw_se`` present)
    ``measured_max`` is the mean over the draws, drawn with error bars ``measured_max_se`` (the
    standard error over draws with the Lanczos error), and ``exact_max`` belongs to draw 0.
    """
    B = sweep["B"].to_numpy(dtype=float)
    ax.errorbar(
        B,
        sweep["predicted_max"],
        yerr=sweep["predicted_max_se"],
        fmt="s--",
        ms=4,
        color=PREDICTED,
        capsize=3,
        label="Theorem 2 (+- se from sigma^2)",
    )
    if "fc_predicted_max" in sweep:
        ax.plot(B, sweep["fc_predicted_max"], "^:", ms=4, color="#ff7f0e", label="free convolution")
    draws = "measured_max_draw_se" in sweep and "batch_draws" in sweep
    if draws:
        ax.errorbar(
            B,
            sweep["measured_max"],
            yerr=sweep["measured_max_se"],
            fmt="o-",
            ms=5,
            color=MEASURED,
            capsize=3,
            label=f"measured (Lanczos, mean +- se of {int(sweep['batch_draws'].iloc[0])} batches)",
        )
    else:
        ax.plot(B, sweep["measured_max"], "o-", ms=5, color=MEASURED, label="measured (Lanczos)")
    if "exact_max" in sweep and np.isfinite(sweep["exact_max"]).any():
        label = "exact (dense, batch draw 0)" if draws else "exact (dense)"
        ax.plot(B, sweep["exact_max"], "+", ms=10, color="black", label=label)
    if "edge_law_max" in sweep:
        ax.plot(B, sweep["edge_law_max"], "-", lw=0.8, color="#2ca02c", label="fit: c sqrt(f)")
        ax.plot(B, sweep["outlier_law_max"], "-", lw=0.8, color="#9467bd", label="fit: theta + c f")
    ax.axhline(
        float(sweep["lambda_full_max"].iloc[0]),
        color=NETWORK_FULL,
        ls=":",
        lw=1,
        label="lambda_max full data",
    )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("largest eigenvalue")
    ax.set_title("lambda_max of the batch Hessian")
    ax.legend(fontsize=7)


MODEL_COLOURS = {
    "M0": PREDICTED,
    "M1": "#ff7f0e",
    "M2": "#2ca02c",
    "M3": "#9467bd",
    "M4": "#8c564b",
}


def batch_models(ax, table):
    """lambda_max(H_B) over random batches against the models M0-M4, as stored in
    ``batch_models.csv`` (one row per B and model): the measured mean with its 10-90% band
    (empirical quantiles of the draws), each model's mean with its predicted 10-90% band where the
    model predicts a spread (markers only for a free limit)."""
    first = table[table["model"] == table["model"].iloc[0]].sort_values("B")
    B = first["B"].to_numpy(dtype=float)
    ax.fill_between(B, first["measured_q10"], first["measured_q90"], color=MEASURED, alpha=0.2)
    ax.plot(
        B,
        first["measured_mean"],
        "o-",
        color=MEASURED,
        label=f"measured (mean, 10-90% of {int(first['draws'].iloc[0])} batches)",
    )
    for model, part in table.groupby("model", sort=True):
        part = part.sort_values("B")
        colour = MODEL_COLOURS.get(model, "grey")
        x = part["B"].to_numpy(dtype=float)
        label = f"{model} {part['name'].iloc[0]}"
        if np.isfinite(part["predicted_sd"]).all():
            ax.fill_between(
                x, part["predicted_q10"], part["predicted_q90"], color=colour, alpha=0.12
            )
            ax.plot(x, part["predicted_mean"], "--", color=colour, label=label)
        else:
            ax.plot(x, part["predicted_mean"], "x:", color=colour, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("largest eigenvalue of H_B")
    ax.set_title("Which model explains the batch lambda_max")
    ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------
# epoch sweeps (validation.network --checkpoints): drawn from epochs.csv as stored. sigma^2 over
# epochs (the paper's Figures 3-4) is sigma2_over_epochs above; the extreme eigenvalues here.


def extremes_over_epochs(ax, table, *, side: str = "max"):
    """lambda_max (``side="max"``) or lambda_min of the Hessians against the training epoch.

    ``table`` has one row per (epoch, B) with columns ``epoch``, ``B``, ``lambda_full_<side>``
    (Lanczos, full data), ``measured_<side>`` (Lanczos, the batch Hessian H_B) and
    ``predicted_<side>`` / ``predicted_<side>_se`` (Theorem 2 from the full-data value and
    sigma^2). The full-data curve is drawn once; each B has one colour, measured solid,
    predicted dashed with its standard error.
    """
    if side not in ("max", "min"):
        raise ValueError(f"side must be 'max' or 'min', got {side!r}")
    table = table.sort_values(["B", "epoch"], kind="stable")
    full = table.drop_duplicates("epoch").sort_values("epoch")
    ax.plot(
        full["epoch"],
        full[f"lambda_full_{side}"],
        "o-",
        ms=4,
        color=NETWORK_FULL,
        label="full data H_emp (Lanczos)",
    )
    cycle = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
    for k, (B, group) in enumerate(table.groupby("B", sort=True)):
        color = cycle[k % len(cycle)]
        ax.plot(
            group["epoch"],
            group[f"measured_{side}"],
            "o-",
            ms=4,
            color=color,
            label=f"B = {B}: measured H_B (Lanczos)",
        )
        ax.errorbar(
            group["epoch"],
            group[f"predicted_{side}"],
            yerr=group[f"predicted_{side}_se"],
            fmt="s--",
            ms=3,
            color=color,
            capsize=2,
            label=f"B = {B}: Theorem 2 prediction",
        )
    ax.set_xlabel("training epoch")
    ax.set_ylabel(f"lambda_{side} (eigenvalue of the Hessian)")
    ax.set_title(f"{'largest' if side == 'max' else 'smallest'} eigenvalue over epochs")
    ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------
# stability (validation.stability): drawn from measured.csv and predictions.csv as stored

STABILITY_COLOURS = {
    "gd": "#7f7f7f",
    "batch mean": PREDICTED,
    "theorem2": "#ff7f0e",
    "best model": "#2ca02c",
    "wu-ma-e": "#9467bd",
}


def eta_max_vs_batch(ax, measured, predictions, *, momentum: float, N: int):
    """Measured eta_max(B) (median over seeds, bar: the range of the seeds' brackets) of one
    series (``momentum``) against each stored prediction, with the 10-90% band of
    ``2 (1 + mu) / lambda_max(H_B)`` over batches; B = N (gradient descent) at the right end."""
    m = measured[measured["momentum"] == momentum].sort_values("B")
    B = m["B"].to_numpy(dtype=float)
    low = m["eta_max"] - m["eta_max_low"]
    high = m["eta_max_high"] - m["eta_max"]
    ax.errorbar(B, m["eta_max"], yerr=[low, high], fmt="o-", color=MEASURED, capsize=3,
                label="measured (median, range over seeds)")  # fmt: skip
    p = predictions[predictions["momentum"] == momentum]
    q10 = p[p["prediction"] == "batch q10"].sort_values("B")
    q90 = p[p["prediction"] == "batch q90"].sort_values("B")
    if len(q10):
        ax.fill_between(q10["B"].to_numpy(dtype=float), q10["predicted"], q90["predicted"],
                        color=PREDICTED, alpha=0.15, label="10-90% over batches")  # fmt: skip
    for name, colour in STABILITY_COLOURS.items():
        part = p[p["prediction"] == name].sort_values("B")
        part = part[np.isfinite(part["predicted"].to_numpy(dtype=float))]
        if len(part):
            ax.plot(part["B"].to_numpy(dtype=float), part["predicted"], "x--", color=colour,
                    label=f"predicted: {name}")  # fmt: skip
    ax.axvline(N, color="grey", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B (B = N: gradient descent)")
    ax.set_ylabel("largest stable learning rate eta_max")
    ax.set_title(f"eta_max(B), momentum {momentum:g}")
    ax.legend(fontsize=7)
