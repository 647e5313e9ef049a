"""Deterministic in-memory data for Hessian measurements, and the one data-pass loop.

A Hessian at fixed weights is a fixed matrix only when the data behind it is fixed: the same
samples, in the same batches, on every pass. Everything here is deterministic:

* :class:`InMemoryDataset` holds tensors ``(X, y)`` and yields batches in a fixed order with no
  shuffling; the last batch is the remainder (uneven when ``batch_size`` does not divide N).
* :class:`BatchSource` turns a dataset (plus a batch size, or explicit index batches) or any
  re-iterable loader into passes over batches, and records a fingerprint of every batch so that a
  pass which yields different data from the first pass (a shuffled or augmented loader) fails
  loudly with :class:`DeterminismError`.
* :func:`data_pass` is the single loop over a source: it sums, over batches, tensors that the
  caller already weighted (usually ``n_b * batch_mean``). A distributed version wraps it with an
  all-reduce of the sums and of the sample count; nothing else loops over data.
* :func:`load_digits` is the offline real data set (scikit-learn's handwritten digits: 1797
  samples, 8x8 pixels, 10 classes; it ships inside scikit-learn, no download).
* :func:`draw_batch_indices` draws a fixed batch of B of N indices without replacement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

__all__ = [
    "BatchSource",
    "DeterminismError",
    "InMemoryDataset",
    "PassResult",
    "data_pass",
    "draw_batch_indices",
    "load_digits",
]


class DeterminismError(RuntimeError):
    """Two evaluations that must agree did not: shuffled/augmented data or a stochastic model."""


# ---------------------------------------------------------------------------------------------
# In-memory data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InMemoryDataset:
    """A data set held as two tensors; batches come in index order, never shuffled.

    ``X`` is ``(N, ...)`` (features ``(N, d)`` or images ``(N, C, H, W)``), ``y`` is ``(N,)``
    integer class labels. ``num_classes`` is stored when known (``None`` otherwise).
    """

    X: torch.Tensor  # (N, ...) float
    y: torch.Tensor  # (N,) int64 class labels
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.X, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError("InMemoryDataset needs torch tensors X and y")
        if self.X.ndim < 1 or self.y.ndim != 1 or self.X.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"X must be (N, ...) and y (N,) with the same N; got X {tuple(self.X.shape)} "
                f"and y {tuple(self.y.shape)}"
            )
        if self.X.shape[0] == 0:
            raise ValueError("the data set is empty (N = 0)")

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def to(self, device=None, dtype: torch.dtype | None = None) -> InMemoryDataset:
        """The same data on ``device`` with floating features cast to ``dtype`` (labels kept).

        Returns ``self`` when nothing changes (no copy).
        """
        X = self.X.to(device=device, dtype=dtype if self.X.is_floating_point() else None)
        y = self.y.to(device=device)
        if X is self.X and y is self.y:
            return self
        return InMemoryDataset(X, y, self.num_classes)

    def subset(self, indices) -> InMemoryDataset:
        """The samples at ``indices`` (in the order given)."""
        idx = _as_index_tensor(indices, len(self))
        idx = idx.to(self.X.device)
        return InMemoryDataset(self.X[idx], self.y[idx], self.num_classes)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches ``X[k b:(k+1) b]`` in index order; the last one may be shorter."""
        _check_batch_size(batch_size)
        for start in range(0, len(self), batch_size):
            yield self.X[start : start + batch_size], self.y[start : start + batch_size]

    def num_batches(self, batch_size: int) -> int:
        _check_batch_size(batch_size)
        return math.ceil(len(self) / batch_size)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _as_index_tensor(indices, N: int) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.ndim != 1 or idx.numel() == 0:
        raise ValueError("indices must be a non-empty 1-D sequence of sample indices")
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.to(torch.int64).cpu()
    if int(idx.min()) < 0 or int(idx.max()) >= N:
        raise ValueError(
            f"indices must lie in [0, {N - 1}]; got range [{int(idx.min())}, {int(idx.max())}]"
        )
    return idx


def load_digits(
    *, images: bool = False, standardize: bool = True, dtype: torch.dtype = torch.float32
) -> InMemoryDataset:
    """scikit-learn's handwritten digits (UCI optdigits test set): 1797 samples, 10 classes.

    Features are the 64 pixel intensities (0..16) of an 8x8 image. With ``standardize`` each pixel
    is z-scored over the whole data set, ``(x - mean) / std`` with the 1/N standard deviation;
    pixels that are constant (std = 0, e.g. the corners) are only centred. ``images=True`` returns
    ``X`` as ``(N, 1, 8, 8)`` for CNNs, otherwise ``(N, 64)``. Sample order is the file's order.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    X = torch.as_tensor(bunch.data, dtype=torch.float64)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    if standardize:
        mean = X.mean(dim=0)
        std = X.std(dim=0, correction=0)
        X = (X - mean) / torch.where(std > 0, std, torch.ones_like(std))
    if images:
        X = X.reshape(-1, 1, 8, 8)
    return InMemoryDataset(X.to(dtype).contiguous(), y, num_classes=10)


def draw_batch_indices(N: int, B: int, *, generator: torch.Generator) -> torch.Tensor:
    """A fixed batch: B distinct indices of ``range(N)`` drawn uniformly without replacement.

    Uses ``torch.randperm(N, generator=generator)[:B]``, returned sorted (order within a batch
    does not change a batch mean). Raises ``ValueError`` unless ``1 <= B <= N``.
    """
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be a positive integer, got {N!r}")
    if isinstance(B, bool) or not isinstance(B, int):
        raise ValueError(f"batch size B must be an integer, got {B!r}")
    if B <= 0:
        raise ValueError(f"batch size B must be >= 1, got B = {B}")
    if B > N:
        raise ValueError(
            f"batch size B = {B} exceeds the data set size N = {N}; a batch is drawn without "
            "replacement, so 1 <= B <= N"
        )
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (randomness is an explicit argument)")
    perm = torch.randperm(N, generator=generator, device=generator.device)
    return torch.sort(perm[:B].cpu()).values


# ---------------------------------------------------------------------------------------------
# Batch sources and the data-pass loop
# ---------------------------------------------------------------------------------------------


class BatchSource:
    """Re-iterable batches ``(X, y)`` on a device and dtype, with a per-pass fingerprint check.

    Build with :meth:`from_dataset` (fixed consecutive batches), :meth:`from_indices` (explicit
    batches of sample indices, e.g. a fixed mini-batch or a partition) or :meth:`from_loader` (any
    object whose ``iter()`` starts a new pass, e.g. a ``torch.utils.data.DataLoader``).

    Every pass computes a fingerprint per batch: the sample count, ``sum(X * w)`` for a fixed
    non-symmetric weight pattern ``w`` over feature positions (so flips and crops change it) and
    ``sum(y * (1 + position in batch))``. The first pass is the reference; a later pass with a
    different fingerprint raises :class:`DeterminismError` naming the first differing batch.
    """

    def __init__(
        self,
        make_iter: Callable[[], Iterable],
        *,
        num_batches: int | None,
        num_samples: int | None,
        device: torch.device,
        dtype: torch.dtype,
        description: str,
        moves_data: bool,
    ) -> None:
        self._make_iter = make_iter
        self.num_batches = num_batches
        self.num_samples = num_samples  # known in advance for in-memory data, else after pass 1
        self.device = device
        self.dtype = dtype
        self.description = description
        self._moves_data = moves_data
        self._reference: torch.Tensor | None = None  # (num_batches, 4) float64 fingerprint
        self.passes = 0

    @classmethod
    def from_dataset(
        cls, dataset: InMemoryDataset, batch_size: int, *, device, dtype
    ) -> BatchSource:
        _check_batch_size(batch_size)
        data = dataset.to(device, dtype)
        return cls(
            lambda: data.batches(batch_size),
            num_batches=data.num_batches(batch_size),
            num_samples=len(data),
            device=torch.device(device),
            dtype=dtype,
            description=f"{len(data)} samples in batches of {batch_size}",
            moves_data=False,
        )

    @classmethod
    def from_indices(
        cls, dataset: InMemoryDataset, index_batches: Sequence, *, device, dtype
    ) -> BatchSource:
        data = dataset.to(device, dtype)
        batches = [_as_index_tensor(b, len(data)).to(data.X.device) for b in index_batches]
        if not batches:
            raise ValueError("at least one batch of indices is needed")

        def make_iter():
            return ((data.X[b], data.y[b]) for b in batches)

        return cls(
            make_iter,
            num_batches=len(batches),
            num_samples=sum(int(b.numel()) for b in batches),
            device=torch.device(device),
            dtype=dtype,
            description=f"{len(batches)} index batch(es)",
            moves_data=False,
        )

    @classmethod
    def from_loader(cls, loader: Iterable, *, device, dtype) -> BatchSource:
        if not hasattr(loader, "__iter__"):
            raise TypeError("a loader must be re-iterable: iter(loader) starts a new pass")
        if isinstance(loader, Iterator):
            raise TypeError(
                "the loader is an iterator (a single pass); pass a re-iterable object such as a "
                "DataLoader or a list of (X, y) batches"
            )
        try:
            n = len(loader)  # type: ignore[arg-type]
        except TypeError:
            n = None
        return cls(
            lambda: iter(loader),
            num_batches=n,
            num_samples=None,
            device=torch.device(device),
            dtype=dtype,
            description=f"loader {type(loader).__name__}",
            moves_data=True,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for item in self._make_iter():
            try:
                X, y = item[0], item[1]
            except (TypeError, IndexError, KeyError) as err:
                raise TypeError("each batch must be a pair (X, y) of tensors") from err
            if self._moves_data:
                X = X.to(self.device, self.dtype if X.is_floating_point() else None)
                y = y.to(self.device)
            yield X, y

    def record(self, fingerprint: torch.Tensor) -> None:
        """Compare a pass's fingerprint with the first pass's; the first one becomes the reference.

        Exact comparison up to 1e-12 relative: the same data summed in the same order gives the
        same float64 number on every pass.
        """
        self.passes += 1
        if self._reference is None:
            self._reference = fingerprint
            if self.num_samples is None:
                self.num_samples = int(fingerprint[:, 0].sum().item())
            if self.num_batches is None:
                self.num_batches = int(fingerprint.shape[0])
            return
        ref = self._reference
        if fingerprint.shape != ref.shape:
            raise DeterminismError(
                f"data source ({self.description}) yielded {fingerprint.shape[0]} batches on pass "
                f"{self.passes}, but {ref.shape[0]} on the first pass; the Hessian of a data set "
                "needs the same batches on every pass (no shuffling, no augmentation, no "
                "drop_last randomness)"
            )
        scale = ref.abs() + 1.0
        bad = ((fingerprint - ref).abs() > 1e-12 * scale).any(dim=1)
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0, 0])
            raise DeterminismError(
                f"data source ({self.description}) yielded different data on pass {self.passes} "
                f"than on the first pass (first differing batch: {k}; count/feature/label "
                f"fingerprint {fingerprint[k].tolist()} vs {ref[k].tolist()}). A shuffled or "
                "augmented loader does not define a fixed Hessian: use shuffle=False and no "
                "random transforms"
            )


@dataclass(frozen=True)
class PassResult:
    """What one pass over a source returns: the summed tensors and the sample count."""

    sums: tuple[torch.Tensor, ...]  # sum over batches of what fn returned, in fn's order
    count: int  # number of samples seen
    batches: int  # number of batches seen


def _fingerprint(X: torch.Tensor, y: torch.Tensor, cache: dict) -> torch.Tensor:
    n = X.shape[0]
    feat = X[0].numel() if n else 0
    key = (feat, X.device)
    w = cache.get(key)
    if w is None:
        pos = torch.arange(feat, dtype=torch.float64, device=X.device)
        w = torch.cos(0.61803398875 * pos + 0.1 * pos * pos / max(feat, 1)) + 1.5
        cache[key] = w
    fx = (X.reshape(n, -1).to(torch.float64) @ w).sum()
    ramp = torch.arange(1, n + 1, dtype=torch.float64, device=y.device)
    fy = (y.to(torch.float64) * ramp).sum()
    return torch.stack([torch.tensor(float(n), dtype=torch.float64, device=X.device), fx, fy])


def data_pass(
    fn: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]],
    source: BatchSource,
    *,
    progress: bool | None = None,
    desc: str = "data pass",
) -> PassResult:
    """One pass over ``source``: ``sums[k] = sum_b fn(X_b, y_b)[k]``.

    ``fn`` returns a sequence of tensors that are already weighted as the caller wants summed
    (for a data-set mean of batch means: ``n_b * mean_b``, then divide by ``count``). Batches are
    visited in the source's fixed order. After the pass the source checks its fingerprint
    against the first pass (:class:`DeterminismError` on a difference).

    This is the only loop over data in the package: a distributed version shards the source and
    all-reduces ``sums`` and ``count``.
    """
    sums: list[torch.Tensor] | None = None
    prints = []
    cache: dict = {}
    count = 0
    nb = 0
    bar = tqdm(
        source,
        total=source.num_batches,
        desc=desc,
        leave=False,
        disable=(not progress) if progress is not None else None,
    )
    for X, y in bar:
        n = int(X.shape[0])
        if n == 0:
            continue
        prints.append(_fingerprint(X, y, cache))
        out = tuple(fn(X, y))
        if sums is None:
            sums = [o.clone() for o in out]
        else:
            for s, o in zip(sums, out, strict=True):
                s.add_(o)
        count += n
        nb += 1
    if sums is None:
        raise ValueError(f"data source ({source.description}) yielded no samples")
    source.record(torch.stack(prints).cpu())
    return PassResult(tuple(sums), count, nb)
