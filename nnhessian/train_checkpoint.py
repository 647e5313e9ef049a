"""Checkpoints of a training run and the random-generator states that make a resume exact.

A checkpoint (:func:`checkpoint_payload`, written by :func:`save_atomic` to
``<out>/checkpoints/epoch_EEEE.pt``) is a ``torch.save`` dict with ``format`` =
:data:`CHECKPOINT_FORMAT`, ``version`` = :data:`CHECKPOINT_VERSION`, the architecture
(``model_name``, ``num_classes``, ``model_options``, ``num_parameters``), the number of completed
``epoch``\\ s, model and optimizer state, the schedule's next learning rate, the ``seed``, the
generator states (``rng``), the run's ``config`` (a dict), the per-epoch ``history``, the
training time and the device. It holds only tensors and plain values, so it loads with
``weights_only=True`` (no code in a checkpoint runs). Files are written atomically (temporary
file beside the target, fsync, ``os.replace``): a killed run leaves whole checkpoints only.

Randomness (house style: independent streams from ``np.random.SeedSequence``):
:func:`seed_streams` spawns four seeds from the run's seed -- model initialisation, data order +
augmentation (one CPU ``torch.Generator``, so the draws do not depend on the device), torch's
global generator (dropout) and numpy/python's global generators. :func:`isolated_generators`
forks the global generators for the run (the caller's states are left alone) and seeds them, or
restores them from a checkpoint; :func:`capture_rng` records every state a run could depend on.
On the CPU a resumed run is bit-identical to an uninterrupted one.

Errors (missing, corrupt or foreign files; another architecture; an absent device) raise
:class:`CheckpointError` with one line.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "SeedStreams",
    "build_from_checkpoint",
    "capture_rng",
    "checkpoint_path",
    "checkpoint_payload",
    "isolated_generators",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint",
    "restore_rng",
    "save_atomic",
    "seed_streams",
]

# Written into every checkpoint since the first version; files written before this module
# existed carry the same format string and version, and load unchanged.
CHECKPOINT_FORMAT = "minibatch-rmt/train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")
# Keys every checkpoint must hold (read_checkpoint refuses a file without one).
REQUIRED_KEYS = ("model_name", "num_classes", "model_options", "epoch", "model_state", "config")


class CheckpointError(ValueError):
    """A training checkpoint is missing, corrupt, foreign, or does not fit (one line)."""


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def checkpoint_path(out: Path, epoch: int) -> Path:
    """``<out>/checkpoints/epoch_EEEE.pt`` for ``epoch`` completed epochs."""
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


def checkpoint_payload(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    model_name: str,
    num_classes: int,
    model_options: dict,
    epoch: int,
    next_lr: float,
    seed: int,
    rng: dict,
    config: dict,
    history: list[dict],
    train_seconds: float,
    device,
) -> dict:
    """The checkpoint after ``epoch`` completed epochs (the format of the module docstring);
    ``next_lr`` is the schedule's learning rate of the next epoch, ``rng`` from
    :func:`capture_rng`, ``config`` the run's settings as plain values."""
    from nnhessian.models import num_parameters

    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": model_name,
        "num_classes": num_classes,
        "model_options": model_options,
        "num_parameters": num_parameters(model),
        "epoch": epoch,
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "schedule": {"next_epoch": epoch, "next_lr": next_lr},
        "seed": seed,
        "rng": rng,
        "config": config,
        "history": history,
        "train_seconds": train_seconds,
        "device": str(device),
    }


def read_checkpoint(path) -> dict:
    """The payload of a training checkpoint, checked (:class:`CheckpointError`: missing,
    corrupt, foreign, another version).

    Loaded with ``weights_only=True`` (no code in a checkpoint runs) onto the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}"
            f"{': ' + reason if reason else ''}); delete it to resume from the previous one"
        ) from None
    if (
        not isinstance(payload, dict)
        or payload.get("format") != CHECKPOINT_FORMAT
        or any(k not in payload for k in REQUIRED_KEYS)
    ):
        raise CheckpointError(
            f"checkpoint {path} is not a training checkpoint of this suite (written by "
            "python -m validation train)"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('version')!r}; this suite reads "
            f"version {CHECKPOINT_VERSION}"
        )
    return payload


def build_from_checkpoint(payload: dict, path) -> torch.nn.Module:
    """The model of a checkpoint's payload (:func:`nnhessian.models.build` with its name, classes
    and options) holding its weights, on the CPU; :class:`CheckpointError` when they do not fit."""
    from nnhessian.models import build

    try:
        model = build(
            payload["model_name"], int(payload["num_classes"]), **payload["model_options"]
        )
        model.load_state_dict(payload["model_state"], strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise CheckpointError(
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
    ``seed``, ``config`` (the run's settings), ``history`` (per-epoch rows) and ``path``.
    ``model_name`` / ``num_classes``, when given, must match the checkpoint.

    Raises :class:`CheckpointError` (one line) for a missing or corrupt file, a file that is not
    a training checkpoint, another architecture, another number of classes, or an unavailable
    device.
    """
    from nnhessian.models import num_parameters
    from nnhessian.operators import resolve_device

    path = Path(path)
    payload = read_checkpoint(path)
    stored, classes = payload["model_name"], int(payload["num_classes"])
    if model_name is not None and model_name != stored:
        raise CheckpointError(
            f"checkpoint {path} holds a {stored} model, not {model_name}; pass --model {stored} "
            "or a checkpoint of that architecture"
        )
    if num_classes is not None and int(num_classes) != classes:
        raise CheckpointError(
            f"checkpoint {path} has {classes} output classes, but {num_classes} were asked for "
            f"(data {payload['config'].get('data')!r})"
        )
    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    model = build_from_checkpoint(payload, path).to(dev).eval()
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


class SeedStreams(NamedTuple):
    """Seeds of a run's independent streams (each ``< 2**63``)."""

    init: int  # model initialisation (a torch.Generator for nnhessian.models.build)
    data: int  # data order + augmentation (one CPU torch.Generator)
    torch: int  # torch's global generators (dropout), CPU and CUDA
    numpy: int  # numpy's (mod 2**32) and python's global generators


def seed_streams(seed: int) -> SeedStreams:
    """``np.random.SeedSequence(seed).spawn(4)``, each child's first 64-bit word shifted right
    by one: init, data order/augmentation, torch global, numpy/python global."""
    children = np.random.SeedSequence(seed).spawn(4)
    return SeedStreams(*(int(c.generate_state(1, dtype=np.uint64)[0] >> 1) for c in children))


def capture_rng(data_generator: torch.Generator, device) -> dict:
    """Every generator state a run could depend on, as plain values and tensors (loadable with
    ``weights_only=True``). The training loop itself draws only from ``data_generator`` and
    torch's generators (dropout); numpy's and python's global states are carried too, set from the
    seed for the run and restored afterwards, so that user additions that draw from them (custom
    transforms, samplers) also resume exactly (hence the legacy global numpy API here)."""
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


def restore_rng(state: dict, data_generator: torch.Generator, device) -> None:
    """Set the generators from :func:`capture_rng`'s ``state`` (CUDA's only on a CUDA device)."""
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


@contextlib.contextmanager
def isolated_generators(
    device,
    data_generator: torch.Generator,
    *,
    streams: SeedStreams | None = None,
    state: dict | None = None,
) -> Iterator[None]:
    """The global generators of a training run, isolated from the caller's.

    Inside the block torch's global generators (CPU, and ``device`` when CUDA) are forked
    (``torch.random.fork_rng``) and numpy's and python's global states are saved; on the way out
    all are put back, also after an error. Inside, the generators are seeded from ``streams``
    (a fresh run: torch's from ``streams.torch``, numpy's from ``streams.numpy mod 2**32``,
    python's from ``streams.numpy``, ``data_generator`` from ``streams.data``) or restored from
    a checkpoint's ``state`` (:func:`capture_rng`). Exactly one of the two is given.
    """
    if (streams is None) == (state is None):
        raise ValueError("give exactly one of streams (a fresh run) and state (a resume)")
    np_saved, py_saved = np.random.get_state(), random.getstate()  # noqa: NPY002
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices, device_type=device.type):
        try:
            if state is None:
                torch.default_generator.manual_seed(streams.torch)  # only the forked generators
                if device.type == "cuda":
                    torch.cuda.manual_seed(streams.torch)
                np.random.seed(streams.numpy % 2**32)  # noqa: NPY002
                random.seed(streams.numpy)
                data_generator.manual_seed(streams.data)
            else:
                restore_rng(state, data_generator, device)
            yield
        finally:
            np.random.set_state(np_saved)  # noqa: NPY002
            random.setstate(py_saved)
