"""Building tidy rows (``reports.schema.TIDY_COLUMNS``) for the network checks."""

from __future__ import annotations

import numpy as np

from validation.checks.verdict import z_verdict


def quad(*values) -> float:
    """Finite values combined in quadrature (independent standard errors); NaN when none is."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.sqrt(np.sum(np.square(finite)))) if finite else float("nan")


def eps_of(dtype: str) -> float:
    """Machine epsilon of the run's dtype name (``float32`` or ``float64``)."""
    return float(np.finfo(np.float32 if dtype == "float32" else np.float64).eps)


def row(check, quantity, predicted, measured, uncertainty, regime, z_crit, verdict=None) -> dict:
    """One network row; its verdict by the z rule unless one is given (another rule's)."""
    if verdict is None:
        verdict = z_verdict(predicted, measured, uncertainty, z_crit)
    return {
        "source": "network",
        "check": check,
        "quantity": quantity,
        "predicted": predicted,
        "measured": measured,
        "uncertainty": uncertainty,
        "regime": regime,
        "verdict": verdict,
    }
