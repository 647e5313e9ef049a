r"""``python -m validation stability``: does the batch spectrum predict the largest stable
learning rate? (issue 12)

At fixed weights (a checkpoint, or the brief seeded training of ``network``), for every batch
size B and for the full batch (B = N, gradient descent):

1. measured: eta_max(B), the largest constant learning rate at which SGD from those weights stays
   stable for ``sgd_steps`` steps (divergence: the full-data loss non-finite or above
   ``factor`` x its start), by bisection on a log grid (:func:`nnhessian.stability.eta_max`),
   for ``seeds`` seeds (median and range); plain SGD and heavy ball with ``momentum``;
2. the spectra behind the predictions: the network run's stages on the same prepared model
   (:func:`validation.network.measure`; ``batch_draws`` batches per B < N, so lambda_max(H_B)
   has a mean and quantiles over batches; the curvature stage for the extreme-value model M2);
3. Wu-Ma-E's inputs: the sharpness a and ``s^2 = mean_i ||H_i v||^2 - a^2`` by per-sample
   products (:func:`nnhessian.stability.wu_ma_e_inputs`);
4. the comparison (:mod:`validation.checks.stability`, pure): every prediction per B with the one
   verdict rule, the scaling exponent of eta_max ~ B^alpha against alpha = 1 and 1/2, and the goal
   (best prediction within 20% at every B).

Writes ``results.json`` (provenance), ``eta_max.csv`` (every seed's bracket),
``measured.csv`` (median, range, SE per B and momentum), ``predictions.csv``, the tidy rows
``summary.csv`` and ``stability.png``. Random streams: the network run's (``STREAMS``) and, for
SGD's batches, ``SeedSequence(seed, spawn_key=(SGD_STREAM, B, k))`` for seed index k.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from validation.errors import UsageError
from validation.options import SEED_MAX, integer, number, require_integer, require_number

SGD_STREAM = 1_000  # spawn-key root of SGD's batch streams (the network's STREAMS are < 1,000)
KIND = "stability"


@dataclass(frozen=True)
class StabilityConfig:
    """A stability run. The defaults take about a minute on 2 CPU cores (digits MLP)."""

    model: str = "mlp"
    data: str = "digits"
    data_dir: str | None = None
    samples: int | None = None  # N: the first n samples (None: all)
    width: int | None = None
    checkpoint: str | None = None  # weights; None: the network run's brief seeded training
    train_epochs: int = 5  # as validation.network
    batch_sizes: tuple[int, ...] = (32, 128)  # B < N; the full batch B = N is always added
    sgd_steps: int = 100  # T: steps of each SGD run (longer: less upward run-length bias)
    seeds: int = 3  # bisections per (B, momentum), each with its own batches
    factor: float = 10.0  # divergence: loss above factor x the starting loss (issue 12)
    rel: float = 0.1  # bisection stops at hi / lo <= 1 + rel (a coarse log grid)
    momentum: float = 0.9  # the second series (heavy ball; the first is plain SGD)
    batch_draws: int = 8  # batches per B for lambda_max(H_B): mean and 10%/90% quantiles
    lanczos_steps: int = 100  # Lanczos steps m (as the network run; capped at P)
    probes: int = 2  # SLQ probes of the network stages (only extremes are used here)
    sigma2_probes: int = 2  # sigma^2 probes (>= 2 for an interval; drives Theorem 2's t)
    curvature: str = "yes"  # the curvature stage (the extreme-value model M2)
    seed: int = 0
    device: str = "auto"
    z_crit: float = 4.0
    threads: int = 1  # CPU threads (as validation.network: 1 is fastest on a shared machine)

    def __post_init__(self):
        validate(self)
        network_config(self)  # the network fields' own checks, one line each


def validate(c: StabilityConfig) -> None:
    """Raise ``UsageError`` (one line) for a value outside its range."""
    require_integer("--seed", c.seed, 0, SEED_MAX, "the root of every random stream")
    require_integer("--sgd-steps", c.sgd_steps, 1, 10**7, "SGD steps per run")
    require_integer("--seeds", c.seeds, 1, 10_000, "bisections per batch size")
    require_integer("--batch-draws", c.batch_draws, 2, 10_000, "a mean and quantiles need two")
    require_number("--factor", c.factor, 1.0, 1e300, why="divergence: loss above factor x start")
    if c.factor <= 1.0:
        raise UsageError(f"--factor must be > 1 (loss above factor x the start), got {c.factor}")
    require_number("--rel", c.rel, 1e-6, 10.0, why="bisection resolution hi / lo - 1")
    if not (math.isfinite(c.momentum) and 0.0 < c.momentum < 1.0):
        raise UsageError(f"--momentum must be in (0, 1) (heavy ball), got {c.momentum}")


def network_config(c: StabilityConfig):
    """The :class:`validation.network.NetworkConfig` of the spectra behind the predictions."""
    from validation.network.config import NetworkConfig

    return NetworkConfig(
        model=c.model,
        data=c.data,
        data_dir=c.data_dir,
        samples=c.samples,
        width=c.width,
        checkpoint=c.checkpoint,
        train_epochs=c.train_epochs,
        batch_sizes=c.batch_sizes,
        batch_draws=c.batch_draws,
        steps=c.lanczos_steps,
        probes=c.probes,
        sigma2_probes=c.sigma2_probes,
        seed=c.seed,
        device=c.device,
        z_crit=c.z_crit,
        threads=c.threads,
        curvature=c.curvature,
        exact="no",
    )


@dataclass(frozen=True)
class StabilityResult:
    """The raw result: every seed's bracket, the spectra, Wu-Ma-E's inputs."""

    config: StabilityConfig
    N: int
    P: int
    start_loss: float  # full-data loss at the fixed weights
    eta_records: tuple  # dicts: B, momentum, seed, lo, hi, runs
    network: object  # validation.network.NetworkResult (numpy only)
    sharpness: float  # a (Lanczos top Ritz value of H_emp)
    nonuniformity: float  # s^2 = mean_i ||H_i v||^2 - a^2
    device: str
    timings: dict = field(default_factory=dict)

    @property
    def z_crit(self) -> float:
        return self.config.z_crit


def sgd_seed(seed: int, B: int, k: int) -> int:
    """The torch seed of SGD's batches for batch size B, seed index k."""
    ss = np.random.SeedSequence(seed, spawn_key=(SGD_STREAM, B, k))
    return int(ss.generate_state(1, np.uint64)[0] >> 1)


def measure_eta(config: StabilityConfig, prepared, lam_max: float, progress) -> list[dict]:
    """Every seed's bisection for every B (and B = N) and both series."""
    from nnhessian.stability import FixedWeights, eta_max

    fixed = FixedWeights(prepared.model, prepared.data)
    N = len(prepared.data)
    sizes = [*sorted(config.batch_sizes), N]
    records, total = [], 2 * len(sizes) * config.seeds
    for B in sizes:
        for mu in (0.0, config.momentum):
            for k in range(config.seeds):
                try:
                    found = eta_max(
                        fixed,
                        B,
                        steps=config.sgd_steps,
                        seed=sgd_seed(config.seed, B, k),
                        eta_start=2.0 * (1.0 + mu) / lam_max,
                        momentum=mu,
                        factor=config.factor,
                        rel=config.rel,
                    )
                except ValueError as err:
                    raise UsageError(f"stability: {err}") from None
                records.append(dataclasses.asdict(found))
                progress("stability SGD", len(records), total)
    return records


def run_stability(config: StabilityConfig, *, progress=None, download=False) -> StabilityResult:
    """Prepare the model once, then the spectra, Wu-Ma-E's inputs and the SGD bisections."""
    import torch

    from nnhessian.stability import wu_ma_e_inputs
    from validation.network.config import stream_generator
    from validation.network.prepare import prepare, resolve_device
    from validation.network.stages import full_operator, measure

    progress = progress or (lambda *a: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    clock = time.perf_counter()
    net_config = network_config(config)
    device = resolve_device(config.device)
    prepared = prepare(net_config, device=device, sharding=None, state_dir=None, download=download)
    N = len(prepared.data)
    if any(B >= N for B in config.batch_sizes):
        raise UsageError(
            f"--batch-sizes: every B must be < N = {N:,} (B = N, gradient descent, is always "
            "included)"
        )
    timings = {"prepare": time.perf_counter() - clock}
    clock = time.perf_counter()
    network = measure(net_config, prepared, device=device, progress=progress)
    timings["spectra"] = time.perf_counter() - clock
    clock = time.perf_counter()
    full_op = full_operator(prepared, net_config, device=device, context=None, sharding=None)
    wme = wu_ma_e_inputs(full_op, network.steps,
                         generator=stream_generator(config.seed, "top vector"))  # fmt: skip
    timings["wu_ma_e"] = time.perf_counter() - clock
    clock = time.perf_counter()
    records = measure_eta(config, prepared, network.full.extreme("max")[0], progress)
    timings["sgd"] = time.perf_counter() - clock
    from nnhessian.stability import FixedWeights

    return StabilityResult(
        config=config,
        N=N,
        P=network.P,
        start_loss=FixedWeights(prepared.model, prepared.data).start_loss,
        eta_records=tuple(records),
        network=network,
        sharpness=wme.sharpness,
        nonuniformity=wme.nonuniformity,
        device=str(device),
        timings=timings,
    )


def write_stability(result: StabilityResult, out: Path, *, started, wall_seconds: float) -> dict:
    """The result folder (module docstring); returns the checks' tables."""
    import pandas as pd

    from reports.figures import eta_max_vs_batch, new_figure
    from validation.checks.stability import goal_summary, scaling_exponent, stability_checks
    from validation.store import provenance, result_folder

    summary, measured, table = stability_checks(result)
    goal = goal_summary(table)
    scaling = {
        f"{mu:g}": dict(zip(("alpha", "se", "points"), scaling_exponent(measured, mu, result.N),
                            strict=True))
        for mu in sorted(measured.momentum.unique())
    }  # fmt: skip
    fig, axes = new_figure(2)
    for ax, mu in zip(axes, sorted(measured.momentum.unique()), strict=True):
        eta_max_vs_batch(ax, measured, table, momentum=mu, N=result.N)
    with result_folder(out) as w:
        w.csv("eta_max.csv", pd.DataFrame(list(result.eta_records)))
        w.csv("measured.csv", measured)
        w.csv("predictions.csv", table)
        w.csv("summary.csv", summary)
        w.figure("stability.png", fig)
        w.json(
            "results.json",
            {
                "kind": KIND,
                "provenance": provenance(
                    result.config,
                    started=started,
                    wall_seconds=wall_seconds,
                    device=result.device,
                ),  # fmt: skip
                "N": result.N,
                "P": result.P,
                "start_loss": result.start_loss,
                "lambda_max_full": result.network.full.extreme("max")[0],
                "sharpness": result.sharpness,
                "nonuniformity": result.nonuniformity,
                "sigma2": result.network.sigma2["per-sample"].estimate,
                "training": result.network.training,
                "scaling": scaling,
                "goal": goal,
                "timings": result.timings,
                "notes": list(result.network.notes),
                "files": w.manifest(),
            },
        )
    return {"summary": summary, "measured": measured, "predictions": table, "goal": goal}


# ---------------------------------------------------------------------------------------------
# Command line


def add_parser(sub) -> None:
    d = StabilityConfig()
    p = sub.add_parser(
        "stability",
        help="largest stable SGD learning rate per batch size against spectral predictions",
        description=(
            "At fixed weights, eta_max(B) of SGD (plain and with momentum) by bisection over "
            "seeds, for each B and the full batch, against 2/lambda_max of the full and batch "
            "Hessians, Theorem 2, the extreme-value model and Wu-Ma-E's condition."
        ),
    )
    p.add_argument("--model", default=d.model, help="mlp, cnn, ... (nnhessian.models)")
    p.add_argument("--data", default=d.data, help="digits (offline) or cifar100")
    p.add_argument("--data-dir", type=Path, help="folder holding cifar-100-python/")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-100 if missing")
    p.add_argument("--samples", type=integer, help="N: the first n samples (default: all)")
    p.add_argument("--width", type=integer, help="MLP hidden width / CNN channels")
    p.add_argument("--checkpoint", type=Path, help="weights (default: a brief seeded training)")
    p.add_argument("--train-epochs", type=integer, default=d.train_epochs,
                   help=f"epochs of the brief training ({d.train_epochs})")  # fmt: skip
    p.add_argument("--batch-sizes", type=integer, nargs="+", default=list(d.batch_sizes),
                   help="values of B < N (B = N, gradient descent, is always added)")  # fmt: skip
    p.add_argument("--sgd-steps", type=integer, default=d.sgd_steps,
                   help=f"T: steps of each SGD run ({d.sgd_steps})")  # fmt: skip
    p.add_argument("--seeds", type=integer, default=d.seeds, help=f"seeds per B ({d.seeds})")
    p.add_argument("--factor", type=number, default=d.factor,
                   help=f"divergence: loss above factor x the start ({d.factor:g})")  # fmt: skip
    p.add_argument("--rel", type=number, default=d.rel,
                   help=f"bisection resolution hi/lo - 1 ({d.rel:g})")  # fmt: skip
    p.add_argument("--momentum", type=number, default=d.momentum,
                   help=f"momentum of the second series ({d.momentum:g})")  # fmt: skip
    p.add_argument("--batch-draws", type=integer, default=d.batch_draws,
                   help=f"batches per B for lambda_max(H_B) ({d.batch_draws})")  # fmt: skip
    p.add_argument("--lanczos-steps", type=integer, default=d.lanczos_steps,
                   help=f"Lanczos steps ({d.lanczos_steps})")  # fmt: skip
    p.add_argument("--probes", type=integer, default=d.probes, help=f"SLQ probes ({d.probes})")
    p.add_argument("--sigma2-probes", type=integer, default=d.sigma2_probes,
                   help=f"sigma^2 probes ({d.sigma2_probes})")  # fmt: skip
    p.add_argument("--curvature", default=d.curvature, help="yes or no: the M2 model's stage")
    p.add_argument("--seed", type=integer, default=d.seed, help="root of every stream (0)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--z-crit", type=number, default=d.z_crit, help="z rule threshold (4)")
    p.add_argument("--threads", type=integer, default=d.threads, help="CPU threads (1)")
    p.add_argument("--out", type=Path, default=Path("results/stability"), help="result folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args) -> StabilityConfig:
    """The run's configuration; ``UsageError`` (one line) for a bad value."""
    path = args.data_dir
    return StabilityConfig(
        model=args.model,
        data=args.data,
        data_dir=str(path) if path is not None else None,
        samples=args.samples,
        width=args.width,
        checkpoint=str(args.checkpoint) if args.checkpoint is not None else None,
        train_epochs=args.train_epochs,
        batch_sizes=tuple(args.batch_sizes),
        sgd_steps=args.sgd_steps,
        seeds=args.seeds,
        factor=args.factor,
        rel=args.rel,
        momentum=args.momentum,
        batch_draws=args.batch_draws,
        lanczos_steps=args.lanczos_steps,
        probes=args.probes,
        sigma2_probes=args.sigma2_probes,
        curvature=args.curvature,
        seed=args.seed,
        device=args.device,
        z_crit=args.z_crit,
        threads=args.threads,
    )


def result_identity(args) -> tuple[str, StabilityConfig]:
    """Kind and configuration of the folder this command writes (``validation.store``)."""
    return KIND, config_from_args(args)


def command(args, started) -> int:
    from validation.options import Progress

    clock = time.perf_counter()
    config = config_from_args(args)
    with Progress(enabled=not args.quiet) as bars:
        result = run_stability(config, progress=bars, download=args.download)
    tables = write_stability(result, args.out, started=started,
                             wall_seconds=time.perf_counter() - clock)  # fmt: skip
    for m in tables["measured"].itertuples():
        print(f"B={m.B} mu={m.momentum:g}: eta_max {m.eta_max:.4g} "
              f"[{m.eta_max_low:.4g}, {m.eta_max_high:.4g}]")  # fmt: skip
    for sentence in tables["goal"]:
        print(sentence)
    print(f"stability: results in {args.out}")
    return 0
