"""``python -m validation train``: train a network with the paper's recipe, checkpoint, resume.

The recipe (paper, section 4): "We train a 16 Layer VGG CNN [20] with P = 15291300 parameters
and 110 Layer ResNet [7] with P = 1169972 parameters, architectures on the CIFAR-100 datasets
using SGD, with a learning rate of 0.1/0.05 respectively for [225, 300] epochs with a linearly
decaying learning rate from epochs [126, 161] with momentum rho = 0.9 and data-augmentation".
The torch work lives in nnhessian: the data sets (:mod:`nnhessian.datasets`), the schedule, the
SGD epoch and evaluation (:mod:`nnhessian.training`), the checkpoint format and the generator
states (:mod:`nnhessian.train_checkpoint`). This module holds the configuration, the
orchestration of a (resumed) run and its result folder, and the command line.

* Optimiser: SGD, momentum 0.9 (paper), coupled L2 weight decay. The paper states no weight
  decay; the default 5e-4 is the conventional CIFAR value (SWA code base for VGG16; it used 3e-4
  for PreResNet) and is an option (``--weight-decay``).
* Initial learning rate: 0.1 for vgg16/vgg16bn and the small models, 0.05 for preresnet110
  (paper). Epochs: 225 (VGG16) and 300 (PreResNet-110) by default (paper), 20 for small models.
* Schedule (:func:`nnhessian.training.learning_rate`): constant, then linear decay, then
  constant, set per epoch. We read "for [225, 300] epochs with a linearly decaying learning rate
  from epochs [126, 161]" with the sentence's own "respectively": VGG16 decays from epoch 126 of
  225, PreResNet-110 from epoch 161 of 300 (both about 55% of training, as in the SWA schedule of
  Izmailov et al. 2018 this family of experiments uses), linearly to the end of training (0-based
  epoch index e: lr0 for e <= start, lr0 * f at the last epoch, linear between). The paper does
  not state the final value; f = 0.01 (``--final-lr-fraction``) is the SWA schedule's. For other
  ``--epochs`` the start is scaled, ``round(start E / E_paper)`` (models not in the paper:
  VGG16's 126 / 225). The other reading -- one window from epoch 126 to 161 for both -- is
  ``--decay-start 126 --decay-end 161``; every run records its window.
* Data: CIFAR-100 from ``--data-dir`` (``nnhessian.cifar``; download only with ``--download``),
  normalised with the training-set statistics, augmented (random crop with padding 4, horizontal
  flip) for training only; test-set loss and accuracy after every epoch without augmentation.
  ``--data digits`` is the offline 8x8 digits set (first 1500 samples train, last 297 test; no
  augmentation) for quick CPU runs of the small models. Other data sets: the registry of
  :mod:`nnhessian.datasets` (``TRAINING_SPLITS``).

Randomness (:func:`nnhessian.train_checkpoint.seed_streams`): ``np.random.SeedSequence(seed)``
spawns the streams of model initialisation, data order + augmentation (one CPU
``torch.Generator``, so the draws do not depend on the device), and torch's global generator
(dropout), which is forked for the run so the caller's state is left alone. Each checkpoint holds
model and optimizer state, the epoch, the seed, the states of all generators (torch CPU and CUDA,
numpy, python, data order) and the configuration, written atomically (temporary file +
``os.replace``). Running the same command again resumes from the last checkpoint; on the CPU the
result is bit-identical to an uninterrupted run.

Output in ``--out``: ``checkpoints/epoch_EEEE.pt`` (every ``--checkpoint-every`` epochs and the
last; a VGG16 checkpoint with momentum buffers is about 123 MB), ``history.csv`` (per epoch: lr,
train loss/accuracy on the augmented batches as trained, test loss/accuracy) and
``results.json`` with provenance, both rewritten at every checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from validation.errors import UsageError
from validation.options import (
    EXACT_INT_MAX,
    FLOAT32_MAX,
    MIN_SAMPLE_FLOP,
    SEED_MAX,
    check_machine,
    integer,
    number,
    require_integer,
    require_number,
)

# Defaults of the command line (the paper's per-model values: nnhessian.training.PAPER_*).
DEFAULT_LR = 0.1  # models not in the paper: VGG16's
DEFAULT_SMALL_EPOCHS = 20
DEFAULT_WEIGHT_DECAY = 5e-4  # not in the paper: the conventional CIFAR value (SWA, VGG16)
DEFAULT_FINAL_FRACTION = 0.01  # lr after the decay / lr0: the SWA schedule's


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training trajectory (a resumed run must match it exactly)."""

    model: str
    data: str
    num_classes: int
    epochs: int
    batch_size: int
    lr: float  # initial learning rate
    momentum: float
    weight_decay: float  # coupled L2 (torch.optim.SGD's weight_decay)
    decay_start: int  # epoch index where the linear decay starts
    decay_end: int  # epoch index from which lr = lr * final_lr_fraction
    final_lr_fraction: float
    augment: bool  # random crop (pad 4) + horizontal flip on training batches
    dropout: float | None  # None: the model's default (vgg: 0.5, small models: 0)
    limit: int | None  # train on the first `limit` training samples only
    seed: int
    checkpoint_every: int

    def __post_init__(self):
        validate(self)

    def learning_rate(self, epoch: int) -> float:
        """The schedule's learning rate of epoch index ``epoch`` (0-based)."""
        from nnhessian.training import learning_rate

        return learning_rate(
            epoch,
            lr=self.lr,
            decay_start=self.decay_start,
            decay_end=self.decay_end,
            final_fraction=self.final_lr_fraction,
        )


def validate(config: TrainConfig) -> None:
    """One clear line per bad setting (``UsageError``)."""
    from nnhessian.datasets import TRAINING_SPLITS
    from nnhessian.models import available

    c = config
    if c.model not in available():
        raise UsageError(f"unknown model {c.model!r}; known models: {', '.join(available())}")
    if c.data not in TRAINING_SPLITS:
        raise UsageError(f"unknown data set {c.data!r}; choose one of {', '.join(TRAINING_SPLITS)}")
    for name, value in (
        ("epochs", c.epochs),
        ("batch-size", c.batch_size),
        ("checkpoint-every", c.checkpoint_every),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"--{name} must be an integer >= 1, got {value!r}")
    if not (math.isfinite(c.lr) and c.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {c.lr!r}")
    if not 0 <= c.momentum < 1:
        raise UsageError(f"--momentum must lie in [0, 1), got {c.momentum!r}")
    if not (math.isfinite(c.weight_decay) and c.weight_decay >= 0):
        raise UsageError(f"--weight-decay must be >= 0, got {c.weight_decay!r}")
    if not 0 <= c.final_lr_fraction <= 1:
        raise UsageError(f"--final-lr-fraction must lie in [0, 1], got {c.final_lr_fraction!r}")
    if not 0 <= c.decay_start <= c.decay_end:
        raise UsageError(
            f"need 0 <= --decay-start <= --decay-end, got {c.decay_start} and {c.decay_end}"
        )
    if c.dropout is not None and not 0 <= c.dropout < 1:
        raise UsageError(f"--dropout must lie in [0, 1), got {c.dropout!r}")
    if c.limit is not None and c.limit < 1:
        raise UsageError(f"--limit must be an integer >= 1, got {c.limit!r}")
    if c.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {c.seed}")
    check_limits(c)


def check_limits(config: TrainConfig) -> None:
    """Upper limits (the lower ones are in :func:`validate`), before any work: the seed an int64,
    counts at most 2^53, --lr and --weight-decay at most the largest float32 (SGD casts them to
    the weights' dtype; beyond it torch raises), and the work of at least
    ``validation.options.MIN_SAMPLE_FLOP`` per sample pass, epochs x N with N = --limit or 1,
    within the machine (``validation.options.check_machine``)."""
    c = config
    require_integer("--seed", c.seed, 0, SEED_MAX, "the root of all random streams")
    for option, value in (
        ("--epochs", c.epochs),
        ("--batch-size", c.batch_size),
        ("--checkpoint-every", c.checkpoint_every),
        ("--decay-start", c.decay_start),
        ("--decay-end", c.decay_end),
        ("--limit", c.limit),
    ):
        if value is not None:
            require_integer(option, value, 0, EXACT_INT_MAX, "2^53: exact in float64")
    require_number("--lr", c.lr, 0.0, FLOAT32_MAX, open_low=True, why="float32")
    require_number("--weight-decay", c.weight_decay, 0.0, FLOAT32_MAX, why="float32")
    N = float(c.limit if c.limit is not None else 1)
    check_machine(f"--epochs {c.epochs:.3g} at N = {N:.3g}", flops=MIN_SAMPLE_FLOP * N * c.epochs)


@contextlib.contextmanager
def usage_errors():
    """nnhessian's one-line errors (data set, model options, checkpoint) as ``UsageError``."""
    from nnhessian.datasets import DatasetError
    from nnhessian.train_checkpoint import CheckpointError
    from nnhessian.training import TrainingError

    try:
        yield
    except (DatasetError, TrainingError, CheckpointError) as err:
        raise UsageError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# The run: plan, prepare, train epoch by epoch, save
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What a (possibly resumed) run leaves: the completed epochs and the per-epoch history."""

    config: TrainConfig
    epochs_completed: int
    resumed_from: int  # 0 for a fresh run
    num_parameters: int
    history: tuple[dict, ...]  # one row per completed epoch
    checkpoints: tuple[str, ...]  # paths relative to --out
    out: Path


@dataclass(eq=False)
class TrainingRun:
    """The live state of a run between epochs (mutable: the history and the checkpoint list
    grow, the seconds add up); ``payload`` is the checkpoint resumed from, or None."""

    config: TrainConfig
    out: Path
    device: object  # torch.device
    data: object  # nnhessian.datasets.TrainingData, on device
    options: dict  # model constructor options
    model: object  # torch.nn.Module
    optimizer: object  # torch.optim.SGD
    data_generator: object  # torch.Generator (CPU): data order and augmentation
    payload: dict | None
    start_epoch: int
    num_parameters: int
    data_dir: object
    started: object  # datetime of the command's start, or None
    history: list[dict] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    seconds: float = 0.0


def config_differences(stored: dict, config: TrainConfig) -> list[str]:
    """``"key stored there, value here"`` for every field where ``stored`` differs."""
    now = dataclasses.asdict(config)
    return [f"{k} {stored.get(k)!r} there, {now[k]!r} here" for k in now if stored.get(k) != now[k]]


def plan_resume(out: Path, config: TrainConfig) -> tuple[dict | None, Path | None]:
    """The last checkpoint in ``out`` and its payload, checked against ``config`` (or Nones)."""
    from nnhessian.train_checkpoint import list_checkpoints, read_checkpoint

    found = list_checkpoints(out)
    if not found:
        return None, None
    path = found[max(found)]
    with usage_errors():
        payload = read_checkpoint(path)
    if payload["model_name"] != config.model:
        raise UsageError(
            f"--out {out} holds checkpoints of a {payload['model_name']} model, not "
            f"{config.model}; use another --out or --model {payload['model_name']}"
        )
    if int(payload["num_classes"]) != config.num_classes:
        raise UsageError(
            f"--out {out} holds a model with {payload['num_classes']} classes, not "
            f"{config.num_classes}; use another --out"
        )
    diffs = config_differences(payload["config"], config)
    if diffs:
        raise UsageError(
            f"--out {out} holds a run with another configuration ({'; '.join(diffs)}); use the "
            "same options to resume it or another --out"
        )
    return payload, path


def prepare_data(config: TrainConfig, payload: dict | None, ckpt, *, data_dir, download):
    """The run's data and model options, checked against the config and the checkpoint."""
    from nnhessian.datasets import load_training_data
    from nnhessian.training import model_options

    with usage_errors():
        data = load_training_data(
            config.data, data_dir=data_dir, download=download, limit=config.limit
        )
    if data.num_classes != config.num_classes:
        raise UsageError(
            f"--num-classes {config.num_classes} does not match the data: {config.data} has "
            f"{data.num_classes} classes"
        )
    with usage_errors():
        options = model_options(
            config.model, data.input_shape, data=config.data, dropout=config.dropout
        )
    if payload is not None and dict(payload["model_options"]) != options:
        raise UsageError(
            f"checkpoint {ckpt} was built with options {payload['model_options']}, not {options}"
        )
    return data, options


def build_model_and_optimizer(config: TrainConfig, options: dict, payload, ckpt, init_seed, dev):
    """The model (seeded initialisation, or the checkpoint's weights) on ``dev`` and its SGD
    optimizer (the checkpoint's state, momentum buffers included, when resuming)."""
    import torch

    from nnhessian.models import build
    from nnhessian.train_checkpoint import build_from_checkpoint

    if payload is None:
        generator = torch.Generator().manual_seed(init_seed)
        model = build(config.model, config.num_classes, generator=generator, **options)
    else:
        with usage_errors():
            model = build_from_checkpoint(payload, ckpt)
    model = model.to(dev)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    if payload is not None:
        try:
            optimizer.load_state_dict(payload["optimizer_state"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise UsageError(f"checkpoint {ckpt} has an unusable optimizer state ({err})") from None
    return model, optimizer


def prepare_run(
    config: TrainConfig, out: Path, *, data_dir, download, device, started, fresh=False
):
    """Everything checked and built before anything is written: device, the checkpoint to
    resume from (none when ``fresh``), data, model, optimizer. Returns the
    :class:`TrainingRun` and the seeds."""
    import torch

    from nnhessian.models import num_parameters
    from nnhessian.operators import resolve_device
    from nnhessian.train_checkpoint import list_checkpoints, seed_streams

    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    out = Path(out)
    payload, ckpt = (None, None) if fresh else plan_resume(out, config)
    data, options = prepare_data(config, payload, ckpt, data_dir=data_dir, download=download)
    streams = seed_streams(config.seed)
    model, optimizer = build_model_and_optimizer(config, options, payload, ckpt, streams.init, dev)
    run = TrainingRun(
        config=config,
        out=out,
        device=dev,
        data=dataclasses.replace(data, train_X=data.train_X.to(dev), test_X=data.test_X.to(dev)),
        options=options,
        model=model,
        optimizer=optimizer,
        data_generator=torch.Generator(),
        payload=payload,
        start_epoch=int(payload["epoch"]) if payload is not None else 0,
        num_parameters=num_parameters(model),
        data_dir=data_dir,
        started=started,
    )
    if payload is not None:
        run.history = [dict(row) for row in payload.get("history", [])]
        run.seconds = float(payload.get("train_seconds", 0.0))
    found = {} if fresh else list_checkpoints(out)
    run.checkpoints = [str(p.relative_to(out)) for p in found.values()]
    return run, streams


def run_training(
    config: TrainConfig,
    out: Path,
    *,
    data_dir=Path("data"),
    download: bool = False,
    device=None,
    progress: bool = True,
    started=None,
    fresh: bool = False,
) -> TrainResult:
    """Train (or resume) the run ``config`` into ``out``; see the module docstring.

    Everything is checked before anything is written: bad options, missing data, unavailable
    device, a foreign or corrupt checkpoint in ``out`` all raise ``UsageError`` first.
    """
    from nnhessian.train_checkpoint import isolated_generators

    run, streams = prepare_run(
        config,
        out,
        data_dir=data_dir,
        download=download,
        device=device,
        started=started,
        fresh=fresh,
    )
    if fresh:  # --overwrite of another run: checked, so its folder goes before training starts
        from validation.store import discard

        discard(out)
    fresh = {"streams": streams} if run.payload is None else {"state": run.payload["rng"]}
    with isolated_generators(run.device, run.data_generator, **fresh):
        train_epochs(run, progress=progress)
    if run.start_epoch >= config.epochs and not (run.out / "results.json").is_file():
        write_results(run)
    return TrainResult(
        config=config,
        epochs_completed=max(run.start_epoch, config.epochs),
        resumed_from=run.start_epoch,
        num_parameters=run.num_parameters,
        history=tuple(run.history),
        checkpoints=tuple(run.checkpoints),
        out=run.out,
    )


def train_epochs(run: TrainingRun, *, progress: bool) -> None:
    """The epochs from ``run.start_epoch`` to the end, a checkpoint every ``checkpoint_every``
    and after the last one (``UsageError`` when the training loss is no longer finite)."""
    from nnhessian.training import progress_bar

    config = run.config
    epochs = range(run.start_epoch, config.epochs)
    bar = progress_bar(epochs, progress, desc=f"train {config.model}", unit="epoch")
    for epoch in bar:
        clock = time.perf_counter()
        row = train_one_epoch(run, epoch, progress=progress)
        run.seconds += time.perf_counter() - clock
        row["seconds"] = round(time.perf_counter() - clock, 3)
        run.history.append(row)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_accuracy']:.3f}")
        done = epoch + 1
        if done % config.checkpoint_every == 0 or done == config.epochs:
            save_checkpoint(run, done)
            write_results(run)


def train_one_epoch(run: TrainingRun, epoch: int, *, progress: bool) -> dict:
    """Epoch index ``epoch``: SGD, the divergence check, the test-set evaluation; its history
    row (``epoch`` counted from 1, ``lr``, train and test loss and accuracy)."""
    from nnhessian.training import evaluate, train_epoch

    config = run.config
    lr = config.learning_rate(epoch)
    row = {"epoch": epoch + 1, "lr": lr}
    row.update(
        train_epoch(
            run.model,
            run.optimizer,
            run.data,
            lr=lr,
            batch_size=config.batch_size,
            augment=config.augment,
            generator=run.data_generator,
            device=run.device,
            progress=progress,
            desc=f"epoch {epoch + 1}/{config.epochs}",
        )
    )
    if not math.isfinite(row["train_loss"]):
        kept = f"checkpoints up to epoch {epoch} are kept" if epoch else "nothing saved"
        raise UsageError(
            f"training diverged in epoch {epoch + 1}: the mean training loss is "
            f"{row['train_loss']} at learning rate {row['lr']:.4g}; lower --lr ({kept})"
        )
    row.update(evaluate(run.model, run.data, run.device))
    return row


def save_checkpoint(run: TrainingRun, done: int) -> None:
    """The checkpoint after ``done`` completed epochs, written atomically into ``run.out``."""
    from nnhessian.train_checkpoint import (
        capture_rng,
        checkpoint_path,
        checkpoint_payload,
        save_atomic,
    )

    config = run.config
    path = checkpoint_path(run.out, done)
    payload = checkpoint_payload(
        model=run.model,
        optimizer=run.optimizer,
        model_name=config.model,
        num_classes=config.num_classes,
        model_options=run.options,
        epoch=done,
        next_lr=config.learning_rate(done),
        seed=config.seed,
        rng=capture_rng(run.data_generator, run.device),
        config=dataclasses.asdict(config),
        history=run.history,
        train_seconds=run.seconds,
        device=run.device,
    )
    save_atomic(payload, path)
    rel = str(path.relative_to(run.out))
    if rel not in run.checkpoints:
        run.checkpoints.append(rel)


def write_results(run: TrainingRun) -> None:
    """``history.csv`` and ``results.json`` (with provenance) of the epochs so far, swapped in
    with the folder's ``checkpoints/`` carried (``validation.store``: the folder grows)."""
    import pandas as pd

    from validation.store import provenance, result_folder

    config, history, started = run.config, run.history, run.started
    if started is None:
        from datetime import UTC, datetime

        started = datetime.now(UTC)
    recorded = {**dataclasses.asdict(config), "data_dir": str(run.data_dir)}
    with result_folder(run.out, carry=("checkpoints",)) as w:
        w.csv("history.csv", pd.DataFrame(history))
        w.json(
            "results.json",
            {
                "kind": "train",
                "provenance": provenance(
                    recorded, started=started, wall_seconds=run.seconds, device=str(run.device)
                ),
                "model": config.model,
                "num_parameters": run.num_parameters,
                "epochs_completed": history[-1]["epoch"] if history else 0,
                "schedule": {
                    "lr": config.lr,
                    "decay_start": config.decay_start,
                    "decay_end": config.decay_end,
                    "final_lr_fraction": config.final_lr_fraction,
                },
                "checkpoints": list(run.checkpoints),
                "history": history,
                "files": w.manifest(),  # checkpoints/ carried, each hashed once
            },
        )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with the paper's recipe, checkpoint per epoch, resume exactly",
        description=(
            "Train with SGD (momentum 0.9), the paper's learning rates and linear decay window, "
            "data augmentation on CIFAR-100; checkpoint every k epochs into --out. Running the "
            "same command again resumes from the last checkpoint."
        ),
    )
    p.add_argument("--model", required=True, help="vgg16, vgg16bn, preresnet110, mlp, cnn, cnn_bn")
    p.add_argument("--data", default="cifar100", help="cifar100 (default) or digits (offline)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="folder holding cifar-100-python/ (default ./data)",
    )
    p.add_argument("--download", action="store_true", help="fetch CIFAR-100 if it is not there")
    p.add_argument(
        "--num-classes",
        type=integer,
        help="classes of the model (default: the data's; must match it)",
    )
    p.add_argument(
        "--epochs",
        type=integer,
        help="epochs (default: paper's 225 for VGG16, 300 for PreResNet-110; 20 small)",
    )
    p.add_argument("--batch-size", type=integer, default=128, help="batch size (128)")
    p.add_argument(
        "--lr",
        type=number,
        help="initial learning rate (default: paper's 0.1 VGG16, 0.05 PreResNet-110; "
        "0.1 small models)",
    )
    p.add_argument("--momentum", type=number, default=0.9, help="SGD momentum (paper: 0.9)")
    p.add_argument(
        "--weight-decay",
        type=number,
        default=DEFAULT_WEIGHT_DECAY,
        help="L2 weight decay; not stated in the paper, 5e-4 is the conventional "
        "CIFAR value (5e-4)",
    )
    p.add_argument(
        "--decay-start",
        type=integer,
        help="epoch index where the linear lr decay starts (default: paper's 126 (VGG16) / 161 "
        "scaled to --epochs)",
    )
    p.add_argument(
        "--decay-end",
        type=integer,
        help="epoch index where it ends (default: the last epoch)",
    )
    p.add_argument(
        "--final-lr-fraction",
        type=number,
        default=DEFAULT_FINAL_FRACTION,
        help="lr after the decay as a fraction of --lr (0.01, SWA schedule)",
    )
    p.add_argument(
        "--no-augment", action="store_true", help="no random crop / flip on CIFAR training batches"
    )
    p.add_argument(
        "--dropout",
        type=number,
        help="dropout probability (default: the model's; vgg16 0.5, small models 0)",
    )
    p.add_argument("--limit", type=integer, help="train on the first N training samples only")
    p.add_argument("--seed", type=integer, default=0, help="root of all random streams (0)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    p.add_argument(
        "--checkpoint-every",
        type=integer,
        default=1,
        help="save a checkpoint every k epochs; the last epoch is always saved (1)",
    )
    p.add_argument("--out", type=Path, default=Path("results/train"), help="result folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args) -> TrainConfig:
    """The run's :class:`TrainConfig` from parsed options, filling the paper's defaults."""
    from nnhessian.datasets import NUM_CLASSES, TRAINING_SPLITS
    from nnhessian.models import available
    from nnhessian.training import PAPER_EPOCHS, PAPER_LR, default_decay

    if args.model not in available():
        raise UsageError(f"unknown model {args.model!r}; known models: {', '.join(available())}")
    if args.data not in TRAINING_SPLITS:
        raise UsageError(
            f"unknown data set {args.data!r}; choose one of {', '.join(TRAINING_SPLITS)}"
        )
    epochs = args.epochs
    if epochs is None:
        epochs = PAPER_EPOCHS.get(args.model, DEFAULT_SMALL_EPOCHS)
    if epochs < 1:
        raise UsageError(f"--epochs must be an integer >= 1, got {epochs}")
    start, end = default_decay(args.model, epochs)
    classes = NUM_CLASSES[args.data]
    if args.num_classes is not None and args.num_classes != classes:
        raise UsageError(
            f"--num-classes {args.num_classes} does not match the data: {args.data} has "
            f"{classes} classes"
        )
    return TrainConfig(
        model=args.model,
        data=args.data,
        num_classes=classes,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else PAPER_LR.get(args.model, DEFAULT_LR),
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        decay_start=args.decay_start if args.decay_start is not None else start,
        decay_end=args.decay_end if args.decay_end is not None else end,
        final_lr_fraction=args.final_lr_fraction,
        augment=args.data == "cifar100" and not args.no_augment,
        dropout=args.dropout,
        limit=args.limit,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )


def result_identity(args) -> tuple[str, dict]:
    """Kind and configuration of the folder this command writes (``validation.store.check_out``;
    the recorded ``data_dir`` is not compared: the same data may move). Without
    ``--overwrite``, the checkpoints in ``--out`` are checked first (:func:`plan_resume`: its
    messages name the model, class count or options that differ, or a corrupt file)."""
    config = config_from_args(args)
    if not getattr(args, "overwrite", False):
        plan_resume(Path(args.out), config)
    return "train", dataclasses.asdict(config)


def command(args: argparse.Namespace, started) -> int:
    config = config_from_args(args)
    result = run_training(
        config,
        args.out,
        data_dir=args.data_dir,
        download=args.download,
        device=args.device,
        progress=not args.quiet,
        started=started,
        fresh=getattr(args, "out_state", None) == "foreign",
    )
    if result.resumed_from >= config.epochs:
        print(f"train: {args.out} already holds all {config.epochs} epochs; nothing to do")
        return 0
    last = result.history[-1]
    resumed = f" (resumed from epoch {result.resumed_from})" if result.resumed_from else ""
    print(
        f"train: {config.model} (P = {result.num_parameters:,}) {config.epochs} epochs{resumed}; "
        f"test accuracy {last['test_accuracy']:.4f}, loss {last['test_loss']:.4f}; "
        f"results in {args.out}"
    )
    return 0
