r"""Free additive convolution by subordination: two discrete measures, or one and an R-transform.

Setting (issue 10, M3 and M4): a full-data spectral measure ``mu_1 = sum_j w_j delta_{a_j}`` (SLQ
nodes and weights, or exact eigenvalues) and a noise law ``mu_2``, either discrete too (the SLQ
measure of the measured noise operator) or given by its R-transform (the free compound Poisson law
of :mod:`rmt.free_poisson`). For large P the spectrum of ``A + O B O^T`` (O Haar) tends to
``mu_1 boxplus mu_2`` (Voiculescu 1991). Notation: ``G_j(z) = int dmu_j(x) / (z - x)``,
``F_j = 1 / G_j``, ``h_j = F_j - id``, ``R_j`` the R-transform, ``K_j = R_j + 1/g`` the inverse of
``G_j`` near 0.

Subordination (Biane 1998; Belinschi & Bercovici, "A new approach to subordination results in
free probability", J. Anal. Math. 101 (2007) 357-365): there are analytic ``omega_1, omega_2`` on
the upper half plane with

    G(z) = G_1(omega_1(z)) = G_2(omega_2(z)),     omega_1(z) + omega_2(z) = z + 1 / G(z),

and ``omega_1(z)`` is the unique fixed point in C+ of ``T_z(w) = z + h_2(z + h_1(w))``, a map of C+
into ``{Im w >= Im z}``; its iterates converge to it for every ``z`` in C+ (Denjoy-Wolff; op. cit.,
Theorem 2.1). When ``mu_2``'s R-transform is known in closed form, ``omega_1`` is equally the fixed
point of ``T_z(w) = z - R_2(G_1(w))`` (the same equations with ``omega_2`` eliminated:
``omega_1 = z + 1/G - omega_2 = z - R_2(G)``); for a freely infinitely divisible ``mu_2`` (the free
compound Poisson law) ``-R_2(g)`` has Im >= 0 for Im g < 0, so this map also sends C+ into
``{Im w >= Im z}`` (Bercovici & Voiculescu 1993, Theorem 5.10).

Numerics. :func:`solve_fixed_point` takes Newton steps on ``w - T_z(w)`` while they lower the
residual and stay in C+ (a fixed point in C+ is unique, so any one found is the one), and the
always-valid iteration step ``w <- T_z(w)`` otherwise; :func:`continued_subordination` follows the
solution from ``Im z`` of the size of the spectrum down to the requested ``eta`` by factors of 4
(continuation), so Newton starts next to the root at every level. The density returned is
``-Im G(x + i eta) / pi``: the convolution smoothed by the Cauchy kernel of width ``eta``
(``eta`` is the resolution; it must be > 0).

Right edge, exactly (no ``eta``): right of the support ``G`` is real and decreasing, so it has an
inverse ``K(g) = omega_1(g) + R_2(g)`` for ``0 < g < G(edge)``, with ``omega_1(g) = G_1^{-1}(g)``
on the branch right of ``mu_1``'s largest atom. ``K`` decreases from ``+inf`` at ``g = 0+`` and
the edge is ``K(g*)`` at its first critical point ``g*`` (``K'(g*) = 0``, i.e. ``G'(edge) = -inf``:
a square-root edge; Olver & Nadakuditi, "Numerical computation of convolutions in free
probability theory", 2012, section 3). A spike ``theta`` added to ``mu_1`` with vanishing weight
gives an outlier iff ``theta`` exceeds ``mu_1``'s atoms and ``G_1(theta) < g*``; it sits at
``theta + R_2(G_1(theta))`` (Belinschi, Bercovici, Capitaine & Fevrier, "Outliers in the spectrum
of large deformed unitarily invariant models", Ann. Probab. 45 (2017) 3571-3625, Theorem 2.1:
outliers where ``omega_1(z) = theta``). For ``mu_1 = delta_0`` this is the generalised BBP
equation ``G_2(z) = 1 / theta``, ``z = theta + R_2(1 / theta)`` (Baskerville, Keating, Mezzadri,
Najnudel & Granziol 2022), and for the semicircle of variance t it is ``theta + t / theta`` above
``theta = sqrt(t)``.

Atoms and resolution. The exact edge is that of the discrete measures as given: an atom of tiny
weight (a Ritz value carrying little weight) is part of the bulk and produces a bump of width
about ``sqrt(weight)`` near its image. To read an edge at a resolution instead, use
:func:`density_edge` on the ``eta``-smoothed density: the largest grid point where the density
reaches a threshold ``tau``. Cauchy smoothing of unit mass lying left of ``x0`` has density at most
``eta / (pi d^2)`` at ``x0 + d``, so that edge exceeds the true one by at most
``sqrt(eta / (pi tau))``, and it misses a feature whose smoothed peak ``~ mass / (pi eta)`` stays
below ``tau``; :func:`resolution_threshold` picks ``tau`` so that the overshoot is ``k eta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize

__all__ = [
    "FreeSumSpectrum",
    "cauchy_transform",
    "check_measure",
    "continued_subordination",
    "density_edge",
    "discrete_r_transform",
    "free_sum_cauchy",
    "free_sum_spectrum",
    "generalised_bbp_outlier",
    "inverse_cauchy_right",
    "resolution_threshold",
    "solve_fixed_point",
    "subordination_edge",
    "subordination_outliers",
]

_EPS = float(np.finfo(np.float64).eps)
# |sum(weights) - 1| accepted (as rmt.freeconv.WEIGHT_SUM_TOL: Lanczos weights sum to 1 up to
# ~ steps * eps); within it the weights are divided by their sum.
WEIGHT_SUM_TOL = 1e-6
# Fixed-point residual |w - T(w)| accepted, in units of eps * (|z| + spread): a few roundings
# of T beyond the ulp of w.
_RESIDUAL_EPS = 64.0
# Iteration caps: Newton converges in < 10 steps from the continued start; plain iteration steps
# (the fallback) contract geometrically. The caps only stop runaway loops.
_MAX_ITER = 400
_MAX_NEWTON_REAL = 200
# Points of the log-spaced scan for the first critical point of K (then brentq on the bracket).
_SCAN = 4000


def check_measure(atoms, weights):
    """Validated discrete probability measure: sorted atoms, zero weights dropped, ties merged.

    Weights must be >= 0 and sum to 1 within ``WEIGHT_SUM_TOL``; they are then divided by their
    sum (mass exactly 1). Returns ``(atoms, weights)`` as float64 arrays.
    """
    a = np.asarray(atoms, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if a.shape != w.shape or a.size == 0:
        raise ValueError(f"atoms and weights must be non-empty, of one length: {a.size}, {w.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(w))):
        raise ValueError("atoms and weights must be finite")
    if np.any(w < 0):
        raise ValueError(f"weights must be >= 0, got minimum {w.min()}")
    if abs(w.sum() - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(f"weights must sum to 1 (within {WEIGHT_SUM_TOL}), got {w.sum()!r}")
    keep = w > 0
    atoms_u, inverse = np.unique(a[keep], return_inverse=True)
    merged = np.bincount(inverse.ravel(), weights=w[keep], minlength=atoms_u.size)
    return atoms_u, merged / merged.sum()


def cauchy_transform(atoms, weights, z):
    """``G(z) = sum_j w_j / (z - a_j)`` and ``G'(z) = -sum_j w_j / (z - a_j)^2`` (any shape z)."""
    z = np.asarray(z)
    flat = z.ravel()
    with np.errstate(divide="ignore", invalid="ignore"):  # inf on an atom
        inv = 1.0 / (flat[:, None] - atoms)
    q = weights * inv
    return q.sum(axis=1).reshape(z.shape), -(q * inv).sum(axis=1).reshape(z.shape)


def inverse_cauchy_right(atoms, weights, g):
    """``omega > max(atoms)`` with ``G(omega) = g``, for real ``g > 0`` (any shape).

    On ``(a_max, inf)`` ``F = 1 / G`` is increasing and concave (``F(w) = w - m_1 + int dtau(s) /
    (s - w)`` with ``tau >= 0``: Nevanlinna), so Newton on ``F(w) = 1 / g`` started left of the root
    increases monotonically to it; ``a_max + w_top / g`` is such a start (``G >= w_top / (w -
    a_max)``). Stops when the step is below 4 eps (|w| + spread); where ``w_top / g`` is below
    4 eps times that scale the start is returned (the root lies within rounding of it).
    """
    g = np.asarray(g, dtype=np.float64)
    if np.any(~(g > 0)):
        raise ValueError("g must be > 0 on the branch right of the atoms")
    flat = g.ravel()
    k = int(np.argmax(atoms))
    omega = atoms[k] + weights[k] / flat
    scale = np.abs(atoms).max() + (atoms.max() - atoms.min())
    # where w_top / g is below a few ulps the start is the root to rounding: no Newton step
    active = np.flatnonzero(weights[k] / flat > 4 * _EPS * scale)
    for _ in range(_MAX_NEWTON_REAL):
        G, dG = cauchy_transform(atoms, weights, omega[active])
        step = (1.0 / flat[active] - 1.0 / G) / (-dG / G**2)  # (1/g - F) / F'
        omega[active] += np.maximum(step, 0.0)
        more = step > 4 * _EPS * (np.abs(omega[active]) + scale)
        active = active[more]
        if active.size == 0:
            break
    return omega.reshape(g.shape)


def discrete_r_transform(atoms, weights):
    """Real-line R-transform of a discrete measure: ``g -> (R(g), R'(g))`` for ``g > 0``.

    ``R(g) = G^{-1}(g) - 1/g`` on the branch right of the atoms, ``R'(g) = 1 / G'(omega) +
    1 / g^2``; defined for every ``g > 0`` (the branch covers (0, inf)).
    """
    atoms, weights = check_measure(atoms, weights)

    def r2(g):
        omega = inverse_cauchy_right(atoms, weights, g)
        _, dG = cauchy_transform(atoms, weights, omega)
        return omega - 1.0 / g, 1.0 / dG + 1.0 / g**2

    return r2


# ---- the fixed point in the upper half plane -----------------------------------------------


def solve_fixed_point(T, z, omega0):
    """Solve ``w = T(w)`` pointwise for ``w`` in C+, ``T(w) -> (T(w), T'(w))`` (vectorised).

    Newton's step ``w - (w - T) / (1 - T')`` is kept when it stays in C+ and lowers ``|w - T(w)|``;
    otherwise the plain step ``w <- T(w)`` (which converges by Denjoy-Wolff, module docstring).
    Returns ``(omega, converged)``: residual <= ``_RESIDUAL_EPS`` eps (|z| + |w|).
    """
    omega = np.array(omega0, dtype=np.complex128)
    converged = np.zeros(omega.shape, dtype=bool)
    idx = np.arange(omega.size)
    Tw, dT = T(omega, idx)
    for _ in range(_MAX_ITER):
        res = omega[idx] - Tw
        tol = _RESIDUAL_EPS * _EPS * (np.abs(z[idx]) + np.abs(omega[idx]))
        done = np.abs(res) <= tol
        converged[idx[done]] = True
        keep = ~done
        idx, res, Tw, dT = idx[keep], res[keep], Tw[keep], dT[keep]
        if idx.size == 0:
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            trial = omega[idx] - res / (1.0 - dT)
        ok = np.isfinite(trial) & (trial.imag > 0)
        trial = np.where(ok, trial, Tw)
        T_trial, dT_trial = T(trial, idx)
        better = ok & (np.abs(trial - T_trial) < np.abs(res))
        # where Newton did not help, the plain iteration step (T of the old point, in C+)
        fallback = ~better
        if np.any(fallback & ok):
            sub = np.flatnonzero(fallback & ok)
            T_fb, dT_fb = T(Tw[sub], idx[sub])
            trial[sub], T_trial[sub], dT_trial[sub] = Tw[sub], T_fb, dT_fb
        omega[idx] = trial
        Tw, dT = T_trial, dT_trial
    return omega, converged


def continued_subordination(T_at, x, eta, *, shift, spread):
    """``omega(x + i eta)`` by continuation in ``Im z`` from ``~ spread`` down to ``eta``.

    ``T_at(z)`` returns the map ``T(w, idx) -> (T, T')`` of :func:`solve_fixed_point` for the
    points ``z``; ``shift`` is the start ``omega ~ z - shift`` at the top level (the mean of the
    other measure: ``omega_1(z) = z - m_2 + O(1/z)``). Levels ``eta 4^k``; raises RuntimeError if
    any point fails to converge.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a positive number, got {eta!r}")
    levels = [float(eta)]
    while levels[-1] < spread:
        levels.append(levels[-1] * 4.0)
    omega = x + 1j * levels[-1] - shift
    for level in reversed(levels):
        z = x + 1j * level
        omega, ok = solve_fixed_point(T_at(z), z, omega)
        if not np.all(ok):
            raise RuntimeError(
                f"subordination did not converge at {np.count_nonzero(~ok)} of {ok.size} points "
                f"(Im z = {level:.3g})"
            )
    return omega


# ---- two discrete measures ------------------------------------------------------------------


def _bb_map(a1, w1, a2, w2, z):
    """Belinschi-Bercovici map T(w) = z + h_2(z + h_1(w)) and its derivative, at points z."""

    def T(w, idx):
        zz = z[idx]
        G1, dG1 = cauchy_transform(a1, w1, w)
        inner = zz + 1.0 / G1 - w  # omega_2 = z + h_1(w)
        G2, dG2 = cauchy_transform(a2, w2, inner)
        dh1 = -dG1 / G1**2 - 1.0
        dh2 = -dG2 / G2**2 - 1.0
        return zz + 1.0 / G2 - inner, dh2 * dh1

    return T


def free_sum_cauchy(atoms1, weights1, atoms2, weights2, x, eta):
    """``G(x + i eta)`` of ``mu_1 boxplus mu_2`` for two discrete measures (module docstring)."""
    a1, w1 = check_measure(atoms1, weights1)
    a2, w2 = check_measure(atoms2, weights2)
    x = np.asarray(x, dtype=np.float64)
    spread = _spread(a1, w1) + _spread(a2, w2)
    omega = continued_subordination(
        lambda z: _bb_map(a1, w1, a2, w2, z), x, eta, shift=float(w2 @ a2), spread=spread
    )
    return cauchy_transform(a1, w1, omega)[0].reshape(x.shape)


def _spread(atoms, weights):
    """A length scale of a measure: max |atom - mean| (> 0 unless a point mass; then 1)."""
    d = np.abs(atoms - weights @ atoms).max()
    return float(d) if d > 0 else 1.0


# ---- the right edge and outliers, on the real line -------------------------------------------


def subordination_edge(atoms1, weights1, r2, *, g_upper=np.inf):
    """Right edge of ``mu_1 boxplus mu_2`` and ``g* = G(edge)``: ``(edge, g*)``.

    ``r2(g) -> (R_2(g), R_2'(g))`` on ``0 < g < g_upper`` (the R-transform of the second measure on
    the real line). ``K(g) = G_1^{-1}(g) + R_2(g)``, ``K'(g) = 1 / G_1'(omega_1) + R_2'(g)``;
    ``g*`` is the first zero of ``K'`` (module docstring), bracketed by a log-spaced scan of
    ``_SCAN`` points from ``1e-6 / s`` to ``min(1e8 / s, g_upper, w_top / (16 eps s))`` (``s``
    the scale of ``mu_1``, ``w_top`` its top atom's weight) and refined by brentq.
    """
    a1, w1 = check_measure(atoms1, weights1)
    scale = np.abs(a1).max() + _spread(a1, w1)

    def kprime(g):
        omega = inverse_cauchy_right(a1, w1, g)
        _, dG = cauchy_transform(a1, w1, omega)
        return 1.0 / dG + r2(g)[1]

    # beyond w_top / (16 eps scale) omega_1(g) is within a few ulps of the top atom
    hi = min(1e8 / scale, g_upper * (1 - 1e-9), w1[-1] / (16 * _EPS * scale))
    grid = np.geomspace(1e-6 / scale, hi, _SCAN)
    kp = kprime(grid)
    crossing = np.flatnonzero(kp >= 0)
    if crossing.size == 0:
        raise RuntimeError("K' has no zero below g_upper: no square-root right edge found")
    j = int(crossing[0])
    if j == 0:
        raise RuntimeError("K' >= 0 at the smallest g scanned; rescale the measures")
    g_star = scipy.optimize.brentq(
        lambda g: float(kprime(np.array([g]))[0]),
        grid[j - 1],
        grid[j],
        xtol=_EPS * grid[j],
        rtol=4 * _EPS,
    )
    omega = inverse_cauchy_right(a1, w1, np.array([g_star]))[0]
    return float(omega + r2(np.array([g_star]))[0][0]), float(g_star)


def subordination_outliers(atoms1, weights1, r2, g_star, spikes):
    """Outliers of spikes ``theta`` (zero weight) added to ``mu_1``: ``theta + R_2(G_1(theta))``.

    An outlier iff ``theta > max(atoms1)`` and ``G_1(theta) < g*`` (``g*`` from
    :func:`subordination_edge`); NaN where absorbed into the bulk.
    """
    a1, w1 = check_measure(atoms1, weights1)
    theta = np.atleast_1d(np.asarray(spikes, dtype=np.float64))
    out = np.full(theta.shape, np.nan)
    right = theta > a1[-1]
    g = np.full(theta.shape, np.inf)
    g[right] = cauchy_transform(a1, w1, theta[right])[0]
    ok = right & (g < g_star)
    if np.any(ok):
        out[ok] = theta[ok] + r2(g[ok])[0]
    return out


def generalised_bbp_outlier(theta, noise_atoms, noise_weights):
    """Largest eigenvalue of ``theta v v^T + N`` (theta > 0) with N's spectral measure discrete.

    The root ``z > max(atoms)`` of ``G_N(z) = 1 / theta``, i.e. ``z = theta + R_N(1 / theta)``
    (Baskerville et al. 2022; module docstring). A discrete ``N`` always has this root (rank-one
    interlacing): compare it with ``N``'s edge at a stated resolution to call it an outlier.
    """
    a, w = check_measure(noise_atoms, noise_weights)
    theta = np.asarray(theta, dtype=np.float64)
    if np.any(~(theta > 0)):
        raise ValueError("theta must be > 0 (mirror the spectrum for a negative spike)")
    return inverse_cauchy_right(a, w, 1.0 / theta)


# ---- density on a grid, edge at a resolution -----------------------------------------------


def resolution_threshold(eta, k=10.0):
    """Density threshold ``tau = 1 / (pi k^2 eta)``: Cauchy tails of unit mass then stay below
    ``tau`` beyond ``k eta`` of the mass, so :func:`density_edge` overshoots by at most ``k eta``;
    a feature of mass m is seen when ``m / (pi eta) > tau``, i.e. ``m > 1 / k^2``."""
    return 1.0 / (np.pi * k * k * float(eta))


def density_edge(grid, density, threshold):
    """Largest ``x`` with ``density(x) >= threshold``, linear between grid points; NaN if none.

    The overshoot and miss bounds at smoothing ``eta`` are in the module docstring.
    """
    grid = np.asarray(grid, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    above = np.flatnonzero(density >= threshold)
    if above.size == 0:
        return float("nan")
    j = int(above[-1])
    if j == grid.size - 1:
        return float(grid[-1])
    d0, d1 = density[j], density[j + 1]
    return float(grid[j] + (grid[j + 1] - grid[j]) * (d0 - threshold) / (d0 - d1))


@dataclass(frozen=True)
class FreeSumSpectrum:
    """``mu_1 boxplus mu_2`` at resolution ``eta``: smoothed density and exact right edge."""

    grid: np.ndarray  # (n,) points x
    density: np.ndarray  # (n,) -Im G(x + i eta) / pi
    eta: float  # Cauchy smoothing width (resolution)
    edge: float  # exact right edge K(g*) of the discrete measures' free convolution
    g_star: float  # G(edge), the first critical point of K


def free_sum_spectrum(atoms1, weights1, atoms2, weights2, grid, eta) -> FreeSumSpectrum:
    """Density on ``grid`` (at ``x + i eta``) and the exact right edge of ``mu_1 boxplus mu_2``."""
    a2, w2 = check_measure(atoms2, weights2)
    G = free_sum_cauchy(atoms1, weights1, a2, w2, grid, eta)
    edge, g_star = subordination_edge(atoms1, weights1, discrete_r_transform(a2, w2))
    return FreeSumSpectrum(
        grid=np.asarray(grid, dtype=np.float64).copy(),
        density=-G.imag / np.pi,
        eta=float(eta),
        edge=edge,
        g_star=g_star,
    )
