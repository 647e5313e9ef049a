"""Epoch sweeps (``--checkpoints DIR``): sigma^2 and the extreme eigenvalues over training, the
paper's Figures 3-4. Each saved epoch is measured into its own complete result folder (reused when
it holds the same configuration, so an interrupted sweep resumes), then ``epochs.csv`` and
``epochs.png``."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from validation.checks.network import Tables, compare
from validation.errors import UsageError
from validation.network.config import EPOCH_FOLDER, SIGMA2_ESTIMATORS
from validation.network.prepare import is_main, peek_training_checkpoint
from validation.network.result import NetworkResult
from validation.network.stages import run_network
from validation.network.write import write_network

EPOCH_SIDE_COLUMNS = (
    "lambda_full_{}",  # extreme Lanczos eigenvalue of H_emp
    "measured_{}",  # of H_B (Lanczos)
    "measured_{}_se",
    "predicted_{}",  # Theorem 2 from lambda_full and sigma^2 (per-sample)
    "predicted_{}_se",
    "regime_{}",
    "fc_predicted_{}",  # free-convolution refinement
    "exact_{}",  # dense check (NaN without it)
)
EPOCH_COLUMNS = (
    "epoch",
    *(
        f"sigma2_{name.replace('-', '_')}{part}"
        for name in SIGMA2_ESTIMATORS
        for part in ("", "_ci_low", "_ci_high")
    ),
    "B",
    "t",
    *(c.format(side) for side in ("max", "min") for c in EPOCH_SIDE_COLUMNS),
    "noise_max",
    "noise_min",
    "goe_edge",
)
_PER_B_COLUMNS = EPOCH_COLUMNS[EPOCH_COLUMNS.index("B") :]  # taken from each sweep.csv row


def _epoch_ranges(epochs) -> str:
    """``1-5, 10, 20-22``: sorted epochs with consecutive runs collapsed."""
    epochs = sorted(epochs)
    parts, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            parts.append(str(start) if start == e else f"{start}-{e}")
            start = None
    return ", ".join(parts)


def select_checkpoints(folder, epochs, model: str) -> dict[int, Path]:
    """``{epoch: path}`` of the training checkpoints to measure in ``folder`` (the ``--out`` of
    ``python -m validation train``): every saved epoch, or ``epochs``.

    All of them are checked before anything runs (memory-mapped, so only their small fields are
    read): each must be a training checkpoint of the architecture ``model`` and of one class
    count. A ``UsageError`` (one line) otherwise, or when the folder holds no checkpoints or
    lacks an epoch asked for.
    """
    from nnhessian.train_checkpoint import list_checkpoints

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(
            f"--checkpoints {folder} is not a folder (expected the --out folder of "
            "python -m validation train)"
        )
    saved = list_checkpoints(folder)
    if not saved:
        raise UsageError(
            f"--checkpoints {folder}: no checkpoints in {folder / 'checkpoints'} (expected "
            f"epoch_EEEE.pt files written by python -m validation train --out {folder})"
        )
    if epochs:
        missing = sorted(set(epochs) - set(saved))
        if missing:
            raise UsageError(
                f"--epochs {' '.join(map(str, missing))} not saved in {folder / 'checkpoints'}; "
                f"saved epochs: {_epoch_ranges(saved)}"
            )
        saved = {e: saved[e] for e in sorted(set(epochs))}
    classes = None
    for path in saved.values():
        payload = peek_training_checkpoint(path)
        if payload is None:
            raise UsageError(
                f"checkpoint {path} is not a readable training checkpoint of this suite "
                "(written by python -m validation train); delete it or choose --epochs without it"
            )
        if payload["model_name"] != model:
            raise UsageError(
                f"checkpoint {path} holds a {payload['model_name']} model, not {model}; pass "
                f"--model {payload['model_name']} or a folder of {model} checkpoints"
            )
        if classes is not None and int(payload["num_classes"]) != classes:
            raise UsageError(
                f"checkpoint {path} has {payload['num_classes']} classes, the others {classes}"
            )
        classes = int(payload["num_classes"])
    return saved


def epoch_summary(result: NetworkResult, tables: Tables) -> str:
    """One console line per measured epoch."""
    s2 = result.sigma2["per-sample"]
    lam = result.full.extreme("max")[0]
    parts = [
        f"epoch {result.epoch}: sigma^2 {s2.estimate:.4g} [{s2.ci_low:.4g}, {s2.ci_high:.4g}]",
        f"lambda_max full {lam:.4g}",
    ]
    for row in tables.sweep.itertuples():
        parts.append(
            f"B={row.B} measured {row.measured_max:.4g} vs Theorem 2 {row.predicted_max:.4g}"
        )
    return "; ".join(parts)


def epoch_table(folders: dict) -> pd.DataFrame:
    """``epochs.csv`` from the stored epoch folders (``results.json`` and ``sweep.csv``), so a
    reused folder and a fresh one enter alike. Columns :data:`EPOCH_COLUMNS`."""
    from validation.store import read_results

    rows = []
    for key in sorted(folders):
        folder = Path(folders[key])
        stored = read_results(folder)
        sweep = pd.read_csv(folder / "sweep.csv")
        epoch = stored.get("epoch")
        base = {"epoch": key if epoch is None else int(epoch)}
        for name in SIGMA2_ESTIMATORS:
            entry = stored["sigma2"].get(name, {})
            slug = name.replace("-", "_")
            for part, field_name in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                value = entry.get(field_name)
                base[f"sigma2_{slug}{part}"] = float("nan") if value is None else value
        for row in sweep.to_dict(orient="records"):
            rows.append({**base, **{c: row.get(c, float("nan")) for c in _PER_B_COLUMNS}})
    table = pd.DataFrame(rows, columns=list(EPOCH_COLUMNS))
    return table.sort_values(["epoch", "B"], kind="stable").reset_index(drop=True)


def sigma2_long(table: pd.DataFrame) -> pd.DataFrame:
    """The sigma^2 columns of an epoch table as ``reports.figures.sigma2_over_epochs`` reads
    them: series (estimator), epoch, value, ci_low, ci_high; one row per epoch and estimator."""
    first = table.drop_duplicates("epoch")
    frames = []
    for name in SIGMA2_ESTIMATORS:
        slug = f"sigma2_{name.replace('-', '_')}"
        if first[slug].notna().any():
            frames.append(
                pd.DataFrame(
                    {
                        "series": name,
                        "epoch": first["epoch"],
                        "value": first[slug],
                        "ci_low": first[f"{slug}_ci_low"],
                        "ci_high": first[f"{slug}_ci_high"],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def result_identity(config, checkpoints) -> tuple[str, object]:
    """Kind and configuration of the folder a network run writes (``validation.store.check_out``):
    one run (kind ``network``), or a sweep over the checkpoints folder ``checkpoints`` (kind
    ``network-epochs``; the epochs chosen are not compared, so a rerun may add epochs)."""
    if checkpoints is None:
        return "network", config
    return "network-epochs", {"network": config, "checkpoints": str(checkpoints)}


def write_epochs(
    table, out, *, config: dict, folders: dict, started, wall_seconds, keep_others=True
) -> None:
    """``epochs.csv``, ``epochs.png`` (sigma^2, lambda_max and lambda_min against the epoch)
    and ``results.json`` (kind ``network-epochs``) into ``out``, swapped in whole with the epoch
    folders carried: those of this sweep and, with ``keep_others``, every other ``epoch_*``
    folder already there (measured by earlier sweeps of this configuration)."""
    from reports import figures
    from validation.store import provenance, result_folder

    carry = [Path(f).name for f in folders.values()] + (["epoch_*"] if keep_others else [])
    with result_folder(out, carry=sorted(set(carry))) as w:
        w.csv("epochs.csv", table)
        fig, (ax_s2, ax_max, ax_min) = figures.new_figure(3, width=5.0)
        figures.sigma2_over_epochs(ax_s2, sigma2_long(table))
        figures.extremes_over_epochs(ax_max, table, side="max")
        figures.extremes_over_epochs(ax_min, table, side="min")
        w.figure("epochs.png", fig)
        w.json(
            "results.json",
            {
                "kind": "network-epochs",
                "provenance": provenance(config, started=started, wall_seconds=wall_seconds),
                "epochs": sorted(int(e) for e in folders),
                "folders": {str(e): Path(f).name for e, f in sorted(folders.items())},
                "files": w.manifest(),
            },
        )


def run_sweep(args, config, checkpoints, context, run, started) -> int:
    """Measure every selected epoch into ``<out>/epoch_EEEE/`` (reusing complete folders of
    the same configuration), then the epoch table and figure. Rank 0 decides reuse and writes."""
    from datetime import UTC, datetime

    from validation.options import Progress
    from validation.store import same_config

    sharding = None
    if context is not None and context.world_size > 1:
        from nnhessian.distributed import Sharding

        sharding = Sharding(context.rank, context.world_size)
    main = is_main(sharding)
    clock = time.perf_counter()
    folders = {}
    for epoch, path in checkpoints.items():
        name = EPOCH_FOLDER.format(epoch)
        folder = Path(args.out) / name
        cfg = replace(config, checkpoint=str(path))
        reuse = main and same_config(folder, cfg)
        if sharding is not None:
            reuse = sharding.broadcast_object(reuse)
        folders[epoch] = folder
        if reuse:
            if main:
                print(f"epoch {epoch}: reusing {folder} (same configuration)")
            continue
        epoch_started, epoch_clock = datetime.now(UTC), time.perf_counter()
        state_dir = None if run["state_dir"] is None else Path(run["state_dir"]) / name
        with Progress(enabled=not args.quiet and main) as progress:
            result = run_network(
                cfg, progress=progress, context=context, **dict(run, state_dir=state_dir)
            )
        if main:
            tables = compare(result)
            write_network(
                result,
                tables,
                folder,
                started=epoch_started,
                wall_seconds=time.perf_counter() - epoch_clock,
            )
            print(epoch_summary(result, tables))
    if not main:
        return 0
    sweep_config = {
        "network": config,
        "checkpoints": str(args.checkpoints),
        "epochs": sorted(checkpoints),
    }
    write_epochs(
        epoch_table(folders),
        args.out,
        config=sweep_config,
        folders=folders,
        started=started,
        wall_seconds=time.perf_counter() - clock,
        keep_others=getattr(args, "out_state", None) != "foreign",
    )
    print(f"network: {len(folders)} epochs ({_epoch_ranges(folders)}); results in {args.out}")
    return 0
