"""Hessians of real networks: operators, Lanczos spectra and the noise variance sigma^2.

torch lives here (never matplotlib). Stages, each a pure function or a small object:

* :mod:`nnhessian.data` -- deterministic in-memory data, the offline digits data set, fixed
  batches, and the single data-pass loop;
* :mod:`nnhessian.datasets` -- the data sets by name (``digits``, ``cifar100``), for Hessian
  measurements and for training;
* :mod:`nnhessian.models` -- small smooth networks and the registry ``build(name, num_classes)``;
* :mod:`nnhessian.hvp` -- the engine of Pearlmutter Hessian-vector products on one batch:
  weight snapshot, BatchNorm/dropout policy, double-backward / forward-over-reverse, graph cache;
* :mod:`nnhessian.operators` -- :class:`HessianOperator` (full data, fixed batch, noise =
  batch - full; per-sample Hessians) on flat vectors, :class:`MatrixOperator`, the scipy adapter,
  device and dtype resolution;
* :mod:`nnhessian.reference` -- the one dense ground truth: :func:`dense_hessian`,
  :func:`dense_per_sample_hessians` (torch.func, independent of the HVPs) and
  :class:`PerSampleHessians` (per-sample products ``H_i v``);
* :mod:`nnhessian.lanczos` -- :func:`lanczos` with full reorthogonalisation, Ritz vectors;
* :mod:`nnhessian.slq` -- stochastic Lanczos quadrature (probes in lockstep), second moments;
* :mod:`nnhessian.sigma2` -- estimators of sigma^2 (paper eq. 9);
* :mod:`nnhessian.ggn` and :mod:`nnhessian.curvature` -- per-sample Gauss-Newton spectra (C x C
  per sample), the exact batch GGN spectrum from its (B C) x (B C) Gram matrix, the tail of the
  per-sample curvature and the share of the non-GGN part;
* :mod:`nnhessian.weights` -- a model at given weights: weight files, fit and finiteness checks,
  the mean loss, a short deterministic SGD run off the initialisation;
* :mod:`nnhessian.training` and :mod:`nnhessian.train_checkpoint` -- the paper's training recipe
  (schedule, SGD epoch, evaluation) and its resumable per-epoch checkpoints;
* :mod:`nnhessian.cifar` -- CIFAR-100 from a user folder (torchvision's pickle layout);
* :mod:`nnhessian.checkpoint` -- resumable state of long Lanczos / sigma^2 runs;
* :mod:`nnhessian.distributed` -- the full-data passes sharded over torch.distributed ranks.

``datasets``, ``ggn``, ``curvature``, ``weights``, ``training``, ``train_checkpoint``, ``cifar``,
``checkpoint`` and ``distributed`` are imported on demand (``import nnhessian.distributed``).
"""

from nnhessian import models
from nnhessian.data import (
    DeterminismError,
    InMemoryDataset,
    draw_batch_indices,
    load_digits,
)
from nnhessian.lanczos import (
    LanczosResult,
    gauss_quadrature,
    lanczos,
    quadrature_moments,
    smooth_density,
)
from nnhessian.operators import (
    HessianOperator,
    MatrixOperator,
    as_linear_operator,
    resolve_device,
)
from nnhessian.reference import PerSampleHessians, dense_hessian, dense_per_sample_hessians
from nnhessian.sigma2 import (
    Sigma2Estimate,
    sigma2_partition,
    sigma2_per_sample,
    sigma2_two_batch,
)
from nnhessian.slq import (
    ExtremeEigenvalues,
    SLQResult,
    extreme_eigenvalues,
    second_moments,
    slq,
)

__all__ = [
    "DeterminismError",
    "ExtremeEigenvalues",
    "HessianOperator",
    "InMemoryDataset",
    "LanczosResult",
    "MatrixOperator",
    "PerSampleHessians",
    "SLQResult",
    "Sigma2Estimate",
    "as_linear_operator",
    "dense_hessian",
    "dense_per_sample_hessians",
    "draw_batch_indices",
    "extreme_eigenvalues",
    "gauss_quadrature",
    "lanczos",
    "load_digits",
    "models",
    "quadrature_moments",
    "second_moments",
    "resolve_device",
    "sigma2_partition",
    "sigma2_per_sample",
    "sigma2_two_batch",
    "slq",
    "smooth_density",
]
