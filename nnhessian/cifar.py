"""CIFAR-100 from a user folder, the training augmentation, and a miniature data set for tests.

The paper (section 4) trains VGG16 and PreResNet-110 on CIFAR-100 "with data-augmentation" and
measures Hessians of the training set. This module keeps the two uses apart:

* :func:`read_cifar100` reads the python-pickle layout that ``torchvision.datasets.CIFAR100`` uses,
  ``<data_dir>/cifar-100-python/{train,test,meta}``, as uint8 images ``(N, 3, 32, 32)`` in file
  order. Nothing is fetched unless ``download=True`` (the CLI's ``--download``), which calls
  torchvision's downloader (it reuses ``cifar-100-python.tar.gz`` when already in ``data_dir``).
  A missing or unreadable folder raises :class:`CifarDataError` with one line saying where the
  files were expected and how to get them. Files with the full sizes (50,000 / 10,000 rows) are
  also checked against torchvision's MD5 sums.
* :func:`load_cifar100` is the Hessian-pass view: normalised float images in file order, no
  augmentation, as an :class:`~nnhessian.data.InMemoryDataset` (deterministic: every pass sees the
  same samples in the same batches).
* :func:`augment` is the training-only augmentation of the standard CIFAR recipe (He et al. 2016):
  random 32x32 crop of the image zero-padded by 4 pixels, and a horizontal flip with probability
  1/2. It acts on uint8 images before normalisation (so padding is black, as in torchvision's
  ``RandomCrop(32, padding=4)`` on PIL images) and draws from an explicit ``torch.Generator``.
* :func:`normalize` maps uint8 pixels to ``(x / 255 - mean) / std`` per channel with the CIFAR-100
  training-set statistics :data:`CIFAR100_MEAN`, :data:`CIFAR100_STD`.
* :func:`write_miniature_cifar100` writes a tiny data set in exactly the same on-disk format (the
  tests and the other commands' tests use it; no test needs the real files).

torchvision is imported only inside :func:`download_cifar100`.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnhessian.data import InMemoryDataset

__all__ = [
    "BASE_FOLDER",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CifarDataError",
    "CifarImages",
    "NUM_CLASSES",
    "augment",
    "channel_statistics",
    "download_cifar100",
    "find_cifar100",
    "load_cifar100",
    "normalize",
    "read_cifar100",
    "write_miniature_cifar100",
]

BASE_FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
NUM_CLASSES = 100
NUM_COARSE = 20
SPLITS = ("train", "test")
# Rows of the real files, and their MD5 sums (torchvision.datasets.CIFAR100.train_list/test_list).
FULL_SIZES = {"train": 50_000, "test": 10_000}
MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}

# Per-channel mean and standard deviation (1/N convention) of the 50,000 CIFAR-100 training
# images, pixels scaled to [0, 1] -- the values used throughout the CIFAR-100 literature;
# :func:`channel_statistics` recomputes them from a folder.
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)

PAD = 4  # zero padding of the random crop (pixels on each side)


class CifarDataError(RuntimeError):
    """The CIFAR-100 files are missing, unreadable or not in the expected format (one line)."""


@dataclass(frozen=True, eq=False)
class CifarImages:
    """One split of CIFAR-100 as stored: uint8 images and fine labels, in file order."""

    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64 fine labels in [0, 100)
    classes: tuple[str, ...]  # the 100 fine label names, from the meta file
    split: str  # "train" or "test"
    folder: Path  # the cifar-100-python folder read

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _how_to_get(data_dir: Path) -> str:
    return (
        f"pass --download (download=True) to fetch it from {URL} (161 MB), or put {ARCHIVE} "
        f"into {data_dir} and pass --download to unpack it without a network"
    )


def find_cifar100(data_dir) -> Path:
    """The folder that holds ``train``, ``test`` and ``meta``: ``data_dir/cifar-100-python``, or
    ``data_dir`` itself when it is that folder. Raises :class:`CifarDataError` when absent."""
    data_dir = Path(data_dir).expanduser()
    for folder in (data_dir / BASE_FOLDER, data_dir):
        if all((folder / name).is_file() for name in ("train", "test", "meta")):
            return folder
    missing = [n for n in ("train", "test", "meta") if not (data_dir / BASE_FOLDER / n).is_file()]
    raise CifarDataError(
        f"CIFAR-100 not found: expected {data_dir / BASE_FOLDER}/{{train,test,meta}} "
        f"(missing: {', '.join(missing)}); {_how_to_get(data_dir)}"
    )


def download_cifar100(data_dir) -> Path:
    """Fetch and unpack CIFAR-100 into ``data_dir`` with torchvision (only when asked).

    torchvision skips the download when ``cifar-100-python.tar.gz`` is already in ``data_dir``
    with the right MD5 sum, and skips everything when the unpacked files are already valid.
    """
    data_dir = Path(data_dir).expanduser()
    try:
        from torchvision.datasets import CIFAR100

        data_dir.mkdir(parents=True, exist_ok=True)
        CIFAR100(root=str(data_dir), train=True, download=True)
    except Exception as err:  # network, disk or checksum failure: say what to do instead
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CifarDataError(
            f"could not download CIFAR-100 into {data_dir} ({message}); fetch {URL} by hand, "
            f"put {ARCHIVE} into {data_dir} and pass --download again to unpack it"
        ) from err
    return find_cifar100(data_dir)


def _corrupt(path: Path, reason: str) -> CifarDataError:
    return CifarDataError(
        f"CIFAR-100 file {path} is corrupt or not in the CIFAR-100 python format ({reason}); "
        f"delete {path.parent} and fetch it again with --download"
    )


def _unpickle(path: Path) -> tuple[dict, bytes]:
    try:
        raw = path.read_bytes()
        entry = pickle.loads(raw, encoding="latin1")
    except Exception as err:  # truncated or garbage file
        raise _corrupt(path, f"cannot unpickle: {type(err).__name__}") from err
    if not isinstance(entry, dict):
        raise _corrupt(path, f"expected a dict, got {type(entry).__name__}")
    keys = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
    return keys, raw


def read_cifar100(data_dir, split: str = "train", *, download: bool = False) -> CifarImages:
    """One split of CIFAR-100 from ``data_dir`` as uint8 images ``(N, 3, 32, 32)``, file order.

    ``download=True`` first fetches the files with torchvision (:func:`download_cifar100`).
    Raises :class:`CifarDataError` (one line: where the files were expected, how to get them)
    when they are missing, unreadable, malformed, or full-sized with a wrong MD5 sum.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = download_cifar100(data_dir) if download else find_cifar100(data_dir)
    path = folder / split
    entry, raw = _unpickle(path)
    data, labels = entry.get("data"), entry.get("fine_labels")
    if data is None or labels is None:
        raise _corrupt(path, "no 'data' or 'fine_labels' entry")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(path, f"data must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(path, f"{labels.shape[0] if labels.ndim else 0} labels for "
                       f"{data.shape[0]} images")  # fmt: skip
    if data.shape[0] == 0:
        raise _corrupt(path, "no images")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise _corrupt(path, f"fine labels outside [0, {NUM_CLASSES})")
    if data.shape[0] == FULL_SIZES[split] and hashlib.md5(raw).hexdigest() != MD5[split]:
        raise _corrupt(path, "MD5 sum differs from the published file")
    meta, _ = _unpickle(folder / "meta")
    classes = meta.get("fine_label_names")
    if not isinstance(classes, list | tuple) or len(classes) != NUM_CLASSES:
        raise _corrupt(folder / "meta", "no list of 100 'fine_label_names'")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return CifarImages(
        images=images,
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=tuple(str(c) for c in classes),
        split=split,
        folder=folder,
    )


def normalize(
    images: torch.Tensor,
    *,
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 ``(n, C, H, W)`` -> ``(x / 255 - mean_c) / std_c`` in ``dtype``, on the same device."""
    m = torch.as_tensor(mean, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    return (images.to(dtype) / 255 - m) / s


def augment(images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation: random 32x32 crop of the image zero-padded by 4, random h-flip.

    ``images`` is ``(n, C, H, W)`` (any dtype, any device). Per image, the crop offset is
    uniform on ``{0, ..., 2 PAD}^2`` and the flip a fair coin, drawn on the CPU from
    ``generator`` (so a run's draws do not depend on the device) in the order: offsets
    ``(n, 2)``, then flips ``(n,)``. Returns a new tensor of the same shape and dtype.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (randomness is an explicit argument)")
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    dev = images.device
    offsets, flips = offsets.to(dev), flips.to(dev)
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    rows = offsets[:, :1] + torch.arange(h, device=dev)  # (n, h)
    cols_fwd = torch.arange(w, device=dev)
    cols = torch.where(flips[:, None], cols_fwd.flip(0), cols_fwd) + offsets[:, 1:]  # (n, w)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def load_cifar100(
    data_dir,
    *,
    split: str = "train",
    download: bool = False,
    limit: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> InMemoryDataset:
    """CIFAR-100 for Hessian passes: normalised images ``(N, 3, 32, 32)`` in file order, no
    augmentation, the first ``limit`` samples when given; ``num_classes = 100``.

    Deterministic: the same call returns the same tensors, and batches of the result are the
    same on every pass. 50,000 float32 training images take 614 MB.
    """
    data = read_cifar100(data_dir, split, download=download)
    images, labels = data.images, data.labels
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        images, labels = images[:limit], labels[:limit]
    return InMemoryDataset(normalize(images, dtype=dtype), labels, NUM_CLASSES)


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and 1/N standard deviation of uint8 images ``(N, C, H, W)`` / 255,
    accumulated in float64 (the recipe behind :data:`CIFAR100_MEAN` and :data:`CIFAR100_STD`)."""
    x = images.to(torch.float64) / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), correction=0)
    return tuple(mean.tolist()), tuple(std.tolist())


def write_miniature_cifar100(folder, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Write a tiny CIFAR-100 in the real on-disk format; returns ``folder`` (the data dir).

    Files ``folder/cifar-100-python/{train,test,meta}`` are pickled dicts with str keys, exactly
    what ``torchvision.datasets.CIFAR100`` reads (``data``: uint8 ``(n, 3072)`` in RGB-plane
    order; ``fine_labels``, ``coarse_labels``, ``filenames``, ``batch_label``; ``meta`` with
    ``fine_label_names`` and ``coarse_label_names``). Labels are uniform on the 100 classes;
    each image is its class's fixed random pattern plus noise, so a small model can learn them.
    Deterministic in ``seed``. Sizes must stay below the real ones (50,000 / 10,000), whose
    files are checked against the published MD5 sums.
    """
    for name, n, full in (("n_train", n_train, 50_000), ("n_test", n_test, 10_000)):
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < full:
            raise ValueError(f"{name} must be an integer in [1, {full}), got {n!r}")
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(NUM_CLASSES, 3 * 32 * 32))
    base = Path(folder) / BASE_FOLDER
    base.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, NUM_CLASSES, size=n)
        noise = rng.integers(-48, 49, size=(n, 3 * 32 * 32))
        data = np.clip(patterns[fine] + noise, 0, 255).astype(np.uint8)
        entry = {
            "filenames": [f"miniature_{split}_{i:05d}.png" for i in range(n)],
            "batch_label": f"miniature {split} batch 1 of 1",
            "fine_labels": [int(v) for v in fine],
            "coarse_labels": [int(v) // 5 for v in fine],
            "data": data,
        }
        with open(base / split, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    meta = {
        "fine_label_names": [f"class_{k:03d}" for k in range(NUM_CLASSES)],
        "coarse_label_names": [f"superclass_{k:02d}" for k in range(NUM_COARSE)],
    }
    with open(base / "meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return Path(folder)
