"""``python -m validation run``: the default main job, offline.

The synthetic checks, the network run (a small network on the bundled digits data) and the
paper's table, each with its default configuration, into ``--out/<stage>``, then the report of
all three into ``--out/report``. A stage whose folder already holds a complete result of the same
configuration (and its tidy rows, ``summary.csv``) is reused unless ``--force``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from validation.options import Parser

# The stages of ``run`` in order, each with the arguments it gets besides --out/--quiet: the
# defaults, except five batches per B in the network run, so that its batch-size sweep carries a
# batch-to-batch standard error (about 40 s more on 2 cores).
RUN_STAGES: dict[str, tuple[str, ...]] = {
    "synthetic": (),
    "network": ("--batch-draws", "5"),
    "paper": (),
}
# The module of each stage: ``add_parser(sub)``, ``command(args, started)`` and, for a stage
# that can be reused, ``config_from_args(args)``.
STAGE_MODULES = {
    "synthetic": "validation.synthetic",
    "network": "validation.network",
    "paper": "validation.paper",
}
# Stages without a ``config_from_args`` always run (the paper's table takes milliseconds).
REUSABLE = ("synthetic", "network")


def add_parser(sub) -> None:
    run = sub.add_parser(
        "run",
        help="the default main job (offline)",
        description=(
            "The default main job, offline: the synthetic checks, the network run (a small "
            "network on the bundled digits data) and the paper's table, each with its default "
            "configuration, then the report of all three. "
            "A stage whose result folder already holds the same configuration is reused."
        ),
    )
    run.add_argument("--out", type=Path, default=Path("results"), help="parent result folder")
    run.add_argument("--force", action="store_true", help="recompute stages that exist")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def stage_args(name: str, argv: list[str]):
    """The arguments of stage ``name`` parsed by that stage's own parser."""
    parser = Parser(prog=f"python -m validation {name}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    importlib.import_module(STAGE_MODULES[name]).add_parser(sub)
    return parser.parse_args([name, *argv])


def command(args, started) -> int:
    """Each stage of :data:`RUN_STAGES` into ``args.out/<stage>``, then the report."""
    from validation.report import build_report
    from validation.store import same_config

    folders = []
    for name, extra in RUN_STAGES.items():
        folder = args.out / name
        folders.append(folder)
        quiet = ["--quiet"] if args.quiet and name != "paper" else []
        stage = stage_args(name, ["--out", str(folder), *quiet, *extra])
        module = importlib.import_module(STAGE_MODULES[name])
        if (
            not args.force
            and name in REUSABLE
            and same_config(folder, module.config_from_args(stage))
            and (folder / "summary.csv").is_file()  # a run older than stored verdicts reruns
        ):
            print(f"{name}: reusing {folder} (same configuration; --force recomputes)")
            continue
        print(f"{name}: running", file=sys.stderr)
        module.command(stage, started)
    report = build_report(folders, args.out / "report", started=started)
    print(f"done: report in {report}")
    return 0
