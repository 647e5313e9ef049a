"""Stage 1 of a network run: the data, the model and its weights, from a configuration.

* data: a registered data set (``nnhessian.datasets``) or a researcher's ``module:callable``
  (:mod:`validation.network.user_code`); the first ``samples`` samples; every B must be <= N;
* model: ``nnhessian.models.build`` with the data's input geometry and the seeded ``init``
  stream, or a researcher's ``module:callable``;
* weights: a training checkpoint of ``python -m validation train`` (architecture, options and
  epoch from the file), any other ``torch.save`` state_dict, or a short deterministic SGD run from
  the seeded initialisation (:func:`weights_on_the_spot`, resumable through ``--state-dir``).

Every problem found here is a ``UsageError`` raised before any output exists.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from validation.errors import UsageError
from validation.network import user_code
from validation.network.config import TRAINED_FORMAT, TRAINED_WEIGHTS, NetworkConfig
from validation.network.config import stream_generator as _stream


def flat(err: BaseException) -> str:
    """The whole message of ``err`` on one line."""
    return " ".join(str(err).split()) or type(err).__name__


def resolve_device(name: str):
    """``auto`` -> CUDA when available else CPU; bad or absent devices are a ``UsageError``."""
    from nnhessian import resolve_device as _resolve
    from nnhessian.weights import one_line

    try:
        return _resolve(None if name == "auto" else name)
    except ValueError as err:
        raise UsageError(f"--device {name}: {one_line(err)}") from None


def _named_data(config: NetworkConfig, *, download: bool):
    """A registered data set (``nnhessian.datasets``) or the researcher's callable."""
    import torch

    from nnhessian.datasets import DatasetError, load_dataset

    if user_code.is_spec(config.data):
        return user_code.load_data(config.data)
    try:
        return load_dataset(
            config.data,
            data_dir=config.data_dir,
            dtype=torch.float64,
            download=download,
            limit=config.samples,
        )
    except DatasetError as err:
        message = flat(err)
        if message.startswith("unknown data set"):
            message += ", or package.module:callable returning (X, y) or a data set"
        raise UsageError(message) from None


def load_data(config: NetworkConfig, *, download: bool = False, data=None):
    """The data set of ``config`` (or ``data`` as given), first ``samples`` samples, float64."""
    import torch

    data = _named_data(config, download=download) if data is None else user_code.as_dataset(data)
    if config.samples is not None:
        if config.samples > len(data):
            raise UsageError(
                f"--samples {config.samples} exceeds the {len(data):,} samples of {config.data}"
            )
        data = data.subset(torch.arange(config.samples))
    N = len(data)
    for B in config.batch_sizes:
        if B > N:
            raise UsageError(
                f"--batch-sizes: B = {B} exceeds the data set size N = {N:,} "
                "(a batch is drawn without replacement, so 1 <= B <= N)"
            )
    if data.num_classes is None:
        data = type(data)(data.X, data.y, int(data.y.max()) + 1)
    return data


def data_identity(data, name: str) -> dict:
    """What identifies the measured data: name, N, input shape, classes, and the SHA-256 of the
    float64 features and labels (``nnhessian.checkpoint.tensor_sha256``), for provenance."""
    from nnhessian.checkpoint import tensor_sha256

    digest = hashlib.sha256((tensor_sha256(data.X) + tensor_sha256(data.y)).encode())
    return {
        "name": name,
        "N": len(data),
        "input_shape": [int(s) for s in data.X.shape[1:]],
        "num_classes": int(data.num_classes),
        "sha256": digest.hexdigest(),
    }


def _model_options(config: NetworkConfig, X) -> dict:
    """Constructor options of a built-in model for inputs shaped like ``X``."""
    options = {}
    if config.model == "mlp":
        options["in_features"] = int(X[0].numel())
        if config.width is not None:
            options["hidden"] = (config.width,)
    elif config.model in ("cnn", "cnn_bn") and X.ndim == 4:
        options.update(in_channels=int(X.shape[1]), image_size=int(X.shape[-1]))
        if config.width is not None:
            options["width"] = config.width
    elif config.width is not None:
        options["width"] = config.width
    return options


def build_model(config: NetworkConfig, data):
    """``nnhessian.models.build`` with the input geometry of ``data`` and a seeded init; or the
    researcher's ``module:callable`` called with (number of classes, input shape)."""
    from nnhessian import models
    from nnhessian.weights import one_line

    shape = tuple(int(s) for s in data.X.shape[1:])
    if user_code.is_spec(config.model):
        if config.width is not None:
            raise UsageError(f"--width applies to the built-in models, not {config.model}")
        return user_code.build_model(config.model, data.num_classes, shape, config.seed)
    need = models.INPUT_SHAPES.get(config.model)
    if need is not None and shape != need:
        raise UsageError(
            f"model {config.model!r} does not fit data {config.data!r}: it needs "
            f"{'x'.join(map(str, need))} images (--data cifar100), the data are "
            f"{'x'.join(map(str, shape))}; use mlp, cnn or cnn_bn for them"
        )
    if need is not None and config.width is not None:
        raise UsageError(
            f"--width applies to mlp, cnn and cnn_bn; {config.model} has the paper's fixed widths"
        )
    try:
        return models.build(
            config.model,
            data.num_classes,
            generator=_stream(config.seed, "init"),
            **_model_options(config, data.X),
        )
    except (ValueError, TypeError) as err:
        raise UsageError(f"--model {config.model}: {one_line(err)}") from None


def peek_training_checkpoint(path) -> dict | None:
    """The payload of a ``python -m validation train`` checkpoint, memory-mapped (tensors are
    read only when touched), or None when ``path`` is something else or unreadable (the full
    read then says why)."""
    import torch

    from nnhessian.train_checkpoint import CHECKPOINT_FORMAT

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a (zip-format) torch file: not ours to judge here
        return None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj
    return None


def _training_checkpoint(config: NetworkConfig, data):
    from nnhessian.train_checkpoint import CheckpointError, load_checkpoint

    if config.width is not None:
        raise UsageError(
            f"--width does not apply to checkpoint {config.checkpoint}: a training "
            "checkpoint fixes the architecture; leave --width out"
        )
    try:
        model, epoch, meta = load_checkpoint(
            config.checkpoint, config.model, data.num_classes, device="cpu"
        )
    except CheckpointError as err:
        raise UsageError(flat(err)) from None
    source = {
        "kind": "training checkpoint",
        "path": str(config.checkpoint),
        "model_options": meta["model_options"],
        "trained_on": meta["data"],
        "train_seed": meta["seed"],
        "train_config": meta["config"],
    }
    return model, epoch, source


def load_weights(config: NetworkConfig, data):
    """The model of ``config`` at its weights: ``(model, epoch, weights)`` on the CPU.

    * a training checkpoint (``python -m validation train``): architecture, constructor options
      and epoch from the file via :func:`nnhessian.train_checkpoint.load_checkpoint`, which
      refuses another architecture than ``--model`` and another class count than the data's
      (one line);
    * any other ``torch.save`` file: a state_dict for the model built from ``--model`` /
      ``--width`` (:func:`nnhessian.weights.load_state_dict_file`);
    * no checkpoint: the seeded initialisation (trained later by :func:`weights_on_the_spot`).

    ``weights`` describes the source for ``results.json``.
    """
    from nnhessian.weights import WeightsError, load_state_dict_file, read_weights_file

    if config.checkpoint is None:
        model = build_model(config, data)
        return model, None, {"kind": "trained on the spot", "init_seed": config.seed}
    if not user_code.is_spec(config.model) and peek_training_checkpoint(config.checkpoint):
        return _training_checkpoint(config, data)
    try:
        obj = read_weights_file(config.checkpoint)
        model = build_model(config, data)
        epoch = load_state_dict_file(model, config.checkpoint, obj)
    except WeightsError as err:
        raise UsageError(str(err)) from None
    return model, epoch, {"kind": "state_dict", "path": str(config.checkpoint)}


def agree(sharding, message: str | None) -> None:
    """Raise ``UsageError(message)`` -- rank 0's message, on every rank -- when rank 0 found a
    problem only it can see (its files); one broadcast, so every rank must call this."""
    if sharding is not None:
        message = sharding.broadcast_object(message)
    if message:
        raise UsageError(message)


def is_main(sharding) -> bool:
    """Rank 0, or the one process of an unsharded run."""
    return sharding is None or sharding.rank == 0


def prepare_state_dir(state_dir, sharding=None) -> None:
    """Create ``state_dir`` (rank 0); a path that cannot be a folder is a ``UsageError``."""
    message = None
    if state_dir is not None and is_main(sharding):
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            message = f"--state-dir {state_dir} exists and is not a folder"
        except OSError as err:
            message = f"--state-dir {state_dir}: cannot create the folder ({err.strerror or err})"
    agree(sharding, message)


def _saved_training(path: Path, key: dict, state_dir) -> tuple[dict | None, str | None]:
    """The trained weights saved in ``path`` by an earlier run with the same ``key``:
    ``(payload, None)``, ``(None, None)`` when there are none, ``(None, message)`` when the
    file is unreadable or belongs to another configuration."""
    import torch

    if not path.exists():
        return None, None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file
        return None, (
            f"--state-dir: {path} cannot be read ({type(err).__name__}); delete {state_dir} "
            "to start afresh"
        )
    if not (isinstance(saved, dict) and saved.get("format") == TRAINED_FORMAT):
        return None, (
            f"--state-dir: {path} is not a file of trained weights of this command; "
            f"delete {state_dir} to start afresh"
        )
    if saved["key"] != key:
        differ = sorted(k for k in key if saved["key"].get(k) != key[k])
        return None, (
            f"--state-dir: the weights trained in {state_dir} belong to another run "
            f"configuration ({', '.join(differ)} differ): use another state directory, "
            "or delete this one to start afresh"
        )
    return saved, None


def _train(model, data, config: NetworkConfig) -> dict:
    from nnhessian.weights import train_briefly

    return train_briefly(
        model,
        data,
        epochs=config.train_epochs,
        batch_size=config.train_batch,
        lr=config.train_lr,
        momentum=config.train_momentum,
        generator=_stream(config.seed, "train"),
        chunk=config.hvp_batch,
    )


def weights_on_the_spot(model, data, config: NetworkConfig, *, state_dir, sharding, data_sha256):
    """:func:`nnhessian.weights.train_briefly` -- or, with ``state_dir``, the weights an earlier
    run of the same configuration trained and saved there (``trained-weights.pt``) -- the same on
    every rank.

    Saving them makes a killed run resumable where training is not bitwise reproducible (GPU
    kernels): the saved Lanczos and sigma^2 states are only valid for the same weights. The file
    is keyed by the initial weights, the data and the training settings; another key is a
    ``UsageError``. With several processes rank 0 reads / writes the file and broadcasts the
    trained weights (parameters and buffers) and the training record. Returns the record.
    """
    import torch

    from nnhessian.checkpoint import atomic_save
    from nnhessian.weights import model_digest

    main = is_main(sharding)
    key = {
        "initial_weights_sha256": model_digest(model),
        "data_sha256": data_sha256,
        "train_epochs": config.train_epochs,
        "train_batch": config.train_batch,
        "train_lr": config.train_lr,
        "train_momentum": config.train_momentum,
        "seed": config.seed,
        "dtype": config.dtype,
    }
    path = Path(state_dir) / TRAINED_WEIGHTS if state_dir is not None else None
    saved, message = _saved_training(path, key, state_dir) if main and path else (None, None)
    agree(sharding, message)
    found = saved is not None
    if sharding is not None:
        found = sharding.broadcast_object(found)
    training = None
    if found:
        if main:
            model.load_state_dict(saved["state"], strict=True)
            training = dict(saved["training"], resumed_from=str(path))
        model.eval()
    else:
        training = _train(model, data, config)
        if main and path is not None:
            state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
            atomic_save(
                {"format": TRAINED_FORMAT, "key": key, "state": state, "training": training}, path
            )
    if sharding is not None:  # rank 0's weights everywhere (GPU training may differ by rank)
        with torch.no_grad():
            for t in model.state_dict().values():
                sharding.broadcast_(t)
        training = sharding.broadcast_object(training)
    return training


def sigma2_batch_size(config: NetworkConfig, N: int) -> int | None:
    """The B of the partition and two-batch estimators: the smallest B, when ``2 B <= N``."""
    smallest = min(config.batch_sizes)
    return smallest if N // smallest >= 2 else None


def check_world(world: int, config: NetworkConfig, N: int) -> None:
    """Every process needs a sample and a batch of the partition estimator."""
    if world > N:
        raise UsageError(
            f"world size {world} exceeds the data set size N = {N:,}: every process needs at "
            f"least one sample; launch at most {N:,} processes"
        )
    B = sigma2_batch_size(config, N)
    if world > 1 and B is not None:
        parts = -(-N // B)  # the partition estimator's K batches and the left-over
        if world > parts:
            raise UsageError(
                f"world size {world} exceeds the {parts} batches the partition sigma^2 estimator "
                f"splits over the processes (N = {N:,}, B = {B}): launch at most {parts} processes"
            )


@dataclass(frozen=True)
class Prepared:
    """A model at its weights and the data, ready for the Hessian operators."""

    model: object  # torch.nn.Module on the run's device and dtype
    data: object  # nnhessian.InMemoryDataset on the run's device and dtype
    identity: dict  # data_identity(...)
    epoch: int | None  # from the checkpoint, else None
    weights: dict  # where the weights came from (results.json)
    training: dict | None  # the on-the-spot training record (None with given weights)
    notes: tuple[str, ...]


def _check_fits(model, data, config: NetworkConfig) -> None:
    from nnhessian.weights import WeightsError, check_finite_weights, check_model_fits_data

    try:
        check_finite_weights(model)
        check_model_fits_data(model, data, model_name=config.model, data_name=config.data)
    except WeightsError as err:
        raise UsageError(str(err)) from None


def _check_loss(model, data, config: NetworkConfig) -> None:
    from nnhessian.weights import WeightsError, check_finite_weights, mean_loss

    try:
        check_finite_weights(model)
    except WeightsError as err:
        raise UsageError(str(err)) from None
    loss = mean_loss(model, data, chunk=config.hvp_batch)
    if not math.isfinite(loss):
        raise UsageError(
            f"the loss at these weights is not finite ({loss}); the Hessian is undefined there"
        )


def prepare(
    config, *, device, sharding, state_dir, download, model=None, data=None, world: int = 1
) -> Prepared:
    """The data and the model at its weights on ``device`` in the config's dtype.

    ``model`` / ``data`` (the Python API): a ``torch.nn.Module`` measured at its current weights
    (never trained here; a copy is moved to the device) and the data as given; otherwise both
    come from ``config``. Raises ``UsageError`` for anything that cannot be measured.
    """
    import copy

    import torch

    from nnhessian.hvp import has_batchnorm

    notes = []
    data = load_data(config, download=download, data=data)
    check_world(world, config, len(data))
    identity = data_identity(data, config.data)
    if model is not None:
        model, epoch, weights = copy.deepcopy(model), None, {"kind": "given module"}
    else:
        model, epoch, weights = load_weights(config, data)
    trained_on = weights.get("trained_on")
    if trained_on is not None and trained_on != config.data:
        notes.append(f"the checkpoint was trained on {trained_on}, measured here on {config.data}")
    if config.policy == "batch-stats" and has_batchnorm(model):
        raise UsageError(
            "--policy batch-stats with a BatchNorm model: the batch loss is not a mean of "
            "per-sample losses, so sigma^2 (paper eq. 9) is undefined; use --policy eval"
        )
    dtype = getattr(torch, config.dtype)
    model = model.to(device=device, dtype=dtype)
    data = data.to(device, dtype)
    _check_fits(model, data, config)
    prepare_state_dir(state_dir, sharding)
    training = None
    if weights["kind"] == "trained on the spot":
        training = weights_on_the_spot(
            model,
            data,
            config,
            state_dir=state_dir,
            sharding=sharding,
            data_sha256=identity["sha256"],
        )
        if config.train_epochs == 0:
            notes.append("--train-epochs 0: the Hessian is measured at the initial weights")
    _check_loss(model, data, config)
    return Prepared(model, data, identity, epoch, weights, training, tuple(notes))
