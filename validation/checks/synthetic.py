"""Tidy rows of a synthetic run: its raw tables in, one decided row per comparison out.

The raw tables are those ``validation.synthetic`` measures and stores (``extremes.csv``,
``bbp_sweep.csv``, ``weyl.csv``, ``free_convolution.csv``); every verdict comes from
:mod:`validation.checks.verdict`. Checks, in the order of the rows:

* ``theorem2``: each compared extreme eigenvalue (``rmt.experiments.extremes_table``): the
  finite-P predicted mean (Theorem 2 for an outlier; ``2 sqrt(t) + sqrt(t) P^(-2/3) E[TW_1]`` at
  the edge) against the Monte-Carlo mean, one standard error, the z rule;
* ``overlap``: squared eigenvector overlap ``1 - t / theta^2`` of each outlier (Benaych-Georges &
  Nadakuditi 2011), the z rule; below the threshold the limit 0 holds only as P -> infinity
  (finite-P overlaps are O(1/P)), and inside the BBP crossover window no limit law applies, so
  those rows are ``not applicable`` (the reason in brackets in ``quantity``);
* ``bbp-sweep``: the top eigenvalue across the BBP transition, the z rule;
* ``weyl`` and ``weyl-eq7``: the fraction of draws in which the largest eigenvalue shift stays
  within ||W||_2 (Weyl's inequality, exact: it must hold in every draw) and within the paper's
  eq. 7 expression, the bound rule over draws;
* ``free-convolution``: the Wasserstein-1 distance of a bulk draw to the free convolution, whose
  prediction is 0, against the distance between two independent draws as the uncertainty: the z
  rule, i.e. ``measured <= z_crit * reference``.

No torch, no I/O: the functions take data frames and return rows.
"""

from __future__ import annotations

import math

import pandas as pd

from reports.schema import tidy_frame
from validation.checks.verdict import NOT_APPLICABLE, draws_bound_verdict, z_verdict

SOURCE = "synthetic"
# The Weyl checks of ``weyl.csv``: check name, the column saying whether the bound held in a
# draw, and the bound's name in the verdict.
WEYL_BOUNDS = (
    ("weyl", "exact_holds", "||W||_2"),
    ("weyl-eq7", "paper_holds", "eq. 7 (s^2)"),
)


def synthetic_rows(
    extremes: pd.DataFrame,
    sweep: pd.DataFrame,
    weyl: pd.DataFrame,
    free_convolution: pd.DataFrame,
    *,
    z_crit: float,
    source: str = SOURCE,
) -> pd.DataFrame:
    """Every tidy row of a synthetic run (see the module docstring), in a checked frame."""
    rows = [
        *extremes_rows(extremes, z_crit=z_crit),
        *sweep_rows(sweep, z_crit=z_crit),
        *weyl_rows(weyl),
        *free_convolution_rows(free_convolution, z_crit=z_crit),
    ]
    return tidy_frame({"source": source, **row} for row in rows)


def grid_label(row) -> str:
    """``P=1,000, t=1, spikes=(3 0.5)``: where on the grid a row was measured."""
    return f"P={int(row['P']):,}, t={float(row['t']):g}, spikes=({row['spikes']})"


def extremes_rows(extremes: pd.DataFrame, *, z_crit: float) -> list[dict]:
    """A ``theorem2`` row per compared eigenvalue, each followed by its ``overlap`` row when the
    eigenvalue is matched to a spike."""
    rows = []
    for r in extremes.to_dict(orient="records"):
        rows.append(theorem2_row(r, z_crit=z_crit))
        overlap = overlap_row(r, z_crit=z_crit)
        if overlap is not None:
            rows.append(overlap)
    return rows


def _which(r) -> str:
    spike = r.get("spike")
    about = "" if _missing(spike) else f" (spike {float(spike):g})"
    return f"{r['side']} eigenvalue {int(r['index'])}{about}"


def theorem2_row(r: dict, *, z_crit: float) -> dict:
    """One row of ``extremes_table``: predicted mean against measured mean, the z rule."""
    return {
        "check": "theorem2",
        "quantity": f"{_which(r)}, {grid_label(r)}",
        "predicted": r["predicted_mean"],
        "measured": r["measured_mean"],
        "uncertainty": r["measured_se"],
        "regime": r["regime"],
        "verdict": z_verdict(r["predicted_mean"], r["measured_mean"], r["measured_se"], z_crit),
    }


def overlap_row(r: dict, *, z_crit: float) -> dict | None:
    """The squared overlap of one row of ``extremes_table`` with its spike (None without a
    spike): the z rule for an outlier, ``not applicable`` at the edge or in the crossover."""
    if _missing(r.get("spike")) or _missing(r.get("overlap_measured")):
        return None
    note = ""
    if r["regime"] == "outlier":
        verdict = z_verdict(r["overlap_predicted"], r["overlap_measured"], r["overlap_se"], z_crit)
    elif r["regime"] == "critical":
        verdict = NOT_APPLICABLE
        note = " [BBP crossover window: no limit law at this P]"
    else:
        verdict = NOT_APPLICABLE
        note = " [below threshold: the limit 0 holds only as P -> infinity]"
    return {
        "check": "overlap",
        "quantity": f"squared overlap, {_which(r)}, {grid_label(r)}{note}",
        "predicted": r["overlap_predicted"],
        "measured": r["overlap_measured"],
        "uncertainty": r["overlap_se"],
        "regime": r["regime"],
        "verdict": verdict,
    }


def sweep_rows(sweep: pd.DataFrame, *, z_crit: float) -> list[dict]:
    """One ``bbp-sweep`` row per spike size of the sweep (top eigenvalue), the z rule."""
    rows = []
    for r in sweep.to_dict(orient="records"):
        t, spike = float(r["t"]), float(r["spike"])
        root = math.sqrt(t) if t > 0 else float("nan")
        rows.append(
            {
                "check": "bbp-sweep",
                "quantity": (
                    f"top eigenvalue, spike {spike:.4g} = {spike / root:.2f} sqrt(t), "
                    f"P={int(r['P']):,}, t={t:g}"
                ),
                "predicted": r["predicted_mean"],
                "measured": r["measured_mean"],
                "uncertainty": r["measured_se"],
                "regime": r["regime"],
                "verdict": z_verdict(
                    r["predicted_mean"], r["measured_mean"], r["measured_se"], z_crit
                ),
            }
        )
    return rows


def weyl_rows(weyl: pd.DataFrame) -> list[dict]:
    """Per grid point, the fraction of draws within each Weyl bound (:data:`WEYL_BOUNDS`), the
    bound rule over draws (every draw must hold)."""
    rows = []
    if weyl.empty:
        return rows
    for (P, t, spikes), group in weyl.groupby(["P", "t", "spikes"], sort=False):
        where = grid_label({"P": P, "t": t, "spikes": spikes})
        for check, column, bound in WEYL_BOUNDS:
            holds = group[column].to_numpy(dtype=bool)
            rows.append(
                {
                    "check": check,
                    "quantity": f"fraction of draws with max shift <= {bound}, {where}",
                    "predicted": 1.0,
                    "measured": float(holds.mean()),
                    "uncertainty": float("nan"),
                    "regime": "bound",
                    "verdict": draws_bound_verdict(holds, bound),
                }
            )
    return rows


def free_convolution_rows(free_convolution: pd.DataFrame, *, z_crit: float) -> list[dict]:
    """The W1 distance of the bulk draw to the free convolution (prediction 0) against the
    two-draw distance as the uncertainty: the z rule."""
    rows = []
    for r in free_convolution.to_dict(orient="records"):
        rows.append(
            {
                "check": "free-convolution",
                "quantity": f"{r['quantity']}, P={int(r['P']):,}, t={float(r['t']):g}",
                "predicted": r["predicted"],
                "measured": r["measured"],
                "uncertainty": r["uncertainty"],
                "regime": "bulk",
                "verdict": z_verdict(r["predicted"], r["measured"], r["uncertainty"], z_crit),
            }
        )
    return rows


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False
