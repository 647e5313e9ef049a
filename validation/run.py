"""``python -m validation run``: the default main job, offline.

The synthetic checks, the network run (a small network on the bundled digits data), the paper's
table and the largest stable learning rate (``stability``, the same network), each with its
default configuration, into ``--out/<stage>``, then the report of all four into ``--out/report``.
A stage whose folder already holds a complete result of the same configuration (every file
matching its hash in results.json, and its tidy rows, ``summary.csv``) is reused unless
``--force``. A stage folder (or ``report``) that holds anything else -- a run
made with other options, another kind of run, files without results.json -- is refused before
any work, in one line, unless ``--force`` (recompute every stage and replace) or
``--overwrite`` (replace those folders, still reusing the stages of the same configuration).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from validation.options import Parser

# The stages of ``run`` in order, each with the arguments it gets besides --out/--quiet: the
# defaults, except 16 batches per B in the network run, so that its batch-size sweep carries a
# batch-to-batch standard error and the models of the batch lambda_max (validation.checks.
# batch_models) are compared with a measured mean, sd and quantiles (about 60 s more on 2 cores).
RUN_STAGES: dict[str, tuple[str, ...]] = {
    "synthetic": (),
    "network": ("--batch-draws", "16"),
    "paper": (),
    "stability": (),
}
# The module of each stage: ``add_parser(sub)``, ``command(args, started)`` and
# ``config_from_args(args)``; each stage writes a result folder of the kind named by the stage.
STAGE_MODULES = {
    "synthetic": "validation.synthetic",
    "network": "validation.network",
    "paper": "validation.paper",
    "stability": "validation.stability",
}
# The other stages always run (the paper's table takes milliseconds).
REUSABLE = ("synthetic", "network", "stability")


def add_parser(sub) -> None:
    run = sub.add_parser(
        "run",
        help="the default main job (offline)",
        description=(
            "The default main job, offline: the synthetic checks, the network run (a small "
            "network on the bundled digits data), the paper's table and the largest stable "
            "learning rate of the same network, each with its default configuration, then the "
            "report of all four. "
            "A stage whose result folder already holds the same configuration is reused."
        ),
    )
    run.add_argument("--out", type=Path, default=Path("results"), help="parent result folder")
    run.add_argument(
        "--force",
        action="store_true",
        help="recompute every stage, replacing stage folders made with other options",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def stage_args(name: str, argv: list[str]):
    """The arguments of stage ``name`` parsed by that stage's own parser."""
    parser = Parser(prog=f"python -m validation {name}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    importlib.import_module(STAGE_MODULES[name]).add_parser(sub)
    return parser.parse_args([name, *argv])


def plan_stages(args) -> list:
    """``(name, folder, parsed stage arguments, module, reuse)`` of each stage; ``UsageError``
    (one line, before any work) for a stage folder that holds anything but a run of that stage
    with this configuration, unless ``--force`` or ``--overwrite``."""
    from validation.report import report_config
    from validation.store import check_out, same_config

    replace = args.force or getattr(args, "overwrite", False)
    plan = []
    for name, extra in RUN_STAGES.items():
        folder = args.out / name
        quiet = ["--quiet"] if args.quiet and name != "paper" else []
        stage = stage_args(name, ["--out", str(folder), *quiet, *extra])
        module = importlib.import_module(STAGE_MODULES[name])
        config = module.config_from_args(stage)
        state = check_out(folder, name, config, overwrite=replace, flag="--force")
        reuse = (
            not args.force
            and name in REUSABLE
            and state == "rerun"
            and same_config(folder, config)
            and (folder / "summary.csv").is_file()  # a run older than stored verdicts reruns
        )
        plan.append((name, folder, stage, module, reuse))
    folders = [folder for _, folder, *_ in plan]
    check_out(
        args.out / "report", "report", report_config(folders), overwrite=replace, flag="--force"
    )
    return plan


def command(args, started) -> int:
    """Each stage of :data:`RUN_STAGES` into ``args.out/<stage>``, then the report."""
    from validation.report import build_report

    plan = plan_stages(args)
    for name, folder, stage, module, reuse in plan:
        if reuse:
            print(f"{name}: reusing {folder} (same configuration; --force recomputes)")
            continue
        print(f"{name}: running", file=sys.stderr)
        module.command(stage, started)
    folders = [folder for _, folder, *_ in plan]
    report = build_report(folders, args.out / "report", started=started)
    print(f"done: report in {report}")
    return 0
