r"""Free additive convolution of a discrete spectrum with a semicircle, and its outliers.

Setting (DESIGN.md): the full-data Hessian has spectral measure ``mu = sum_j w_j delta_{a_j}``
(exact eigenvalues, or Ritz values with Lanczos weights, or a discretised density) and the batch
noise is GOE of noise scale ``t`` whose spectrum tends to the semicircle ``sigma_t`` of variance
``t`` on ``[-2 sqrt(t), 2 sqrt(t)]``. For large P the batch Hessian's spectrum is the free additive
convolution ``mu boxplus sigma_t`` (Pastur 1972; Voiculescu 1991). Its Cauchy transform
``G(z) = int d(mu boxplus sigma_t)(x) / (z - x)`` solves Pastur's equation

    G(z) = G_mu(z - t G(z)),        G_mu(z) = sum_j w_j / (z - a_j),

and ``omega(z) = z - t G(z)`` is the subordination function.

Biane's real-line parametrisation (P. Biane, "On the free convolution with a semi-circular
distribution", Indiana Univ. Math. J. 46 (1997) 705-718, Lemma 2 and Corollary 2) turns this
into real, monotone, one-dimensional problems, which is what this module solves:

* ``F(u) = int dmu(x) / (u - x)^2`` and
  ``v_t(u) = inf{v >= 0 : int dmu(x) / ((u - x)^2 + v^2) <= 1 / t}``;
* ``psi(u) = u + t int (u - x) dmu(x) / ((u - x)^2 + v_t(u)^2)`` is an increasing homeomorphism
  of R, and ``omega(psi(u) + i0) = u + i v_t(u)``;
* ``mu boxplus sigma_t`` is absolutely continuous with density ``v_t(u) / (pi t)`` at ``psi(u)``;
* its support is the closure of ``psi({u : F(u) > 1 / t})``, a finite union of intervals whose
  edges are ``psi(u)`` at the roots of ``F(u) = 1 / t``: one root right of the largest atom, one
  left of the smallest (F is monotone there), and, between consecutive atoms where F is strictly
  convex, either none or exactly two (a gap), according as ``min F >= 1 / t`` or ``< 1 / t``.

Cauchy-Schwarz gives ``|psi(u) - u| <= sqrt(t)``, so ``psi^{-1}(x)`` lies in
``[x - sqrt(t), x + sqrt(t)]``: a guaranteed bracket for the inversion.

Outliers (subordination; Capitaine, Donati-Martin, Feral & Fevrier 2011 for deformed Wigner
matrices; Belinschi, Bercovici, Capitaine & Fevrier 2017): a spike ``theta`` of the full-data
Hessian carrying vanishing weight (rank fixed as P grows) gives an outlier of the batch Hessian iff
``psi'(theta) = 1 - t F(theta) > 0`` (``theta`` outside the closure of ``{F > 1/t}``); it sits at
``psi(theta) = theta + t G_mu(theta)`` and the squared overlap of its eigenvector with the spike
direction is ``psi'(theta) = 1 - t F(theta)``. For ``mu = delta_0`` these are the BBP results
``theta + t / theta`` and ``1 - t / theta^2`` above the threshold ``|theta| > sqrt(t)``.

Numerics (float64, vectorised, memory bounded by chunks of ``_CHUNK`` atom-by-point entries):

* ``w = v_t(u)^2`` by Newton on ``phi(w) = 1 / S(w) - t`` with ``S(w) = sum_j w_j / ((u - a_j)^2
  + w)``. ``1 / S`` is concave and increasing in ``w`` (a parallel sum of affine functions), so
  Newton started below the root increases monotonically to it; the start
  ``max(0, max_j (t w_j - (u - a_j)^2))`` is such a lower bound and is positive when ``u`` sits on
  an atom. For a single atom ``1 / S`` is affine and one step is exact.
* Every other scalar root (``psi(u) = x``, ``F' = 0`` in a gap, ``F = 1 / t``) is found by a
  vectorised safeguarded Newton method (Newton inside a shrinking bracket, bisection whenever
  Newton leaves it or fails to halve the previous step; Numerical Recipes' ``rtsafe``) to an
  absolute tolerance of ``_XTOL_EPS`` machine epsilons times the problem's scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FreeConvolutionOutliers",
    "WEIGHT_SUM_TOL",
    "free_convolution_density",
    "free_convolution_outliers",
    "free_convolution_support",
]

# |sum(weights) - 1| allowed before the input is rejected: Lanczos weights (squared first
# components of orthonormal eigenvectors) sum to 1 up to ~ steps * eps; 1e-6 is far above rounding
# and far below any real normalisation error. Within it the weights are divided by their sum so that
# the measure has mass exactly 1 (the bracket |psi(u) - u| <= sqrt(t) needs mass <= 1).
WEIGHT_SUM_TOL = 1e-6

_EPS = float(np.finfo(np.float64).eps)
# Root-finding tolerance in units of eps * scale: 4 eps leaves a margin over the one-ulp
# resolution of the iterate while costing at most two more bisection steps.
_XTOL_EPS = 4.0
# Atom-by-point entries per chunk (2^18 float64 = 2 MiB per temporary array).
_CHUNK = 1 << 18
# Iteration caps: bisection alone needs ~ log2(1 / (4 eps)) = 50 steps; Newton for w converges
# monotonically and quadratically, typically in < 10 steps. The caps only stop runaway loops.
_MAX_ROOT_ITER = 200
_MAX_W_ITER = 100


@dataclass(frozen=True)
class FreeConvolutionOutliers:
    """Outliers of (spectrum ``mu`` + finite-rank spikes) boxplus semicircle(t), large-P limit.

    Spikes carry zero weight in ``mu``; each either is absorbed into the bulk or produces one
    outlier at ``psi(theta) = theta + t G_mu(theta)`` whose eigenvector has squared overlap
    ``1 - t F(theta)`` with the spike direction.
    """

    spikes: np.ndarray  # (k,) spike eigenvalues theta, as given
    is_outlier: np.ndarray  # (k,) bool, psi'(theta) = 1 - t F(theta) > 0
    location: np.ndarray  # (k,) theta + t G_mu(theta); nan where absorbed
    overlap: np.ndarray  # (k,) squared overlap 1 - t F(theta); 0 where absorbed
    t: float  # noise scale (variance of the semicircle)


def free_convolution_density(eigenvalues, weights, t, grid) -> np.ndarray:
    """Density of ``mu boxplus semicircle(t)`` at the points ``grid``, ``mu = sum w_j delta_{a_j}``.

    Parameters
    ----------
    eigenvalues : (n,) array_like
        Atoms ``a_j`` (eigenvalues or Ritz values); repeated values are allowed.
    weights : (n,) array_like
        Weights ``w_j >= 0`` summing to 1 within ``WEIGHT_SUM_TOL`` (no silent renormalisation of
        a measure that is not a probability measure).
    t : float
        Noise scale, the semicircle's variance; must be > 0 (at ``t = 0`` the convolution is
        ``mu`` itself, which has no density).
    grid : array_like
        Points at which to evaluate; any shape, finite.

    Returns
    -------
    np.ndarray
        float64 array of ``grid``'s shape: ``v_t(u) / (pi t)`` with ``u = psi^{-1}(x)``, exactly 0
        outside the support.
    """
    a, c = _measure(eigenvalues, weights)
    t = _check_t(t)
    x = _finite_array(grid, "grid")
    flat = x.ravel()
    u = _psi_inverse(flat, a, c, t)
    w = _v2(u, a, c, t)
    return (np.sqrt(w) / (np.pi * t)).reshape(x.shape)


def free_convolution_support(eigenvalues, weights, t) -> list[tuple[float, float]]:
    """Support of ``mu boxplus semicircle(t)``: sorted disjoint intervals ``[(left, right), ...]``.

    Edges are ``psi(u)`` at the roots of ``F(u) = 1 / t`` (see the module docstring), found to
    ``_XTOL_EPS`` eps relative precision; as ``psi' = 0`` at those roots, the edges inherit that
    precision quadratically. Components touching at a single point (``min F = 1 / t`` exactly
    between two atoms) are reported as one interval.

    Cost: O(n) per iteration for the two outer edges, plus O(n) per iteration for each pair of
    neighbouring atoms that can hold a gap (``gap^2 > t (w_k^(1/3) + w_{k+1}^(1/3))^3``); about
    0.1 s for 500 atoms, seconds for 10^4 atoms when most of them are separated by gaps.
    """
    a, c = _measure(eigenvalues, weights)
    t = _check_t(t)
    roots = _support_preimages(a, c, t)
    edges = _psi(roots.ravel(), np.zeros(roots.size), a, c, t).reshape(roots.shape)
    return [(float(lo), float(hi)) for lo, hi in edges]


def free_convolution_outliers(bulk_eigenvalues, bulk_weights, spikes, t) -> FreeConvolutionOutliers:
    """Outliers produced by spikes ``theta`` on top of the bulk ``mu`` after adding GOE(t).

    ``theta`` is an outlier iff ``1 - t F(theta) > 0``, i.e. it lies outside the closure of
    ``{F > 1/t}`` (beyond the bulk's edges or inside a gap of ``{F > 1/t}``); a spike equal to a
    bulk atom is absorbed (``F = inf``). See the module docstring for the formulas.
    """
    a, c = _measure(bulk_eigenvalues, bulk_weights)
    t = _check_t(t)
    theta = _finite_array(spikes, "spikes").ravel()
    F = _F(theta, a, c)
    slope = 1.0 - t * F  # psi'(theta) on {F <= 1/t}
    is_outlier = slope > 0
    location = np.full(theta.shape, np.nan)
    location[is_outlier] = _psi(theta[is_outlier], np.zeros(is_outlier.sum()), a, c, t)
    overlap = np.where(is_outlier, slope, 0.0)
    return FreeConvolutionOutliers(
        spikes=theta.copy(), is_outlier=is_outlier, location=location, overlap=overlap, t=t
    )


# ---- input checks ---------------------------------------------------------------------------


def _finite_array(x, name):
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr


def _check_t(t):
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"t must be a positive finite number, got {t!r}") from None
    if not (np.isfinite(t) and t > 0):
        raise ValueError(
            f"t must be a positive finite number, got {t} "
            "(at t = 0 the convolution is mu itself, which has no density)"
        )
    return t


def _measure(eigenvalues, weights):
    """Validated atoms and weights: sorted, zero weights dropped, repeated atoms merged."""
    a = np.asarray(eigenvalues, dtype=np.float64)
    c = np.asarray(weights, dtype=np.float64)
    if a.ndim != 1 or c.ndim != 1 or a.shape != c.shape:
        raise ValueError(
            "eigenvalues and weights must be 1-D arrays of the same shape, got shapes "
            f"{a.shape} and {c.shape}"
        )
    if a.size == 0:
        raise ValueError("eigenvalues and weights must not be empty")
    if not np.all(np.isfinite(a)):
        raise ValueError("eigenvalues must be finite (no NaN or inf)")
    if not np.all(np.isfinite(c)):
        raise ValueError("weights must be finite (no NaN or inf)")
    if np.any(c < 0):
        raise ValueError(f"weights must be >= 0, got minimum {c.min()}")
    total = c.sum()
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(
            f"weights must sum to 1 (within {WEIGHT_SUM_TOL}), got {total!r}; "
            "normalise them explicitly if that is intended"
        )
    keep = c > 0
    atoms, inverse = np.unique(a[keep], return_inverse=True)
    merged = np.bincount(inverse.ravel(), weights=c[keep], minlength=atoms.size)
    return atoms, merged / merged.sum()


# ---- sums over the atoms, in bounded chunks --------------------------------------------------


def _chunks(m, n):
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, m, step):
        yield slice(start, min(m, start + step))


def _F(u, a, c):
    """F(u) = sum_j c_j / (u - a_j)^2 (inf on an atom)."""
    out = np.empty(u.shape)
    with np.errstate(divide="ignore", over="ignore"):  # F = inf on (or next to) an atom
        for s in _chunks(u.size, a.size):
            e = u[s, None] - a
            out[s] = (c / (e * e)).sum(axis=1)
    return out


def _v2(u, a, c, t):
    """w = v_t(u)^2 by monotone Newton on 1/S(w) = t (module docstring); 0 where F(u) <= 1/t."""
    out = np.zeros(u.shape)
    with np.errstate(divide="ignore", over="ignore"):  # F = inf on (or next to) an atom
        for s in _chunks(u.size, a.size):
            e = u[s, None] - a
            e2 = e * e
            F = (c / e2).sum(axis=1)
            rows = np.flatnonzero(F > 1.0 / t)
            if rows.size == 0:
                continue
            e2 = e2[rows]
            w = np.maximum(0.0, (t * c - e2).max(axis=1))
            active = np.arange(rows.size)
            for _ in range(_MAX_W_ITER):
                inv = 1.0 / (e2[active] + w[active, None])
                q = c * inv
                S = q.sum(axis=1)
                S2 = (q * inv).sum(axis=1)
                step = (t * S - 1.0) * S / S2  # = (t - 1/S) / (d(1/S)/dw)
                w[active] += np.maximum(step, 0.0)
                more = step > _XTOL_EPS * _EPS * w[active]
                active = active[more]
                if active.size == 0:
                    break
            out[s.start + rows] = w
    return out


def _psi(u, w, a, c, t):
    """psi(u) = u + t sum_j c_j (u - a_j) / ((u - a_j)^2 + w), with w = v_t(u)^2 given."""
    out = np.empty(u.shape)
    for s in _chunks(u.size, a.size):
        e = u[s, None] - a
        out[s] = u[s] + t * (c * e / (e * e + w[s, None])).sum(axis=1)
    return out


def _psi_and_slope(u, a, c, t):
    """psi(u) and psi'(u).

    Where ``w = v_t(u)^2 > 0`` implicit differentiation of ``S(u, w) = 1/t`` gives
    ``psi' = 1 - t S + 2 t (w S2 + T1^2 / S2)`` with ``S = sum c/D``, ``S2 = sum c/D^2``,
    ``T1 = sum c e/D^2``, ``e = u - a``, ``D = e^2 + w`` (``= 2 t (w S2 + T1^2/S2)`` on S = 1/t);
    where ``w = 0``, ``psi' = 1 - t F(u)``. psi' jumps at the support's preimage edges (a kink of
    psi), which the safeguarded root finder tolerates.
    """
    w = _v2(u, a, c, t)
    val = np.empty(u.shape)
    slope = np.empty(u.shape)
    for s in _chunks(u.size, a.size):
        e = u[s, None] - a
        ws = w[s, None]
        inv = 1.0 / (e * e + ws)
        q = c * inv
        qe = q * e
        S = q.sum(axis=1)
        val[s] = u[s] + t * qe.sum(axis=1)
        S2 = (q * inv).sum(axis=1)
        T1 = (qe * inv).sum(axis=1)
        wv = w[s]
        inside = wv > 0
        slope[s] = np.where(
            inside,
            1.0 - t * S + 2.0 * t * (wv * S2 + T1 * T1 / np.where(inside, S2, 1.0)),
            1.0 - t * S,
        )
    return val, slope


# ---- a vectorised safeguarded Newton method --------------------------------------------------


def _rtsafe(fun, lo, hi, x0, xtol):
    """Roots of increasing functions f_i on brackets [lo_i, hi_i] with f(lo) <= 0 <= f(hi).

    ``fun(x, idx)`` returns ``(f, f')`` at points ``x`` for the problems ``idx``. Newton steps are
    taken while they stay strictly inside the current bracket and at least halve the step before
    last; otherwise the bracket is bisected (Press et al., Numerical Recipes, ``rtsafe``). The
    bracket shrinks every iteration, so the method cannot fail; it stops when the step or the
    bracket is below ``xtol`` (absolute, per problem).
    """
    lo = np.array(lo, dtype=np.float64)
    hi = np.array(hi, dtype=np.float64)
    x = np.clip(np.array(x0, dtype=np.float64), lo, hi)
    xtol = np.broadcast_to(np.asarray(xtol, dtype=np.float64), x.shape)
    dxold = hi - lo
    idx = np.arange(x.size)
    f, fp = fun(x, idx)
    for _ in range(_MAX_ROOT_ITER):
        done = f == 0
        lo[idx] = np.where(f < 0, x[idx], lo[idx])
        hi[idx] = np.where(f > 0, x[idx], hi[idx])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            dx_newton = f / fp
            newton = x[idx] - dx_newton
            ok = (
                np.isfinite(newton)
                & (newton > lo[idx])
                & (newton < hi[idx])
                & (np.abs(2.0 * dx_newton) <= np.abs(dxold[idx]))
            )
        mid = lo[idx] + 0.5 * (hi[idx] - lo[idx])
        x_new = np.where(done, x[idx], np.where(ok, newton, mid))
        dx = np.abs(x_new - x[idx])
        dxold[idx] = dx
        x[idx] = x_new
        done |= (dx <= xtol[idx]) | (hi[idx] - lo[idx] <= xtol[idx])
        idx = idx[~done]
        if idx.size == 0:
            break
        f, fp = fun(x[idx], idx)
    return x


# ---- the two real-line problems --------------------------------------------------------------


def _psi_inverse(x, a, c, t):
    """u = psi^{-1}(x), bracketed by [x - sqrt(t), x + sqrt(t)]."""
    r = np.sqrt(t)

    def fun(u, idx):
        val, slope = _psi_and_slope(u, a, c, t)
        return val - x[idx], slope

    xtol = _XTOL_EPS * _EPS * (np.abs(x) + r)
    return _rtsafe(fun, x - r, x + r, x, xtol)


def _support_preimages(a, c, t):
    """(k, 2) array of [left, right] roots of F = 1/t bounding the components of {F > 1/t}."""
    r = np.sqrt(t)
    scale = np.abs(a).max() + r

    def F_and_slope(u, _idx):
        Fu = np.empty(u.shape)
        dF = np.empty(u.shape)
        # an iterate one ulp from an atom gives inf / nan; the root finder then bisects
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            for s in _chunks(u.size, a.size):
                inv = 1.0 / (u[s, None] - a)
                q = c * inv * inv
                Fu[s] = q.sum(axis=1)
                dF[s] = -2.0 * (q * inv).sum(axis=1)
        return Fu, dF

    xtol = _XTOL_EPS * _EPS * scale

    # Outer roots: on (a_max, a_max + sqrt(t)] F decreases from inf to <= 1/t; mirror on the left.
    def right_fun(u, idx):
        Fu, dF = F_and_slope(u, idx)
        return 1.0 / t - Fu, -dF

    def left_fun(u, idx):
        Fu, dF = F_and_slope(u, idx)
        return Fu - 1.0 / t, dF

    right = _rtsafe(right_fun, [a[-1]], [a[-1] + r], [a[-1] + r * np.sqrt(c[-1])], xtol)[0]
    left = _rtsafe(left_fun, [a[0] - r], [a[0]], [a[0] - r * np.sqrt(c[0])], xtol)[0]

    # Gaps: F >= c_k/(u-a_k)^2 + c_{k+1}/(u-a_{k+1})^2, whose minimum over (a_k, a_{k+1}) is
    # (c_k^(1/3) + c_{k+1}^(1/3))^3 / gap^2; a gap needs that minimum < 1/t.
    gap = np.diff(a)
    cand = np.flatnonzero(gap * gap > t * (np.cbrt(c[:-1]) + np.cbrt(c[1:])) ** 3)
    gaps = []
    if cand.size:
        lo, hi = a[cand], a[cand + 1]

        def dF_fun(u, idx):  # F' is increasing (F'' = 6 sum c/(u-a)^4 > 0) from -inf to inf
            dF = np.empty(u.shape)
            d2F = np.empty(u.shape)
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                for s in _chunks(u.size, a.size):
                    inv = 1.0 / (u[s, None] - a)
                    q = c * inv * inv * inv
                    dF[s] = -2.0 * q.sum(axis=1)
                    d2F[s] = 6.0 * (q * inv).sum(axis=1)
            return dF, d2F

        # Start at the minimiser of the two-atom lower bound,
        # u = a_k + gap / (1 + (c_{k+1} / c_k)^(1/3)).
        start = lo + (hi - lo) / (1.0 + np.cbrt(c[cand + 1] / c[cand]))
        umin = _rtsafe(dF_fun, lo, hi, start, xtol)
        Fmin = F_and_slope(umin, None)[0]
        has_gap = Fmin < 1.0 / t
        lo, hi, umin = lo[has_gap], hi[has_gap], umin[has_gap]
        if umin.size:
            # (a_k, umin): F decreasing; (umin, a_{k+1}): F increasing.
            gap_left = _rtsafe(right_fun, lo, umin, 0.5 * (lo + umin), xtol)
            gap_right = _rtsafe(left_fun, umin, hi, 0.5 * (umin + hi), xtol)
            gaps = list(zip(gap_left, gap_right, strict=True))

    bounds = [left] + [g for pair in gaps for g in pair] + [right]
    return np.array(bounds).reshape(-1, 2)
