"""The Python API: the full-vs-batch comparison on any ``torch.nn.Module`` in one call.

    import torch
    from validation.network import compare_spectra

    X, y = torch.randn(600, 20, dtype=torch.float64), torch.randint(0, 4, (600,))
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    comparison = compare_spectra(model, (X, y), batch_sizes=(16, 64), batch_draws=4)
    print(comparison.summary[["check", "quantity", "predicted", "measured", "verdict"]])

The model is measured at its current weights (a copy; it is neither trained nor written) under
the mean cross-entropy; the data are ``(X, y)`` tensors, an ``nnhessian.InMemoryDataset`` or a
deterministic ``DataLoader`` (read into memory, checked to give the same samples twice). Every
keyword is a :class:`~validation.network.config.NetworkConfig` field, with the command line's
defaults (``steps=100``, ``probes=5``, ``batch_sizes=(32, 64, 128, 256)``, ``dtype="float64"``,
...). ``out``: also write the result folder, readable by ``python -m validation report``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from validation.checks.network import Tables, compare
from validation.errors import UsageError
from validation.network.config import NetworkConfig
from validation.network.result import NetworkResult
from validation.network.stages import run_network
from validation.network.write import write_network

_NOT_OPTIONS = ("model", "data", "data_dir", "checkpoint", "width", "train_epochs")


@dataclass(frozen=True)
class Comparison:
    """The raw result (spectra, sigma^2, settings) and every table derived from it."""

    result: NetworkResult
    tables: Tables

    @property
    def summary(self):
        """The tidy rows: one comparison of theory with measurement each, with its verdict."""
        return self.tables.summary


def compare_spectra(model, data, *, out=None, progress: bool = False, **options) -> Comparison:
    """Full-data vs mini-batch Hessian spectra of ``model`` on ``data``, against the theory.

    Raises :class:`validation.errors.UsageError` (one line) for an option that is not a
    configuration field or has a bad value, and for a model or data that cannot be measured.
    """
    fields = {f.name for f in dataclasses.fields(NetworkConfig)} - set(_NOT_OPTIONS)
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}"
        )
    config = NetworkConfig(
        model=f"{type(model).__module__}.{type(model).__qualname__}",
        data="given data",
        train_epochs=0,
        **options,
    )
    started, clock = datetime.now(UTC), time.perf_counter()
    bars = None
    if progress:
        from validation.options import Progress

        bars = Progress(enabled=True)
    result = run_network(config, model=model, data=data, progress=bars)
    tables = compare(result)
    if out is not None:
        write_network(
            result, tables, out, started=started, wall_seconds=time.perf_counter() - clock
        )
    return Comparison(result, tables)
