"""What every subcommand shares: argument types that refuse bad input in one line, the parser
class that turns argparse errors into :class:`validation.errors.UsageError`, and progress bars.

Each subcommand module imports these; nothing here imports a subcommand (``validation.cli`` holds
the registry and ``main`` only, and nothing imports it).
"""

from __future__ import annotations

import argparse
import math
import sys

from validation.errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (no usage dump) with exit status 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def integer(text: str) -> int:
    """An integer, also written as 1e6 or 15_291_300."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not math.isfinite(value) or not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def number(text: str) -> float:
    """A finite real number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def spike_set(text: str) -> tuple[float, ...]:
    """A comma-separated set of spike eigenvalues, e.g. '3,0.5,-2'; 'none' for no spike."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(number(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated finite numbers such as 3,0.5,-2 (or none), got {text!r}"
        ) from None


class Progress:
    """tqdm bars, one per stage label, closed when the stage is done or the run ends."""

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self.bars = {}

    def __enter__(self):
        return self

    def __call__(self, label, done, total):
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(label)
        if bar is None:
            bar = self.bars[label] = tqdm(total=total, desc=label, leave=False, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def __exit__(self, *exc):
        for bar in self.bars.values():
            bar.close()
        return False
