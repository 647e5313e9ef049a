"""``python -m validation report FOLDER [FOLDER ...]``: HTML + Markdown report of result folders.

Reads the folders written by ``synthetic``, ``paper`` and ``network`` (each with results.json),
and writes into ``--out``, all at once or not at all (``validation.store.result_folder``):

* ``report.html``   one self-contained file: figures embedded, nothing fetched when viewed;
* ``report.md``     the same content in Markdown, with the figures it shows beside it
                    (``figure-*.png``);
* ``summary.csv``   every comparison of every run in the tidy schema (``reports.schema``);
* ``results.json``  kind ``report``, the inputs and the provenance of this build.

Bad input (a folder that does not exist, has no results.json, holds corrupt JSON or an unknown
kind, or ``--out`` naming one of the inputs) is one line on stderr and exit status 2; nothing is
written. The top level imports neither matplotlib nor pandas; ``build_report`` is what
``python -m validation run`` calls after its stages.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from validation.errors import UsageError

DEFAULT_OUT = Path("results/report")


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "report",
        help="build the HTML + Markdown report from result folders",
        description=(
            "Build one self-contained HTML report (figures embedded) and its Markdown twin from "
            "result folders of the synthetic, paper and network subcommands."
        ),
    )
    parser.add_argument(
        "folders",
        type=Path,
        nargs="+",
        metavar="FOLDER",
        help="result folders holding results.json (synthetic, paper or network runs, "
        "or a network epoch sweep)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})"
    )


def report_config(folders) -> dict:
    """The configuration of a report: its input folders, as given."""
    return {"folders": [str(f) for f in folders]}


def check_out_is_no_input(folders, out) -> None:
    """``UsageError`` (one line) when ``out`` is one of the input folders."""
    if Path(out).resolve() in {Path(f).resolve() for f in folders}:
        raise UsageError(f"--out {out} is one of the input folders; choose another folder")


def result_identity(args) -> tuple[str, dict]:
    """Kind and configuration of the folder this command writes (``validation.store.check_out``);
    ``UsageError`` first when ``--out`` is one of the inputs."""
    check_out_is_no_input(args.folders, args.out)
    return "report", report_config(args.folders)


def command(args, started) -> int:
    import json

    path = build_report(args.folders, args.out, started=started)
    stored = json.loads((path.parent / "results.json").read_text())
    counts = stored["verdicts"]
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "no comparisons"
    print(f"report: {len(stored['inputs'])} result folders, {summary}")
    print(f"report: {path}")
    return 0


def build_report(folders, out=DEFAULT_OUT, *, started: datetime | None = None) -> Path:
    """Build the report of ``folders`` into ``out``; return the path of ``report.html``.

    Raises ``UsageError`` (one line) for unusable input, before anything is written.
    """
    from reports import report as _report
    from reports.tables import RunFolderError, load_runs, verdict_word
    from validation.store import provenance, result_folder

    started = started or datetime.now(UTC)
    clock = time.perf_counter()
    folders = [Path(f) for f in folders]
    out = Path(out)
    if not folders:
        raise UsageError("report needs at least one result folder")
    seen: dict[Path, Path] = {}
    for f in folders:
        if f.resolve() in seen:
            raise UsageError(
                f"result folder {f} is given twice ({seen[f.resolve()]} and {f}); each run is one "
                "input"
            )
        seen[f.resolve()] = f
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        runs = load_runs(folders)
        check_out_is_no_input(folders, out)
        built = _report.build(runs, created=started)
    except RunFolderError as exc:
        raise UsageError(str(exc)) from None

    counts = built.summary["verdict"].map(verdict_word).value_counts().to_dict()
    config = report_config(folders)
    with result_folder(out) as w:
        w.path("report.html").write_text(built.html, encoding="utf-8")
        w.path("report.md").write_text(built.markdown, encoding="utf-8")
        w.csv("summary.csv", built.summary)
        for name, png in sorted(built.figures.items()):
            w.path(name).write_bytes(png)
        w.json(
            "results.json",
            {
                "kind": "report",
                "provenance": provenance(
                    config, started=started, wall_seconds=time.perf_counter() - clock
                ),
                "inputs": [
                    {
                        "folder": str(run.folder),
                        "kind": run.kind,
                        "source": run.label,
                        "git": run.provenance.get("git"),
                    }
                    for run in runs
                ],
                "verdicts": counts,
                "files": w.manifest(),
            },
        )
    return out / "report.html"
