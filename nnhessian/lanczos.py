"""Lanczos tridiagonalisation and stochastic Lanczos quadrature (SLQ) of a symmetric operator.

Lanczos (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, 4th ed., section 10.1) builds an
orthonormal basis ``Q_m = [q_1..q_m]`` of the Krylov space of ``A`` and ``q_1 = v0/||v0||`` in which
``A`` is tridiagonal: ``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T`` with ``T_m`` holding ``alpha``
on the diagonal and ``beta_1..beta_{m-1}`` off it. In floating point the basis loses
orthogonality as Ritz values converge (Paige 1971) and ghost copies appear; here every new vector
is re-orthogonalised against the whole stored basis by classical Gram-Schmidt, a second pass
taken only when the first cancels (the norm falls below ``1/sqrt(2)`` of what it was: Daniel,
Gragg, Kaufman & Stewart 1976, the criterion of :data:`REORTH_KEEP`; two passes are always
enough, Giraud, Langou & Rozloznik 2005), so ``Q_m`` stays orthonormal to working precision at
``O(P m)`` memory and ``O(P m^2)`` extra flops. The three-term recurrence has already removed
``q_j`` and ``q_{j-1}``, so the first pass removes only rounding and a second is rarely taken
(near breakdown, where ``beta_j`` is itself of rounding size).

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

Lockstep (:func:`slq`, :func:`second_moments`): independent probes advanced together share each
data pass -- one forward + backward per batch and one reverse pass per probe
(:meth:`nnhessian.operators.HessianOperator.matvec_many`) -- with bit-identical results.

Long runs: :func:`lanczos` and :func:`slq` take ``state_dir`` and ``save_every`` and resume from
the last save after a kill, bit-identically on the CPU (:mod:`nnhessian.checkpoint`). With a
sharded operator (:mod:`nnhessian.distributed`) the loop runs on every rank with identical
vectors and only the products are distributed.

Post-processing of the nodes and weights needs no torch and lives in :mod:`rmt.spectra`;
:func:`quadrature_moments` and :func:`smooth_density` are re-exported here from there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from tqdm import tqdm

from nnhessian.checkpoint import (
    DEFAULT_SAVE_EVERY,
    RunState,
    StateCorruptError,
    check_save_every,
    config_fingerprint,
    generator_state_hash,
    tensor_sha256,
)
from rmt.spectra import quadrature_moments, smooth_density  # re-exported: pure numpy

__all__ = [
    "DEFAULT_LOCKSTEP_BYTES",
    "LanczosResult",
    "LanczosRun",
    "as_generator",
    "check_steps",
    "gauss_quadrature",
    "lanczos",
    "quadrature_moments",
    "random_unit_vector",
    "result_from_state",
    "ritz_vectors",
    "smooth_density",
]

# Daniel, Gragg, Kaufman & Stewart (1976): a Gram-Schmidt pass that keeps at least 1/sqrt(2) of
# the norm removed components of relative size <= ~eps, so the vector is orthogonal to working
# precision; one that keeps less cancelled and needs a second pass.
REORTH_KEEP = 1.0 / math.sqrt(2.0)
PAPER_STEPS = 100  # paper, section 4: "We use m = 100 for our Experiments"
# Memory for the Lanczos bases of SLQ probes advanced together (:func:`lockstep_probes`).
DEFAULT_LOCKSTEP_BYTES = 8 * 2**30
PROBE_DISTRIBUTIONS = ("gaussian", "rademacher")


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


def check_steps(steps, dim: int) -> int:
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


def as_generator(generator) -> torch.Generator:
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
    g = as_generator(generator)
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
    state_dir: str | os.PathLike | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
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

    Resumable (:mod:`nnhessian.checkpoint`): with ``state_dir`` the basis, coefficients, step
    index and generator state are saved there every ``save_every`` steps (default 10) and at the
    end. Called again with the same arguments, the run continues from the last save -- or returns
    the finished result without a product -- with bit-identical results on the CPU, and leaves
    ``generator`` where an uninterrupted run leaves it. A state of another configuration
    (operator, weights, data, steps, start) raises
    :class:`~nnhessian.checkpoint.StateMismatchError`.

    Distributed (``op.sharding`` set, :mod:`nnhessian.distributed`): every rank runs this loop;
    the start vector and each new Lanczos vector (with its alpha and beta) are broadcast from
    rank 0, one P-vector per step beside a full-data product, so the ranks hold identical
    vectors even where GPU kernels are not bitwise reproducible. Only rank 0 writes the state.
    """
    dim = int(op.dim)
    steps = check_steps(steps, dim)
    dtype, device = op.dtype, op.device
    eps = float(torch.finfo(dtype).eps)
    if breakdown_rtol is None:
        breakdown_rtol = 10.0 * math.sqrt(dim) * eps
    g, q0 = _start(generator, v0, dim, dtype, device)

    run = LanczosRun(op, steps, float(breakdown_rtol))
    store = payload = basis = None
    if state_dir is not None:
        check_save_every(save_every)
        start = {"generator": generator_state_hash(g)} if g is not None else {}
        if q0 is not None:
            start["v0_sha256"] = tensor_sha256(q0)
        fp = config_fingerprint(
            "lanczos", op, steps=steps, breakdown_rtol=float(breakdown_rtol), **start
        )
        store = RunState(state_dir, fp, sharding=run.sharding)
        payload, basis = store.load()
    if payload is not None:
        gen_after = payload["generator_after"]
        if g is not None:
            g.set_state(gen_after)
        run.restore(payload["lanczos"], basis)
    else:
        if q0 is None:
            q0 = random_unit_vector(dim, generator=g, dtype=dtype, device=device)
        gen_after = g.get_state() if g is not None else None
        run.start(q0)
    checkpoint = None
    if store is not None:
        checkpoint = _Checkpoint(
            store,
            "run",
            lambda r: {"generator_after": gen_after, "lanczos": r.state()},
            save_every,
            keep_final_basis=True,
        )
    run.run(progress=progress, checkpoint=checkpoint, desc="Lanczos")
    return run.result(keep_basis=keep_basis)


def _start(generator, v0, dim: int, dtype, device):
    """``(generator, None)`` to draw the start from, or ``(None, v0 normalised)``."""
    if v0 is None:
        if generator is None:
            raise ValueError("pass generator= (a torch.Generator) or a starting vector v0=")
        return as_generator(generator), None
    v0 = torch.as_tensor(v0)
    if v0.ndim != 1 or v0.shape[0] != dim:
        raise ValueError(f"v0 must be a 1-D tensor of length {dim}, got {tuple(v0.shape)}")
    v0 = v0.to(device=device, dtype=torch.float64)
    nrm = float(torch.linalg.vector_norm(v0))
    if not np.isfinite(nrm) or nrm == 0.0:
        raise ValueError("v0 must be finite and nonzero")
    return None, (v0 / nrm).to(dtype)


class LanczosRun:
    """One Lanczos run: basis, coefficients and step index; steps; (de)serialisation."""

    def __init__(self, op, steps: int, breakdown_rtol: float) -> None:
        self.op = op
        self.dim = int(op.dim)
        self.steps = steps
        self.breakdown_rtol = breakdown_rtol
        self.sharding = getattr(op, "sharding", None)
        self.Q = torch.empty((steps, self.dim), dtype=op.dtype, device=op.device)
        self.alpha = np.zeros(steps)
        self.beta = np.zeros(steps)  # beta[j] couples q_j and q_{j+1}; beta[m-1] is beta_m
        self.m = 0  # completed steps
        self.rows = 0  # basis rows filled: m + 1 while running (the next vector), m when done
        self.anorm = 0.0
        self.breakdown = False
        self.saved_rows = 0  # rows already in basis segments on disk
        self.segments: list[str] = []

    @property
    def done(self) -> bool:
        return self.breakdown or self.m == self.steps

    def start(self, q: torch.Tensor) -> None:
        if self.sharding is not None:
            q = q.clone()
            self.sharding.broadcast_(q)
        self.Q[0] = q
        self.rows = 1

    @property
    def current(self) -> torch.Tensor:
        """``q_j``, the vector the next step multiplies (a row of the basis)."""
        return self.Q[self.m]

    def step(self, w: torch.Tensor | None = None) -> None:
        """One Lanczos step; ``w = A q_j`` when the product was computed by the caller."""
        j, Q, dim = self.m, self.Q, self.dim
        q = Q[j]
        if w is None:
            w = self.op.matvec(q)
        if w.shape != (dim,):
            raise ValueError(f"op.matvec returned shape {tuple(w.shape)}, expected ({dim},)")
        w = w.to(Q.dtype)
        if j > 0:
            w.sub_(Q[j - 1], alpha=self.beta[j - 1])
        a = float(torch.dot(q, w))
        w.sub_(q, alpha=a)
        basis = Q[: j + 1]
        before = float(torch.linalg.vector_norm(w))
        w.sub_(basis.T @ (basis @ w))  # classical Gram-Schmidt
        b = float(torch.linalg.vector_norm(w))
        if b < REORTH_KEEP * before:  # it cancelled: once more (twice is enough)
            w.sub_(basis.T @ (basis @ w))
            b = float(torch.linalg.vector_norm(w))
        if self.sharding is not None:  # rank 0's vector and coefficients everywhere
            ab = torch.tensor([a, b], dtype=torch.float64, device=w.device)
            self.sharding.broadcast_(w)
            self.sharding.broadcast_(ab)
            a, b = (float(x) for x in ab.tolist())
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"Lanczos step {j + 1}: non-finite alpha/beta ({a}, {b})")
        self.alpha[j] = a
        self.beta[j] = b
        self.anorm = max(self.anorm, abs(a) + b + (self.beta[j - 1] if j > 0 else 0.0))
        self.m = j + 1
        self.rows = self.m
        if b <= self.breakdown_rtol * self.anorm:
            self.breakdown = True
        elif self.m < self.steps:
            Q[self.m] = w / b
            self.rows = self.m + 1

    def run(self, *, progress, checkpoint, desc: str) -> None:
        bar = tqdm(
            total=self.steps,
            initial=self.m,
            desc=desc,
            leave=False,
            disable=(not progress) if progress is not None else None,
        )
        while not self.done:
            self.step()
            bar.update(1)
            if checkpoint is not None and (self.done or self.m % checkpoint.every == 0):
                checkpoint(self)
        bar.close()

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        m = self.m
        return {
            "m": m,
            "rows": self.rows,
            "alpha": torch.from_numpy(self.alpha[:m].copy()),
            "beta": torch.from_numpy(self.beta[:m].copy()),
            "anorm": float(self.anorm),
            "breakdown": bool(self.breakdown),
            "segments": list(self.segments),
        }

    def restore(self, state: dict, basis: torch.Tensor | None) -> None:
        m, rows = int(state["m"]), int(state["rows"])
        if not (0 <= m <= self.steps and rows in (m, m + 1) and 1 <= rows <= self.steps):
            raise StateCorruptError(f"inconsistent Lanczos state: m = {m}, rows = {rows}")
        if basis is None or tuple(basis.shape) != (rows, self.dim):
            got = None if basis is None else tuple(basis.shape)
            raise StateCorruptError(
                f"the saved Lanczos basis has shape {got}, expected ({rows}, {self.dim})"
            )
        self.Q[:rows] = basis.to(device=self.Q.device, dtype=self.Q.dtype)
        self.alpha[:m] = state["alpha"].numpy()
        self.beta[:m] = state["beta"].numpy()
        self.m, self.rows = m, rows
        self.anorm = float(state["anorm"])
        self.breakdown = bool(state["breakdown"])
        self.saved_rows = rows
        self.segments = list(state["segments"])

    def result(self, *, keep_basis: bool) -> LanczosResult:
        return _make_result(
            self.alpha,
            self.beta,
            self.m,
            steps=self.steps,
            breakdown=self.breakdown,
            breakdown_rtol=self.breakdown_rtol,
            dim=self.dim,
            basis=self.Q[: self.m] if keep_basis else None,
        )


def _make_result(alpha, beta, m, *, steps, breakdown, breakdown_rtol, dim, basis) -> LanczosResult:
    alpha = np.asarray(alpha, dtype=np.float64)[:m].copy()
    beta = np.asarray(beta, dtype=np.float64)
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
        basis=basis,
    )


def result_from_state(state: dict, *, steps, breakdown_rtol, dim) -> LanczosResult:
    m = int(state["m"])
    return _make_result(
        state["alpha"].numpy(),
        state["beta"].numpy(),
        m,
        steps=steps,
        breakdown=bool(state["breakdown"]),
        breakdown_rtol=breakdown_rtol,
        dim=dim,
        basis=None,
    )


class _Checkpoint:
    """Saves a run: appends its new basis rows as a segment, then replaces the state file.

    ``wrap(run)`` builds the payload; at the end of the run the basis is written only with
    ``keep_final_basis`` (a finished SLQ probe needs only its coefficients).
    """

    def __init__(self, store: RunState, tag: str, wrap, every: int, *, keep_final_basis: bool):
        self.store = store
        self.tag = tag
        self.wrap = wrap
        self.every = every
        self.keep_final_basis = keep_final_basis

    def __call__(self, run: LanczosRun) -> None:
        keep = self.keep_final_basis or not run.done
        if keep and run.rows > run.saved_rows:
            name = self.store.write_segment(
                self.tag, run.saved_rows, run.Q[run.saved_rows : run.rows]
            )
            run.segments.append(name)
            run.saved_rows = run.rows
        self.store.save(self.wrap(run), basis=run.segments if keep else [])


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
