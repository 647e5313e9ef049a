"""Result folders as one tidy table (``reports.schema``), rendered as CSV and Markdown.

Every run (``synthetic``, ``paper``, ``network``) stores its comparisons of theory with
measurement, verdicts included, in its own ``summary.csv`` with the columns of
``reports.schema.TIDY_COLUMNS``; the rows and their verdicts are decided by the run's checks
(``validation.checks``). This module reads those rows and decides no verdict: it only checks that
the columns and verdict words are the schema's. A folder without ``summary.csv`` was written
before runs stored their verdicts; it is refused in one line that says to rerun it.

``source`` is the kind of run, followed by its folder name when that differs from the kind
(``network: epoch_010``), so several runs of one kind stay apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reports.schema import TIDY_COLUMNS, VERDICTS, tidy_frame, verdict_word

KINDS = ("synthetic", "paper", "network", "stability")
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
    # (folder, file name) of every table read, shared by the runs of one report, newest last:
    # names the file when its content turns out unusable (:func:`last_read`)
    reads: list = field(default_factory=list, repr=False, compare=False)

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def table(self, name: str) -> pd.DataFrame | None:
        """A CSV of the folder, or None when the run did not write it."""
        path = self.folder / name
        if not path.is_file():
            return None
        self.reads.append(path)
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


def last_read(runs) -> Path | None:
    """The file most recently read through ``Run.table`` by any of ``runs``."""
    for run in runs:
        return run.reads[-1] if run.reads else None
    return None  # no runs


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes, as listed under ``files`` in ``results.json``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(folder: Path, files, *, kind: str | None = None) -> None:
    """Raise ``RunFolderError`` naming the first file that ``files`` (``results.json``'s
    ``{relative path: SHA-256}``; ``results.json`` itself maps to null) lists but that is missing
    from ``folder`` or holds other bytes. Folders written before hashes were recorded (a plain
    list, or no ``files``) are not checked: the report names their missing parts as before."""
    if not isinstance(files, dict):
        return
    rerun = f"rerun python -m validation {kind}" if kind else "rerun that run"
    for name, digest in sorted(files.items()):
        path = folder / str(name)
        if not path.is_file():
            raise RunFolderError(f"{path}: missing (listed in {folder / 'results.json'}); {rerun}")
        if digest is not None and file_sha256(path) != digest:
            raise RunFolderError(
                f"{path}: changed since the run wrote it (its SHA-256 differs from the one in "
                f"{folder / 'results.json'}); {rerun}"
            )


def load_run(folder, *, label: str | None = None, reads: list | None = None) -> Run:
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
    verify_files(folder, results.get("files"), kind=kind)
    if label is None:
        label = kind if folder.name == kind else f"{kind}: {folder.name}"
    return Run(
        folder=folder, kind=kind, label=label, results=results, reads=[] if reads is None else reads
    )


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
            verify_files(folder, results.get("files"), kind="network --checkpoints")
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
    reads: list = []
    runs = [load_run(f, reads=reads) for f in expand_epoch_sweeps(folders)]
    seen: dict[str, int] = {}
    out = []
    for run in runs:
        label = run.label
        if sum(r.label == label for r in runs) > 1:
            label = f"{run.kind}: {run.folder.parent.name}/{run.folder.name}"
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        out.append(
            Run(folder=run.folder, kind=run.kind, label=label, results=run.results, reads=reads)
        )
    return out


# ---------------------------------------------------------------------------------------------
# tidy conversion


def tidy(run: Run) -> pd.DataFrame:
    """The tidy rows the run stored (``summary.csv``), with ``source`` set to the run's label.

    Raises ``RunFolderError`` (one line) when the file is missing -- a run written before runs
    stored their verdicts -- or does not follow the schema."""
    path = run.folder / "summary.csv"
    if not path.is_file():
        raise RunFolderError(
            f"{path}: missing (a {run.kind} run written before runs stored their verdicts); "
            f"rerun python -m validation {run.kind} for this folder"
        )
    summary = run.table("summary.csv")
    missing = [c for c in TIDY_COLUMNS if c not in summary.columns]
    if missing:
        raise RunFolderError(
            f"{path}: missing columns {', '.join(missing)}; needed: {', '.join(TIDY_COLUMNS)}"
        )
    summary = summary[list(TIDY_COLUMNS)].copy()
    summary["source"] = run.label
    try:
        return tidy_frame(summary.to_dict(orient="records"))
    except ValueError as exc:
        raise RunFolderError(f"{path}: {exc}") from None


def combined(runs) -> pd.DataFrame:
    """The tidy rows of all runs, in the order given."""
    frames = [tidy(run) for run in runs]
    frames = [f for f in frames if len(f)]
    if not frames:
        return tidy_frame([])
    return pd.concat(frames, ignore_index=True)


def z_crit_of(run: Run) -> float:
    """The z threshold a synthetic run used (its config), or the default; for describing the
    run's rule in the report, not for deciding any verdict."""
    value = run.config.get("z_crit", DEFAULT_Z_CRIT)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return DEFAULT_Z_CRIT
    return value if math.isfinite(value) and value > 0 else DEFAULT_Z_CRIT


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
