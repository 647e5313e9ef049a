"""``python -m validation network``: the command line -- options into a
:class:`~validation.network.config.NetworkConfig`, torchrun's process group, the run, the writing.
The top level imports neither torch nor matplotlib (``--help`` stays fast)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from validation.checks.network import compare
from validation.errors import UsageError
from validation.network.config import DEFAULT_SAVE_EVERY, EXACT_MAX_P, NetworkConfig
from validation.network.epochs import run_sweep, select_checkpoints
from validation.network.prepare import (
    flat,
    peek_training_checkpoint,
)
from validation.network.stages import run_network
from validation.network.write import console_report, write_network
from validation.options import EXACT_INT_MAX, integer, number, require_integer


def add_parser(sub) -> None:
    """The ``network`` subcommand and its options."""
    d = NetworkConfig()
    p = sub.add_parser(
        "network",
        help="full vs batch spectra of a network at given weights",
        description=(
            "Full-data and mini-batch Hessian spectra (SLQ) of a network at the same weights, "
            "sigma^2 (paper eq. 9), Theorem 2 and free-convolution predictions, the noise "
            "matrix against GOE, and an exact dense check for small models. Launched by "
            "torchrun, the full-data passes are sharded over the processes."
        ),
    )
    _model_and_weights(p, d)
    _what_to_measure(p, d)
    _how_to_run(p, d)


def _model_and_weights(p, d: NetworkConfig) -> None:
    """--model, --data and the weights (checkpoints or a short training)."""
    p.add_argument(
        "--model",
        help="mlp, cnn, cnn_bn, vgg16, vgg16bn, preresnet110 (nnhessian.models; default: the "
        "training checkpoint's architecture, else mlp), or package.module:callable called with "
        "(num_classes, input_shape) and returning a torch.nn.Module",
    )
    p.add_argument(
        "--data",
        default=d.data,
        help="data set: digits, cifar100 (nnhessian.datasets), or package.module:callable",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding cifar-100-python/ (--data cifar100; default ./data)",
    )
    p.add_argument(
        "--download", action="store_true", help="fetch CIFAR-100 into --data-dir if missing"
    )
    p.add_argument(
        "--samples",
        type=integer,
        help="N: use the first n samples of the data set (default: all; CIFAR-100 50,000)",
    )
    p.add_argument("--width", type=integer, help="MLP hidden width / CNN channels")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="weights: a checkpoint of 'validation train', or a torch.save state_dict",
    )
    p.add_argument(
        "--checkpoints",
        type=Path,
        help="the --out folder of 'validation train': measure every saved epoch into "
        "<out>/epoch_EEEE/, then epochs.csv and epochs.png",
    )
    p.add_argument(
        "--epochs",
        type=integer,
        nargs="+",
        help="with --checkpoints: only these saved epochs (e.g. --epochs 10 50 200)",
    )
    p.add_argument(
        "--train-epochs",
        type=integer,
        default=d.train_epochs,
        help="without --checkpoint: SGD epochs from a seeded init",
    )


def _what_to_measure(p, d: NetworkConfig) -> None:
    """Batch sizes and draws, Lanczos steps and probes, seeds, theory settings."""
    p.add_argument(
        "--batch-sizes", type=integer, nargs="+", default=list(d.batch_sizes), help="values of B"
    )
    p.add_argument(
        "--batch-draws",
        type=integer,
        default=d.batch_draws,
        help="K independent batches per B: lambda_max/min of H_B as mean +- SE over the draws "
        "(draw 0 gets the full analysis, the others one Lanczos run each)",
    )
    p.add_argument("--steps", type=integer, default=d.steps, help="Lanczos steps m (paper: 100)")
    p.add_argument("--probes", type=integer, default=d.probes, help="SLQ probes per operator")
    p.add_argument(
        "--sigma2-probes",
        type=integer,
        default=d.sigma2_probes,
        help="probes per sigma^2 estimator",
    )
    p.add_argument("--seed", type=integer, default=d.seed, help="root of all random streams")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=d.dtype, help="float64 (validation) or float32")
    p.add_argument("--policy", default=d.policy, help="BatchNorm/dropout: eval or batch-stats")
    p.add_argument("--factor", default=d.factor, help="finite-population factor: exact or paper")
    p.add_argument("--z-crit", type=number, default=d.z_crit, help="|z| above it: disagrees")
    p.add_argument(
        "--curvature",
        default=d.curvature,
        help="per-sample GGN curvature and exact batch GGN spectra for the batch-spectrum "
        "models: yes or no",
    )
    p.add_argument(
        "--curvature-samples",
        type=integer,
        help="per-sample curvature on a seeded subset of this many samples (default: all)",
    )


def _how_to_run(p, d: NetworkConfig) -> None:
    """Devices, memory, resumable state and output: how to run, not what to measure."""
    p.add_argument(
        "--exact", default=d.exact, help=f"dense exact check: auto (P <= {EXACT_MAX_P:,}), yes, no"
    )
    p.add_argument(
        "--hvp-batch", type=integer, default=d.hvp_batch, help="samples per full-data chunk"
    )
    p.add_argument(
        "--graph-cache-gb",
        type=number,
        default=d.graph_cache_gb,
        help="GiB for gradient graphs reused across HVPs (speed only; 0: none)",
    )
    p.add_argument(
        "--lockstep-gb",
        type=number,
        default=d.lockstep_gb,
        help="GiB for the m x P Lanczos bases of SLQ probes advanced together, one data pass "
        "per step for all (speed only; 0: one probe at a time)",
    )
    p.add_argument(
        "--threads", type=integer, default=d.threads, help="CPU threads (0: torch's default)"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="save Lanczos / sigma^2 progress here; the same command again resumes a killed run",
    )
    p.add_argument(
        "--save-every",
        type=integer,
        default=DEFAULT_SAVE_EVERY,
        help="with --state-dir: Lanczos steps between saves",
    )
    p.add_argument("--out", type=Path, default=Path("results/network"), help="result folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _default_model(args) -> str:
    """--model when given; else the architecture of the training checkpoint(s), else mlp."""
    if args.model is not None:
        return args.model
    source = getattr(args, "checkpoint", None)
    folder = getattr(args, "checkpoints", None)
    if source is None and folder is not None:
        from nnhessian.train_checkpoint import list_checkpoints

        saved = list_checkpoints(folder) if Path(folder).is_dir() else {}
        source = next(iter(saved.values()), None)
    if source is not None and Path(source).is_file():
        payload = peek_training_checkpoint(source)
        if payload is not None:
            return str(payload["model_name"])
    return NetworkConfig.model


def result_identity(args):
    """``network``: one run, or an epoch sweep over ``--checkpoints`` (the configuration comes
    from ``validation.network.config_from_args``; the sweep's identity from its module). Bad
    options: None, so that ``network``'s command reports them (under torchrun rank 0 alone)."""
    from validation.network import epochs

    try:
        config = config_from_args(args)
    except UsageError:
        return None
    return epochs.result_identity(config, args.checkpoints)


def config_from_args(args) -> NetworkConfig:
    from nnhessian.datasets import DEFAULT_DATA_DIR

    data_dir = args.data_dir if args.data_dir is not None else DEFAULT_DATA_DIR.get(args.data)
    return NetworkConfig(
        model=_default_model(args),
        data=args.data,
        data_dir=str(data_dir) if data_dir is not None else None,
        samples=args.samples,
        width=args.width,
        checkpoint=str(args.checkpoint) if args.checkpoint is not None else None,
        train_epochs=args.train_epochs,
        batch_sizes=tuple(args.batch_sizes),
        batch_draws=args.batch_draws,
        steps=args.steps,
        probes=args.probes,
        sigma2_probes=args.sigma2_probes,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        policy=args.policy,
        factor=args.factor,
        z_crit=args.z_crit,
        exact=args.exact,
        hvp_batch=args.hvp_batch,
        graph_cache_gb=args.graph_cache_gb,
        lockstep_gb=args.lockstep_gb,
        threads=args.threads,
        curvature=args.curvature,
        curvature_samples=args.curvature_samples,
    )


def _check_run_options(args) -> None:
    """The options that say how to run, not what to measure."""
    if args.checkpoint is not None and args.checkpoints is not None:
        raise UsageError(
            "--checkpoint (one set of weights) and --checkpoints (a training folder) exclude "
            "each other"
        )
    if args.epochs is not None and args.checkpoints is None:
        raise UsageError("--epochs chooses saved epochs of --checkpoints DIR; give that too")
    if args.epochs is not None and any(e < 0 for e in args.epochs):
        raise UsageError(f"--epochs must be >= 0, got {' '.join(map(str, args.epochs))}")
    for epoch in args.epochs or ():
        require_integer("--epochs", epoch, 0, EXACT_INT_MAX, "saved epochs of --checkpoints")
    if args.save_every < 1:
        raise UsageError(f"--save-every must be >= 1 (Lanczos steps), got {args.save_every}")
    require_integer("--save-every", args.save_every, 1, EXACT_INT_MAX, "Lanczos steps")
    if args.state_dir is not None and args.state_dir.exists() and not args.state_dir.is_dir():
        raise UsageError(f"--state-dir {args.state_dir} exists and is not a folder")


def _env_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_context(config: NetworkConfig):
    """The torch.distributed context under torchrun (``RANK`` and ``WORLD_SIZE`` set), else
    None (one process). Bad launch settings are a ``UsageError`` printed by every rank (they
    may differ by rank)."""
    if not all(k in os.environ for k in ("RANK", "WORLD_SIZE")):
        return None
    from nnhessian.distributed import init_from_env

    try:
        return init_from_env(device=None if config.device == "auto" else config.device)
    except ValueError as err:
        error = UsageError(f"torch.distributed (rank {_env_rank()}): {flat(err)}")
        error.every_rank = True
        raise error from None


def command(args, started) -> int:
    """Run, and under torchrun let rank 0 alone report bad input (the same line on each rank;
    the other ranks exit with status 2 quietly) unless the problem may differ by rank."""
    try:
        return _command(args, started)
    except UsageError as err:
        if _env_rank() != 0 and not getattr(err, "every_rank", False):
            raise SystemExit(2) from None
        raise


def _command(args, started) -> int:
    import torch

    from validation.options import Progress

    _check_run_options(args)
    config = config_from_args(args)
    checkpoints = None
    if args.checkpoints is not None:
        checkpoints = select_checkpoints(args.checkpoints, args.epochs, config.model)
    run = dict(state_dir=args.state_dir, save_every=args.save_every, download=args.download)
    clock = time.perf_counter()
    threads = torch.get_num_threads()
    context = init_context(config)
    main = context is None or context.is_main
    finished = False
    try:
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        if checkpoints is not None:
            status = run_sweep(args, config, checkpoints, context, run, started)
            finished = True
            return status
        with Progress(enabled=not args.quiet and main) as progress:
            result = run_network(config, progress=progress, context=context, **run)
        if main:
            tables = compare(result)
            write_network(
                result, tables, args.out, started=started, wall_seconds=time.perf_counter() - clock
            )
            for line in console_report(result, tables):
                print(line)
            print(f"network: results in {args.out}")
        finished = True
        return 0
    finally:
        torch.set_num_threads(threads)
        close_context(context, finished=finished)


def close_context(context, *, finished: bool) -> None:
    """End the process group. After a run that finished on this rank, first a barrier: every
    rank leaves together once rank 0 has written the results (a gloo rank that exited while rank 0
    was still writing was seen to abort at interpreter exit, about 1 run in 8)."""
    if context is None:
        return
    if finished and context.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    context.close()
