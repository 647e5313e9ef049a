"""Exact band model of low rank + GOE: extreme eigenpairs at any P in O(k^2 P^(1/3)) memory.

``band_extremes`` samples what ``rmt.samplers.dense_extremes`` samples, at any P.

Model. ``M = A + W`` is P x P, ``W`` GOE of noise scale ``t`` (off-diagonal entries N(0, s^2),
diagonal N(0, 2 s^2), s^2 = t / P, all independent) and ``A`` has rank k with eigenvalues
``spikes``. ``W`` is orthogonally invariant, so ``A = diag(spikes, 0, ..., 0)`` may be taken on the
first k coordinates without changing the joint law of the eigenvalues of ``M`` and of the squared
overlaps of its eigenvectors with the spike directions (these become the first k coordinates).

Reduction (block Householder, Bartlett). Split ``M = [[M11, M21^T], [M21, M22]]`` with ``M11``
k x k. ``M21`` is a (P - k) x k matrix of i.i.d. N(0, s^2) entries, independent of ``M11`` and of
``M22``. Its Householder QR ``M21 = H [R; 0]`` has, by Bartlett's decomposition, an upper
triangular ``R`` with independent entries: ``R_jj = s chi_{P-k-j}`` (j = 0..k-1, chosen >= 0) and
``R_ij ~ N(0, s^2)`` for i < j. ``H`` depends on ``M21`` only, so ``H^T M22 H`` is again GOE of the
same scale and independent of ``R`` and ``M11`` (orthogonal invariance). The similarity
``diag(I_k, H)`` fixes e_1..e_k, so it keeps both the eigenvalues and the first k eigenvector
coordinates. Repeating the step on ``H^T M22 H`` (fixing its first k coordinates, which is the same
as continuing the reduction) gives a symmetric band matrix of lower bandwidth k with independent
entries (0-based, lower triangle):

* diagonal ``(c, c)``: N(0, 2 s^2), plus ``spikes[c]`` for c < k;
* distance d = 1..k-1, ``(c + d, c)``: N(0, s^2) (from the GOE diagonal blocks or from the strictly
  upper part of the ``R`` blocks);
* distance k, ``(c + k, c)``: ``s chi_{P-c-k}`` for c = 0..P-k-1 (the diagonal of the ``R``
  blocks; the last blocks are trapezoidal and the formula still holds);
* zero beyond distance k.

For k = 1 (or no spike, stored with bandwidth 1) this is the tridiagonal beta = 1 Hermite model
of Dumitriu & Edelman, "Matrix models for beta ensembles", J. Math. Phys. 43 (2002) 5830:
diagonal N(0, 2 s^2), off-diagonals s chi_{P-1}, ..., s chi_1. The noise matrix alone is the same
band without the spike diagonal, so ``||W||_2`` of the same draw comes from the same entries.

Truncation. The band matrix is the block Lanczos (block tridiagonal) matrix of ``M`` started at the
spike block, so its leading rows carry the extreme eigenpairs. Near the edge the off-diagonal
``s chi_{P-c-k} ~ sqrt(t) (1 - c / (2P))`` decreases slowly; the scaling argument of Edelman &
Sutton ("From random matrices to stochastic operators", J. Stat. Phys. 127 (2007) 1121; Ramirez,
Rider & Virag, JAMS 24 (2011) 919) turns the eigenvalue equation at ``2 sqrt(t) - mu sqrt(t)
P^(-2/3)`` into the (stochastic) Airy equation ``v'' = (x - mu) v`` in ``x = row / P^(1/3)`` for
k = 1; with k interleaved chains whose chi degrees of freedom drop by k per block, the variable is
``x = row / (k^(2/3) P^(1/3))`` (measured: rows needed scale like k^(2/3)). The n-th edge
eigenvector turns at ``x ~ a_n`` (n-th Airy zero, 2.3, 4.1, 5.5 for n = 1, 2, 3) and decays like
``exp(-(2/3) (x - a_n)^(3/2))`` beyond, so truncating c Airy units past it moves the eigenvalue by
about ``exp(-(4/3) c^(3/2))`` edge units; outlier eigenvectors decay geometrically per block of k
rows, by ``sqrt(t) / theta``. ``truncation_rows`` keeps ``max(c k, (c + a_n) k^(2/3)) P^(1/3)``
rows, c = ``c_trunc`` = 10 by default: the block-Lanczos rule ``10 k P^(1/3)`` with the Airy rule
as a floor, which decides for k <= 2 (``10 P^(1/3)`` alone leaves 1e-3 edge units on the third
eigenvalue at k = 1). ``truncation_check`` measures the error draw by draw: at P = 1e6 it is the
rounding level, ~4e-12 (k = 1) and ~5e-11 (k = 4) edge units. The truncated block is itself the
exact band matrix of the first L rows, so Weyl's inequality holds exactly between the truncated
``M`` and ``W``.

Eigen-solver (numbers from ``benchmarks/bench_band.py`` on the 2-core dev machine). LAPACK's band
reduction ``dsbevx`` (``scipy.linalg.eig_banded(select='i')``) costs O(L^2 k): 7-11 s for the top-3
eigenvalues alone of a rank-8 band at P = 15,291,300 (L = 19,857), and its eigenvectors need an
L x L matrix. Bandwidth 1 uses LAPACK bisection + inverse iteration (``eigh_tridiagonal``,
``stebz``/``stein``: exact and O(L n)); blocks of at most ``DIRECT_ROWS`` rows use ``dsbevx``.
Otherwise (``solver="krylov"``), for the top n (the bottom n are the top n of -B):

1. shift: bisection on "``sigma I - B`` is positive definite" (banded Cholesky ``dpbtrf``, O(L k^2),
   succeeds iff sigma > lambda_max) from Gershgorin's interval to ``sigma0 - lambda_max <=
   1e-9 ||B||``;
2. search: block rational Krylov with Rayleigh-Ritz on ``B`` itself; start block of n + 2 random
   columns (finds eigenvalues of multiplicity up to n + 2), basis grown by the images of the Ritz
   block under ``(sigma0 I - B)^{-1}`` (Cholesky solve) and of the unconverged wanted Ritz vectors
   under ``(p I - B)^{-1}``, p = theta_i + r_i (residual norm), a banded LU (``dgbtrf``) reused
   while it stays near theta_i; orthogonalisation by classical Gram-Schmidt twice. Stops when each
   wanted residual is <= 1e-2 of its Ritz value's distance to the other Ritz values;
3. polish: Rayleigh quotient iteration -- one banded LU solve at each Ritz value, QR, Rayleigh-Ritz
   -- until every residual ``||B x - theta x|| <= 2 (k + 1 + sqrt(L)) eps ||B||``, the rounding
   floor of a computed eigenvector (its eps-level noise in all L coordinates);
4. certificate: a block Sturm count (block LDL^T of ``sigma I - B``, Sylvester's law of inertia;
   O(L k^2)) at ``theta_n - 32 tol`` must find exactly n eigenvalues above it; then the n
   orthonormal Ritz pairs are the top n to within their residuals;
5. fallback, if the search stalls or the count disagrees (only seen for clusters narrower than
   ~1e-12 ||B||, e.g. t = 1e-20 next to O(1) spikes): dsbevx eigenvalues + inverse iteration.

A residual r bounds the eigenvalue error by r (and r^2 / gap) and the eigenvector angle by r / gap.
At P = 15,291,300 a rank-8 draw (top 3 + bottom 3 with overlaps) takes 0.26-0.40 s (0.4-0.5 s with
``||W||``) and at most ~60 MB of work arrays (O(k L), L ~ P^(1/3)); a rank-1 draw ~0.01 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import blas, lapack

from rmt.types import ExtremeSample

C_TRUNC = 10.0  # Airy units kept past the turning point: error ~ exp(-(4/3) 10^1.5) edge units
DIRECT_ROWS = 200  # up to this many rows LAPACK dsbevx is as fast (measured crossover ~200)
SOLVERS = ("auto", "krylov", "tridiagonal", "lapack")

_SIGMA_RTOL = 1e-9  # stop bisection when sigma - lambda_max <= _SIGMA_RTOL * ||B||
_RES_FACTOR = 2.0  # Ritz residual target: _RES_FACTOR * (k + 1 + sqrt(L)) * eps * ||B||
_DROP_RTOL = 1e-12  # drop new basis directions that lose more digits than this to projection
_GRAM_RTOL = 1e-12  # keep Gram eigenvalues above this (singular values above 1e-6)
_EXTRA_BLOCK = 2  # block size = n + _EXTRA_BLOCK
_MAX_STEPS = 60  # block Krylov steps before giving up (typical: 3-8)
_SEARCH_GAP = 1e-2  # Krylov search stops at Ritz residual <= 1e-2 * gap to other Ritz values
_POLISH_STEPS = 4  # inverse-iteration sweeps (typical: 1)
_CERT_FACTOR = 32.0  # certificate count at theta_n - 32 tol
_POLE_REUSE = 4.0  # reuse a factorised pole within this many residuals of the target
_START_SEED = 20020531  # fixed start block: the result must not depend on it beyond rounding
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class TruncationCheck:
    """Extremes of one band draw from its leading L rows against its leading 2L rows."""

    spikes: np.ndarray  # (k,) as given
    t: float  # noise scale
    P: int  # dimension of the model
    c_trunc: float  # truncation constant of the short block
    n_extreme: int  # extremes compared on each side
    rows: int  # L = truncation_rows(P, k, c_trunc=c_trunc, n_extreme=n_extreme)
    reference_rows: int  # min(2 L, P)
    edge_scale: float  # sqrt(t) P^(-2/3), the Tracy-Widom scale
    short: ExtremeSample  # extremes of the leading L x L block
    reference: ExtremeSample  # extremes of the leading 2L x 2L block (same entries)
    eigenvalue_diff: float  # max |lambda_short - lambda_reference| over top and bottom
    overlap_diff: float  # max |overlap_short - overlap_reference| (absolute, overlaps in [0, 1])

    @property
    def eigenvalue_diff_scaled(self) -> float:
        """``eigenvalue_diff`` in units of the edge fluctuation scale sqrt(t) P^(-2/3)."""
        if self.edge_scale > 0:
            return self.eigenvalue_diff / self.edge_scale
        return 0.0 if self.eigenvalue_diff == 0 else math.inf


# ---- the model ------------------------------------------------------------------------------


def truncation_rows(P, k, *, c_trunc=C_TRUNC, n_extreme=3) -> int:
    """Rows L of the leading block that fixes the top and bottom ``n_extreme`` eigenpairs.

    ``L = min(P, ceil(max(c k, (c + a_n) k^(2/3)) P^(1/3)))`` with ``k = max(rank, 1)``,
    ``c = c_trunc`` and ``a_n = (3 pi (4n - 1) / 8)^(2/3)`` the turning point (n-th Airy zero) of
    the n-th edge eigenfunction. The first term is the block-Lanczos rule (outliers, including
    near-threshold ones, whose eigenvectors decay geometrically per block of k rows); the second
    is the edge rule: the n-th edge eigenvector decays like ``exp(-(2/3)(x - a_n)^(3/2))`` in
    ``x = row / (k^(2/3) P^(1/3))``, so c Airy units past the turning point leave an eigenvalue
    error ~ ``exp(-(4/3) c^(3/2))`` edge units (c = 10: far below rounding, with room for the
    Tracy-Widom fluctuations of the turning point). The second term decides for k <= 3 at n = 3,
    where ``c k`` alone is too short (measured: 1e-3 edge units at L = 10 P^(1/3), k = 1).
    ``c_trunc`` trades cost (linear in L) against truncation bias.
    """
    P = _check_P(P)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"rank k must be an integer >= 0, got {k!r}")
    if k > P:
        raise ValueError(f"rank k = {k} exceeds the dimension P = {P}")
    c = _check_c_trunc(c_trunc)
    n = _check_n_extreme(n_extreme)
    kk = max(int(k), 1)
    a_n = airy_turning_point(n)
    x = max(c * kk, (c + a_n) * kk ** (2.0 / 3.0))
    return int(min(P, max(1, math.ceil(x * P ** (1.0 / 3.0)))))


def band_draw_cost(P, k, *, n_extreme=3, c_trunc=C_TRUNC) -> tuple[float, float]:
    """Estimated peak bytes and floating-point operations of one ``band_extremes`` draw.

    With ``L = truncation_rows(...)`` and ``kb = max(k, 1)``: memory ~ 8 L (6 (kb + 1) + (n + 2)
    _MAX_STEPS) bytes -- the band, its copies and factorisations, and the Krylov basis at its cap
    (the largest term; ~50 MB at L = 20,000, n = 3); work ~ L (128 (kb + 1)^2 + 4 (8 (n + 2))^2)
    -- about 64 banded factorisations (shift bisection, poles, Sturm count) and Gram-Schmidt on
    the typical 8 blocks. Orders of magnitude, to refuse a run beyond the machine before it starts.
    """
    L = truncation_rows(P, k, c_trunc=c_trunc, n_extreme=n_extreme)
    kb, block = max(int(k), 1), _check_n_extreme(n_extreme) + _EXTRA_BLOCK
    memory = 8.0 * L * (6 * (kb + 1) + block * _MAX_STEPS)
    return memory, L * (128.0 * (kb + 1) ** 2 + 4.0 * (8 * block) ** 2)


def airy_turning_point(n):
    """``a_n = (3 pi (4n - 1) / 8)^(2/3)``: |n-th zero of Ai| to 1% (n = 1: 2.32, exact 2.338)."""
    return (3.0 * math.pi * (4 * n - 1) / 8.0) ** (2.0 / 3.0)


def band_matrix(spikes, t, P, *, rows, rng) -> np.ndarray:
    """Leading ``rows`` x ``rows`` block of the band model of ``diag(spikes) + W`` (see module).

    Returns lower band storage ``ab`` of shape ``(max(k, 1) + 1, rows)`` with
    ``ab[d, c] = B[c + d, c]`` (``scipy.linalg.eig_banded(ab, lower=True)``); entries that would lie
    outside the block (``c + d >= rows``) are zero.
    """
    spikes, t, P = _check_model(spikes, t, P)
    rows = _check_rows(rows, P)
    ab = _noise_band(spikes.size, t, P, rows, np.random.default_rng(rng))
    _add_spikes(ab, spikes)
    return ab


def band_extremes(
    spikes,
    t,
    P,
    *,
    n_extreme=3,
    c_trunc=C_TRUNC,
    noise_norm=False,
    rng,
    solver="auto",
) -> ExtremeSample:
    """Top and bottom ``n_extreme`` eigenpairs of one draw of the truncated band model.

    Same law as ``rmt.samplers.dense_extremes`` (eigenvalues and squared overlaps with the spike
    directions, in the order the spikes were given) up to the truncation error, which is below
    rounding at the default ``c_trunc``. ``noise_norm=True`` adds ``||W||_2`` of the same draw
    (the truncated band without the spike diagonal); otherwise nan. ``solver`` picks the
    eigen-solver (``"auto"``: tridiagonal for bandwidth 1, lapack for small blocks, else krylov).
    """
    spikes, t, P = _check_model(spikes, t, P)
    n = _check_n_extreme(n_extreme)
    L = truncation_rows(P, spikes.size, c_trunc=c_trunc, n_extreme=n)
    if n > L:
        raise ValueError(
            f"n_extreme = {n} exceeds the {L} rows of the truncated band (P = {P}, "
            f"c_trunc = {c_trunc}); ask for fewer extremes or raise c_trunc"
        )
    noise = _noise_band(spikes.size, t, P, L, np.random.default_rng(rng))
    return _extremes_of_noise_band(noise, spikes, t, P, n, noise_norm, solver)


def truncation_check(spikes, t, P, *, c_trunc=C_TRUNC, n_extreme=3, rng, solver="auto"):
    """Measure the truncation error of ``band_extremes`` on one draw.

    Draws ONE band of ``min(2L, P)`` rows, ``L = truncation_rows(P, k, c_trunc=c_trunc,
    n_extreme=n_extreme)`` (what ``band_extremes`` uses); its leading L x L block is exactly a draw
    at L rows, so the two sets of extremes differ only by truncation and by the solvers' rounding.
    Returns a ``TruncationCheck``; ``eigenvalue_diff_scaled`` is in edge units sqrt(t) P^(-2/3).
    """
    spikes, t, P = _check_model(spikes, t, P)
    n = _check_n_extreme(n_extreme)
    L = truncation_rows(P, spikes.size, c_trunc=c_trunc, n_extreme=n)
    if n > L:
        raise ValueError(
            f"n_extreme = {n} exceeds the {L} rows of the truncated band (P = {P}, "
            f"c_trunc = {c_trunc}); ask for fewer extremes or raise c_trunc"
        )
    L2 = min(2 * L, P)
    noise = _noise_band(spikes.size, t, P, L2, np.random.default_rng(rng))
    short = _extremes_of_noise_band(_leading(noise, L), spikes, t, P, n, False, solver)
    reference = _extremes_of_noise_band(noise, spikes, t, P, n, False, solver)
    eig_diff = max(
        float(np.max(np.abs(short.top - reference.top))),
        float(np.max(np.abs(short.bottom - reference.bottom))),
    )
    ov_diff = 0.0
    if spikes.size:
        ov_diff = max(
            float(np.max(np.abs(short.top_overlaps - reference.top_overlaps))),
            float(np.max(np.abs(short.bottom_overlaps - reference.bottom_overlaps))),
        )
    return TruncationCheck(
        spikes=spikes,
        t=t,
        P=P,
        c_trunc=float(c_trunc),
        n_extreme=n,
        rows=L,
        reference_rows=L2,
        edge_scale=math.sqrt(t) * P ** (-2.0 / 3.0),
        short=short,
        reference=reference,
        eigenvalue_diff=eig_diff,
        overlap_diff=ov_diff,
    )


def _noise_band(k, t, P, rows, rng):
    """Band storage of the leading ``rows`` block of the reduced GOE (no spikes); see docstring."""
    kb = max(k, 1)
    s = math.sqrt(t / P)
    ab = np.zeros((kb + 1, rows))
    ab[0] = rng.standard_normal(rows) * (s * math.sqrt(2.0))
    for d in range(1, k):  # distances 1..k-1 (none for k <= 1)
        if rows > d:
            ab[d, : rows - d] = rng.standard_normal(rows - d) * s
    if rows > kb:
        c = np.arange(rows - kb)
        ab[kb, : rows - kb] = s * np.sqrt(rng.chisquare((P - kb - c).astype(np.float64)))
    return ab


def _add_spikes(ab, spikes):
    k = spikes.size
    ab[0, : min(k, ab.shape[1])] += spikes[: ab.shape[1]]


def _leading(ab, rows):
    """Band storage of the leading ``rows`` x ``rows`` block (entries outside zeroed)."""
    out = np.array(ab[:, :rows], copy=True)
    for d in range(1, out.shape[0]):
        out[d, max(rows - d, 0) :] = 0.0
    return out


def _extremes_of_noise_band(noise, spikes, t, P, n, noise_norm, solver):
    k = spikes.size
    ab = noise.copy()
    _add_spikes(ab, spikes)
    top_vals, top_vecs = extreme_eigenpairs(ab, n, side="top", solver=solver)
    bot_vals, bot_vecs = extreme_eigenpairs(ab, n, side="bottom", solver=solver)
    norm = float("nan")
    if noise_norm:
        hi, _ = extreme_eigenpairs(noise, 1, side="top", solver=solver)
        lo, _ = extreme_eigenpairs(noise, 1, side="bottom", solver=solver)
        norm = float(max(abs(hi[0]), abs(lo[0])))
    kk = min(k, ab.shape[1])
    top_ov = np.zeros((n, k))
    bot_ov = np.zeros((n, k))
    top_ov[:, :kk] = (top_vecs[:kk, :].T) ** 2
    bot_ov[:, :kk] = (bot_vecs[:kk, :].T) ** 2
    return ExtremeSample(
        spikes=spikes,
        t=float(t),
        P=int(P),
        top=top_vals,
        bottom=bot_vals,
        top_overlaps=top_ov,
        bottom_overlaps=bot_ov,
        noise_norm=norm,
        method="band",
    )


# ---- eigen-solvers for a symmetric band matrix ------------------------------------------------


def extreme_eigenpairs(ab, n, *, side="top", solver="auto"):
    """The ``n`` largest (``side="top"``, descending) or smallest (ascending) eigenpairs.

    ``ab`` is lower band storage ``(kb + 1, L)`` with ``ab[d, c] = B[c + d, c]``. Returns
    ``(values (n,), vectors (L, n))`` with orthonormal columns. Solvers: ``"krylov"`` (bisection
    shift + block shift-invert Krylov + Rayleigh-Ritz, any bandwidth), ``"tridiagonal"`` (LAPACK
    stebz/stein, bandwidth 1 only), ``"lapack"`` (dsbevx, small L), ``"auto"``.
    """
    ab = np.asarray(ab, dtype=np.float64)
    if ab.ndim != 2 or ab.shape[0] < 1:
        raise ValueError(f"band storage must be 2-D (bandwidth + 1, rows), got shape {ab.shape}")
    kb, L = ab.shape[0] - 1, ab.shape[1]
    n = _check_n_extreme(n)
    if n > L:
        raise ValueError(f"n = {n} eigenpairs requested from a {L} x {L} matrix")
    if side not in ("top", "bottom"):
        raise ValueError(f"side must be 'top' or 'bottom', got {side!r}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; accepted: {', '.join(SOLVERS)}")
    if not np.all(np.isfinite(ab)):
        raise ValueError("band matrix has non-finite entries")
    ab = _leading(ab[: min(kb, L - 1) + 1], L)  # ignore storage outside the matrix
    kb = ab.shape[0] - 1
    if side == "bottom":
        vals, vecs = extreme_eigenpairs(-ab, n, side="top", solver=solver)
        return -vals, vecs
    if solver == "auto":
        if kb <= 1 or L == 1:
            solver = "tridiagonal"
        elif L <= DIRECT_ROWS:
            solver = "lapack"
        else:
            solver = "krylov"
    if kb == 0 or not np.any(ab[1:]):
        return _top_diagonal(ab[0], n)
    if solver == "tridiagonal":
        if kb > 1 and np.any(ab[2:]):
            raise ValueError("solver 'tridiagonal' needs bandwidth 1")
        return _top_tridiagonal(ab, n)
    if solver == "lapack":
        return _top_lapack(ab, n)
    return _top_krylov(ab, n)


def count_eigenvalues_above(ab, sigma) -> int:
    """Number of eigenvalues of the band matrix ``ab`` (lower storage) greater than ``sigma``.

    Block Sturm count (block LDL^T with blocks of the bandwidth, Sylvester's law of inertia);
    the certificate of the krylov solver. Like the scalar Sturm count it is reliable unless sigma
    lies within rounding of an eigenvalue of B or of one of its leading principal blocks.
    """
    ab = np.asarray(ab, dtype=np.float64)
    L = ab.shape[1]
    kb = max(min(ab.shape[0] - 1, L - 1), 1)
    ab = _leading(np.vstack([ab, np.zeros((max(0, 2 - ab.shape[0]), L))])[: kb + 1], L)
    g_lo, _ = _gershgorin(ab)
    return _count_above(ab, float(sigma), min(g_lo, float(sigma)) - 1.0 - abs(g_lo))


def band_to_dense(ab):
    """The full symmetric matrix of lower band storage ``ab`` (for tests and small blocks)."""
    ab = _leading(np.asarray(ab, dtype=np.float64), np.shape(ab)[1])
    L = ab.shape[1]
    B = np.diag(ab[0])
    for d in range(1, ab.shape[0]):
        if d < L:
            idx = np.arange(L - d)
            B[idx + d, idx] = ab[d, : L - d]
            B[idx, idx + d] = ab[d, : L - d]
    return B


def band_matvec(ab, X):
    """``B @ X`` for lower band storage ``ab`` (entries outside the matrix must be zero)."""
    X = np.asarray(X, dtype=np.float64)
    col = X if X.ndim == 2 else X[:, None]
    L = ab.shape[1]
    Y = ab[0][:, None] * col
    for d in range(1, ab.shape[0]):
        if d >= L:
            break
        a = ab[d, : L - d][:, None]
        Y[d:] += a * col[: L - d]
        Y[: L - d] += a * col[d:]
    return Y if X.ndim == 2 else Y[:, 0]


def _top_diagonal(diag, n):
    order = np.argsort(-diag, kind="stable")[:n]
    vecs = np.zeros((diag.size, n))
    vecs[order, np.arange(n)] = 1.0
    return diag[order].copy(), vecs


def _top_lapack(ab, n):
    """LAPACK's band solver dsbevx (reduction to tridiagonal with Q, bisection, inverse
    iteration): exact, O(L^2 k) time and an L x L work matrix -- for small blocks only."""
    L = ab.shape[1]
    vals, vecs = scipy.linalg.eig_banded(ab, lower=True, select="i", select_range=(L - n, L - 1))
    return vals[::-1].copy(), vecs[:, ::-1].copy()


def _top_tridiagonal(ab, n):
    L = ab.shape[1]
    vals, vecs = scipy.linalg.eigh_tridiagonal(
        ab[0], ab[1, : L - 1], select="i", select_range=(L - n, L - 1), lapack_driver="stebz"
    )
    return vals[::-1].copy(), vecs[:, ::-1].copy()


def _gershgorin(ab):
    L = ab.shape[1]
    radius = np.zeros(L)
    for d in range(1, ab.shape[0]):
        if d < L:
            a = np.abs(ab[d, : L - d])
            radius[: L - d] += a
            radius[d:] += a
    return float(np.min(ab[0] - radius)), float(np.max(ab[0] + radius))


class _Shift:
    """A factorised ``sigma I - B``: Cholesky when positive definite, else banded LU."""

    def __init__(self, ab, general, sigma, chol=None):
        self.sigma = float(sigma)
        self.kb = ab.shape[0] - 1
        self.chol = chol
        if chol is None:
            for attempt in range(4):
                g = -general
                g[2 * self.kb] += self.sigma
                self.lu, self.piv, info = lapack.dgbtrf(g, self.kb, self.kb)
                if info == 0:
                    break
                # exactly singular (sigma is an eigenvalue to the last bit): any neighbour will do
                self.sigma += 8.0 * _EPS * max(abs(self.sigma), 1.0) * 4.0**attempt
            else:
                raise RuntimeError(f"banded LU of sigma I - B failed at sigma = {sigma!r}")

    def solve(self, X):
        if self.chol is not None:
            Y, info = lapack.dpbtrs(self.chol, X, lower=1)
        else:
            Y, info = lapack.dgbtrs(self.lu, self.kb, self.kb, X, self.piv)
        if info != 0 or not np.all(np.isfinite(Y)):
            raise RuntimeError(f"banded solve failed at sigma = {self.sigma!r}")
        return Y


def _shifted_cholesky(ab, sigma):
    """Cholesky factor of ``sigma I - B`` in band storage, or None if not positive definite."""
    m = -ab
    m[0] += sigma
    c, info = lapack.dpbtrf(np.asfortranarray(m), lower=1)
    return c if info == 0 else None


def _shift_above(ab, norm):
    """``sigma >= lambda_max(B)`` with ``sigma - lambda_max <= _SIGMA_RTOL * norm``, and the factor.

    Bisection on ``sigma I - B`` positive definite (Cholesky succeeds) in Gershgorin's interval.
    """
    _, g_hi = _gershgorin(ab)
    lo = float(np.max(ab[0]))  # lambda_max >= max_i B_ii, so sigma I - B is not PD at lo
    hi = g_hi
    step = max(4.0 * _EPS * norm * ab.shape[0], np.finfo(np.float64).tiny)
    chol = _shifted_cholesky(ab, hi)
    while chol is None:  # Gershgorin is a bound; rounding can make it tight
        hi += step
        step *= 2.0
        chol = _shifted_cholesky(ab, hi)
    while hi - lo > _SIGMA_RTOL * norm:
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        c = _shifted_cholesky(ab, mid)
        if c is None:
            lo = mid
        else:
            hi, chol = mid, c
    return hi, chol


def _residual_tol(kb, L, norm):
    """Target Ritz residual ``_RES_FACTOR (kb + 1 + sqrt(L)) eps ||B||``: the rounding floor.

    A computed eigenvector carries rounding-level noise in all L coordinates, whose image under
    ``B - theta`` has norm ~ eps ||B|| sqrt(L); the banded product itself adds ~ (kb + 1) eps ||B||.
    Measured floors: <= 0.6 sqrt(L) + 5 (kb + 1) in these units for L up to 20,000, kb up to 8.
    """
    return _RES_FACTOR * (kb + 1 + math.sqrt(L)) * _EPS * norm


def _top_krylov(ab, n, *, tol=None):
    """Top-n eigenpairs of a symmetric band matrix (module docstring, solver steps 1-5)."""
    kb, L = ab.shape[0] - 1, ab.shape[1]
    g_lo, g_hi = _gershgorin(ab)
    norm = max(abs(g_lo), abs(g_hi))
    if tol is None:
        tol = _residual_tol(kb, L, norm)
    abf = np.asfortranarray(ab)
    general = _general_band(ab)
    try:
        theta, X, res = _krylov_search(abf, general, n, norm, tol)
        if res.max() > tol:
            theta, X = _polish(abf, general, theta, X, tol)
    except RuntimeError:
        return _top_fallback(abf, general, n, tol)
    # certificate: exactly n eigenvalues lie above theta_n - margin (block Sturm count); the n
    # orthonormal Ritz vectors with residuals <= tol then are the top n to within tol
    sigma = theta[-1] - _CERT_FACTOR * tol
    floor = min(g_lo, sigma)
    if _count_above(ab, sigma, floor - 1.0 - abs(floor)) != n:
        return _top_fallback(abf, general, n, tol)
    return theta, X


def _top_fallback(ab, general, n, tol):
    """Slow but sure: eigenvalues by LAPACK band reduction (dsbevx, O(L^2 k)), then vectors by
    inverse iteration at those eigenvalues. Used only when the fast path cannot certify."""
    L = ab.shape[1]
    vals = scipy.linalg.eig_banded(
        ab, lower=True, eigvals_only=True, select="i", select_range=(L - n, L - 1)
    )[::-1]
    X, _ = np.linalg.qr(np.random.default_rng(_START_SEED).standard_normal((L, n)))
    return _polish(ab, general, vals.copy(), X, tol)


def _count_above(ab, sigma, pad_value):
    """Number of eigenvalues of B greater than sigma: negative eigenvalues of sigma I - B.

    Block LDL^T of the block tridiagonal sigma I - B (blocks of size kb, the bandwidth):
    D_0 = sigma I - A_0, D_{j+1} = sigma I - A_{j+1} - C_j D_j^{-1} C_j^T; by Sylvester's law of
    inertia (Haynsworth) the count is the total number of negative eigenvalues of the D_j -- the
    block form of the Sturm count used by LAPACK's bisection (dstebz) for tridiagonals. The last
    block is padded with ``pad_value < sigma`` on the diagonal, which adds no negative pivot.
    """
    A, C = _blocks(ab, pad_value)
    k = A.shape[1]
    eye = np.eye(k)
    Ct = np.swapaxes(C, 1, 2)
    for attempt in range(4):
        D = sigma * eye - A[0]
        pivots = np.empty_like(A)
        pivots[0] = D
        try:
            for j in range(A.shape[0] - 1):
                D = sigma * eye - A[j + 1] - C[j] @ np.linalg.solve(D, Ct[j])
                pivots[j + 1] = D
        except np.linalg.LinAlgError:  # an exactly singular pivot: move sigma by a hair
            sigma += 8.0 * _EPS * max(abs(sigma), 1.0) * 4.0**attempt
            continue
        return int(np.sum(np.linalg.eigvalsh(pivots) < 0))
    raise RuntimeError("block Sturm count failed")


def _blocks(ab, pad_value):
    """Diagonal blocks A_j (nb, k, k) and sub-diagonal blocks C_j (nb - 1, k, k) of band B."""
    k, L = ab.shape[0] - 1, ab.shape[1]
    nb = -(-L // k)
    abp = np.zeros((k + 1, nb * k))
    abp[:, :L] = ab
    abp[0, L:] = pad_value
    r, c = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    lower, upper = r >= c, r <= c
    j = np.arange(nb)[:, None, None] * k
    A = np.where(lower, abp[np.where(lower, r - c, 0), j + np.minimum(r, c)], 0.0)
    A = np.where(lower, A, np.swapaxes(A, 1, 2))
    # C_j[r, c] = B[(j + 1) k + r, j k + c] sits at distance k + r - c, inside the band iff r <= c
    C = np.where(upper, abp[np.where(upper, k + r - c, 0), j[:-1] + c], 0.0)
    return A, C


def _krylov_search(ab, general, n, norm, tol):
    """Ritz pairs of the n largest eigenvalues, each located to a fraction of its gap.

    Block rational Krylov: the basis grows by images of the current Ritz block under
    ``(sigma I - B)^{-1}`` for a few poles -- sigma0 just above the spectrum (Cholesky), and for
    the first unconverged wanted Ritz value theta_i a pole at ``theta_i + r_i`` (its residual
    norm, which brackets an eigenvalue), factorised once (banded LU) and reused while it stays
    within a few residuals of theta_i. Rayleigh-Ritz with B on the whole basis.
    """
    kb, L = ab.shape[0] - 1, ab.shape[1]
    sigma0, chol = _shift_above(ab, norm)
    poles = [_Shift(ab, general, sigma0, chol=chol)]
    b = min(n + _EXTRA_BLOCK, L)
    start = np.random.default_rng(_START_SEED)
    max_dim = min(L, b * _MAX_STEPS)
    cap = min(max_dim, 8 * b)  # grown by doubling; typical use is 4-8 blocks
    V = np.empty((L, cap), order="F")  # column slices stay contiguous for BLAS
    BV = np.empty((L, cap), order="F")
    H = np.empty((cap, cap))
    block, _ = np.linalg.qr(start.standard_normal((L, b)))
    block = np.hstack([block, _orthonormal_complement(poles[0].solve(block), block, start)])
    dim = 0
    while True:
        nb = min(block.shape[1], max_dim - dim)
        if dim + nb > cap:
            cap = min(max_dim, max(2 * cap, dim + nb))
            V, BV, H = _grow(V, cap), _grow(BV, cap), _grow(_grow(H, cap).T, cap).T
        V[:, dim : dim + nb] = block[:, :nb]
        BV[:, dim : dim + nb] = _matvec(ab, block[:, :nb])
        dim += nb
        H[:dim, dim - nb : dim] = V[:, :dim].T @ BV[:, dim - nb : dim]
        H[dim - nb : dim, :dim] = H[:dim, dim - nb : dim].T
        theta, S = np.linalg.eigh(H[:dim, :dim])
        m = min(b, dim)
        theta, S = theta[::-1][:m], S[:, ::-1][:, :m]
        X = V[:, :dim] @ S
        res = np.linalg.norm(_matvec(ab, X[:, :n]) - X[:, :n] * theta[:n], axis=0)
        # a Ritz pair is located once its residual is small against its distance to the other
        # Ritz values: then theta_i is within r_i^2 / gap of an eigenvalue and inverse iteration
        # at theta_i converges to that eigenvalue
        gaps = np.array(
            [np.min(np.abs(np.delete(theta, i) - theta[i]), initial=np.inf) for i in range(n)]
        )
        located = (res <= tol) | (res <= _SEARCH_GAP * gaps)
        if located.all() or dim >= L:
            return theta[:n].copy(), X[:, :n].copy(), res
        if dim >= max_dim:
            raise RuntimeError(
                f"band eigen-solver: Krylov search stalled at residuals {res} (gaps {gaps}) "
                f"with a {dim}-dimensional space (L = {L}, bandwidth {kb})"
            )
        todo = np.flatnonzero(~located)
        i = int(todo[0])
        target = theta[i] + res[i]
        if i > 0:
            target = min(target, 0.5 * (theta[i] + theta[i - 1]))
        pole = min(poles[1:], key=lambda q: abs(q.sigma - target), default=None)
        if pole is None or abs(pole.sigma - target) > _POLE_REUSE * res[i]:
            pole = _Shift(ab, general, target)
            poles.append(pole)
        parts = [poles[0].solve(X), pole.solve(X[:, todo])]
        block = _orthonormal_complement(np.hstack(parts), V[:, :dim], start)


def _grow(A, cap):
    """A copy of A with ``cap`` columns (Fortran order), the first A.shape[1] kept."""
    out = np.empty((A.shape[0], cap), order="F")
    out[:, : A.shape[1]] = A
    return out


def _polish(ab, general, theta, X, tol):
    """Inverse iteration at each Ritz value (one banded LU each), QR, Rayleigh-Ritz; repeated.

    From a residual r the step is cubically convergent (Rayleigh quotient iteration); QR keeps
    the vectors of a close pair apart and Rayleigh-Ritz sorts them out.
    """
    res = None
    for _ in range(_POLISH_STEPS):
        Y = np.hstack(
            [_Shift(ab, general, theta[i]).solve(X[:, i : i + 1]) for i in range(X.shape[1])]
        )
        Q, _ = np.linalg.qr(Y / np.linalg.norm(Y, axis=0))
        BQ = _matvec(ab, Q)
        Hq = Q.T @ BQ
        w, S = np.linalg.eigh(0.5 * (Hq + Hq.T))
        theta, S = w[::-1], S[:, ::-1]
        X = Q @ S
        res = np.linalg.norm(BQ @ S - X * theta, axis=0)
        if res.max() <= tol:
            return theta, X
    raise RuntimeError(
        f"band eigen-solver: inverse iteration stalled at residual {res.max():.3g} > {tol:.3g}"
    )


def _matvec(abf, X):
    """``B @ X`` for Fortran-ordered lower band storage, one BLAS dsbmv per column."""
    kb = abf.shape[0] - 1
    out = np.empty(X.shape, order="F")
    for j in range(X.shape[1]):
        out[:, j] = blas.dsbmv(kb, 1.0, abf, X[:, j], lower=1)
    return out


def _general_band(ab):
    """LAPACK general band storage (3 kb + 1, L) of the symmetric band (dgbtrf, kl = ku = kb)."""
    kb, L = ab.shape[0] - 1, ab.shape[1]
    g = np.zeros((3 * kb + 1, L))
    g[2 * kb] = ab[0]
    for d in range(1, min(kb, L - 1) + 1):
        g[2 * kb + d, : L - d] = ab[d, : L - d]  # A[j + d, j]
        g[2 * kb - d, d:] = ab[d, : L - d]  # A[j, j + d]
    return g


def _orthonormal_complement(Z, V, start):
    """Orthonormal basis of the part of Z orthogonal to V.

    Classical Gram-Schmidt against V, twice ("twice is enough", Giraud et al. 2005); columns that
    lose more than 12 digits to the projection carry only rounding and are dropped. The rest are
    orthonormalised among themselves through the eigen-decomposition of their Gram matrix, twice
    (as Cholesky-QR2; BLAS-3, faster than Householder QR for tall thin blocks), dropping
    near-dependent directions, and projected once more (combining columns can amplify their
    rounding-level components along V). If nothing is left the space is numerically invariant and
    a fresh random direction continues it.
    """
    norms0 = np.linalg.norm(Z, axis=0)
    for _ in range(2):
        Z = Z - V @ (V.T @ Z)
    norms = np.linalg.norm(Z, axis=0)
    keep = norms > _DROP_RTOL * np.maximum(norms0, np.finfo(np.float64).tiny)
    Z = Z[:, keep] / norms[keep]
    if Z.shape[1] == 0:
        Z = start.standard_normal((V.shape[0], 1))
        for _ in range(2):
            Z = Z - V @ (V.T @ Z)
        Z /= np.linalg.norm(Z)
    Z = _gram_orthonormalize(Z)
    Z = Z - V @ (V.T @ Z)
    return _gram_orthonormalize(Z / np.linalg.norm(Z, axis=0))


def _gram_orthonormalize(Z):
    """Orthonormal basis of range(Z) (unit columns); Gram eigenvalues < _GRAM_RTOL dropped."""
    for _ in range(2):
        w, U = np.linalg.eigh(Z.T @ Z)
        good = w > _GRAM_RTOL * w[-1]
        Z = Z @ (U[:, good] / np.sqrt(w[good]))
    return Z


# ---- input checks ---------------------------------------------------------------------------


def _check_P(P):
    if isinstance(P, bool) or not isinstance(P, int | np.integer) or P < 1:
        raise ValueError(f"P must be an integer >= 1, got {P!r}")
    return int(P)


def _check_model(spikes, t, P):
    P = _check_P(P)
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"noise scale t must be a finite number >= 0, got {t!r}") from None
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"noise scale t must be a finite number >= 0, got {t!r}")
    spikes = np.atleast_1d(np.asarray(spikes, dtype=np.float64))
    if spikes.ndim != 1:
        raise ValueError("spikes must be a 1-D sequence of eigenvalues")
    if not np.all(np.isfinite(spikes)):
        raise ValueError(f"spikes must be finite, got {spikes.tolist()}")
    if spikes.size > P:
        raise ValueError(f"rank k = {spikes.size} (number of spikes) exceeds the dimension P = {P}")
    return spikes, t, P


def _check_rows(rows, P):
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or not 1 <= rows <= P:
        raise ValueError(f"rows must be an integer between 1 and P = {P}, got {rows!r}")
    return int(rows)


def _check_n_extreme(n):
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n_extreme must be an integer >= 1, got {n!r}")
    return int(n)


def _check_c_trunc(c_trunc):
    try:
        c = float(c_trunc)
    except (TypeError, ValueError):
        raise ValueError(f"c_trunc must be a finite number > 0, got {c_trunc!r}") from None
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"c_trunc must be a finite number > 0, got {c_trunc!r}")
    return c
