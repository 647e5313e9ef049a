"""Result folders as one tidy table (``reports.schema``), rendered as CSV and Markdown.

Every comparison of theory with measurement becomes one row with the columns of
``reports.schema.TIDY_COLUMNS``. Per kind of run:

``synthetic``  (``validation.synthetic.write_synthetic``)
    * ``theorem2``: each compared extreme eigenvalue (``extremes.csv``): the predicted mean (Theorem
      2 for an outlier; ``2 sqrt(t) + sqrt(t) P^(-2/3) E[TW_1]`` at the edge) against the
      Monte-Carlo mean, one standard error, the run's own verdict (|z| <= z_crit);
    * ``overlap``: squared eigenvector overlap 1 - t / theta^2 of each outlier, same z rule with the
      run's z_crit; below the threshold the limit 0 holds only as P -> infinity (finite-P overlaps
      are O(1/P)), so those rows are ``not applicable`` (the reason in brackets in ``quantity``);
    * ``bbp-sweep``: the top eigenvalue across the BBP transition (``bbp_sweep.csv``);
    * ``weyl`` and ``weyl-eq7``: the fraction of draws in which the largest eigenvalue shift stays
      within ||W||_2 (exact, must be every draw) and within the paper's eq. 7 expression;
    * ``free-convolution``: Wasserstein-1 distance of a bulk draw to the free convolution, against
      the distance between two independent draws (``free_convolution.csv``).

``paper``  (``validation.paper``)
    The paper prints no uncertainty, so a z-type verdict is ``not applicable``; the theorem's own
    inequalities are applied strictly and their result is the verdict's first word:
    * ``theorem2``: predicted vs measured batch lambda_max; ``disagrees (inside the edge ...)`` when
      the measurement lies inside 2 sqrt(t) (Theorem 2 never predicts that), ``disagrees (below the
      full-data value ...)`` when no sigma^2 >= 0 reproduces it;
    * ``weyl``: |lambda_B - lambda| within the Weyl envelope ||N_B||_2 = 2 sqrt(t);
    * ``weyl-eq7``: |lambda_B - lambda| within the paper's eq. 7 expression t / P;
    * ``sigma2``: sigma^2 implied by the printed prediction vs the sigma^2 that reproduces the
      measurement (``not applicable``, the ratio in brackets in ``quantity``).

A ``not applicable`` row keeps its reason in brackets at the end of ``quantity``.

``network``  (``validation.network``): ``summary.csv`` is already tidy; it is read and checked.

``source`` is the kind of run, followed by its folder name when that differs from the kind
(``network: epoch_010``), so several runs of one kind stay apart.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reports.schema import TIDY_COLUMNS, VERDICTS, tidy_frame, verdict_from_z, verdict_word

KINDS = ("synthetic", "paper", "network")
DEFAULT_Z_CRIT = 4.0  # validation.synthetic.SyntheticConfig.z_crit, for folders that lack it


class RunFolderError(ValueError):
    """A result folder that cannot be read; the message is one line naming the folder."""


@dataclass(frozen=True)
class Run:
    """One result folder: its kind, a label for tables, and ``results.json``."""

    folder: Path
    kind: str  # one of KINDS
    label: str  # the ``source`` of its tidy rows
    results: dict = field(repr=False)  # parsed results.json

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def table(self, name: str) -> pd.DataFrame | None:
        """A CSV of the folder, or None when the run did not write it."""
        path = self.folder / name
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{path}: not a readable CSV ({exc.__class__.__name__})") from None

    @property
    def provenance(self) -> dict:
        value = self.results.get("provenance")
        return value if isinstance(value, dict) else {}

    @property
    def config(self) -> dict:
        value = self.provenance.get("config")
        return value if isinstance(value, dict) else {}


def load_run(folder, *, label: str | None = None) -> Run:
    """Read ``folder/results.json``; raise ``RunFolderError`` (one line) when it is unusable."""
    folder = Path(folder)
    if not folder.exists():
        raise RunFolderError(f"no such result folder: {folder}")
    if not folder.is_dir():
        raise RunFolderError(f"not a folder: {folder} (pass a result folder holding results.json)")
    path = folder / "results.json"
    if not path.is_file():
        below = sorted(p.parent.name for p in folder.glob("*/results.json"))
        hint = f"; its sub-folders {', '.join(below)} have one: pass those" if below else ""
        raise RunFolderError(f"no results.json in {folder}{hint}")
    try:
        results = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: corrupt JSON ({exc.__class__.__name__})") from None
    if not isinstance(results, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(results).__name__}")
    kind = results.get("kind")
    if kind not in KINDS:
        raise RunFolderError(
            f"{path}: unknown kind {kind!r}; accepted: {', '.join(KINDS)} "
            "(the folders written by python -m validation synthetic, paper, network; "
            "an epoch sweep of network --checkpoints stands for its epoch folders)"
        )
    if label is None:
        label = kind if folder.name == kind else f"{kind}: {folder.name}"
    return Run(folder=folder, kind=kind, label=label, results=results)


def expand_epoch_sweeps(folders) -> list[Path]:
    """Folders as given, except that an epoch sweep (``results.json`` of kind ``network-epochs``,
    written by ``python -m validation network --checkpoints``) stands for its epoch folders."""
    out = []
    for folder in map(Path, folders):
        try:
            results = json.loads((folder / "results.json").read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            results = None
        if isinstance(results, dict) and results.get("kind") == "network-epochs":
            names = results.get("folders")
            if not isinstance(names, dict) or not names:
                raise RunFolderError(f"{folder / 'results.json'}: an epoch sweep without folders")
            out.extend(folder / str(name) for _, name in sorted(names.items(), key=_epoch_key))
        else:
            out.append(folder)
    return out


def _epoch_key(item):
    try:
        return (0, int(item[0]))
    except (TypeError, ValueError):
        return (1, str(item[0]))


def load_runs(folders) -> list[Run]:
    """Every folder as a ``Run`` (epoch sweeps expanded into their epoch folders); labels made
    unique (parent folder added, then a number)."""
    runs = [load_run(f) for f in expand_epoch_sweeps(folders)]
    seen: dict[str, int] = {}
    out = []
    for run in runs:
        label = run.label
        if sum(r.label == label for r in runs) > 1:
            label = f"{run.kind}: {run.folder.parent.name}/{run.folder.name}"
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        out.append(Run(folder=run.folder, kind=run.kind, label=label, results=run.results))
    return out


# ---------------------------------------------------------------------------------------------
# tidy conversion


def tidy(run: Run) -> pd.DataFrame:
    """The tidy rows of one run (may be empty when its tables are missing)."""
    convert = {"synthetic": synthetic_rows, "paper": paper_rows, "network": network_rows}
    frame = convert[run.kind](run)
    return tidy_frame(frame.to_dict(orient="records")) if len(frame) else tidy_frame([])


def combined(runs) -> pd.DataFrame:
    """The tidy rows of all runs, in the order given."""
    frames = [tidy(run) for run in runs]
    frames = [f for f in frames if len(f)]
    if not frames:
        return tidy_frame([])
    return pd.concat(frames, ignore_index=True)


def z_crit_of(run: Run) -> float:
    """The z threshold of a synthetic run (its config), or the default."""
    value = run.config.get("z_crit", DEFAULT_Z_CRIT)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return DEFAULT_Z_CRIT
    return value if math.isfinite(value) and value > 0 else DEFAULT_Z_CRIT


def _grid_label(row) -> str:
    return f"P={int(row['P']):,}, t={float(row['t']):g}, spikes=({row['spikes']})"


def synthetic_rows(run: Run) -> pd.DataFrame:
    """Tidy rows of a synthetic run (see the module docstring)."""
    rows = []
    z_crit = z_crit_of(run)
    extremes = run.table("extremes.csv")
    if extremes is not None:
        for r in extremes.to_dict(orient="records"):
            spike = r.get("spike")
            which = f"{r['side']} eigenvalue {int(r['index'])}"
            about = "" if _missing(spike) else f" (spike {float(spike):g})"
            where = _grid_label(r)
            rows.append(
                {
                    "source": run.label,
                    "check": "theorem2",
                    "quantity": f"{which}{about}, {where}",
                    "predicted": r["predicted_mean"],
                    "measured": r["measured_mean"],
                    "uncertainty": r["measured_se"],
                    "regime": r["regime"],
                    "verdict": r["verdict"],
                }
            )
            if _missing(spike) or _missing(r.get("overlap_measured")):
                continue
            note = ""
            if r["regime"] == "outlier":
                verdict = verdict_from_z(
                    r["overlap_predicted"], r["overlap_measured"], r["overlap_se"], z_crit
                )
            elif r["regime"] == "critical":
                verdict = "not applicable"
                note = " [BBP crossover window: no limit law at this P]"
            else:
                verdict = "not applicable"
                note = " [below threshold: the limit 0 holds only as P -> infinity]"
            rows.append(
                {
                    "source": run.label,
                    "check": "overlap",
                    "quantity": f"squared overlap, {which}{about}, {where}{note}",
                    "predicted": r["overlap_predicted"],
                    "measured": r["overlap_measured"],
                    "uncertainty": r["overlap_se"],
                    "regime": r["regime"],
                    "verdict": verdict,
                }
            )
    sweep = run.table("bbp_sweep.csv")
    if sweep is not None:
        for r in sweep.to_dict(orient="records"):
            root = math.sqrt(float(r["t"])) if float(r["t"]) > 0 else float("nan")
            rows.append(
                {
                    "source": run.label,
                    "check": "bbp-sweep",
                    "quantity": (
                        f"top eigenvalue, spike {float(r['spike']):.4g} = "
                        f"{float(r['spike']) / root:.2f} sqrt(t), P={int(r['P']):,}, "
                        f"t={float(r['t']):g}"
                    ),
                    "predicted": r["predicted_mean"],
                    "measured": r["measured_mean"],
                    "uncertainty": r["measured_se"],
                    "regime": r["regime"],
                    "verdict": r["verdict"],
                }
            )
    weyl = run.table("weyl.csv")
    if weyl is not None and len(weyl):
        for (P, t, spikes), group in weyl.groupby(["P", "t", "spikes"], sort=False):
            where = _grid_label({"P": P, "t": t, "spikes": spikes})
            n = len(group)
            for check, column, bound in (
                ("weyl", "exact_holds", "||W||_2"),
                ("weyl-eq7", "paper_holds", "eq. 7 (s^2)"),
            ):
                holds = group[column].astype(str).str.lower().eq("true")
                failed = int(n - holds.sum())
                verdict = (
                    f"agrees (all {n} draws)"
                    if failed == 0
                    else f"disagrees ({failed} of {n} draws exceed {bound})"
                )
                rows.append(
                    {
                        "source": run.label,
                        "check": check,
                        "quantity": f"fraction of draws with max shift <= {bound}, {where}",
                        "predicted": 1.0,
                        "measured": float(holds.mean()),
                        "uncertainty": float("nan"),
                        "regime": "bound",
                        "verdict": verdict,
                    }
                )
    free = run.table("free_convolution.csv")
    if free is not None:
        for r in free.to_dict(orient="records"):
            rows.append(
                {
                    "source": run.label,
                    "check": "free-convolution",
                    "quantity": f"{r['quantity']}, P={int(r['P']):,}, t={float(r['t']):g}",
                    "predicted": r["predicted"],
                    "measured": r["measured"],
                    "uncertainty": r["uncertainty"],
                    "regime": "bulk",
                    "verdict": r["verdict"],
                }
            )
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))


def paper_rows(run: Run) -> pd.DataFrame:
    """Tidy rows of a paper run (see the module docstring)."""
    table = run.table("paper_table.csv")
    if table is None:
        return pd.DataFrame(columns=list(TIDY_COLUMNS))
    rows = []
    for r in table.to_dict(orient="records"):
        name, lam, measured = r["name"], float(r["lambda_full"]), float(r["measured"])
        edge, flags = float(r["edge"]), str(r.get("flags", "none"))
        shift = abs(measured - lam)
        problems = []
        if "measured below the edge" in flags:
            problems.append(
                f"inside the edge: |measured| {abs(measured):.4g} < 2 sqrt(t) = {edge:.4g}"
            )
        if "measured below lambda" in flags:
            problems.append("below the full-data value: no sigma^2 >= 0 reproduces it")
        note = ""
        if problems:
            verdict = f"disagrees ({'; '.join(problems)})"
        elif r["regime"] == "none":
            verdict = "not applicable"
            note = " [printed prediction below lambda: no sigma^2 gives it]"
        else:
            side = "larger" if abs(measured) > abs(float(r["predicted"])) else "smaller"
            verdict = "not applicable"
            note = f" [no uncertainty printed; measured {side} than predicted]"
        rows.append(
            {
                "source": run.label,
                "check": "theorem2",
                "quantity": f"batch lambda_max, {name}, B={int(r['B'])}{note}",
                "predicted": r["predicted"],
                "measured": measured,
                "uncertainty": float("nan"),
                "regime": r["regime"],
                "verdict": verdict,
            }
        )
        for check, bound, label in (
            ("weyl", edge, "the Weyl envelope 2 sqrt(t)"),
            ("weyl-eq7", float(r["eq7_bound"]), "eq. 7 (t / P)"),
        ):
            if not math.isfinite(bound):
                verdict = "not applicable"
            elif shift <= bound:
                verdict = f"agrees (within {label})"
            else:
                verdict = f"disagrees (shift exceeds {label})"
            rows.append(
                {
                    "source": run.label,
                    "check": check,
                    "quantity": f"|lambda_B - lambda| vs {label}, {name}",
                    "predicted": bound,
                    "measured": shift,
                    "uncertainty": float("nan"),
                    "regime": "bound",
                    "verdict": verdict,
                }
            )
        ratio = float(r["sigma2_ratio_to_match"])
        implied = float(r["implied_sigma2"])
        factor = f"x{ratio:.3g} to match" if math.isfinite(ratio) else "no sigma^2 matches"
        rows.append(
            {
                "source": run.label,
                "check": "sigma2",
                "quantity": (
                    "sigma^2 implied by the prediction vs needed by the measurement, "
                    f"{name} [{factor}]"
                ),
                "predicted": implied,
                "measured": implied * ratio,
                "uncertainty": float("nan"),
                "regime": str(r.get("branch_to_match_measured", "-")),
                "verdict": "not applicable",
            }
        )
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))


def network_rows(run: Run) -> pd.DataFrame:
    """``summary.csv`` of a network run (already tidy), with ``source`` set to the run's label."""
    summary = run.table("summary.csv")
    if summary is None:
        return pd.DataFrame(columns=list(TIDY_COLUMNS))
    missing = [c for c in TIDY_COLUMNS if c not in summary.columns]
    if missing:
        raise RunFolderError(
            f"{run.folder / 'summary.csv'}: missing columns {', '.join(missing)}; "
            f"needed: {', '.join(TIDY_COLUMNS)}"
        )
    summary = summary[list(TIDY_COLUMNS)].copy()
    summary["source"] = run.label
    try:
        return tidy_frame(summary.to_dict(orient="records"))
    except ValueError as exc:
        raise RunFolderError(f"{run.folder / 'summary.csv'}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# summaries


def verdict_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows per (source, check) with one column per verdict and a total, in order of appearance."""
    columns = ["source", "check", *VERDICTS, "total"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    words = frame["verdict"].map(verdict_word)
    counts = (
        pd.crosstab([frame["source"], frame["check"]], words)
        .reindex(columns=list(VERDICTS), fill_value=0)
        .astype(int)
    )
    order = list(dict.fromkeys(zip(frame["source"], frame["check"], strict=True)))
    counts = counts.reindex(pd.MultiIndex.from_tuples(order, names=["source", "check"]))
    counts["total"] = counts.sum(axis=1)
    counts = counts.reset_index()
    counts.columns.name = None
    return counts[columns]


def disagreements(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose verdict is ``disagrees``."""
    return frame[frame["verdict"].map(verdict_word) == "disagrees"].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# rendering


def format_value(value, *, digits: int = 4) -> str:
    """A table cell: integers with thousands separators, floats to ``digits`` significant
    figures, missing values as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 1e6:
            return f"{int(value):,}" if abs(value) >= 1e4 else f"{int(value)}"
        return f"{value:.{digits}g}"
    text = str(value)
    return "n/a" if text == "nan" else text


def numeric_columns(frame: pd.DataFrame) -> set[str]:
    return {
        c
        for c in frame.columns
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    }


def _markdown_cell(text: str) -> str:
    """Pipes and backslashes escaped, line breaks as spaces, a '<' that would open an HTML tag
    written as &lt; (Markdown passes raw HTML through)."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def markdown_table(frame: pd.DataFrame, *, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (numbers right-aligned), hand-written:
    pipes and newlines in cells are escaped."""
    columns = [str(c) for c in frame.columns]
    if not columns:
        return ""
    numeric = numeric_columns(frame)
    lines = [
        "| " + " | ".join(_markdown_cell(c) for c in columns) + " |",
        "| " + " | ".join("---:" if c in numeric else "---" for c in frame.columns) + " |",
    ]
    for values in frame.itertuples(index=False, name=None):
        cells = [_markdown_cell(format_value(v, digits=digits)) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(frame: pd.DataFrame) -> str:
    """The CSV rendering (full precision)."""
    return frame.to_csv(index=False)


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False
