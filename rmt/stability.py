r"""Mean-square linear stability of SGD: the exact threshold of a quadratic model.

Setting (Wu, Ma & E, "How SGD selects the global minima in over-parameterized learning", NeurIPS
2018, section 2): near a minimum w* of a loss that is a mean of per-sample quadratics -- e.g. the
linear least-squares loss ``(1/2N) sum_i (x_i^T w - y_i)^2`` with interpolating targets -- the
error ``e = w - w*`` of SGD with a constant learning rate eta and a batch of B samples moves as

    e_{k+1} = (I - eta H_B) e_k,        H_B = (1/B) sum_{i in batch} H_i,  H_i = x_i x_i^T,

with a fresh batch drawn uniformly *without replacement* (a uniform B-subset of the N samples)
at every step. Its second moment ``M_k = E[e_k e_k^T]`` obeys the linear map

    M_{k+1} = T(M_k),   T(M) = E_B[(I - eta H_B) M (I - eta H_B)],
    as a P^2 x P^2 matrix  T(eta) = E_B[(I - eta H_B) (x) (I - eta H_B)] = I - eta A + eta^2 C,
    A = H (x) I + I (x) H,  C = E_B[H_B (x) H_B].

SGD is mean-square stable when ``rho(T(eta)) <= 1``; the threshold eta* is the largest such eta.

Exact solution (this module). T is self-adjoint (Frobenius inner product) and maps the PSD cone
into itself, so its spectral radius is its largest eigenvalue (Krein-Rutman), and each
eigenvalue's Rayleigh quotient is a convex quadratic in eta: ``{eta >= 0: rho <= 1}`` is an
interval [0, eta*] and ``rho(T(eta)) <= 1  <=>  eta C <= A`` (Loewner order). Hence

    eta* = 1 / mu_max,   mu_max = the largest generalised eigenvalue of C u = mu A u on range(A)

(on ker A = ker(H (x) I + I (x) H) every H_i, hence C, vanishes). No bisection, no sampling.

C exactly, two ways (they agree to rounding; the tests compare them):

* closed form: the mean of B samples drawn without replacement has covariance
  ``f(N, B) Sigma`` with the finite-population factor ``f = (N - B)/(B (N - 1))`` and
  ``Sigma = (1/N) sum_i (H_i - H) (x) (H_i - H)`` (Cochran, *Sampling Techniques*, 3rd ed.,
  thm. 2.2; 1/N convention), so ``C = H (x) H + f Sigma``;
* enumeration of all C(N, B) batches (:func:`enumerated_batch_moment`; small N only).

The paper's factor (N - B)/(B N) or the with-replacement 1/B in place of f gives another eta*.

Reference values:

* gradient descent (B = N, f = 0): ``eta* = 2 / lambda_max(H)`` exactly
  (:func:`gd_threshold`); heavy-ball momentum mu: ``2 (1 + mu) / lambda_max`` (Polyak 1964; the
  characteristic roots of ``z^2 - (1 + mu - eta lambda) z + mu`` leave the unit disc at
  ``eta lambda = 2 (1 + mu)``);
* Wu, Ma & E's condition along the top eigenvector v of H (:func:`wu_ma_e_threshold`):
  ``(1 - eta a)^2 + eta^2 f s^2 <= 1`` with the sharpness ``a = v^T H v`` and the non-uniformity
  ``s^2 = mean_i ||H_i v||^2 - a^2``, i.e. ``eta <= 2 a / (a^2 + f s^2)``. It is the condition
  ``v^T T(I) v <= 1``. When every H_i shares H's eigenvectors, T leaves diagonal matrices
  invariant and ``eta* = min_j 2 a_j / (a_j^2 + f s_j^2)`` over the eigen-directions j: the
  condition is then necessary, and exact when the top eigenvector carries the instability
  (strictly looser when a lower direction does). In general it is NOT necessary (the tests
  hold a case where it forbids a mean-square stable eta); what holds always is the bracket
  ``sufficient <= eta*, Wu-Ma-E <= Rayleigh``: the form with ``(v^T H_i v)^2`` in place of
  ``||H_i v||^2`` is ``<v v^T, T(v v^T)> <= 1``, a Rayleigh quotient of T, hence necessary
  (:func:`rayleigh_threshold`), and ``lambda_max(T(I)) <= 1`` is sufficient
  (:func:`sufficient_threshold`: then ``T(M) <= ||M|| T(I) <= ||M|| I`` for every PSD M).

SGD runs (:func:`sgd_runs`, :func:`measured_eta_max`): R trajectories in parallel, batches drawn
uniformly without replacement, divergence when the mean loss over the runs exceeds ``factor``
times its start within T steps; eta_max by bisection on a log grid. The run length shifts it
above eta* by at most the eta where ``rho(T(eta))^T = factor`` (:func:`run_length_eta`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from rmt.theory import FACTORS

# Finite-population factors of Var(H_B) = f Sigma (1/N convention for Sigma): the exact factor
# for sampling without replacement, the paper's, and sampling with replacement.
STABILITY_FACTORS = {
    "exact": FACTORS["exact"],
    "paper": FACTORS["paper"],
    "with-replacement": lambda N, B: 1.0 / np.asarray(B, dtype=float),
}
ENUMERATION_MAX = 200_000  # batches enumerated at most (C(N, B) x P^4 numbers each)


@dataclass(frozen=True)
class StabilityThreshold:
    """The exact mean-square threshold and the quantities around it."""

    eta: float  # eta* = 1 / mu_max
    N: int
    B: int
    factor: str  # key of STABILITY_FACTORS used for C
    gd: float  # 2 / lambda_max(H)
    wu_ma_e: float  # 2 a / (a^2 + f s^2) along the top eigenvector
    sharpness: float  # a = lambda_max(H)
    nonuniformity: float  # s^2 = mean_i ||H_i v||^2 - a^2


def per_sample_hessians(X) -> np.ndarray:
    """``(N, P, P)``: ``H_i = x_i x_i^T`` of the linear least-squares loss, rows of ``X (N, P)``."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be (N, P), got shape {X.shape}")
    return np.einsum("ni,nj->nij", X, X)


def _check(H_i, B) -> tuple[np.ndarray, int, int]:
    H_i = np.asarray(H_i, dtype=float)
    if H_i.ndim != 3 or H_i.shape[1] != H_i.shape[2]:
        raise ValueError(f"per-sample Hessians must be (N, P, P), got shape {H_i.shape}")
    N = H_i.shape[0]
    if isinstance(B, bool) or int(B) != B or not 1 <= B <= N:
        raise ValueError(f"B must be an integer in [1, N = {N}], got {B}")
    if N < 2 and B < N:
        raise ValueError("N must be >= 2")
    return H_i, N, int(B)


def closed_form_batch_moment(H_i, B: int, *, factor: str = "exact") -> np.ndarray:
    """``C = E_B[H_B (x) H_B] = H (x) H + f(N, B) Sigma`` (P^2 x P^2), Sigma the 1/N covariance of
    the H_i; ``factor`` names f in :data:`STABILITY_FACTORS` (only "exact" is the truth)."""
    H_i, N, B = _check(H_i, B)
    if factor not in STABILITY_FACTORS:
        raise ValueError(f"unknown factor {factor!r}; accepted: {', '.join(STABILITY_FACTORS)}")
    H = H_i.mean(axis=0)
    D = H_i - H
    P = H.shape[0]
    f = float(STABILITY_FACTORS[factor](N, B)) if B < N else 0.0
    Sigma = np.einsum("nik,njl->ijkl", D, D).reshape(P * P, P * P) / N  # mean of D_i (x) D_i
    return np.kron(H, H) + f * Sigma


def enumerated_batch_moment(H_i, B: int) -> np.ndarray:
    """``C = E_B[H_B (x) H_B]`` as the mean over all C(N, B) batches (no formula involved)."""
    H_i, N, B = _check(H_i, B)
    count = math.comb(N, B)
    if count > ENUMERATION_MAX:
        raise ValueError(f"C({N}, {B}) = {count:,} batches exceed {ENUMERATION_MAX:,}")
    P = H_i.shape[1]
    C = np.zeros((P * P, P * P))
    for batch in itertools.combinations(range(N), B):
        HB = H_i[list(batch)].mean(axis=0)
        C += np.kron(HB, HB)
    return C / count


def kron_sum(H) -> np.ndarray:
    """``A = H (x) I + I (x) H`` (P^2 x P^2)."""
    eye = np.eye(H.shape[0])
    return np.kron(H, eye) + np.kron(eye, H)


def second_moment_map(H, C, eta: float) -> np.ndarray:
    """``T(eta) = I - eta A + eta^2 C`` (P^2 x P^2), A = :func:`kron_sum` of the mean H."""
    A = kron_sum(H)
    return np.eye(A.shape[0]) - eta * A + eta**2 * C


def spectral_radius(T) -> float:
    """``max |eigenvalue|`` of a matrix (T(eta) is symmetric: its eigenvalues are real)."""
    return float(np.max(np.abs(linalg.eigvalsh(0.5 * (T + T.T)))))


def threshold_from_moments(H, C) -> float:
    """eta* = 1 / mu_max with ``C u = mu A u`` on range(A) (module docstring); inf when C = 0."""
    A = kron_sum(H)
    w, U = linalg.eigh(A)
    keep = w > w.max() * 1e-12 * A.shape[0]
    Q = U[:, keep] / np.sqrt(w[keep])  # A^(-1/2) on range(A)
    mu = linalg.eigvalsh(Q.T @ C @ Q)[-1]
    return float(1.0 / mu) if mu > 0 else math.inf


def gd_threshold(lambda_max: float, momentum: float = 0.0) -> float:
    """Gradient descent (heavy ball with ``momentum`` mu): ``2 (1 + mu) / lambda_max``."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return 2.0 * (1.0 + momentum) / lambda_max


def wu_ma_e_inputs(H_i) -> tuple[float, float, np.ndarray]:
    """``(a, s^2, v)``: sharpness, non-uniformity ``mean_i ||H_i v||^2 - a^2`` and the top
    eigenvector v of H = mean_i H_i."""
    H_i = np.asarray(H_i, dtype=float)
    w, U = linalg.eigh(H_i.mean(axis=0))
    v = U[:, -1]
    Hv = H_i @ v  # (N, P)
    a = float(w[-1])
    return a, float(np.mean(np.sum(Hv**2, axis=1)) - a**2), v


def wu_ma_e_threshold(a, s2, N, B, *, factor: str = "exact"):
    """Largest eta with ``(1 - eta a)^2 + eta^2 f s^2 <= 1``: ``2 a / (a^2 + f s^2)`` (vectorised;
    f = 0 at B = N: gradient descent's 2 / a)."""
    a, s2 = np.asarray(a, dtype=float), np.asarray(s2, dtype=float)
    B = np.asarray(B, dtype=float)
    f = np.where(B < N, STABILITY_FACTORS[factor](N, B), 0.0)
    return 2.0 * a / (a**2 + f * s2)


def rayleigh_threshold(H_i, B: int, *, factor: str = "exact") -> float:
    """Largest eta with ``<v v^T, T(eta) v v^T> <= 1`` (v the top eigenvector of H): Wu-Ma-E's
    form with ``(v^T H_i v)^2``; a Rayleigh quotient of T, so ``>= eta*`` always."""
    H_i, N, B = _check(H_i, B)
    a, _, v = wu_ma_e_inputs(H_i)
    q = np.einsum("i,nij,j->n", v, H_i, v)
    return float(wu_ma_e_threshold(a, np.mean(q**2) - a**2, N, B, factor=factor))


def sufficient_threshold(H_i, B: int, *, factor: str = "exact", tol: float = 1e-12) -> float:
    """Largest eta with ``lambda_max(T(eta)(I)) <= 1``, ``T(I) = (I - eta H)^2 + eta^2 f
    Sigma_1``, ``Sigma_1 = mean_i (H_i - H)^2``: sufficient for stability, so ``<= eta*``."""
    H_i, N, B = _check(H_i, B)
    H = H_i.mean(axis=0)
    f = float(STABILITY_FACTORS[factor](N, B)) if B < N else 0.0
    S1 = np.einsum("nij,njk->ik", H_i - H, H_i - H) / N
    eye = np.eye(H.shape[0])

    def excess(eta):
        step = eye - eta * H
        return linalg.eigvalsh(step @ step + eta**2 * f * S1)[-1] - 1.0

    lo, hi = 0.0, 2.0 / linalg.eigvalsh(H)[-1]  # excess(hi) >= 0: the GD part alone reaches 1
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) <= 0 else (lo, mid)
    return lo


def exact_threshold(H_i, B: int, *, factor: str = "exact") -> StabilityThreshold:
    """The exact mean-square threshold of SGD with batches of B drawn without replacement."""
    H_i, N, B = _check(H_i, B)
    H = H_i.mean(axis=0)
    C = closed_form_batch_moment(H_i, B, factor=factor)
    a, s2, _ = wu_ma_e_inputs(H_i)
    return StabilityThreshold(
        eta=threshold_from_moments(H, C),
        N=N,
        B=B,
        factor=factor,
        gd=gd_threshold(a),
        wu_ma_e=float(wu_ma_e_threshold(a, s2, N, B, factor=factor)),
        sharpness=a,
        nonuniformity=s2,
    )


def run_length_eta(H_i, B: int, steps: int, factor: float, *, tol: float = 1e-10) -> float:
    """The eta above eta* where ``rho(T(eta))^steps = factor``: with no transient growth, T steps
    cannot exceed ``factor`` times the start below it (rho is convex and increasing past eta*)."""
    H_i, N, B = _check(H_i, B)
    H = H_i.mean(axis=0)
    C = closed_form_batch_moment(H_i, B)
    lo = threshold_from_moments(H, C)
    target = factor ** (1.0 / steps)
    hi = 2.0 * lo
    while spectral_radius(second_moment_map(H, C, hi)) < target:
        hi *= 2.0
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spectral_radius(second_moment_map(H, C, mid)) < target else (lo, mid)
    return hi


def sgd_runs(X, B: int, eta: float, *, steps: int, runs: int, e0, rng) -> np.ndarray:
    """``(steps + 1,)`` mean over ``runs`` trajectories of the loss ``(1/2N) ||X e_k||^2`` of SGD
    on the interpolating least-squares problem (error ``e_k = w_k - w*``), a fresh uniform batch
    of B distinct samples per step and run; every run starts at ``e0``."""
    rng = np.random.default_rng(rng)
    X = np.asarray(X, dtype=float)
    N = X.shape[0]
    E = np.tile(np.asarray(e0, dtype=float), (runs, 1))  # (runs, P)
    losses = [0.5 * np.mean((E @ X.T) ** 2)]
    for _ in range(steps):
        batches = np.argsort(rng.random((runs, N)), axis=1)[:, :B]  # (runs, B) uniform subsets
        Xb = X[batches]  # (runs, B, P)
        residual = np.einsum("rbp,rp->rb", Xb, E)
        E = E - (eta / B) * np.einsum("rbp,rb->rp", Xb, residual)
        losses.append(0.5 * np.mean((E @ X.T) ** 2))
        if not np.isfinite(losses[-1]):
            break
    return np.array(losses)


def log_bisection(stable, lo: float, hi: float, *, rel: float) -> tuple[float, float]:
    """``(largest eta found stable, smallest found unstable)`` by bisection in log eta between a
    stable ``lo`` and an unstable ``hi``, until ``hi / lo <= 1 + rel``."""
    if not stable(lo) or stable(hi):
        raise ValueError("bisection needs a stable lower end and an unstable upper end")
    while hi / lo > 1.0 + rel:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo, hi


def measured_eta_max(
    X, B: int, *, steps: int, runs: int, factor: float, rel: float, lo: float, hi: float, rng
) -> tuple[float, float]:
    """SGD's eta_max by :func:`log_bisection`: eta is stable when the mean loss of ``runs``
    trajectories (same seed at every eta: common random numbers) stays finite and
    ``<= factor`` times its start for ``steps`` steps; start ``e0 = (1, ..., 1)``."""
    seed = int(np.random.default_rng(rng).integers(2**63))
    e0 = np.ones(np.asarray(X).shape[1])

    def stable(eta):
        loss = sgd_runs(X, B, eta, steps=steps, runs=runs, e0=e0, rng=seed)
        return bool(np.all(np.isfinite(loss)) and loss.max() <= factor * loss[0])

    return log_bisection(stable, lo, hi, rel=rel)
