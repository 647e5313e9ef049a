r"""Generalised Gauss-Newton (GGN) pieces of the cross-entropy loss, per sample and per batch.

Notation (``DESIGN.md``): outputs (logits) ``f(x; w)`` in R^C, ``p = softmax(f)``, per-sample loss
``l_i = -log p_{y_i}``. The Hessian of a per-sample loss splits (Schraudolph 2002; Martens 2020,
"New insights and perspectives on the natural gradient method", section 8) as

    H_i = J_i^T Lambda_i J_i + sum_c (d l_i / d f_c) nabla^2_w f_c(x_i),

with ``J_i = d f(x_i) / d w`` (C x P) and ``Lambda_i = d^2 l_i / d f^2 = diag(p_i) - p_i p_i^T``
(PSD, rank C - 1, null vector the all-ones vector). The first term is the per-sample GGN
``G_i``; the second, the residual, is measured on the dense path by
:func:`nnhessian.curvature.residual_share`.

* Per sample: ``G_i = V_i^T V_i`` with ``V_i = Lambda_i^(1/2) J_i`` (C x P), so the nonzero
  spectrum of ``G_i`` is that of the C x C matrix ``M_i = V_i V_i^T = Lambda_i^(1/2) J_i J_i^T
  Lambda_i^(1/2)`` (the nonzero eigenvalues of ``A^T A`` and ``A A^T`` coincide). The top
  eigenvector of ``G_i`` is ``u_i = V_i^T e_i / sqrt(lambda_i)``, ``e_i`` the top eigenvector of
  ``M_i``. ``Lambda^(1/2)`` is the symmetric square root by ``eigh``, round-off negatives clipped
  to 0 (:func:`output_hessian_sqrt`); the eigenvalues of ``M_i`` depend on it only through its
  square, so the clipping costs no accuracy.
* Per batch (ViViT: Dangel, Tatzel & Hennig, TMLR 2023, "ViViT: Curvature access through the
  generalized Gauss-Newton's low-rank structure", section 2): ``G_B = (1/B) sum_{i in B} G_i =
  V_B^T V_B / B`` with ``V_B`` the B C x P stack of the ``V_i``; its nonzero eigenvalues are those
  of the B C x B C Gram matrix ``K = V_B V_B^T / B = [Lambda_i^(1/2) J_i J_j^T Lambda_j^(1/2)]_ij
  / B``: one forward pass and B C vector-Jacobian products, no Lanczos, at any P
  (:func:`batch_ggn_spectrum`).

``J_i`` comes from ``torch.func``: ``vmap`` over the samples of ``jacrev`` (C vector-Jacobian
products) of the single-sample logits of ``torch.func.functional_call(model, params, x)`` as a
function of the flat trainable parameters (``named_parameters`` order, as the Hessian operators),
in chunks of samples so that at most ``chunk * C * P`` Jacobian entries are held. Every pass runs
with every module in eval mode (:func:`nnhessian.hvp.policy_mode` "eval": BatchNorm on its running
statistics, dropout off), so the loss is a sum of per-sample losses and ``G_i`` is defined. The
weights are copied (cast to ``dtype``, moved to ``device``) when :class:`OutputJacobians` is built;
the model's own tensors are never written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnhessian.data import InMemoryDataset
from nnhessian.hvp import policy_mode

__all__ = [
    "DEFAULT_MAX_NUMBERS",
    "BatchGGNSpectrum",
    "OutputJacobians",
    "ScaledJacobians",
    "batch_ggn_spectrum",
    "ggn_matrix",
    "output_hessian",
    "output_hessian_sqrt",
]

# Memory budget, in Jacobian entries, for one chunk of V_i (chunk * C * P numbers) and for keeping
# the blocks of V_B between the products of the Gram matrix: 2^24 entries = 128 MiB in float64.
DEFAULT_MAX_NUMBERS = 2**24
# Bytes of V_B (B C x P) that batch_ggn_spectrum may hold to form K in one Jacobian pass; beyond,
# the blocks are recomputed per pair (quadratic in the number of blocks). B = 64, C = 100 and
# P = 102,760 in float32 is 2.6 GB.
DEFAULT_KEEP_BYTES = 4 * 2**30
ROUTES = ("auto", "gram", "parameter")


def output_hessian(p: torch.Tensor) -> torch.Tensor:
    """``(n, C, C)``: ``Lambda = diag(p) - p p^T``, the Hessian of ``-log softmax(f)_y`` in the
    logits ``f``, for probabilities ``p`` of shape ``(n, C)``."""
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def output_hessian_sqrt(p: torch.Tensor) -> torch.Tensor:
    """``(n, C, C)``: the symmetric PSD square root of :func:`output_hessian` ``(p)``.

    ``Q diag(sqrt(max(d, 0))) Q^T`` from ``eigh`` (round-off negatives clipped to 0).
    """
    d, Q = torch.linalg.eigh(output_hessian(p))
    return (Q * d.clamp(min=0).sqrt().unsqueeze(-2)) @ Q.transpose(-1, -2)


@dataclass(frozen=True)
class ScaledJacobians:
    """One chunk of samples: losses, probabilities and ``V_i = Lambda_i^(1/2) J_i``."""

    losses: torch.Tensor  # (n,) per-sample cross-entropy l_i
    probs: torch.Tensor  # (n, C) softmax outputs p_i
    V: torch.Tensor  # (n, C, P) Lambda_i^(1/2) J_i


class OutputJacobians:
    """The logits of ``model`` and their per-sample Jacobians, at the weights it has now.

    ``dtype`` and ``device`` (default: those of the first parameter) fix where the weights copy
    lives and the products run; floating buffers and features are cast to ``dtype``.
    """

    def __init__(
        self, model: nn.Module, *, dtype: torch.dtype = torch.float64, device=None
    ) -> None:
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters")
        device = torch.device(device) if device is not None else named[0][1].device
        self.model = model
        self.dtype = dtype
        self.device = device
        self.names = [k for k, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.weights = torch.cat([p.detach().reshape(-1) for _, p in named]).to(device, dtype)

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to(device)
            return t.to(dtype) if t.is_floating_point() else t

        self.consts = {k: cast(p) for k, p in model.named_parameters() if not p.requires_grad}
        self.consts.update({k: cast(b) for k, b in model.named_buffers()})
        self._jacobian = torch.func.vmap(torch.func.jacrev(self._one_logits), in_dims=(None, 0))

    @property
    def dim(self) -> int:
        """P: the number of trainable parameters."""
        return self.weights.numel()

    def _call(self, flat: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, self.numels)
        params = {k: t.view(s) for k, t, s in zip(self.names, parts, self.shapes, strict=True)}
        return torch.func.functional_call(self.model, (params, self.consts), (X,))

    def _one_logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._call(flat, x.unsqueeze(0)).squeeze(0)

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` on the device, floating features in ``dtype``."""
        X = X.to(self.device)
        return X.to(self.dtype) if X.is_floating_point() else X

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """``(n, C)``: the logits of a chunk of samples, eval mode."""
        with policy_mode(self.model, "eval"), torch.no_grad():
            return self._call(self.weights, self.features(X))

    def jacobians(self, X: torch.Tensor) -> torch.Tensor:
        """``(n, C, P)``: ``J_i = d f(x_i) / d w`` of a chunk of samples, eval mode."""
        with policy_mode(self.model, "eval"):
            return self._jacobian(self.weights, self.features(X))

    def scaled(self, X: torch.Tensor, y: torch.Tensor) -> ScaledJacobians:
        """Losses, probabilities and ``V_i = Lambda_i^(1/2) J_i`` of a chunk of samples."""
        f = self.logits(X)
        y = y.to(self.device)
        losses = F.cross_entropy(f, y, reduction="none")
        p = torch.softmax(f, dim=-1)
        V = output_hessian_sqrt(p) @ self.jacobians(X)
        return ScaledJacobians(losses=losses, probs=p, V=V)

    def chunk_for(self, num_classes: int, max_numbers: int = DEFAULT_MAX_NUMBERS) -> int:
        """Samples per chunk so that a chunk's V holds at most ``max_numbers`` entries (>= 1)."""
        return max(1, int(max_numbers) // (num_classes * self.dim))

    def num_classes(self, X: torch.Tensor) -> int:
        """C, from the logits of the first sample."""
        return int(self.logits(X[:1]).shape[-1])


# ---------------------------------------------------------------------------------------------
# the exact batch GGN spectrum
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchGGNSpectrum:
    """The eigenvalues of ``K = V_B V_B^T / B``: the nonzero spectrum of ``G_B`` and B C - rank
    zeros (module docstring)."""

    indices: np.ndarray  # (B,) int64 sample indices of the batch, in the order given
    eigenvalues: np.ndarray  # (B * C,) descending
    num_parameters: int  # P
    num_classes: int  # C
    route: str  # "gram" (eigvalsh of K) or "parameter" (of V_B^T V_B / B, zero-padded)
    dtype: str  # dtype of the products and of the eigensolver
    chunk: int  # samples per block of V_B

    @property
    def batch_size(self) -> int:
        return int(self.indices.shape[0])

    @property
    def top(self) -> float:
        """lambda_max(G_B)."""
        return float(self.eigenvalues[0])

    @property
    def trace(self) -> float:
        """tr(G_B) = (1/B) sum_i tr(G_i)."""
        return float(np.sum(self.eigenvalues))


def _gram(jac: OutputJacobians, batch: InMemoryDataset, blocks, C: int, keep: bool):
    """``V_B V_B^T`` (B C x B C) block by block; the blocks of V_B are kept when ``keep``, else
    recomputed for each pair (memory: two blocks; cost: quadratic in the number of blocks)."""
    rows = len(batch) * C
    K = torch.zeros(rows, rows, dtype=jac.dtype, device=jac.device)
    cache: dict[int, torch.Tensor] = {}

    def block(a: int) -> torch.Tensor:
        if a not in cache:
            V = jac.scaled(batch.X[blocks[a]], batch.y[blocks[a]]).V
            V = V.reshape(-1, V.shape[-1])  # rows (sample, class), sample-major
            if not keep:
                return V
            cache[a] = V
        return cache[a]

    for a, sa in enumerate(blocks):
        Va = block(a)
        ra = slice(sa.start * C, sa.stop * C)
        for b in range(a, len(blocks)):
            rb = slice(blocks[b].start * C, blocks[b].stop * C)
            K[ra, rb] = Va @ (Va if b == a else block(b)).T
            if b != a:
                K[rb, ra] = K[ra, rb].T
    return K


def _parameter_gram(jac: OutputJacobians, batch: InMemoryDataset, blocks) -> torch.Tensor:
    """``V_B^T V_B = sum_i G_i`` (P x P), one pass over the blocks."""
    G = torch.zeros(jac.dim, jac.dim, dtype=jac.dtype, device=jac.device)
    for sa in blocks:
        V = jac.scaled(batch.X[sa], batch.y[sa]).V
        V = V.reshape(-1, V.shape[-1])
        G += V.T @ V
    return G


def ggn_matrix(
    model: nn.Module,
    data: InMemoryDataset,
    indices=None,
    *,
    dtype: torch.dtype = torch.float64,
    device=None,
    max_numbers: int = DEFAULT_MAX_NUMBERS,
) -> torch.Tensor:
    """The dense Gauss-Newton matrix ``G = (1/n) sum_i G_i`` (P x P) over ``indices`` (all
    samples when None), accumulated in one pass: for small P (the exact path), e.g. the share
    ``||H_emp - G_emp||_2 / ||H_emp||_2`` of the non-GGN part."""
    jac = OutputJacobians(model, dtype=dtype, device=device)
    chosen = data if indices is None else data.subset(indices)
    C = jac.num_classes(chosen.X[:1])
    chunk = jac.chunk_for(C, max_numbers)
    blocks = [slice(s, min(s + chunk, len(chosen))) for s in range(0, len(chosen), chunk)]
    return _parameter_gram(jac, chosen, blocks) / len(chosen)


def batch_ggn_spectrum(
    model: nn.Module,
    data: InMemoryDataset,
    indices,
    *,
    dtype: torch.dtype = torch.float64,
    device=None,
    route: str = "auto",
    max_numbers: int = DEFAULT_MAX_NUMBERS,
    keep_bytes: int = DEFAULT_KEEP_BYTES,
) -> BatchGGNSpectrum:
    """The B C eigenvalues of ``K = [Lambda_i^(1/2) J_i J_j^T Lambda_j^(1/2)]_ij / B`` for the
    batch ``indices`` of ``data``: all nonzero eigenvalues of ``G_B = (1/B) sum_i G_i``, exactly.

    ``route``: "gram" forms K (B C x B C; blocks of ``chunk`` samples, ``chunk * C * P <=
    max_numbers``; the blocks are kept when all of V_B, ``B C P`` numbers, fits in ``keep_bytes``
    -- one Jacobian pass -- else recomputed per pair, a cost quadratic in the number of blocks);
    "parameter" accumulates ``V_B^T V_B / B`` (P x P, one pass); "auto" takes the smaller matrix.
    Both give the same spectrum: K's rank is at most min(B (C - 1), P), and the missing
    eigenvalues of the smaller side are exact zeros.
    """
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; accepted: {', '.join(ROUTES)}")
    jac = OutputJacobians(model, dtype=dtype, device=device)
    batch = data.subset(indices)  # checks: non-empty, 1-D, integers in range
    idx = torch.as_tensor(indices).to(torch.int64).cpu()
    B, P = len(batch), jac.dim
    C = jac.num_classes(batch.X)
    chunk = jac.chunk_for(C, max_numbers)
    blocks = [slice(s, min(s + chunk, B)) for s in range(0, B, chunk)]
    if route == "auto":
        route = "gram" if B * C <= P else "parameter"
    if route == "gram":
        keep = B * C * P * jac.dtype.itemsize <= keep_bytes
        K = _gram(jac, batch, blocks, C, keep=keep) / B
    else:
        K = _parameter_gram(jac, batch, blocks) / B
    ev = torch.linalg.eigvalsh(K).flip(0)[: B * C].cpu().numpy().astype(np.float64)
    ev = np.concatenate([ev, np.zeros(B * C - ev.shape[0])])
    return BatchGGNSpectrum(
        indices=idx.numpy(),
        eigenvalues=ev,
        num_parameters=P,
        num_classes=C,
        route=route,
        dtype=str(dtype).removeprefix("torch."),
        chunk=chunk,
    )
