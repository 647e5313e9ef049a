"""What every subcommand shares: argument types that refuse bad input in one line, the parser
class that turns argparse errors into :class:`validation.errors.UsageError`, the range and
machine-size checks of the configurations, and progress bars.

Limits every subcommand applies up front, before any work (each message names the option and the
accepted range, or the estimate and the machine's size):

* seeds: integers in [0, :data:`SEED_MAX`] = [0, 2^63 - 1] (an int64: ``torch.manual_seed``
  and every reader of ``results.json`` take it; numpy's SeedSequence refuses negative ones);
* dimensions and sample counts that enter float64 formulas (P, N, B): at most
  :data:`EXACT_INT_MAX` = 2^53, the largest range in which float64 holds every integer;
* memory: an estimate of the run's peak bytes must not exceed the machine's physical memory
  (:func:`machine_memory_bytes`, from ``os.sysconf``); work: an estimate of its floating-point
  operations must not exceed :data:`WORK_MAX_FLOP` (:func:`check_machine`).

Each subcommand module imports these; nothing here imports a subcommand (``validation.cli`` holds
the registry and ``main`` only, and nothing imports it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from validation.errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (no usage dump) with exit status 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


SEED_MAX = 2**63 - 1  # a seed is an int64 (torch.manual_seed, JSON readers)
EXACT_INT_MAX = 2**53  # float64 holds every integer up to here (P, N, B enter float formulas)
# Work beyond which a run is refused: 1e18 floating-point operations are about four months at
# 1e11 flop/s, an optimistic rate for one node's dense kernels (the 2-core dev machine reaches
# ~2e10); an estimate above it is a mistyped count, not an experiment.
WORK_MAX_FLOP = 1e18
# Least work of one sample pass of a network (forward + backward, or its share of a
# Hessian-vector product): a model of one parameter, 2 flops per pass, 4 passes. A lower bound
# for every model, so a count refused with it is beyond the machine whatever the model.
MIN_SAMPLE_FLOP = 8.0
FLOAT32_MAX = 3.4028234663852886e38  # largest float32: torch casts hyperparameters to it


def integer(text: str) -> int:
    """An integer, also written as 1e6 or 15_291_300 (digits alone are read exactly)."""
    digits = text.replace("_", "").strip()
    if digits.lstrip("+-").isdigit() and len(digits) <= 400:
        return int(digits)
    try:
        value = float(digits)
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


def require_integer(option: str, value: int, low: int, high: int, why: str = "") -> None:
    """``UsageError`` unless ``low <= value <= high``; the message names ``option``, the range
    and, when given, ``why`` (what the bounds mean)."""
    if not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise UsageError(
            f"{option} must be an integer in [{low:,}, {high:,}]{reason}, got {_show(value)}"
        )


def require_number(
    option: str, value: float, low: float, high: float, *, open_low=False, why: str = ""
) -> None:
    """``UsageError`` unless ``value`` is finite and in [low, high] (``(low, high]`` with
    ``open_low``); the message names ``option``, the range and ``why``."""
    inside = math.isfinite(value) and value <= high and (value > low if open_low else value >= low)
    if not inside:
        reason = f" ({why})" if why else ""
        bracket = "(" if open_low else "["
        raise UsageError(
            f"{option} must lie in {bracket}{low:g}, {high:g}]{reason}, got {_show(value)}"
        )


def _show(value) -> str:
    """A value as typed, short: huge integers (1e30 read as an integer) in exponent form."""
    if isinstance(value, int) and abs(value) >= 10**15:
        return f"{value:.3g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def machine_memory_bytes() -> int:
    """Physical memory of this machine (``os.sysconf``: pages x page size); 0 when unknown."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def format_bytes(n: float) -> str:
    """Bytes in binary units, three significant digits: 14.6 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_machine(what: str, *, memory: float = 0.0, flops: float = 0.0) -> None:
    """``UsageError`` when the estimated peak ``memory`` (bytes) of ``what`` exceeds this
    machine's physical memory, or its estimated work ``flops`` exceeds :data:`WORK_MAX_FLOP`.
    Unknown machine memory (0) checks work only."""
    available = machine_memory_bytes()
    if available and memory > available:
        raise UsageError(
            f"{what} needs about {format_bytes(memory)} of memory (estimate), more than this "
            f"machine's {format_bytes(available)}; choose smaller sizes"
        )
    if flops > WORK_MAX_FLOP:
        raise UsageError(
            f"{what} needs about {flops:.2g} floating-point operations (estimate), more than "
            f"{WORK_MAX_FLOP:.0e} (months of computing); choose smaller sizes"
        )


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
