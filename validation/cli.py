"""The command line: the registry of subcommands and ``main``. Each subcommand lives in its own
module (config, run, write, ``add_parser``, ``command``); bad input -> one line on stderr, exit
status 2, nothing written. Nothing but ``validation.__main__`` (and the tests) imports this."""

from __future__ import annotations

import argparse
import importlib
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
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m validation", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
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
        return importlib.import_module(args.command_module).command(args, started)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
