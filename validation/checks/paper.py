"""Tidy rows of a paper run: the derived table of ``validation.paper`` in, decided rows out.

The paper prints no uncertainty, so no z-type verdict is possible; the theorem's own inequalities
are applied strictly instead (the bound rule of :mod:`validation.checks.verdict`). Per printed
row, in this order:

* ``theorem2``: predicted vs measured batch lambda_max. ``disagrees (inside the edge ...)`` when
  the measurement lies inside 2 sqrt(t) (Theorem 2 puts the batch extreme at or beyond the edge
  whatever the noise), ``disagrees (below the full-data value ...)`` when no sigma^2 >= 0
  reproduces it; otherwise ``not applicable``, with whether the measurement is larger or smaller
  than predicted in brackets in ``quantity``;
* ``weyl``: |lambda_B - lambda| within the Weyl envelope ||N_B||_2 = 2 sqrt(t), the bound rule;
* ``weyl-eq7``: |lambda_B - lambda| within the paper's eq. 7 expression t / P, the bound rule;
* ``sigma2``: sigma^2 implied by the printed prediction vs the sigma^2 that reproduces the
  measurement (``not applicable``, the ratio in brackets in ``quantity``).

No torch, no I/O.
"""

from __future__ import annotations

import math

import pandas as pd

from reports.schema import tidy_frame
from validation.checks.verdict import (
    AGREES,
    DISAGREES,
    NOT_APPLICABLE,
    bound_verdict,
    with_reason,
)

SOURCE = "paper"


def paper_rows(table: pd.DataFrame, *, source: str = SOURCE) -> pd.DataFrame:
    """Every tidy row of a paper run (see the module docstring), in a checked frame."""
    rows = []
    for r in table.to_dict(orient="records"):
        rows += [theorem2_row(r), *weyl_rows(r), sigma2_row(r)]
    return tidy_frame({"source": source, **row} for row in rows)


def theorem2_verdict(r: dict) -> tuple[str, str]:
    """The verdict on Theorem 2 for one derived row, and the note that goes into ``quantity``
    (empty when the verdict carries its reason)."""
    measured, edge = float(r["measured"]), float(r["edge"])
    problems = []
    # Theorem 2: |lambda_B| >= 2 sqrt(t) always (the bound rule with the edge as the bound)
    if bound_verdict(edge, abs(measured)) == DISAGREES:
        problems.append(f"inside the edge: |measured| {abs(measured):.4g} < 2 sqrt(t) = {edge:.4g}")
    if r["branch_to_match_measured"] == "none":
        problems.append("below the full-data value: no sigma^2 >= 0 reproduces it")
    if problems:
        return with_reason(DISAGREES, "; ".join(problems)), ""
    if r["regime"] == "none":
        return NOT_APPLICABLE, " [printed prediction below lambda: no sigma^2 gives it]"
    side = r["measured_vs_predicted"]
    return NOT_APPLICABLE, f" [no uncertainty printed; measured {side} than predicted]"


def theorem2_row(r: dict) -> dict:
    verdict, note = theorem2_verdict(r)
    return {
        "check": "theorem2",
        "quantity": f"batch lambda_max, {r['name']}, B={int(r['B'])}{note}",
        "predicted": r["predicted"],
        "measured": float(r["measured"]),
        "uncertainty": float("nan"),
        "regime": r["regime"],
        "verdict": verdict,
    }


def weyl_rows(r: dict) -> list[dict]:
    """|lambda_B - lambda| against the Weyl envelope and against eq. 7, the bound rule."""
    shift = abs(float(r["measured"]) - float(r["lambda_full"]))
    rows = []
    for check, bound, label in (
        ("weyl", float(r["edge"]), "the Weyl envelope 2 sqrt(t)"),
        ("weyl-eq7", float(r["eq7_bound"]), "eq. 7 (t / P)"),
    ):
        verdict = bound_verdict(shift, bound)
        reason = {AGREES: f"within {label}", DISAGREES: f"shift exceeds {label}"}.get(verdict)
        rows.append(
            {
                "check": check,
                "quantity": f"|lambda_B - lambda| vs {label}, {r['name']}",
                "predicted": bound,
                "measured": shift,
                "uncertainty": float("nan"),
                "regime": "bound",
                "verdict": with_reason(verdict, reason),
            }
        )
    return rows


def sigma2_row(r: dict) -> dict:
    """sigma^2 of the printed prediction against the sigma^2 the measurement needs; the paper
    gives no uncertainty, so ``not applicable`` with the ratio as the reason."""
    ratio, implied = float(r["sigma2_ratio_to_match"]), float(r["implied_sigma2"])
    factor = f"x{ratio:.3g} to match" if math.isfinite(ratio) else "no sigma^2 matches"
    return {
        "check": "sigma2",
        "quantity": (
            "sigma^2 implied by the prediction vs needed by the measurement, "
            f"{r['name']} [{factor}]"
        ),
        "predicted": implied,
        "measured": implied * ratio,
        "uncertainty": float("nan"),
        "regime": str(r.get("branch_to_match_measured", "-")),
        "verdict": NOT_APPLICABLE,
    }
