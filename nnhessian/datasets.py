"""The data sets by name: one registry for Hessian measurements and for training.

Two views of each data set, both deterministic (file order, nothing shuffled here):

* :func:`load_dataset` -- the samples a Hessian is measured on: the training split as an
  :class:`~nnhessian.data.InMemoryDataset` of float features in ``dtype``, ``num_classes`` set,
  the first ``limit`` samples when asked. CIFAR-100 images are normalised with the training-set
  statistics (:func:`nnhessian.cifar.load_cifar100`), never augmented.
* :func:`load_training_data` -- the training and test split that ``python -m validation train``
  uses (:class:`TrainingData`): CIFAR-100's ``train`` and ``test`` files as uint8 images
  (normalised per batch, after the augmentation, by :func:`training_batch` and
  :func:`test_batches`); digits' first :data:`DIGITS_TRAIN` = 1500 of 1797 samples for training,
  the other 297 for testing (already standardised floats, no augmentation).

Registered data sets: ``digits`` (scikit-learn's 8x8 handwritten digits, 1797 samples, 10
classes; ships inside scikit-learn, offline) and ``cifar100`` (read from a folder in
torchvision's python-pickle layout, :mod:`nnhessian.cifar`; fetched only with ``download=True``).

Adding a data set ``name``:

1. write ``loader(*, data_dir, dtype, download=False, limit=None) -> InMemoryDataset`` returning
   the training samples as ``(N, ...)`` features (images keep ``(N, C, H, W)``; the MLP flattens
   its input) with ``num_classes`` set; it may ignore ``limit`` (:func:`load_dataset` cuts) and
   raises :class:`DatasetError` with one line saying what is missing and how to get it;
2. register it: ``DATASETS[name] = loader`` and ``NUM_CLASSES[name] = K``; add
   ``DEFAULT_DATA_DIR[name]`` when it reads files (the folder used when none is given);
3. to train on it too, add ``TRAINING_SPLITS[name] = split_loader`` with
   ``split_loader(*, data_dir, download=False) -> TrainingData`` (float inputs and
   ``raw_uint8=False`` unless the images are uint8 CIFAR-style images that
   :func:`nnhessian.cifar.normalize` and :func:`nnhessian.cifar.augment` fit).

The command line then accepts ``--data name`` (``python -m validation network``; and
``python -m validation train`` once step 3 is done).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from nnhessian.data import InMemoryDataset

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "DIGITS_TRAIN",
    "EVAL_BATCH",
    "NUM_CLASSES",
    "TRAINING_SPLITS",
    "DatasetError",
    "TrainingData",
    "load_cifar100_dataset",
    "load_cifar100_split",
    "load_dataset",
    "load_digits_dataset",
    "load_digits_split",
    "load_training_data",
    "test_batches",
    "training_batch",
]

DIGITS_TRAIN = 1500  # digits: first 1500 of 1797 samples train, the rest test
EVAL_BATCH = 1000  # test-set batch size of :func:`test_batches` (evaluation only)


class DatasetError(ValueError):
    """A data set is unknown, its files are missing or corrupt, or a size is out of range (one
    line naming the problem and what would be accepted)."""


# ---------------------------------------------------------------------------------------------
# Hessian view: the training samples, normalised, in file order
# ---------------------------------------------------------------------------------------------


def load_digits_dataset(*, data_dir, dtype, download=False, limit=None) -> InMemoryDataset:
    """scikit-learn's digits (ships inside the package, offline): (1797, 1, 8, 8), 10 classes.

    Pixels z-scored over the whole set (:func:`nnhessian.data.load_digits`); ``data_dir``,
    ``download`` and ``limit`` are ignored (:func:`load_dataset` cuts)."""
    from nnhessian.data import load_digits

    return load_digits(images=True, dtype=dtype)


def load_cifar100_dataset(*, data_dir, dtype, download=False, limit=None) -> InMemoryDataset:
    """The CIFAR-100 training split from ``data_dir`` (:func:`nnhessian.cifar.load_cifar100`):
    (50,000, 3, 32, 32) normalised with the training-set statistics, file order, no augmentation,
    the first ``limit`` images; 100 classes. Missing or corrupt files: one-line
    :class:`DatasetError`."""
    from nnhessian.cifar import CifarDataError, load_cifar100

    try:
        return load_cifar100(data_dir, split="train", download=download, limit=limit, dtype=dtype)
    except CifarDataError as err:
        raise DatasetError(str(err)) from None


# name -> loader(*, data_dir, dtype, download, limit) -> InMemoryDataset with ``num_classes`` set
# (see the module docstring for adding one).
DATASETS: dict[str, Callable[..., InMemoryDataset]] = {
    "digits": load_digits_dataset,
    "cifar100": load_cifar100_dataset,
}
# Classes of each data set, known without reading its files.
NUM_CLASSES: dict[str, int] = {"digits": 10, "cifar100": 100}
# The data folder when none is given (the command line's ``--data-dir`` default); digits needs none.
DEFAULT_DATA_DIR: dict[str, str] = {"cifar100": "data"}


def load_dataset(
    name: str,
    *,
    data_dir=None,
    dtype: torch.dtype,
    download: bool = False,
    limit: int | None = None,
) -> InMemoryDataset:
    """The training samples of data set ``name`` (a key of :data:`DATASETS`) in ``dtype``.

    ``data_dir=None`` reads :data:`DEFAULT_DATA_DIR` (``"data"`` for cifar100); ``limit`` keeps
    the first ``limit`` samples (all of them when there are fewer: the caller compares
    ``len(result)`` with what it asked for). Raises :class:`DatasetError` (one line) for an
    unknown name or missing/corrupt files.
    """
    loader = DATASETS.get(name)
    if loader is None:
        raise DatasetError(f"unknown data set {name!r}; accepted: {', '.join(DATASETS)}")
    if data_dir is None:
        data_dir = DEFAULT_DATA_DIR.get(name)
    data = loader(data_dir=data_dir, dtype=dtype, download=download, limit=limit)
    if limit is not None and limit < len(data):
        data = InMemoryDataset(data.X[:limit], data.y[:limit], data.num_classes)
    if data.num_classes is None:
        data = InMemoryDataset(data.X, data.y, NUM_CLASSES.get(name, int(data.y.max()) + 1))
    return data


# ---------------------------------------------------------------------------------------------
# Training view: training and test split
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainingData:
    """Training and test tensors. CIFAR images stay uint8 (normalised per batch, after the
    augmentation); digits are already standardised floats."""

    name: str
    train_X: torch.Tensor  # (N, C, H, W): uint8 for cifar100, float32 for digits
    train_y: torch.Tensor  # (N,) int64
    test_X: torch.Tensor  # (N_test, C, H, W), as train_X
    test_y: torch.Tensor  # (N_test,) int64
    num_classes: int
    raw_uint8: bool  # images need nnhessian.cifar.normalize (and fit nnhessian.cifar.augment)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_X.shape[1:])


def load_cifar100_split(*, data_dir, download: bool = False) -> TrainingData:
    """CIFAR-100's ``train`` (50,000) and ``test`` (10,000) files as uint8 images, file order."""
    from nnhessian.cifar import NUM_CLASSES as CIFAR_CLASSES
    from nnhessian.cifar import CifarDataError, read_cifar100

    try:
        train = read_cifar100(data_dir, "train", download=download)
        test = read_cifar100(data_dir, "test")
    except CifarDataError as err:
        raise DatasetError(str(err)) from None
    return TrainingData(
        "cifar100", train.images, train.labels, test.images, test.labels, CIFAR_CLASSES, True
    )


def load_digits_split(*, data_dir=None, download: bool = False) -> TrainingData:
    """digits in float32, standardised over all 1797 samples: the first :data:`DIGITS_TRAIN` =
    1500 train, the last 297 test."""
    from nnhessian.data import load_digits

    digits = load_digits(images=True, dtype=torch.float32)
    X, y = digits.X, digits.y
    return TrainingData(
        "digits",
        X[:DIGITS_TRAIN],
        y[:DIGITS_TRAIN],
        X[DIGITS_TRAIN:],
        y[DIGITS_TRAIN:],
        10,
        False,
    )


# name -> split_loader(*, data_dir, download) -> TrainingData (the data sets one can train on).
TRAINING_SPLITS: dict[str, Callable[..., TrainingData]] = {
    "cifar100": load_cifar100_split,
    "digits": load_digits_split,
}


def load_training_data(
    name: str, *, data_dir=None, download: bool = False, limit: int | None = None
) -> TrainingData:
    """The training and test split of ``name`` (a key of :data:`TRAINING_SPLITS`); ``limit``
    keeps the first ``limit`` training samples (the test set stays whole).

    Raises :class:`DatasetError` (one line) for an unknown name, missing or corrupt files, or a
    ``limit`` above the number of training samples.
    """
    loader = TRAINING_SPLITS.get(name)
    if loader is None:
        raise DatasetError(f"unknown data set {name!r}; choose one of {', '.join(TRAINING_SPLITS)}")
    if data_dir is None:
        data_dir = DEFAULT_DATA_DIR.get(name)
    data = loader(data_dir=data_dir, download=download)
    if limit is not None:
        if limit > len(data.train_y):
            raise DatasetError(
                f"--limit {limit} exceeds the {len(data.train_y)} training samples of {name}"
            )
        data = dataclasses.replace(data, train_X=data.train_X[:limit], train_y=data.train_y[:limit])
    return data


def training_batch(
    data: TrainingData,
    idx: torch.Tensor,
    *,
    augment: bool,
    generator: torch.Generator,
    device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and labels of training samples ``idx`` on ``device``: uint8 images augmented
    from ``generator`` when ``augment`` (:func:`nnhessian.cifar.augment`), then normalised."""
    X = data.train_X[idx.to(data.train_X.device)]
    y = data.train_y[idx.to(data.train_y.device)]
    if data.raw_uint8:
        from nnhessian.cifar import augment as augment_images
        from nnhessian.cifar import normalize

        if augment:
            X = augment_images(X, generator=generator)
        X = normalize(X)
    return X.to(device), y.to(device)


def test_batches(data: TrainingData, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Test inputs and labels in fixed batches of :data:`EVAL_BATCH`, normalised, never
    augmented."""
    for start in range(0, len(data.test_y), EVAL_BATCH):
        X = data.test_X[start : start + EVAL_BATCH]
        if data.raw_uint8:
            from nnhessian.cifar import normalize

            X = normalize(X)
        yield X.to(device), data.test_y[start : start + EVAL_BATCH].to(device)


test_batches.__test__ = False  # a data helper, not a test (for pytest, when imported by one)
