"""One ground truth for Hessians: dense Hessians, per-sample Hessians; used by the runs and tests.

Notation as in ``DESIGN.md`` (paper, section 2): per-sample losses ``l_i(w)``, per-sample Hessians
``H_i = nabla^2 l_i`` (paper eq. 9), ``H_emp = (1/N) sum_i H_i`` (eq. 2) and the Hessian of a
fixed batch ``H_B = (1/B) sum_{i in batch} H_i`` (eq. 3).

* :func:`dense_hessian` / :func:`dense_per_sample_hessians`: the P x P matrices themselves, for
  small models (the network run's exact check at toy size, the tests). They are an independent
  code path from the operators' Pearlmutter products (:mod:`nnhessian.hvp`): they never touch the
  HVP engine, its weight snapshot, its graph cache or its policy switch, and differentiate the
  loss as a function of the flat parameter vector densely -- ``torch.func.jacrev(jacrev(loss))``
  (reverse over reverse, vmapped over basis vectors) in eval mode. Under BatchNorm batch
  statistics torch.func's transforms are wrong in torch 2.14 (both ``torch.func.hessian`` and
  ``jacrev(jacrev)``: vmap through the batch_norm backward, pytorch/pytorch#196699; strict xfails
  in ``tests/test_nnhessian_reference.py`` say when that is fixed), so there the reference is
  ``torch.autograd.functional.hessian``: plain autograd, one reverse-over-reverse row at a time.
  A bug in the HVPs therefore cannot hide in the reference, and the reference itself is checked
  against a closed form (softmax regression) and central differences of gradients.
* :class:`PerSampleHessians`: the N per-sample Hessians of a full-data operator as products
  ``H_i v`` for many samples at once (sigma^2 per-sample estimator, paper eq. 9), with the HVP
  engine's per-sample products.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnhessian.data import BatchSource, InMemoryDataset, data_pass
from nnhessian.hvp import HVPEngine, has_batchnorm, policy_mode, reduce_pass

__all__ = ["PerSampleHessians", "dense_hessian", "dense_per_sample_hessians"]

REFERENCE_POLICIES = ("eval", "batch-stats")


# ---------------------------------------------------------------------------------------------
# dense Hessians
# ---------------------------------------------------------------------------------------------


def _cast(model: nn.Module, data, dtype):
    """``(model, X, y)``; with ``dtype`` a deep copy of the model and the features in it."""
    X, y = data.X, data.y
    if dtype is None:
        return model, X, y
    return copy.deepcopy(model).to(dtype), X.to(dtype), y


def dense_hessian(
    model,
    data,
    indices=None,
    *,
    chunk: int = 256,
    vectors: int = 64,
    policy: str = "eval",
    dtype: torch.dtype | None = None,
):
    """Dense Hessian of the mean cross-entropy over ``data`` (or the samples ``indices``).

    ``torch.func.jacrev(jacrev(loss))`` of the loss as a function of the flat trainable
    parameters (``named_parameters`` order, as the HVP operators), evaluated in eval mode in the
    model's dtype and device, summed over chunks of ``chunk`` samples with weight n_chunk / n, the
    Jacobian vmapped over ``vectors`` basis vectors at a time. Independent of nnhessian's HVPs.

    ``policy="batch-stats"``: BatchNorm normalises with the statistics of the selected samples,
    which form one batch (evaluated whole, ``chunk`` unused), differentiated with
    ``torch.autograd.functional.hessian`` (module docstring). ``dtype`` (e.g. torch.float64):
    evaluate a deep copy of the model and the features in that dtype; None keeps the model's.
    The result is symmetrised, ``(H + H^T) / 2``; ``data`` is anything with tensors ``X``, ``y``.
    """
    if policy not in REFERENCE_POLICIES:
        raise ValueError(f"unknown policy {policy!r}; accepted: {', '.join(REFERENCE_POLICIES)}")
    model, X, y = _cast(model, data, dtype)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    names = [k for k, _ in named]
    shapes = [p.shape for _, p in named]
    numels = [p.numel() for _, p in named]
    consts = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    consts.update({k: b.detach() for k, b in model.named_buffers()})
    w = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(flat, X, y):
        parts = torch.split(flat, numels)
        params = {k: t.view(s) for k, t, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, (params, consts), (X,)), y)

    hess = torch.func.jacrev(torch.func.jacrev(loss), chunk_size=vectors)
    if indices is not None:
        idx = torch.as_tensor(indices, device=X.device)
        X, y = X[idx], y[idx]
    n = X.shape[0]
    with policy_mode(model, policy):  # the mode only: the products are computed apart
        if policy == "batch-stats":
            H = torch.autograd.functional.hessian(lambda flat: loss(flat, X, y), w)
        else:
            H = torch.zeros(w.numel(), w.numel(), dtype=w.dtype, device=w.device)
            for s in range(0, n, chunk):
                Xc, yc = X[s : s + chunk], y[s : s + chunk]
                H += hess(w, Xc, yc) * (Xc.shape[0] / n)
    return 0.5 * (H + H.T)


def dense_per_sample_hessians(
    model, data, indices=None, *, vectors: int = 64, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``(n, P, P)``: the per-sample Hessians ``H_i`` (eval mode) of ``data`` or ``indices``.

    Row k is :func:`dense_hessian` of sample ``indices[k]`` alone (all samples when None).
    """
    model, X, y = _cast(model, data, dtype)
    one = InMemoryDataset(X, y)
    rows = range(X.shape[0]) if indices is None else [int(i) for i in indices]
    return torch.stack([dense_hessian(model, one, [i], vectors=vectors) for i in rows])


# ---------------------------------------------------------------------------------------------
# per-sample Hessians as products
# ---------------------------------------------------------------------------------------------


class PerSampleHessians:
    """The N per-sample Hessians ``H_i`` of a full-data operator (paper eq. 9).

    Products ``H_i v`` for many samples at once use ``torch.func.vmap`` over per-sample
    forward-over-reverse HVPs, in chunks of ``chunk_size`` samples; modules that vmap cannot
    handle fall back to a loop of single-sample HVPs (``mode`` says which ran). Needs a loss that
    is a sum of per-sample terms: refused for BatchNorm under policy "batch-stats".

    Built by :meth:`nnhessian.operators.HessianOperator.per_sample`, which passes its engine, its
    full-data source and data set, and ``sample_operator(i, verify)``: ``H_i`` as a
    :class:`~nnhessian.operators.HessianOperator` (a fixed batch of one sample).
    """

    def __init__(
        self,
        engine: HVPEngine,
        source: BatchSource,
        dataset: InMemoryDataset | None,
        *,
        chunk_size: int,
        progress,
        sample_operator: Callable,
    ) -> None:
        if engine.policy == "batch-stats" and has_batchnorm(engine.model):
            raise ValueError(
                "per-sample Hessians are undefined for BatchNorm with batch statistics "
                "(policy 'batch-stats'): the batch loss is not a sum of per-sample losses; "
                "use policy 'eval'"
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self._engine = engine
        self._source = source
        self._sample_operator = sample_operator
        self.dataset = dataset
        self.chunk_size = chunk_size
        self.progress = progress

    @property
    def dim(self) -> int:
        return self._engine.dim

    @property
    def num_samples(self) -> int | None:
        return self._source.num_samples

    @property
    def mode(self) -> str | None:
        """Per-sample mode, "vmap" or "loop", once resolved by the first product."""
        return self._engine.per_sample_mode

    def _chunks(self, X, y, v):
        vd = self._engine.unflatten(v)
        for s in range(0, X.shape[0], self.chunk_size):
            yield self._engine.per_sample_hvp(
                X[s : s + self.chunk_size], y[s : s + self.chunk_size], vd
            )

    def _vector(self, v):
        if not isinstance(v, torch.Tensor) or v.ndim != 1 or v.shape[0] != self.dim:
            raise ValueError(f"expected a 1-D tensor of length {self.dim}")
        return v.to(device=self._engine.device, dtype=self._engine.dtype)

    def matvecs(self, v: torch.Tensor, indices=None) -> torch.Tensor:
        """``(n, P)`` tensor whose row k is ``H_{i_k} v`` (all samples when ``indices`` is None).

        Holds n x P numbers: for small problems and tests; large ones use
        :meth:`squared_deviation_sum`.
        """
        if self.dataset is None:
            raise ValueError("matvecs() needs an InMemoryDataset")
        v = self._vector(v)
        data = self.dataset if indices is None else self.dataset.subset(indices)
        with policy_mode(self._engine.model, self._engine.policy):
            return torch.cat(list(self._chunks(data.X, data.y, v)), dim=0)

    def squared_deviation_sum(self, v: torch.Tensor, center: torch.Tensor) -> tuple[float, int]:
        """``(sum_i ||H_i v - center||^2, N)`` in one pass over the data (float64 sum)."""
        v = self._vector(v)
        center = self._vector(center)

        def fn(X, y):
            total = torch.zeros((), dtype=torch.float64, device=X.device)
            for rows in self._chunks(X, y, v):
                total = total + ((rows - center) ** 2).sum(dtype=torch.float64)
            return (total,)

        with policy_mode(self._engine.model, self._engine.policy):
            res = reduce_pass(
                self._source,
                data_pass(fn, self._source, progress=self.progress, desc="per-sample HVPs"),
            )
        value = float(res.sums[0].item())
        if not np.isfinite(value):
            raise ValueError("per-sample Hessian-vector products are not finite")
        return value, res.count

    def operator(self, i: int, *, verify: bool = False):
        """``H_i`` alone, as a :class:`~nnhessian.operators.HessianOperator` (a batch of one)."""
        if self.dataset is None:
            raise ValueError("operator(i) needs an InMemoryDataset")
        return self._sample_operator(int(i), verify)
