"""Lanczos tridiagonalisation and stochastic Lanczos quadrature (SLQ) of a symmetric operator.

Lanczos (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, 4th ed., section 10.1) builds an
orthonormal basis ``Q_m = [q_1..q_m]`` of the Krylov space of ``A`` and ``q_1 = v0/||v0||`` in which
``A`` is tridiagonal: ``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T`` with ``T_m`` holding ``alpha``
on the diagonal and ``beta_1..beta_{m-1}`` off it. In floating point the basis loses
orthogonality as Ritz values converge (Paige 1971) and ghost copies appear; here every new vector
is re-orthogonalised against the whole stored basis by classical Gram-Schmidt applied twice
("twice is enough", Giraud, Langou & Rozloznik 2005), so ``Q_m`` stays orthonormal to working
precision at ``O(P m)`` memory and ``O(P m^2)`` extra flops.

Gauss quadrature (Golub & Welsch 1969; Golub & Meurant 2010): with ``T_m = S diag(theta) S^T``,
``q_1^T f(A) q_1 ~= sum_j w_j f(theta_j)`` with nodes the Ritz values ``theta_j`` and weights
``w_j = S[0, j]^2`` (squared *first* components; they sum to 1), exact for polynomials of degree
<= 2m - 1. SLQ (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019 for network Hessians)
averages these quadratures over random unit probes: ``E[q^T f(A) q] = tr f(A) / P`` for ``q``
uniform on the sphere (normalised Gaussian) or normalised Rademacher vectors.

Residual estimates: the Ritz pair ``(theta_j, y_j = Q_m s_j)`` has ``||A y_j - theta_j y_j|| =
|beta_m S[m-1, j]|`` (exact while ``Q_m`` is orthonormal), and some eigenvalue of ``A`` lies within
that distance of ``theta_j`` (Parlett, *The Symmetric Eigenvalue Problem*, Thm 4.5.1).

Default ``steps = 100``, as in the paper, section 4 ("We use m = 100").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from tqdm import tqdm

__all__ = [
    "ExtremeEigenvalues",
    "LanczosResult",
    "SLQResult",
    "extreme_eigenvalues",
    "gauss_quadrature",
    "lanczos",
    "quadrature_moments",
    "ritz_vectors",
    "slq",
    "smooth_density",
]

PAPER_STEPS = 100  # paper, section 4: "We use m = 100 for our Experiments"


@dataclass(frozen=True)
class LanczosResult:
    """One Lanczos run: the tridiagonal, its Gauss quadrature and convergence evidence."""

    ritz_values: np.ndarray  # (m,) eigenvalues theta_j of T_m, ascending
    weights: np.ndarray  # (m,) squared first components S[0, j]^2 of T_m's eigenvectors; sum 1
    alpha: np.ndarray  # (m,) diagonal of T_m (float64)
    beta: np.ndarray  # (m-1,) off-diagonal of T_m (float64)
    beta_last: float  # beta_m = ||r_m||, the coupling to the next Krylov vector
    residuals: np.ndarray  # (m,) |beta_m S[m-1, j]| = ||A y_j - theta_j y_j||
    steps: int  # m, the number of steps done (< steps_requested after a breakdown)
    steps_requested: int
    breakdown: bool  # beta fell below breakdown_rtol * ||T||: invariant subspace found
    breakdown_rtol: float  # the relative threshold used
    dim: int  # P, dimension of the operator
    basis: torch.Tensor | None = None  # (m, P) Lanczos vectors q_j as rows, when kept

    @property
    def tridiagonal(self) -> np.ndarray:
        """Dense ``T_m`` (m, m)."""
        return np.diag(self.alpha) + np.diag(self.beta, 1) + np.diag(self.beta, -1)


def gauss_quadrature(
    alpha: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes (Ritz values, ascending), weights (squared first components) and last components.

    Golub & Welsch (1969): the m-point Gauss rule of the spectral measure of ``q_1`` has nodes
    ``eig(T_m)`` and weights ``S[0, :]^2``; ``S[m-1, :]`` feeds the residual estimates.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.ndim != 1 or beta.shape != (max(alpha.size - 1, 0),):
        raise ValueError("alpha must be (m,) and beta (m-1,)")
    if alpha.size == 1:
        return alpha.copy(), np.ones(1), np.ones(1)
    theta, S = eigh_tridiagonal(alpha, beta)
    return theta, S[0, :] ** 2, S[-1, :]


def _check_steps(steps, dim: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps > dim:
        raise ValueError(
            f"steps = {steps} exceeds the operator dimension {dim}: a Krylov space has at most "
            "dim orthonormal vectors"
        )
    return steps


def _generator(generator) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int | np.integer) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError(
        "generator must be a torch.Generator (or an int seed); randomness is an explicit argument"
    )


def random_unit_vector(
    dim: int, *, generator, distribution: str = "gaussian", dtype=torch.float64, device="cpu"
) -> torch.Tensor:
    """A unit probe: normalised Gaussian (uniform on the sphere) or Rademacher vector.

    Drawn on the CPU in float64 from ``generator`` and then moved, so the same seed gives the same
    probe on every device.
    """
    g = _generator(generator)
    if distribution == "gaussian":
        v = torch.randn(dim, generator=g, dtype=torch.float64)
    elif distribution == "rademacher":
        v = torch.randint(0, 2, (dim,), generator=g).to(torch.float64) * 2 - 1
    else:
        raise ValueError(
            f"unknown probe distribution {distribution!r}; accepted: gaussian, rademacher"
        )
    return (v / torch.linalg.vector_norm(v)).to(device=device, dtype=dtype)


def lanczos(
    op,
    steps: int = PAPER_STEPS,
    *,
    generator=None,
    v0: torch.Tensor | None = None,
    breakdown_rtol: float | None = None,
    keep_basis: bool = False,
    progress: bool | None = None,
) -> LanczosResult:
    """Lanczos with full reorthogonalisation on ``op`` (``dim``, ``dtype``, ``device``, ``matvec``).

    Starts from ``v0`` (normalised) or, when ``v0`` is None, from a normalised Gaussian vector
    drawn from ``generator``. ``steps`` defaults to 100, as in the paper, section 4. Vectors live
    on the operator's device in its dtype; ``alpha``/``beta`` are returned in float64.

    Breakdown: when ``beta_j <= breakdown_rtol * ||T_j||`` (``||T_j||`` estimated by the largest
    Gershgorin radius seen so far) the Krylov space is invariant to working precision, its Ritz
    values are eigenvalues of ``op``, and the run stops early with ``breakdown=True``. The default
    ``breakdown_rtol = 10 sqrt(P) eps(dtype)``: after reorthogonalisation against an invariant
    space the remainder is rounding error of the product and of the projections, a sum of O(P)
    rounded terms, of relative size ~ sqrt(P) eps.

    ``keep_basis`` returns the ``(m, P)`` Lanczos vectors (for Ritz vectors, see
    :func:`ritz_vectors`); they are stored either way during the run (O(P m) memory).
    """
    dim = int(op.dim)
    steps = _check_steps(steps, dim)
    dtype, device = op.dtype, op.device
    eps = float(torch.finfo(dtype).eps)
    if breakdown_rtol is None:
        breakdown_rtol = 10.0 * math.sqrt(dim) * eps
    if v0 is None:
        if generator is None:
            raise ValueError("pass generator= (a torch.Generator) or a starting vector v0=")
        q = random_unit_vector(dim, generator=generator, dtype=dtype, device=device)
    else:
        v0 = torch.as_tensor(v0)
        if v0.ndim != 1 or v0.shape[0] != dim:
            raise ValueError(f"v0 must be a 1-D tensor of length {dim}, got {tuple(v0.shape)}")
        v0 = v0.to(device=device, dtype=torch.float64)
        nrm = float(torch.linalg.vector_norm(v0))
        if not np.isfinite(nrm) or nrm == 0.0:
            raise ValueError("v0 must be finite and nonzero")
        q = (v0 / nrm).to(dtype)

    Q = torch.empty((steps, dim), dtype=dtype, device=device)
    alpha = np.zeros(steps)
    beta = np.zeros(steps)  # beta[j] couples q_j and q_{j+1}; beta[m-1] is beta_m
    anorm = 0.0
    breakdown = False
    m = 0
    bar = tqdm(
        range(steps),
        desc="Lanczos",
        leave=False,
        disable=(not progress) if progress is not None else None,
    )
    for j in bar:
        Q[j] = q
        w = op.matvec(q)
        if w.shape != (dim,):
            raise ValueError(f"op.matvec returned shape {tuple(w.shape)}, expected ({dim},)")
        w = w.to(dtype)
        if j > 0:
            w.sub_(Q[j - 1], alpha=beta[j - 1])
        a = float(torch.dot(q, w))
        w.sub_(q, alpha=a)
        basis = Q[: j + 1]
        for _ in range(2):  # classical Gram-Schmidt, twice is enough
            w.sub_(basis.T @ (basis @ w))
        b = float(torch.linalg.vector_norm(w))
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"Lanczos step {j + 1}: non-finite alpha/beta ({a}, {b})")
        alpha[j] = a
        beta[j] = b
        anorm = max(anorm, abs(a) + b + (beta[j - 1] if j > 0 else 0.0))
        m = j + 1
        if b <= breakdown_rtol * anorm:
            breakdown = True
            break
        if j + 1 < steps:
            q = w / b
    bar.close()

    alpha = alpha[:m].copy()
    beta_last = float(beta[m - 1])
    beta = beta[: m - 1].copy()
    theta, weights, last = gauss_quadrature(alpha, beta)
    residuals = np.abs(beta_last * last)
    return LanczosResult(
        ritz_values=theta,
        weights=weights,
        alpha=alpha,
        beta=beta,
        beta_last=beta_last,
        residuals=residuals,
        steps=m,
        steps_requested=steps,
        breakdown=breakdown,
        breakdown_rtol=float(breakdown_rtol),
        dim=dim,
        basis=Q[:m] if keep_basis else None,
    )


def ritz_vectors(result: LanczosResult, indices=None) -> torch.Tensor:
    """Ritz vectors ``y_j = Q_m s_j`` as rows ``(k, P)`` (all when ``indices`` is None).

    Needs ``lanczos(..., keep_basis=True)``. ``indices`` refer to ``result.ritz_values``.
    """
    if result.basis is None:
        raise ValueError("the Lanczos basis was not kept: run lanczos(..., keep_basis=True)")
    if result.steps == 1:
        S = np.ones((1, 1))
    else:
        _, S = eigh_tridiagonal(result.alpha, result.beta)
    if indices is not None:
        S = S[:, np.atleast_1d(indices)]
    S_t = torch.as_tensor(S, dtype=result.basis.dtype, device=result.basis.device)
    return S_t.T @ result.basis


# ---------------------------------------------------------------------------------------------
# stochastic Lanczos quadrature
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLQResult:
    """Raw per-probe quadratures; rows of runs that broke down early are padded.

    Padding: ``ritz_values`` NaN, ``weights`` 0, ``residuals`` NaN after ``steps_done[p]``.
    """

    ritz_values: np.ndarray  # (probes, steps) nodes per probe, ascending, NaN-padded
    weights: np.ndarray  # (probes, steps) Gauss weights per probe, each row sums to 1, 0-padded
    residuals: np.ndarray  # (probes, steps) residual estimates, NaN-padded
    steps_done: np.ndarray  # (probes,) Lanczos steps actually done
    breakdown: np.ndarray  # (probes,) bool
    steps: int  # steps requested per probe
    probes: int
    distribution: str  # probe law: "gaussian" or "rademacher"
    seeds: tuple[int, ...]  # per-probe seeds drawn from the generator, in probe order
    dim: int  # P
    runs: tuple[LanczosResult, ...]  # the individual runs (tridiagonals included)


def slq(
    op,
    steps: int = PAPER_STEPS,
    probes: int = 5,
    *,
    generator,
    distribution: str = "gaussian",
    progress: bool | None = None,
) -> SLQResult:
    """Stochastic Lanczos quadrature: ``probes`` independent Lanczos runs of ``steps`` steps.

    Probe p starts from a unit vector drawn from ``torch.Generator().manual_seed(seeds[p])``
    where ``seeds`` are drawn from ``generator``; 5 probes by default (more probes lower the
    variance of density and moment estimates as 1/probes; more steps lower the quadrature bias).
    Smoothing is left to :func:`smooth_density` so re-smoothing never repeats an HVP.
    """
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    steps = _check_steps(steps, int(op.dim))
    g = _generator(generator)
    seeds = tuple(int(s) for s in torch.randint(0, 2**62, (probes,), generator=g))
    runs = []
    for seed in seeds:
        v0 = random_unit_vector(
            op.dim,
            generator=torch.Generator().manual_seed(seed),
            distribution=distribution,
            dtype=op.dtype,
            device=op.device,
        )
        runs.append(lanczos(op, steps, v0=v0, progress=progress))
    nodes = np.full((probes, steps), np.nan)
    weights = np.zeros((probes, steps))
    resid = np.full((probes, steps), np.nan)
    for p, r in enumerate(runs):
        nodes[p, : r.steps] = r.ritz_values
        weights[p, : r.steps] = r.weights
        resid[p, : r.steps] = r.residuals
    return SLQResult(
        ritz_values=nodes,
        weights=weights,
        residuals=resid,
        steps_done=np.array([r.steps for r in runs]),
        breakdown=np.array([r.breakdown for r in runs]),
        steps=steps,
        probes=probes,
        distribution=distribution,
        seeds=seeds,
        dim=int(op.dim),
        runs=tuple(runs),
    )


def quadrature_moments(nodes: np.ndarray, weights: np.ndarray, orders) -> np.ndarray:
    """``sum_j w_j theta_j^k`` per probe and order: shape ``(..., len(orders))``.

    Each is a Gauss-quadrature estimate of ``q^T A^k q`` (exact for ``k <= 2m - 1``); its mean over
    probes estimates ``tr(A^k) / P``. NaN-padded nodes with zero weight are ignored.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    safe = np.where(weights > 0, np.nan_to_num(nodes), 0.0)
    ks = np.atleast_1d(np.asarray(orders))
    return np.stack([(weights * safe**k).sum(axis=-1) for k in ks], axis=-1)


def smooth_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, width: float
) -> np.ndarray:
    """Spectral density on ``grid``: Gaussian kernels of standard deviation ``width``.

    ``rho(x) = mean_p sum_j w_pj N(x; theta_pj, width^2)`` (Lin, Saad & Yang 2016, eq. 3.9; the
    kernel form of Ghorbani et al. 2019). Integrates to 1 over the real line. ``width`` trades
    bias (larger: smeared spectrum) for variance (smaller: spiky). Nodes ``(m,)`` or
    ``(probes, m)``; NaN-padded nodes with zero weight are ignored. Pure function: no HVPs.
    """
    if not np.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
    grid = np.asarray(grid, dtype=np.float64)
    keep = weights > 0
    th = nodes[keep]
    w = weights[keep] / nodes.shape[0]
    z = (grid[..., None] - th) / width
    return (np.exp(-0.5 * z * z) * w).sum(axis=-1) / (width * math.sqrt(2 * math.pi))


# ---------------------------------------------------------------------------------------------
# extreme eigenvalues
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtremeEigenvalues:
    """Extreme Ritz values with the evidence that they have converged.

    ``largest`` is the largest top Ritz value over the runs: by Cauchy interlacing every Ritz
    value is <= lambda_max, so the largest is the best lower bound; ``largest_residual`` is its
    residual estimate, and some eigenvalue of the operator lies in
    ``[largest - largest_residual, largest + largest_residual]``. ``largest_per_probe`` shows the
    agreement across independent starts. The same for ``smallest`` (an upper bound on lambda_min).
    """

    largest: float
    smallest: float
    largest_residual: float
    smallest_residual: float
    largest_per_probe: np.ndarray  # (probes,) top Ritz value of each run
    smallest_per_probe: np.ndarray  # (probes,) bottom Ritz value of each run
    largest_residual_per_probe: np.ndarray  # (probes,)
    smallest_residual_per_probe: np.ndarray  # (probes,)

    @property
    def largest_spread(self) -> float:
        """max - min of the top Ritz values across probes."""
        return float(np.ptp(self.largest_per_probe))

    @property
    def smallest_spread(self) -> float:
        return float(np.ptp(self.smallest_per_probe))

    def converged(self, rtol: float = 1e-3) -> bool:
        """Residuals and cross-probe spreads both below ``rtol * max(|largest|, |smallest|)``."""
        scale = max(abs(self.largest), abs(self.smallest))
        tol = rtol * scale
        return bool(
            self.largest_residual <= tol
            and self.smallest_residual <= tol
            and self.largest_spread <= tol
            and self.smallest_spread <= tol
        )


def extreme_eigenvalues(result: LanczosResult | SLQResult) -> ExtremeEigenvalues:
    """Extreme eigenvalue estimates from one Lanczos run or from every SLQ probe."""
    runs = result.runs if isinstance(result, SLQResult) else (result,)
    top = np.array([r.ritz_values[-1] for r in runs])
    bot = np.array([r.ritz_values[0] for r in runs])
    rtop = np.array([r.residuals[-1] for r in runs])
    rbot = np.array([r.residuals[0] for r in runs])
    i, k = int(np.argmax(top)), int(np.argmin(bot))
    return ExtremeEigenvalues(
        largest=float(top[i]),
        smallest=float(bot[k]),
        largest_residual=float(rtop[i]),
        smallest_residual=float(rbot[k]),
        largest_per_probe=top,
        smallest_per_probe=bot,
        largest_residual_per_probe=rtop,
        smallest_residual_per_probe=rbot,
    )
