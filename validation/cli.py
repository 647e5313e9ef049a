"""The command line: argparse subcommands parse into a frozen config, call a ``run_*`` function,
write a result folder (``validation.store``). Bad input -> one line on stderr, exit status 2,
nothing written."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from validation.errors import UsageError
from validation.options import Parser, Progress, integer, number, spike_set

EXIT_USAGE = 2

# Subcommands that live in their own module. Each module defines ``add_parser(sub)`` (adds its
# subparser, with ``set_defaults(command_module=__name__)`` implied by the registry) and
# ``command(args, started) -> int``. Their top level imports neither torch nor matplotlib, so
# building the parser stays fast.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "validation.report",
    "validation.train",
    "validation.network",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m validation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    from validation.synthetic import SyntheticConfig

    d = SyntheticConfig()
    syn = sub.add_parser(
        "synthetic",
        help="Monte-Carlo check of Theorem 2, Weyl bounds, overlaps and free convolution",
        description="Draw low rank + GOE matrices over a grid and compare with theory.",
    )
    syn.add_argument("--P", type=integer, nargs="+", default=list(d.P), help="dimensions")
    syn.add_argument("--t", type=number, nargs="+", default=list(d.t), help="noise scales P s^2")
    syn.add_argument(
        "--sigma2",
        type=number,
        help="paper's parametrisation instead of --t: t = P f(N, B) sigma^2 (needs --N and --B)",
    )
    syn.add_argument("--N", type=integer, help="training-set size (with --sigma2)")
    syn.add_argument("--B", type=integer, help="batch size, drawn without replacement")
    syn.add_argument(
        "--factor", default="paper", help="finite-population factor: paper (N-B)/(BN) or exact"
    )
    syn.add_argument(
        "--spikes",
        type=spike_set,
        nargs="+",
        default=list(d.spikes),
        help="spike sets, each comma-separated, e.g. --spikes 3,0.5,-2 1.5 (none: pure GOE)",
    )
    syn.add_argument("--trials", type=integer, default=d.trials, help="draws per configuration")
    syn.add_argument("--method", default=d.method, help="dense (P <= 4,000) or band (any P)")
    syn.add_argument("--seed", type=integer, default=d.seed, help="root of all random streams")
    syn.add_argument(
        "--sweep-points", type=integer, default=d.sweep_points, help="BBP sweep size (0: none)"
    )
    syn.add_argument(
        "--histogram-P", type=integer, default=d.histogram_P, help="P of the histogram draws"
    )
    syn.add_argument("--n-extreme", type=integer, default=d.n_extreme, help="eigenvalues per end")
    syn.add_argument("--z-crit", type=number, default=d.z_crit, help="|z| above it: disagrees")
    syn.add_argument("--out", type=Path, default=Path("results/synthetic"), help="result folder")
    syn.add_argument("--quiet", action="store_true", help="no progress bars")

    pap = sub.add_parser(
        "paper",
        help="the paper's table re-derived, with regime checks",
        description="Re-derive the paper's Theorem 2 table (or your own rows) from printed inputs.",
    )
    pap.add_argument(
        "--rows",
        type=Path,
        help="CSV with columns name,P,N,B,lambda_full,predicted_printed,measured "
        "(default: the paper's two rows)",
    )
    pap.add_argument("--factor", default="paper", help="finite-population factor: paper or exact")
    pap.add_argument("--out", type=Path, default=Path("results/paper"), help="result folder")

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

    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(name)
        before = set(sub.choices)
        module.add_parser(sub)
        for added in set(sub.choices) - before:
            sub.choices[added].set_defaults(command_module=name)
    return parser


def main(argv=None) -> int:
    started = datetime.now(UTC)
    try:
        args = build_parser().parse_args(argv)
        if isinstance(getattr(args, "out", None), Path):
            from validation.store import check_writable

            check_writable(args.out)
        if args.command == "synthetic":
            return _synthetic(args, started)
        if args.command == "paper":
            return _paper(args, started)
        if args.command == "run":
            return _run(args, started)
        module = getattr(args, "command_module", None)
        if module is not None:
            return importlib.import_module(module).command(args, started)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


def _synthetic(args, started) -> int:
    config = _synthetic_config(args)
    _run_synthetic(config, args.out, quiet=args.quiet, started=started)
    return 0


def _synthetic_config(args):
    from validation.synthetic import SyntheticConfig

    given = [name for name in ("sigma2", "N", "B") if getattr(args, name) is not None]
    if given and len(given) < 3:
        missing = sorted({"sigma2", "N", "B"} - set(given))
        raise UsageError(f"--sigma2, --N and --B go together; missing --{', --'.join(missing)}")
    population = (args.sigma2, args.N, args.B, args.factor) if given else None
    return SyntheticConfig(
        population=population,
        P=tuple(args.P),
        t=tuple(args.t),
        spikes=tuple(args.spikes),
        trials=args.trials,
        method=args.method,
        seed=args.seed,
        sweep_points=args.sweep_points,
        histogram_P=args.histogram_P,
        n_extreme=args.n_extreme,
        z_crit=args.z_crit,
    )


def _run_synthetic(config, out, *, quiet, started):
    from validation.synthetic import run_synthetic, write_synthetic

    clock = time.perf_counter()
    with Progress(enabled=not quiet) as progress:
        result = run_synthetic(config, progress=progress)
    write_synthetic(result, out, started=started, wall_seconds=time.perf_counter() - clock)
    counts = result.extremes["verdict"].value_counts().to_dict()
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    print(f"synthetic: {summary}; results in {out}")


def _paper(args, started) -> int:
    from validation.paper import PAPER_ROWS, paper_table, read_rows
    from validation.store import provenance, result_folder

    clock = time.perf_counter()
    rows = read_rows(args.rows) if args.rows is not None else list(PAPER_ROWS)
    table = paper_table(rows, factor=args.factor)
    config = {"rows": rows, "factor": args.factor, "source": str(args.rows or "paper")}
    with result_folder(args.out) as w:
        w.csv("paper_table.csv", table)
        w.json(
            "results.json",
            {
                "kind": "paper",
                "provenance": provenance(
                    config, started=started, wall_seconds=time.perf_counter() - clock
                ),
                "rows": table.to_dict(orient="records"),
                "files": ["paper_table.csv", "results.json"],
            },
        )
    for r in table.itertuples():
        print(
            f"{r.name}: {r.regime} regime, predicted {r.predicted:.2f}, measured {r.measured:.2f}"
            f" -> {r.verdict}; sigma^2 x{r.sigma2_ratio_to_match:.2f} to match; flags: {r.flags}"
        )
    print(f"paper: results in {args.out}")
    return 0


# The stages of ``run`` in order, each with the arguments it gets besides --out/--quiet: the
# defaults, except five batches per B in the network run, so that its batch-size sweep carries a
# batch-to-batch standard error (about 40 s more on 2 cores).
RUN_STAGES: dict[str, tuple[str, ...]] = {
    "synthetic": (),
    "network": ("--batch-draws", "5"),
    "paper": (),
}


def _run(args, started) -> int:
    """The default main job: each stage with its default configuration into ``out/<stage>``,
    then the report of all three into ``out/report``. A stage whose folder already holds a
    complete result of the same configuration is reused unless ``--force``."""
    from validation import network
    from validation.report import build_report
    from validation.store import same_config

    parser = build_parser()
    configs = {"synthetic": _synthetic_config, "network": network.config_from_args}
    folders = []
    for name, extra in RUN_STAGES.items():
        folder = args.out / name
        folders.append(folder)
        quiet = ["--quiet"] if args.quiet and name != "paper" else []
        stage = parser.parse_args([name, "--out", str(folder), *quiet, *extra])
        make_config = configs.get(name)
        if not args.force and make_config and same_config(folder, make_config(stage)):
            print(f"{name}: reusing {folder} (same configuration; --force recomputes)")
            continue
        print(f"{name}: running", file=sys.stderr)
        if name == "synthetic":
            _synthetic(stage, started)
        elif name == "network":
            network.command(stage, started)
        else:
            _paper(stage, started)
    report = build_report(folders, args.out / "report", started=started)
    print(f"done: report in {report}")
    return 0
