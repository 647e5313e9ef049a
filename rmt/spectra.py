r"""Spectral measures after the fact: quadrature moments, smoothing, distances, shape statistics.

numpy only; nothing here computes a matrix product of the operator. The input is a spectral
measure ``mu = sum_j w_j delta_{theta_j}`` -- Gauss-quadrature nodes and weights of Lanczos / SLQ
(``nnhessian.lanczos``; per probe, NaN-padded rows with zero weight allowed where stated) or the
eigenvalues of a sampled matrix (equal weights) -- and, for the distances, a second measure or a
density tabulated on a grid.

* :func:`quadrature_moments` -- ``sum_j w_j theta_j^k`` per probe: the Gauss-quadrature estimate
  of ``q^T A^k q``, exact for ``k <= 2m - 1`` (Golub & Welsch 1969; Golub & Meurant 2010); its
  mean over unit probes estimates ``tr(A^k) / P`` (Ubaru, Chen & Saad 2017). From
  ``nnhessian.lanczos``, where it is still importable.
* :func:`raw_moments` -- the same for ``k = 1..4``, shape ``(probes, 4)``.
* :func:`shape_statistics` -- skewness ``k3 / k2^(3/2)`` and kurtosis ``k4 / k2^2`` (not excess:
  the Gaussian has 3, the semicircle 2, a symmetric two-point law 1) of a measure given its raw
  moments, with the central moments ``k2 = m2 - m1^2``, ``k3 = m3 - 3 m1 m2 + 2 m1^3``,
  ``k4 = m4 - 4 m1 m3 + 6 m1^2 m2 - 3 m1^4``. From ``validation.network``.
* :func:`jackknife` -- a statistic of the probe mean and its jackknife standard error
  ``sqrt((n - 1)/n sum_i (s_(i) - s_(.))^2)`` over leave-one-out means (Efron & Stein 1981; for
  the plain mean it is exactly ``sd / sqrt(n)``). From ``validation.network``.
* :func:`smooth_density` -- the Gaussian-kernel density ``mean_p sum_j w_pj N(x; theta_pj,
  width^2)`` (Lin, Saad & Yang 2016, eq. 3.9; Ghorbani, Krishnan & Xiao 2019). From
  ``nnhessian.lanczos``, where it is still importable.
* :func:`smoothing_width` -- the kernel width (spectral range) / steps: an m-node Gauss rule
  resolves features of width ~ range / m (Chebyshev-Markov-Stieltjes inequalities). From
  ``validation.network`` (there it took objects with ``.nodes``; here a sequence of arrays).
* :func:`wasserstein1_measure_to_density` / :func:`wasserstein1_to_density` -- ``W1 = int |F_mu -
  F| dx`` between a discrete measure and a tabulated density (the one W1 ground truth; equal
  weights by default in the second). F is the cumulative trapezoid rule of the density,
  normalised, linear between grid points (error O(h^2) for a smooth density, O(h^1.5) at
  square-root edges); the integral is exact for that F. From ``validation.network`` and
  ``validation.synthetic``, which each had a copy.
* :func:`wasserstein1_discrete` -- ``W1 = int |F_1 - F_2| dx`` between two discrete measures,
  exact (Vallender 1973: W1 on the line is the L1 distance of the CDFs). From
  ``validation.network``.
* :func:`slq_resolution` -- the W1 scale at which an SLQ measure resolves its operator's
  spectrum: split-half W1 of the probes, rescaled to the pooled measure. From
  ``validation.network``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "jackknife",
    "quadrature_moments",
    "raw_moments",
    "shape_statistics",
    "slq_resolution",
    "smooth_density",
    "smoothing_width",
    "wasserstein1_discrete",
    "wasserstein1_measure_to_density",
    "wasserstein1_to_density",
]


# ---- moments ------------------------------------------------------------------------------------


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


def raw_moments(nodes, weights) -> np.ndarray:
    """(probes, 4): per-probe Gauss-quadrature estimates of tr(A^k) / P for k = 1..4 (exact for
    k <= 2m - 1; unbiased over probes)."""
    return quadrature_moments(nodes, weights, [1, 2, 3, 4])


def shape_statistics(m: np.ndarray) -> tuple[float, float]:
    """(skewness, kurtosis) of the measure with raw moments ``m = (m1, m2, m3, m4)``."""
    m1, m2, m3, m4 = m
    k2 = m2 - m1**2
    k3 = m3 - 3 * m1 * m2 + 2 * m1**3
    k4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    if k2 <= 0:
        return float("nan"), float("nan")
    return float(k3 / k2**1.5), float(k4 / k2**2)


def jackknife(per_probe: np.ndarray, statistic) -> tuple[float, float]:
    """``statistic`` of the probe mean and its jackknife standard error over probes."""
    n = per_probe.shape[0]
    value = np.asarray(statistic(per_probe.mean(axis=0)), dtype=float)
    if n < 2:
        return value, np.full(value.shape, np.nan)
    loo = np.array(
        [statistic(np.delete(per_probe, i, axis=0).mean(axis=0)) for i in range(n)], dtype=float
    )
    se = np.sqrt((n - 1) / n * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))
    return value, se


# ---- densities ----------------------------------------------------------------------------------


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


def smoothing_width(node_arrays, steps: int) -> float:
    """Gaussian kernel width for densities: (spectral range) / steps.

    ``node_arrays`` is a sequence of node arrays (NaN padding ignored); the range is taken over
    all of them. An m-node Gauss rule resolves features of width ~ range / m
    (Chebyshev-Markov-Stieltjes); smoothing at that width removes the spikes of single nodes
    without blurring beyond the quadrature's own resolution. 1.0 when the range is empty.
    """
    lo = min(np.nanmin(nodes) for nodes in node_arrays)
    hi = max(np.nanmax(nodes) for nodes in node_arrays)
    span = hi - lo
    return float(span / steps) if span > 0 else 1.0


# ---- Wasserstein-1 distances --------------------------------------------------------------------


def wasserstein1_measure_to_density(nodes, weights, grid, density) -> float:
    """W1 = int |F_mu - F| dx between a weighted discrete measure and a tabulated density.

    F is the cumulative trapezoid rule of ``density`` (normalised), linear between grid points;
    the nodes are merged into the grid, F_mu is constant between merged points and ``|c - F|`` is
    integrated exactly on each piece, also where it changes sign (a piece of length h from
    ``g0 = c - F(x0)`` to ``g1 = c - F(x1)`` contributes ``h (|g0| + |g1|) / 2`` without a sign
    change and ``h (g0^2 + g1^2) / (2 (|g0| + |g1|))`` with one).
    """
    order = np.argsort(nodes, kind="stable")
    x_mu = np.asarray(nodes, dtype=float)[order]
    w_mu = np.asarray(weights, dtype=float)[order]
    if x_mu[0] < grid[0] or x_mu[-1] > grid[-1]:
        raise ValueError("the grid must cover every node")
    cum = np.concatenate([[0.0], np.cumsum(w_mu) / w_mu.sum()])
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    x = np.union1d(grid, x_mu)
    F = np.interp(x, grid, cdf)
    level = cum[np.searchsorted(x_mu, x[:-1], side="right")]
    g0, g1 = level - F[:-1], level - F[1:]
    same_sign = g0 * g1 >= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = (g0**2 + g1**2) / (2.0 * (np.abs(g0) + np.abs(g1)))
    pieces = np.where(same_sign, 0.5 * (np.abs(g0) + np.abs(g1)), crossing)
    return float(np.sum(np.diff(x) * pieces))


def wasserstein1_to_density(nodes, grid, density, weights=None) -> float:
    """W1 between the measure ``sum_j w_j delta_{nodes_j}`` and a density tabulated on ``grid``.

    ``weights`` None means equal weights (an empirical measure of samples, e.g. the eigenvalues
    of one draw). Computed by :func:`wasserstein1_measure_to_density`; equal weights enter as
    ones, so the levels of the empirical CDF are exactly ``k / n``.
    """
    nodes = np.asarray(nodes, dtype=float)
    grid = np.asarray(grid, dtype=float)
    density = np.asarray(density, dtype=float)
    if weights is None:
        weights = np.ones(nodes.shape)
    return wasserstein1_measure_to_density(nodes, weights, grid, density)


def wasserstein1_discrete(x1, w1, x2, w2) -> float:
    """W1 = int |F_1 - F_2| dx between two weighted discrete measures (exact)."""
    x1, w1, x2, w2 = (np.asarray(a, dtype=float) for a in (x1, w1, x2, w2))
    x = np.union1d(x1, x2)

    def cdf(xs, ws):
        order = np.argsort(xs, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(ws[order]) / ws.sum()])
        return cum[np.searchsorted(xs[order], x[:-1], side="right")]

    return float(np.sum(np.abs(cdf(x1, w1) - cdf(x2, w2)) * np.diff(x)))


def slq_resolution(nodes, weights) -> float:
    """The W1 scale at which an SLQ measure resolves its operator's spectrum (NaN for 1 probe).

    ``nodes`` and ``weights`` are ``(probes, m)`` arrays (NaN-padded nodes with zero weight
    allowed). Split the n probes into halves A (a = n // 2 probes) and B (the other b); each
    half's pooled measure deviates from the spectral measure by a probe average, whose size
    scales as 1 / sqrt(probes), so ``W1(A, B) ~ e sqrt(n (1/a + 1/b))`` with ``e`` the deviation
    of the pooled n-probe measure. Returns the mean over all splits (at most 35) of
    ``W1(A, B) / sqrt(n (1/a + 1/b))``: Monte-Carlo and quadrature resolution together.
    """
    n = nodes.shape[0]
    if n < 2:
        return float("nan")
    a = n // 2
    scale = math.sqrt(n * (1.0 / a + 1.0 / (n - a)))
    values = []
    for half in itertools.islice(itertools.combinations(range(n), a), 35):
        rest = [p for p in range(n) if p not in half]
        parts = []
        for rows in (list(half), rest):
            keep = weights[rows] > 0
            parts += [nodes[rows][keep], weights[rows][keep]]
        values.append(wasserstein1_discrete(*parts) / scale)
    return float(np.mean(values))
