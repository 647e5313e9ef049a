r"""Per-sample curvature of a network: the GGN spectrum of every sample, its tail, its residual.

For each sample i the nonzero spectrum of its Gauss-Newton matrix ``G_i = J_i^T Lambda_i J_i``
comes from the C x C matrix ``M_i = Lambda_i^(1/2) J_i J_i^T Lambda_i^(1/2)`` (C vector-Jacobian
products per sample, vmapped; :mod:`nnhessian.ggn` has the mathematics and the conventions):

* :func:`per_sample_curvature` -- a :class:`PerSampleCurvature` table: index, label, loss, the C
  eigenvalues of ``M_i`` (the top GGN eigenvalue and the GGN trace ``tr G_i = sum eig M_i``), and
  optionally the squared overlap ``<u_i, v>^2 / ||v||^2`` of the top eigenvector ``u_i`` of
  ``G_i`` with a given direction ``v`` (the full-data top Ritz vector for an extreme-value model),
  computed chunk by chunk without storing the u_i. All samples, or a seeded subset (uniform
  without replacement) whose size is recorded.
* :func:`curvature_summary` -- quantiles of the top eigenvalues and Hill's tail index of their
  upper tail (:func:`rmt.tails.hill_estimate`, k = floor(sqrt(n)) by default, 95% Wald interval).
* :func:`residual_share` -- the share of the non-GGN part ``H_i - G_i = sum_c (d l_i / d f_c)
  nabla^2 f_c`` on the dense path at small P: ``||H_emp - G_emp||_2 / ||H_emp||_2`` and the
  per-sample ``||H_i - G_i||_F / ||H_i||_F``, with ``H_i`` from
  :func:`nnhessian.reference.dense_per_sample_hessians` (torch.func, an independent route).

The exact spectrum of a batch GGN is :func:`nnhessian.ggn.batch_ggn_spectrum`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nnhessian.data import InMemoryDataset, draw_batch_indices
from nnhessian.ggn import DEFAULT_MAX_NUMBERS, OutputJacobians
from nnhessian.reference import dense_per_sample_hessians
from rmt.tails import HILL_LEVEL, HillEstimate, hill_estimate

__all__ = [
    "DEFAULT_QUANTILES",
    "CurvatureSummary",
    "PerSampleCurvature",
    "ResidualShare",
    "curvature_summary",
    "per_sample_curvature",
    "residual_share",
]

# Quantile levels of the summary: the median, the upper tail and the largest value separately.
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


@dataclass(frozen=True)
class PerSampleCurvature:
    """Per-sample GGN spectra: one row per sample (module docstring)."""

    indices: np.ndarray  # (n,) int64 sample indices into the data set (a subset: increasing)
    labels: np.ndarray  # (n,) int64 class labels y_i
    losses: np.ndarray  # (n,) cross-entropy l_i
    eigenvalues: np.ndarray  # (n, C) eigenvalues of M_i (= nonzero spectrum of G_i), descending
    top_overlaps: np.ndarray | None  # (n,) <u_i, v>^2 / ||v||^2, or None without a direction
    num_samples: int  # N, the size of the data set
    subset_size: int | None  # n when a seeded subset was drawn, None for all samples / given
    seed: int | None  # initial_seed() of the generator that drew the subset
    num_parameters: int  # P
    num_classes: int  # C
    dtype: str  # dtype of the products and eigensolvers
    chunk: int  # samples per chunk (chunk * C * P Jacobian entries held)

    @property
    def top(self) -> np.ndarray:
        """``(n,)``: lambda_max(G_i)."""
        return self.eigenvalues[:, 0]

    @property
    def trace(self) -> np.ndarray:
        """``(n,)``: tr(G_i) = ||Lambda_i^(1/2) J_i||_F^2, the sum of M_i's eigenvalues."""
        return self.eigenvalues.sum(axis=1)


def _rows(N: int, indices, subset_size, generator) -> tuple[torch.Tensor, int | None]:
    """Sample indices (increasing) and the recorded seed."""
    if indices is not None and subset_size is not None:
        raise ValueError("give indices or subset_size, not both")
    if subset_size is None:
        if indices is None:
            return torch.arange(N), None
        return torch.as_tensor(indices), None
    if not isinstance(generator, torch.Generator):
        raise TypeError("a seeded subset needs generator=torch.Generator (randomness is explicit)")
    return draw_batch_indices(N, subset_size, generator=generator), generator.initial_seed()


def _unit(direction, P: int, jac: OutputJacobians) -> torch.Tensor:
    v = torch.as_tensor(direction)
    if v.ndim != 1 or v.shape[0] != P:
        raise ValueError(f"direction must be a 1-D tensor of length P = {P}")
    v = v.to(device=jac.device, dtype=jac.dtype)
    norm = torch.linalg.vector_norm(v)
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("direction must be finite and nonzero")
    return v / norm


def per_sample_curvature(
    model: nn.Module,
    data: InMemoryDataset,
    *,
    indices=None,
    subset_size: int | None = None,
    generator: torch.Generator | None = None,
    direction: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
    max_numbers: int = DEFAULT_MAX_NUMBERS,
) -> PerSampleCurvature:
    """The eigenvalues of ``M_i`` for all samples of ``data`` (default), the given ``indices``,
    or ``subset_size`` samples drawn uniformly without replacement with ``generator``.

    ``direction`` (a P-vector, e.g. the full-data top Ritz vector): also the squared overlaps
    ``<u_i, v>^2 / ||v||^2`` of each top eigenvector ``u_i = V_i^T e_i / ||V_i^T e_i||``
    (NaN where ``G_i = 0``). Chunks of ``max_numbers // (C P)`` samples (at least 1).
    """
    jac = OutputJacobians(model, dtype=dtype, device=device)
    rows, seed = _rows(len(data), indices, subset_size, generator)
    chosen = data.subset(rows)
    C, P = jac.num_classes(chosen.X), jac.dim
    v = None if direction is None else _unit(direction, P, jac)
    chunk = jac.chunk_for(C, max_numbers)
    losses, eigenvalues, overlaps = [], [], []
    for s in range(0, len(chosen), chunk):
        part = jac.scaled(chosen.X[s : s + chunk], chosen.y[s : s + chunk])
        M = part.V @ part.V.transpose(-1, -2)
        d, E = torch.linalg.eigh(0.5 * (M + M.transpose(-1, -2)))
        losses.append(_numpy(part.losses))
        eigenvalues.append(_numpy(d.flip(-1)))
        if v is not None:
            u = torch.einsum("nc,ncp->np", E[:, :, -1], part.V)  # ||u_i||^2 = top eig of M_i
            norm2 = (u * u).sum(-1)
            ov = (u @ v) ** 2 / norm2
            overlaps.append(_numpy(torch.where(norm2 > 0, ov, torch.nan)))
    return PerSampleCurvature(
        indices=rows.to(torch.int64).numpy(),
        labels=chosen.y.cpu().to(torch.int64).numpy(),
        losses=np.concatenate(losses),
        eigenvalues=np.concatenate(eigenvalues),
        top_overlaps=None if v is None else np.concatenate(overlaps),
        num_samples=len(data),
        subset_size=subset_size,
        seed=seed,
        num_parameters=P,
        num_classes=C,
        dtype=str(dtype).removeprefix("torch."),
        chunk=chunk,
    )


# ---------------------------------------------------------------------------------------------
# summary of the table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurvatureSummary:
    """Quantiles and tail index of the per-sample top GGN eigenvalues."""

    quantile_levels: tuple[float, ...]  # (q,) levels, e.g. 0.5, 0.9, 0.99
    quantiles: np.ndarray  # (q,) numpy's default (linear) quantiles of lambda_max(G_i)
    maximum: float  # max_i lambda_max(G_i)
    mean_top: float  # mean_i lambda_max(G_i)
    mean_trace: float  # mean_i tr(G_i) = tr(G_emp) over the rows
    hill: HillEstimate  # tail index of lambda_max(G_i), k = floor(sqrt(n)) unless given
    n: int  # rows summarised
    subset_size: int | None  # copied from the table: None when all samples (or given ones)


def _hill(top: np.ndarray, k: int | None, level: float) -> HillEstimate:
    """Hill's estimate over the positive top eigenvalues; all-NaN when too few are positive (e.g.
    a model at initialisation whose outputs are constant in some samples)."""
    positive = top[top > 0]
    try:
        return hill_estimate(positive, k, level=level)
    except ValueError:
        nan = float("nan")
        return HillEstimate(nan, nan, nan, nan, 0, int(positive.size), nan, level)


def curvature_summary(
    table: PerSampleCurvature,
    *,
    quantile_levels=DEFAULT_QUANTILES,
    k: int | None = None,
    level: float = HILL_LEVEL,
) -> CurvatureSummary:
    """Quantiles of ``table.top`` and Hill's tail index of it (:func:`rmt.tails.hill_estimate`:
    ``k`` upper order statistics, default floor(sqrt(n)); a two-sided ``level`` Wald interval)."""
    top = table.top
    levels = tuple(float(q) for q in quantile_levels)
    return CurvatureSummary(
        quantile_levels=levels,
        quantiles=np.quantile(top, levels),
        maximum=float(np.max(top)),
        mean_top=float(np.mean(top)),
        mean_trace=float(np.mean(table.trace)),
        hill=_hill(top, k, level),
        n=int(top.shape[0]),
        subset_size=table.subset_size,
    )


# ---------------------------------------------------------------------------------------------
# the residual (non-GGN) part, dense, small P
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidualShare:
    """How much of the Hessian is not Gauss-Newton, from dense P x P matrices."""

    indices: np.ndarray  # (n,) samples whose mean is H_emp / G_emp
    spectral: float  # ||H_emp - G_emp||_2 / ||H_emp||_2
    per_sample_frobenius: np.ndarray  # (n,) ||H_i - G_i||_F / ||H_i||_F
    hessian_top: float  # lambda_max(H_emp)
    ggn_top: float  # lambda_max(G_emp)
    num_parameters: int  # P


def residual_share(
    model: nn.Module, data: InMemoryDataset, indices=None, *, dtype: torch.dtype = torch.float64
) -> ResidualShare:
    """The non-GGN share of the Hessian over ``indices`` (all samples when None), dense.

    ``H_i`` from :func:`nnhessian.reference.dense_per_sample_hessians` (eval mode, ``dtype``),
    ``G_i = V_i^T V_i`` (:class:`nnhessian.ggn.OutputJacobians` on the CPU), ``H_emp`` and
    ``G_emp`` their means. Holds n P^2 numbers: for small models.
    """
    rows = torch.arange(len(data)) if indices is None else torch.as_tensor(indices).reshape(-1)
    H = dense_per_sample_hessians(model, data, rows, dtype=dtype).cpu()
    jac = OutputJacobians(model, dtype=dtype, device="cpu")
    chosen = data.subset(rows)
    V = jac.scaled(chosen.X, chosen.y).V
    G = V.transpose(-1, -2) @ V
    R = H - G
    per_sample = torch.linalg.matrix_norm(R) / torch.linalg.matrix_norm(H)
    H_emp, G_emp = H.mean(0), G.mean(0)
    spectral = torch.linalg.matrix_norm(H_emp - G_emp, ord=2) / torch.linalg.matrix_norm(
        H_emp, ord=2
    )
    return ResidualShare(
        indices=rows.to(torch.int64).numpy(),
        spectral=float(spectral),
        per_sample_frobenius=_numpy(per_sample),
        hessian_top=float(torch.linalg.eigvalsh(H_emp)[-1]),
        ggn_top=float(torch.linalg.eigvalsh(G_emp)[-1]),
        num_parameters=jac.dim,
    )
