"""``python -m validation train``: train a network with the paper's recipe, checkpoint, resume.

The recipe (paper, section 4): "We train a 16 Layer VGG CNN [20] with P = 15291300 parameters
and 110 Layer ResNet [7] with P = 1169972 parameters, architectures on the CIFAR-100 datasets
using SGD, with a learning rate of 0.1/0.05 respectively for [225, 300] epochs with a linearly
decaying learning rate from epochs [126, 161] with momentum rho = 0.9 and data-augmentation".

* Optimiser: SGD, momentum 0.9 (paper), coupled L2 weight decay. The paper states no weight
  decay; the default 5e-4 is the conventional CIFAR value (SWA code base for VGG16; it used 3e-4
  for PreResNet) and is an option (``--weight-decay``).
* Initial learning rate: 0.1 for vgg16/vgg16bn and the small models, 0.05 for preresnet110
  (paper). Epochs: 225 (VGG16) and 300 (PreResNet-110) by default (paper), 20 for small models.
* Schedule (:func:`learning_rate`): constant, then linear decay, then constant, set per epoch.
  We read "for [225, 300] epochs with a linearly decaying learning rate from epochs [126, 161]"
  with the sentence's own "respectively": VGG16 decays from epoch 126 of 225, PreResNet-110 from
  epoch 161 of 300 (both about 55% of training, as in the SWA schedule of Izmailov et al. 2018
  this family of experiments uses), linearly to the end of training (0-based epoch index e: lr0
  for e <= start, lr0 * f at the last epoch, linear between). The paper does not state the final
  value; f = 0.01 (``--final-lr-fraction``) is the SWA schedule's. For other ``--epochs`` the
  start is scaled, ``round(start E / E_paper)`` (models not in the paper: VGG16's 126 / 225).
  The other reading -- one window from epoch 126 to 161 for both -- is ``--decay-start 126
  --decay-end 161``; every run records its window.
* Data: CIFAR-100 from ``--data-dir`` (``nnhessian.cifar``; download only with ``--download``),
  normalised with the training-set statistics, augmented (random crop with padding 4, horizontal
  flip) for training only; test-set loss and accuracy after every epoch without augmentation.
  ``--data digits`` is the offline 8x8 digits set (first 1500 samples train, last 297 test; no
  augmentation) for quick CPU runs of the small models.

Randomness: ``np.random.SeedSequence(seed)`` spawns three streams: model initialisation, data
order + augmentation (one CPU ``torch.Generator``, so the draws do not depend on the device), and
torch's global generator (dropout), which is forked for the run so the caller's state is left
alone. Each checkpoint holds model and optimizer state, the epoch, the seed, the states of all
generators (torch CPU and CUDA, numpy, python, data order) and the configuration, written
atomically (temporary file + ``os.replace``). Running the same command again resumes from the
last checkpoint; on the CPU the result is bit-identical to an uninterrupted run.

Output in ``--out``: ``checkpoints/epoch_EEEE.pt`` (every ``--checkpoint-every`` epochs and the
last; a VGG16 checkpoint with momentum buffers is about 123 MB), ``history.csv`` (per epoch: lr,
train loss/accuracy on the augmented batches as trained, test loss/accuracy) and
``results.json`` with provenance, both rewritten at every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from validation.errors import UsageError

DATA_SETS = ("cifar100", "digits")
PAPER_EPOCHS = {"vgg16": 225, "vgg16bn": 225, "preresnet110": 300}
PAPER_LR = {"vgg16": 0.1, "vgg16bn": 0.1, "preresnet110": 0.05}
# Paper, section 4: "... for [225, 300] epochs with a linearly decaying learning rate from epochs
# [126, 161]": the epoch where the decay starts, per model (see the module docstring).
PAPER_DECAY_START = {"vgg16": 126, "vgg16bn": 126, "preresnet110": 161}
DEFAULT_LR = 0.1
DEFAULT_SMALL_EPOCHS = 20
DEFAULT_WEIGHT_DECAY = 5e-4
DEFAULT_FINAL_FRACTION = 0.01
DIGITS_TRAIN = 1500  # digits: first 1500 of 1797 samples train, the rest test
EVAL_BATCH = 1000
CHECKPOINT_FORMAT = "minibatch-rmt/train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")


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


def default_decay(model: str, epochs: int) -> tuple[int, int]:
    """The paper's decay (from epoch 126 of 225 for VGG16, 161 of 300 for PreResNet-110, to the
    last epoch) scaled to ``epochs``: (start, end) epoch indices (see the module docstring)."""
    ref = model if model in PAPER_EPOCHS else "vgg16"
    start = round(PAPER_DECAY_START[ref] * epochs / PAPER_EPOCHS[ref])
    end = max(epochs - 1, 1)  # a one-epoch run keeps lr0
    return min(start, end), end


def learning_rate(
    epoch: int, *, lr: float, decay_start: int, decay_end: int, final_fraction: float
) -> float:
    """The learning rate of epoch index ``epoch`` (0-based): ``lr`` up to ``decay_start``, then
    linear down to ``lr * final_fraction`` reached at ``decay_end``, constant afterwards.

    ``lr ((1 - p) + f p)`` with ``p = clip((e - start) / (end - start), 0, 1)``; ``start == end``
    is a step."""
    if epoch >= decay_end:
        progress = 1.0
    elif epoch <= decay_start:
        progress = 0.0
    else:
        progress = (epoch - decay_start) / (decay_end - decay_start)
    return lr * ((1.0 - progress) + final_fraction * progress)


def validate(config: TrainConfig) -> None:
    """One clear line per bad setting (``UsageError``)."""
    from nnhessian.models import available

    c = config
    if c.model not in available():
        raise UsageError(f"unknown model {c.model!r}; known models: {', '.join(available())}")
    if c.data not in DATA_SETS:
        raise UsageError(f"unknown data set {c.data!r}; choose one of {', '.join(DATA_SETS)}")
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


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainingData:
    """Training and test tensors. CIFAR images stay uint8 (normalised per batch, after the
    augmentation); digits are already standardised floats."""

    name: str
    train_X: object  # torch.Tensor (N, C, H, W): uint8 for cifar100, float32 for digits
    train_y: object  # torch.Tensor (N,) int64
    test_X: object
    test_y: object
    num_classes: int
    raw_uint8: bool  # images need nnhessian.cifar.normalize

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_X.shape[1:])


def load_training_data(data: str, *, data_dir, download: bool, limit: int | None) -> TrainingData:
    """The named data set (``UsageError`` with one line when its files are missing/corrupt)."""
    import torch

    if data == "cifar100":
        from nnhessian.cifar import NUM_CLASSES, CifarDataError, read_cifar100

        try:
            train = read_cifar100(data_dir, "train", download=download)
            test = read_cifar100(data_dir, "test")
        except CifarDataError as err:
            raise UsageError(str(err)) from None
        data_set = TrainingData(
            "cifar100", train.images, train.labels, test.images, test.labels, NUM_CLASSES, True
        )
    else:
        from nnhessian.data import load_digits

        digits = load_digits(images=True, dtype=torch.float32)
        X, y = digits.X, digits.y
        data_set = TrainingData(
            "digits",
            X[:DIGITS_TRAIN],
            y[:DIGITS_TRAIN],
            X[DIGITS_TRAIN:],
            y[DIGITS_TRAIN:],
            10,
            False,
        )
    if limit is not None:
        if limit > len(data_set.train_y):
            raise UsageError(
                f"--limit {limit} exceeds the {len(data_set.train_y)} training samples of {data}"
            )
        data_set = dataclasses.replace(
            data_set, train_X=data_set.train_X[:limit], train_y=data_set.train_y[:limit]
        )
    return data_set


def model_options(config: TrainConfig, input_shape: tuple[int, int, int]) -> dict:
    """Constructor options that fit the model to the data (``UsageError`` when it cannot)."""
    from nnhessian.models import INPUT_SHAPES

    c, h, w = input_shape
    need = INPUT_SHAPES.get(config.model)
    options: dict = {}
    if need is not None:
        if tuple(input_shape) != need:
            raise UsageError(
                f"model {config.model} needs {need[0]}x{need[1]}x{need[2]} images (cifar100); "
                f"the {config.data} data are {c}x{h}x{w}; use mlp, cnn or cnn_bn for them"
            )
    elif config.model == "mlp":
        options["in_features"] = c * h * w
    else:  # cnn, cnn_bn
        if h != w or h % 2:
            raise UsageError(f"model {config.model} needs square images of even size, got {h}x{w}")
        options.update(in_channels=c, image_size=h)
    if config.dropout is not None:
        if config.model == "preresnet110":
            raise UsageError(
                "--dropout: preresnet110 has no dropout layers (vgg16 and small models do)"
            )
        options["dropout"] = config.dropout
    return options


def training_batch(data: TrainingData, idx, *, augment: bool, generator, device):
    """The inputs and labels of one training batch (augmented if asked), on ``device``."""
    X = data.train_X[idx.to(data.train_X.device)]
    y = data.train_y[idx.to(data.train_y.device)]
    if data.raw_uint8:
        from nnhessian.cifar import augment as augment_images
        from nnhessian.cifar import normalize

        if augment:
            X = augment_images(X, generator=generator)
        X = normalize(X)
    return X.to(device), y.to(device)


def test_batches(data: TrainingData, device):
    """Test inputs and labels in fixed batches, normalised, never augmented."""
    for start in range(0, len(data.test_y), EVAL_BATCH):
        X = data.test_X[start : start + EVAL_BATCH]
        if data.raw_uint8:
            from nnhessian.cifar import normalize

            X = normalize(X)
        yield X.to(device), data.test_y[start : start + EVAL_BATCH].to(device)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_path(out: Path, epoch: int) -> Path:
    return Path(out) / "checkpoints" / f"epoch_{epoch:04d}.pt"


def list_checkpoints(out: Path) -> dict[int, Path]:
    """``{epoch: path}`` of the finished checkpoints in ``out`` (temporary files ignored)."""
    folder = Path(out) / "checkpoints"
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = CHECKPOINT_NAME.match(path.name)
            if match and path.is_file():
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def save_atomic(payload: dict, path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, flush to disk, ``os.replace``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path) -> dict:
    """The payload of a training checkpoint, checked (``UsageError``: missing, corrupt, foreign).

    Loaded with ``weights_only=True`` (no code in a checkpoint runs) onto the CPU.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise UsageError(
            f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}"
            f"{': ' + reason if reason else ''}); delete it to resume from the previous one"
        ) from None
    keys = ("model_name", "num_classes", "model_options", "epoch", "model_state", "config")
    if (
        not isinstance(payload, dict)
        or payload.get("format") != CHECKPOINT_FORMAT
        or any(k not in payload for k in keys)
    ):
        raise UsageError(
            f"checkpoint {path} is not a training checkpoint of this suite (written by "
            "python -m validation train)"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise UsageError(
            f"checkpoint {path} has format version {payload.get('version')!r}; this suite reads "
            f"version {CHECKPOINT_VERSION}"
        )
    return payload


def _build_from(payload: dict, path: Path):
    from nnhessian.models import build

    try:
        model = build(
            payload["model_name"], int(payload["num_classes"]), **payload["model_options"]
        )
        model.load_state_dict(payload["model_state"], strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise UsageError(
            f"checkpoint {path} does not fit model {payload['model_name']} with "
            f"{payload['num_classes']} classes ({first})"
        ) from None
    return model


def load_checkpoint(
    path, model_name: str | None = None, num_classes: int | None = None, *, device="cpu"
):
    """A trained model from a ``python -m validation train`` checkpoint.

    Returns ``(model, epoch, meta)``: the model with the checkpoint's weights (and BatchNorm
    buffers) on ``device`` in eval mode; ``epoch`` the number of completed epochs; ``meta`` a
    dict with ``model``, ``num_classes``, ``model_options``, ``num_parameters``, ``data``,
    ``seed``, ``config`` (the :class:`TrainConfig` fields), ``history`` (per-epoch rows) and
    ``path``. ``model_name`` / ``num_classes``, when given, must match the checkpoint.

    Raises ``UsageError`` (one line) for a missing or corrupt file, a file that is not a training
    checkpoint, another architecture, another number of classes, or an unavailable device.
    """
    from nnhessian.models import num_parameters
    from nnhessian.operators import resolve_device

    path = Path(path)
    payload = read_checkpoint(path)
    stored, classes = payload["model_name"], int(payload["num_classes"])
    if model_name is not None and model_name != stored:
        raise UsageError(
            f"checkpoint {path} holds a {stored} model, not {model_name}; pass --model {stored} "
            "or a checkpoint of that architecture"
        )
    if num_classes is not None and int(num_classes) != classes:
        raise UsageError(
            f"checkpoint {path} has {classes} output classes, but {num_classes} were asked for "
            f"(data {payload['config'].get('data')!r})"
        )
    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    model = _build_from(payload, path).to(dev).eval()
    meta = {
        "model": stored,
        "num_classes": classes,
        "model_options": dict(payload["model_options"]),
        "num_parameters": num_parameters(model),
        "data": payload["config"].get("data"),
        "seed": payload.get("seed"),
        "config": dict(payload["config"]),
        "history": list(payload.get("history", [])),
        "path": str(path),
    }
    return model, int(payload["epoch"]), meta


# ---------------------------------------------------------------------------------------------
# Random number generator states
# ---------------------------------------------------------------------------------------------


def _capture_rng(data_generator, device) -> dict:
    """Every generator state a run could depend on, as plain values and tensors (loadable with
    ``weights_only=True``). The training loop itself draws only from ``data_generator`` and
    torch's generators (dropout); numpy's and python's global states are carried too, set from the
    seed for the run and restored afterwards, so that user additions that draw from them (custom
    transforms, samplers) also resume exactly (hence the legacy global numpy API here)."""
    import torch

    np_state = np.random.get_state(legacy=False)  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(v) for v in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
        "data": data_generator.get_state(),
    }


def _restore_rng(state: dict, data_generator, device) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    data_generator.set_state(state["data"])


def _seed_streams(seed: int) -> tuple[int, int, int, int]:
    """Seeds of the independent streams: init, data order/augmentation, torch global, numpy."""
    children = np.random.SeedSequence(seed).spawn(4)
    return tuple(int(c.generate_state(1, dtype=np.uint64)[0] >> 1) for c in children)


# ---------------------------------------------------------------------------------------------
# The run
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


def _config_differences(stored: dict, config: TrainConfig) -> list[str]:
    now = dataclasses.asdict(config)
    return [f"{k} {stored.get(k)!r} there, {now[k]!r} here" for k in now if stored.get(k) != now[k]]


def plan_resume(out: Path, config: TrainConfig) -> tuple[dict | None, Path | None]:
    """The last checkpoint in ``out`` and its payload, checked against ``config`` (or Nones)."""
    found = list_checkpoints(out)
    if not found:
        return None, None
    path = found[max(found)]
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
    diffs = _config_differences(payload["config"], config)
    if diffs:
        raise UsageError(
            f"--out {out} holds a run with another configuration ({'; '.join(diffs)}); use the "
            "same options to resume it or another --out"
        )
    return payload, path


def run_training(
    config: TrainConfig,
    out: Path,
    *,
    data_dir=Path("data"),
    download: bool = False,
    device=None,
    progress: bool = True,
    started=None,
) -> TrainResult:
    """Train (or resume) the run ``config`` into ``out``; see the module docstring.

    Everything is checked before anything is written: bad options, missing data, unavailable
    device, a foreign or corrupt checkpoint in ``out`` all raise ``UsageError`` first.
    """
    import torch

    from nnhessian.models import build, num_parameters
    from nnhessian.operators import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    out = Path(out)
    payload, ckpt = plan_resume(out, config)
    data = load_training_data(config.data, data_dir=data_dir, download=download, limit=config.limit)
    if data.num_classes != config.num_classes:
        raise UsageError(
            f"--num-classes {config.num_classes} does not match the data: {config.data} has "
            f"{data.num_classes} classes"
        )
    options = model_options(config, data.input_shape)
    if payload is not None and dict(payload["model_options"]) != options:
        raise UsageError(
            f"checkpoint {ckpt} was built with options {payload['model_options']}, not {options}"
        )
    init_seed, data_seed, torch_seed, numpy_seed = _seed_streams(config.seed)
    if payload is None:
        generator = torch.Generator().manual_seed(init_seed)
        model = build(config.model, config.num_classes, generator=generator, **options)
    else:
        model = _build_from(payload, ckpt)
    model = model.to(dev)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    data_generator = torch.Generator()
    history: list[dict] = []
    start_epoch = 0
    if payload is not None:
        try:
            optimizer.load_state_dict(payload["optimizer_state"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise UsageError(f"checkpoint {ckpt} has an unusable optimizer state ({err})") from None
        history = [dict(row) for row in payload.get("history", [])]
        start_epoch = int(payload["epoch"])
    data = dataclasses.replace(data, train_X=data.train_X.to(dev), test_X=data.test_X.to(dev))
    P = num_parameters(model)
    seconds = float(payload.get("train_seconds", 0.0)) if payload is not None else 0.0
    checkpoints = [str(p.relative_to(out)) for p in list_checkpoints(out).values()]

    np_saved, py_saved = np.random.get_state(), random.getstate()  # noqa: NPY002
    fork_devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices, device_type=dev.type):
        try:
            if payload is None:
                torch.default_generator.manual_seed(torch_seed)  # only the forked generators
                if dev.type == "cuda":
                    torch.cuda.manual_seed(torch_seed)
                np.random.seed(numpy_seed % 2**32)  # noqa: NPY002
                random.seed(numpy_seed)
                data_generator.manual_seed(data_seed)
            else:
                _restore_rng(payload["rng"], data_generator, dev)
            epochs = range(start_epoch, config.epochs)
            bar = _bar(epochs, progress, desc=f"train {config.model}", unit="epoch")
            for epoch in bar:
                clock = time.perf_counter()
                row = train_epoch(
                    model, optimizer, data, config, epoch, data_generator, dev, progress=progress
                )
                if not math.isfinite(row["train_loss"]):
                    kept = f"checkpoints up to epoch {epoch} are kept" if epoch else "nothing saved"
                    raise UsageError(
                        f"training diverged in epoch {epoch + 1}: the mean training loss is "
                        f"{row['train_loss']} at learning rate {row['lr']:.4g}; lower --lr "
                        f"({kept})"
                    )
                row.update(evaluate(model, data, dev))
                seconds += time.perf_counter() - clock
                row["seconds"] = round(time.perf_counter() - clock, 3)
                history.append(row)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(
                        loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_accuracy']:.3f}"
                    )
                done = epoch + 1
                if done % config.checkpoint_every == 0 or done == config.epochs:
                    path = checkpoint_path(out, done)
                    save_atomic(
                        {
                            "format": CHECKPOINT_FORMAT,
                            "version": CHECKPOINT_VERSION,
                            "model_name": config.model,
                            "num_classes": config.num_classes,
                            "model_options": options,
                            "num_parameters": P,
                            "epoch": done,
                            "model_state": model.state_dict(),
                            "optimizer_state": optimizer.state_dict(),
                            "schedule": {
                                "next_epoch": done,
                                "next_lr": _lr(config, done),
                            },
                            "seed": config.seed,
                            "rng": _capture_rng(data_generator, dev),
                            "config": dataclasses.asdict(config),
                            "history": history,
                            "train_seconds": seconds,
                            "device": str(dev),
                        },
                        path,
                    )
                    rel = str(path.relative_to(out))
                    if rel not in checkpoints:
                        checkpoints.append(rel)
                    _write_results(
                        out,
                        config,
                        history,
                        checkpoints,
                        P,
                        dev,
                        started,
                        seconds,
                        data_dir=data_dir,
                    )
        finally:
            np.random.set_state(np_saved)  # noqa: NPY002
            random.setstate(py_saved)
    if start_epoch >= config.epochs and not (out / "results.json").is_file():
        _write_results(
            out, config, history, checkpoints, P, dev, started, seconds, data_dir=data_dir
        )
    return TrainResult(
        config=config,
        epochs_completed=max(start_epoch, config.epochs),
        resumed_from=start_epoch,
        num_parameters=P,
        history=tuple(history),
        checkpoints=tuple(checkpoints),
        out=out,
    )


def _lr(config: TrainConfig, epoch: int) -> float:
    return learning_rate(
        epoch,
        lr=config.lr,
        decay_start=config.decay_start,
        decay_end=config.decay_end,
        final_fraction=config.final_lr_fraction,
    )


def _bar(iterable, progress: bool, **kwargs):
    if not progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


def train_epoch(model, optimizer, data, config, epoch, generator, device, *, progress) -> dict:
    """One epoch of SGD at the schedule's learning rate: a fresh permutation of the training set
    (``torch.randperm`` from ``generator``), batches of ``batch_size`` (the last one shorter),
    each augmented from ``generator`` when asked. Returns the epoch's mean loss and accuracy."""
    import torch
    import torch.nn.functional as F

    lr = _lr(config, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    N = len(data.train_y)
    order = torch.randperm(N, generator=generator)
    starts = range(0, N, config.batch_size)
    bar = _bar(
        starts, progress, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch"
    )
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for k, start in enumerate(bar):
        idx = order[start : start + config.batch_size]
        X, y = training_batch(data, idx, augment=config.augment, generator=generator, device=device)
        logits = model(X)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = int(y.shape[0])
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += n
        if progress and (k % 10 == 0 or start + config.batch_size >= N):
            bar.set_postfix(
                loss=f"{float(loss_sum) / seen:.3f}",
                acc=f"{int(correct) / seen:.3f}",
                lr=f"{lr:.4g}",
            )
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": float(loss_sum) / seen,
        "train_accuracy": int(correct) / seen,
    }


def evaluate(model, data, device) -> dict:
    """Test-set mean cross-entropy and accuracy, model in eval mode (restored afterwards)."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for X, y in test_batches(data, device):
            logits = model(X)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum").double())
            correct += int((logits.argmax(dim=1) == y).sum())
    model.train(was_training)
    n = len(data.test_y)
    return {"test_loss": loss_sum / n, "test_accuracy": correct / n}


def _write_results(out, config, history, checkpoints, P, dev, started, seconds, *, data_dir):
    import pandas as pd

    from validation.store import provenance, result_folder

    if started is None:
        from datetime import UTC, datetime

        started = datetime.now(UTC)
    recorded = {**dataclasses.asdict(config), "data_dir": str(data_dir)}
    with result_folder(out) as w:
        w.csv("history.csv", pd.DataFrame(history))
        w.json(
            "results.json",
            {
                "kind": "train",
                "provenance": provenance(
                    recorded, started=started, wall_seconds=seconds, device=str(dev)
                ),
                "model": config.model,
                "num_parameters": P,
                "epochs_completed": history[-1]["epoch"] if history else 0,
                "schedule": {
                    "lr": config.lr,
                    "decay_start": config.decay_start,
                    "decay_end": config.decay_end,
                    "final_lr_fraction": config.final_lr_fraction,
                },
                "checkpoints": list(checkpoints),
                "history": history,
                "files": ["history.csv", "results.json"],
            },
        )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    from validation.options import integer, number

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
    from nnhessian.models import available

    if args.model not in available():
        raise UsageError(f"unknown model {args.model!r}; known models: {', '.join(available())}")
    if args.data not in DATA_SETS:
        raise UsageError(f"unknown data set {args.data!r}; choose one of {', '.join(DATA_SETS)}")
    epochs = args.epochs
    if epochs is None:
        epochs = PAPER_EPOCHS.get(args.model, DEFAULT_SMALL_EPOCHS)
    if epochs < 1:
        raise UsageError(f"--epochs must be an integer >= 1, got {epochs}")
    start, end = default_decay(args.model, epochs)
    classes = {"cifar100": 100, "digits": 10}[args.data]
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
