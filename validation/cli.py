"""The command line: the registry of subcommands and ``main``. Each subcommand lives in its own
module (config, run, write, ``add_parser``, ``command``); bad input -> one line on stderr, exit
status 2, nothing written. Nothing but ``validation.__main__`` (and the tests) imports this."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from validation.errors import UsageError
from validation.options import Parser

EXIT_USAGE = 2
DESCRIPTION = (
    "Random-matrix theory of mini-batch Hessian spectra, checked by simulation, on networks and "
    "against the paper. Each subcommand writes a result folder (--out); bad input is one line "
    "on stderr and exit status 2, with nothing written."
)

# One module per subcommand, in the order of ``--help``. Each defines ``add_parser(sub)`` (adds
# its subparser; the registry records which module added it) and ``command(args, started) ->
# int``. Their top level imports neither torch nor matplotlib, so building the parser stays fast.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "validation.synthetic",
    "validation.paper",
    "validation.run",
    "validation.report",
    "validation.train",
    "validation.network",
    "validation.stability",
)


# The result folder each subcommand writes into --out, as ``(kind, configuration)`` of the
# parsed arguments: compared with what --out holds before any work (``validation.store.
# check_out``; ``run`` checks its stage folders itself).
RESULT_IDENTITY = {
    "validation.synthetic": "validation.synthetic:result_identity",
    "validation.paper": "validation.paper:result_identity",
    "validation.report": "validation.report:result_identity",
    "validation.train": "validation.train:result_identity",
    "validation.network": "validation.network:result_identity",
}
OVERWRITE_HELP = (
    "replace --out even when it holds another kind of run, a run of another configuration, or "
    "files that are no result folder (a rerun of the same configuration replaces it anyway)"
)


def result_identity(args):
    """``(kind, configuration)`` of the folder ``args`` will write, or None (no such check)."""
    spec = RESULT_IDENTITY.get(args.command_module)
    if spec is None:
        return None
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)(args)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m validation", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(name)
        before = set(sub.choices)
        module.add_parser(sub)
        for added in set(sub.choices) - before:
            parser_of = sub.choices[added]
            parser_of.set_defaults(command_module=name)
            # every subcommand with --out (each has a default folder) gets --overwrite, defined once
            if parser_of.get_default("out") is not None:
                parser_of.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def _other_rank() -> bool:
    """A torch.distributed rank other than 0 (torchrun sets RANK)."""
    return os.environ.get("RANK", "0").strip() not in ("", "0")


def main(argv=None) -> int:
    started = datetime.now(UTC)
    try:
        args = build_parser().parse_args(argv)
        if isinstance(getattr(args, "out", None), Path):
            from validation.store import check_out, check_writable

            check_writable(args.out)
            identity = result_identity(args)
            if identity is not None:
                kind, config = identity
                args.out_state = check_out(args.out, kind, config, overwrite=args.overwrite)
        return importlib.import_module(args.command_module).command(args, started)
    except UsageError as exc:
        if _other_rank() and not getattr(exc, "every_rank", False):
            # under torchrun every rank parses the same options: rank 0 says it once
            raise SystemExit(EXIT_USAGE) from None
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
