"""Hessian operators on flat parameter vectors: full data, fixed batch, noise, per sample.

Notation as in ``DESIGN.md`` (paper, section 2): per-sample losses ``l_i(w)``, per-sample Hessians
``H_i = nabla^2 l_i``, the empirical Hessian ``H_emp = (1/N) sum_i H_i`` (paper eq. 2), a fixed
batch ``H_B = (1/B) sum_{i in batch} H_i`` (eq. 3) and the noise ``N_B = H_B - H_emp``.

Each product is a sum of Pearlmutter Hessian-vector products over batches, computed by the HVP
engine of :mod:`nnhessian.hvp` (the two implementations, ``method="auto"``, the graph cache and
the BatchNorm/dropout policies are described there). Operators built from one another
(:meth:`HessianOperator.batch_operator`, :meth:`~HessianOperator.noise_operator`,
:meth:`~HessianOperator.per_sample`) share one engine: one weight snapshot, one graph cache.

Data-set averages: every batch loss is a mean over its samples, so the full-data operator sums
``n_b * H_b v`` over batches and divides by ``N = sum_b n_b`` -- exact for an uneven last batch.

The operator is the Hessian at the weights the model had when the operator was built: parameters
and buffers are copied once (cast to ``dtype``, moved to ``device``) and passed to the model with
``torch.func.functional_call``; the model's own tensors are never written. Policies ("eval"
default, "batch-stats"; :func:`nnhessian.hvp.policy_mode`) put the model in their mode for each
pass and restore its train/eval flags after.

A determinism check (:meth:`HessianOperator.check_determinism`, run at construction unless
``verify=False``) applies the operator twice to the same vector and raises
:class:`~nnhessian.data.DeterminismError` when the results differ (a model left stochastic); every
data pass also compares a fingerprint of its batches with the first pass (shuffled or augmented
loaders fail on the second pass). Every data pass iterates over the data even when the graph
cache serves its products, so the fingerprint check covers cached passes too; the determinism
check never uses the cache (a cached graph would repeat a dropout mask instead of exposing it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from nnhessian.data import BatchSource, DeterminismError, InMemoryDataset
from nnhessian.hvp import (
    DEFAULT_GRAPH_CACHE_BYTES,
    METHODS,
    POLICIES,
    GraphCacheInfo,
    HVPEngine,
    has_batchnorm,
)
from nnhessian.reference import PerSampleHessians

__all__ = [
    "GraphCacheInfo",
    "HessianOperator",
    "MatrixOperator",
    "as_linear_operator",
    "resolve_device",
    "resolve_dtype",
    "POLICIES",
    "METHODS",
    "DEFAULT_GRAPH_CACHE_BYTES",
]

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


# ---------------------------------------------------------------------------------------------
# devices and dtypes
# ---------------------------------------------------------------------------------------------


def resolve_device(device=None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a string or ``torch.device`` is checked.

    Raises ``ValueError`` for an unknown device string or a CUDA device that is not present.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"unknown device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or a torch.device"
            ) from err
    else:
        raise ValueError(f"device must be None, a string or a torch.device, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    elif dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: expected 'cpu' or 'cuda[:N]'")
    return dev


def resolve_dtype(dtype) -> torch.dtype:
    """``torch.float32`` / ``torch.float64`` (or their names); anything else is a ``ValueError``."""
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(
            f"unsupported dtype {dtype!r}: expected torch.float32 (default) or torch.float64"
        ) from None


def _new_engine(model, loss, policy, dtype, device, method, graph_cache_bytes) -> HVPEngine:
    """A new weight snapshot of ``model``, with ``dtype`` and ``device`` checked first."""
    return HVPEngine(
        model, loss, policy, resolve_dtype(dtype), resolve_device(device), method, graph_cache_bytes
    )


def _fixed_vector(dim: int, dtype, device) -> torch.Tensor:
    """A deterministic unit vector with no special structure (for the determinism check)."""
    k = torch.arange(dim, dtype=torch.float64)
    v = torch.cos(0.7071 * k + 0.3) + 0.05 * torch.sin(0.0137 * k * k)
    return (v / torch.linalg.vector_norm(v)).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------------------------


class HessianOperator:
    """The Hessian of the loss at fixed weights as a linear operator on flat vectors.

    Build with :meth:`full` (``H_emp`` over a data set or a deterministic loader), :meth:`batch`
    (``H_B`` over a fixed batch of sample indices), :meth:`noise` (``H_B - H_emp``), or from an
    existing full-data operator with :meth:`batch_operator` / :meth:`noise_operator` (sharing its
    weight snapshot). Per-sample Hessians ``H_i`` come from :meth:`per_sample`.

    Flat vectors follow ``model.named_parameters()`` order (as
    ``torch.nn.utils.parameters_to_vector``), trainable parameters only. ``matvec`` takes and
    returns a 1-D tensor of length ``dim`` on ``device`` with ``dtype``.

    Constructor keywords: ``loss`` ("cross_entropy" or a callable ``(outputs, targets) -> batch
    mean``), ``policy`` ("eval" default, or "batch-stats"; :mod:`nnhessian.hvp`), ``dtype``
    (torch.float32 default; float64 for validation), ``device`` (None -> CUDA when available, else
    CPU), ``method`` ("auto", "forward-over-reverse", "double-backward"; :mod:`nnhessian.hvp`),
    ``graph_cache_bytes`` (memory budget for gradient graphs kept across products, double-backward
    only; 0 disables; "Graph cache" in :mod:`nnhessian.hvp`), ``progress`` (tqdm bar per data
    pass: True, False, or None = only on a terminal) and ``verify`` (run :meth:`check_determinism`
    once at construction; default True).

    ``engine`` is the :class:`~nnhessian.hvp.HVPEngine` (weight snapshot, loss, policy, method,
    graph cache) shared with the operators built from this one; ``terms`` the signed data sources
    whose sample-weighted means are added (one for full and batch operators, two for noise).
    """

    def __init__(
        self,
        engine: HVPEngine,
        terms: list[tuple[float, BatchSource]],
        *,
        kind: str,
        progress: bool | None,
        dataset: InMemoryDataset | None = None,
        batch_size: int | None = None,
        indices: torch.Tensor | None = None,
        full_source: BatchSource | None = None,
        verify: bool = True,
    ) -> None:
        self.engine = engine
        self._terms = terms
        self.kind = kind
        self.progress = progress
        self.dataset = dataset
        self.batch_size = batch_size
        self.batch_indices = indices
        self._full_source = full_source
        self.matvecs = 0
        self.last_loss: float | None = None
        if verify:
            self.check_determinism()

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def full(
        cls,
        model: nn.Module,
        data: InMemoryDataset | Iterable,
        *,
        batch_size: int | None = None,
        loss="cross_entropy",
        policy: str = "eval",
        dtype=torch.float32,
        device=None,
        method: str = "auto",
        graph_cache_bytes: int = DEFAULT_GRAPH_CACHE_BYTES,
        progress: bool | None = None,
        verify: bool = True,
    ) -> HessianOperator:
        """``H_emp = (1/N) sum_b n_b H_b``: the exact mean over all N samples.

        ``data`` is an :class:`InMemoryDataset` (then ``batch_size`` is required: consecutive
        batches, the last one uneven) or any re-iterable of ``(X, y)`` batches (a DataLoader with
        ``shuffle=False`` and no random transforms).
        """
        engine = _new_engine(model, loss, policy, dtype, device, method, graph_cache_bytes)
        if isinstance(data, InMemoryDataset):
            if batch_size is None:
                raise ValueError("batch_size is required for an InMemoryDataset (no default)")
            source = BatchSource.from_dataset(
                data, batch_size, device=engine.device, dtype=engine.dtype
            )
            dataset = data.to(engine.device, engine.dtype)
        else:
            if batch_size is not None:
                raise ValueError("batch_size applies to an InMemoryDataset, not to a loader")
            source = BatchSource.from_loader(data, device=engine.device, dtype=engine.dtype)
            dataset = None
        return cls(
            engine,
            [(1.0, source)],
            kind="full",
            progress=progress,
            dataset=dataset,
            batch_size=batch_size,
            full_source=source,
            verify=verify,
        )

    @classmethod
    def batch(
        cls,
        model: nn.Module,
        data: InMemoryDataset,
        indices,
        *,
        chunk_size: int | None = None,
        loss="cross_entropy",
        policy: str = "eval",
        dtype=torch.float32,
        device=None,
        method: str = "auto",
        graph_cache_bytes: int = DEFAULT_GRAPH_CACHE_BYTES,
        progress: bool | None = None,
        verify: bool = True,
    ) -> HessianOperator:
        """``H_B = (1/B) sum_{i in indices} H_i`` for a fixed batch of distinct sample indices.

        ``chunk_size`` evaluates the batch in pieces (sample-weighted, exact) to bound memory;
        not allowed with BatchNorm under "batch-stats", where the batch's statistics are the point.
        """
        engine = _new_engine(model, loss, policy, dtype, device, method, graph_cache_bytes)
        dataset = _require_dataset(data).to(engine.device, engine.dtype)
        return cls._batch_from(engine, dataset, indices, chunk_size, progress, verify)

    @classmethod
    def noise(
        cls,
        model: nn.Module,
        data: InMemoryDataset,
        indices,
        *,
        batch_size: int,
        chunk_size: int | None = None,
        loss="cross_entropy",
        policy: str = "eval",
        dtype=torch.float32,
        device=None,
        method: str = "auto",
        graph_cache_bytes: int = DEFAULT_GRAPH_CACHE_BYTES,
        progress: bool | None = None,
        verify: bool = True,
    ) -> HessianOperator:
        """``N_B = H_B - H_emp`` (batch of ``indices`` minus the full data in ``batch_size``)."""
        full = cls.full(
            model,
            data,
            batch_size=batch_size,
            loss=loss,
            policy=policy,
            dtype=dtype,
            device=device,
            method=method,
            graph_cache_bytes=graph_cache_bytes,
            progress=progress,
            verify=False,
        )
        return full.noise_operator(indices, chunk_size=chunk_size, verify=verify)

    @classmethod
    def _batch_from(
        cls,
        engine,
        dataset,
        indices,
        chunk_size,
        progress,
        verify,
        *,
        subtract=None,
        full_source=None,
        batch_size=None,
    ):
        idx = _check_indices(indices, len(dataset))
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
                raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
            if engine.policy == "batch-stats" and has_batchnorm(engine.model):
                raise ValueError(
                    "chunk_size would change the BatchNorm batch statistics under policy "
                    "'batch-stats'; evaluate the batch whole (chunk_size=None)"
                )
            pieces = list(torch.split(idx, chunk_size))
        else:
            pieces = [idx]
        source = BatchSource.from_indices(dataset, pieces, device=engine.device, dtype=engine.dtype)
        terms = [(1.0, source)]
        kind = "batch"
        if subtract is not None:
            terms.append((-1.0, subtract))
            kind = "noise"
        return cls(
            engine,
            terms,
            kind=kind,
            progress=progress,
            dataset=dataset,
            batch_size=batch_size,
            indices=idx,
            full_source=full_source,
            verify=verify,
        )

    def batch_operator(
        self, indices, *, chunk_size: int | None = None, verify: bool = True
    ) -> HessianOperator:
        """``H_B`` on this full-data operator's data set and weight snapshot."""
        self._require_full_in_memory("batch_operator")
        return self._batch_from(
            self.engine,
            self.dataset,
            indices,
            chunk_size,
            self.progress,
            verify,
            full_source=self._full_source,
            batch_size=self.batch_size,
        )

    def noise_operator(
        self, indices, *, chunk_size: int | None = None, verify: bool = True
    ) -> HessianOperator:
        """``H_B - H_emp`` with ``H_emp`` this operator (same data batching and weights)."""
        self._require_full_in_memory("noise_operator")
        return self._batch_from(
            self.engine,
            self.dataset,
            indices,
            chunk_size,
            self.progress,
            verify,
            subtract=self._full_source,
            full_source=self._full_source,
            batch_size=self.batch_size,
        )

    def per_sample(self, *, chunk_size: int = 64) -> PerSampleHessians:
        """The per-sample Hessians ``H_i`` of this full-data operator's samples (paper eq. 9)."""
        if self.kind != "full":
            raise ValueError(f"per_sample() needs a full-data operator, this one is {self.kind!r}")
        return PerSampleHessians(
            self.engine,
            self._full_source,
            self.dataset,
            chunk_size=chunk_size,
            progress=self.progress,
            sample_operator=self._sample_operator,
        )

    def _sample_operator(self, i: int, verify: bool) -> HessianOperator:
        """``H_i`` alone: a fixed batch of the one sample ``i`` (for :class:`PerSampleHessians`)."""
        return self._batch_from(self.engine, self.dataset, [i], None, self.progress, verify)

    def _require_full_in_memory(self, what):
        if self.kind != "full" or self.dataset is None:
            raise ValueError(
                f"{what}() needs a full-data operator built on an InMemoryDataset (random access "
                "to samples); this one is " + (self.kind if self.kind != "full" else "a loader")
            )

    # -- the linear operator ----------------------------------------------------------------
    @property
    def dim(self) -> int:
        """P: number of trainable parameters."""
        return self.engine.dim

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.dtype

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def policy(self) -> str:
        return self.engine.policy

    @property
    def method(self) -> str:
        """HVP implementation in use ("auto" until the first product has resolved it)."""
        return self.engine.method or "auto"

    @property
    def fallback_reason(self) -> str | None:
        return self.engine.fallback_reason

    @property
    def model(self) -> nn.Module:
        return self.engine.model

    @property
    def sharding(self):
        """The :class:`nnhessian.distributed.Sharding` of the full-data term, or None.

        Set when the full data set is sharded over a process group; operators derived with
        :meth:`batch_operator` / :meth:`noise_operator` share it (Lanczos then keeps their vectors
        identical on every rank).
        """
        return getattr(self._full_source, "sharding", None)

    @property
    def num_samples(self) -> int | None:
        """N of the full-data term (None for a loader before its first pass)."""
        src = self._full_source if self._full_source is not None else self._terms[0][1]
        return src.num_samples

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def parameters(self) -> torch.Tensor:
        """The flat weight vector w at which this is the Hessian (a copy)."""
        return self.engine.flat_params().clone()

    def _check_vector(self, v) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"matvec takes a 1-D torch.Tensor, got {type(v).__name__}")
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise ValueError(
                f"matvec takes a 1-D tensor of length {self.dim}, got shape {tuple(v.shape)}"
            )
        v = v.to(device=self.device, dtype=self.dtype)
        if not bool(torch.isfinite(v).all()):
            raise ValueError("the input vector contains NaN or inf")
        return v

    def _desc(self, coef, source):
        return f"HVP {self.kind} ({'-' if coef < 0 else ''}{source.description})"

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a 1-D tensor ``v`` of length ``dim``; one data pass per term."""
        return self._apply(v, cached=True)

    __matmul__ = matvec

    def _apply(self, v: torch.Tensor, *, cached: bool) -> torch.Tensor:
        v = self._check_vector(v)
        vd = self.engine.unflatten(v)
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for coef, source in self._terms:
            position = itertools.count()

            def product(X, y, source=source, position=position):
                key = (source, next(position)) if cached else None
                return self.engine.batch_hvp(X, y, vd, key)

            mean, loss = self.engine.mean_over(
                source, product, progress=self.progress, desc=self._desc(coef, source)
            )
            out.add_(mean, alpha=coef)
            self.last_loss = loss
        self.matvecs += 1
        return out

    def matvec_many(self, vectors) -> list[torch.Tensor]:
        """``[H v_1, ..., H v_k]`` in one data pass per term (a sequence of 1-D tensors, or the
        rows of a ``(k, P)`` tensor).

        Each batch's gradient graph is built once for the k vectors (or taken from the graph
        cache) and serves k reverse passes (:meth:`nnhessian.hvp.HVPEngine.batch_hvp_many`); the
        k products are sample-weighted exactly as :meth:`matvec`'s and, with separate reverse
        passes (the CPU default), bit-identical to k calls of it. A sharded term all-reduces
        the k products as one ``(k, P)`` tensor. Each returned vector is its own tensor.
        """
        vs = [self._check_vector(v) for v in vectors]
        if not vs:
            raise ValueError("matvec_many needs at least one vector")
        vds = [self.engine.unflatten(v) for v in vs]
        out = torch.zeros((len(vs), self.dim), dtype=self.dtype, device=self.device)
        for coef, source in self._terms:
            position = itertools.count()

            def products(X, y, source=source, position=position):
                hvs, loss = self.engine.batch_hvp_many(X, y, vds, (source, next(position)))
                return torch.stack(hvs), loss

            mean, loss = self.engine.mean_over(
                source, products, progress=self.progress, desc=self._desc(coef, source)
            )
            out.add_(mean, alpha=coef)
            self.last_loss = loss
        self.matvecs += len(vs)
        return [row.clone() for row in out]

    @property
    def reverse(self) -> str:
        """How k products share a gradient graph: "auto", "loop" or "batched" (settable;
        shared by every operator of this weight snapshot; :mod:`nnhessian.hvp`)."""
        return self.engine.reverse or "auto"

    @reverse.setter
    def reverse(self, mode: str) -> None:
        self.engine.set_reverse(mode)

    @property
    def graph_cache(self) -> GraphCacheInfo:
        """Budget, use, graphs held, hits and misses of the graph cache (:mod:`nnhessian.hvp`)."""
        return self.engine.graph_cache.info()

    def clear_graph_cache(self) -> None:
        """Free every kept gradient graph (of all operators sharing this weight snapshot)."""
        self.engine.graph_cache.clear()

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """Mean loss and gradient over the operator's data (same weighting as ``matvec``).

        For a noise operator both are differences (batch minus full data).
        """
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        total = 0.0
        for coef, source in self._terms:
            mean, loss = self.engine.mean_over(
                source,
                self.engine.batch_grad,
                progress=self.progress,
                desc=f"gradient {self.kind}",
            )
            out.add_(mean, alpha=coef)
            total += coef * loss
        return total, out

    def check_determinism(
        self, v: torch.Tensor | None = None, *, rtol: float | None = None
    ) -> float:
        """Apply the operator twice to ``v``; raise :class:`DeterminismError` if they differ.

        Returns the relative difference ``||H v - H v'|| / ||H v||``. The default ``rtol`` is
        ``1000 eps(dtype)`` -- reductions with atomics on a GPU may reorder sums (relative
        changes of a few eps); dropout or a changed batch changes the product by O(1). The data
        passes also compare batch fingerprints (shuffled/augmented loaders fail there).
        """
        if rtol is None:
            rtol = 1000.0 * torch.finfo(self.dtype).eps
        if v is None:
            v = _fixed_vector(self.dim, self.dtype, self.device)
        a = self._apply(v, cached=False)
        b = self._apply(v, cached=False)
        scale = float(torch.linalg.vector_norm(a))
        diff = float(torch.linalg.vector_norm(a - b))
        rel = diff / scale if scale > 0 else diff
        if rel > rtol:
            raise DeterminismError(
                f"two Hessian-vector products with the same vector differ (relative difference "
                f"{rel:.3g} > {rtol:.3g}): the model is stochastic under policy {self.policy!r} "
                "(dropout or random layers left active, e.g. functional dropout with "
                "training=True) or the data changes between passes"
            )
        return rel

    def to_dense(self) -> torch.Tensor:
        """The dense P x P matrix, column by column (P products: small models only)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(eye[:, j]) for j in range(self.dim)], dim=1)

    def __repr__(self) -> str:
        return (
            f"HessianOperator(kind={self.kind!r}, dim={self.dim}, dtype={self.dtype}, "
            f"device={self.device}, policy={self.policy!r}, method={self.method!r})"
        )


def _require_dataset(data) -> InMemoryDataset:
    if not isinstance(data, InMemoryDataset):
        raise TypeError(
            f"a fixed batch needs random access: pass an InMemoryDataset, got {type(data).__name__}"
        )
    return data


def _check_indices(indices, N: int) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.ndim != 1:
        raise ValueError("batch indices must be a 1-D sequence")
    B = int(idx.numel())
    if B <= 0:
        raise ValueError(f"batch size B must be >= 1, got an empty batch (B = {B})")
    if B > N:
        raise ValueError(f"batch size B = {B} exceeds the data set size N = {N}")
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"batch indices must be integers, got dtype {idx.dtype}")
    idx = idx.to(torch.int64).cpu()
    if int(idx.min()) < 0 or int(idx.max()) >= N:
        raise ValueError(f"batch indices must lie in [0, {N - 1}]")
    if torch.unique(idx).numel() != B:
        raise ValueError("batch indices must be distinct (a batch is drawn without replacement)")
    return idx


# ---------------------------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------------------------


class MatrixOperator:
    """A dense symmetric matrix as an operator (``dim``, ``dtype``, ``device``, ``matvec``).

    For tests and for running the same Lanczos code on random-matrix samples.
    """

    def __init__(self, matrix, *, dtype=None, device=None) -> None:
        A = torch.as_tensor(matrix)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(A.shape)}")
        dtype = resolve_dtype(
            dtype
            if dtype is not None
            else (A.dtype if A.dtype in (torch.float32, torch.float64) else torch.float64)
        )
        self.matrix = A.to(
            device=resolve_device(device if device is not None else A.device), dtype=dtype
        )
        self.matvecs = 0

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.matvecs += 1
        return self.matrix @ v.to(self.matrix.dtype)

    __matmul__ = matvec


def as_linear_operator(op, *, dtype=None):
    """A ``scipy.sparse.linalg.LinearOperator`` applying ``op`` (symmetric: rmatvec = matvec).

    ``dtype`` is the numpy dtype seen by scipy (default: the operator's, float32 or float64);
    vectors are converted to the operator's torch dtype and device and back.
    """
    from scipy.sparse.linalg import LinearOperator

    np_of = {torch.float32: np.float32, torch.float64: np.float64}
    np_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np_of[op.dtype])
    if np_dtype not in (np.float32, np.float64):
        raise ValueError(f"unsupported dtype {dtype!r}: expected float32 or float64")

    def mv(x):
        x = np.asarray(x).reshape(-1)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np_of[op.dtype]))
        return op.matvec(t.to(op.device)).detach().cpu().numpy().astype(np_dtype, copy=False)

    return LinearOperator((op.dim, op.dim), matvec=mv, rmatvec=mv, dtype=np_dtype)
