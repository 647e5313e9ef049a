r"""The largest stable learning rate of SGD at fixed weights, measured by running SGD.

From the weights w_0 of a model, SGD with a constant learning rate eta runs ``steps`` steps on
batches of B samples: a fresh seeded permutation of the N samples each epoch, cut into
floor(N / B) batches of exactly B (the remainder is dropped; B = N is gradient descent). Plain
SGD ``w <- w - eta g`` or heavy ball with momentum mu in PyTorch's convention
``b <- mu b + g, w <- w - eta b`` (for a quadratic of curvature lambda it is stable iff
``eta lambda < 2 (1 + mu)``; Polyak 1964). The gradient is the batch mean cross-entropy's, the
model in eval mode (the loss whose Hessian :mod:`nnhessian.operators` measures; no dropout or
batch statistics), through ``torch.func.functional_call`` on a copy of the parameters: the model
is never written.

Divergence (Wu, Ma & E, NeurIPS 2018, section 2: linear instability makes the loss grow
geometrically): the full-data mean loss is non-finite, or above ``factor`` (default 10) times the
loss at w_0, at any of the ``steps`` steps. The run length biases eta_max upwards: just above the
threshold the loss grows like rho^k with rho near 1 and needs ``log(factor) / log(rho)`` steps to
cross (quantified exactly on the linear model by :func:`rmt.stability.run_length_eta`).

eta_max (:func:`eta_max`): from ``eta_start``, doubled (or halved) until the bracket holds a
stable and a diverging eta, then bisected in log eta until ``hi / lo <= 1 + rel``; the same
batches at every eta of a seed (common random numbers), so a seed's answer is a function of the
seed. Deterministic for a given seed on a given device (CPU: bit-identical reruns).

Wu-Ma-E inputs at w_0 (:func:`wu_ma_e_inputs`): the sharpness a = lambda_max(H_emp) and its
eigenvector v from one Lanczos run, and the non-uniformity ``s^2 = (1/N) sum_i ||H_i v||^2 - a^2``
from the per-sample Hessian-vector products of :meth:`HessianOperator.per_sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nnhessian.data import InMemoryDataset

DEFAULT_FACTOR = 10.0  # divergence: loss above 10x the starting loss (issue 12's default)
MAX_BRACKET_STEPS = 40  # doublings / halvings of eta_start allowed to find a bracket (2^40)


@dataclass(frozen=True)
class SGDRun:
    """One constant-learning-rate run from the fixed weights."""

    eta: float
    B: int
    momentum: float
    losses: np.ndarray  # (k + 1,) full-data mean loss at steps 0..k (k < steps when it diverged)
    diverged: bool


@dataclass(frozen=True)
class EtaMax:
    """The bisection of one seed: ``lo`` stable, ``hi`` diverged, ``hi / lo <= 1 + rel``."""

    B: int
    momentum: float
    seed: int
    lo: float
    hi: float
    runs: int  # SGD runs spent (bracketing and bisection)

    @property
    def estimate(self) -> float:
        """The geometric midpoint ``sqrt(lo hi)``: within a factor sqrt(1 + rel) of both ends."""
        return math.sqrt(self.lo * self.hi)


class FixedWeights:
    """A model's parameters at w_0 (a detached copy) and the full-data mean loss there."""

    def __init__(self, model, data: InMemoryDataset, *, chunk: int = 2048):
        self.model = model
        self.data = data
        self.chunk = chunk
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.start = [params[n].detach().clone() for n in self.names]
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.start_loss = self.loss(self.start)
        if not math.isfinite(self.start_loss):
            raise ValueError(f"the loss at the starting weights is not finite ({self.start_loss})")

    def _call(self, weights, X):
        state = dict(zip(self.names, weights, strict=True))
        state.update(self.buffers)
        return functional_call(self.model, state, (X,))

    def loss(self, weights) -> float:
        """Full-data mean cross-entropy at ``weights`` (chunks of ``chunk`` samples)."""
        total = 0.0
        with torch.no_grad():
            for s in range(0, len(self.data), self.chunk):
                X, y = self.data.X[s : s + self.chunk], self.data.y[s : s + self.chunk]
                total += float(F.cross_entropy(self._call(weights, X), y, reduction="sum"))
        return total / len(self.data)

    def gradient(self, weights, idx):
        """Gradient of the batch mean cross-entropy at ``weights``."""
        live = [w.detach().requires_grad_(True) for w in weights]
        loss = F.cross_entropy(self._call(live, self.data.X[idx]), self.data.y[idx])
        return torch.autograd.grad(loss, live)


def batch_schedule(N: int, B: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` batches of exactly B indices: per epoch a permutation from ``generator`` cut into
    floor(N / B) consecutive batches (without replacement within an epoch)."""
    if not 1 <= B <= N:
        raise ValueError(f"B must be in [1, N = {N}], got {B}")
    out: list[torch.Tensor] = []
    per_epoch = N // B
    while len(out) < steps:
        perm = torch.randperm(N, generator=generator)
        out += [perm[k * B : (k + 1) * B] for k in range(min(per_epoch, steps - len(out)))]
    return out


def sgd_run(
    fixed: FixedWeights,
    batches,
    eta: float,
    *,
    momentum: float = 0.0,
    factor: float = DEFAULT_FACTOR,
) -> SGDRun:
    """SGD (heavy ball when ``momentum`` > 0) from w_0 on the given batches; stops at divergence."""
    device = fixed.data.X.device
    weights = [w.clone() for w in fixed.start]
    buffers = [torch.zeros_like(w) for w in weights] if momentum else None
    limit = factor * fixed.start_loss
    losses = [fixed.start_loss]
    diverged = False
    for idx in batches:
        grads = fixed.gradient(weights, idx.to(device))
        with torch.no_grad():
            if buffers is not None:
                for b, g in zip(buffers, grads, strict=True):
                    b.mul_(momentum).add_(g)
                grads = buffers
            for w, g in zip(weights, grads, strict=True):
                w.sub_(eta * g)
        loss = fixed.loss(weights)
        losses.append(loss)
        if not math.isfinite(loss) or loss > limit:
            diverged = True
            break
    return SGDRun(eta, len(batches[0]), momentum, np.array(losses), diverged)


def eta_max(
    fixed: FixedWeights,
    B: int,
    *,
    steps: int,
    seed: int,
    eta_start: float,
    momentum: float = 0.0,
    factor: float = DEFAULT_FACTOR,
    rel: float = 0.1,
) -> EtaMax:
    """The largest stable constant learning rate of one seed (module docstring), to ``rel``."""
    if not (math.isfinite(eta_start) and eta_start > 0):
        raise ValueError(f"eta_start must be a positive number, got {eta_start}")
    batches = batch_schedule(len(fixed.data), B, steps, torch.Generator().manual_seed(seed))
    runs = 0

    def stable(eta: float) -> bool:
        nonlocal runs
        runs += 1
        return not sgd_run(fixed, batches, eta, momentum=momentum, factor=factor).diverged

    lo = hi = eta_start
    if stable(eta_start):
        for _ in range(MAX_BRACKET_STEPS):
            lo, hi = hi, 2.0 * hi
            if not stable(hi):
                break
        else:
            raise ValueError(f"no divergence up to eta = {hi:.3g} (B = {B})")
    else:
        for _ in range(MAX_BRACKET_STEPS):
            hi, lo = lo, 0.5 * lo
            if stable(lo):
                break
        else:
            raise ValueError(f"divergence even at eta = {lo:.3g} (B = {B})")
    while hi / lo > 1.0 + rel:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return EtaMax(B, momentum, seed, lo, hi, runs)


@dataclass(frozen=True)
class WuMaEInputs:
    """Sharpness and non-uniformity along the top eigenvector of H_emp."""

    sharpness: float  # a = lambda_max(H_emp), the top Ritz value
    residual: float  # its Lanczos residual estimate
    mean_sq_products: float  # (1/N) sum_i ||H_i v||^2
    nonuniformity: float  # s^2 = mean_sq_products - a^2


def wu_ma_e_inputs(full_op, steps: int, *, generator: torch.Generator) -> WuMaEInputs:
    """a, v from one Lanczos run of ``steps`` steps on the full-data operator, then
    ``s^2 = (1/N) sum_i ||H_i v||^2 - a^2`` by per-sample products (one pass over the data)."""
    from nnhessian.lanczos import lanczos, ritz_vectors

    result = lanczos(full_op, steps, generator=generator, keep_basis=True, progress=False)
    top = int(np.nanargmax(result.ritz_values))
    v = ritz_vectors(result, [top])[0]
    a = float(result.ritz_values[top])
    total, n = full_op.per_sample().squared_deviation_sum(v, torch.zeros_like(v))
    m2 = total / n
    return WuMaEInputs(a, float(result.residuals[top]), m2, m2 - a * a)
