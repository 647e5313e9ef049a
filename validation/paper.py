"""``python -m validation paper``: the paper's table re-derived from its printed inputs.

The paper (section 4.1) prints, per network, the full-data extreme eigenvalue lambda, the
Theorem 2 prediction for the batch and the measured batch value, with P, N = 50,000 and B, but not
sigma^2. Theorem 2 (eq. 8) is a continuous, increasing function of the noise scale t:

    lambda' = lambda + t / lambda  for t < lambda^2   (outlier branch, |lambda| > sqrt(t))
    lambda' = 2 sqrt(t)            for t >= lambda^2  (edge branch)

so each printed prediction fixes t under each branch -- t = lambda (lambda' - lambda) or
t = (lambda' / 2)^2 -- and exactly one branch's t satisfies that branch's own condition (for
|lambda'| > |lambda|). The same inversion applied to the measurement gives the t (hence sigma^2)
that would reproduce it; the ratio says how much larger or smaller sigma^2 would have to be.

Both candidate t are reported with whether each satisfies its branch's condition: a printed value
that the outlier formula reproduces only with lambda below the threshold is visible there.

Flags (the theorem's own conditions applied strictly):
- ``printed prediction below lambda``: no t >= 0 gives it;
- ``measured below the edge``: Theorem 2 puts the batch extreme at or beyond 2 sqrt(t), the
  measurement is inside;
- ``measured below lambda``: no sigma^2 reproduces it.
The Weyl envelope uses ||N_B||_2 = 2 sqrt(t) (the GOE norm under assumption 3); eq. 7 read as
printed gives s^2 = t / P.

Verdicts are decided by ``validation.checks.paper`` (the table's ``verdict`` column is its
Theorem 2 verdict); the run writes ``paper_table.csv``, the tidy rows ``summary.csv`` and
``results.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rmt import theory
from validation.checks.paper import paper_rows, theorem2_verdict
from validation.errors import UsageError
from validation.options import EXACT_INT_MAX

COLUMNS = ("name", "P", "N", "B", "lambda_full", "predicted_printed", "measured")


@dataclass(frozen=True)
class PaperRow:
    """One printed experiment: the inputs of the paper's table."""

    name: str
    P: int
    N: int
    B: int
    lambda_full: float  # extreme eigenvalue of H_emp
    predicted_printed: float  # the paper's Theorem 2 value for H_B
    measured: float  # the measured extreme eigenvalue of H_B


# Section 4.1 of the paper (CIFAR-100, N = 50,000): VGG16 at epoch 200 with B = 128, and
# PreResNet-110 with B = 256; P as printed in section 4.
PAPER_ROWS = (
    PaperRow("VGG16, epoch 200", 15_291_300, 50_000, 128, 10.35, 28.19, 36.09),
    PaperRow("PreResNet-110", 1_169_972, 50_000, 256, 13.38, 24.41, 20.78),
)


def noise_scale_for(lam: float, value: float) -> tuple[float, str]:
    """Invert Theorem 2: the t >= 0 whose prediction is ``value``, and the branch that applies.

    Returns (nan, "none") when |value| < |lam| (no t reaches it) or the signs differ.
    """
    if np.sign(value) != np.sign(lam) or abs(value) < abs(lam):
        return float("nan"), "none"
    if abs(value) <= 2 * abs(lam):
        return lam * (value - lam), "outlier" if abs(value) < 2 * abs(lam) else "edge"
    return (value / 2) ** 2, "edge"


def derive_row(row: PaperRow, *, factor: str = "paper") -> dict:
    """Everything Theorem 2 says about one printed row (see the module docstring)."""
    lam, printed, measured = row.lambda_full, row.predicted_printed, row.measured
    f = float(theory.FACTORS[factor](row.N, row.B))
    t_outlier = lam * (printed - lam)
    t_edge = (printed / 2) ** 2
    outlier_ok = t_outlier >= 0 and abs(lam) > np.sqrt(max(t_outlier, 0.0))
    edge_ok = abs(lam) <= np.sqrt(t_edge)
    t, branch = noise_scale_for(lam, printed)
    flags = []
    if branch == "none":
        flags.append("printed prediction below lambda")
    sigma2 = t / (row.P * f) if f > 0 else float("nan")
    pred = (
        theory.theorem2(lam, sigma2, row.P, row.N, row.B, factor=factor)
        if np.isfinite(sigma2)
        else None
    )
    edge = 2 * np.sqrt(t) if np.isfinite(t) else float("nan")
    t_measured, measured_branch = noise_scale_for(lam, measured)
    if measured_branch == "none":
        flags.append("measured below lambda")
    if np.isfinite(edge) and abs(measured) < edge:
        flags.append("measured below the edge")
    derived = {
        "name": row.name,
        "P": row.P,
        "N": row.N,
        "B": row.B,
        "factor": factor,
        "lambda_full": lam,
        "predicted_printed": printed,
        "measured": measured,
        "t_if_outlier_branch": t_outlier,
        "outlier_branch_consistent": bool(outlier_ok),
        "t_if_edge_branch": t_edge,
        "edge_branch_consistent": bool(edge_ok),
        "implied_t": t,
        "implied_sigma2": sigma2,
        "threshold": np.sqrt(t) if np.isfinite(t) else float("nan"),
        "regime": str(pred.regime) if pred is not None else "none",
        "predicted": float(pred.predicted) if pred is not None else float("nan"),
        "edge": edge,
        "overlap": float(pred.overlap) if pred is not None else float("nan"),
        "weyl_envelope_low": lam - edge,
        "weyl_envelope_high": lam + edge,
        "measured_in_weyl_envelope": bool(abs(measured - lam) <= edge),
        "eq7_bound": t / row.P,
        "measured_within_eq7": bool(abs(measured - lam) <= t / row.P),
        "t_to_match_measured": t_measured,
        "branch_to_match_measured": measured_branch,
        "sigma2_ratio_to_match": t_measured / t if np.isfinite(t) and t > 0 else float("nan"),
        "measured_vs_predicted": _compare(measured, pred),
        "verdict": "",  # decided below, by validation.checks.paper
        "flags": "; ".join(flags) if flags else "none",
    }
    derived["verdict"] = theorem2_verdict(derived)[0]
    return derived


def _compare(measured: float, pred) -> str:
    """``larger`` or ``smaller``: |measured| against |predicted| (``none`` without a prediction)."""
    if pred is None:
        return "none"
    return "larger" if abs(measured) > abs(pred.predicted) else "smaller"


def read_rows(path) -> list[PaperRow]:
    """User rows from a CSV with the columns of ``COLUMNS``; one clear error per bad value.

    Refused in one line (``UsageError``): a path that is missing, a folder or unreadable; a file
    that is not CSV text; missing columns; no rows; and any value outside :func:`_row`'s ranges.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such file: {path}")
    if not path.is_file():
        raise UsageError(f"--rows {path} is not a file (expected a CSV with {', '.join(COLUMNS)})")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except OSError as exc:
        raise UsageError(f"--rows {path}: cannot read it ({exc.strerror or exc})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a readable CSV ({exc.__class__.__name__})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(
            f"{path}: missing columns {', '.join(missing)}; needed: {', '.join(COLUMNS)}"
        )
    rows = []
    for i, record in enumerate(frame.to_dict(orient="records"), start=2):
        rows.append(_row(record, where=f"{path}, line {i}"))
    if not rows:
        raise UsageError(f"{path}: no rows")
    return rows


# Ranges of a row: P, N, B integers in [1, 2^53] (exact in float64, the formulas' type); the
# eigenvalues finite with |value| <= EIGENVALUE_MAX, so that t = lambda (lambda' - lambda) or
# (lambda' / 2)^2 stays <= 1e100 and every derived column is finite.
EIGENVALUE_MAX = 1e50


def _row(record: dict, *, where: str) -> PaperRow:
    values = {}
    for name in ("P", "N", "B"):
        value = pd.to_numeric(record[name], errors="coerce")
        if not np.isfinite(value) or value != int(value) or not 1 <= value <= EXACT_INT_MAX:
            raise UsageError(
                f"{where}: {name} must be an integer in [1, {EXACT_INT_MAX:,}] (2^53: exact in "
                f"float64), got {record[name]!r}"
            )
        values[name] = int(value)
    for name in ("lambda_full", "predicted_printed", "measured"):
        value = pd.to_numeric(record[name], errors="coerce")
        if not np.isfinite(value) or abs(value) > EIGENVALUE_MAX:
            raise UsageError(
                f"{where}: {name} must be a finite number in [-{EIGENVALUE_MAX:g}, "
                f"{EIGENVALUE_MAX:g}] (an eigenvalue), got {record[name]!r}"
            )
        values[name] = float(value)
    if values["B"] > values["N"]:
        raise UsageError(f"{where}: B = {values['B']} exceeds N = {values['N']}")
    if values["N"] < 2:
        raise UsageError(f"{where}: N must be >= 2")
    if values["lambda_full"] == 0:
        raise UsageError(f"{where}: lambda_full must be nonzero (an extreme eigenvalue)")
    return PaperRow(name=str(record["name"]), **values)


def paper_table(rows, *, factor: str = "paper") -> pd.DataFrame:
    """The derived table, one row per input row."""
    if factor not in theory.FACTORS:
        raise UsageError(f"unknown factor {factor!r}; accepted: {', '.join(theory.FACTORS)}")
    return pd.DataFrame([derive_row(r, factor=factor) for r in rows])


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "paper",
        help="the paper's table re-derived, with regime checks",
        description="Re-derive the paper's Theorem 2 table (or your own rows) from printed inputs.",
    )
    parser.add_argument(
        "--rows",
        type=Path,
        help="CSV with columns name,P,N,B,lambda_full,predicted_printed,measured "
        "(default: the paper's two rows)",
    )
    parser.add_argument(
        "--factor", default="paper", help="finite-population factor: paper or exact"
    )
    parser.add_argument("--out", type=Path, default=Path("results/paper"), help="result folder")


def config_from_args(args) -> dict:
    """The rows (read from ``--rows``, or the paper's), the factor and where the rows came from."""
    rows = read_rows(args.rows) if args.rows is not None else list(PAPER_ROWS)
    return {"rows": rows, "factor": args.factor, "source": str(args.rows or "paper")}


def result_identity(args) -> tuple[str, dict]:
    """Kind and configuration of the folder this command writes (``validation.store.check_out``)."""
    return "paper", config_from_args(args)


def command(args, started) -> int:
    """Derive the table of ``--rows`` (or the paper's), decide its rows, write ``--out``."""
    from validation.store import provenance, result_folder

    clock = time.perf_counter()
    config = config_from_args(args)
    table = paper_table(config["rows"], factor=args.factor)
    summary = paper_rows(table)
    with result_folder(args.out) as w:
        w.csv("paper_table.csv", table)
        w.csv("summary.csv", summary)
        w.json(
            "results.json",
            {
                "kind": "paper",
                "provenance": provenance(
                    config, started=started, wall_seconds=time.perf_counter() - clock
                ),
                "rows": table.to_dict(orient="records"),
                "files": w.manifest(),
            },
        )
    for r in table.itertuples():
        print(
            f"{r.name}: {r.regime} regime, predicted {r.predicted:.2f}, measured {r.measured:.2f}"
            f" -> {r.verdict}; sigma^2 x{r.sigma2_ratio_to_match:.2f} to match; flags: {r.flags}"
        )
    print(f"paper: results in {args.out}")
    return 0
