r"""The batch Gauss-Newton noise as a free compound Poisson law (issue 10, model M3).

Setting: N samples with per-sample Gauss-Newton matrices ``G_i`` (P x P, rank C, nonzero
eigenvalues ``kappa_{i,1..C}``), a batch of B samples, ``G_B = (1/B) sum_{i in B} G_i``. Model:
the B pieces ``G_i / B`` are freely independent (their eigenvectors in generic position: Haar
rotations, Voiculescu 1991) and each is drawn from the empirical law of the N samples. In the limit
``P -> inf`` with ``B C / P`` fixed, a rank-C piece has R-transform ``(1/P) sum_c a_c / (1 - a_c
w) + O(1/P^2)``, ``a_c = kappa_c / B``, and R-transforms of free summands add, so

    R(w) = (B / P) mean_i sum_c a_ic / (1 - a_ic w),        a_ic = kappa_ic / B,

the free compound Poisson law of rate ``B C / P`` and jump law the empirical law of the ``a_ic``
(Nica & Speicher, *Lectures on the Combinatorics of Free Probability*, 2006, Lecture 12,
Proposition 12.11; free Poisson limit theorem). Its free cumulants are ``k_n = (B/P) mean_i sum_c
a_ic^n``; for ``B C / P < 1`` it has an atom of mass ``1 - B C / P`` at 0. The noise ``N_B = G_B -
E[G_B]`` is the centred law ``R_N(w) = R(w) - R(0)`` (``k_1 = 0``, the others unchanged).

The batch measure is (full-data spectral measure, discrete: SLQ nodes and weights) boxplus N_B,
computed by subordination in :mod:`rmt.subordination`: ``G(z) = G_full(omega(z))``, ``omega(z) =
z - R_N(G(z))``; the right edge is ``K(g*)``, ``K(g) = G_full^{-1}(g) + R_N(g)``, on ``0 < g <
1 / max a_ic`` (R's first pole), and a spike ``theta`` of H_emp above the full measure gives an
outlier at ``theta + R_N(G_full(theta))`` when ``G_full(theta) < g*``.

Assumptions to state with every use: freeness of the pieces from each other and from H_emp (the
point M4 tests); the batch's own pieces replaced by draws from the population (exact for the mean
R-transform, so the prediction is for a typical batch, not a given one: the actual batch's R differs
by O(1/sqrt(B)) in each cumulant); the non-GGN part of H_i ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rmt.subordination import (
    cauchy_transform,
    check_measure,
    continued_subordination,
    subordination_edge,
    subordination_outliers,
)

__all__ = [
    "FreeCompoundPoisson",
    "fcp_batch_spectrum",
    "fcp_cumulants",
    "fcp_jumps",
    "fcp_law",
    "fcp_r_transform",
]

# Jump-by-point entries per chunk (2^18 complex128 = 4 MiB per temporary array).
_CHUNK = 1 << 18


def fcp_jumps(kappa, B, P):
    """Distinct jumps ``a = kappa / B`` and their rates ``B / (P N)`` times multiplicity.

    ``kappa`` is ``(N, C)``: row i holds the C nonzero eigenvalues of G_i (zeros allowed: they
    add nothing to R). Returns ``(a, q)`` with ``R(w) = sum_k q_k a_k / (1 - a_k w)``.
    """
    kappa = np.atleast_2d(np.asarray(kappa, dtype=np.float64))
    if kappa.ndim != 2 or kappa.size == 0 or not np.all(np.isfinite(kappa)):
        raise ValueError("kappa must be a finite (N, C) array of per-sample eigenvalues")
    B, P = _positive_int(B, "B"), _positive_int(P, "P")
    a = kappa[kappa != 0] / B
    if a.size == 0:
        raise ValueError("kappa has no nonzero eigenvalue")
    atoms, counts = np.unique(a, return_counts=True)
    return atoms, counts * (B / (P * kappa.shape[0]))


def fcp_r_transform(kappa, B, P, *, centred=True):
    """``g -> (R(g), R'(g))`` of the free compound Poisson law (module docstring), any complex g.

    ``R(g) = sum_k q_k a_k / (1 - a_k g)``, ``R'(g) = sum_k q_k a_k^2 / (1 - a_k g)^2``;
    ``centred=True`` subtracts ``R(0) = k_1`` (the noise N_B).
    """
    a, q = fcp_jumps(kappa, B, P)
    shift = float(q @ a) if centred else 0.0

    def r(g):
        g = np.asarray(g)
        flat = g.ravel()
        R = np.empty(flat.shape, dtype=np.result_type(flat, np.float64))
        dR = np.empty_like(R)
        step = max(1, _CHUNK // a.size)
        for s in range(0, flat.size, step):
            inv = 1.0 / (1.0 - a * flat[s : s + step, None])
            qa = q * a * inv
            R[s : s + step] = qa.sum(axis=1)
            dR[s : s + step] = (qa * a * inv).sum(axis=1)
        return (R - shift).reshape(g.shape), dR.reshape(g.shape)

    return r


def fcp_cumulants(kappa, B, P, orders, *, centred=True):
    """Free cumulants ``k_n = (B / P) mean_i sum_c a_ic^n`` (``k_1 = 0`` when centred)."""
    a, q = fcp_jumps(kappa, B, P)
    ks = np.atleast_1d(np.asarray(orders))
    out = np.array([float(q @ a**k) for k in ks])
    if centred:
        out[ks == 1] = 0.0
    return out


@dataclass(frozen=True)
class FreeCompoundPoisson:
    """(full-data measure) boxplus (free compound Poisson noise) at resolution ``eta``."""

    grid: np.ndarray  # (n,) points x
    density: np.ndarray  # (n,) -Im G(x + i eta) / pi
    eta: float  # Cauchy smoothing width (resolution)
    edge: float  # exact right edge K(g*) of the bulk
    g_star: float  # G(edge)
    spikes: np.ndarray  # (k,) spikes theta given (zero weight), may be empty
    outliers: np.ndarray  # (k,) theta + R_N(G_full(theta)); NaN where absorbed
    cumulants: np.ndarray  # (4,) free cumulants k_1..k_4 of the noise law used
    B: int
    P: int
    centred: bool


def fcp_batch_spectrum(nodes, weights, kappa, B, P, grid, eta, *, spikes=(), centred=True):
    """M3: density, right edge and outliers of (full measure) boxplus FCP(kappa, B, P).

    ``nodes``, ``weights``: the full-data spectral measure (weights sum to 1); ``kappa``: (N, C)
    per-sample GGN eigenvalues; ``grid``, ``eta``: where and at what resolution the density is
    evaluated (``-Im G(x + i eta) / pi``); ``spikes``: eigenvalues of H_emp kept out of the
    measure (zero weight), each tested for an outlier. ``centred=False`` adds the mean ``k_1``
    too (the batch GGN itself rather than its fluctuation).
    """
    a1, w1 = check_measure(nodes, weights)
    r = fcp_r_transform(kappa, B, P, centred=centred)
    jumps, rates = fcp_jumps(kappa, B, P)
    x = np.asarray(grid, dtype=np.float64)

    def T_at(z):
        def T(w, idx):
            G1, dG1 = cauchy_transform(a1, w1, w)
            R, dR = r(G1)
            return z[idx] - R, -dR * dG1

        return T

    k2 = float(rates @ jumps**2)
    spread = np.abs(a1 - w1 @ a1).max() + np.sqrt(k2) + jumps.max() + 1e-300
    shift = 0.0 if centred else float(rates @ jumps)
    omega = continued_subordination(T_at, x.ravel(), eta, shift=shift, spread=spread)
    G = cauchy_transform(a1, w1, omega)[0].reshape(x.shape)
    edge, g_star = subordination_edge(a1, w1, r, g_upper=1.0 / jumps.max())
    theta = np.atleast_1d(np.asarray(spikes, dtype=np.float64))
    outliers = subordination_outliers(a1, w1, r, g_star, theta) if theta.size else theta.copy()
    return FreeCompoundPoisson(
        grid=x.copy(),
        density=-G.imag / np.pi,
        eta=float(eta),
        edge=edge,
        g_star=g_star,
        spikes=theta.copy(),
        outliers=outliers,
        cumulants=fcp_cumulants(kappa, B, P, [1, 2, 3, 4], centred=centred),
        B=int(B),
        P=int(P),
        centred=centred,
    )


def fcp_law(kappa, B, P, grid, eta, *, centred=False) -> FreeCompoundPoisson:
    """The free compound Poisson law alone: ``delta_0 boxplus FCP`` (``G = 1 / omega``)."""
    return fcp_batch_spectrum([0.0], [1.0], kappa, B, P, grid, eta, centred=centred)


def _positive_int(n, name):
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return int(n)
